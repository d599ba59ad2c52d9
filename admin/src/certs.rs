//! The live TLS material of the process: certificates of the HTTPS listeners and client
//! configurations of `https` pools. Loaded at start (a bad file stops the start), then reloaded
//! with every configuration change, on SIGHUP, through the admin API, and when a file changes on
//! disk. A reload loads everything first and swaps only when all of it is good, so a bad file is
//! reported and the old certificates keep serving.
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use nrdot_config::Config;
use nrdot_proxy::tls::{self, CertInfo, CertSet, CertStore};
use rustls::{ClientConfig, ServerConfig};

/// Everything loaded from disk for one configuration, not yet in effect.
pub struct Prepared {
    sets: Vec<(String, CertSet)>,
    upstream: HashMap<String, Arc<ClientConfig>>,
}

/// The certificate stores of the listeners bound at start.
pub struct Certs {
    stores: HashMap<String, Arc<CertStore>>,
    /// Client configurations of `https` pools, attached to every table the control plane
    /// publishes.
    upstream: Mutex<Arc<HashMap<String, Arc<ClientConfig>>>>,
    seen: Mutex<Vec<(PathBuf, Option<SystemTime>)>>,
}

/// Every file a configuration's TLS settings name.
pub fn files(config: &Config) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for l in &config.listeners {
        if let Some(t) = &l.tls {
            out.push(t.default.cert.clone());
            out.push(t.default.key.clone());
            for s in &t.sni {
                out.push(s.files.cert.clone());
                out.push(s.files.key.clone());
            }
        }
    }
    for p in &config.pools {
        if let Some(t) = &p.tls {
            out.extend(t.ca_file.clone());
            if let Some(c) = &t.client_cert {
                out.push(c.cert.clone());
                out.push(c.key.clone());
            }
        }
    }
    out
}

fn mtimes(paths: Vec<PathBuf>) -> Vec<(PathBuf, Option<SystemTime>)> {
    paths
        .into_iter()
        .map(|p| {
            let m = std::fs::metadata(&p).and_then(|m| m.modified()).ok();
            (p, m)
        })
        .collect()
}

/// Loads what `config` names without putting it into effect.
pub fn prepare(config: &Config) -> Result<Prepared, String> {
    let mut sets = Vec::new();
    for l in &config.listeners {
        if let Some(t) = &l.tls {
            let set = CertSet::load(t).map_err(|e| format!("listener {:?}: {e}", l.name))?;
            sets.push((l.name.clone(), set));
        }
    }
    let mut upstream = HashMap::new();
    for p in &config.pools {
        if let Some(t) = &p.tls {
            let c = tls::client_config(t).map_err(|e| format!("pool {:?}: {e}", p.name))?;
            upstream.insert(p.name.clone(), c);
        }
    }
    Ok(Prepared { sets, upstream })
}

impl Certs {
    /// Loads the material of `config` and returns the server configurations of its HTTPS
    /// listeners for binding.
    pub fn start(config: &Config) -> Result<(Certs, HashMap<String, Arc<ServerConfig>>), String> {
        let prepared = prepare(config)?;
        let mut stores = HashMap::new();
        let mut servers = HashMap::new();
        for (name, set) in prepared.sets {
            export(&name, &set.info);
            let store = CertStore::new(set);
            servers.insert(
                name.clone(),
                tls::server_config(Arc::clone(&store)).map_err(|e| e.to_string())?,
            );
            stores.insert(name, store);
        }
        Ok((
            Certs {
                stores,
                upstream: Mutex::new(Arc::new(prepared.upstream)),
                seen: Mutex::new(mtimes(files(config))),
            },
            servers,
        ))
    }

    /// Puts prepared material into effect: new handshakes use it, open connections keep theirs.
    pub fn commit(&self, prepared: Prepared, config: &Config) {
        for (name, set) in prepared.sets {
            if let Some(store) = self.stores.get(&name) {
                export(&name, &set.info);
                store.replace(set);
            }
        }
        *self.upstream.lock().expect("certs poisoned") = Arc::new(prepared.upstream);
        *self.seen.lock().expect("certs poisoned") = mtimes(files(config));
        metrics::counter!("nrdot_tls_reloads_total", "result" => "ok").increment(1);
    }

    /// The client configurations of `https` pools now in effect.
    pub fn upstream(&self) -> Arc<HashMap<String, Arc<ClientConfig>>> {
        Arc::clone(&self.upstream.lock().expect("certs poisoned"))
    }

    /// Reloads everything `config` names now.
    pub fn reload(&self, config: &Config) -> Result<(), String> {
        match prepare(config) {
            Ok(p) => {
                self.commit(p, config);
                Ok(())
            }
            Err(e) => {
                metrics::counter!("nrdot_tls_reloads_total", "result" => "error").increment(1);
                *self.seen.lock().expect("certs poisoned") = mtimes(files(config));
                Err(e)
            }
        }
    }

    /// Whether any file changed on disk since the last load.
    pub fn changed(&self, config: &Config) -> bool {
        let now = mtimes(files(config));
        *self.seen.lock().expect("certs poisoned") != now
    }

    /// What every listener serves.
    pub fn info(&self) -> Vec<(String, CertInfo)> {
        let mut out: Vec<(String, CertInfo)> = self
            .stores
            .iter()
            .flat_map(|(name, s)| s.info().into_iter().map(move |i| (name.clone(), i)))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

fn export(listener: &str, info: &[CertInfo]) {
    for i in info {
        let name = i.names.first().cloned().unwrap_or_else(|| i.file.clone());
        metrics::gauge!(
            "nrdot_tls_certificate_expiry_days",
            "listener" => listener.to_string(),
            "name" => name
        )
        .set(i.expires_in_days as f64);
    }
}
