//! Upstream HTTP/1.1 clients with keep-alive pools, one set per worker thread. A worker's
//! connections are only used by that worker, so the pool's bookkeeping is never contended, and a
//! pool outlives table swaps: it is found by the pool's long-lived slot, not through the table.
use std::cell::RefCell;
use std::time::Duration;

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use nrdot_config::table::PoolEntry;

use crate::body::RequestBody;

pub type UpstreamClient = Client<HttpConnector, RequestBody>;

/// The settings a client was built with; a change rebuilds the client.
#[derive(PartialEq, Eq, Clone, Copy)]
struct Settings {
    keepalive: usize,
    idle: Duration,
    connect: Duration,
}

thread_local! {
    static CLIENTS: RefCell<Vec<Option<(Settings, UpstreamClient)>>> = const { RefCell::new(Vec::new()) };
}

/// This worker's client for `pool`, built on first use.
pub fn client(pool: &PoolEntry) -> UpstreamClient {
    let settings = Settings {
        keepalive: pool.config.keepalive,
        idle: pool.config.keepalive_idle_timeout,
        connect: pool.config.connect_timeout,
    };
    let slot = pool.state.slot;
    CLIENTS.with(|c| {
        let mut clients = c.borrow_mut();
        if clients.len() <= slot {
            clients.resize_with(slot + 1, || None);
        }
        match &clients[slot] {
            Some((s, client)) if *s == settings => client.clone(),
            _ => {
                let client = build(settings);
                clients[slot] = Some((settings, client.clone()));
                client
            }
        }
    })
}

fn build(s: Settings) -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(s.connect));
    connector.set_nodelay(true);
    connector.enforce_http(true);
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(s.idle)
        .pool_max_idle_per_host(s.keepalive)
        .set_host(false)
        .http1_preserve_header_case(false)
        .build(connector)
}
