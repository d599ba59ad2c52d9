//! Three nodes sharing one configuration history through a real etcd (Debian `etcd-server`)
//! started by the test on loopback ports.
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nrdot_tests::{get, pool, Load, Nrdot, Origin};
use serde_json::Value;

use crate::BIN;

/// A real etcd cluster (1 or 3 members) on free loopback ports, with its data in a temporary
/// directory. Members can be killed and started again on the same data.
struct Etcd {
    members: Vec<Member>,
    dir: std::path::PathBuf,
    /// Every member's client URL, comma-separated (what `[cluster] etcd` lists).
    url: String,
}

struct Member {
    name: String,
    client: u16,
    peer: u16,
    child: Option<Child>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl Etcd {
    async fn start() -> Etcd {
        Etcd::start_members(1).await
    }

    async fn start_members(n: usize) -> Etcd {
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("e{i}"),
                client: free_port(),
                peer: free_port(),
                child: None,
            })
            .collect();
        let url = members
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client))
            .collect::<Vec<_>>()
            .join("\", \"");
        // Owned from here: a failed wait below still stops etcd and removes its data.
        let mut etcd = Etcd {
            members,
            dir: nrdot_tests::temp_dir("etcd"),
            url,
        };
        for i in 0..n {
            etcd.spawn(i);
        }
        for i in 0..n {
            etcd.wait_healthy(i).await;
        }
        etcd
    }

    fn spawn(&mut self, i: usize) {
        let initial = self
            .members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        let m = &mut self.members[i];
        let url = format!("http://127.0.0.1:{}", m.client);
        let peer_url = format!("http://127.0.0.1:{}", m.peer);
        let child = Command::new("etcd")
            .args(["--name", &m.name, "--data-dir"])
            .arg(self.dir.join(&m.name))
            .args(["--listen-client-urls", &url])
            .args(["--advertise-client-urls", &url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &initial])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd (Debian etcd-server) must be installed");
        m.child = Some(child);
    }

    /// Waits until member `i` answers and its cluster has a leader.
    async fn wait_healthy(&self, i: usize) {
        let url = format!("http://127.0.0.1:{}", self.members[i].client);
        let t = Instant::now();
        loop {
            let up = tokio::net::TcpStream::connect(("127.0.0.1", self.members[i].client))
                .await
                .is_ok();
            if up {
                let health = get(&format!("{url}/health"), &[]).await;
                if health.status == 200 && health.text().contains("true") {
                    return;
                }
            }
            assert!(t.elapsed() < Duration::from_secs(30), "etcd did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops member `i` with SIGKILL.
    fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The index of the member that leads (asked through etcd's JSON gateway).
    async fn leader(&self) -> usize {
        for (i, m) in self.members.iter().enumerate() {
            if m.child.is_none() {
                continue;
            }
            let req = hyper::Request::post(format!(
                "http://127.0.0.1:{}/v3/maintenance/status",
                m.client
            ))
            .body(http_body_util::Full::new(hyper::body::Bytes::from("{}")))
            .expect("request");
            let status: Value = nrdot_tests::send(&nrdot_tests::http_client(), req)
                .await
                .json();
            if status["leader"] == status["header"]["member_id"] {
                return i;
            }
        }
        panic!("no etcd member leads");
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
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

/// Starts a node of a cluster that `first` seeded. Credentials are the cluster's: the node
/// writes none of its own, and its operator uses the first node's (copied, as onto a new
/// machine).
fn join(first: &Nrdot, body: &str) -> Nrdot {
    let n = Nrdot::start(BIN, "", body);
    let own = n.state_dir().join("admin-credentials");
    assert!(!own.exists(), "a joining node wrote credentials of its own");
    std::fs::copy(first.state_dir().join("admin-credentials"), own).expect("copy credentials");
    n
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
    let b = join(&a, &body(&etcd, "b", &origin));
    let c = join(&a, &body(&etcd, "c", &origin));
    for n in [&a, &b, &c] {
        assert_eq!(version(n).await, 1, "every node serves the seeded version");
    }

    // A token made through B works on C (the hashes are the cluster's).
    let made = b
        .api(
            "POST",
            "/api/v2/tokens",
            r#"{"name": "ci", "role": "viewer"}"#,
            None,
        )
        .await;
    assert_eq!(made.status, 200, "{}", made.text());
    let secret = made.json()["token"].as_str().expect("token").to_string();
    let t = Instant::now();
    while c
        .api("GET", "/api/v2/version", "", Some(&secret))
        .await
        .status
        != 200
    {
        assert!(t.elapsed() < Duration::from_secs(2), "token unknown on C");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refused = c.api("PUT", "/api/v2/config", "", Some(&secret)).await;
    assert_eq!(
        refused.status, 403,
        "a viewer's token is a viewer's on every node"
    );

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

    // One audit chain for the cluster: what was done through A, B and C, verified anywhere.
    let verify = c.cli(&["audit", "verify"]);
    assert!(
        verify.status.success(),
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    let log = a
        .api("GET", "/api/v2/audit?limit=1000", "", None)
        .await
        .json();
    let actions: Vec<&str> = log["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    for want in [
        "config.load",
        "token.create",
        "config.apply",
        "backend.disable",
    ] {
        assert!(actions.contains(&want), "{want} missing from {actions:?}");
    }
    let seqs: Vec<u64> = log["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["seq"].as_u64())
        .collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "one chain"
    );

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

/// Waits until every node serves version `want`.
async fn converge(nodes: &[&Nrdot], want: u64, within: Duration) {
    let t = Instant::now();
    for n in nodes {
        while version(n).await < want {
            assert!(t.elapsed() < within, "a node does not serve version {want}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A PUT of the current text with one more route, retried while etcd elects a leader.
async fn add_route(n: &Nrdot, path: &str, within: Duration) -> u64 {
    let view = n.api("GET", "/api/v2/config", "", None).await;
    let text = view.json()["toml"]
        .as_str()
        .unwrap_or_else(|| panic!("{} {}", view.status, view.text()))
        .to_string()
        + &format!(
            "\n[[route]]\nname = \"r{}\"\npath = \"{path}\"\npool = \"o\"\n",
            &path[1..]
        );
    let t = Instant::now();
    loop {
        let put = n.api("PUT", "/api/v2/config", &text, None).await;
        if put.status == 200 {
            return put.json()["version"]["id"].as_u64().expect("version");
        }
        assert_eq!(put.status, 503, "{}", put.text());
        assert!(t.elapsed() < within, "{}", put.text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_etcd_leader_or_every_member_loses_nothing_and_nodes_catch_up() {
    let mut etcd = Etcd::start_members(3).await;
    let origin = Origin::start("v1").await;
    let a = Nrdot::start(BIN, "", &body(&etcd, "a", &origin));
    let b = join(&a, &body(&etcd, "b", &origin));
    let mut c = join(&a, &body(&etcd, "c", &origin));
    assert_eq!(add_route(&a, "/one", Duration::from_secs(5)).await, 2);
    converge(&[&a, &b, &c], 2, Duration::from_secs(2)).await;

    // The etcd leader killed: a change through B still lands, and every version is whole.
    let leader = etcd.leader().await;
    etcd.kill(leader);
    let t = Instant::now();
    assert_eq!(add_route(&b, "/two", Duration::from_secs(15)).await, 3);
    eprintln!("change after the etcd leader died: {:?}", t.elapsed());
    converge(&[&a, &b, &c], 3, Duration::from_secs(5)).await;
    let versions = c
        .api("GET", "/api/v2/config/versions", "", None)
        .await
        .json();
    let ids: Vec<u64> = versions["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .filter_map(|v| v["id"].as_u64())
        .collect();
    assert_eq!(ids, [1, 2, 3], "{versions}");
    for n in [&a, &b, &c] {
        assert_eq!(get(&n.url("/two"), &[]).await.status, 200);
    }

    // Every member gone: nodes serve, refuse changes with 503, and say `cluster: degraded`.
    for i in 0..3 {
        etcd.kill(i);
    }
    for n in [&a, &b, &c] {
        assert_eq!(get(&n.url("/one"), &[]).await.status, 200);
    }
    let text = a.api("GET", "/api/v2/config", "", None).await.json()["toml"]
        .as_str()
        .expect("toml")
        .to_string();
    let refused = a.api("PUT", "/api/v2/config", &text, None).await;
    assert_eq!(refused.status, 503, "{}", refused.text());
    let t = Instant::now();
    while a.health().await["cluster"] != "degraded" {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{}",
            a.health().await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(a.health().await["cluster_detail"]
        .as_str()
        .is_some_and(|d| d.contains("etcd")));
    // Known to be away: a change is refused at once, not after etcd's timeouts.
    let t = Instant::now();
    let refused = b.api("PUT", "/api/v2/config", &text, None).await;
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );

    // A node started while etcd is down serves its last known good version.
    c.restart();
    assert_eq!(version(&c).await, 3);
    assert_eq!(get(&c.url("/two"), &[]).await.status, 200);
    assert_eq!(c.health().await["cluster"], "degraded");

    // etcd back: every node reconnects, and a change through the restarted node reaches all.
    for i in 0..3 {
        etcd.spawn(i);
    }
    for i in 0..3 {
        etcd.wait_healthy(i).await;
    }
    assert_eq!(add_route(&c, "/three", Duration::from_secs(20)).await, 4);
    converge(&[&a, &b, &c], 4, Duration::from_secs(5)).await;
    let t = Instant::now();
    for n in [&a, &b, &c] {
        while n.health().await["cluster"] != "ok" {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "{}",
                n.health().await
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(get(&n.url("/three"), &[]).await.status, 200);
    }
}

/// Pools `stable` and `canary`, route `app` all on stable, in a cluster.
fn canary_body(etcd: &Etcd, node: &str, stable: &Origin, canary: &Origin) -> String {
    regional_body(etcd, node, "default", stable, canary)
}

fn regional_body(
    etcd: &Etcd,
    node: &str,
    region: &str,
    stable: &Origin,
    canary: &Origin,
) -> String {
    format!(
        "{}{}[[route]]\nname = \"app\"\nsplit = [{{ pool = \"stable\", weight = 100 }}, {{ pool = \"canary\", weight = 0 }}]\n\n[cluster]\netcd = [\"{}\"]\nnode = \"{node}\"\nregion = \"{region}\"\n",
        pool("stable", &[stable.addr]),
        pool("canary", &[canary.addr]),
        etcd.url
    )
}

async fn leader(n: &Nrdot) -> String {
    n.api("GET", "/api/v2/cluster", "", None).await.json()["leader"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_outlives_the_node_that_ran_it() {
    let etcd = Etcd::start().await;
    let (stable, canary) = (Origin::start("stable").await, Origin::start("canary").await);
    let mut a = Nrdot::start(BIN, "", &canary_body(&etcd, "a", &stable, &canary));
    let t = Instant::now();
    while leader(&a).await != "a" {
        assert!(t.elapsed() < Duration::from_secs(5), "a never led");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut b = join(&a, &canary_body(&etcd, "b", &stable, &canary));
    let mut c = join(&a, &canary_body(&etcd, "c", &stable, &canary));
    let loads = [Load::start(b.url("/"), 2), Load::start(c.url("/"), 2)];

    // Started through A (the leader), which is killed once the first step is live.
    let start = a
        .api(
            "POST",
            "/api/v2/rollouts",
            r#"{"kind": "canary", "route": "app", "to": "canary", "steps": [20, 50, 100], "interval": "2s", "error_for": "1s"}"#,
            None,
        )
        .await;
    assert_eq!(start.status, 201, "{}", start.text());
    let id = start.json()["id"].as_u64().expect("id");
    let t = Instant::now();
    loop {
        let r = b
            .api("GET", &format!("/api/v2/rollouts/{id}"), "", None)
            .await
            .json();
        if r["weight"] == 20 && r["applied"] == true {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "{r}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.kill9();
    let killed = Instant::now();
    let took_over = loop {
        let l = leader(&b).await;
        if l == "b" || l == "c" {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "no new leader: {l:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // B or C takes over and finishes it: the route ends on the canary everywhere.
    let t = Instant::now();
    let done = loop {
        let r = c
            .api("GET", &format!("/api/v2/rollouts/{id}"), "", None)
            .await
            .json();
        if r["phase"] != "progressing" {
            break r;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "{r}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(done["phase"], "completed", "{done}");
    assert_eq!(done["weight"], 100, "{done}");
    let new_leader = leader(&b).await;
    assert!(new_leader == "b" || new_leader == "c", "{new_leader}");
    eprintln!(
        "{new_leader} took over {took_over:?} after the leader died; canary finished after {:?}",
        killed.elapsed()
    );
    for n in [&b, &c] {
        let t = Instant::now();
        while get(&n.url("/"), &[]).await.header("x-origin") != "canary" {
            assert!(t.elapsed() < Duration::from_secs(2), "still on stable");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    for load in loads {
        let (failed, total) = load.failures().await;
        assert_eq!(failed, 0, "{failed} of {total} failed on a surviving node");
        assert!(total > 100, "{total}");
    }

    // A leader that stops gracefully hands over at once (its lease given back), not after the
    // lease runs out.
    let (stopping, other) = if new_leader == "b" {
        (&mut b, &c)
    } else {
        (&mut c, &b)
    };
    let other_name = if new_leader == "b" { "c" } else { "b" };
    stopping.terminate();
    let t = Instant::now();
    while leader(other).await != other_name {
        // A lease running out would take 3 s from the last refresh.
        assert!(
            t.elapsed() < Duration::from_millis(1500),
            "no prompt hand-over"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("graceful hand-over of rollouts after {:?}", t.elapsed());
}

/// Which origin node `n` sends `/` to, once the answers settle (after a version change).
async fn origin_of(n: &Nrdot) -> String {
    get(&n.url("/"), &[]).await.header("x-origin").to_string()
}

async fn run_to_end(n: &Nrdot, body: &str) -> Value {
    let start = n.api("POST", "/api/v2/rollouts", body, None).await;
    assert_eq!(start.status, 201, "{}", start.text());
    let id = start.json()["id"].as_u64().expect("id");
    let t = Instant::now();
    loop {
        let r = n
            .api("GET", &format!("/api/v2/rollouts/{id}"), "", None)
            .await
            .json();
        if r["phase"] != "progressing" {
            assert_eq!(r["phase"], "completed", "{r}");
            return r;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "{r}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_scoped_rollout_changes_only_that_regions_nodes_then_widens() {
    let etcd = Etcd::start().await;
    let (stable, canary) = (Origin::start("stable").await, Origin::start("canary").await);
    let body = |node, region| regional_body(&etcd, node, region, &stable, &canary);
    let a = Nrdot::start(BIN, "", &body("a", "eu-west"));
    let b = join(&a, &body("b", "eu-west"));
    let c = join(&a, &body("c", "us-east"));
    let t = Instant::now();
    while a.api("GET", "/api/v2/cluster", "", None).await.json()["nodes"]
        .as_array()
        .map_or(0, Vec::len)
        < 3
    {
        assert!(t.elapsed() < Duration::from_secs(5), "nodes not announced");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let loads = [
        Load::start(a.url("/"), 1),
        Load::start(b.url("/"), 1),
        Load::start(c.url("/"), 1),
    ];

    // A mistyped region changes nothing anywhere: refused.
    let typo = c
        .api(
            "POST",
            "/api/v2/rollouts",
            r#"{"kind": "canary", "route": "app", "to": "canary", "region": "eu-wset"}"#,
            None,
        )
        .await;
    assert_eq!(typo.status, 400, "{}", typo.text());
    assert!(typo.text().contains("eu-west, us-east"), "{}", typo.text());

    // eu-west only, started through the us-east node: A and B move, C stays.
    let canary_in = |region: &str| {
        format!(
            r#"{{"kind": "canary", "route": "app", "to": "canary", "steps": [50, 100], "interval": "1s", "error_for": "1s", "region": "{region}"}}"#
        )
    };
    let done = run_to_end(&c, &canary_in("eu-west")).await;
    assert_eq!(done["region"], "eu-west", "{done}");
    for (n, want) in [(&a, "canary"), (&b, "canary"), (&c, "stable")] {
        let t = Instant::now();
        while origin_of(n).await != want {
            assert!(t.elapsed() < Duration::from_secs(2), "not on {want}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for _ in 0..20 {
            assert_eq!(origin_of(n).await, want);
        }
    }

    // Widened: the rest of the cluster, without a region. The region's copy of the route is
    // gone once the base route matches it.
    run_to_end(
        &a,
        &canary_in("us-east").replace(r#", "region": "us-east""#, ""),
    )
    .await;
    let t = Instant::now();
    while origin_of(&c).await != "canary" {
        assert!(t.elapsed() < Duration::from_secs(2), "us-east not widened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let text = b.api("GET", "/api/v2/config", "", None).await.json()["toml"]
        .as_str()
        .expect("toml")
        .to_string();
    assert!(!text.contains("region.eu-west"), "{text}");
    for load in loads {
        let (failed, total) = load.failures().await;
        assert_eq!(failed, 0, "{failed} of {total} failed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_init_imports_a_single_node_with_its_history() {
    let etcd = Etcd::start().await;
    let origin = Origin::start("v1").await;
    let body = format!(
        "{}[[route]]\nname = \"app\"\npool = \"o\"\n",
        pool("o", &[origin.addr])
    );
    let mut a = Nrdot::start(BIN, "", &body);
    assert_eq!(add_route(&a, "/two", Duration::from_secs(5)).await, 2);
    let out = a.cli(&["backend", "disable", "--server", &origin.addr.to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let entries = a.api("GET", "/api/v2/audit/verify", "", None).await.json()["entries"]
        .as_u64()
        .expect("entries");

    // Refused while the node runs (its state directory is in use).
    let cluster = format!("\n[cluster]\netcd = [\"{}\"]\nnode = \"a\"\n", etcd.url);
    let mut text = std::fs::read_to_string(&a.config).expect("config");
    text.push_str(&cluster);
    std::fs::write(&a.config, text).expect("write config");
    let init = |a: &Nrdot| {
        std::process::Command::new(BIN)
            .args(["cluster", "init", "--config"])
            .arg(&a.config)
            .output()
            .expect("run init")
    };
    let busy = init(&a);
    assert!(!busy.status.success());
    a.terminate();
    let ok = init(&a);
    let said = String::from_utf8_lossy(&ok.stdout).to_string();
    assert!(
        ok.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(
        said.contains("2 versions (current 2)") && said.contains("1 disabled"),
        "{said}"
    );
    let again = init(&a);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already holds a cluster"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    // The node comes back as the cluster's first node, with its whole history; a second
    // node joins with the same credentials and state.
    a.restart();
    assert_eq!(version(&a).await, 2);
    assert_eq!(admin_state(&a).await, "disabled");
    let verified = a.api("GET", "/api/v2/audit/verify", "", None).await.json();
    assert!(
        verified["entries"].as_u64().expect("entries") >= entries,
        "{verified}"
    );
    let b = join(&a, &body_in_cluster(&body, &etcd, "b"));
    assert_eq!(version(&b).await, 2);
    assert_eq!(
        get(&b.url("/two"), &[]).await.status,
        503,
        "the one server is disabled"
    );
    assert_eq!(admin_state(&b).await, "disabled");
    let history = b
        .api("GET", "/api/v2/config/versions", "", None)
        .await
        .json();
    assert_eq!(
        history["versions"].as_array().map(Vec::len),
        Some(2),
        "{history}"
    );
}

fn body_in_cluster(body: &str, etcd: &Etcd, node: &str) -> String {
    format!(
        "{body}\n[cluster]\netcd = [\"{}\"]\nnode = \"{node}\"\n",
        etcd.url
    )
}

/// etcd serving TLS only, asking clients for a certificate, with authentication on.
struct SecureEtcd {
    child: Child,
    url: String,
    dir: std::path::PathBuf,
}

impl Drop for SecureEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_reaches_etcd_over_tls_with_a_client_certificate_and_a_password() {
    let dir = nrdot_tests::temp_dir("etcd-tls");
    let ca = crate::tls::Ca::new("etcd test CA");
    let ca_file = ca.write(&dir);
    let alg = &rcgen::PKCS_ECDSA_P256_SHA256;
    let (server_cert, server_key, _) = ca.leaf(&dir, "server", &["127.0.0.1"], alg, 30);
    let (client_cert, client_key, _) = ca.leaf(&dir, "client", &["nrdot"], alg, 30);
    let (client, peer) = (free_port(), free_port());
    let url = format!("https://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let child = Command::new("etcd")
        .args(["--name", "s1", "--data-dir"])
        .arg(dir.join("data"))
        .args([
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
        ])
        .args(["--listen-peer-urls", &peer_url])
        .args(["--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("s1={peer_url}")])
        .arg("--cert-file")
        .arg(&server_cert)
        .arg("--key-file")
        .arg(&server_key)
        .arg("--trusted-ca-file")
        .arg(&ca_file)
        .arg("--client-cert-auth")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcd");
    let etcd = SecureEtcd { child, url, dir };

    // Turn authentication on, as an operator would with etcdctl.
    let tls = || {
        let pem = |p: &std::path::Path| std::fs::read(p).expect("pem");
        etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(pem(&ca_file)))
            .identity(etcd_client::Identity::from_pem(
                pem(&client_cert),
                pem(&client_key),
            ))
    };
    let t = Instant::now();
    let mut c = loop {
        let opts = etcd_client::ConnectOptions::new().with_tls(tls());
        if let Ok(mut c) = etcd_client::Client::connect([etcd.url.clone()], Some(opts)).await {
            if c.status().await.is_ok() {
                break c;
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "etcd over TLS did not start"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    c.user_add("root", "s3cret-pass", None).await.expect("user");
    c.user_grant_role("root", "root").await.expect("role");
    c.auth_enable().await.expect("auth on");

    let origin = Origin::start("v1").await;
    let password_file = etcd.dir.join("etcd-password");
    std::fs::write(&password_file, "s3cret-pass\n").expect("password file");
    let cluster = |password_file: &std::path::Path| {
        format!(
            "{}[[route]]\nname = \"app\"\npool = \"o\"\n\n[cluster]\netcd = [\"{}\"]\nnode = \"a\"\nuser = \"root\"\npassword_file = {:?}\nca_file = {:?}\ncert_file = {:?}\nkey_file = {:?}\n",
            pool("o", &[origin.addr]),
            etcd.url,
            password_file.display().to_string(),
            ca_file.display().to_string(),
            client_cert.display().to_string(),
            client_key.display().to_string(),
        )
    };
    let a = Nrdot::start(BIN, "", &cluster(&password_file));
    assert_eq!(version(&a).await, 1);
    assert_eq!(add_route(&a, "/two", Duration::from_secs(5)).await, 2);
    assert_eq!(a.health().await["cluster"], "ok");
    assert_eq!(get(&a.url("/two"), &[]).await.status, 200);

    // A wrong password: the node says so and does not start.
    let wrong = etcd.dir.join("wrong");
    std::fs::write(&wrong, "nope\n").expect("write");
    let dir = nrdot_tests::temp_dir("wrong-password");
    let config = dir.join("nrdot.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = {:?}\n[admin]\nbind = \"127.0.0.1:0\"\n[[listener]]\nname = \"http\"\nbind = \"127.0.0.1:0\"\n{}",
            dir.join("state").display().to_string(),
            cluster(&wrong).replace("node = \"a\"", "node = \"b\"")
        ),
    )
    .expect("config");
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .expect("run");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("authentication failed"), "{said}");
    let _ = std::fs::remove_dir_all(&dir);
}
