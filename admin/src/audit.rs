//! The audit log: one JSON line per mutating call, successful or not, fsync'd before the call is
//! answered. Lines are hash-chained (each carries the hash of the one before), and the head of
//! the chain is kept beside the log, so `nrdot audit verify` detects an edited, removed or
//! reordered line, and a truncated tail.
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::durable;

mod shared;
pub use shared::SharedLog;

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What happened, as the caller describes it.
#[derive(Debug, Clone, Default)]
pub struct Event {
    /// Token name, or `anonymous` for calls without valid credentials.
    pub actor: String,
    /// `config.apply`, `backend.disable`, …
    pub action: String,
    /// What was acted on.
    pub target: String,
    /// Config version before the call.
    pub version_before: Option<u64>,
    /// Config version after the call.
    pub version_after: Option<u64>,
    /// `ok`, `invalid`, `conflict`, `unauthorized`, `forbidden`, `error`.
    pub outcome: String,
    /// Free text: the error, the measured numbers.
    pub detail: String,
}

/// One line of the log.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema, Deserialize)]
pub struct Entry {
    /// Position in the chain, from 1.
    pub seq: u64,
    /// RFC 3339 UTC.
    pub time: String,
    /// See [`Event`].
    pub actor: String,
    /// See [`Event`].
    pub action: String,
    /// See [`Event`].
    pub target: String,
    /// See [`Event`].
    pub version_before: Option<u64>,
    /// See [`Event`].
    pub version_after: Option<u64>,
    /// See [`Event`].
    pub outcome: String,
    /// See [`Event`].
    pub detail: String,
    /// Hash of the previous line.
    pub prev: String,
}

#[derive(Serialize, Deserialize)]
struct Head {
    seq: u64,
    hash: String,
}

/// The log of one state directory, or of a cluster.
pub struct Audit {
    path: PathBuf,
    head_path: PathBuf,
    head: Mutex<(u64, String)>,
    /// In a cluster: the one chain in etcd. The local file then only takes what happens
    /// while etcd cannot be reached.
    shared: Option<SharedLog>,
}

/// Why verification failed.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// Disk trouble.
    #[error("audit log {path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The cluster's log cannot be read now.
    #[error("the cluster's audit log cannot be read now: {0}")]
    Unavailable(String),
    /// The chain is broken at this line.
    #[error("audit log {path}:{line}: {why}")]
    Broken {
        /// File.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        why: String,
    },
}

fn line_hash(prev: &str, body: &str) -> String {
    durable::sha256_hex(format!("{prev}\n{body}").as_bytes())
}

/// Entry `seq + 1` of `e` after the entry whose hash is `prev`: (entry, stored line, hash).
fn seal(seq: u64, prev: &str, e: Event) -> (Entry, String, String) {
    let entry = Entry {
        seq: seq + 1,
        time: crate::store::now_rfc3339(),
        actor: e.actor,
        action: e.action,
        target: e.target,
        version_before: e.version_before,
        version_after: e.version_after,
        outcome: e.outcome,
        detail: e.detail,
        prev: prev.to_string(),
    };
    let body = serde_json::to_string(&entry).unwrap_or_default();
    let hash = line_hash(prev, &body);
    let line = format!("{},\"hash\":\"{hash}\"}}", &body[..body.len() - 1]);
    (entry, line, hash)
}

/// Splits a stored line into its body (without the hash field) and the hash.
fn split_line(line: &str) -> Option<(String, &str)> {
    let idx = line.rfind(",\"hash\":\"")?;
    let hash = line[idx + 9..].strip_suffix("\"}")?;
    Some((format!("{}}}", &line[..idx]), hash))
}

impl Audit {
    /// Opens the log of `state_dir`, verifying it first so a new line never extends a broken
    /// chain unnoticed (the error is returned; the caller decides whether to run anyway).
    pub fn open(state_dir: &Path) -> Result<Audit, AuditError> {
        let path = state_dir.join("audit.log");
        let head_path = state_dir.join("audit.head");
        let (seq, hash) = recover(&path, &head_path)?;
        Ok(Audit {
            path,
            head_path,
            head: Mutex::new((seq, hash)),
            shared: None,
        })
    }

    /// Appends to the cluster's chain in etcd from now on.
    pub fn share(&mut self, log: SharedLog) {
        self.shared = Some(log);
    }

    /// Re-reads the chain's head from disk, after another process (a binary upgrade's new
    /// process that then failed) may have appended to it.
    pub fn resync(&self) {
        match recover(&self.path, &self.head_path) {
            Ok(head) => *self.head.lock().expect("audit poisoned") = head,
            Err(e) => tracing::error!(error = %e, "audit log unreadable after a failed upgrade"),
        }
    }

    /// Appends one event durably: in a cluster to its chain in etcd, else (or while etcd
    /// cannot be reached, said in the log) to this node's file.
    pub fn record(&self, e: Event) -> Result<(), AuditError> {
        if let Some(log) = &self.shared {
            match log.append(&e) {
                Ok(()) => return Ok(()),
                Err(why) => {
                    tracing::warn!("audit entry kept in this node's log, not the cluster's: {why}")
                }
            }
        }
        let mut head = self.head.lock().expect("audit poisoned");
        let (entry, line, hash) = seal(head.0, &head.1, e);
        let io = |source| AuditError::Io {
            path: self.path.clone(),
            source,
        };
        durable::append_line(&self.path, &line).map_err(io)?;
        let h = serde_json::to_vec(&Head {
            seq: entry.seq,
            hash: hash.clone(),
        })
        .unwrap_or_default();
        durable::write(&self.head_path, &h, 0o600).map_err(io)?;
        *head = (entry.seq, hash);
        Ok(())
    }

    /// The last `limit` entries, newest last.
    pub fn tail(&self, limit: usize) -> Result<Vec<Entry>, AuditError> {
        if let Some(log) = &self.shared {
            return log.tail(limit);
        }
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => {
                return Err(AuditError::Io {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(limit);
        Ok(lines[start..]
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect())
    }

    /// Verifies the whole chain against the head; returns the number of entries.
    pub fn verify(&self) -> Result<u64, AuditError> {
        if let Some(log) = &self.shared {
            return log.verify();
        }
        let _guard = self.head.lock().expect("audit poisoned");
        verify_files(&self.path, &self.head_path).map(|(seq, _)| seq)
    }
}

/// Brings a log back to a consistent state after a crash, then verifies it. Two states are
/// crash artifacts, not tampering: a last line cut short (no newline; the write never
/// completed), and a last entry whose head update did not happen. Both are repaired; anything
/// else is reported.
fn recover(path: &Path, head_path: &Path) -> Result<(u64, String), AuditError> {
    let io = |source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Ok(text) = std::fs::read_to_string(path) {
        if !text.is_empty() && !text.ends_with('\n') {
            let keep = text.rfind('\n').map(|i| i + 1).unwrap_or(0);
            tracing::warn!(path = %path.display(), "dropping a torn last audit line left by a crash");
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(io)?;
            f.set_len(keep as u64).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
    }
    match verify_files(path, head_path) {
        Ok(v) => Ok(v),
        Err(AuditError::Broken { .. }) => {
            // Chain intact up to the end, head one entry behind: the head write was lost.
            let (seq, hash) = verify_chain(path)?;
            let head: Option<Head> = std::fs::read(head_path)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            let behind_by_one = match &head {
                Some(h) => h.seq + 1 == seq && hash_at(path, h.seq)? == h.hash,
                None => seq == 1,
            };
            if !behind_by_one {
                return verify_files(path, head_path);
            }
            tracing::warn!(path = %path.display(), "audit head was one entry behind after a crash; repaired");
            let h = serde_json::to_vec(&Head {
                seq,
                hash: hash.clone(),
            })
            .unwrap_or_default();
            durable::write(head_path, &h, 0o600).map_err(io)?;
            Ok((seq, hash))
        }
        Err(e) => Err(e),
    }
}

/// The hash of entry `seq` (the genesis value for 0).
fn hash_at(path: &Path, seq: u64) -> Result<String, AuditError> {
    if seq == 0 {
        return Ok(GENESIS.to_string());
    }
    let text = std::fs::read_to_string(path).map_err(|source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(text
        .lines()
        .nth(seq as usize - 1)
        .and_then(split_line)
        .map(|(_, h)| h.to_string())
        .unwrap_or_default())
}

/// Verifies a log and its head file; returns (entries, last hash).
pub fn verify_files(path: &Path, head_path: &Path) -> Result<(u64, String), AuditError> {
    let (seq, prev) = verify_chain(path)?;
    let broken = |line: usize, why: String| AuditError::Broken {
        path: path.to_path_buf(),
        line,
        why,
    };
    match std::fs::read(head_path) {
        Ok(bytes) => {
            let head: Head = serde_json::from_slice(&bytes)
                .map_err(|_| broken(seq as usize, "head file unreadable".into()))?;
            if head.seq != seq || head.hash != prev {
                return Err(broken(
                    seq as usize,
                    format!("the log ends at entry {seq} but {} were written (lines removed from the end)", head.seq),
                ));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && seq == 0 => {}
        Err(_) => return Err(broken(seq as usize, "head file missing".into())),
    }
    Ok((seq, prev))
}

/// Verifies the chain of the log alone; returns (entries, last hash).
fn verify_chain(path: &Path) -> Result<(u64, String), AuditError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(source) => {
            return Err(AuditError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    check_lines(path, text.lines())
}

/// Verifies a chain of stored lines (`path` names where they are); returns (entries, last
/// hash).
fn check_lines<'a>(
    path: &Path,
    lines: impl Iterator<Item = &'a str>,
) -> Result<(u64, String), AuditError> {
    let broken = |line: usize, why: String| AuditError::Broken {
        path: path.to_path_buf(),
        line,
        why,
    };
    let mut prev = GENESIS.to_string();
    let mut seq = 0u64;
    for (i, line) in lines.enumerate() {
        let n = i + 1;
        let (body, hash) = split_line(line).ok_or_else(|| broken(n, "not an audit line".into()))?;
        let entry: Entry =
            serde_json::from_str(&body).map_err(|e| broken(n, format!("unreadable: {e}")))?;
        if entry.prev != prev {
            return Err(broken(
                n,
                "does not follow the line before it (a line was removed or reordered)".into(),
            ));
        }
        if entry.seq != seq + 1 {
            return Err(broken(
                n,
                format!("sequence {} where {} was expected", entry.seq, seq + 1),
            ));
        }
        let actual = line_hash(&prev, &body);
        if actual != hash {
            return Err(broken(
                n,
                "content does not match its hash (the line was edited)".into(),
            ));
        }
        prev = actual;
        seq = entry.seq;
    }
    Ok((seq, prev))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(action: &str) -> Event {
        Event {
            actor: "admin".into(),
            action: action.into(),
            target: "config".into(),
            outcome: "ok".into(),
            ..Event::default()
        }
    }

    #[test]
    fn audit_chain_detects_edit_removal_and_truncation() {
        let d = std::env::temp_dir().join(format!("nrdot-audit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("dir");
        let a = Audit::open(&d).expect("open");
        for i in 0..4 {
            a.record(event(&format!("action{i}"))).expect("record");
        }
        assert_eq!(a.verify().expect("valid"), 4);
        let log = d.join("audit.log");
        let original = std::fs::read_to_string(&log).expect("read");

        let edited = original.replacen("action1", "actionX", 1);
        std::fs::write(&log, &edited).expect("write");
        let e = a.verify().expect_err("edit detected").to_string();
        assert!(e.contains(":2: content does not match"), "{e}");

        let lines: Vec<&str> = original.lines().collect();
        let removed = format!("{}\n{}\n{}\n", lines[0], lines[2], lines[3]);
        std::fs::write(&log, removed).expect("write");
        assert!(a
            .verify()
            .expect_err("removal")
            .to_string()
            .contains(":2: does not follow"));

        let truncated = format!("{}\n{}\n{}\n", lines[0], lines[1], lines[2]);
        std::fs::write(&log, truncated).expect("write");
        assert!(a
            .verify()
            .expect_err("truncation")
            .to_string()
            .contains("removed from the end"));

        std::fs::write(&log, &original).expect("write");
        assert_eq!(Audit::open(&d).expect("reopen").verify().expect("valid"), 4);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn audit_recovers_from_crash_artifacts_only() {
        let d = std::env::temp_dir().join(format!("nrdot-audit-crash-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("dir");
        let a = Audit::open(&d).expect("open");
        for i in 0..3 {
            a.record(event(&format!("a{i}"))).expect("record");
        }
        let head = std::fs::read(d.join("audit.head")).expect("head");
        a.record(event("a3")).expect("record");
        // Crash between the append and the head write: the head is one behind.
        std::fs::write(d.join("audit.head"), &head).expect("old head");
        let a = Audit::open(&d).expect("repaired");
        assert_eq!(a.verify().expect("valid"), 4);
        // Crash mid-append: a torn line without its newline.
        let log = d.join("audit.log");
        let mut text = std::fs::read_to_string(&log).expect("log");
        text.push_str("{\"seq\":5,\"time\":\"20");
        std::fs::write(&log, &text).expect("torn");
        let a = Audit::open(&d).expect("repaired");
        assert_eq!(a.verify().expect("valid"), 4);
        a.record(event("a4")).expect("record");
        assert_eq!(a.verify().expect("valid"), 5);
        // Two entries behind is not a crash artifact.
        std::fs::write(d.join("audit.head"), &head).expect("old head");
        assert!(Audit::open(&d).is_err());
        let _ = std::fs::remove_dir_all(&d);
    }
}
