//! Three nodes sharing one configuration history through a real etcd (Debian `etcd-server`)
//! started by the test on loopback ports.
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nrdot_tests::{get, pool, Nrdot, Origin};
use serde_json::Value;

use crate::BIN;

/// One etcd member on free loopback ports, with its data in a temporary directory.
struct Etcd {
    child: Child,
    url: String,
    dir: std::path::PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl Etcd {
    async fn start() -> Etcd {
        let (client, peer) = (free_port(), free_port());
        let dir = nrdot_tests::temp_dir("etcd");
        let url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = Command::new("etcd")
            .args(["--name", "e1", "--data-dir"])
            .arg(&dir)
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("e1={peer_url}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd (Debian etcd-server) must be installed");
        // Owned from here: a failed wait below still stops etcd and removes its data.
        let etcd = Etcd { child, url, dir };
        let url = etcd.url.clone();
        let t = Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", client))
            .await
            .is_err()
        {
            assert!(t.elapsed() < Duration::from_secs(20), "etcd did not listen");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        loop {
            let health = get(&format!("{url}/health"), &[]).await;
            if health.status == 200 && health.text().contains("true") {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(20), "etcd did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        etcd
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn body(etcd: &Etcd, node: &str, origin: &Origin) -> String {
    format!(
        "{}[[route]]\nname = \"app\"\npool = \"o\"\n\n[cluster]\netcd = [\"{}\"]\nnode = \"{node}\"\nregion = \"eu-west\"\n",
        pool("o", &[origin.addr]),
        etcd.url
    )
}

async fn version(n: &Nrdot) -> u64 {
    n.api("GET", "/api/v2/version", "", None).await.json()["config_version"]
        .as_u64()
        .unwrap_or(0)
}

/// The first backend's admin state as node `n` sees it.
async fn admin_state(n: &Nrdot) -> String {
    n.api("GET", "/api/v2/backends", "", None).await.json()["backends"][0]["admin_state"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_through_one_node_is_served_by_all_and_concurrent_changes_conflict() {
    let etcd = Etcd::start().await;
    let origin = Origin::start("v1").await;
    let a = Nrdot::start(BIN, "", &body(&etcd, "a", &origin));
    let b = Nrdot::start(BIN, "", &body(&etcd, "b", &origin));
    let c = Nrdot::start(BIN, "", &body(&etcd, "c", &origin));
    for n in [&a, &b, &c] {
        assert_eq!(version(n).await, 1, "every node serves the seeded version");
    }

    // A change through A: a new route B and C serve within 2 s.
    let text = a.api("GET", "/api/v2/config", "", None).await.json()["toml"]
        .as_str()
        .expect("toml")
        .replace(
            "name = \"app\"\npool = \"o\"",
            "name = \"app\"\npath = \"/v2\"\npool = \"o\"",
        );
    let put = a.api("PUT", "/api/v2/config", &text, None).await;
    assert_eq!(put.status, 200, "{}", put.text());
    let t = Instant::now();
    for n in [&b, &c] {
        while version(n).await < 2 {
            assert!(
                t.elapsed() < Duration::from_secs(2),
                "a node still serves version 1"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            get(&n.url("/"), &[]).await.status,
            404,
            "the old route is gone"
        );
        assert_eq!(get(&n.url("/v2"), &[]).await.status, 200);
    }
    let took = t.elapsed();

    // Two changes based on version 2, through two nodes at once: one wins, one gets 409.
    let (ra, rb) = tokio::join!(
        a.api_with(
            "PUT",
            "/api/v2/config",
            &text,
            None,
            &[("if-match", "\"2\"")]
        ),
        b.api_with(
            "PUT",
            "/api/v2/config",
            &text,
            None,
            &[("if-match", "\"2\"")]
        ),
    );
    let mut codes = [ra.status.as_u16(), rb.status.as_u16()];
    codes.sort_unstable();
    assert_eq!(codes, [200, 409], "{} / {}", ra.text(), rb.text());

    // Every node, its region and the version it serves.
    let t = Instant::now();
    loop {
        let view: Value = c.api("GET", "/api/v2/cluster", "", None).await.json();
        let nodes = view["nodes"].as_array().cloned().unwrap_or_default();
        let settled = nodes.len() == 3
            && nodes
                .iter()
                .all(|n| n["version"] == 3 && n["lagging"] == false && n["region"] == "eu-west");
        if settled {
            assert_eq!(view["current"], 3);
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "{view}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = c.cli(&["cluster", "status"]);
    let out = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{out}");
    assert!(
        out.contains("cluster version 3") && out.matches("eu-west").count() == 3,
        "{out}"
    );
    eprintln!("change served by the other nodes after {took:?}");

    // `backend disable` through B drains the server on A and C too; enable brings it back.
    let out = b.cli(&["backend", "disable", "--server", &origin.addr.to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (want, verb) in [("disabled", None), ("enabled", Some("enable"))] {
        if let Some(verb) = verb {
            let out = b.cli(&["backend", verb, "--server", &origin.addr.to_string()]);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let t = Instant::now();
        for n in [&a, &c] {
            while admin_state(n).await != want {
                assert!(
                    t.elapsed() < Duration::from_secs(2),
                    "not {want} on every node"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    assert_eq!(get(&a.url("/v2"), &[]).await.status, 200);

    // etcd gone: every node keeps serving; a change is refused with 503 and says why.
    drop(etcd);
    for n in [&a, &b, &c] {
        assert_eq!(get(&n.url("/v2"), &[]).await.status, 200);
    }
    let refused = b.api("PUT", "/api/v2/config", &text, None).await;
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert!(refused.text().contains("unavailable"), "{}", refused.text());
    assert_eq!(version(&b).await, 3);
    assert_eq!(get(&b.url("/v2"), &[]).await.status, 200);
}
