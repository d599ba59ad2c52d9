//! Active health checks and agent checks, run on the admin thread. One loop looks at the table in
//! effect every 100 ms and starts the checks that are due, so a swap that adds, removes or
//! re-configures a pool needs no bookkeeping; results land in the servers' long-lived state,
//! which survives swaps. Every transition (healthy/unhealthy, ejected/returned, agent weight)
//! is logged and recorded as an event.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use nrdot_config::state::Health;
use nrdot_config::{Agent, CheckKind, HealthCheck};
use tokio::sync::mpsc;

use crate::control::Control;

#[derive(Default)]
struct Track {
    next_check: Option<Instant>,
    next_agent: Option<Instant>,
    successes: u32,
    failures: u32,
    ejected: bool,
}

enum Outcome {
    Check(bool, String),
    Agent(Option<u8>, String),
}

/// Runs until the runtime stops.
pub async fn run(control: Arc<Control>) {
    let (tx, mut rx) = mpsc::channel::<(String, Outcome)>(1024);
    let mut tracks: HashMap<String, Track> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => schedule(&control, &mut tracks, &tx),
            Some((id, outcome)) = rx.recv() => apply(&control, &mut tracks, &id, outcome),
        }
    }
}

fn schedule(
    control: &Control,
    tracks: &mut HashMap<String, Track>,
    tx: &mpsc::Sender<(String, Outcome)>,
) {
    let table = control.current();
    let now = Instant::now();
    let mut seen = Vec::new();
    for p in &table.pools {
        for b in &p.backends {
            let id = format!("{}/{}", p.config.name, b.state.address);
            seen.push(id.clone());
            let fresh = !tracks.contains_key(&id);
            let t = tracks.entry(id.clone()).or_default();
            // Passive ejections happen on the workers; report their transitions here.
            let ejected = b.state.ejected();
            if ejected != t.ejected {
                t.ejected = ejected;
                control.event(
                    if ejected {
                        "backend.ejected"
                    } else {
                        "backend.returned"
                    },
                    &id,
                    if ejected {
                        "consecutive failures on live traffic"
                    } else {
                        "ejection time over"
                    },
                );
            }
            match &p.config.health_check {
                None => {
                    if b.state.health() != Health::Unknown {
                        b.state.set_health(Health::Unknown);
                    }
                }
                Some(hc) => {
                    if fresh && hc.initial_unhealthy && b.state.health() == Health::Unknown {
                        b.state.set_health(Health::Unhealthy);
                    }
                    if t.next_check.is_none_or(|at| at <= now) {
                        t.next_check = Some(now + hc.interval + jitter(hc.jitter));
                        let (hc, addr, tx, id) = (
                            hc.clone(),
                            b.state.address.to_string(),
                            tx.clone(),
                            id.clone(),
                        );
                        tokio::spawn(async move {
                            let r = check(&hc, &addr).await;
                            let _ = tx
                                .send((id, Outcome::Check(r.is_ok(), r.err().unwrap_or_default())))
                                .await;
                        });
                    }
                }
            }
            match &p.config.agent {
                None => {
                    if b.state.agent_percent() != 100 {
                        b.state.set_agent_percent(100);
                    }
                }
                Some(agent) => {
                    if t.next_agent.is_none_or(|at| at <= now) {
                        t.next_agent = Some(now + agent.interval);
                        let (agent, addr, tx, id) = (
                            agent.clone(),
                            b.state.address.to_string(),
                            tx.clone(),
                            id.clone(),
                        );
                        tokio::spawn(async move {
                            let (pct, text) = agent_report(&agent, &addr).await;
                            let _ = tx.send((id, Outcome::Agent(pct, text))).await;
                        });
                    }
                }
            }
        }
    }
    tracks.retain(|id, _| seen.contains(id));
}

fn apply(control: &Control, tracks: &mut HashMap<String, Track>, id: &str, outcome: Outcome) {
    let table = control.current();
    let Some((pool, backend)) = table.pools.iter().find_map(|p| {
        p.backends
            .iter()
            .find(|b| format!("{}/{}", p.config.name, b.state.address) == id)
            .map(|b| (p, b))
    }) else {
        return; // removed meanwhile
    };
    let Some(t) = tracks.get_mut(id) else { return };
    match outcome {
        Outcome::Check(ok, why) => {
            let Some(hc) = &pool.config.health_check else {
                return;
            };
            let current = backend.state.health();
            if ok {
                t.successes += 1;
                t.failures = 0;
                let rise = if current == Health::Unknown {
                    1
                } else {
                    hc.rise
                };
                if current != Health::Healthy && t.successes >= rise {
                    backend.state.set_health(Health::Healthy);
                    control.event(
                        "backend.healthy",
                        id,
                        &format!("{} consecutive successful checks", t.successes),
                    );
                }
            } else {
                t.failures += 1;
                t.successes = 0;
                if current != Health::Unhealthy && t.failures >= hc.fall {
                    backend.state.set_health(Health::Unhealthy);
                    control.event(
                        "backend.unhealthy",
                        id,
                        &format!("{} consecutive failed checks; last: {why}", t.failures),
                    );
                }
            }
        }
        Outcome::Agent(pct, text) => {
            let Some(pct) = pct else {
                tracing::debug!(backend = id, report = %text, "agent check gave no usable answer");
                return;
            };
            let prev = backend.state.set_agent_percent(pct);
            if prev != pct {
                control.event(
                    "backend.agent",
                    id,
                    &format!("agent reports {text:?}: weight {prev}% -> {pct}%"),
                );
            }
        }
    }
}

fn jitter(max: Duration) -> Duration {
    if max.is_zero() {
        return Duration::ZERO;
    }
    Duration::from_millis(fastrand_ms(max.as_millis() as u64))
}

fn fastrand_ms(max: u64) -> u64 {
    let mut b = [0u8; 8];
    let _ = getrandom::getrandom(&mut b);
    u64::from_le_bytes(b) % max.max(1)
}

/// Whether `addr` passes its pool's health check right now, or, for a pool without one, accepts
/// a TCP connection within a second. Used where a decision cannot wait for the next scheduled
/// check: `/health?server=`, blue-green switches, rolling upgrades.
pub async fn ready(hc: Option<&HealthCheck>, addr: &str) -> bool {
    match hc {
        Some(hc) => check(hc, addr).await.is_ok(),
        None => matches!(
            tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr))
                .await,
            Ok(Ok(_))
        ),
    }
}

/// Runs one check of `addr` now; `Err` says why it failed.
pub async fn check(hc: &HealthCheck, addr: &str) -> Result<(), String> {
    match tokio::time::timeout(hc.timeout, check_inner(&hc.kind, addr)).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {:?}", hc.timeout)),
    }
}

async fn check_inner(kind: &CheckKind, addr: &str) -> Result<(), String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let CheckKind::Http {
        method,
        path,
        host,
        status,
        body,
    } = kind
    else {
        return Ok(());
    };
    let (text_status, text) =
        http_get(stream, method, path, host.as_deref().unwrap_or(addr)).await?;
    if text_status < status.0 || text_status > status.1 {
        return Err(format!(
            "status {text_status}, expected {}-{}",
            status.0, status.1
        ));
    }
    if let Some(want) = body {
        if !text.contains(want.as_str()) {
            return Err(format!("body does not contain {want:?}"));
        }
    }
    Ok(())
}

async fn http_get(
    stream: tokio::net::TcpStream,
    method: &str,
    path: &str,
    host: &str,
) -> Result<(u16, String), String> {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, host)
        .header(http::header::USER_AGENT, "nrdot-health-check")
        .header(http::header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("request: {e}"))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = resp.status().as_u16();
    let body = Limited::new(resp.into_body(), 64 * 1024)
        .collect()
        .await
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Asks a server's agent for its state: `Some(percent)` or `None` when unusable.
async fn agent_report(agent: &Agent, addr: &str) -> (Option<u8>, String) {
    let target = match agent.port {
        Some(port) => match addr.rsplit_once(':') {
            Some((host, _)) => format!("{host}:{port}"),
            None => return (None, String::new()),
        },
        None => addr.to_string(),
    };
    let fetch = async {
        let stream = tokio::net::TcpStream::connect(&target)
            .await
            .map_err(|e| e.to_string())?;
        http_get(stream, "GET", &agent.path, &target).await
    };
    match tokio::time::timeout(agent.timeout, fetch).await {
        Ok(Ok((200, text))) => (parse_agent(&text), text.trim().to_string()),
        Ok(Ok((status, _))) => (None, format!("status {status}")),
        Ok(Err(e)) => (None, e),
        Err(_) => (None, "timed out".into()),
    }
}

/// HAProxy's agent words: `drain` (0%), `up`/`ready` (100%), `down`/`maint`/`stopped`/`fail`
/// (0%), or `NN%`. Several words may be given; the last that means something wins.
pub fn parse_agent(text: &str) -> Option<u8> {
    let mut out = None;
    for word in text.split(|c: char| c.is_whitespace() || c == ',') {
        let w = word.trim().to_ascii_lowercase();
        let v = match w.as_str() {
            "drain" | "down" | "maint" | "stopped" | "fail" => Some(0),
            "up" | "ready" => Some(100),
            _ => w
                .strip_suffix('%')
                .and_then(|n| n.parse::<u32>().ok())
                .map(|n| n.min(100) as u8),
        };
        if v.is_some() {
            out = v;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn agent_words() {
        assert_eq!(super::parse_agent("drain\n"), Some(0));
        assert_eq!(super::parse_agent("up 75%"), Some(75));
        assert_eq!(super::parse_agent("150%"), Some(100));
        assert_eq!(super::parse_agent("READY"), Some(100));
        assert_eq!(super::parse_agent("hello"), None);
    }
}
