//! Where archives live: a directory, or an S3-compatible bucket and prefix (`s3://B/P`). The
//! same verbs (write, list, read, remove, retention) work on both.
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::backup::{self, io, BackupError, LastBackup, Manifest, EXTENSION, LAST_BACKUP};
use crate::durable;
use crate::s3;

/// A directory or an S3 prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// Local (or mounted) directory.
    Dir(PathBuf),
    /// Bucket and prefix.
    S3(s3::Target),
}

impl Destination {
    /// `s3://…` is a bucket; anything else a directory.
    pub fn parse(s: &str) -> Destination {
        match s3::Target::parse(s) {
            Some(t) => Destination::S3(t),
            None => Destination::Dir(PathBuf::from(s)),
        }
    }

    /// Where an archive called `name` is.
    pub fn locate(&self, name: &str) -> String {
        match self {
            Destination::Dir(d) => d.join(name).display().to_string(),
            Destination::S3(t) => t.url(name),
        }
    }

    /// The archives, newest first: (time, name, size).
    pub fn list(&self) -> Result<Vec<(SystemTime, String, u64)>, BackupError> {
        match self {
            Destination::S3(t) => s3::list(t),
            Destination::Dir(dir) => {
                let mut out: Vec<_> = std::fs::read_dir(dir)
                    .map_err(io(dir))?
                    .flatten()
                    .filter(|e| e.path().extension().and_then(|x| x.to_str()) == Some(EXTENSION))
                    .filter_map(|e| {
                        let m = e.metadata().ok()?;
                        Some((
                            m.modified().ok()?,
                            e.file_name().to_str()?.to_string(),
                            m.len(),
                        ))
                    })
                    .collect();
                out.sort_by(|a, b| b.cmp(a));
                Ok(out)
            }
        }
    }

    fn write(&self, name: &str, bytes: Vec<u8>) -> Result<(), BackupError> {
        match self {
            Destination::S3(t) => s3::put(t, name, bytes),
            Destination::Dir(dir) => {
                durable::ensure_dir(dir).map_err(io(dir))?;
                let path = dir.join(name);
                durable::write(&path, &bytes, 0o600).map_err(io(&path))
            }
        }
    }

    fn remove(&self, name: &str) -> Result<(), BackupError> {
        match self {
            Destination::S3(t) => s3::delete(t, name),
            Destination::Dir(dir) => {
                let path = dir.join(name);
                std::fs::remove_file(&path).map_err(io(&path))
            }
        }
    }
}

/// Reads an archive given as a path or an `s3://` URL.
pub fn read(archive: &str) -> Result<Vec<u8>, BackupError> {
    match s3::Target::parse(archive) {
        Some(t) => {
            let (prefix, name) = t.prefix.rsplit_once('/').unwrap_or(("", t.prefix.as_str()));
            let dir = s3::Target {
                bucket: t.bucket.clone(),
                prefix: prefix.to_string(),
            };
            s3::get(&dir, name)
        }
        None => {
            let path = Path::new(archive);
            std::fs::read(path).map_err(io(path))
        }
    }
}

/// Writes one archive of `state_dir` (and `config`) to `out`, and records it as the last
/// backup: its manifest and where it went.
pub fn write_archive(
    state_dir: &Path,
    config: Option<&Path>,
    out: &Destination,
    key_file: &Path,
) -> Result<(Manifest, String), BackupError> {
    let key = backup::key(key_file, true)?;
    let (manifest, bytes) = backup::create(state_dir, config, &key)?;
    let base = format!(
        "nrdot-{}-{}-v{}",
        manifest.hostname,
        manifest.time.replace(':', ""),
        manifest.config_version,
    );
    // Two archives within one second get distinct names.
    let taken: Vec<String> = match out.list() {
        Ok(l) => l.into_iter().map(|(_, n, _)| n).collect(),
        Err(_) => Vec::new(),
    };
    let mut name = format!("{base}.{EXTENSION}");
    let mut n = 1;
    while taken.contains(&name) {
        n += 1;
        name = format!("{base}-{n}.{EXTENSION}");
    }
    out.write(&name, bytes)?;
    let last = LastBackup {
        time: manifest.time.clone(),
        config_version: manifest.config_version,
        archive: out.locate(&name),
    };
    let marker = state_dir.join(LAST_BACKUP);
    let json = serde_json::to_vec(&last).map_err(|e| BackupError::Archive(e.to_string()))?;
    durable::write(&marker, &json, 0o600).map_err(io(&marker))?;
    Ok((manifest, last.archive))
}

/// Retention: an archive stays while it is younger than `keep_days` or among the newest
/// `keep_last`; the newest always stays, and with both at 0 every archive does. Returns
/// what was removed.
pub fn prune(
    out: &Destination,
    keep_days: u64,
    keep_last: usize,
    now: SystemTime,
) -> Result<Vec<String>, BackupError> {
    if keep_days == 0 && keep_last == 0 {
        return Ok(Vec::new());
    }
    let max_age = std::time::Duration::from_secs(keep_days * 86_400);
    let mut removed = Vec::new();
    for (i, (modified, name, _)) in out.list()?.into_iter().enumerate() {
        let young = keep_days > 0 && now.duration_since(modified).unwrap_or_default() < max_age;
        let recent = i < keep_last.max(1);
        if !young && !recent {
            out.remove(&name)?;
            removed.push(out.locate(&name));
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_keeps_young_archives_and_the_newest_few() {
        use std::time::Duration;
        let dir = std::env::temp_dir().join(format!("nrdot-prune-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let now = SystemTime::now();
        for (i, days) in [0u64, 1, 10, 40, 50].iter().enumerate() {
            let p = dir.join(format!("a{i}.{EXTENSION}"));
            std::fs::write(&p, b"x").expect("write");
            let f = std::fs::File::options().write(true).open(&p).expect("open");
            f.set_modified(now - Duration::from_secs(days * 86_400 + 60))
                .expect("mtime");
        }
        std::fs::write(dir.join("notes.txt"), b"not an archive").expect("write");
        let out = Destination::Dir(dir.clone());
        assert!(prune(&out, 0, 0, now).expect("prune").is_empty());
        // 30 days: the two older ones go.
        let gone = prune(&out, 30, 0, now).expect("prune");
        assert_eq!(gone.len(), 2, "{gone:?}");
        // Only the newest two, whatever their age.
        let gone = prune(&out, 0, 2, now).expect("prune");
        assert_eq!(gone.len(), 1, "{gone:?}");
        assert_eq!(out.list().expect("list").len(), 2);
        assert!(dir.join("notes.txt").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
