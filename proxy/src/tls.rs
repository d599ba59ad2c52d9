//! TLS with rustls: the certificates of each HTTPS listener (chosen by SNI, exact or wildcard,
//! with a default), swapped atomically on reload so open connections keep theirs; and the client
//! configurations for `https` upstreams (system roots or a CA file, SNI, optional client
//! certificate). TLS 1.2 and 1.3 only, rustls' safe defaults, ALPN `h2` and `http/1.1` to
//! clients.
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use nrdot_config::{CertFiles, ListenerTls, UpstreamTls};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// Why certificates could not be loaded. The message names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// File.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The file holds nothing usable.
    #[error("{path}: {why}")]
    Bad {
        /// File.
        path: String,
        /// What is wrong.
        why: String,
    },
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    static P: OnceLock<Arc<rustls::crypto::CryptoProvider>> = OnceLock::new();
    Arc::clone(P.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider())))
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Bad {
            path: path.display().to_string(),
            why: format!("not a PEM certificate chain: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Bad {
            path: path.display().to_string(),
            why: "no certificate found (expected -----BEGIN CERTIFICATE-----)".into(),
        });
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| TlsError::Bad {
            path: path.display().to_string(),
            why: format!("not a PEM private key: {e}"),
        })?
        .ok_or_else(|| TlsError::Bad {
            path: path.display().to_string(),
            why: "no private key found (PKCS#8, PKCS#1 or SEC1 PEM)".into(),
        })
}

/// Loads a chain and its key, checking that they belong together.
pub fn certified_key(files: &CertFiles) -> Result<CertifiedKey, TlsError> {
    let chain = certs(&files.cert)?;
    let key = key(&files.key)?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|e| TlsError::Bad {
        path: files.key.display().to_string(),
        why: match e {
            rustls::Error::InconsistentKeys(_) => format!(
                "this key does not match the certificate in {}",
                files.cert.display()
            ),
            other => format!("unusable key: {other}"),
        },
    })
}

/// DNS names and days until expiry of a certificate's leaf.
fn describe(cert: &CertificateDer<'_>) -> (Vec<String>, i64) {
    use x509_parser::prelude::*;
    let Ok((_, parsed)) = X509Certificate::from_der(cert.as_ref()) else {
        return (Vec::new(), 0);
    };
    let mut names = Vec::new();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                names.push(d.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        if let Some(cn) = parsed
            .subject()
            .iter_common_name()
            .next()
            .and_then(|c| c.as_str().ok())
        {
            names.push(cn.to_ascii_lowercase());
        }
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let days = (parsed.validity().not_after.timestamp() - now).div_euclid(86_400);
    (names, days)
}

/// One certificate as reported by the admin API and metrics.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CertInfo {
    /// Names it is served for.
    pub names: Vec<String>,
    /// Certificate file.
    pub file: String,
    /// Days until it expires (negative: expired).
    pub expires_in_days: i64,
    /// Whether it is the listener's default.
    pub default: bool,
}

/// The certificates of one listener, immutable; swapped whole on reload.
pub struct CertSet {
    default: Arc<CertifiedKey>,
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    /// What was loaded, for the admin API and metrics.
    pub info: Vec<CertInfo>,
}

impl CertSet {
    /// Loads every file of `tls`; the first problem fails the whole set.
    pub fn load(tls: &ListenerTls) -> Result<CertSet, TlsError> {
        let default = Arc::new(certified_key(&tls.default)?);
        let (names, days) = describe(&default.cert[0]);
        let mut info = vec![CertInfo {
            names,
            file: tls.default.cert.display().to_string(),
            expires_in_days: days,
            default: true,
        }];
        let (mut exact, mut wildcard) = (HashMap::new(), HashMap::new());
        for s in &tls.sni {
            let ck = Arc::new(certified_key(&s.files)?);
            let (own, days) = describe(&ck.cert[0]);
            let names = if s.names.is_empty() {
                own
            } else {
                s.names.clone()
            };
            for n in &names {
                match n.strip_prefix('*') {
                    Some(suffix) => wildcard.insert(suffix.to_string(), Arc::clone(&ck)),
                    None => exact.insert(n.clone(), Arc::clone(&ck)),
                };
            }
            info.push(CertInfo {
                names,
                file: s.files.cert.display().to_string(),
                expires_in_days: days,
                default: false,
            });
        }
        Ok(CertSet {
            default,
            exact,
            wildcard,
            info,
        })
    }

    fn pick(&self, name: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = name else {
            return Arc::clone(&self.default);
        };
        let name = name.to_ascii_lowercase();
        if let Some(c) = self.exact.get(&name) {
            return Arc::clone(c);
        }
        for (pos, _) in name.match_indices('.') {
            if let Some(c) = self.wildcard.get(&name[pos..]) {
                return Arc::clone(c);
            }
        }
        Arc::clone(&self.default)
    }
}

/// The live certificates of one listener.
pub struct CertStore {
    set: ArcSwap<CertSet>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CertStore")
    }
}

impl CertStore {
    /// A store serving `set`.
    pub fn new(set: CertSet) -> Arc<CertStore> {
        Arc::new(CertStore {
            set: ArcSwap::from_pointee(set),
        })
    }

    /// New connections get `set`; open ones keep what they negotiated.
    pub fn replace(&self, set: CertSet) {
        self.set.store(Arc::new(set));
    }

    /// What is being served.
    pub fn info(&self) -> Vec<CertInfo> {
        self.set.load().info.clone()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.set.load().pick(hello.server_name()))
    }
}

/// The server configuration of a listener: TLS 1.3 and 1.2, ALPN h2 and http/1.1, session
/// resumption by tickets and by cache.
pub fn server_config(store: Arc<CertStore>) -> Result<Arc<ServerConfig>, TlsError> {
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Bad {
            path: "<tls>".into(),
            why: e.to_string(),
        })?
        .with_no_client_auth()
        .with_cert_resolver(store);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    if let Ok(t) = rustls::crypto::ring::Ticketer::new() {
        cfg.ticketer = t;
    }
    cfg.session_storage = rustls::server::ServerSessionMemoryCache::new(16 * 1024);
    Ok(Arc::new(cfg))
}

/// The client configuration for a pool's `https` servers.
pub fn client_config(tls: &UpstreamTls) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    match &tls.ca_file {
        Some(path) => {
            for c in certs(path)? {
                roots.add(c).map_err(|e| TlsError::Bad {
                    path: path.display().to_string(),
                    why: format!("unusable CA certificate: {e}"),
                })?;
            }
        }
        None => {
            for c in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(c);
            }
        }
    }
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Bad {
            path: "<tls>".into(),
            why: e.to_string(),
        })?
        .with_root_certificates(roots);
    let mut cfg = match &tls.client_cert {
        Some(files) => builder
            .with_client_auth_cert(certs(&files.cert)?, key(&files.key)?)
            .map_err(|e| TlsError::Bad {
                path: files.key.display().to_string(),
                why: format!("client certificate unusable: {e}"),
            })?,
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// The name to send as SNI and verify for `address` (`host:port`).
pub fn server_name(tls: &UpstreamTls, address: &str) -> Option<ServerName<'static>> {
    let host = match &tls.server_name {
        Some(n) => n.as_str(),
        None => address.rsplit_once(':').map(|(h, _)| h).unwrap_or(address),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string()).ok()
}
