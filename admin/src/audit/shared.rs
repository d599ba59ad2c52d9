//! The audit log of a cluster: one hash chain in etcd, whichever node records. Each entry is
//! its own key (`audit/entries/NNNNNNNNNNNN`, the same line a local log holds) written in one
//! transaction with the chain's head (`audit/head`), compared on the head's revision: two
//! nodes recording at once never fork the chain; the loser reads the new head and tries again.
use std::sync::Arc;

use etcd_client::{Compare, CompareOp, GetOptions, SortOrder, SortTarget, Txn, TxnOp};

use super::{check_lines, seal, AuditError, Entry, Event, Head, GENESIS};
use crate::cluster::Etcd;
use crate::store::StoreError;

/// How often a node tries again when other nodes keep winning the head.
const TRIES: usize = 50;

/// The cluster's chain.
pub struct SharedLog {
    etcd: Arc<Etcd>,
}

impl SharedLog {
    /// The chain under `etcd`'s prefix.
    pub fn new(etcd: Arc<Etcd>) -> SharedLog {
        SharedLog { etcd }
    }

    fn head(&self) -> Result<(Head, i64), StoreError> {
        let kvs = self.etcd.read(self.etcd.key("audit/head"), false)?;
        Ok(match kvs.into_iter().next() {
            None => (
                Head {
                    seq: 0,
                    hash: GENESIS.into(),
                },
                0,
            ),
            Some(kv) => {
                let head = serde_json::from_slice(&kv.value).map_err(|e| StoreError::Damaged {
                    path: "audit/head".into(),
                    why: e.to_string(),
                })?;
                (head, kv.mod_revision)
            }
        })
    }

    /// Appends `e` after the cluster's last entry.
    pub fn append(&self, e: &Event) -> Result<(), StoreError> {
        for _ in 0..TRIES {
            let (head, rev) = self.head()?;
            let (entry, line, hash) = seal(head.seq, &head.hash, e.clone());
            let head_key = self.etcd.key("audit/head");
            let next = serde_json::to_vec(&Head {
                seq: entry.seq,
                hash,
            })
            .unwrap_or_default();
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    head_key.clone(),
                    CompareOp::Equal,
                    rev,
                )])
                .and_then([
                    TxnOp::put(self.entry_key(entry.seq), line, None),
                    TxnOp::put(head_key, next, None),
                ]);
            let won = self
                .etcd
                .run(move |mut c| async move { Ok(c.txn(txn).await?.succeeded()) })?;
            if won {
                return Ok(());
            }
        }
        Err(StoreError::Unavailable(
            "the audit head kept changing under this node".into(),
        ))
    }

    /// Writes a single node's verified log (its stored lines, oldest first) as the cluster's
    /// chain: `nrdot cluster init`, into a prefix that has none.
    pub fn import(&self, path: &std::path::Path) -> Result<u64, AuditError> {
        let (seq, hash) = super::verify_files(path, &path.with_file_name("audit.head"))?;
        let text = std::fs::read_to_string(path).unwrap_or_default();
        for (i, line) in text.lines().enumerate() {
            let key = self.entry_key(i as u64 + 1);
            let line = line.to_string();
            self.etcd
                .run(move |mut c| async move { c.put(key, line, None).await.map(|_| ()) })
                .map_err(unavailable)?;
        }
        let head = serde_json::to_vec(&Head { seq, hash }).unwrap_or_default();
        self.etcd.put("audit/head", head).map_err(unavailable)?;
        Ok(seq)
    }

    fn entry_key(&self, seq: u64) -> String {
        self.etcd.key(&format!("audit/entries/{seq:012}"))
    }

    /// The last `limit` entries, newest last.
    pub fn tail(&self, limit: usize) -> Result<Vec<Entry>, AuditError> {
        let key = self.etcd.key("audit/entries/");
        let kvs = self
            .etcd
            .run(move |mut c| async move {
                let opts = GetOptions::new()
                    .with_prefix()
                    .with_sort(SortTarget::Key, SortOrder::Descend)
                    .with_limit(limit as i64);
                let r = c.get(key, Some(opts)).await?;
                Ok(r.kvs()
                    .iter()
                    .map(|kv| kv.value().to_vec())
                    .collect::<Vec<_>>())
            })
            .map_err(unavailable)?;
        Ok(kvs
            .iter()
            .rev()
            .filter_map(|v| serde_json::from_slice(v).ok())
            .collect())
    }

    /// Verifies the whole chain against the head; returns the number of entries.
    pub fn verify(&self) -> Result<u64, AuditError> {
        let (head, _) = self.head().map_err(unavailable)?;
        let kvs = self
            .etcd
            .read(self.etcd.key("audit/entries/"), true)
            .map_err(unavailable)?;
        let lines: Vec<String> = kvs
            .into_iter()
            .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
            .collect();
        let label = std::path::Path::new("etcd:audit/entries");
        let (seq, hash) = check_lines(label, lines.iter().map(String::as_str))?;
        if seq != head.seq || hash != head.hash {
            return Err(AuditError::Broken {
                path: label.into(),
                line: seq as usize,
                why: format!(
                    "the chain ends at entry {seq} but {} were written (entries removed)",
                    head.seq
                ),
            });
        }
        Ok(seq)
    }
}

fn unavailable(e: StoreError) -> AuditError {
    AuditError::Unavailable(e.to_string())
}
