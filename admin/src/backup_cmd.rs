//! `nrdot backup create | list | verify | restore`: run on the node's host, against its state
//! directory and configuration file (the running node need not answer; restore needs it
//! stopped). Exit codes as everywhere: 0 done, 1 refused or damaged, 2 unreadable input.
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::archives::{self, Destination};
use crate::backup::{self, BackupError};

/// Where archives go by default.
pub const DEFAULT_DIR: &str = "/var/backups/nrdot";
/// Where the key lives by default (outside the state directory it protects).
pub const DEFAULT_KEY: &str = "/etc/nrdot/backup.key";

fn fail(e: &BackupError) -> ExitCode {
    eprintln!("nrdot: {e}");
    match e {
        BackupError::Io { .. } => ExitCode::from(2),
        _ => ExitCode::from(1),
    }
}

/// The state directory: `--state-dir`, else the configuration's `state_dir`.
pub fn state_dir(flag: Option<&Path>, config: &Path) -> Result<PathBuf, ExitCode> {
    if let Some(d) = flag {
        return Ok(d.to_path_buf());
    }
    let text = std::fs::read_to_string(config).map_err(|e| {
        eprintln!(
            "nrdot: cannot read {}: {e} (pass --config or --state-dir)",
            config.display()
        );
        ExitCode::from(2)
    })?;
    nrdot_config::Config::from_toml(&text)
        .map(|c| c.state_dir)
        .map_err(|e| {
            eprint!("{}", e.render(&config.display().to_string()));
            ExitCode::from(1)
        })
}

/// `backup create`: writes `nrdot-<host>-<time>-v<version>.nrbk` into `out`.
pub fn create(
    state_dir: &Path,
    config: &Path,
    out: &Path,
    key_file: &Path,
    json: bool,
) -> ExitCode {
    let config = config.exists().then_some(config);
    let out = Destination::parse(&out.to_string_lossy());
    match archives::write_archive(state_dir, config, &out, key_file) {
        Ok((m, path)) => {
            if json {
                println!("{}", serde_json::json!({ "archive": path, "manifest": m }));
            } else {
                println!(
                    "{}: config version {} ({}), {} components",
                    path,
                    m.config_version,
                    m.config_checksum.get(..12).unwrap_or(""),
                    m.components.len()
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// `backup list`: the archives in a directory or an `s3://` prefix, newest first.
pub fn list(dir: &Path) -> ExitCode {
    let out = Destination::parse(&dir.to_string_lossy());
    match out.list() {
        Ok(list) => {
            for (_, name, len) in list {
                println!("{}\t{len} bytes", out.locate(&name));
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// `backup prune`: applies the retention by hand.
pub fn prune(dir: &Path, keep_days: u64, keep_last: usize) -> ExitCode {
    let out = Destination::parse(&dir.to_string_lossy());
    match archives::prune(&out, keep_days, keep_last, std::time::SystemTime::now()) {
        Ok(removed) => {
            for p in &removed {
                println!("removed {p}");
            }
            println!("{} archive(s) removed", removed.len());
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// Reads (from a path or `s3://`), decrypts and checks an archive.
pub fn open(archive: &Path, key_file: &Path) -> Result<backup::Opened, BackupError> {
    let key = backup::key(key_file, false)?;
    let bytes = archives::read(&archive.to_string_lossy())?;
    backup::open(&bytes, &key)
}

/// `backup verify`: decrypts and checks every component; changes nothing.
pub fn verify(archive: &Path, key_file: &Path, json: bool) -> ExitCode {
    match open(archive, key_file) {
        Ok((m, _)) => {
            if json {
                println!("{}", serde_json::json!({ "valid": true, "manifest": m }));
            } else {
                println!(
                    "{}: OK, taken {} on {} by nrdot {}: config version {} ({}), {} components verified",
                    archive.display(),
                    m.time,
                    m.hostname,
                    m.nrdot_version,
                    m.config_version,
                    m.config_checksum.get(..12).unwrap_or(""),
                    m.components.len()
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// `backup restore`: rebuilds a stopped node's state directory (`--dry-run`: says what).
pub fn restore(archive: &Path, key_file: &Path, state_dir: &Path, dry_run: bool) -> ExitCode {
    let (m, components) = match open(archive, key_file) {
        Ok(x) => x,
        Err(e) => return fail(&e),
    };
    let state: Vec<_> = components
        .iter()
        .filter(|(c, _)| c.name.starts_with("state/"))
        .collect();
    if dry_run {
        println!(
            "would restore {} state files into {} (config version {}); current contents kept as {}.pre-restore-<time>",
            state.len(),
            state_dir.display(),
            m.config_version,
            state_dir.display()
        );
        for (c, _) in &state {
            println!("  {}\t{} bytes", c.name, c.size);
        }
        return ExitCode::SUCCESS;
    }
    match backup::restore(state_dir, &components) {
        Ok(kept) => {
            println!(
                "restored {} (config version {}, {}) into {}",
                archive.display(),
                m.config_version,
                m.config_checksum.get(..12).unwrap_or(""),
                state_dir.display()
            );
            if let Some(k) = kept {
                println!("the previous state directory is kept as {}", k.display());
            }
            let others: Vec<_> = components
                .iter()
                .filter(|(c, _)| !c.name.starts_with("state/"))
                .collect();
            for (c, _) in others {
                println!(
                    "  kept in the archive, not written: {} (from {})",
                    c.name, c.origin
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}
