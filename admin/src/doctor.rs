//! `nrdot doctor`: the playbook's pre-deployment checklist and system tuning, checked on this
//! machine. Each finding is one line with the fix; `fail` findings (nrdot would not start, or
//! would start unsafely) make the exit 1, `warn` findings (tuning) only with `--strict`.
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::ExitCode;

use nrdot_config::Config;
use serde::Serialize;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// As it should be.
    Ok,
    /// Works, but not tuned for an edge.
    Warn,
    /// nrdot would not start, or would run unsafely.
    Fail,
}

/// One checked item.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// What was checked (`port 0.0.0.0:80`, `sysctl net.core.somaxconn`, …).
    pub check: String,
    /// The verdict.
    pub level: Level,
    /// What was found.
    pub detail: String,
    /// What to do about it; empty when nothing.
    pub fix: String,
}

fn finding(
    check: impl Into<String>,
    level: Level,
    detail: impl Into<String>,
    fix: impl Into<String>,
) -> Finding {
    Finding {
        check: check.into(),
        level,
        detail: detail.into(),
        fix: fix.into(),
    }
}

/// The kernel settings of `dist/60-nrdot.conf`: key, the value to set, and whether a value
/// is good enough.
type Tuning = (&'static str, &'static str, fn(&str) -> bool);

fn at_least(n: u64) -> impl Fn(&str) -> bool {
    move |v: &str| v.trim().parse::<u64>().is_ok_and(|x| x >= n)
}

const SYSCTLS: [Tuning; 5] = [
    ("net.core.somaxconn", "65535", |v| at_least(65535)(v)),
    ("net.ipv4.tcp_max_syn_backlog", "65535", |v| {
        at_least(65535)(v)
    }),
    ("net.ipv4.ip_local_port_range", "1024 65535", |v| {
        let mut it = v.split_whitespace().filter_map(|x| x.parse::<u64>().ok());
        matches!((it.next(), it.next()), (Some(lo), Some(hi)) if lo <= 1024 && hi >= 65535)
    }),
    ("net.ipv4.tcp_tw_reuse", "1", |v| {
        matches!(v.trim(), "1" | "2")
    }),
    ("net.ipv4.tcp_fin_timeout", "15", |v| {
        v.trim().parse::<u64>().is_ok_and(|x| x <= 15)
    }),
];

/// Runs every check against the configuration in `file`.
pub fn run(file: &Path, json_out: bool, strict: bool) -> ExitCode {
    let mut out = Vec::new();
    let config = check_config(file, &mut out);
    if let Some(c) = &config {
        check_ports(c, &mut out);
        check_state_dir(&c.state_dir, &mut out);
    }
    check_fd_limit(&mut out);
    check_sysctls(Path::new("/proc/sys"), &mut out);
    report(&out, json_out);
    let worst = out
        .iter()
        .map(|f| f.level)
        .fold(Level::Ok, |a, b| match (a, b) {
            (Level::Fail, _) | (_, Level::Fail) => Level::Fail,
            (Level::Warn, _) | (_, Level::Warn) => Level::Warn,
            _ => Level::Ok,
        });
    match worst {
        Level::Fail => ExitCode::from(1),
        Level::Warn if strict => ExitCode::from(1),
        _ => ExitCode::SUCCESS,
    }
}

fn report(out: &[Finding], json_out: bool) {
    if json_out {
        println!("{}", serde_json::json!({ "findings": out }));
        return;
    }
    for f in out {
        let tag = match f.level {
            Level::Ok => "ok  ",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        };
        if f.fix.is_empty() {
            println!("{tag} {}: {}", f.check, f.detail);
        } else {
            println!("{tag} {}: {} — fix: {}", f.check, f.detail, f.fix);
        }
    }
    let count = |l| out.iter().filter(|f| f.level == l).count();
    println!(
        "{} ok, {} warning(s), {} failure(s)",
        count(Level::Ok),
        count(Level::Warn),
        count(Level::Fail)
    );
}

fn check_config(file: &Path, out: &mut Vec<Finding>) -> Option<Config> {
    let label = file.display().to_string();
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            out.push(finding(
                "config",
                Level::Fail,
                format!("cannot read {label}: {e}"),
                "pass --config FILE",
            ));
            return None;
        }
    };
    let config = match Config::from_toml(&text) {
        Ok(c) => c,
        Err(e) => {
            let first = e
                .render(&label)
                .lines()
                .next()
                .unwrap_or_default()
                .to_string();
            out.push(finding(
                "config",
                Level::Fail,
                format!("invalid: {first}"),
                format!("nrdot config validate --file {label}"),
            ));
            return None;
        }
    };
    out.push(finding(
        "config",
        Level::Ok,
        format!("{label} is valid"),
        "",
    ));
    let mut warnings = nrdot_config::lint::lint(&config);
    warnings.extend(crate::offline::certificate_warnings(&config));
    for w in warnings {
        // An expired or unloadable certificate stops a start; one expiring soon is a warning.
        let level = if w.message.contains("expires in -") || w.message.contains("cannot load") {
            Level::Fail
        } else {
            Level::Warn
        };
        out.push(finding(
            format!("lint {}", w.path),
            level,
            w.message,
            "see nrdot config lint",
        ));
    }
    Some(config)
}

fn check_ports(config: &Config, out: &mut Vec<Finding>) {
    let mut addrs: Vec<(String, SocketAddr)> = config
        .listeners
        .iter()
        .map(|l| (format!("listener {}", l.name), l.bind))
        .collect();
    addrs.push(("admin".into(), config.admin_bind));
    let holder = nrdot_holder(&config.state_dir);
    for (what, addr) in addrs {
        let check = format!("port {addr} ({what})");
        match std::net::TcpListener::bind(addr) {
            Ok(_) => out.push(finding(check, Level::Ok, "free", "")),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => match &holder {
                Some(pid) => out.push(finding(check, Level::Ok, format!("held by nrdot PID {pid}"), "")),
                None => out.push(finding(
                    check,
                    Level::Fail,
                    "in use by another process",
                    format!("find it with `ss -ltnp 'sport = :{}'` and stop it, or change the bind address", addr.port()),
                )),
            },
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => out.push(finding(
                check,
                Level::Warn,
                "a port below 1024 needs CAP_NET_BIND_SERVICE",
                "run as the systemd unit (it grants the capability), or setcap cap_net_bind_service=+ep $(command -v nrdot)",
            )),
            Err(e) => out.push(finding(check, Level::Fail, e.to_string(), "check the bind address")),
        }
    }
}

/// The PID of a live nrdot holding the state directory's lock.
fn nrdot_holder(state_dir: &Path) -> Option<String> {
    let pid = std::fs::read_to_string(state_dir.join(crate::lock::LOCK_FILE)).ok()?;
    let pid = pid.trim().to_string();
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    comm.trim().starts_with("nrdot").then_some(pid)
}

fn check_state_dir(dir: &Path, out: &mut Vec<Finding>) {
    let check = format!("state_dir {}", dir.display());
    let meta = match std::fs::metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            out.push(finding(
                check,
                Level::Warn,
                "does not exist yet (created on first start, mode 0700)",
                "",
            ));
            return;
        }
        Err(e) => {
            out.push(finding(
                check,
                Level::Fail,
                e.to_string(),
                "check the path and its parents' permissions",
            ));
            return;
        }
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        out.push(finding(
            check.clone(),
            Level::Fail,
            format!("mode {mode:o}: others can read versions and hashes"),
            format!("chmod 700 {}", dir.display()),
        ));
    } else {
        out.push(finding(
            check.clone(),
            Level::Ok,
            format!("mode {mode:o}"),
            "",
        ));
    }
    match rustix::fs::statvfs(dir) {
        Ok(s) => {
            let free = s.f_bavail.saturating_mul(s.f_frsize);
            let mib = free >> 20;
            let (level, fix) = match mib {
                m if m < 256 => (
                    Level::Fail,
                    "free space: versions, audit log and backups are written here",
                ),
                m if m < 1024 => (Level::Warn, "keep at least 1 GiB free"),
                _ => (Level::Ok, ""),
            };
            out.push(finding(
                format!("disk {}", dir.display()),
                level,
                format!("{mib} MiB free"),
                fix,
            ));
        }
        Err(e) => out.push(finding(
            format!("disk {}", dir.display()),
            Level::Warn,
            e.to_string(),
            "",
        )),
    }
    let creds = dir.join("admin-credentials");
    if let Ok(m) = std::fs::metadata(&creds) {
        let mode = m.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            out.push(finding(
                "credentials file",
                Level::Fail,
                format!("{} has mode {mode:o}", creds.display()),
                format!("chmod 600 {}", creds.display()),
            ));
        } else {
            out.push(finding(
                "credentials file",
                Level::Ok,
                format!("mode {mode:o}"),
                "",
            ));
        }
    }
}

fn check_fd_limit(out: &mut Vec<Finding>) {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    // nrdot raises its soft limit to the hard one at start, so the hard limit is what counts.
    match limit.maximum {
        None => out.push(finding("open-file limit", Level::Ok, "unlimited", "")),
        Some(n) if n >= 65536 => out.push(finding("open-file limit", Level::Ok, format!("hard limit {n}"), "")),
        Some(n) => out.push(finding(
            "open-file limit",
            Level::Warn,
            format!("hard limit {n}: each client and upstream connection is a descriptor"),
            "LimitNOFILE=1048576 in the unit (dist/nrdot.service has it), or dist/nrdot-limits.conf in /etc/security/limits.d/",
        )),
    }
}

/// Checks the kernel settings under `root` (`/proc/sys`; a directory of files in tests).
pub fn check_sysctls(root: &Path, out: &mut Vec<Finding>) {
    for (key, want, good) in SYSCTLS {
        let path = root.join(key.replace('.', "/"));
        let check = format!("sysctl {key}");
        match std::fs::read_to_string(&path) {
            Ok(v) if good(&v) => out.push(finding(check, Level::Ok, v.split_whitespace().collect::<Vec<_>>().join(" "), "")),
            Ok(v) => out.push(finding(
                check,
                Level::Warn,
                format!("{} (want {want})", v.split_whitespace().collect::<Vec<_>>().join(" ")),
                format!("sysctl -w {key}=\"{want}\" and add `{key} = {want}` to /etc/sysctl.d/60-nrdot.conf (dist/60-nrdot.conf)"),
            )),
            Err(e) => out.push(finding(check, Level::Warn, format!("unreadable: {e}"), "")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctls_are_judged_against_the_tuning_file() {
        let dir = std::env::temp_dir().join(format!("nrdot-doctor-{}", std::process::id()));
        let values = [
            ("net/core/somaxconn", "4096\n"),
            ("net/ipv4/tcp_max_syn_backlog", "65535\n"),
            ("net/ipv4/ip_local_port_range", "32768\t60999\n"),
            ("net/ipv4/tcp_tw_reuse", "2\n"),
            ("net/ipv4/tcp_fin_timeout", "60\n"),
        ];
        for (k, v) in values {
            let p = dir.join(k);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(p, v).expect("write");
        }
        let mut out = Vec::new();
        check_sysctls(&dir, &mut out);
        let levels: Vec<Level> = out.iter().map(|f| f.level).collect();
        assert_eq!(
            levels,
            [Level::Warn, Level::Ok, Level::Warn, Level::Ok, Level::Warn]
        );
        assert!(
            out[0]
                .fix
                .contains("sysctl -w net.core.somaxconn=\"65535\""),
            "{:?}",
            out[0]
        );
        assert!(out[2].detail.starts_with("32768 60999"), "{:?}", out[2]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
