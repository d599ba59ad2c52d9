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
    down: std::sync::Mutex<Option<String>>,
}

impl Etcd {
    /// Connects to `endpoints` (lazily: a node starts while etcd is down, and serves).
    pub fn connect(endpoints: &[String], prefix: &str) -> Result<Arc<Etcd>, StoreError> {
        let unavailable = |e: &dyn std::fmt::Display| StoreError::Unavailable(e.to_string());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| unavailable(&e))?;
        let opts = etcd_client::ConnectOptions::new()
            .with_connect_timeout(CALL_TIMEOUT)
            .with_timeout(CALL_TIMEOUT);
        let client = rt
            .block_on(Client::connect(endpoints.to_vec(), Some(opts)))
            .map_err(|e| unavailable(&e))?;
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
                *down = Some(why.clone());
            }
            _ => {}
        }
    }

    /// Why etcd cannot be reached, or `None` when it can.
    pub fn degraded(&self) -> Option<String> {
        self.down.lock().expect("etcd state poisoned").clone()
    }

    /// Runs `f` with a client on the etcd thread and waits for its answer.
    pub fn run<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Client) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    {
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
        Ok(kvs.into_iter().map(|(v, _)| v).collect())
    }

    /// The value and mod revision of `key` (or of every key under it, with `prefix`). A read
    /// changes nothing, so it is tried again while etcd elects a leader, within the call's
    /// time.
    pub fn read(&self, key: String, prefix: bool) -> Result<Vec<(Vec<u8>, i64)>, StoreError> {
        self.run(move |mut c| async move {
            let opts = || prefix.then(|| GetOptions::new().with_prefix());
            let mut tries = 0;
            loop {
                match c.get(key.clone(), opts()).await {
                    Ok(r) => {
                        return Ok(r
                            .kvs()
                            .iter()
                            .map(|kv| (kv.value().to_vec(), kv.mod_revision()))
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
        })
    }

    /// A client for async callers (the watch and the node registry).
    pub fn client(&self) -> Client {
        self.client.clone()
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
        match kv.into_iter().next() {
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
            Ok(kvs) => kvs.into_iter().next().map(|(v, _)| v),
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

/// Publishes this node's status every second under a lease, until the process ends. Errors
/// (etcd down) are retried; the node keeps serving meanwhile.
pub async fn announce(etcd: Arc<Etcd>, node: String, region: String, version: impl Fn() -> u64) {
    let key = etcd.key(&format!("nodes/{node}"));
    let mut lease: Option<i64> = None;
    loop {
        let mut c = etcd.client();
        let status = NodeStatus {
            node: node.clone(),
            region: region.clone(),
            version: version(),
            updated: now_rfc3339(),
            lagging: false,
        };
        let value = serde_json::to_vec(&status).unwrap_or_default();
        let ok = async {
            let id = match lease {
                Some(id) => {
                    c.lease_keep_alive(id).await?;
                    id
                }
                None => c.lease_grant(NODE_TTL_S, None).await?.id(),
            };
            lease = Some(id);
            c.put(key.clone(), value, Some(PutOptions::new().with_lease(id)))
                .await?;
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

/// The ids of the backends disabled cluster-wide, so `backend disable` on any node drains the
/// server on every node.
pub fn put_disabled(
    etcd: &Etcd,
    disabled: &std::collections::BTreeSet<String>,
) -> Result<(), StoreError> {
    let key = etcd.key("runtime/disabled");
    let value = serde_json::to_vec(disabled).unwrap_or_default();
    etcd.run(move |mut c| async move { c.put(key, value, None).await.map(|_| ()) })
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
