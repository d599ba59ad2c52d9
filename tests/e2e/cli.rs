//! The `nrdot` client verbs against a running instance, as the playbook's scripts use them.
use nrdot_tests::{get, pool, pool_route, Nrdot, Origin};

use crate::BIN;

fn out(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn playbook_rolling_script_verbs_work() {
    let (s1, s2) = (Origin::start("s1").await, Origin::start("s2").await);
    let body = format!(
        "{}[[route]]\nname = \"r\"\npool = \"p\"\n",
        pool("p", &[s1.addr, s2.addr])
    );
    let n = Nrdot::start(BIN, "", &body);
    let list = n.cli(&["backend", "list"]);
    assert!(list.status.success(), "{}", out(&list));
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(text.starts_with("ID"), "{text}");
    assert!(
        text.contains(&format!("p/{}", s1.addr)) && text.contains("enabled"),
        "{text}"
    );

    // disable --server, by address, waiting for the drain.
    let server = s1.addr.to_string();
    let o = n.cli(&["backend", "disable", "--server", &server, "--wait"]);
    assert!(o.status.success(), "{}", out(&o));
    assert!(out(&o).contains("drained"), "{}", out(&o));
    for _ in 0..10 {
        assert_eq!(get(&n.url("/"), &[]).await.header("x-origin"), "s2");
    }
    // health check --server: the upgraded server answers, so it may go back in.
    let o = n.cli(&["health", "check", "--server", &server]);
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    let o = n.cli(&["backend", "enable", "--server", &server]);
    assert!(o.status.success(), "{}", out(&o));
    let json = n.cli(&["--json", "backend", "list"]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json");
    assert!(v["backends"]
        .as_array()
        .expect("list")
        .iter()
        .all(|b| b["admin_state"] == "enabled"));

    // A server that is down fails its check; the process health reflects drained pools.
    let dead = s2.addr.to_string();
    s2.stop();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let o = n.cli(&["health", "check", "--server", &dead]);
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    assert!(out(&o).contains("unhealthy"));
    assert_eq!(n.cli(&["health", "check"]).status.code(), Some(0));
    n.cli(&["backend", "disable", "--server", &dead]);
    n.cli(&["backend", "disable", "--server", &server]);
    assert_eq!(
        n.cli(&["health", "check"]).status.code(),
        Some(1),
        "a pool with no available backend is unhealthy"
    );
    assert_eq!(
        n.cli(&["health", "check", "--server", "nowhere"])
            .status
            .code(),
        Some(1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_apply_rollback_diff_history_and_version() {
    let (a, b) = (Origin::start("a").await, Origin::start("b").await);
    let two = |t: &str| {
        format!(
            "{}{}[[route]]\nname = \"r\"\npool = \"{t}\"\n",
            pool("a", &[a.addr]),
            pool("b", &[b.addr])
        )
    };
    let n = Nrdot::start(BIN, "", &two("a"));
    let current = std::fs::read_to_string(&n.config).expect("config");
    let new_file = n.dir.join("next.toml");
    std::fs::write(
        &new_file,
        current.replace(
            "pool = \"a\"\n\n[access_log]",
            "pool = \"b\"\n\n[access_log]",
        ),
    )
    .expect("write");
    let f = new_file.to_str().expect("path");

    let o = n.cli(&["config", "apply", "--file", f, "-m", "move to b"]);
    assert!(o.status.success(), "{}", out(&o));
    assert!(out(&o).contains("applied as version 2"), "{}", out(&o));
    assert_eq!(get(&n.url("/"), &[]).await.header("x-origin"), "b");

    // Invalid: exit 1, positions in the file, nothing changed.
    let bad_file = n.dir.join("bad.toml");
    std::fs::write(
        &bad_file,
        current.replace(
            "pool = \"a\"\n\n[access_log]",
            "pool = \"ghost\"\n\n[access_log]",
        ),
    )
    .expect("write");
    let o = n.cli(&[
        "config",
        "apply",
        "--file",
        bad_file.to_str().expect("path"),
        "-m",
        "oops",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    assert!(
        out(&o).contains("bad.toml:") && out(&o).contains("undefined pool \"ghost\""),
        "{}",
        out(&o)
    );
    assert_eq!(get(&n.url("/"), &[]).await.header("x-origin"), "b");
    // Stale --if-match.
    assert_eq!(
        n.cli(&[
            "config",
            "apply",
            "--file",
            f,
            "-m",
            "again",
            "--if-match",
            "1"
        ])
        .status
        .code(),
        Some(1)
    );

    let o = n.cli(&["version", "history"]);
    let lines: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert!(
        lines[0].starts_with("2\t") && lines[0].ends_with("move to b"),
        "{lines:?}"
    );
    assert!(lines[1].starts_with("1\t"), "{lines:?}");
    // The playbook's PREVIOUS_VERSION=$(nrdot version history | head -2 | tail -1), with -q.
    let q = n.cli(&["version", "history", "-q"]);
    assert_eq!(String::from_utf8_lossy(&q.stdout), "2\n1\n");

    let d = n.cli(&["config", "diff", "1", "2"]);
    assert!(
        String::from_utf8_lossy(&d.stdout).contains("+pool = \"b\""),
        "{}",
        out(&d)
    );

    let o = n.cli(&["config", "rollback", "1"]);
    assert!(o.status.success(), "{}", out(&o));
    assert_eq!(get(&n.url("/"), &[]).await.header("x-origin"), "a");

    let v = n.cli(&["version"]);
    let text = String::from_utf8_lossy(&v.stdout);
    assert!(
        text.starts_with("nrdot 0.") && text.contains("running config version 3"),
        "{text}"
    );

    let audit = n.cli(&["audit"]);
    let text = String::from_utf8_lossy(&audit.stdout);
    assert!(
        text.contains("config.apply")
            && text.contains("config.rollback")
            && text.contains("invalid"),
        "{text}"
    );
    assert_eq!(n.cli(&["audit", "verify"]).status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_from_flags_env_and_state_dir_with_exit_codes() {
    let o = Origin::start("o").await;
    let n = Nrdot::start(BIN, "", &pool_route(&[o.addr]));
    // A wrong token: exit 3, and nothing changes.
    let bad = std::process::Command::new(BIN)
        .args([
            "--admin-url",
            &format!("http://{}", n.admin),
            "--token",
            "nrd_nope",
            "backend",
            "disable",
            "--server",
            &o.addr.to_string(),
        ])
        .output()
        .expect("run");
    assert_eq!(bad.status.code(), Some(3), "{}", out(&bad));
    // Environment variables.
    let env = std::process::Command::new(BIN)
        .args(["backend", "list"])
        .env("NRDOT_ADMIN_URL", format!("http://{}", n.admin))
        .env("NRDOT_TOKEN", n.token())
        .output()
        .expect("run");
    assert!(env.status.success(), "{}", out(&env));
    // Nothing listening: exit 2.
    let gone = std::process::Command::new(BIN)
        .args([
            "--admin-url",
            "http://127.0.0.1:1",
            "--token",
            "x",
            "backend",
            "list",
        ])
        .output()
        .expect("run");
    assert_eq!(gone.status.code(), Some(2), "{}", out(&gone));
    // Rotation through the CLI; the state directory's file follows, so the CLI keeps working.
    let old = n.token();
    let r = n.cli(&["admin", "rotate-token"]);
    assert!(r.status.success(), "{}", out(&r));
    let new = String::from_utf8_lossy(&r.stdout).trim().to_string();
    assert_ne!(new, old);
    assert_eq!(n.token(), new);
    assert!(n.cli(&["backend", "list"]).status.success());
    let c = n.cli(&["admin", "create-token", "--name", "ci", "--role", "viewer"]);
    let viewer = String::from_utf8_lossy(&c.stdout).trim().to_string();
    let denied = std::process::Command::new(BIN)
        .args([
            "--admin-url",
            &format!("http://{}", n.admin),
            "--token",
            &viewer,
            "backend",
            "disable",
            "--server",
            &o.addr.to_string(),
        ])
        .output()
        .expect("run");
    assert_eq!(denied.status.code(), Some(3));
}
