//! Backups: one encrypted, self-verifying archive of what a node needs to come back — every
//! config version and the current pointer, runtime state, rollouts, the audit log and head,
//! credential hashes (never the plaintext credentials file), the configuration file and the
//! TLS files it names.
//!
//! Archive: `NRDOTBK` + format byte, a 12-byte nonce, then AES-256-GCM over a tar whose first
//! entry is `manifest.json` (time, host, nrdot version, config version and checksum, each
//! component's size and SHA-256). GCM authenticates the whole archive, so a wrong key, a
//! truncation or one flipped bit fails before anything is read; the manifest then checks each
//! component (the seed's `openssl enc -aes-256-cbc` detects neither).
//!
//! Consistency while nrdot runs: every state file is replaced by rename, so each read sees a
//! whole file; the version pointer is read before the versions and the audit head before the
//! log, so the archive never references what it lacks (the log may hold one line more than its
//! head, which a start repairs as after a crash).
use std::io::Read;
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use serde::{Deserialize, Serialize};

use crate::durable;

const MAGIC: &[u8; 7] = b"NRDOTBK";
/// The archive layout this binary writes; it reads this one and older ones.
pub const FORMAT: u8 = 1;
/// Archives end in this.
pub const EXTENSION: &str = "nrbk";

/// Why a backup, verification or restore failed; nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// Disk trouble, with the path.
    #[error("{path}: {source}")]
    Io {
        /// File or directory.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Not an archive, or damaged, or the key does not open it.
    #[error("{0}")]
    Archive(String),
    /// Written by a newer nrdot.
    #[error("archive format {0} is newer than this nrdot reads ({FORMAT}); restore it with a newer nrdot")]
    Newer(u8),
    /// Restoring into the state directory of a running node.
    #[error("{0}")]
    InUse(String),
}

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One file in the archive.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Component {
    /// Path inside the archive: `state/…`, `config/…`, `tls/…`.
    pub name: String,
    /// Where it came from (absolute for config and TLS files).
    pub origin: String,
    /// Bytes.
    pub size: u64,
    /// SHA-256, hex.
    pub sha256: String,
}

/// `manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// Archive format.
    pub format: u8,
    /// RFC 3339 UTC.
    pub time: String,
    /// Host it was taken on.
    pub hostname: String,
    /// `nrdot version --short` of the binary that took it.
    pub nrdot_version: String,
    /// The config version current at the time, and its checksum.
    pub config_version: u64,
    /// SHA-256 of that version's content.
    pub config_checksum: String,
    /// Every file, in archive order.
    pub components: Vec<Component>,
}

/// The state files a backup holds: everything but secrets in plaintext, locks, sockets and
/// kept binaries. Pointer and head first (see the module comment).
const STATE_FIRST: &[&str] = &["versions/current.json", "audit.head"];
const STATE_DIRS: &[&str] = &["versions", "rollouts"];
const STATE_FILES: &[&str] = &["runtime.json", "auth.json", "audit.log"];

/// Reads, or creates (0600, printing where), the 32-byte key in `path` (hex).
pub fn key(path: &Path, create: bool) -> Result<[u8; 32], BackupError> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse_key(text.trim()).ok_or_else(|| {
            BackupError::Archive(format!(
                "{}: not a backup key (64 hex digits)",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
            let mut k = [0u8; 32];
            getrandom::getrandom(&mut k).map_err(|e| BackupError::Archive(e.to_string()))?;
            let hex: String = k.iter().map(|b| format!("{b:02x}")).collect();
            if let Some(dir) = path.parent() {
                durable::ensure_dir(dir).map_err(io(dir))?;
            }
            durable::write(path, format!("{hex}\n").as_bytes(), 0o600).map_err(io(path))?;
            eprintln!(
                "nrdot: created backup key {} (mode 0600). Keep a copy away from this host: without it no archive can be restored.",
                path.display()
            );
            Ok(k)
        }
        Err(e) => Err(io(path)(e)),
    }
}

fn parse_key(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut k = [0u8; 32];
    for (i, b) in k.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(k)
}

/// What goes into one archive: (name in the archive, origin, bytes).
type Entry = (String, String, Vec<u8>);

/// Collects the state directory's files, the config file and the TLS files it names.
fn collect(state_dir: &Path, config: Option<&Path>) -> Result<Vec<Entry>, BackupError> {
    let mut out: Vec<Entry> = Vec::new();
    let add = |rel: &str, path: &Path, out: &mut Vec<Entry>| -> Result<(), BackupError> {
        match std::fs::read(path) {
            Ok(bytes) => {
                out.push((rel.to_string(), path.display().to_string(), bytes));
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(path)(e)),
        }
    };
    for f in STATE_FIRST {
        add(&format!("state/{f}"), &state_dir.join(f), &mut out)?;
    }
    for d in STATE_DIRS {
        let dir = state_dir.join(d);
        let mut names: Vec<String> = match std::fs::read_dir(&dir) {
            Ok(rd) => rd
                .flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .filter(|n| n.ends_with(".json") || n.ends_with(".ver"))
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io(&dir)(e)),
        };
        names.sort();
        for n in names {
            let rel = format!("{d}/{n}");
            if !STATE_FIRST.contains(&rel.as_str()) {
                add(&format!("state/{rel}"), &dir.join(&n), &mut out)?;
            }
        }
    }
    for f in STATE_FILES {
        add(&format!("state/{f}"), &state_dir.join(f), &mut out)?;
    }
    if let Some(config) = config {
        add("config/nrdot.toml", config, &mut out)?;
        if let Ok(c) =
            nrdot_config::Config::from_toml(&std::fs::read_to_string(config).unwrap_or_default())
        {
            for (i, path) in tls_files(&c).iter().enumerate() {
                let name = Path::new(path)
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or("file");
                add(&format!("tls/{i}-{name}"), Path::new(path), &mut out)?;
            }
        }
    }
    Ok(out)
}

/// Every certificate and key file the configuration names.
fn tls_files(c: &nrdot_config::Config) -> Vec<String> {
    let mut out = Vec::new();
    let mut pair = |f: &nrdot_config::CertFiles| {
        out.push(f.cert.display().to_string());
        out.push(f.key.display().to_string());
    };
    for l in &c.listeners {
        if let Some(t) = &l.tls {
            pair(&t.default);
            for s in &t.sni {
                pair(&s.files);
            }
        }
    }
    if let Some(t) = &c.admin_tls {
        pair(t);
    }
    out.sort();
    out.dedup();
    out
}

/// Builds the encrypted archive bytes.
pub fn create(
    state_dir: &Path,
    config: Option<&Path>,
    key: &[u8; 32],
) -> Result<(Manifest, Vec<u8>), BackupError> {
    let entries = collect(state_dir, config)?;
    let (config_version, config_checksum) = current(&entries);
    let manifest = Manifest {
        format: FORMAT,
        time: crate::store::now_rfc3339(),
        hostname: hostname(),
        nrdot_version: env!("CARGO_PKG_VERSION").to_string(),
        config_version,
        config_checksum,
        components: entries
            .iter()
            .map(|(name, origin, bytes)| Component {
                name: name.clone(),
                origin: origin.clone(),
                size: bytes.len() as u64,
                sha256: durable::sha256_hex(bytes),
            })
            .collect(),
    };
    let mut tar = tar::Builder::new(Vec::new());
    let manifest_json =
        serde_json::to_vec_pretty(&manifest).map_err(|e| BackupError::Archive(e.to_string()))?;
    let tar_io = |e| BackupError::Archive(format!("cannot build the archive: {e}"));
    append(&mut tar, "manifest.json", &manifest_json).map_err(tar_io)?;
    for (name, _, bytes) in &entries {
        append(&mut tar, name, bytes).map_err(tar_io)?;
    }
    let plain = tar.into_inner().map_err(tar_io)?;
    Ok((manifest, seal(key, &plain)?))
}

fn append(tar: &mut tar::Builder<Vec<u8>>, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_size(bytes.len() as u64);
    h.set_mode(0o600);
    h.set_cksum();
    tar.append_data(&mut h, name, bytes)
}

/// The current version and its checksum, from the pointer in the archive.
fn current(entries: &[Entry]) -> (u64, String) {
    let pointer = entries
        .iter()
        .find(|(n, _, _)| n == "state/versions/current.json")
        .and_then(|(_, _, b)| serde_json::from_slice::<serde_json::Value>(b).ok());
    let id = pointer
        .as_ref()
        .and_then(|p| p["current"].as_u64())
        .unwrap_or(0);
    let checksum = entries
        .iter()
        .find(|(n, _, _)| is_version_file(n, id))
        .and_then(|(_, _, b)| crate::store::decode(b).ok())
        .map(|v| v.meta.checksum)
        .unwrap_or_default();
    (id, checksum)
}

/// Whether archive entry `name` is version `id`'s file, in either store format.
fn is_version_file(name: &str, id: u64) -> bool {
    name.strip_prefix("state/versions/")
        .is_some_and(|f| f == crate::store::version_file(id) || f == format!("{id:08}.json"))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn seal(key: &[u8; 32], plain: &[u8]) -> Result<Vec<u8>, BackupError> {
    let cipher = Aes256Gcm::new_from_slice(key).map_err(|e| BackupError::Archive(e.to_string()))?;
    let mut nonce = [0u8; 12];
    getrandom::getrandom(&mut nonce).map_err(|e| BackupError::Archive(e.to_string()))?;
    let mut header = MAGIC.to_vec();
    header.push(FORMAT);
    let sealed = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            aes_gcm::aead::Payload {
                msg: plain,
                aad: &header,
            },
        )
        .map_err(|_| BackupError::Archive("encryption failed".into()))?;
    let mut out = header;
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// What a live restore sends to a running node: the archive's current configuration and its
/// drained backends.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LiveRestore {
    /// The archive's file name, for the version message and the audit log.
    pub archive: String,
    /// The version id it had on the node backed up.
    pub version: u64,
    /// Its SHA-256, checked on arrival.
    pub checksum: String,
    /// The configuration text.
    pub content: String,
    /// Backend ids disabled at backup time.
    pub disabled: Vec<String>,
}

impl LiveRestore {
    /// Takes the current version and runtime state out of an opened archive.
    pub fn from_archive(name: &str, opened: &Opened) -> Result<LiveRestore, BackupError> {
        let (manifest, components) = opened;
        let file = |n: &str| components.iter().find(|(c, _)| c.name == n).map(|(_, b)| b);
        let id = manifest.config_version;
        let version = components
            .iter()
            .find(|(c, _)| is_version_file(&c.name, id))
            .and_then(|(_, b)| crate::store::decode(b).ok())
            .ok_or_else(|| BackupError::Archive(format!("the archive lacks version {id}")))?;
        let disabled = file("state/runtime.json")
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
            .and_then(|v| serde_json::from_value(v["disabled"].clone()).ok())
            .unwrap_or_default();
        Ok(LiveRestore {
            archive: name.to_string(),
            version: manifest.config_version,
            checksum: manifest.config_checksum.clone(),
            content: version.content,
            disabled,
        })
    }
}

/// An opened archive: its manifest and each component with its bytes.
pub type Opened = (Manifest, Vec<(Component, Vec<u8>)>);

/// Decrypts and checks an archive: the manifest and each component's bytes.
pub fn open(bytes: &[u8], key: &[u8; 32]) -> Result<Opened, BackupError> {
    if bytes.len() < 8 + 12 + 16 || &bytes[..7] != MAGIC {
        return Err(BackupError::Archive("not an nrdot backup archive".into()));
    }
    if bytes[7] > FORMAT {
        return Err(BackupError::Newer(bytes[7]));
    }
    let cipher = Aes256Gcm::new_from_slice(key).map_err(|e| BackupError::Archive(e.to_string()))?;
    let plain = cipher
        .decrypt(
            Nonce::from_slice(&bytes[8..20]),
            aes_gcm::aead::Payload {
                msg: &bytes[20..],
                aad: &bytes[..8],
            },
        )
        .map_err(|_| {
            BackupError::Archive(
                "cannot decrypt: wrong key, or the archive is damaged (truncated or altered)"
                    .into(),
            )
        })?;
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let mut archive = tar::Archive::new(plain.as_slice());
    let bad = |e: std::io::Error| BackupError::Archive(format!("damaged archive: {e}"));
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let name = entry.path().map_err(bad)?.display().to_string();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).map_err(bad)?;
        files.push((name, data));
    }
    let Some((first, manifest_bytes)) = files.first() else {
        return Err(BackupError::Archive("empty archive".into()));
    };
    if first != "manifest.json" {
        return Err(BackupError::Archive(
            "the archive does not start with its manifest".into(),
        ));
    }
    let manifest: Manifest = serde_json::from_slice(manifest_bytes)
        .map_err(|e| BackupError::Archive(format!("unreadable manifest: {e}")))?;
    check(&manifest, &files[1..])?;
    let pairs = manifest
        .components
        .iter()
        .cloned()
        .zip(files.into_iter().skip(1).map(|(_, b)| b))
        .collect();
    Ok((manifest, pairs))
}

/// The manifest lists exactly the files that follow it, with their sizes and checksums.
fn check(manifest: &Manifest, files: &[(String, Vec<u8>)]) -> Result<(), BackupError> {
    if manifest.components.len() != files.len() {
        return Err(BackupError::Archive(format!(
            "manifest lists {} components, the archive holds {}",
            manifest.components.len(),
            files.len()
        )));
    }
    for (c, (name, bytes)) in manifest.components.iter().zip(files) {
        if &c.name != name || c.size != bytes.len() as u64 || c.sha256 != durable::sha256_hex(bytes)
        {
            return Err(BackupError::Archive(format!(
                "{name} does not match the manifest"
            )));
        }
        if name.contains("..") || name.starts_with('/') {
            return Err(BackupError::Archive(format!(
                "unsafe path {name:?} in the archive"
            )));
        }
    }
    Ok(())
}

/// Rebuilds `state_dir` from an opened archive: written beside it, then swapped in by rename;
/// the old directory is kept as `<state_dir>.pre-restore-<time>`. Refused while a node holds
/// the directory's lock. Returns what was kept aside, if anything.
pub fn restore(
    state_dir: &Path,
    components: &[(Component, Vec<u8>)],
) -> Result<Option<PathBuf>, BackupError> {
    // A running node holds the lock; taking it also keeps a node from starting meanwhile.
    let lock = if state_dir.exists() {
        Some(crate::lock::StateLock::acquire(state_dir).map_err(|e| {
            BackupError::InUse(format!(
                "{e}; restore into a stopped node (or use the live restore through the admin API)"
            ))
        })?)
    } else {
        None
    };
    let parent = state_dir.parent().unwrap_or(Path::new("."));
    let base = state_dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("state");
    let stamp = crate::store::now_rfc3339().replace(':', "");
    let incoming = parent.join(format!(".{base}.restoring-{stamp}"));
    for (c, bytes) in components {
        let Some(rel) = c.name.strip_prefix("state/") else {
            continue;
        };
        let path = incoming.join(rel);
        if let Some(dir) = path.parent() {
            durable::ensure_dir(dir).map_err(io(dir))?;
        }
        durable::write(&path, bytes, 0o600).map_err(io(&path))?;
    }
    durable::ensure_dir(&incoming).map_err(io(&incoming))?;
    // The plaintext credentials are never archived; when restoring over a node that has them,
    // they stay (the restored hashes are theirs unless tokens were rotated since).
    let creds = state_dir.join("admin-credentials");
    if creds.exists() {
        std::fs::copy(&creds, incoming.join("admin-credentials")).map_err(io(&creds))?;
    }
    let kept = if state_dir.exists() {
        let aside = parent.join(format!("{base}.pre-restore-{stamp}"));
        std::fs::rename(state_dir, &aside).map_err(io(state_dir))?;
        Some(aside)
    } else {
        None
    };
    std::fs::rename(&incoming, state_dir).map_err(io(state_dir))?;
    durable::sync_dir(parent).map_err(io(parent))?;
    drop(lock);
    Ok(kept)
}

/// Where the last successful backup is recorded in the state directory: the version store
/// prunes only versions an archive holds.
pub const LAST_BACKUP: &str = "backup.json";

/// The last successful backup of a state directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LastBackup {
    /// When.
    pub time: String,
    /// The current config version it holds (it holds every version up to this one).
    pub config_version: u64,
    /// Where it was written (a path or an `s3://` URL).
    pub archive: String,
}

/// Reads [`LAST_BACKUP`].
pub fn last_backup(state_dir: &Path) -> Option<LastBackup> {
    serde_json::from_slice(&std::fs::read(state_dir.join(LAST_BACKUP)).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed(manifest: &Manifest, files: &[(&str, &[u8])], key: &[u8; 32]) -> Vec<u8> {
        let mut tar = tar::Builder::new(Vec::new());
        append(
            &mut tar,
            "manifest.json",
            &serde_json::to_vec(manifest).expect("json"),
        )
        .expect("tar");
        for (name, bytes) in files {
            append(&mut tar, name, bytes).expect("tar");
        }
        seal(key, &tar.into_inner().expect("tar")).expect("seal")
    }

    fn manifest(components: Vec<Component>) -> Manifest {
        Manifest {
            format: FORMAT,
            time: String::new(),
            hostname: "h".into(),
            nrdot_version: "0".into(),
            config_version: 1,
            config_checksum: String::new(),
            components,
        }
    }

    fn component(name: &str, bytes: &[u8]) -> Component {
        Component {
            name: name.into(),
            origin: String::new(),
            size: bytes.len() as u64,
            sha256: durable::sha256_hex(bytes),
        }
    }

    #[test]
    fn a_manifest_that_does_not_match_its_contents_is_refused() {
        let key = [7u8; 32];
        let good = manifest(vec![component("state/runtime.json", b"{}")]);
        assert!(open(&sealed(&good, &[("state/runtime.json", b"{}")], &key), &key).is_ok());
        // Same name, other bytes (a component swapped after the manifest was written).
        let swapped = sealed(&good, &[("state/runtime.json", b"{\"x\":1}")], &key);
        let e = open(&swapped, &key).expect_err("mismatch");
        assert!(e.to_string().contains("does not match the manifest"), "{e}");
        // A component the manifest does not list.
        let extra = sealed(
            &good,
            &[("state/runtime.json", b"{}"), ("state/auth.json", b"{}")],
            &key,
        );
        assert!(open(&extra, &key)
            .expect_err("extra")
            .to_string()
            .contains("lists 1 components"));
    }

    #[test]
    fn keys_are_64_hex_digits() {
        assert_eq!(parse_key(&"0f".repeat(32)), Some([15u8; 32]));
        assert_eq!(parse_key("abc"), None);
        assert_eq!(parse_key(&"zz".repeat(32)), None);
    }
}
