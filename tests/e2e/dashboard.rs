//! The dashboard in a real headless Chromium, driven over WebDriver (`chromedriver`, Debian
//! `chromium-driver`), against a real `nrdot serve` with real origins and steady traffic. Each
//! test saves a screenshot of the page it checked in `target/dashboard-screenshots/` (CI keeps
//! them; `NRDOT_SCREENSHOTS=docs/screenshots` refreshes the README's) and fails on any browser
//! console error it did not cause on purpose.
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fantoccini::{Client, ClientBuilder, Locator};
use http::Request;
use http_body_util::Full;
use nrdot_tests::{pool, send, Load, Nrdot, Origin};
use serde_json::{json, Value};

use crate::BIN;

struct Browser {
    driver: Child,
    port: u16,
    client: Client,
    profile: std::path::PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl Browser {
    async fn start() -> Browser {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian chromium-driver) must be installed");
        let t = Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "chromedriver did not listen"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let profile = nrdot_tests::temp_dir("chromium");
        let caps = json!({
            "goog:chromeOptions": {
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,900", format!("--user-data-dir={}", profile.display())]
            },
            "goog:loggingPrefs": { "browser": "ALL" }
        });
        let Value::Object(caps) = caps else {
            unreachable!("a JSON object")
        };
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a Chromium session");
        Browser {
            driver,
            port,
            client,
            profile,
        }
    }

    /// Console messages at level SEVERE since the last call (chromedriver's log endpoint).
    async fn console_errors(&self) -> Vec<String> {
        let id = self
            .client
            .session_id()
            .await
            .ok()
            .flatten()
            .expect("session id");
        let req = Request::post(format!(
            "http://127.0.0.1:{}/session/{id}/se/log",
            self.port
        ))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(br#"{"type":"browser"}"#)))
        .expect("request");
        let r = send(&nrdot_tests::http_client(), req).await;
        let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        v["value"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|e| e["level"] == "SEVERE")
                    .map(|e| e["message"].as_str().unwrap_or_default().to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Fails on console errors, except those containing one of `expected`.
    async fn assert_quiet_console(&self, expected: &[&str]) {
        let unexpected: Vec<String> = self
            .console_errors()
            .await
            .into_iter()
            .filter(|m| !expected.iter().any(|e| m.contains(e)))
            .collect();
        assert!(unexpected.is_empty(), "console errors: {unexpected:#?}");
    }

    async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.expect("screenshot");
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut dirs = vec![root.join("target/dashboard-screenshots")];
        if let Ok(d) = std::env::var("NRDOT_SCREENSHOTS") {
            dirs.push(root.join(d));
        }
        for d in dirs {
            std::fs::create_dir_all(&d).expect("screenshot dir");
            std::fs::write(d.join(format!("{name}.png")), &png).expect("write screenshot");
        }
    }

    /// The element matching `css`, once it is there and shown.
    async fn find(&self, css: &str) -> fantoccini::elements::Element {
        let t = Instant::now();
        loop {
            if let Ok(e) = self.client.find(Locator::Css(css)).await {
                if e.is_displayed().await.unwrap_or(false) {
                    return e;
                }
            }
            assert!(t.elapsed() < Duration::from_secs(20), "no visible {css}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Clicks `css`, again if the page redrew it under the click.
    async fn click(&self, css: &str) {
        for _ in 0..5 {
            if self.find(css).await.click().await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("could not click {css}");
    }

    async fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css).await;
        e.clear().await.expect("clear");
        e.send_keys(text).await.expect("type");
    }

    /// Waits until the text of `css` satisfies `ok`; returns it.
    async fn wait_text(&self, css: &str, within: Duration, ok: impl Fn(&str) -> bool) -> String {
        let t = Instant::now();
        let mut last = String::new();
        while t.elapsed() < within {
            if let Ok(e) = self.client.find(Locator::Css(css)).await {
                last = e.text().await.unwrap_or_default();
                if ok(&last) {
                    return last;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{css} never matched within {within:?}; last text {last:?}");
    }

    async fn count(&self, css: &str) -> usize {
        self.client
            .find_all(Locator::Css(css))
            .await
            .map(|v| v.len())
            .unwrap_or(0)
    }

    /// Opens the dashboard from `/` and logs in; `expect_ok` false expects a refusal.
    async fn login(&self, n: &Nrdot, user: &str, password: &str, expect_ok: bool) {
        if self.client.find(Locator::Id("login-user")).await.is_err() {
            self.client
                .goto(&format!("http://{}/", n.admin))
                .await
                .expect("open dashboard");
        }
        self.type_into("#login-user", user).await;
        self.type_into("#login-password", password).await;
        self.click("#login-submit").await;
        if expect_ok {
            self.find("#bar").await;
        } else {
            self.wait_text("#login-error", Duration::from_secs(10), |t| {
                t.contains("Wrong user or password")
            })
            .await;
        }
    }

    async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

/// A failed test still stops chromedriver (and the browser with it) and removes the profile.
impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Route `app` splitting 100/0 over pools `stable` and `canary`, each with a real origin.
async fn app() -> (Nrdot, Origin, Origin) {
    let stable = Origin::start("stable").await;
    let canary = Origin::start("canary").await;
    let body = format!(
        "{}{}[[route]]\nname = \"app\"\nsplit = [{{ pool = \"stable\", weight = 100 }}, {{ pool = \"canary\", weight = 0 }}]\n",
        pool("stable", &[stable.addr]),
        pool("canary", &[canary.addr])
    );
    (Nrdot::start(BIN, "", &body), stable, canary)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_refuses_a_wrong_password_shows_live_pools_and_logs_out() {
    let (n, _s, _c) = app().await;
    let load = Load::start(format!("http://{}/", n.addr), 1);
    let b = Browser::start().await;
    b.login(&n, "admin", "not the password", false).await;
    b.screenshot("dashboard-login").await;
    b.login(&n, "admin", &n.dashboard_password(), true).await;
    b.wait_text("#routes", Duration::from_secs(10), |t| {
        t.contains("app") && t.contains("stable 100% · canary 0%")
    })
    .await;
    // Live figures: the stable pool's requests/s becomes non-zero under the steady load.
    b.wait_text("#pool-stable .rps", Duration::from_secs(20), |t| {
        t.parse::<f64>().is_ok_and(|r| r > 0.0)
    })
    .await;
    assert_eq!(b.count("#pool-stable svg.chart").await, 2);
    // The chart draws the 10 s points of the server's history as they come.
    let t = Instant::now();
    loop {
        let points = b
            .client
            .execute(
                "const l = document.querySelector('#pool-stable svg.chart polyline'); return l ? l.getAttribute('points').split(' ').length : 0",
                vec![],
            )
            .await
            .ok()
            .and_then(|v| v.as_u64())
            .unwrap_or(0);
        if points >= 3 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(40),
            "the chart has {points} points"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    b.screenshot("dashboard-overview").await;
    b.click("#nav-audit").await;
    b.wait_text("#audit-verify", Duration::from_secs(10), |t| {
        t.contains("Chain intact")
    })
    .await;
    b.wait_text("#audit", Duration::from_secs(10), |t| {
        t.contains("session.login") && t.contains("unauthorized")
    })
    .await;
    b.screenshot("dashboard-audit").await;
    b.click("#logout").await;
    b.wait_text("#login-error", Duration::from_secs(10), |t| {
        t.contains("Logged out")
    })
    .await;
    // The cookie is gone server-side too: the API no longer knows this browser.
    let s: Value = b
        .client
        .execute(
            "return fetch('/api/v2/session').then(r => r.json())",
            vec![],
        )
        .await
        .expect("fetch session");
    assert_eq!(s["logged_in"], false);
    b.assert_quiet_console(&[
        "api/v2/session - Failed to load resource: the server responded with a status of 401",
    ])
    .await;
    b.close().await;
    let (failed, _) = load.failures().await;
    assert_eq!(failed, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_starts_a_canary_pauses_resumes_and_watches_it_reach_100() {
    let (n, _s, _c) = app().await;
    let load = Load::start(format!("http://{}/", n.addr), 2);
    let b = Browser::start().await;
    b.login(&n, "admin", &n.dashboard_password(), true).await;
    b.click("#nav-rollouts").await;
    b.find("#rollout-form").await;
    b.click("#ro-to option[value=canary]").await;
    b.type_into("#ro-steps", "20,50,100").await;
    b.type_into("#ro-interval", "3s").await;
    b.click("#ro-start").await;
    b.wait_text("#rollout-phase", Duration::from_secs(10), |t| {
        t == "progressing"
    })
    .await;
    b.click("#rollout-pause").await;
    b.wait_text("#rollout-phase", Duration::from_secs(10), |t| t == "paused")
        .await;
    let paused = n.api("GET", "/api/v2/rollouts/1", "", None).await.json();
    assert_eq!(paused["phase"], "paused", "{paused}");
    b.click("#rollout-resume").await;
    b.wait_text("#rollout-phase", Duration::from_secs(30), |t| {
        t == "completed"
    })
    .await;
    b.wait_text("#rollout-weight", Duration::from_secs(5), |t| t == "100%")
        .await;
    b.wait_text("#timeline", Duration::from_secs(5), |t| {
        t.contains("paused") && t.contains("resumed")
    })
    .await;
    b.screenshot("dashboard-rollout").await;
    b.click("#nav-overview").await;
    b.wait_text("#routes", Duration::from_secs(10), |t| {
        t.contains("canary 100%")
    })
    .await;
    b.assert_quiet_console(&[]).await;
    b.close().await;
    let (failed, total) = load.failures().await;
    assert_eq!(failed, 0, "{failed} of {total} requests failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_rolls_back_a_config_version_from_the_diff_page() {
    let (n, _s, _c) = app().await;
    let v1 = n.api("GET", "/api/v2/config", "", None).await.json();
    let changed = v1["toml"]
        .as_str()
        .expect("toml")
        .replace("weight = 100 }", "weight = 60 }")
        .replace("weight = 0 }", "weight = 40 }");
    let put = n.api("PUT", "/api/v2/config", &changed, None).await;
    assert_eq!(put.status, 200, "{}", put.text());
    let b = Browser::start().await;
    b.login(&n, "admin", &n.dashboard_password(), true).await;
    b.click("#nav-config").await;
    b.wait_text("#diff", Duration::from_secs(10), |t| {
        t.contains("-split") && t.contains("weight = 60")
    })
    .await;
    b.click("#rollback").await;
    b.find("#rollback-confirm").await;
    b.screenshot("dashboard-config").await;
    b.click("#rollback-confirm-yes").await;
    b.wait_text("#versions", Duration::from_secs(10), |t| {
        t.contains("3 (current)") && t.contains("rollback from the dashboard")
    })
    .await;
    let now = n.api("GET", "/api/v2/config", "", None).await.json();
    assert_eq!(now["version"]["id"], 3);
    assert_eq!(now["version"]["checksum"], v1["version"]["checksum"]);
    b.assert_quiet_console(&[]).await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_disables_and_enables_a_backend() {
    let (n, _s, _c) = app().await;
    let b = Browser::start().await;
    b.login(&n, "admin", &n.dashboard_password(), true).await;
    b.click("#nav-backends").await;
    let row = "#backends tr[data-backend^='stable/']";
    b.wait_text(&format!("{row} .state"), Duration::from_secs(10), |t| {
        t == "enabled"
    })
    .await;
    b.click(&format!("{row} button")).await;
    b.wait_text(&format!("{row} .state"), Duration::from_secs(10), |t| {
        t == "disabled"
    })
    .await;
    let list = n.api("GET", "/api/v2/backends", "", None).await.json();
    let stable = |l: &Value| {
        l["backends"]
            .as_array()
            .and_then(|a| a.iter().find(|b| b["pool"] == "stable").cloned())
            .unwrap_or_default()
    };
    assert_eq!(stable(&list)["admin_state"], "disabled");
    b.screenshot("dashboard-backends").await;
    b.click(&format!("{row} button")).await;
    b.wait_text(&format!("{row} .state"), Duration::from_secs(10), |t| {
        t == "enabled"
    })
    .await;
    let list = n.api("GET", "/api/v2/backends", "", None).await.json();
    assert_eq!(stable(&list)["admin_state"], "enabled");
    b.assert_quiet_console(&[]).await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_viewer_has_no_controls_and_a_post_without_csrf_is_refused() {
    let (n, _s, _c) = app().await;
    let created = n
        .api(
            "POST",
            "/api/v2/tokens",
            r#"{"name":"watcher","role":"viewer"}"#,
            None,
        )
        .await
        .json();
    let secret = created["token"].as_str().expect("token").to_string();
    let b = Browser::start().await;
    b.login(&n, "watcher", &secret, true).await;
    b.wait_text("#who", Duration::from_secs(5), |t| t.contains("viewer"))
        .await;
    b.click("#nav-backends").await;
    b.wait_text("#backends", Duration::from_secs(10), |t| {
        t.contains("stable")
    })
    .await;
    assert_eq!(
        b.count("#app button").await,
        0,
        "viewer sees buttons on Backends"
    );
    b.screenshot("dashboard-viewer").await;
    b.click("#nav-rollouts").await;
    b.find("#app h2").await;
    assert_eq!(b.count("#rollout-form").await, 0);
    b.click("#nav-config").await;
    b.find("#versions").await;
    assert_eq!(b.count("#rollback").await, 0);
    assert_eq!(
        b.count("#password-open[hidden]").await,
        1,
        "viewer sees Password"
    );

    // The server refuses anyway: the viewer's own session, with its CSRF token, is 403.
    let cookie = b
        .client
        .get_named_cookie("nrdot_session")
        .await
        .expect("session cookie");
    let cookie = format!("nrdot_session={}", cookie.value());
    let session = n
        .api_with(
            "GET",
            "/api/v2/session",
            "",
            Some(""),
            &[("cookie", &cookie)],
        )
        .await
        .json();
    let csrf = session["csrf"].as_str().expect("csrf").to_string();
    let backends = n.api("GET", "/api/v2/backends", "", None).await.json();
    let id = backends["backends"][0]["id"]
        .as_str()
        .expect("id")
        .replace('/', "%2F");
    let path = format!("/api/v2/backends/{id}/disable");
    let r = n
        .api_with(
            "POST",
            &path,
            "",
            Some(""),
            &[("cookie", &cookie), ("x-csrf-token", &csrf)],
        )
        .await;
    assert_eq!(r.status, 403, "viewer disable: {}", r.text());

    // An admin session without (or with a wrong) CSRF token: 403, nothing changed.
    b.click("#logout").await;
    b.wait_text("#login-error", Duration::from_secs(10), |t| {
        t.contains("Logged out")
    })
    .await;
    b.login(&n, "admin", &n.dashboard_password(), true).await;
    let cookie = b
        .client
        .get_named_cookie("nrdot_session")
        .await
        .expect("session cookie");
    let cookie = format!("nrdot_session={}", cookie.value());
    for headers in [
        vec![("cookie", cookie.as_str())],
        vec![("cookie", cookie.as_str()), ("x-csrf-token", "forged")],
    ] {
        let r = n.api_with("POST", &path, "", Some(""), &headers).await;
        assert_eq!(r.status, 403, "forged POST: {}", r.text());
        assert!(r.text().contains("CSRF"), "{}", r.text());
    }
    let after = n.api("GET", "/api/v2/backends", "", None).await.json();
    assert!(after["backends"]
        .as_array()
        .is_some_and(|a| a.iter().all(|b| b["admin_state"] == "enabled")));
    b.assert_quiet_console(&[]).await;
    b.close().await;
}
