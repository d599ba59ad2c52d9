//! Dashboard sessions without a browser: cookie flags, the idle timeout, failed logins in the
//! audit log, and `nrdot admin set-password` from the real CLI.
use std::process::{Command, Stdio};
use std::time::Duration;

use nrdot_tests::{pool_route, Nrdot, Origin};
use serde_json::Value;

use crate::BIN;

async fn login(n: &Nrdot, password: &str) -> nrdot_tests::Reply {
    let body = serde_json::json!({ "user": "admin", "password": password }).to_string();
    n.api("POST", "/api/v2/session", &body, Some("")).await
}

/// `nrdot admin set-password --password-stdin` with `password` on stdin.
fn set_password(n: &Nrdot, password: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new(BIN)
        .arg("--state-dir")
        .arg(n.state_dir())
        .args(["--admin-url", &format!("http://{}", n.admin)])
        .args(["admin", "set-password", "--password-stdin"])
        .env_remove("NRDOT_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cli");
    if let Some(mut stdin) = child.stdin.take() {
        let _ = writeln!(stdin, "{password}");
    }
    child.wait_with_output().expect("cli output")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_have_strict_cookies_end_when_idle_and_follow_password_changes() {
    let o = Origin::start("o").await;
    let mut n = Nrdot::start(BIN, "", &pool_route(&[o.addr]));
    // A short idle timeout, set in the file the way an operator would.
    let text = std::fs::read_to_string(&n.config).expect("config");
    let text = text.replacen(
        "[admin]\nbind = \"127.0.0.1:0\"\n",
        "[admin]\nbind = \"127.0.0.1:0\"\nsession_idle = \"2s\"\n",
        1,
    );
    std::fs::write(&n.config, text).expect("write config");
    n.restart();
    let old = n.dashboard_password();

    let wrong = login(&n, "wrong password").await;
    assert_eq!(wrong.status, 401);
    assert!(wrong.header("set-cookie").is_empty());
    let ok = login(&n, &old).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    let set = ok.header("set-cookie").to_string();
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(flag), "{set}");
    }
    assert!(!set.contains("Secure"), "plain HTTP admin: {set}");
    assert_eq!(ok.json()["idle_timeout_s"], 2);
    let cookie = set.split(';').next().expect("cookie").to_string();
    let with_cookie = |path: &'static str| {
        let cookie = cookie.clone();
        let n = &n;
        async move {
            n.api_with("GET", path, "", Some(""), &[("cookie", &cookie)])
                .await
                .status
        }
    };
    assert_eq!(with_cookie("/api/v2/version").await, 200);
    // Used within the timeout, it lives on; left alone longer, it is gone.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(with_cookie("/api/v2/version").await, 200);
    tokio::time::sleep(Duration::from_millis(2300)).await;
    assert_eq!(with_cookie("/api/v2/version").await, 401);

    // The CLI refuses a short password and changes nothing.
    let short = set_password(&n, "short");
    assert!(!short.status.success());
    assert!(String::from_utf8_lossy(&short.stderr).contains("at least 12"));
    assert_eq!(login(&n, &old).await.status, 200);
    let changed = set_password(&n, "a new long dashboard password");
    assert!(
        changed.status.success(),
        "{}",
        String::from_utf8_lossy(&changed.stderr)
    );
    assert_eq!(login(&n, &old).await.status, 401);
    assert_eq!(login(&n, "a new long dashboard password").await.status, 200);
    let audit = n
        .api("GET", "/api/v2/audit?limit=50", "", None)
        .await
        .json();
    let actions: Vec<(String, String)> = audit["entries"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
                    (s("action"), s("outcome"))
                })
                .collect()
        })
        .unwrap_or_default();
    for want in [
        ("session.login", "unauthorized"),
        ("session.login", "ok"),
        ("admin.password", "invalid"),
        ("admin.password", "ok"),
    ] {
        assert!(
            actions.contains(&(want.0.to_string(), want.1.to_string())),
            "{want:?} not in {actions:?}"
        );
    }
    let verify: Value = n.api("GET", "/api/v2/audit/verify", "", None).await.json();
    assert_eq!(verify["ok"], true);
}
