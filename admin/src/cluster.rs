//! Several nodes, one configuration history: the version store in etcd (`[cluster]`), each
//! node's presence under a lease, and the watch that makes every new current version live on
//! every node. etcd does the consensus; nrdot only uses its transactions, leases and watches.
//!
//! Keys under the prefix (default `/nrdot`): `versions/NNNNNNNN` (the same bytes as a local
//! `.ver` file: a JSON metadata line, then the zstd-compressed content), `current` (the
//! current id), `nodes/<node>` (JSON [`NodeStatus`], under a lease: gone when the node is).
//!
//! The [`Store`] trait is synchronous (the control plane holds its lock while it stores), and
//! etcd's client is async; every call runs on this module's own runtime thread, so it works
//! from inside the admin runtime as from anywhere else.
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize};

use crate::durable;
use crate::store::{decode, encode, now_rfc3339, Store, StoreError, Version, VersionMeta};

/// How long one etcd call may take before the store counts as unavailable.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// A node's lease: it disappears from `nodes/` this long after it stops refreshing.
const NODE_TTL_S: i64 = 5;

type Job = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// The etcd connection and the thread that runs its calls.
pub struct Etcd {
    jobs: tokio::sync::mpsc::UnboundedSender<Job>,
    client: Client,
    prefix: String,
    /// Why etcd is unreachable, while it is (`/health` says `cluster: degraded`).
    down: std::sync::Mutex<Option<(String, std::time::Instant)>>,
}

impl Etcd {
    /// Connects to `settings.etcd` (lazily: a node starts while etcd is down, and serves),
    /// with its user and TLS files.
    pub fn connect(settings: &nrdot_config::Cluster) -> Result<Arc<Etcd>, StoreError> {
        let unavailable = |e: &dyn std::fmt::Display| StoreError::Unavailable(e.to_string());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| unavailable(&e))?;
        let opts = connect_options(&settings.access)?;
        let endpoints = settings.etcd.clone();
        let client = rt
            .block_on(Client::connect(endpoints, Some(opts)))
            .map_err(|e| unavailable(&e))?;
        let prefix = settings.prefix.as_str();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Job>();
        // The runtime runs for good on its own thread: the client's connection tasks live on
        // it, so calls from any runtime (or none) make progress.
        std::thread::Builder::new()
            .name("nrdot-etcd".into())
            .spawn(move || {
                rt.block_on(async move {
                    while let Some(job) = rx.recv().await {
                        tokio::spawn(job);
                    }
                })
            })
            .map_err(|e| unavailable(&e))?;
        Ok(Arc::new(Etcd {
            jobs: tx,
            client,
            prefix: prefix.to_string(),
            down: std::sync::Mutex::new(None),
        }))
    }

    /// Records whether the last call reached etcd; logs the transitions.
    pub fn note<T>(&self, result: &Result<T, StoreError>) {
        let mut down = self.down.lock().expect("etcd state poisoned");
        match (result, down.is_some()) {
            (Ok(_), true) => {
                tracing::warn!("etcd reachable again; catching up with the cluster");
                *down = None;
            }
            (Err(StoreError::Unavailable(why)), was_down) => {
                if !was_down {
                    tracing::error!(
                        "etcd unreachable ({why}): serving the current version, refusing changes"
                    );
                }
                *down = Some((why.clone(), std::time::Instant::now()));
            }
            _ => {}
        }
    }

    /// Why etcd cannot be reached, or `None` when it can.
    pub fn degraded(&self) -> Option<String> {
        self.down
            .lock()
            .expect("etcd state poisoned")
            .as_ref()
            .map(|(why, _)| why.clone())
    }

    /// While a call failed less than 2 s ago, the next ones fail at once instead of
    /// each waiting out its 3 s (a PUT, its audit entry, a login…). The watch tries every
    /// second meanwhile and clears it when etcd answers.
    fn fail_fast(&self) -> Result<(), StoreError> {
        match &*self.down.lock().expect("etcd state poisoned") {
            Some((why, at)) if at.elapsed() < Duration::from_secs(2) => {
                Err(StoreError::Unavailable(why.clone()))
            }
            _ => Ok(()),
        }
    }

    /// Runs `f` with a client on the etcd thread and waits for its answer.
    pub fn run<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Client) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    {
        self.fail_fast()?;
        let (tx, rx) = mpsc::channel();
        let client = self.client.clone();
        let job: Job = Box::pin(async move {
            let out = match tokio::time::timeout(CALL_TIMEOUT, f(client)).await {
                Ok(r) => r.map_err(|e| StoreError::Unavailable(e.to_string())),
                Err(_) => Err(StoreError::Unavailable("etcd did not answer in 3s".into())),
            };
            let _ = tx.send(out);
        });
        self.jobs
            .send(job)
            .map_err(|_| StoreError::Unavailable("etcd thread stopped".into()))?;
        let out = rx
            .recv()
            .map_err(|_| StoreError::Unavailable("etcd thread stopped".into()))
            .and_then(|r| r);
        self.note(&out);
        out
    }

    /// The full key of `rest` under the prefix.
    pub fn key(&self, rest: &str) -> String {
        format!("{}/{rest}", self.prefix)
    }

    /// The values of every key under `rest` (a prefix ending in `/`).
    pub fn values_under(&self, rest: &str) -> Result<Vec<Vec<u8>>, StoreError> {
        let kvs = self.read(self.key(rest), true)?;
        Ok(kvs.into_iter().map(|kv| kv.value).collect())
    }

    /// `key` (or every key under it, with `prefix`). A read changes nothing, so it is tried
    /// again while etcd elects a leader, within the call's time.
    pub fn read(&self, key: String, prefix: bool) -> Result<Vec<Kv>, StoreError> {
        self.run(move |c| read_retrying(c, key, prefix))
    }

    /// [`Etcd::read`] for async callers, which must not block their runtime on etcd.
    pub async fn read_async(&self, rest: &str, prefix: bool) -> Result<Vec<Kv>, StoreError> {
        let read = read_retrying(self.client(), self.key(rest), prefix);
        let out = match tokio::time::timeout(CALL_TIMEOUT, read).await {
            Ok(r) => r.map_err(|e| StoreError::Unavailable(e.to_string())),
            Err(_) => Err(StoreError::Unavailable("etcd did not answer in 3s".into())),
        };
        self.note(&out);
        out
    }

    /// The value of key `rest`, if it exists.
    pub fn value(&self, rest: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let kvs = self.read(self.key(rest), false)?;
        Ok(kvs.into_iter().next().map(|kv| kv.value))
    }

    /// Sets key `rest` to `value`.
    pub fn put(&self, rest: &str, value: Vec<u8>) -> Result<(), StoreError> {
        let key = self.key(rest);
        self.run(move |mut c| async move { c.put(key, value, None).await.map(|_| ()) })
    }

    /// Creates key `rest` with `value` unless it exists; whether it did.
    pub fn create(&self, rest: &str, value: Vec<u8>) -> Result<bool, StoreError> {
        let key = self.key(rest);
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value, None)]);
        self.run(move |mut c| async move { Ok(c.txn(txn).await?.succeeded()) })
    }

    /// A client for async callers (the watch and the node registry).
    pub fn client(&self) -> Client {
        self.client.clone()
    }
}

/// What a cluster node keeps from its own file whatever shared version it serves: where its
/// state is, who it is, and where it listens (several nodes on one machine need their own
/// ports; on separate machines they are usually the same).
#[derive(Debug, Clone)]
pub struct Local {
    state_dir: std::path::PathBuf,
    cluster: nrdot_config::Cluster,
    admin_bind: std::net::SocketAddr,
    binds: Vec<(String, std::net::SocketAddr)>,
}

impl Local {
    /// The node-local part of `c` (a cluster node's file), if it is one.
    pub fn of(c: &nrdot_config::Config) -> Option<Local> {
        Some(Local {
            state_dir: c.state_dir.clone(),
            cluster: c.cluster.clone()?,
            admin_bind: c.admin_bind,
            binds: c
                .listeners
                .iter()
                .map(|l| (l.name.clone(), l.bind))
                .collect(),
        })
    }

    /// Lays it over a shared version: listeners named in this node's file bind where the file
    /// says; the others where the shared version says.
    pub fn apply(&self, c: &mut nrdot_config::Config) {
        c.state_dir = self.state_dir.clone();
        c.cluster = Some(self.cluster.clone());
        c.admin_bind = self.admin_bind;
        for l in &mut c.listeners {
            if let Some((_, bind)) = self.binds.iter().find(|(n, _)| *n == l.name) {
                l.bind = *bind;
            }
        }
    }
}

/// Timeouts, the user and the TLS files of `[cluster]`. A file that cannot be read stops the
/// start with its path (not an "unavailable" etcd, which a node would wait out).
fn connect_options(
    access: &nrdot_config::EtcdAccess,
) -> Result<etcd_client::ConnectOptions, StoreError> {
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| StoreError::Damaged {
            path: p.to_path_buf(),
            why: format!("cannot read: {e}"),
        })
    };
    let mut opts = etcd_client::ConnectOptions::new()
        .with_connect_timeout(CALL_TIMEOUT)
        .with_timeout(CALL_TIMEOUT);
    if let (Some(user), Some(file)) = (&access.user, &access.password_file) {
        let password = String::from_utf8_lossy(&read(file)?)
            .lines()
            .next()
            .unwrap_or_default()
            .to_string();
        opts = opts.with_user(user.clone(), password);
    }
    if let Some(ca) = &access.ca_file {
        let mut tls = etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(read(ca)?));
        if let (Some(cert), Some(key)) = (&access.cert_file, &access.key_file) {
            tls = tls.identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
        }
        opts = opts.with_tls(tls);
    }
    Ok(opts)
}

/// One key as read.
#[derive(Debug, Clone)]
pub struct Kv {
    /// Full key.
    pub key: String,
    /// Its value.
    pub value: Vec<u8>,
    /// The revision of its last change (the store's compare-and-set).
    pub mod_revision: i64,
    /// How many times it was written since it was created (a record's own counter).
    pub version: i64,
}

async fn read_retrying(
    mut c: Client,
    key: String,
    prefix: bool,
) -> Result<Vec<Kv>, etcd_client::Error> {
    let opts = || prefix.then(|| GetOptions::new().with_prefix());
    let mut tries = 0;
    loop {
        match c.get(key.clone(), opts()).await {
            Ok(r) => {
                return Ok(r
                    .kvs()
                    .iter()
                    .map(|kv| Kv {
                        key: String::from_utf8_lossy(kv.key()).into_owned(),
                        value: kv.value().to_vec(),
                        mod_revision: kv.mod_revision(),
                        version: kv.version(),
                    })
                    .collect())
            }
            Err(e) if tries < 20 => {
                tracing::debug!("etcd read failed, again: {e}");
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The version store in etcd.
pub struct EtcdStore {
    etcd: Arc<Etcd>,
    /// This node's state directory, where its last known good copy is.
    state_dir: std::path::PathBuf,
}

impl EtcdStore {
    /// The store under `etcd`'s prefix, for the node whose state directory is `state_dir`.
    pub fn new(etcd: Arc<Etcd>, state_dir: &std::path::Path) -> EtcdStore {
        EtcdStore {
            etcd,
            state_dir: state_dir.to_path_buf(),
        }
    }

    fn version_key(&self, id: u64) -> String {
        self.etcd.key(&format!("versions/{id:08}"))
    }

    fn damaged(&self, key: &str, why: String) -> StoreError {
        StoreError::Damaged {
            path: key.into(),
            why,
        }
    }

    /// The current id and the revision it was written at (0: none yet).
    fn current_at(&self) -> Result<(Option<u64>, i64), StoreError> {
        let kv = self.etcd.read(self.etcd.key("current"), false)?;
        match kv.into_iter().next().map(|kv| (kv.value, kv.mod_revision)) {
            None => Ok((None, 0)),
            Some((v, rev)) => {
                let id = std::str::from_utf8(&v)
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                    .ok_or_else(|| self.damaged("current", "not a version id".into()))?;
                Ok((Some(id), rev))
            }
        }
    }
}

impl Store for EtcdStore {
    fn list(&self) -> Result<Vec<VersionMeta>, StoreError> {
        let values = self.etcd.values_under("versions/")?;
        let mut metas = Vec::with_capacity(values.len());
        for v in values {
            let line = v.split(|b| *b == b'\n').next().unwrap_or_default();
            let meta: VersionMeta = serde_json::from_slice(line)
                .map_err(|e| self.damaged("versions/", format!("unreadable metadata: {e}")))?;
            metas.push(meta);
        }
        metas.sort_by_key(|m| m.id);
        Ok(metas)
    }

    /// While etcd is away, the version this node serves still reads from its own copy.
    fn get(&self, id: u64) -> Result<Version, StoreError> {
        let key = self.version_key(id);
        let bytes = match self.etcd.read(key.clone(), false) {
            Ok(kvs) => kvs.into_iter().next().map(|kv| kv.value),
            Err(StoreError::Unavailable(why)) => {
                return last_known_good(&self.state_dir)
                    .filter(|v| v.meta.id == id)
                    .ok_or(StoreError::Unavailable(why))
            }
            Err(e) => return Err(e),
        };
        let bytes = bytes.ok_or(StoreError::NotFound(id))?;
        let v = decode(&bytes).map_err(|why| self.damaged(&key, why))?;
        let actual = durable::sha256_hex(v.content.as_bytes());
        if v.meta.id != id || actual != v.meta.checksum {
            return Err(self.damaged(&key, "checksum or id mismatch".into()));
        }
        Ok(v)
    }

    /// One transaction: the version and the pointer, only if the pointer is still the one
    /// read (the cluster-wide `If-Match`); otherwise [`StoreError::Conflict`].
    fn create(
        &self,
        author: &str,
        message: &str,
        content: &str,
        base: Option<u64>,
    ) -> Result<VersionMeta, StoreError> {
        let (parent, rev) = self.current_at()?;
        crate::store::check_base(base, parent)?;
        let id = parent.unwrap_or(0) + 1;
        let v = Version::new(id, parent, author, message, content);
        let meta = v.meta.clone();
        let bytes = encode(&v).map_err(|why| self.damaged("versions/", why))?;
        let (vkey, ckey) = (self.version_key(id), self.etcd.key("current"));
        let compare = Compare::mod_revision(ckey.clone(), CompareOp::Equal, rev);
        let txn = Txn::new().when([compare]).and_then([
            TxnOp::put(vkey, bytes, None),
            TxnOp::put(ckey, id.to_string(), None),
        ]);
        let won = self
            .etcd
            .run(move |mut c| async move { Ok(c.txn(txn).await?.succeeded()) })?;
        if !won {
            let current = self.current_at()?.0.unwrap_or(0);
            return Err(StoreError::Conflict { current });
        }
        Ok(meta)
    }

    fn current(&self) -> Result<Option<u64>, StoreError> {
        Ok(self.current_at()?.0)
    }

    fn prune(&self, keep: usize, protect_above: u64) -> Result<Vec<u64>, StoreError> {
        let metas = self.list()?;
        let Some(newest) = metas.last().map(|m| m.id) else {
            return Ok(Vec::new());
        };
        let current = self.current()?.unwrap_or(newest);
        let excess = metas.len().saturating_sub(keep.max(1));
        let doomed: Vec<u64> = metas
            .iter()
            .map(|m| m.id)
            .filter(|&id| id != current && id != newest && id <= protect_above)
            .take(excess)
            .collect();
        for &id in &doomed {
            let key = self.version_key(id);
            self.etcd
                .run(move |mut c| async move { c.delete(key, None).await.map(|_| ()) })?;
        }
        Ok(doomed)
    }
}

/// What a node publishes about itself.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema, PartialEq)]
pub struct NodeStatus {
    /// Node name (`[cluster] node`).
    pub node: String,
    /// Region.
    pub region: String,
    /// The configuration version it serves.
    pub version: u64,
    /// When it last said so.
    pub updated: String,
    /// Whether it serves an older version than the cluster's current one (filled by the
    /// reader).
    #[serde(default)]
    pub lagging: bool,
}

/// Every node that is alive (its lease still held), with `lagging` set against `current`.
pub fn nodes(etcd: &Etcd, current: u64) -> Result<Vec<NodeStatus>, StoreError> {
    let values = etcd.values_under("nodes/")?;
    let mut out: Vec<NodeStatus> = values
        .iter()
        .filter_map(|v| serde_json::from_slice(v).ok())
        .collect();
    for n in &mut out {
        n.lagging = n.version < current;
    }
    out.sort_by(|a, b| a.node.cmp(&b.node));
    Ok(out)
}

/// One pool's totals on one node, published every second for the rollout leader's analysis.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Totals {
    /// Requests answered.
    pub requests: u64,
    /// Failed ones.
    pub errors: u64,
    /// Latency histogram (nrdot_config::state::LATENCY_BOUNDS_MS).
    pub latency: [u64; 16],
}

/// What a node says about itself every second: its status and its pools' totals.
pub struct Report {
    /// The version it serves.
    pub version: u64,
    /// Per pool.
    pub pools: std::collections::BTreeMap<String, Totals>,
}

/// Publishes this node's status and its pools' totals every second under a lease, until the
/// process ends. Errors (etcd down) are retried; the node keeps serving meanwhile.
pub async fn announce(etcd: Arc<Etcd>, node: String, region: String, report: impl Fn() -> Report) {
    let (key, stats_key) = (
        etcd.key(&format!("nodes/{node}")),
        etcd.key(&format!("stats/{node}")),
    );
    let mut lease: Option<i64> = None;
    loop {
        let mut c = etcd.client();
        let now = report();
        let status = NodeStatus {
            node: node.clone(),
            region: region.clone(),
            version: now.version,
            updated: now_rfc3339(),
            lagging: false,
        };
        let value = serde_json::to_vec(&status).unwrap_or_default();
        let stats = serde_json::to_vec(&now.pools).unwrap_or_default();
        let ok = async {
            let id = keep_lease(&mut c, &mut lease, NODE_TTL_S).await?;
            let opts = || Some(PutOptions::new().with_lease(id));
            let txn = Txn::new().and_then([
                TxnOp::put(key.clone(), value, opts()),
                TxnOp::put(stats_key.clone(), stats, opts()),
            ]);
            c.txn(txn).await?;
            Ok::<_, etcd_client::Error>(())
        };
        if tokio::time::timeout(CALL_TIMEOUT, ok)
            .await
            .map_or(true, |r| r.is_err())
        {
            lease = None;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Refreshes `lease` (or grants a new one of `ttl` seconds when there is none or it expired).
async fn keep_lease(
    c: &mut Client,
    lease: &mut Option<i64>,
    ttl: i64,
) -> Result<i64, etcd_client::Error> {
    if let Some(id) = *lease {
        // The client sends one keep-alive and reads its answer (an error when the lease ran
        // out); nothing more comes on the stream.
        match c.lease_keep_alive(id).await {
            Ok(_) => return Ok(id),
            Err(etcd_client::Error::LeaseKeepAliveError(_)) => {}
            Err(e) => return Err(e),
        }
    }
    let id = c.lease_grant(ttl, None).await?.id();
    *lease = Some(id);
    Ok(id)
}

/// Every other node's pools' totals, by node.
pub async fn stats(
    etcd: &Etcd,
) -> Result<Vec<(String, std::collections::BTreeMap<String, Totals>)>, StoreError> {
    let prefix = etcd.key("stats/");
    let kvs = etcd.read_async("stats/", true).await?;
    Ok(kvs
        .into_iter()
        .filter_map(|kv| {
            let node = kv.key.strip_prefix(&prefix)?.to_string();
            Some((node, serde_json::from_slice(&kv.value).ok()?))
        })
        .collect())
}

/// A leader's lease: gone this long after the leader stops refreshing it, and another node
/// takes over.
const LEADER_TTL_S: i64 = 3;

/// The election of the node that runs rollouts: a `leader` key created under a lease by the
/// first node to try, held while the lease is refreshed.
pub struct Leader {
    etcd: Arc<Etcd>,
    node: String,
    leading: std::sync::atomic::AtomicBool,
    /// The lease the candidacy holds, so it can be given up on the way out.
    lease: std::sync::Mutex<Option<i64>>,
    /// Set by [`Leader::resign`], cleared by [`Leader::rejoin`].
    resigned: std::sync::atomic::AtomicBool,
    /// Which campaign loop is the live one (each resign ends the one before).
    round: std::sync::atomic::AtomicU64,
}

impl Leader {
    /// Node `node`'s candidacy (it does not lead until [`Leader::campaign`] wins).
    pub fn new(etcd: Arc<Etcd>, node: &str) -> Arc<Leader> {
        Arc::new(Leader {
            etcd,
            node: node.to_string(),
            leading: std::sync::atomic::AtomicBool::new(false),
            lease: std::sync::Mutex::new(None),
            resigned: std::sync::atomic::AtomicBool::new(false),
            round: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Campaigns again after a [`Leader::resign`] (a binary upgrade that failed).
    pub fn rejoin(self: &Arc<Self>) {
        self.resigned
            .store(false, std::sync::atomic::Ordering::Release);
        tokio::spawn(Arc::clone(self).campaign());
    }

    /// Stops leading and campaigning and gives the lease back, so another node takes over at
    /// once instead of after the lease runs out (a stop or a binary upgrade).
    pub async fn resign(&self) {
        self.resigned
            .store(true, std::sync::atomic::Ordering::Release);
        self.round.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.leading
            .store(false, std::sync::atomic::Ordering::Release);
        let lease = self.lease.lock().expect("lease poisoned").take();
        if let Some(id) = lease {
            let mut c = self.etcd.client();
            match tokio::time::timeout(CALL_TIMEOUT, c.lease_revoke(id)).await {
                Ok(Ok(_)) => tracing::info!(node = %self.node, "rollouts handed over"),
                _ => {
                    tracing::warn!(node = %self.node, "lease not given back; another node takes over when it runs out")
                }
            }
        }
    }

    /// Whether this node leads now. A node that cannot refresh its lease stops leading at
    /// once (before the lease runs out, so two nodes never lead at the same time).
    pub fn leading(&self) -> bool {
        self.leading.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Tries every second to lead, or to keep leading, until the process ends.
    pub async fn campaign(self: Arc<Self>) {
        let round = self.round.load(std::sync::atomic::Ordering::Acquire);
        loop {
            if self.round.load(std::sync::atomic::Ordering::Acquire) != round {
                return;
            }
            let mut lease = *self.lease.lock().expect("lease poisoned");
            let r = tokio::time::timeout(CALL_TIMEOUT, self.try_lead(&mut lease)).await;
            let leading = matches!(r, Ok(Ok(true)))
                && !self.resigned.load(std::sync::atomic::Ordering::Acquire);
            if !matches!(r, Ok(Ok(_))) {
                lease = None;
            }
            *self.lease.lock().expect("lease poisoned") = lease;
            let was = self
                .leading
                .swap(leading, std::sync::atomic::Ordering::AcqRel);
            if was != leading {
                match leading {
                    true => tracing::warn!(node = %self.node, "this node now runs rollouts"),
                    false => tracing::warn!(node = %self.node, "this node no longer runs rollouts"),
                }
            }
            // The leader refreshes every second; a candidate asks four times as often, so a
            // leader that resigns is replaced within a quarter second.
            let pause = if leading { 1000 } else { 250 };
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
    }

    async fn try_lead(&self, lease: &mut Option<i64>) -> Result<bool, etcd_client::Error> {
        let mut c = self.etcd.client();
        let id = keep_lease(&mut c, lease, LEADER_TTL_S).await?;
        let key = self.etcd.key("leader");
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.clone(),
                self.node.clone(),
                Some(PutOptions::new().with_lease(id)),
            )])
            .or_else([TxnOp::get(key, None)]);
        let r = c.txn(txn).await?;
        if r.succeeded() {
            return Ok(true);
        }
        Ok(r.op_responses().iter().any(|op| match op {
            etcd_client::TxnOpResponse::Get(g) => {
                g.kvs().first().is_some_and(|kv| kv.lease() == id)
            }
            _ => false,
        }))
    }
}

/// The node that runs rollouts now, if any.
pub fn leader(etcd: &Etcd) -> Result<Option<String>, StoreError> {
    let kvs = etcd.read(etcd.key("leader"), false)?;
    Ok(kvs
        .into_iter()
        .next()
        .map(|kv| String::from_utf8_lossy(&kv.value).into_owned()))
}

/// The ids of the backends disabled cluster-wide, so `backend disable` on any node drains the
/// server on every node.
pub fn put_disabled(
    etcd: &Etcd,
    disabled: &std::collections::BTreeSet<String>,
) -> Result<(), StoreError> {
    etcd.put(
        "runtime/disabled",
        serde_json::to_vec(disabled).unwrap_or_default(),
    )
}

/// A timed call's outcome as the store sees it (for [`Etcd::note`]).
fn reached<T>(
    r: &Result<Result<T, etcd_client::Error>, tokio::time::error::Elapsed>,
) -> Result<(), StoreError> {
    match r {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(StoreError::Unavailable(e.to_string())),
        Err(_) => Err(StoreError::Unavailable("etcd did not answer in 3s".into())),
    }
}

/// Where a node keeps the version it serves, to start from while etcd is away.
const LAST_KNOWN_GOOD: &str = "cluster-current.ver";

/// Keeps `v` (the version this node now serves) in its state directory: a node that starts
/// while etcd is down serves it.
pub fn remember(state_dir: &std::path::Path, v: &Version) {
    let path = state_dir.join(LAST_KNOWN_GOOD);
    match encode(v) {
        Ok(bytes) => {
            if let Err(e) = durable::write(&path, &bytes, 0o600) {
                tracing::error!("cannot keep {}: {e}", path.display());
            }
        }
        Err(e) => tracing::error!("cannot encode version {}: {e}", v.meta.id),
    }
}

/// The last version this node served, when it is whole (its checksum matches).
pub fn last_known_good(state_dir: &std::path::Path) -> Option<Version> {
    let v = decode(&std::fs::read(state_dir.join(LAST_KNOWN_GOOD)).ok()?).ok()?;
    (durable::sha256_hex(v.content.as_bytes()) == v.meta.checksum).then_some(v)
}

/// Calls `apply(value)` with the value of key `rest` whenever it changes (and once at start),
/// with a read every quiet second as a backstop for a broken watch; retries while etcd is away.
pub async fn follow(etcd: Arc<Etcd>, rest: &str, apply: impl Fn(&[u8])) {
    let key = etcd.key(rest);
    loop {
        let mut c = etcd.client();
        let read = tokio::time::timeout(CALL_TIMEOUT, c.get(key.clone(), None)).await;
        etcd.note(&reached(&read));
        if let Ok(Ok(r)) = read {
            if let Some(kv) = r.kvs().first() {
                apply(kv.value());
            }
            let rev = r.header().map(|h| h.revision()).unwrap_or(0);
            let opts = etcd_client::WatchOptions::new().with_start_revision(rev + 1);
            if let Ok(Ok(mut stream)) =
                tokio::time::timeout(CALL_TIMEOUT, c.watch(key.clone(), Some(opts))).await
            {
                loop {
                    match tokio::time::timeout(Duration::from_secs(1), stream.message()).await {
                        Ok(Ok(Some(resp))) => {
                            for kv in resp.events().iter().filter_map(|e| e.kv()) {
                                apply(kv.value());
                            }
                        }
                        // A quiet second: read the key directly, then keep watching.
                        Err(_) => {
                            let read =
                                tokio::time::timeout(CALL_TIMEOUT, c.get(key.clone(), None)).await;
                            etcd.note(&reached(&read));
                            match read {
                                Ok(Ok(r)) => {
                                    if let Some(kv) = r.kvs().first() {
                                        apply(kv.value());
                                    }
                                }
                                _ => break,
                            }
                        }
                        _ => break,
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
