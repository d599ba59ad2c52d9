//! The installation kit in `dist/`: the systemd unit passes `systemd-analyze verify`,
//! `install.sh` installs a packaged release into a throwaway root and upgrades it in place,
//! refuses a tampered tarball or another system before changing anything, and `nrdot doctor`
//! tells a good setup from a bad one.
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use nrdot_tests::{pool_route, temp_dir, Nrdot, Origin};

use crate::BIN;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    // The unit names /usr/local/bin/nrdot, which verify requires to exist; point it at the
    // binary under test instead, and keep everything else as shipped.
    let dir = temp_dir("unit");
    let unit = std::fs::read_to_string(repo().join("dist/nrdot.service")).expect("unit");
    assert!(unit.contains("Type=notify") && unit.contains("SystemCallFilter=@system-service"));
    let path = dir.join("nrdot.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/nrdot", BIN)).expect("write unit");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian package systemd) must be installed");
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).trim().is_empty(),
        "verify complained: {}",
        text(&out)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn install_sh_installs_into_a_root_upgrades_in_place_and_refuses_bad_input() {
    let dir = temp_dir("install");
    let out = Command::new(repo().join("dist/package.sh"))
        .arg(BIN)
        .arg(dir.join("pkg"))
        .output()
        .expect("package.sh");
    assert!(out.status.success(), "{}", text(&out));
    let tarball = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().to_string());
    let install = |root: &Path, extra: &[(&str, &str)]| {
        let mut c = Command::new(repo().join("dist/install.sh"));
        c.arg("--tarball")
            .arg(&tarball)
            .arg("--root")
            .arg(root)
            .arg("--no-systemd");
        for (k, v) in extra {
            c.env(k, v);
        }
        c.output().expect("install.sh")
    };
    let root = dir.join("root");
    let first = install(&root, &[]);
    assert!(first.status.success(), "{}", text(&first));
    assert!(text(&first).contains("installed nrdot"), "{}", text(&first));
    let bin = root.join("usr/local/bin/nrdot");
    let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&bin), 0o755);
    assert_eq!(mode(&root.join("var/lib/nrdot")), 0o700);
    assert_eq!(mode(&root.join("etc/nrdot")), 0o750);
    assert_eq!(mode(&root.join("etc/nrdot/nrdot.toml")), 0o640);
    for f in [
        "etc/systemd/system/nrdot.service",
        "etc/sysctl.d/60-nrdot.conf",
        "etc/security/limits.d/nrdot.conf",
    ] {
        assert!(root.join(f).is_file(), "{f} missing");
    }
    let config = root.join("etc/nrdot/nrdot.toml");
    let validate = Command::new(&bin)
        .args(["config", "validate", "--file"])
        .arg(&config)
        .output()
        .expect("validate");
    assert!(validate.status.success(), "{}", text(&validate));
    // A second run upgrades in place and keeps the operator's configuration.
    let edited = format!(
        "# edited by the operator\n{}",
        std::fs::read_to_string(&config).expect("config")
    );
    std::fs::write(&config, &edited).expect("edit");
    let second = install(&root, &[]);
    assert!(second.status.success(), "{}", text(&second));
    assert!(text(&second).contains("upgraded"), "{}", text(&second));
    assert_eq!(std::fs::read_to_string(&config).expect("config"), edited);
    // A tampered tarball and another system stop before anything is written.
    let sum = PathBuf::from(format!("{}.sha256", tarball.display()));
    let good = std::fs::read_to_string(&sum).expect("sum");
    std::fs::write(&sum, format!("{}{}", "0".repeat(64), &good[64..])).expect("tamper");
    let fresh = dir.join("fresh");
    let bad = install(&fresh, &[]);
    assert_eq!(bad.status.code(), Some(1), "{}", text(&bad));
    assert!(text(&bad).contains("checksum mismatch"), "{}", text(&bad));
    std::fs::write(&sum, good).expect("restore");
    let other = install(&fresh, &[("NRDOT_INSTALL_UNAME", "Darwin")]);
    assert_eq!(other.status.code(), Some(1));
    assert!(
        text(&other).contains("unsupported system Darwin"),
        "{}",
        text(&other)
    );
    let left: Vec<_> = std::fs::read_dir(&fresh)
        .map(|d| d.flatten().collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "a refused install wrote {left:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_passes_a_good_setup_and_names_the_fix_for_a_bad_one() {
    let o = Origin::start("o").await;
    let n = Nrdot::start(BIN, "", &pool_route(&[o.addr]));
    let doctor = |config: &Path| {
        Command::new(BIN)
            .args(["doctor", "--config"])
            .arg(config)
            .output()
            .expect("doctor")
    };
    // Good: ports held by this very nrdot, private state dir and credentials.
    let good_config = n.dir.join("good.toml");
    std::fs::write(
        &good_config,
        format!(
            "state_dir = {:?}\n[admin]\nbind = \"{}\"\n[[listener]]\nname = \"http\"\nbind = \"{}\"\n{}",
            n.state_dir().display().to_string(),
            n.admin,
            n.addr,
            pool_route(&[o.addr])
        ),
    )
    .expect("config");
    let good = doctor(&good_config);
    assert_eq!(good.status.code(), Some(0), "{}", text(&good));
    assert!(
        text(&good).contains(&format!("held by nrdot PID {}", n.pid())),
        "{}",
        text(&good)
    );
    assert!(!text(&good).contains("FAIL"), "{}", text(&good));
    // Bad: a port taken by someone else, a readable state dir and credentials file.
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = squatter.local_addr().expect("addr");
    let dir = temp_dir("doctor");
    let state = dir.join("state");
    std::fs::create_dir_all(&state).expect("state");
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::write(state.join("admin-credentials"), "NRDOT_TOKEN=x\n").expect("creds");
    std::fs::set_permissions(
        state.join("admin-credentials"),
        std::fs::Permissions::from_mode(0o644),
    )
    .expect("chmod");
    let config = dir.join("bad.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = {:?}\n[admin]\nbind = \"{taken}\"\n[[listener]]\nname = \"http\"\nbind = \"127.0.0.1:0\"\n{}",
            state.display().to_string(),
            pool_route(&[o.addr])
        ),
    )
    .expect("config");
    let bad = doctor(&config);
    assert_eq!(bad.status.code(), Some(1), "{}", text(&bad));
    let report = text(&bad);
    assert!(
        report.contains(&format!(
            "FAIL port {taken} (admin): in use by another process"
        )),
        "{report}"
    );
    assert!(
        report.contains(&format!("chmod 700 {}", state.display())),
        "{report}"
    );
    assert!(report.contains("chmod 600"), "{report}");
    let json = Command::new(BIN)
        .args(["doctor", "--json", "--config"])
        .arg(&config)
        .output()
        .expect("doctor");
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json");
    let fails = v["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter(|f| f["level"] == "fail")
        .count();
    assert_eq!(fails, 3, "{v}");
    drop(squatter);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alert_rules_pass_promtool_and_name_series_nrdot_exports() {
    let dir = repo().join("dist/monitoring");
    for args in [
        ["check", "rules", "nrdot-alerts.yml"],
        ["test", "rules", "nrdot-alerts.test.yml"],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("promtool (Debian package prometheus) must be installed");
        assert!(out.status.success(), "promtool {args:?}: {}", text(&out));
    }
    let dashboard: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join("grafana-dashboard.json")).expect("dashboard"),
    )
    .expect("dashboard JSON");
    assert!(dashboard["panels"].as_array().is_some_and(|p| p.len() >= 6));
    // Every series the rules read is on a running node's /metrics.
    let o = Origin::start("o").await;
    let body = format!(
        "{}[backup]\ninterval = \"1h\"\ndir = {:?}\n",
        pool_route(&[o.addr]),
        temp_dir("alerts-backup").display().to_string()
    );
    let n = Nrdot::start(BIN, "", &body);
    let _ = nrdot_tests::get(&n.url("/"), &[]).await;
    let _ = n
        .api("GET", "/api/v2/version", "", Some("wrong-token"))
        .await;
    let metrics = n.metrics_text().await;
    let rules = std::fs::read_to_string(dir.join("nrdot-alerts.yml")).expect("rules");
    for series in [
        "nrdot_backend_failures_total",
        "nrdot_backend_requests_total",
        "nrdot_backend_health",
        "nrdot_backend_up",
        "nrdot_memory_usage_ratio",
        "nrdot_admin_auth_failures_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_cpu_seconds_total",
    ] {
        assert!(metrics.contains(series), "{series} missing from /metrics");
        if series.starts_with("nrdot_") {
            assert!(
                rules.contains(series)
                    || series == "nrdot_backend_requests_total"
                    || dashboard.to_string().contains(series)
            );
        }
    }
}
