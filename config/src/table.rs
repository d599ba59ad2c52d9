//! The compiled routing table: everything a worker needs per request, laid out for lookup
//! without allocation. Compiling is infallible because validation already rejected everything
//! that could fail; it is the only place a table is built (startup, SIGHUP, admin).
use std::collections::HashMap;
use std::sync::Arc;

use http::uri::Authority;

use crate::model::{Config, HeaderMatch, Lb, Pool, Sticky};
use crate::split::Split;
use crate::state::{BackendState, PoolState, RouteState, StatusCounters};

/// A compiled, immutable routing table. Workers read it through [`crate::swap::Reader`].
#[derive(Debug)]
pub struct RouteTable {
    /// Increases by one with every table published.
    pub generation: u64,
    /// The configuration this table was compiled from.
    pub config: Arc<Config>,
    /// Pools, indexed by [`RouteEntry::pools`].
    pub pools: Vec<PoolEntry>,
    /// Routes, in configuration order.
    pub routes: Vec<RouteEntry>,
    exact: HashMap<Box<str>, HostIndex>,
    wildcard: HashMap<Box<str>, HostIndex>,
    any: HostIndex,
}

/// One compiled pool.
#[derive(Debug)]
pub struct PoolEntry {
    /// Name and settings as configured.
    pub config: Pool,
    /// Long-lived state (survives swaps).
    pub state: Arc<PoolState>,
    /// Servers, in configuration order.
    pub backends: Vec<BackendEntry>,
    /// Smooth weighted order of the servers.
    pub order: Split,
}

/// One compiled upstream server.
#[derive(Debug)]
pub struct BackendEntry {
    /// Authority used in the upstream request URI.
    pub authority: Authority,
    /// Relative weight inside its pool.
    pub weight: u32,
    /// Long-lived state (survives swaps).
    pub state: Arc<BackendState>,
}

/// One compiled route.
#[derive(Debug)]
pub struct RouteEntry {
    /// Route name.
    pub name: Box<str>,
    /// Long-lived state (survives swaps).
    pub state: Arc<RouteState>,
    /// Pool indexes of the split, in configuration order.
    pub pools: Vec<usize>,
    /// Response counters per split entry.
    pub counters: Vec<StatusCounters>,
    /// Weighted choice among `pools`.
    pub split: Split,
    /// Header condition, if any.
    pub header: Option<HeaderMatch>,
    /// Sticky key source.
    pub sticky: Option<Sticky>,
    /// Header forcing a pool by name.
    pub override_header: Option<Box<str>>,
    /// Cookie forcing a pool by name.
    pub override_cookie: Option<Box<str>>,
}

/// Where a request goes: indexes into the table that routed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// Index into [`RouteTable::routes`].
    pub route: usize,
    /// Index into the route's split (and so into its `pools` and `counters`).
    pub entry: usize,
}

#[derive(Debug, Default)]
struct HostIndex {
    /// Route indexes per path prefix; routes with a header condition come first.
    by_prefix: HashMap<Box<str>, Vec<usize>>,
    /// Distinct prefix lengths, longest first.
    lengths: Vec<usize>,
}

impl HostIndex {
    fn add(&mut self, prefix: &str, route: usize) {
        self.by_prefix.entry(prefix.into()).or_default().push(route);
    }

    fn finish(&mut self, routes: &[RouteEntry]) {
        for list in self.by_prefix.values_mut() {
            list.sort_by_key(|&r| routes[r].header.is_none());
        }
        let mut lengths: Vec<usize> = self.by_prefix.keys().map(|k| k.len()).collect();
        lengths.sort_unstable_by(|a, b| b.cmp(a));
        lengths.dedup();
        self.lengths = lengths;
    }

    fn lookup<'h>(
        &self,
        routes: &[RouteEntry],
        path: &str,
        header: &impl Fn(&str) -> Option<&'h [u8]>,
    ) -> Option<usize> {
        for &len in &self.lengths {
            if len > path.len() || !path.is_char_boundary(len) {
                continue;
            }
            if let Some(list) = self.by_prefix.get(&path[..len]) {
                for &r in list {
                    match &routes[r].header {
                        None => return Some(r),
                        Some(m) => match header(&m.name) {
                            Some(v)
                                if m.value.as_deref().is_none_or(|want| want.as_bytes() == v) =>
                            {
                                return Some(r)
                            }
                            _ => {}
                        },
                    }
                }
            }
        }
        None
    }
}

impl RouteTable {
    /// Compiles a validated configuration. State objects of pools, servers and routes that also
    /// exist in `previous` are carried over, so a swap resets no counters or sequences.
    pub fn compile(
        config: Arc<Config>,
        generation: u64,
        previous: Option<&RouteTable>,
    ) -> RouteTable {
        let mut old_pools: HashMap<&str, &Arc<PoolState>> = HashMap::new();
        let mut old_backends: HashMap<(&str, &str), &Arc<BackendState>> = HashMap::new();
        let mut old_routes: HashMap<&str, &Arc<RouteState>> = HashMap::new();
        if let Some(prev) = previous {
            for p in &prev.pools {
                old_pools.insert(&p.config.name, &p.state);
                for b in &p.backends {
                    old_backends.insert((&p.config.name, &b.state.address), &b.state);
                }
            }
            for r in &prev.routes {
                old_routes.insert(&r.name, &r.state);
            }
        }

        let mut pool_index = HashMap::new();
        let pools: Vec<PoolEntry> = config
            .pools
            .iter()
            .enumerate()
            .map(|(i, p)| {
                pool_index.insert(p.name.as_str(), i);
                let state = old_pools
                    .get(p.name.as_str())
                    .map(|s| Arc::clone(s))
                    .unwrap_or_else(|| Arc::new(PoolState::new(&p.name)));
                let backends: Vec<BackendEntry> = p
                    .servers
                    .iter()
                    .map(|s| BackendEntry {
                        authority: Authority::try_from(s.address.as_str())
                            .expect("validated addresses are valid authorities"),
                        weight: s.weight,
                        state: old_backends
                            .get(&(p.name.as_str(), s.address.as_str()))
                            .map(|s| Arc::clone(s))
                            .unwrap_or_else(|| Arc::new(BackendState::new(&p.name, &s.address))),
                    })
                    .collect();
                let weights: Vec<u32> = p.servers.iter().map(|s| s.weight).collect();
                PoolEntry {
                    config: p.clone(),
                    state,
                    backends,
                    order: Split::new(&weights),
                }
            })
            .collect();

        let routes: Vec<RouteEntry> = config
            .routes
            .iter()
            .map(|r| RouteEntry {
                name: r.name.as_str().into(),
                state: old_routes
                    .get(r.name.as_str())
                    .map(|s| Arc::clone(s))
                    .unwrap_or_else(|| Arc::new(RouteState::new(&r.name))),
                pools: r
                    .split
                    .iter()
                    .map(|e| pool_index[e.pool.as_str()])
                    .collect(),
                counters: r
                    .split
                    .iter()
                    .map(|e| StatusCounters::new(&r.name, &e.pool))
                    .collect(),
                split: Split::new(&r.split.iter().map(|e| e.weight).collect::<Vec<_>>()),
                header: r.header.clone(),
                sticky: r.sticky.clone(),
                override_header: r.override_header.as_deref().map(Into::into),
                override_cookie: r.override_cookie.as_deref().map(Into::into),
            })
            .collect();

        let mut exact: HashMap<Box<str>, HostIndex> = HashMap::new();
        let mut wildcard: HashMap<Box<str>, HostIndex> = HashMap::new();
        let mut any = HostIndex::default();
        for (i, r) in config.routes.iter().enumerate() {
            if r.hosts.is_empty() {
                any.add(&r.path, i);
            }
            for h in &r.hosts {
                match h.strip_prefix('*') {
                    Some(suffix) => wildcard.entry(suffix.into()).or_default().add(&r.path, i),
                    None => exact.entry(h.as_str().into()).or_default().add(&r.path, i),
                }
            }
        }
        for idx in exact.values_mut().chain(wildcard.values_mut()) {
            idx.finish(&routes);
        }
        any.finish(&routes);

        RouteTable {
            generation,
            config,
            pools,
            routes,
            exact,
            wildcard,
            any,
        }
    }

    /// Finds the route for a request: exact host, then the longest `*.` wildcard, then routes
    /// without hosts; inside each, the longest path prefix, header-conditioned routes first.
    /// `host` must be lower case without port; `header` reads a request header by lower-case name.
    pub fn route<'h>(
        &self,
        host: &str,
        path: &str,
        header: impl Fn(&str) -> Option<&'h [u8]>,
    ) -> Option<usize> {
        if let Some(idx) = self.exact.get(host) {
            if let Some(r) = idx.lookup(&self.routes, path, &header) {
                return Some(r);
            }
        }
        if !self.wildcard.is_empty() {
            for (pos, _) in host.match_indices('.') {
                if let Some(idx) = self.wildcard.get(&host[pos..]) {
                    if let Some(r) = idx.lookup(&self.routes, path, &header) {
                        return Some(r);
                    }
                }
            }
        }
        self.any.lookup(&self.routes, path, &header)
    }

    /// Chooses the split entry of route `route`: an override naming one of its pools wins, then
    /// the sticky key's bucket, then the route's smooth weighted sequence.
    pub fn pick(
        &self,
        route: usize,
        override_pool: Option<&[u8]>,
        sticky_hash: Option<u64>,
    ) -> Target {
        let r = &self.routes[route];
        if let Some(name) = override_pool {
            if let Some(entry) = r
                .pools
                .iter()
                .position(|&p| self.pools[p].config.name.as_bytes() == name)
            {
                return Target { route, entry };
            }
        }
        let entry = match sticky_hash {
            Some(h) => r.split.bucket(h),
            None => r.split.pick(
                r.state
                    .cursor
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            ),
        };
        Target { route, entry }
    }

    /// Chooses an available server of pool `pool` by its policy; `roll` is a random number.
    /// `None` when every server is disabled or has weight 0.
    pub fn backend(&self, pool: usize, roll: u64) -> Option<&BackendEntry> {
        let p = &self.pools[pool];
        let n = p.backends.len();
        let usable = |b: &BackendEntry| b.weight > 0 && b.state.available();
        match p.config.lb {
            Lb::RoundRobin => {
                let start = p
                    .state
                    .cursor
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let period = p.order.total().max(1);
                (0..period)
                    .map(|k| &p.backends[p.order.pick(start.wrapping_add(k))])
                    .find(|b| usable(b))
            }
            Lb::Random => {
                let first = &p.backends[p.order.bucket(roll)];
                if usable(first) {
                    return Some(first);
                }
                let start = (roll % n as u64) as usize;
                (0..n)
                    .map(|k| &p.backends[(start + k) % n])
                    .find(|b| usable(b))
            }
            Lb::LeastRequests => {
                let a = &p.backends[p.order.bucket(roll)];
                let b = &p.backends[p.order.bucket(roll.rotate_left(32))];
                let load =
                    |x: &BackendEntry| x.state.in_flight.load(std::sync::atomic::Ordering::Relaxed);
                match (usable(a), usable(b)) {
                    (true, true) => Some(if load(b) < load(a) { b } else { a }),
                    (true, false) => Some(a),
                    (false, true) => Some(b),
                    (false, false) => p
                        .backends
                        .iter()
                        .filter(|x| usable(x))
                        .min_by_key(|x| load(x)),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
