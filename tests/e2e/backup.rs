//! Backups end to end: an archive taken from a running node brings back the same version,
//! checksum, drained backend, rollout, audit chain and tokens after the state directory is
//! lost; damaged archives, wrong keys, newer formats and a running target are refused with
//! nothing changed.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use nrdot_tests::{pool, Nrdot, Origin};

use crate::BIN;

fn run(args: &[&str], extra: &[&Path]) -> Output {
    let mut c = Command::new(BIN);
    c.args(args);
    for p in extra {
        c.arg(p);
    }
    c.output().expect("run nrdot")
}

/// `nrdot backup create` with the given configuration, destination and key.
fn create(config: &Path, out: &Path, key: &Path) -> Output {
    run(
        &["backup", "create", "--config"],
        &[
            config,
            Path::new("--output"),
            out,
            Path::new("--key-file"),
            key,
        ],
    )
}

/// An archive in `dir` (the tests write one).
fn first_archive(dir: &Path) -> PathBuf {
    std::fs::read_dir(dir)
        .expect("archive directory")
        .flatten()
        .next()
        .expect("an archive")
        .path()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Every file under `dir` with its content, to show that nothing changed.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap_or_default()));
            }
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_state_dir_comes_back_from_a_backup_with_versions_drains_rollouts_and_tokens() {
    let (a, b, c) = (
        Origin::start("a").await,
        Origin::start("b").await,
        Origin::start("c").await,
    );
    let body = format!(
        "{}{}[[route]]\nname = \"app\"\nsplit = [{{ pool = \"stable\", weight = 100 }}, {{ pool = \"canary\", weight = 0 }}]\n",
        pool("stable", &[a.addr, b.addr]),
        pool("canary", &[c.addr])
    );
    let mut n = Nrdot::start(BIN, "", &body);
    let token = n.token();
    // Changes: a drained backend and a canary in progress (each step is a config version).
    let r = n
        .api(
            "POST",
            &format!("/api/v2/backends/stable%2F{}/disable", b.addr),
            "",
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let r = n
        .api(
            "POST",
            "/api/v2/rollouts",
            r#"{"kind":"canary","route":"app","to":"canary","steps":"10,100","interval":"1h"}"#,
            None,
        )
        .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let rollout = r.json()["id"].as_u64().expect("id");
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let before = n.api("GET", "/api/v2/version", "", None).await.json();
    assert!(before["config_version"].as_u64() >= Some(2), "{before}");

    let dir = n.dir.clone();
    let (out, key) = (dir.join("backups"), dir.join("keys/backup.key"));
    let created = create(&n.config, &out, &key);
    assert!(created.status.success(), "{}", text(&created));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).expect("key").permissions().mode() & 0o777,
        0o600
    );
    assert!(
        text(&created).contains("created backup key"),
        "{}",
        text(&created)
    );
    let archive = first_archive(&out);
    let verified = run(
        &["backup", "verify"],
        &[&archive, Path::new("--key-file"), &key],
    );
    assert!(verified.status.success(), "{}", text(&verified));
    assert!(
        text(&verified).contains(&format!("config version {}", before["config_version"])),
        "{}",
        text(&verified)
    );
    let listed = run(&["backup", "list", "--output"], &[&out]);
    assert_eq!(String::from_utf8_lossy(&listed.stdout).lines().count(), 1);

    // Restoring over the running node is refused, and changes nothing.
    let state = n.state_dir();
    let untouched = snapshot(&state);
    let busy = run(
        &["backup", "restore"],
        &[
            &archive,
            Path::new("--config"),
            &n.config,
            Path::new("--key-file"),
            &key,
        ],
    );
    assert_eq!(busy.status.code(), Some(1), "{}", text(&busy));
    assert!(
        text(&busy).contains("in use by nrdot PID"),
        "{}",
        text(&busy)
    );
    assert_eq!(snapshot(&state).len(), untouched.len());

    // The node stops and its state directory is lost.
    assert!(n.terminate().success());
    std::fs::remove_dir_all(&state).expect("wipe");
    let dry = run(
        &["backup", "restore", "--dry-run"],
        &[
            &archive,
            Path::new("--config"),
            &n.config,
            Path::new("--key-file"),
            &key,
        ],
    );
    assert!(dry.status.success(), "{}", text(&dry));
    assert!(!state.exists(), "a dry run wrote the state directory");
    let restored = run(
        &["backup", "restore"],
        &[
            &archive,
            Path::new("--config"),
            &n.config,
            Path::new("--key-file"),
            &key,
        ],
    );
    assert!(restored.status.success(), "{}", text(&restored));
    n.restart();

    // Same version and checksum, the drain, the rollout, a whole audit chain, the old token.
    let after = n.api("GET", "/api/v2/version", "", Some(&token)).await;
    assert_eq!(after.status, 200, "the old token no longer works");
    let after = after.json();
    assert_eq!(after["config_version"], before["config_version"]);
    assert_eq!(after["config_checksum"], before["config_checksum"]);
    let backends = n
        .api("GET", "/api/v2/backends", "", Some(&token))
        .await
        .json();
    let drained = backends["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .find(|x| x["address"] == b.addr.to_string())
        .expect("b")
        .clone();
    assert_eq!(drained["admin_state"], "disabled", "{backends}");
    let r = n
        .api(
            "GET",
            &format!("/api/v2/rollouts/{rollout}"),
            "",
            Some(&token),
        )
        .await
        .json();
    assert_eq!(r["phase"], "progressing", "{r}");
    let verify = n.api("GET", "/api/v2/audit/verify", "", Some(&token)).await;
    assert_eq!(
        verify.status,
        200,
        "{}",
        String::from_utf8_lossy(&verify.body)
    );
}

#[test]
fn damaged_archives_wrong_keys_and_newer_formats_are_refused_with_nothing_changed() {
    let dir = nrdot_tests::temp_dir("backup-bad");
    let state = dir.join("state");
    std::fs::create_dir_all(state.join("versions")).expect("state");
    std::fs::write(state.join("runtime.json"), "{}").expect("runtime");
    let config = dir.join("nrdot.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = {:?}\n[[listener]]\nname = \"h\"\nbind = \"127.0.0.1:0\"\n[[pool]]\nname = \"o\"\n[[pool.server]]\naddress = \"127.0.0.1:1\"\n[[route]]\nname = \"r\"\npool = \"o\"\n",
            state.display().to_string()
        ),
    )
    .expect("config");
    let (out, key, other) = (dir.join("out"), dir.join("key"), dir.join("other.key"));
    let created = create(&config, &out, &key);
    assert!(created.status.success(), "{}", text(&created));
    let archive = first_archive(&out);
    let good = std::fs::read(&archive).expect("read");
    std::fs::write(&other, format!("{}\n", "ab".repeat(32))).expect("other key");
    let before = snapshot(&state);
    let restore = |archive: &Path, key: &Path| {
        run(
            &["backup", "restore"],
            &[
                archive,
                Path::new("--config"),
                &config,
                Path::new("--key-file"),
                key,
            ],
        )
    };
    let variants: Vec<(&str, Vec<u8>, &Path, &str)> = vec![
        ("wrong key", good.clone(), &other, "cannot decrypt"),
        (
            "truncated",
            good[..good.len() - 100].to_vec(),
            &key,
            "cannot decrypt",
        ),
        (
            "bit flip",
            {
                let mut b = good.clone();
                let i = b.len() / 2;
                b[i] ^= 0x10;
                b
            },
            &key,
            "cannot decrypt",
        ),
        (
            "newer format",
            {
                let mut b = good.clone();
                b[7] = 9;
                b
            },
            &key,
            "archive format 9 is newer",
        ),
        (
            "not an archive",
            b"hello, world, this is no archive at all".to_vec(),
            &key,
            "not an nrdot backup archive",
        ),
    ];
    for (what, bytes, k, why) in variants {
        let bad = dir.join(format!("{}.nrbk", what.replace(' ', "-")));
        std::fs::write(&bad, bytes).expect("write");
        for verb in ["verify", "restore"] {
            let o = if verb == "verify" {
                run(&["backup", "verify"], &[&bad, Path::new("--key-file"), k])
            } else {
                restore(&bad, k)
            };
            assert_eq!(o.status.code(), Some(1), "{what} {verb}: {}", text(&o));
            assert!(text(&o).contains(why), "{what} {verb}: {}", text(&o));
        }
        assert_eq!(
            snapshot(&state),
            before,
            "{what} changed the state directory"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_backups_run_from_the_config_keep_the_retention_and_report_failures() {
    let o = Origin::start("o").await;
    let dir = nrdot_tests::temp_dir("scheduled");
    let (out, key) = (dir.join("archives"), dir.join("backup.key"));
    let body = format!(
        "{}[backup]\ninterval = \"1s\"\ndir = {:?}\nkeep_days = 0\nkeep_last = 2\nkey_file = {:?}\n",
        nrdot_tests::pool_route(&[o.addr]),
        out.display().to_string(),
        key.display().to_string()
    );
    let n = Nrdot::start(BIN, "", &body);
    tokio::time::sleep(std::time::Duration::from_millis(3600)).await;
    let archives: Vec<_> = std::fs::read_dir(&out)
        .expect("archives")
        .flatten()
        .collect();
    assert_eq!(
        archives.len(),
        2,
        "retention keeps the newest two: {archives:?}"
    );
    let events = n.api("GET", "/api/v2/events", "", None).await.json();
    let created = events["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["kind"] == "backup.created")
        .count();
    assert!(created >= 3, "{events}");
    assert!(
        n.metric("nrdot_backup_last_success_timestamp_seconds")
            .await
            > 1.7e9
    );
    assert_eq!(n.metric("nrdot_backup_failures_total").await, 0.0);
    let newest = &archives[0].path();
    let verified = run(
        &["backup", "verify"],
        &[newest, Path::new("--key-file"), &key],
    );
    assert!(verified.status.success(), "{}", text(&verified));
    // A destination that cannot be written: counted, reported, and the proxy is unaffected.
    let blocked = dir.join("a-file");
    std::fs::write(&blocked, "x").expect("file");
    let body = body.replace(
        &format!("{:?}", out.display().to_string()),
        &format!("{:?}", blocked.join("sub").display().to_string()),
    );
    n.rewrite_and_reload(&body);
    tokio::time::sleep(std::time::Duration::from_millis(2600)).await;
    assert!(n.metric("nrdot_backup_failures_total").await >= 1.0);
    assert_eq!(nrdot_tests::get(&n.url("/"), &[]).await.status, 200);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_restore_brings_back_the_config_and_drains_as_a_new_audited_version() {
    let (a, b) = (Origin::start("a").await, Origin::start("b").await);
    let body = |target: &str| {
        format!(
            "{}{}[[route]]\nname = \"r\"\npool = \"{target}\"\n",
            pool("one", &[a.addr]),
            pool("two", &[b.addr])
        )
    };
    let n = Nrdot::start(BIN, "", &body("one"));
    let r = n
        .api(
            "POST",
            &format!("/api/v2/backends/two%2F{}/disable", b.addr),
            "",
            None,
        )
        .await;
    assert_eq!(r.status, 200);
    let dir = n.dir.clone();
    let (out, key) = (dir.join("backups"), dir.join("backup.key"));
    let created = create(&n.config, &out, &key);
    assert!(created.status.success(), "{}", text(&created));
    let archive = first_archive(&out);
    let backed_up = n.api("GET", "/api/v2/version", "", None).await.json();
    // Later changes: another route target and the backend back in.
    let config = std::fs::read_to_string(&n.config)
        .expect("config")
        .replace("pool = \"one\"", "pool = \"two\"");
    let r = n.api("PUT", "/api/v2/config", &config, None).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let r = n
        .api(
            "POST",
            &format!("/api/v2/backends/two%2F{}/enable", b.addr),
            "",
            None,
        )
        .await;
    assert_eq!(r.status, 200);
    // A viewer may not restore; nothing changes.
    let viewer = n
        .api(
            "POST",
            "/api/v2/tokens",
            r#"{"name":"v","role":"viewer"}"#,
            None,
        )
        .await
        .json();
    let viewer = viewer["token"].as_str().expect("token").to_string();
    let restore = |token: Option<String>| {
        let mut c = Command::new(BIN);
        c.args(["--state-dir"])
            .arg(n.state_dir())
            .args(["--admin-url", &format!("http://{}", n.admin)]);
        if let Some(t) = token {
            c.args(["--token", &t]);
        }
        c.args(["backup", "restore", "--live", "--key-file"])
            .arg(&key)
            .arg(&archive);
        c.output().expect("restore")
    };
    let refused = restore(Some(viewer));
    assert_eq!(refused.status.code(), Some(3), "{}", text(&refused));
    let before = n.api("GET", "/api/v2/version", "", None).await.json();
    let done = restore(None);
    assert!(done.status.success(), "{}", text(&done));
    let now = n.api("GET", "/api/v2/version", "", None).await.json();
    assert_eq!(
        now["config_checksum"], backed_up["config_checksum"],
        "{now}"
    );
    assert!(
        now["config_version"].as_u64() > before["config_version"].as_u64(),
        "a new version"
    );
    assert_eq!(
        nrdot_tests::get(&n.url("/"), &[]).await.header("x-origin"),
        "a"
    );
    let backends = n.api("GET", "/api/v2/backends", "", None).await.json();
    let two = backends["backends"]
        .as_array()
        .expect("list")
        .iter()
        .find(|x| x["pool"] == "two")
        .expect("two")
        .clone();
    assert_eq!(two["admin_state"], "disabled", "{backends}");
    let audit = n.api("GET", "/api/v2/audit?limit=5", "", None).await.json();
    assert!(audit.to_string().contains("backup.restore"), "{audit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_versions_prunes_only_what_a_backup_holds() {
    let o = Origin::start("o").await;
    let body = format!(
        "{}[store]\nkeep_versions = 3\n",
        nrdot_tests::pool_route(&[o.addr])
    );
    let n = Nrdot::start(BIN, "", &body);
    let base = std::fs::read_to_string(&n.config).expect("config");
    let n = &n;
    let put = |i: u32| {
        let t = format!("{base}\n# change {i}\n");
        async move { n.api("PUT", "/api/v2/config", &t, None).await.status }
    };
    for i in 0..5 {
        assert_eq!(put(i).await, 200);
    }
    let ids = |v: serde_json::Value| -> Vec<u64> {
        v["versions"]
            .as_array()
            .expect("versions")
            .iter()
            .filter_map(|x| x["id"].as_u64())
            .collect()
    };
    // Nothing is in a backup yet: every version stays.
    assert_eq!(
        ids(n
            .api("GET", "/api/v2/config/versions", "", None)
            .await
            .json())
        .len(),
        6
    );
    let (out, key) = (n.dir.join("b"), n.dir.join("k"));
    let created = create(&n.config, &out, &key);
    assert!(created.status.success(), "{}", text(&created));
    assert_eq!(put(5).await, 200);
    assert_eq!(
        ids(n
            .api("GET", "/api/v2/config/versions", "", None)
            .await
            .json()),
        [5, 6, 7]
    );
    let history = n.cli(&["version", "history"]);
    assert!(
        String::from_utf8_lossy(&history.stderr).contains("versions 1 to 4 were pruned"),
        "{}",
        text(&history)
    );
    let gone = n
        .api("POST", "/api/v2/config/rollback", r#"{"version":1}"#, None)
        .await;
    assert_eq!(gone.status, 404, "{}", String::from_utf8_lossy(&gone.body));
    assert!(String::from_utf8_lossy(&gone.body).contains("keep_versions"));
    // The archive still has them all.
    let archive = first_archive(&out);
    let v = run(
        &["--json", "backup", "verify"],
        &[&archive, Path::new("--key-file"), &key],
    );
    let m: serde_json::Value = serde_json::from_slice(&v.stdout).expect("json");
    let versions = m["manifest"]["components"]
        .as_array()
        .expect("c")
        .iter()
        .filter(|c| {
            c["name"]
                .as_str()
                .is_some_and(|s| s.starts_with("state/versions/0"))
        })
        .count();
    assert_eq!(versions, 6);
}

/// A local S3-compatible server (moto, from PyPI: `pip install "moto[server]"`) on a free port,
/// stopped when dropped.
struct Moto {
    child: std::process::Child,
    url: String,
}

impl Moto {
    async fn start() -> Moto {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let mut child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("moto_server (pip install \"moto[server]\") must be installed");
        let url = format!("http://127.0.0.1:{port}");
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Moto { child, url };
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("moto_server did not listen on {port}");
    }

    async fn bucket(&self, name: &str) {
        let req = http::Request::put(format!("{}/{name}", self.url))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .expect("request");
        let r = nrdot_tests::send(&nrdot_tests::http_client(), req).await;
        assert!(r.status.is_success(), "create bucket: {}", r.status);
    }

    fn env(&self, c: &mut Command) {
        c.env("AWS_ENDPOINT_URL", &self.url)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1");
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_go_to_an_s3_bucket_and_come_back_from_it() {
    let moto = Moto::start().await;
    moto.bucket("nrdot-backups").await;
    let o = Origin::start("o").await;
    let mut n = Nrdot::start(BIN, "", &nrdot_tests::pool_route(&[o.addr]));
    let token = n.token();
    let base = std::fs::read_to_string(&n.config).expect("config");
    assert_eq!(
        n.api("PUT", "/api/v2/config", &format!("{base}\n# v2\n"), None)
            .await
            .status,
        200
    );
    let before = n.api("GET", "/api/v2/version", "", None).await.json();
    let key = n.dir.join("backup.key");
    let s3 = |args: &[&str]| {
        let mut c = Command::new(BIN);
        c.args(args);
        moto.env(&mut c);
        c.output().expect("run")
    };
    let cfg = n.config.display().to_string();
    let k = key.display().to_string();
    let created = s3(&[
        "backup",
        "create",
        "--config",
        &cfg,
        "--output",
        "s3://nrdot-backups/edge-1",
        "--key-file",
        &k,
    ]);
    assert!(created.status.success(), "{}", text(&created));
    let listed = s3(&["backup", "list", "--output", "s3://nrdot-backups/edge-1"]);
    let url = String::from_utf8_lossy(&listed.stdout)
        .split('\t')
        .next()
        .unwrap_or("")
        .to_string();
    assert!(
        url.starts_with("s3://nrdot-backups/edge-1/nrdot-"),
        "{}",
        text(&listed)
    );
    let verified = s3(&["backup", "verify", &url, "--key-file", &k]);
    assert!(verified.status.success(), "{}", text(&verified));
    // The node is lost and comes back from the bucket.
    assert!(n.terminate().success());
    std::fs::remove_dir_all(n.state_dir()).expect("wipe");
    let restored = s3(&[
        "backup",
        "restore",
        &url,
        "--config",
        &cfg,
        "--key-file",
        &k,
    ]);
    assert!(restored.status.success(), "{}", text(&restored));
    n.restart();
    let after = n
        .api("GET", "/api/v2/version", "", Some(&token))
        .await
        .json();
    assert_eq!(after["config_version"], before["config_version"]);
    assert_eq!(after["config_checksum"], before["config_checksum"]);
    // An unreachable store fails the backup with the reason; nothing is written.
    let mut c = Command::new(BIN);
    c.args([
        "backup",
        "create",
        "--config",
        &cfg,
        "--output",
        "s3://nrdot-backups/x",
        "--key-file",
        &k,
    ]);
    moto.env(&mut c);
    c.env("AWS_ENDPOINT_URL", "http://127.0.0.1:9");
    let down = c.output().expect("run");
    assert_eq!(down.status.code(), Some(1), "{}", text(&down));
    assert!(text(&down).contains("S3 upload"), "{}", text(&down));
}
