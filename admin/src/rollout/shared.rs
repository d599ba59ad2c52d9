//! Rollouts in a cluster. Every rollout's record lives in etcd (`rollouts/NNNNNNNN`, the same
//! JSON as a local rollout file), so any node shows them and takes commands; one elected node
//! (the [`Leader`]) steps them, and judges a canary on the sum of every node's traffic, which
//! each node publishes every second (`stats/<node>`).
//!
//! Records are written with a compare on their etcd `version` (how often the key was written):
//! a write based on an older read loses, and the newer record is read back. That is the local
//! rule "an operator command made meanwhile wins over the step", cluster-wide.
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use etcd_client::{Compare, CompareOp, Txn, TxnOp};

use super::Rollout;
use crate::cluster::{Etcd, Kv, Leader, Totals};
use crate::store::StoreError;

/// The cluster side of the rollout controller.
pub struct Shared {
    etcd: Arc<Etcd>,
    /// The election this node takes part in.
    pub leader: Arc<Leader>,
    node: String,
    /// The etcd `version` of each record as this node last read or wrote it.
    seen: Mutex<HashMap<u64, i64>>,
    remote: Mutex<Remote>,
}

impl Shared {
    /// Node `node`'s view of the cluster's rollouts.
    pub fn new(etcd: Arc<Etcd>, node: &str) -> Shared {
        Shared {
            leader: Leader::new(Arc::clone(&etcd), node),
            etcd,
            node: node.to_string(),
            seen: Mutex::new(HashMap::new()),
            remote: Mutex::new(Remote::default()),
        }
    }

    fn key(id: u64) -> String {
        format!("rollouts/{id:08}")
    }

    /// Records written since this node last read them (all of them, the first time).
    pub fn newer(&self) -> Result<Vec<Rollout>, StoreError> {
        let kvs = self.etcd.read(self.etcd.key("rollouts/"), true)?;
        Ok(self.take_newer(kvs))
    }

    /// [`Shared::newer`] for the controller's tick, which must not block the admin runtime.
    pub async fn newer_async(&self) -> Result<Vec<Rollout>, StoreError> {
        let kvs = self.etcd.read_async("rollouts/", true).await?;
        Ok(self.take_newer(kvs))
    }

    fn take_newer(&self, kvs: Vec<Kv>) -> Vec<Rollout> {
        let mut seen = self.seen.lock().expect("rollouts poisoned");
        kvs.into_iter()
            .filter_map(|kv| {
                let r: Rollout = match serde_json::from_slice(&kv.value) {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!(key = %kv.key, "unreadable rollout record: {e}");
                        return None;
                    }
                };
                let known = seen.get(&r.id).copied().unwrap_or(0);
                (kv.version > known).then(|| {
                    seen.insert(r.id, kv.version);
                    r
                })
            })
            .collect()
    }

    /// Writes `r` unless its record changed since this node read it; `Ok(false)`: it had.
    pub fn save(&self, r: &Rollout) -> Result<bool, StoreError> {
        let key = self.etcd.key(&Self::key(r.id));
        let known = self
            .seen
            .lock()
            .expect("rollouts poisoned")
            .get(&r.id)
            .copied()
            .unwrap_or(0);
        let value = serde_json::to_vec(r).map_err(|e| StoreError::Damaged {
            path: key.clone().into(),
            why: e.to_string(),
        })?;
        let txn = Txn::new()
            .when([Compare::version(key.clone(), CompareOp::Equal, known)])
            .and_then([TxnOp::put(key, value, None)]);
        let won = self
            .etcd
            .run(move |mut c| async move { Ok(c.txn(txn).await?.succeeded()) })?;
        if won {
            self.seen
                .lock()
                .expect("rollouts poisoned")
                .insert(r.id, known + 1);
        }
        Ok(won)
    }

    /// Every other node's traffic per pool since this node started to count it (summed;
    /// a node that restarts or leaves never makes a total go down).
    pub async fn others(&self) -> Result<HashMap<String, Totals>, StoreError> {
        let stats = crate::cluster::stats(&self.etcd).await?;
        let mut remote = self.remote.lock().expect("remote poisoned");
        remote.absorb(&self.node, stats);
        Ok(remote.sum.clone())
    }
}

/// Other nodes' totals, accumulated from what they publish.
#[derive(Default)]
struct Remote {
    last: HashMap<String, BTreeMap<String, Totals>>,
    sum: HashMap<String, Totals>,
}

impl Remote {
    /// Adds what each node counted since its last report. A node seen for the first time is
    /// only a baseline: its earlier traffic happened before this node counted.
    fn absorb(&mut self, me: &str, nodes: Vec<(String, BTreeMap<String, Totals>)>) {
        for (node, pools) in nodes {
            if node == me {
                continue;
            }
            if let Some(prev) = self.last.get(&node) {
                for (pool, now) in &pools {
                    let before = prev.get(pool).copied().unwrap_or_default();
                    // Fewer than before: the node restarted and counts from 0 again.
                    let base = if now.requests < before.requests {
                        Totals::default()
                    } else {
                        before
                    };
                    let sum = self.sum.entry(pool.clone()).or_default();
                    sum.requests += now.requests - base.requests;
                    sum.errors += now.errors.saturating_sub(base.errors);
                    for (s, (n, b)) in sum
                        .latency
                        .iter_mut()
                        .zip(now.latency.iter().zip(base.latency.iter()))
                    {
                        *s += n.saturating_sub(*b);
                    }
                }
            }
            self.last.insert(node, pools);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(node: &str, requests: u64, errors: u64) -> (String, BTreeMap<String, Totals>) {
        let mut latency = [0; 16];
        latency[2] = requests;
        let t = Totals {
            requests,
            errors,
            latency,
        };
        (node.into(), BTreeMap::from([("canary".to_string(), t)]))
    }

    #[test]
    fn other_nodes_traffic_adds_up_and_never_goes_down() {
        let mut r = Remote::default();
        r.absorb("me", vec![report("a", 100, 1), report("me", 5000, 0)]);
        assert_eq!(r.sum.get("canary"), None, "first sight is a baseline");
        r.absorb("me", vec![report("a", 150, 3), report("b", 10, 0)]);
        assert_eq!(r.sum["canary"].requests, 50);
        assert_eq!(r.sum["canary"].errors, 2);
        assert_eq!(r.sum["canary"].latency[2], 50);
        // b counts 10 more; a restarted and counted 7 since.
        r.absorb("me", vec![report("a", 7, 0), report("b", 20, 1)]);
        assert_eq!(r.sum["canary"].requests, 67);
        assert_eq!(r.sum["canary"].errors, 3);
        // a left: nothing goes down.
        r.absorb("me", vec![report("b", 20, 1)]);
        assert_eq!(r.sum["canary"].requests, 67);
    }
}
