//! Binary history: every upgrade keeps the binary it replaced under `state_dir/bin/` (named by
//! version and checksum, so a binary is stored once however often it comes back) and appends a
//! line to `state_dir/bin/history.jsonl`. `nrdot upgrade --rollback` runs the binary that
//! served before the current one; `nrdot version history --binaries` lists them.
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::durable;

/// One binary: where it is, what it says it is, and its checksum.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema, Deserialize, PartialEq)]
pub struct Binary {
    /// Path it runs from.
    #[schema(value_type = String)]
    pub path: PathBuf,
    /// What `nrdot version --short` printed.
    pub version: String,
    /// SHA-256 of the file.
    pub sha256: String,
}

/// One upgrade attempt.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema, Deserialize)]
pub struct Record {
    /// RFC 3339 UTC.
    pub time: String,
    /// `upgrade` or `rollback`.
    pub kind: String,
    /// The binary that was running; `path` is its kept copy under `bin/`.
    pub from: Binary,
    /// The binary started.
    pub to: Binary,
    /// PIDs before and after.
    pub from_pid: u32,
    /// Zero when the new process never got ready.
    pub to_pid: u32,
    /// `ok`, or why the old process kept serving.
    pub outcome: String,
}

fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("bin")
}

fn history_path(state_dir: &Path) -> PathBuf {
    dir(state_dir).join("history.jsonl")
}

/// SHA-256 of a file, streamed.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    use sha2::Digest;
    let mut f = std::fs::File::open(path)?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("{:x}", h.finalize()))
}

/// Copies the running binary (`/proc/self/exe`, readable even when its file was replaced)
/// into `bin/`, unless a copy with its checksum is there.
pub fn keep_running(state_dir: &Path, version: &str) -> std::io::Result<Binary> {
    let exe = Path::new("/proc/self/exe");
    let sha256 = sha256_file(exe)?;
    let name = format!("nrdot-{}-{}", sanitize(version), &sha256[..12]);
    let d = dir(state_dir);
    durable::ensure_dir(&d)?;
    let path = d.join(name);
    let kept = path.exists() && sha256_file(&path).is_ok_and(|s| s == sha256);
    if !kept {
        let tmp = d.join(".incoming");
        std::fs::copy(exe, &tmp)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        durable::sync_dir(&d)?;
    }
    Ok(Binary {
        path,
        version: version.to_string(),
        sha256,
    })
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Appends one record durably.
pub fn record(state_dir: &Path, r: &Record) -> std::io::Result<()> {
    durable::ensure_dir(&dir(state_dir))?;
    let line = serde_json::to_string(r).map_err(std::io::Error::other)?;
    durable::append_line(&history_path(state_dir), &line)
}

/// Every record, oldest first; damaged lines are skipped.
pub fn history(state_dir: &Path) -> Vec<Record> {
    std::fs::read_to_string(history_path(state_dir))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The binary that served before the current one (whose checksum is `current`): the kept
/// copy of the latest successful upgrade's `from` that is a different binary, so restarting
/// the same binary in between does not make it its own predecessor.
pub fn previous(state_dir: &Path, current: &str) -> Option<Binary> {
    history(state_dir)
        .into_iter()
        .rev()
        .filter(|r| r.outcome == "ok")
        .map(|r| r.from)
        .find(|b| b.sha256 != current)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_previous_binary_is_the_last_successful_upgrades_origin() {
        let dir = std::env::temp_dir().join(format!("nrdot-bin-{}", std::process::id()));
        let b = |v: &str| Binary {
            path: PathBuf::from(format!("/b/{v}")),
            version: v.into(),
            sha256: v.repeat(3),
        };
        let rec = |from: &str, to: &str, outcome: &str| Record {
            time: String::new(),
            kind: "upgrade".into(),
            from: b(from),
            to: b(to),
            from_pid: 1,
            to_pid: 2,
            outcome: outcome.into(),
        };
        assert_eq!(previous(&dir, "222"), None);
        record(&dir, &rec("1", "2", "ok")).expect("record");
        record(&dir, &rec("2", "3", "new binary exited")).expect("record");
        assert_eq!(previous(&dir, "222"), Some(b("1")));
        // Re-running the same binary does not make it its own predecessor.
        record(&dir, &rec("2", "2", "ok")).expect("record");
        assert_eq!(previous(&dir, "222"), Some(b("1")));
        assert_eq!(history(&dir).len(), 3);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
