//! The state-directory lock: one nrdot per state directory, because two writers of the version
//! store, audit chain and rollouts would fork them. `state_dir/nrdot.lock` holds an exclusive
//! `flock` and the holder's PID, so a second nrdot names the one in its way.
//!
//! A `flock` belongs to the open file description, not to the process: a binary upgrade passes
//! the descriptor to the new process (`SCM_RIGHTS`), which then holds the same lock, and the
//! old one's exit does not release it. That is why nothing here unlocks explicitly; the kernel
//! releases the lock when the last descriptor closes.
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};

/// Why the state directory could not be claimed.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds it.
    #[error("state directory {dir} is in use by nrdot PID {pid} (lock file {lock}); stop it first, or upgrade it with `nrdot upgrade`")]
    Held {
        /// The state directory.
        dir: PathBuf,
        /// The holder's PID as it wrote it ("unknown" when unreadable).
        pid: String,
        /// The lock file.
        lock: PathBuf,
    },
    /// The lock file could not be opened or locked.
    #[error("cannot lock {path}: {source}")]
    Io {
        /// The lock file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The held lock. Dropping it closes this process's descriptor.
#[derive(Debug)]
pub struct StateLock {
    file: File,
    path: PathBuf,
}

/// The lock file's name inside the state directory.
pub const LOCK_FILE: &str = "nrdot.lock";

impl StateLock {
    /// Takes the lock without waiting, creating `dir` and the lock file when needed.
    pub fn acquire(dir: &Path) -> Result<StateLock, LockError> {
        let path = dir.join(LOCK_FILE);
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        crate::durable::ensure_dir(dir).map_err(io)?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
                return Err(LockError::Held {
                    dir: dir.to_path_buf(),
                    pid: holder(&path),
                    lock: path.clone(),
                })
            }
            Err(e) => return Err(io(e.into())),
        }
        let lock = StateLock {
            file,
            path: path.clone(),
        };
        lock.write_pid().map_err(io)?;
        Ok(lock)
    }

    /// Takes over a lock handed over by the process this one replaces.
    pub fn adopt(fd: OwnedFd, dir: &Path) -> StateLock {
        StateLock {
            file: File::from(fd),
            path: dir.join(LOCK_FILE),
        }
    }

    /// Records this process as the holder.
    pub fn write_pid(&self) -> std::io::Result<()> {
        let mut f = &self.file;
        f.set_len(0)?;
        f.rewind()?;
        writeln!(f, "{}", std::process::id())?;
        f.sync_data()
    }

    /// A second descriptor of the same lock, for a handover.
    pub fn share(&self) -> std::io::Result<OwnedFd> {
        Ok(self.file.try_clone()?.into())
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The PID written in the lock file, for the error message.
fn holder(path: &Path) -> String {
    let mut s = String::new();
    match File::open(path).and_then(|mut f| f.read_to_string(&mut s)) {
        Ok(_) if !s.trim().is_empty() => s.trim().to_string(),
        _ => "unknown".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid() {
        let dir = std::env::temp_dir().join(format!("nrdot-lock-{}", std::process::id()));
        let first = StateLock::acquire(&dir).expect("first lock");
        match StateLock::acquire(&dir) {
            Err(LockError::Held { pid, .. }) => assert_eq!(pid, std::process::id().to_string()),
            other => panic!("expected Held, got {other:?}"),
        }
        // A shared descriptor keeps the lock after the first one is gone (the handover).
        let shared = first.share().expect("share");
        drop(first);
        assert!(matches!(
            StateLock::acquire(&dir),
            Err(LockError::Held { .. })
        ));
        drop(shared);
        let again = StateLock::acquire(&dir).expect("free again");
        drop(again);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
