//! The version store: every configuration that was ever in effect, each with id, parent, time,
//! author, message and the SHA-256 of its content, plus a pointer to the current one. Behind the
//! [`Store`] trait so a cluster can keep versions in etcd instead; [`LocalStore`] keeps them in
//! `state_dir/versions/` with crash-safe writes and checksums verified on every read.
//!
//! A version file, `NNNNNNNN.ver`, is one line of JSON metadata followed by the content
//! compressed with zstd: a 14 MB configuration of 100,000 routes is stored in well under a
//! quarter of that, and listing versions reads only the first lines. The checksum stays over
//! the uncompressed text, and reading a version still verifies it. Files written before that,
//! `NNNNNNNN.json` (metadata and content in one JSON object), are read as they are.
use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::durable;

/// Why the store could not answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Disk trouble.
    #[error("state store I/O on {path}: {source}")]
    Io {
        /// File or directory.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A file whose checksum does not match its content, or that does not parse.
    #[error("state store damaged: {path}: {why}")]
    Damaged {
        /// The damaged file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// No such version.
    #[error("no version {0} (versions older than [store] keep_versions are pruned once a backup holds them: nrdot backup list)")]
    NotFound(u64),
    /// Another node made a version current first (the cluster's `If-Match`).
    #[error("version {current} became current meanwhile (changed through another node)")]
    Conflict {
        /// The current version now.
        current: u64,
    },
    /// The shared store cannot be reached: changes are refused, the node keeps serving.
    #[error("cluster store unavailable: {0}; the running configuration keeps serving, changes are refused")]
    Unavailable(String),
}

/// What is known of a version without its content.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema, Deserialize, PartialEq, Eq)]
pub struct VersionMeta {
    /// Sequential id, starting at 1.
    pub id: u64,
    /// The version that was current when this one was created.
    pub parent: Option<u64>,
    /// Creation time, RFC 3339 UTC.
    pub time: String,
    /// Who created it (token name, `file`, `sighup`, `rollout`…).
    pub author: String,
    /// Why.
    pub message: String,
    /// SHA-256 of `content`, hex.
    pub checksum: String,
}

/// A version with its content (the TOML text).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema, Deserialize, PartialEq, Eq)]
pub struct Version {
    /// Metadata.
    #[serde(flatten)]
    pub meta: VersionMeta,
    /// The configuration text.
    pub content: String,
}

/// Where versions live.
pub trait Store: Send + Sync {
    /// Every version, oldest first. Damaged files are reported, not skipped.
    fn list(&self) -> Result<Vec<VersionMeta>, StoreError>;
    /// One version, checksum verified.
    fn get(&self, id: u64) -> Result<Version, StoreError>;
    /// Stores a new version (id = last + 1) and makes it current; with `base`, only if `base`
    /// is still the current version ([`StoreError::Conflict`] otherwise): a change is based on
    /// the version its node served, even when another node moved the history meanwhile.
    fn create(
        &self,
        author: &str,
        message: &str,
        content: &str,
        base: Option<u64>,
    ) -> Result<VersionMeta, StoreError>;
    /// The current version's id, if any version exists.
    fn current(&self) -> Result<Option<u64>, StoreError>;
    /// Removes the oldest versions beyond `keep`, never the current or newest one nor any
    /// above `protect_above` (not yet in a backup); the ids removed.
    fn prune(&self, keep: usize, protect_above: u64) -> Result<Vec<u64>, StoreError>;
}

/// Versions as files under a directory.
pub struct LocalStore {
    dir: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct Pointer {
    current: u64,
    checksum: String,
}

impl LocalStore {
    /// Opens (creating if needed) the store under `state_dir/versions`.
    pub fn open(state_dir: &Path) -> Result<LocalStore, StoreError> {
        let dir = state_dir.join("versions");
        durable::ensure_dir(&dir).map_err(|source| StoreError::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(LocalStore { dir })
    }

    /// The file of version `id`: the compressed form, or the older JSON one if that is what
    /// is there.
    fn version_path(&self, id: u64) -> PathBuf {
        let path = self.dir.join(version_file(id));
        if !path.exists() {
            let legacy = self.dir.join(format!("{id:08}.json"));
            if legacy.exists() {
                return legacy;
            }
        }
        path
    }

    fn pointer_path(&self) -> PathBuf {
        self.dir.join("current.json")
    }

    fn ids(&self) -> Result<Vec<u64>, StoreError> {
        let rd = std::fs::read_dir(&self.dir).map_err(|source| StoreError::Io {
            path: self.dir.clone(),
            source,
        })?;
        let mut ids: Vec<u64> = rd
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.strip_suffix(".ver")
                    .or_else(|| name.strip_suffix(".json"))?
                    .parse()
                    .ok()
            })
            .collect();
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }

    fn read(&self, id: u64) -> Result<Version, StoreError> {
        let path = self.version_path(id);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound(id))
            }
            Err(source) => return Err(StoreError::Io { path, source }),
        };
        let v = decode(&bytes).map_err(|why| StoreError::Damaged {
            path: path.clone(),
            why,
        })?;
        if v.meta.id != id {
            return Err(StoreError::Damaged {
                path,
                why: format!("holds version {} instead of {id}", v.meta.id),
            });
        }
        let actual = durable::sha256_hex(v.content.as_bytes());
        if actual != v.meta.checksum {
            return Err(StoreError::Damaged {
                path,
                why: format!(
                    "checksum mismatch (recorded {}, content has {actual})",
                    v.meta.checksum
                ),
            });
        }
        Ok(v)
    }

    /// The metadata of version `id`, from the first line of its file (the content is neither
    /// read nor verified: [`Store::get`] does that).
    fn read_meta(&self, id: u64) -> Result<VersionMeta, StoreError> {
        let path = self.version_path(id);
        if path.extension().is_some_and(|e| e == "json") {
            return self.read(id).map(|v| v.meta);
        }
        let file = std::fs::File::open(&path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => StoreError::NotFound(id),
            _ => StoreError::Io {
                path: path.clone(),
                source,
            },
        })?;
        let mut line = Vec::new();
        std::io::BufReader::new(file)
            .take(META_MAX)
            .read_until(b'\n', &mut line)
            .map_err(|source| StoreError::Io {
                path: path.clone(),
                source,
            })?;
        let meta: VersionMeta = serde_json::from_slice(&line).map_err(|e| StoreError::Damaged {
            path: path.clone(),
            why: format!("unreadable metadata: {e}"),
        })?;
        if meta.id != id {
            return Err(StoreError::Damaged {
                path,
                why: format!("holds version {} instead of {id}", meta.id),
            });
        }
        Ok(meta)
    }
}

/// The longest metadata line read (author and message are short).
const META_MAX: u64 = 1 << 20;

/// zstd's frame magic number, which starts the content of a `.ver` file.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// zstd level: 3 (its default) compresses a generated 14 MB configuration about 25-fold in
/// a fraction of a second; higher levels cost more time than a change should wait.
const ZSTD_LEVEL: i32 = 3;

/// The file name of version `id` in the current format.
pub fn version_file(id: u64) -> String {
    format!("{id:08}.ver")
}

/// A version as stored: its metadata line, then the compressed content.
pub fn encode(v: &Version) -> Result<Vec<u8>, String> {
    let mut out = serde_json::to_vec(&v.meta).map_err(|e| e.to_string())?;
    out.push(b'\n');
    let packed =
        zstd::bulk::compress(v.content.as_bytes(), ZSTD_LEVEL).map_err(|e| e.to_string())?;
    out.extend_from_slice(&packed);
    Ok(out)
}

/// A version file's bytes, in either format (the checksum is not checked here).
pub fn decode(bytes: &[u8]) -> Result<Version, String> {
    if let Some(nl) = bytes.iter().position(|b| *b == b'\n') {
        let packed = &bytes[nl + 1..];
        if packed.starts_with(&ZSTD_MAGIC) {
            let meta: VersionMeta = serde_json::from_slice(&bytes[..nl])
                .map_err(|e| format!("unreadable metadata: {e}"))?;
            let mut content = Vec::new();
            zstd::stream::copy_decode(packed, &mut content)
                .map_err(|e| format!("content does not decompress: {e}"))?;
            let content =
                String::from_utf8(content).map_err(|_| "content is not UTF-8".to_string())?;
            return Ok(Version { meta, content });
        }
    }
    serde_json::from_slice(bytes).map_err(|e| format!("unreadable: {e}"))
}

impl Version {
    /// `content` under metadata already made.
    pub fn of(meta: &VersionMeta, content: &str) -> Version {
        Version {
            meta: meta.clone(),
            content: content.to_string(),
        }
    }

    /// Version `id` of `content`, made now, checksummed.
    pub fn new(
        id: u64,
        parent: Option<u64>,
        author: &str,
        message: &str,
        content: &str,
    ) -> Version {
        Version {
            meta: VersionMeta {
                id,
                parent,
                time: now_rfc3339(),
                author: author.to_string(),
                message: message.to_string(),
                checksum: durable::sha256_hex(content.as_bytes()),
            },
            content: content.to_string(),
        }
    }
}

/// [`StoreError::Conflict`] when a change based on `base` meets another `current` version.
pub fn check_base(base: Option<u64>, current: Option<u64>) -> Result<(), StoreError> {
    match (base, current) {
        (Some(want), Some(now)) if want != now => Err(StoreError::Conflict { current: now }),
        _ => Ok(()),
    }
}

/// Now as RFC 3339 UTC with seconds.
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    let (y, m, d) = nrdot_config::units::civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

impl Store for LocalStore {
    fn list(&self) -> Result<Vec<VersionMeta>, StoreError> {
        self.ids()?
            .into_iter()
            .map(|id| self.read_meta(id))
            .collect()
    }

    fn get(&self, id: u64) -> Result<Version, StoreError> {
        self.read(id)
    }

    fn create(
        &self,
        author: &str,
        message: &str,
        content: &str,
        base: Option<u64>,
    ) -> Result<VersionMeta, StoreError> {
        let parent = self.current()?;
        check_base(base, parent)?;
        let id = self.ids()?.last().copied().unwrap_or(0) + 1;
        let v = Version::new(id, parent, author, message, content);
        let meta = v.meta.clone();
        let path = self.dir.join(version_file(id));
        let bytes = encode(&v).map_err(|why| StoreError::Damaged {
            path: path.clone(),
            why,
        })?;
        // The version first, then the pointer: a crash in between leaves an unreferenced
        // version and the previous pointer, both valid.
        durable::write(&path, &bytes, 0o600).map_err(|source| StoreError::Io {
            path: path.clone(),
            source,
        })?;
        let pointer = Pointer {
            current: id,
            checksum: durable::sha256_hex(id.to_string().as_bytes()),
        };
        let pp = self.pointer_path();
        let pbytes = serde_json::to_vec(&pointer).unwrap_or_default();
        durable::write(&pp, &pbytes, 0o600)
            .map_err(|source| StoreError::Io { path: pp, source })?;
        Ok(meta)
    }

    fn prune(&self, keep: usize, protect_above: u64) -> Result<Vec<u64>, StoreError> {
        let ids = self.ids()?;
        if keep == 0 || ids.len() <= keep {
            return Ok(Vec::new());
        }
        let current = self.current()?.unwrap_or(0);
        let newest = ids.last().copied().unwrap_or(0);
        let mut removed = Vec::new();
        for id in ids.iter().take(ids.len() - keep) {
            if *id == current || *id == newest || *id > protect_above {
                continue;
            }
            let path = self.version_path(*id);
            std::fs::remove_file(&path).map_err(|source| StoreError::Io { path, source })?;
            removed.push(*id);
        }
        if !removed.is_empty() {
            durable::sync_dir(&self.dir).map_err(|source| StoreError::Io {
                path: self.dir.clone(),
                source,
            })?;
        }
        Ok(removed)
    }

    fn current(&self) -> Result<Option<u64>, StoreError> {
        let path = self.pointer_path();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StoreError::Io { path, source }),
        };
        let p: Pointer = serde_json::from_slice(&bytes).map_err(|e| StoreError::Damaged {
            path: path.clone(),
            why: format!("unreadable: {e}"),
        })?;
        if durable::sha256_hex(p.current.to_string().as_bytes()) != p.checksum {
            return Err(StoreError::Damaged {
                path,
                why: "checksum mismatch".into(),
            });
        }
        Ok(Some(p.current))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("nrdot-store-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn store_versions_chain_and_verify() {
        let d = dir("chain");
        let s = LocalStore::open(&d).expect("open");
        assert_eq!(s.current().expect("current"), None);
        let a = s.create("alice", "first", "a = 1\n", None).expect("create");
        let b = s.create("bob", "second", "a = 2\n", None).expect("create");
        // A change based on version 1 after version 2 was made: refused, nothing stored.
        assert!(matches!(
            s.create("carol", "stale", "a = 3\n", Some(1)),
            Err(StoreError::Conflict { current: 2 })
        ));
        assert_eq!((a.id, a.parent), (1, None));
        assert_eq!((b.id, b.parent), (2, Some(1)));
        assert_eq!(s.current().expect("current"), Some(2));
        assert_eq!(s.get(1).expect("get").content, "a = 1\n");
        assert_eq!(s.list().expect("list").len(), 2);
        // Damage version 1's content: reported on read, never served. (Listing reads only
        // the metadata lines.)
        let p = d.join("versions/00000001.ver");
        let bytes = std::fs::read(&p).expect("read");
        let nl = bytes
            .iter()
            .position(|b| *b == b'\n')
            .expect("metadata line");
        let other = zstd::bulk::compress(b"a = 9\n", 3).expect("compress");
        std::fs::write(&p, [&bytes[..=nl], &other[..]].concat()).expect("write");
        assert!(matches!(s.get(1), Err(StoreError::Damaged { .. })));
        assert_eq!(s.list().expect("list").len(), 2);
        // A truncated file does not decompress: damaged too.
        std::fs::write(&p, &bytes[..bytes.len() - 3]).expect("write");
        assert!(matches!(s.get(1), Err(StoreError::Damaged { .. })));
        assert!(matches!(s.get(7), Err(StoreError::NotFound(7))));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn versions_are_stored_compressed_and_older_json_files_still_read() {
        let d = dir("formats");
        let s = LocalStore::open(&d).expect("open");
        // A version as nrdot wrote it before: one pretty JSON object.
        let content = "[[route]]\nname = \"r\"\npool = \"p\"\n".repeat(2000);
        let old = Version {
            meta: VersionMeta {
                id: 1,
                parent: None,
                time: now_rfc3339(),
                author: "file".into(),
                message: "before".into(),
                checksum: durable::sha256_hex(content.as_bytes()),
            },
            content: content.clone(),
        };
        let json = serde_json::to_vec_pretty(&old).expect("json");
        std::fs::write(d.join("versions/00000001.json"), &json).expect("write");
        let new = s.create("alice", "after", &content, None).expect("create");
        assert_eq!(new.id, 2, "ids continue across formats");
        assert_eq!(s.get(1).expect("old").content, content);
        assert_eq!(s.get(2).expect("new").content, content);
        assert_eq!(s.list().expect("list").len(), 2);
        let stored = std::fs::metadata(d.join("versions/00000002.ver"))
            .expect("stored")
            .len();
        assert!(
            stored * 10 < content.len() as u64,
            "{stored} bytes for {} of text",
            content.len()
        );
        assert_eq!(s.prune(1, u64::MAX).expect("prune"), vec![1]);
        assert!(!d.join("versions/00000001.json").exists());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn rfc3339_shape() {
        let t = now_rfc3339();
        assert_eq!(t.len(), 20, "{t}");
        assert!(t.ends_with('Z'));
    }
}
