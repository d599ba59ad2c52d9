//! The compiled routing table: everything a worker needs per request, laid out for lookup
//! without allocation. Compiling is infallible because validation already rejected everything
//! that could fail; it is the only place a table is built (startup, SIGHUP, admin).
use std::collections::HashMap;
use std::sync::Arc;

use http::uri::Authority;

use std::sync::atomic::Ordering;

use crate::model::{Config, HeaderMatch, Lb, Pool, Route, Sticky, WhenUnavailable};
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
    /// Port of the first TLS listener, for HTTPS redirects.
    pub https_port: Option<u16>,
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
    /// Consistent-hash lookup table, for `lb = "hash"`.
    pub maglev: Option<Box<[u16]>>,
    /// The TLS client configuration of an `https` pool, loaded from the files its `[pool.tls]`
    /// names. The control plane attaches it before publishing, so a new table and the TLS
    /// material it needs arrive together, through the one cell.
    pub tls_client: Option<Arc<rustls::ClientConfig>>,
    /// `prefer_region`: which servers are in this node's region (none: no preference, or no
    /// server there).
    pub local: Option<Box<[bool]>>,
}

/// Which of a `prefer_region` pool's servers are in `region`; `None` when the pool has no
/// preference, the node no region, or the region no server.
fn local_servers(p: &Pool, region: Option<&str>) -> Option<Box<[bool]>> {
    let region = region.filter(|_| p.prefer_region)?;
    let local: Box<[bool]> = p
        .servers
        .iter()
        .map(|s| s.region.as_deref() == Some(region))
        .collect();
    local.iter().any(|&l| l).then_some(local)
}

impl PoolEntry {
    /// The servers a request may go to: the local ones while at least half of them are
    /// available, otherwise all (`None`).
    #[inline]
    fn local_only(&self) -> Option<&[bool]> {
        let local = self.local.as_deref()?;
        let (mut up, mut total) = (0usize, 0usize);
        for (b, _) in self.backends.iter().zip(local).filter(|(_, &l)| l) {
            total += 1;
            up += usize::from(b.weight > 0 && b.state.available());
        }
        (up * 2 >= total && up > 0).then_some(local)
    }
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
    /// Pool indexes of the split, in configuration order; shared by routes with the same list.
    pub pools: Arc<[usize]>,
    /// `nrdot_requests_total` per split entry, when `[metrics]` exports this route; `None`
    /// costs no series and no registry entry.
    pub counters: Option<Box<[StatusCounters]>>,
    /// Weighted choice among `pools`; shared by routes with the same weights (a 90/10 split's
    /// sequence is 100 entries, most of what a route would otherwise cost).
    pub split: Arc<Split>,
    /// Header condition, if any.
    pub header: Option<HeaderMatch>,
    /// Sticky key source.
    pub sticky: Option<Sticky>,
    /// Header forcing a pool by name.
    pub override_header: Option<Box<str>>,
    /// Cookie forcing a pool by name.
    pub override_cookie: Option<Box<str>>,
    /// Retry non-idempotent requests and requests with bodies (buffered).
    pub retry_unsafe: bool,
    /// Redirect plaintext requests to HTTPS.
    pub https_redirect: bool,
    /// `Strict-Transport-Security` for HTTPS responses.
    pub hsts: Option<http::HeaderValue>,
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
    /// Attaches the TLS client configuration of each `https` pool, by pool name.
    pub fn attach_tls(
        &mut self,
        client: &std::collections::HashMap<String, Arc<rustls::ClientConfig>>,
    ) {
        for p in &mut self.pools {
            p.tls_client = client.get(&p.config.name).cloned();
        }
    }

    /// Compiles a validated configuration. State objects of pools, servers and routes that also
    /// exist in `previous` are carried over, so a swap resets no counters or sequences.
    pub fn compile(
        config: Arc<Config>,
        generation: u64,
        previous: Option<&RouteTable>,
    ) -> RouteTable {
        let old = Survivors::of(previous);
        let region = config.cluster.as_ref().map(|c| c.region.as_str());
        let mut pool_index = HashMap::new();
        let pools: Vec<PoolEntry> = config
            .pools
            .iter()
            .enumerate()
            .map(|(i, p)| {
                pool_index.insert(p.name.as_str(), i);
                old.pool(p, region)
            })
            .collect();
        let mut shared = Shared::default();
        let routes: Vec<RouteEntry> = config
            .routes
            .iter()
            .map(|r| old.route(r, &pool_index, &mut shared, config.metrics.exports(&r.name)))
            .collect();
        let (exact, wildcard, any) = index_hosts(&config, &routes);
        let https_port = config
            .listeners
            .iter()
            .find(|l| l.tls.is_some())
            .map(|l| l.bind.port());
        RouteTable {
            generation,
            https_port,
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

    /// Counts a response to a request `t` routed: in its pool's per-class totals, and in the
    /// route's own series when it has them.
    #[inline]
    pub fn count(&self, t: Target, status: u16) {
        let r = &self.routes[t.route];
        self.pools[r.pools[t.entry]].state.count_response(status);
        if let Some(c) = &r.counters {
            c[t.entry].count(status);
        }
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

    /// Chooses a server of pool `pool` by its policy. `roll` is a random number, `key` the
    /// request's hash key (for `lb = "hash"`), `exclude` servers already tried by this request.
    /// Servers that are disabled, unhealthy, ejected or drained by their agent are skipped, as
    /// are servers at `max_connections`; servers in slow start or with a reduced agent weight
    /// are taken with a probability equal to their share. With `when_unavailable =
    /// "fail_open"`, a pool with nothing available uses every enabled server.
    pub fn backend(
        &self,
        pool: usize,
        roll: u64,
        key: Option<u64>,
        exclude: &[usize],
    ) -> Result<Chosen, NoBackend> {
        let p = &self.pools[pool];
        let n = p.backends.len();
        let mut probe = Probe {
            pool: p,
            local: p.local_only(),
            exclude,
            max: p.config.max_connections as u64,
            slow_ms: p.config.slow_start.as_millis() as u64,
            saw_full: false,
            fallback: None,
        };
        let found = match p.config.lb {
            Lb::RoundRobin => {
                let start = p.state.cursor.fetch_add(1, Ordering::Relaxed);
                let period = p.order.total().max(1);
                (0..period)
                    .map(|k| p.order.pick(start.wrapping_add(k)))
                    .find(|&i| probe.take(i, mix(roll, i)))
            }
            Lb::Random => {
                let first = p.order.bucket(roll);
                if probe.take(first, mix(roll, 1)) {
                    Some(first)
                } else {
                    let start = (roll % n as u64) as usize;
                    (0..n)
                        .map(|k| (start + k) % n)
                        .find(|&i| probe.take(i, mix(roll, i)))
                }
            }
            Lb::LeastRequests => {
                let a = p.order.bucket(roll);
                let b = p.order.bucket(roll.rotate_left(32));
                let load = |i: usize| p.backends[i].state.in_flight.load(Ordering::Relaxed);
                let (first, second) = if load(b) < load(a) { (b, a) } else { (a, b) };
                if probe.take(first, mix(roll, 1)) {
                    Some(first)
                } else if probe.take(second, mix(roll, 2)) {
                    Some(second)
                } else {
                    let mut order: Vec<usize> = (0..n).collect();
                    order.sort_by_key(|&i| load(i));
                    order.into_iter().find(|&i| probe.take(i, mix(roll, i)))
                }
            }
            Lb::Hash => {
                let h = key.unwrap_or(roll);
                match &p.maglev {
                    Some(table) => {
                        let m = table.len() as u64;
                        // Walk the table from the key's slot: the next distinct servers in the
                        // key's own order, so a key only moves when its server goes away.
                        (0..64u64)
                            .map(|k| {
                                table[((h.wrapping_add(k.wrapping_mul(0x9E37_79B9))) % m) as usize]
                                    as usize
                            })
                            .find(|&i| probe.take(i, mix(h, i)))
                            .or_else(|| (0..n).find(|&i| probe.take(i, mix(h, i))))
                    }
                    None => (0..n).find(|&i| probe.take(i, mix(h, i))),
                }
            }
        };
        if let Some(i) = found.or(probe.fallback) {
            return Ok(Chosen {
                index: i,
                fail_open: false,
            });
        }
        if probe.saw_full {
            return Err(NoBackend::Overloaded);
        }
        if p.config.when_unavailable == WhenUnavailable::FailOpen {
            let start = (roll % n.max(1) as u64) as usize;
            if let Some(i) = (0..n).map(|k| (start + k) % n).find(|&i| {
                let b = &p.backends[i];
                b.weight > 0 && !exclude.contains(&i) && b.state.enabled.load(Ordering::Relaxed)
            }) {
                return Ok(Chosen {
                    index: i,
                    fail_open: true,
                });
            }
        }
        Err(NoBackend::Unavailable)
    }
}

/// A server chosen for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chosen {
    /// Index into the pool's backends.
    pub index: usize,
    /// Chosen although unhealthy, because the pool fails open.
    pub fail_open: bool,
}

/// Why no server was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoBackend {
    /// Every server is disabled, unhealthy, ejected or drained.
    Unavailable,
    /// Available servers exist but all are at `max_connections` (circuit open).
    Overloaded,
}

struct Probe<'a> {
    pool: &'a PoolEntry,
    /// Only these servers (a region-preferring pool whose region is healthy enough).
    local: Option<&'a [bool]>,
    exclude: &'a [usize],
    max: u64,
    slow_ms: u64,
    saw_full: bool,
    fallback: Option<usize>,
}

impl Probe<'_> {
    /// Whether server `i` takes this request; `roll` decides for servers with a reduced share.
    #[inline]
    fn take(&mut self, i: usize, roll: u64) -> bool {
        let b = &self.pool.backends[i];
        if b.weight == 0 || self.exclude.contains(&i) || !b.state.available() {
            return false;
        }
        if self.local.is_some_and(|l| !l[i]) {
            return false;
        }
        if self.max > 0 && b.state.in_flight.load(Ordering::Relaxed) >= self.max {
            self.saw_full = true;
            return false;
        }
        let share = b.state.share_permille(self.slow_ms);
        if share >= 1000 {
            return true;
        }
        if self.fallback.is_none() {
            self.fallback = Some(i);
        }
        roll % 1000 < share as u64
    }
}

/// A per-candidate random number derived from the request's roll.
#[inline]
fn mix(roll: u64, i: usize) -> u64 {
    let mut x = roll ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^ (x >> 29)
}

/// Size of a Maglev lookup table (prime, much larger than any pool).
pub const MAGLEV_SIZE: usize = 65_537;

/// The long-lived state of the previous table, by name, for the objects that survive a swap.
#[derive(Default)]
struct Survivors<'a> {
    pools: HashMap<&'a str, &'a Arc<PoolState>>,
    backends: HashMap<(&'a str, &'a str), &'a Arc<BackendState>>,
    routes: HashMap<&'a str, &'a Arc<RouteState>>,
}

impl<'a> Survivors<'a> {
    fn of(previous: Option<&'a RouteTable>) -> Survivors<'a> {
        let mut old = Survivors::default();
        let Some(prev) = previous else {
            return old;
        };
        for p in &prev.pools {
            old.pools.insert(&p.config.name, &p.state);
            for b in &p.backends {
                old.backends
                    .insert((&p.config.name, &b.state.address), &b.state);
            }
        }
        for r in &prev.routes {
            old.routes.insert(&r.name, &r.state);
        }
        old
    }

    /// A pool compiled, with its servers and their state carried over where they survive.
    fn pool(&self, p: &Pool, region: Option<&str>) -> PoolEntry {
        let state = self
            .pools
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
                state: self
                    .backends
                    .get(&(p.name.as_str(), s.address.as_str()))
                    .map(|s| Arc::clone(s))
                    .unwrap_or_else(|| Arc::new(BackendState::new(&p.name, &s.address))),
            })
            .collect();
        let weights: Vec<u32> = p.servers.iter().map(|s| s.weight).collect();
        let maglev = (p.lb == Lb::Hash && p.servers.len() < u16::MAX as usize).then(|| {
            let names: Vec<(&str, u32)> = p
                .servers
                .iter()
                .map(|s| (s.address.as_str(), s.weight))
                .collect();
            maglev(&names, MAGLEV_SIZE)
        });
        PoolEntry {
            config: p.clone(),
            state,
            backends,
            order: Split::new(&weights),
            maglev,
            tls_client: None,
            local: local_servers(p, region),
        }
    }

    /// A route compiled; `pool_index` maps pool names to their place in the table.
    fn route(
        &self,
        r: &Route,
        pool_index: &HashMap<&str, usize>,
        shared: &mut Shared,
        export: bool,
    ) -> RouteEntry {
        let pools: Vec<usize> = r
            .split
            .iter()
            .map(|e| pool_index[e.pool.as_str()])
            .collect();
        let weights: Vec<u32> = r.split.iter().map(|e| e.weight).collect();
        RouteEntry {
            name: r.name.as_str().into(),
            state: self
                .routes
                .get(r.name.as_str())
                .map(|s| Arc::clone(s))
                .unwrap_or_else(|| Arc::new(RouteState::new(&r.name))),
            pools: shared.pools(pools),
            counters: export.then(|| {
                r.split
                    .iter()
                    .map(|e| StatusCounters::new(&r.name, &e.pool))
                    .collect()
            }),
            split: shared.split(weights),
            header: r.header.clone(),
            sticky: r.sticky.clone(),
            override_header: r.override_header.as_deref().map(Into::into),
            override_cookie: r.override_cookie.as_deref().map(Into::into),
            retry_unsafe: r.retry_unsafe,
            https_redirect: r.https_redirect,
            hsts: r
                .hsts
                .as_deref()
                .and_then(|h| http::HeaderValue::from_str(h).ok()),
        }
    }
}

/// Pool lists and splits already compiled in this table, by content: thousands of routes
/// usually share a handful of splits.
#[derive(Default)]
struct Shared {
    pools: HashMap<Vec<usize>, Arc<[usize]>>,
    splits: HashMap<Vec<u32>, Arc<Split>>,
}

impl Shared {
    fn pools(&mut self, pools: Vec<usize>) -> Arc<[usize]> {
        if let Some(p) = self.pools.get(&pools) {
            return Arc::clone(p);
        }
        let p: Arc<[usize]> = pools.as_slice().into();
        self.pools.insert(pools, Arc::clone(&p));
        p
    }

    fn split(&mut self, weights: Vec<u32>) -> Arc<Split> {
        if let Some(s) = self.splits.get(&weights) {
            return Arc::clone(s);
        }
        let s = Arc::new(Split::new(&weights));
        self.splits.insert(weights, Arc::clone(&s));
        s
    }
}

/// Host indexes: exact names, `*.` suffixes, and the routes without a host.
type HostIndexes = (
    HashMap<Box<str>, HostIndex>,
    HashMap<Box<str>, HostIndex>,
    HostIndex,
);

fn index_hosts(config: &Config, routes: &[RouteEntry]) -> HostIndexes {
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
        idx.finish(routes);
    }
    any.finish(routes);
    (exact, wildcard, any)
}

/// Builds a Maglev lookup table (Eisenbud et al., NSDI 2016) for servers named `names` with
/// weights: each server fills slots in its own pseudo-random order, taking turns in proportion
/// to its weight. Weight-0 servers get no slots.
pub fn maglev(names: &[(&str, u32)], size: usize) -> Box<[u16]> {
    let mut table = vec![u16::MAX; size];
    let live: Vec<usize> = (0..names.len()).filter(|&i| names[i].1 > 0).collect();
    if live.is_empty() {
        return vec![0u16; size].into();
    }
    let perm: Vec<(u64, u64)> = live
        .iter()
        .map(|&i| {
            let name = names[i].0.as_bytes();
            let offset = crate::split::stable_hash(name) % size as u64;
            let skip =
                crate::split::stable_hash(&[name, b"#skip"].concat()) % (size as u64 - 1) + 1;
            (offset, skip)
        })
        .collect();
    let max_w = live.iter().map(|&i| names[i].1).max().unwrap_or(1) as u64;
    let mut next = vec![0u64; live.len()];
    let mut credit = vec![0u64; live.len()];
    let mut filled = 0;
    'outer: loop {
        for (k, &i) in live.iter().enumerate() {
            // Weighted turns: a server gets a turn each time its credit reaches the maximum.
            credit[k] += names[i].1 as u64;
            while credit[k] >= max_w {
                credit[k] -= max_w;
                let (offset, skip) = perm[k];
                loop {
                    let slot = ((offset + next[k] * skip) % size as u64) as usize;
                    next[k] += 1;
                    if table[slot] == u16::MAX {
                        table[slot] = i as u16;
                        filled += 1;
                        break;
                    }
                }
                if filled == size {
                    break 'outer;
                }
            }
        }
    }
    table.into()
}

#[cfg(test)]
mod tests;
