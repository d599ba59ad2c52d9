//! Admin credentials. On first start nrdot generates an admin token and a dashboard password,
//! writes them once to `state_dir/admin-credentials` (mode 0600) and keeps only hashes in
//! `state_dir/auth.json`. Tokens are compared by SHA-256 digest in constant time; repeated
//! failures from one address are answered ever more slowly.
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::durable;

/// What a token may do. Ordered: each role includes the ones before it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, utoipa::ToSchema, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read everything.
    Viewer,
    /// Also drain and enable backends, drive rollouts.
    Operator,
    /// Also change configuration and credentials.
    Admin,
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            _ => Err(format!("unknown role {s:?} (viewer, operator, admin)")),
        }
    }
}

/// Who made a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// Token name.
    pub name: String,
    /// Its role.
    pub role: Role,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TokenRecord {
    name: String,
    role: Role,
    sha256: String,
    created: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct AuthFile {
    tokens: Vec<TokenRecord>,
    dashboard_user: String,
    dashboard_password: String,
}

/// Errors of the credential store.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Disk trouble.
    #[error("credentials in {path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The hash file does not parse.
    #[error("credentials file {0} is damaged; move it aside to generate new credentials")]
    Damaged(PathBuf),
    /// No OS randomness.
    #[error("cannot generate a secret: {0}")]
    Random(String),
    /// A new password too short to resist guessing.
    #[error("the password must have at least {MIN_PASSWORD} characters")]
    WeakPassword,
    /// Unknown token name.
    #[error("no token named {0:?}")]
    UnknownToken(String),
    /// The cluster's credentials cannot be read or written now.
    #[error("cluster credentials: {0}")]
    Cluster(String),
}

/// The credential store and the failure throttle.
pub struct Auth {
    /// In a cluster, the credentials live in etcd (key `auth`, the same JSON as `auth.json`,
    /// which then is this node's last known copy).
    shared: Option<std::sync::Arc<crate::cluster::Etcd>>,
    path: PathBuf,
    credentials: PathBuf,
    file: Mutex<AuthFile>,
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
    /// Dashboard sessions by the digest of their id (a memory dump shows no usable cookie).
    /// In memory: a restart logs everyone out, as HAProxy's and Traefik's dashboards do.
    sessions: Mutex<HashMap<[u8; 32], Session>>,
    /// `[admin] session_idle`, in milliseconds (atomic: set after opening, read per call).
    session_idle_ms: std::sync::atomic::AtomicU64,
}

/// A logged-in dashboard session.
#[derive(Debug, Clone)]
pub struct Session {
    /// Who logged in, with the role of the credential used.
    pub actor: Actor,
    /// The token every mutating call of this session must carry in `X-CSRF-Token`.
    pub csrf: String,
    last_seen: Instant,
}

/// A session unused this long is gone (its next call is answered 401), unless `[admin]
/// session_idle` says otherwise.
pub const SESSION_IDLE: Duration = Duration::from_secs(30 * 60);

/// Sessions kept at most; the least recently used goes first.
const MAX_SESSIONS: usize = 10_000;

/// Shortest dashboard password accepted.
pub const MIN_PASSWORD: usize = 12;

/// A new random secret: 32 bytes from the OS, hex encoded, with a prefix that secret scanners
/// can recognise.
pub fn new_secret(prefix: &str) -> Result<String, AuthError> {
    let mut buf = [0u8; 32];
    getrandom::getrandom(&mut buf).map_err(|e| AuthError::Random(e.to_string()))?;
    Ok(format!(
        "{prefix}{}",
        buf.iter().map(|b| format!("{b:02x}")).collect::<String>()
    ))
}

fn digest(token: &str) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(token.as_bytes()).into()
}

fn hex_to_bytes(h: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = h
            .get(i * 2..i * 2 + 2)
            .and_then(|s| u8::from_str_radix(s, 16).ok())
            .unwrap_or(0);
    }
    out
}

/// Equality whose time does not depend on where the inputs differ.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let mut diff = 0u8;
    for i in 0..32 {
        diff |= a[i] ^ b[i];
    }
    diff == 0
}

impl Auth {
    /// Opens the credential store of `state_dir`, generating credentials on first start. Returns
    /// the path of the freshly written secrets file when it was created now.
    pub fn open(state_dir: &Path, admin_url: &str) -> Result<(Auth, Option<PathBuf>), AuthError> {
        let path = state_dir.join("auth.json");
        let credentials = state_dir.join("admin-credentials");
        let io = |source| AuthError::Io {
            path: path.clone(),
            source,
        };
        let (file, created) = match std::fs::read(&path) {
            Ok(bytes) => (
                serde_json::from_slice::<AuthFile>(&bytes)
                    .map_err(|_| AuthError::Damaged(path.clone()))?,
                None,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let token = new_secret("nrd_")?;
                let password = new_secret("")?[..24].to_string();
                let file = AuthFile {
                    tokens: vec![TokenRecord {
                        name: "admin".into(),
                        role: Role::Admin,
                        sha256: durable::sha256_hex(token.as_bytes()),
                        created: crate::store::now_rfc3339(),
                    }],
                    dashboard_user: "admin".into(),
                    dashboard_password: hash_password(&password)?,
                };
                // Secrets first: if we crash before the hashes are written, the next start
                // generates new ones and overwrites this file.
                let text = credentials_text(admin_url, &token, "admin", Some(&password));
                durable::write(&credentials, text.as_bytes(), 0o600).map_err(|source| {
                    AuthError::Io {
                        path: credentials.clone(),
                        source,
                    }
                })?;
                let bytes = serde_json::to_vec_pretty(&file).unwrap_or_default();
                durable::write(&path, &bytes, 0o600).map_err(io)?;
                (file, Some(credentials.clone()))
            }
            Err(e) => return Err(io(e)),
        };
        Ok((Auth::with(state_dir, file), created))
    }

    /// Who a `Bearer` token belongs to. Every stored digest is compared, in constant time each.
    pub fn check(&self, authorization: Option<&str>) -> Option<Actor> {
        let token = authorization?.strip_prefix("Bearer ")?.trim();
        let presented = digest(token);
        let file = self.file.lock().expect("auth poisoned");
        let mut found = None;
        for t in &file.tokens {
            if constant_time_eq(&presented, &hex_to_bytes(&t.sha256)) {
                found = Some(Actor {
                    name: t.name.clone(),
                    role: t.role,
                });
            }
        }
        found
    }

    /// How long to wait before answering a failed attempt from `ip`, counting this one:
    /// nothing for the first three, then doubling from 100 ms up to 5 s.
    pub fn failure_delay(&self, ip: IpAddr) -> Duration {
        metrics::counter!("nrdot_admin_auth_failures_total").increment(1);
        let mut f = self.failures.lock().expect("failures poisoned");
        if f.len() > 10_000 {
            f.clear(); // bounded memory under a spray of addresses
        }
        let now = Instant::now();
        let entry = f.entry(ip).or_insert((0, now));
        if now.duration_since(entry.1) > Duration::from_secs(900) {
            *entry = (0, now);
        }
        entry.0 += 1;
        entry.1 = now;
        match entry.0 {
            0..=3 => Duration::ZERO,
            n => Duration::from_millis(100u64 << (n - 4).min(6)).min(Duration::from_secs(5)),
        }
    }

    /// Replaces the secret of token `name` and returns the new one. The admin token's new
    /// secret also replaces the one in the credentials file, so the local CLI keeps working.
    pub fn rotate(&self, name: &str, admin_url: &str) -> Result<String, AuthError> {
        let token = new_secret("nrd_")?;
        let mut file = self.file.lock().expect("auth poisoned");
        let mut next = file.clone();
        let rec = next
            .tokens
            .iter_mut()
            .find(|t| t.name == name)
            .ok_or_else(|| AuthError::UnknownToken(name.to_string()))?;
        rec.sha256 = durable::sha256_hex(token.as_bytes());
        rec.created = crate::store::now_rfc3339();
        let role = rec.role;
        self.save(&next)?;
        *file = next;
        if role == Role::Admin && name == "admin" {
            let text = credentials_text(admin_url, &token, name, None);
            durable::write(&self.credentials, text.as_bytes(), 0o600).map_err(|source| {
                AuthError::Io {
                    path: self.credentials.clone(),
                    source,
                }
            })?;
        }
        Ok(token)
    }

    /// Creates (or replaces) token `name` with `role` and returns its secret.
    pub fn create(&self, name: &str, role: Role) -> Result<String, AuthError> {
        let token = new_secret("nrd_")?;
        let mut file = self.file.lock().expect("auth poisoned");
        let mut next = file.clone();
        next.tokens.retain(|t| t.name != name);
        next.tokens.push(TokenRecord {
            name: name.to_string(),
            role,
            sha256: durable::sha256_hex(token.as_bytes()),
            created: crate::store::now_rfc3339(),
        });
        self.save(&next)?;
        *file = next;
        Ok(token)
    }

    /// Token names and roles (never secrets or digests).
    pub fn tokens(&self) -> Vec<(String, Role, String)> {
        self.file
            .lock()
            .expect("auth poisoned")
            .tokens
            .iter()
            .map(|t| (t.name.clone(), t.role, t.created.clone()))
            .collect()
    }

    /// Checks the dashboard password.
    pub fn check_password(&self, user: &str, password: &str) -> bool {
        use argon2::{PasswordHash, PasswordVerifier};
        let file = self.file.lock().expect("auth poisoned");
        if user != file.dashboard_user {
            return false;
        }
        PasswordHash::new(&file.dashboard_password)
            .map(|h| {
                argon2::Argon2::default()
                    .verify_password(password.as_bytes(), &h)
                    .is_ok()
            })
            .unwrap_or(false)
    }

    /// Who `user` is when `password` is right: the dashboard user (admin role), or a token's
    /// name with the token's secret as the password (the token's role: how a viewer logs in).
    pub fn login(&self, user: &str, password: &str) -> Option<Actor> {
        if self.check_password(user, password) {
            return Some(Actor {
                name: user.to_string(),
                role: Role::Admin,
            });
        }
        let presented = digest(password);
        let file = self.file.lock().expect("auth poisoned");
        let mut found = None;
        for t in &file.tokens {
            if constant_time_eq(&presented, &hex_to_bytes(&t.sha256)) && t.name == user {
                found = Some(Actor {
                    name: t.name.clone(),
                    role: t.role,
                });
            }
        }
        found
    }

    /// Sets how long an unused session lives.
    pub fn set_session_idle(&self, idle: Duration) {
        self.session_idle_ms.store(
            idle.as_millis().max(1) as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// How long an unused session lives.
    pub fn session_idle(&self) -> Duration {
        Duration::from_millis(
            self.session_idle_ms
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// Opens a session for `actor`; returns its id (the cookie value) and its CSRF token.
    pub fn open_session(&self, actor: Actor) -> Result<(String, String), AuthError> {
        let id = new_secret("")?;
        let csrf = new_secret("")?;
        let mut sessions = self.sessions.lock().expect("sessions poisoned");
        let now = Instant::now();
        let idle = self.session_idle();
        sessions.retain(|_, s| now.duration_since(s.last_seen) < idle);
        if sessions.len() >= MAX_SESSIONS {
            if let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.last_seen)
                .map(|(k, _)| *k)
            {
                sessions.remove(&oldest);
            }
        }
        sessions.insert(
            digest(&id),
            Session {
                actor,
                csrf: csrf.clone(),
                last_seen: now,
            },
        );
        Ok((id, csrf))
    }

    /// The live session with cookie value `id`, its idle clock restarted.
    pub fn session(&self, id: &str) -> Option<Session> {
        let mut sessions = self.sessions.lock().expect("sessions poisoned");
        let key = digest(id);
        let now = Instant::now();
        let idle = self.session_idle();
        let s = sessions.get_mut(&key)?;
        if now.duration_since(s.last_seen) >= idle {
            sessions.remove(&key);
            return None;
        }
        s.last_seen = now;
        Some(s.clone())
    }

    /// Ends the session with cookie value `id`.
    pub fn close_session(&self, id: &str) {
        self.sessions
            .lock()
            .expect("sessions poisoned")
            .remove(&digest(id));
    }

    /// Replaces the dashboard password and ends every session of the dashboard user except
    /// `keep` (the one that changed it), so a stolen session dies with the old password.
    pub fn set_password(&self, password: &str, keep: Option<&str>) -> Result<(), AuthError> {
        if password.chars().count() < MIN_PASSWORD {
            return Err(AuthError::WeakPassword);
        }
        let hash = hash_password(password)?;
        let mut file = self.file.lock().expect("auth poisoned");
        let mut next = file.clone();
        next.dashboard_password = hash;
        self.save(&next)?;
        let user = next.dashboard_user.clone();
        *file = next;
        let keep = keep.map(digest);
        self.sessions
            .lock()
            .expect("sessions poisoned")
            .retain(|k, s| Some(*k) == keep || s.actor.name != user);
        Ok(())
    }

    /// Opens a cluster node's credentials: the cluster's; or, when it has none yet, this
    /// node's (generated now if it has none either), which become the cluster's unless
    /// another node's got there first. Only the node whose credentials became the cluster's
    /// keeps an `admin-credentials` file it wrote now. While etcd is away, this node's last
    /// copy.
    pub fn open_shared(
        state_dir: &Path,
        admin_url: &str,
        etcd: std::sync::Arc<crate::cluster::Etcd>,
    ) -> Result<(Auth, Option<PathBuf>), AuthError> {
        let cluster = |e: crate::store::StoreError| AuthError::Cluster(e.to_string());
        let theirs = match etcd.value("auth") {
            Ok(v) => v,
            Err(e) if state_dir.join("auth.json").exists() => {
                tracing::warn!("credentials from this node's last copy until etcd answers: {e}");
                let (mut auth, _) = Auth::open(state_dir, admin_url)?;
                auth.shared = Some(etcd);
                return Ok((auth, None));
            }
            Err(e) => return Err(cluster(e)),
        };
        let (mut auth, mut created) = match theirs {
            Some(_) => (Auth::open_existing(state_dir)?, None),
            None => Auth::open(state_dir, admin_url)?,
        };
        let theirs = match theirs {
            Some(bytes) => Some(bytes),
            None => {
                let mine = serde_json::to_vec_pretty(&*auth.file.lock().expect("auth poisoned"))
                    .unwrap_or_default();
                match etcd.create("auth", mine).map_err(cluster)? {
                    true => None,
                    false => etcd.value("auth").map_err(cluster)?,
                }
            }
        };
        if let Some(bytes) = theirs {
            auth.adopt(&bytes)?;
            if let Some(p) = created.take() {
                // Its secrets never became valid: another node's credentials are the cluster's.
                let _ = std::fs::remove_file(p);
            }
        }
        auth.shared = Some(etcd);
        Ok((auth, created))
    }

    /// The credentials `file` of `state_dir`, no sessions yet.
    fn with(state_dir: &Path, file: AuthFile) -> Auth {
        Auth {
            shared: None,
            path: state_dir.join("auth.json"),
            credentials: state_dir.join("admin-credentials"),
            file: Mutex::new(file),
            failures: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
            session_idle_ms: (SESSION_IDLE.as_millis() as u64).into(),
        }
    }

    /// An `Auth` with whatever `state_dir` holds (nothing yet is fine: the cluster's
    /// credentials replace it at once), generating nothing.
    fn open_existing(state_dir: &Path) -> Result<Auth, AuthError> {
        let path = state_dir.join("auth.json");
        let file = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<AuthFile>(&bytes)
                .map_err(|_| AuthError::Damaged(path.clone()))?,
            Err(_) => AuthFile {
                tokens: Vec::new(),
                dashboard_user: "admin".into(),
                dashboard_password: String::new(),
            },
        };
        Ok(Auth::with(state_dir, file))
    }

    /// Takes the cluster's credentials (`bytes`: the `auth` key), when they changed: a token
    /// made, rotated or a password set through another node.
    pub fn adopt(&self, bytes: &[u8]) -> Result<(), AuthError> {
        let next: AuthFile =
            serde_json::from_slice(bytes).map_err(|_| AuthError::Damaged("etcd:auth".into()))?;
        let mut file = self.file.lock().expect("auth poisoned");
        if serde_json::to_vec_pretty(&*file).unwrap_or_default() == bytes {
            return Ok(());
        }
        let password_changed = file.dashboard_password != next.dashboard_password;
        self.write_local(&next)?;
        let user = next.dashboard_user.clone();
        *file = next;
        drop(file);
        if password_changed {
            // As on the node that changed it: the old password's sessions end.
            self.sessions
                .lock()
                .expect("sessions poisoned")
                .retain(|_, s| s.actor.name != user);
        }
        Ok(())
    }

    /// The etcd connection, when the credentials are a cluster's.
    pub fn cluster(&self) -> Option<&std::sync::Arc<crate::cluster::Etcd>> {
        self.shared.as_ref()
    }

    fn save(&self, file: &AuthFile) -> Result<(), AuthError> {
        if let Some(etcd) = &self.shared {
            let bytes = serde_json::to_vec_pretty(file).unwrap_or_default();
            etcd.put("auth", bytes)
                .map_err(|e| AuthError::Cluster(e.to_string()))?;
        }
        self.write_local(file)
    }

    fn write_local(&self, file: &AuthFile) -> Result<(), AuthError> {
        let bytes = serde_json::to_vec_pretty(file).unwrap_or_default();
        durable::write(&self.path, &bytes, 0o600).map_err(|source| AuthError::Io {
            path: self.path.clone(),
            source,
        })
    }
}

fn hash_password(password: &str) -> Result<String, AuthError> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let mut salt = [0u8; 16];
    getrandom::getrandom(&mut salt).map_err(|e| AuthError::Random(e.to_string()))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| AuthError::Random(e.to_string()))?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Random(e.to_string()))
}

fn credentials_text(admin_url: &str, token: &str, name: &str, password: Option<&str>) -> String {
    let mut t = format!(
        "# nrdot admin credentials. nrdot keeps only hashes of these secrets; this file is the\n# only copy. Shell-sourceable. Rotate with: nrdot admin rotate-token\nNRDOT_ADMIN_URL={admin_url}\nNRDOT_TOKEN={token}\nNRDOT_TOKEN_NAME={name}\n"
    );
    if let Some(p) = password {
        t.push_str(&format!(
            "NRDOT_DASHBOARD_USER=admin\nNRDOT_DASHBOARD_PASSWORD={p}\n"
        ));
    }
    t
}

/// Reads `KEY=value` lines of a credentials file.
pub fn read_credentials(path: &Path) -> Option<HashMap<String, String>> {
    let text = std::fs::read_to_string(path).ok()?;
    Some(
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_start_writes_secrets_once_and_checks_tokens() {
        let d = std::env::temp_dir().join(format!("nrdot-auth-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("dir");
        let (auth, created) = Auth::open(&d, "http://127.0.0.1:8080").expect("open");
        let cred = created.expect("created now");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&cred).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let c = read_credentials(&cred).expect("read");
        let token = &c["NRDOT_TOKEN"];
        let stored = std::fs::read_to_string(d.join("auth.json")).expect("hashes");
        assert!(!stored.contains(token.as_str()), "secret stored in clear");
        assert!(!stored.contains(c["NRDOT_DASHBOARD_PASSWORD"].as_str()));
        assert_eq!(
            auth.check(Some(&format!("Bearer {token}"))).map(|a| a.role),
            Some(Role::Admin)
        );
        assert!(auth.check(Some("Bearer nrd_wrong")).is_none());
        assert!(auth.check(Some(token)).is_none(), "scheme required");
        assert!(auth.check_password("admin", &c["NRDOT_DASHBOARD_PASSWORD"]));
        assert!(!auth.check_password("admin", "guess"));
        // A second open keeps the credentials and writes nothing.
        let (again, created) = Auth::open(&d, "x").expect("reopen");
        assert!(created.is_none());
        assert!(again.check(Some(&format!("Bearer {token}"))).is_some());
        // Rotation invalidates the old token.
        let new = again
            .rotate("admin", "http://127.0.0.1:8080")
            .expect("rotate");
        assert!(again.check(Some(&format!("Bearer {token}"))).is_none());
        assert!(again.check(Some(&format!("Bearer {new}"))).is_some());
        assert_eq!(read_credentials(&cred).expect("read")["NRDOT_TOKEN"], new);
        let viewer = again.create("ci", Role::Viewer).expect("create");
        assert_eq!(
            again
                .check(Some(&format!("Bearer {viewer}")))
                .map(|a| a.role),
            Some(Role::Viewer)
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn failures_slow_down() {
        let d = std::env::temp_dir().join(format!("nrdot-auth2-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("dir");
        let (auth, _) = Auth::open(&d, "x").expect("open");
        let ip: IpAddr = "10.0.0.1".parse().expect("ip");
        let delays: Vec<u128> = (0..8).map(|_| auth.failure_delay(ip).as_millis()).collect();
        assert_eq!(delays, vec![0, 0, 0, 100, 200, 400, 800, 1600]);
        // Per address: another one starts from scratch.
        assert_eq!(
            auth.failure_delay("10.0.0.2".parse().expect("ip")),
            Duration::ZERO
        );
        let _ = std::fs::remove_dir_all(&d);
    }
}
