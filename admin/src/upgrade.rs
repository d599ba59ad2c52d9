//! Zero-downtime binary upgrade, nginx's USR2 dance without the PID-file juggling:
//!
//! 1. The running process checks the new binary (`version --short` must answer), keeps a copy
//!    of itself under `state_dir/bin/`, freezes the control plane (rollouts hold, mutating
//!    admin calls get 503) and starts the new binary with `NRDOT_UPGRADE_SOCKET` set.
//! 2. Over that socket it offers its listening sockets, its admin socket and the state-dir lock
//!    (`SCM_RIGHTS`) and the backends' health. Nothing is closed, so no connection is refused.
//! 3. The new process loads the state directory and answers `Ready`; told `Go`, it starts
//!    serving (workers, admin, health checks, rollouts resume) and answers `Serving`.
//! 4. Only then does the old process stop accepting and drain, as on SIGTERM.
//!
//! Anything else — the binary does not run, exits, answers an error, or is too slow — kills
//! the new process and thaws the old one, which never stopped serving: the automatic rollback.
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nrdot_proxy::{Exported, Inherited};
use serde::{Deserialize, Serialize};

use crate::binaries::{self, Binary, Record};
use crate::control::Control;
use crate::handoff::{self, WireError};
use crate::rollout::Rollouts;

/// The environment variable that tells a starting nrdot to take over from another.
pub const SOCKET_ENV: &str = "NRDOT_UPGRADE_SOCKET";

/// How long the new binary gets from start to `Serving`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Why an upgrade did not happen. The old process keeps serving in every case.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// Another upgrade is under way.
    #[error("an upgrade is already in progress")]
    Busy,
    /// The new binary is missing, not executable, or not an nrdot.
    #[error("{0}")]
    Binary(String),
    /// `--rollback` without an earlier binary.
    #[error(
        "no earlier binary to roll back to (state_dir/bin/history.jsonl has no successful upgrade)"
    )]
    NoPrevious,
    /// The new process failed; the reason is its own or what was observed.
    #[error("the new binary failed, the old process keeps serving: {0}")]
    Failed(String),
    /// This process cannot hand over (a listener socket could not be duplicated, …).
    #[error("cannot hand over: {0}")]
    Local(String),
}

/// What the old process offers, in the first frame (the descriptors follow the listeners in
/// order, then the admin socket, then the lock).
#[derive(Debug, Serialize, Deserialize)]
pub struct Offer {
    /// The old process.
    pub from_pid: u32,
    /// The old binary (for the audit line the new process writes).
    pub from: Binary,
    /// The new binary, as the old process checked it.
    pub to: Binary,
    /// `upgrade` or `rollback`.
    pub kind: String,
    /// Who asked.
    pub actor: String,
    /// Listener name, configured address, and how many sockets it has.
    pub listeners: Vec<(String, SocketAddr, usize)>,
    /// The admin socket's configured address.
    pub admin: SocketAddr,
    /// Backend id → health, so checks continue instead of starting over.
    pub health: Vec<(String, String)>,
}

/// What the new process answers.
#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    /// State loaded and sockets taken; waiting for `Go`.
    Ready {
        /// New PID.
        pid: u32,
    },
    /// Workers, admin and controllers run.
    Serving,
    /// It cannot run; the reason.
    Failed(String),
}

/// The old process's word after `Ready`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Go;

/// What an upgrade request asks for.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct UpgradeRequest {
    /// The binary to run; default: the path this process was started from.
    #[serde(default)]
    pub binary: Option<PathBuf>,
    /// Run the binary that served before the current one.
    #[serde(default)]
    pub rollback: bool,
}

/// A finished upgrade.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outcome {
    /// Old PID.
    pub from_pid: u32,
    /// New PID.
    pub to_pid: u32,
    /// Old binary (its kept copy).
    pub from: Binary,
    /// New binary.
    pub to: Binary,
}

/// Descriptors kept for a handover: duplicates of every socket this process serves.
pub struct Handles {
    /// Client-facing listeners.
    pub listeners: Vec<Exported>,
    /// Configured admin address and its socket.
    pub admin: (SocketAddr, OwnedFd),
    /// The state-directory lock.
    pub lock: OwnedFd,
}

/// The old process's side.
pub struct Upgrader {
    state_dir: PathBuf,
    /// What a plain `upgrade` runs: the path this binary was started from, which package
    /// managers and `install.sh` overwrite with the new release.
    exe: PathBuf,
    args: Vec<std::ffi::OsString>,
    handles: Mutex<Option<Handles>>,
    busy: AtomicBool,
    /// Set once the new process serves: the old one then drains and exits.
    pub handed_over: tokio::sync::watch::Sender<bool>,
}

impl Upgrader {
    /// `handles` are duplicates of what this process serves; `args` its command line.
    pub fn new(state_dir: &Path, handles: Handles) -> Upgrader {
        let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
        Upgrader {
            state_dir: state_dir.to_path_buf(),
            exe,
            args: std::env::args_os().skip(1).collect(),
            handles: Mutex::new(Some(handles)),
            busy: AtomicBool::new(false),
            handed_over: tokio::sync::watch::channel(false).0,
        }
    }

    /// An upgrade is running (or done): mutating calls wait for the new process.
    pub fn busy(&self) -> bool {
        self.busy.load(Ordering::Acquire)
    }

    /// Closes the duplicates, so a stopping process's ports close with its workers' sockets.
    pub fn release(&self) {
        self.handles.lock().expect("handles poisoned").take();
    }

    /// Runs one upgrade; see the module comment.
    pub async fn run(
        &self,
        control: &Arc<Control>,
        rollouts: &Rollouts,
        req: UpgradeRequest,
        actor: &str,
    ) -> Result<Outcome, UpgradeError> {
        if self.busy.swap(true, Ordering::AcqRel) {
            return Err(UpgradeError::Busy);
        }
        let kind = if req.rollback { "rollback" } else { "upgrade" };
        let prepared = self.prepare(&req).await;
        let (from, to) = match prepared {
            Ok(b) => b,
            Err(e) => {
                self.busy.store(false, Ordering::Release);
                return Err(e);
            }
        };
        rollouts.freeze().await;
        let offer = Offer {
            from_pid: std::process::id(),
            from: from.clone(),
            to: to.clone(),
            kind: kind.into(),
            actor: actor.into(),
            listeners: Vec::new(),
            admin: SocketAddr::from(([0, 0, 0, 0], 0)),
            health: control.health_snapshot(),
        };
        let result = self.hand_over(offer, &to.path).await;
        let record = |to_pid, outcome: String| Record {
            time: crate::store::now_rfc3339(),
            kind: kind.into(),
            from: from.clone(),
            to: to.clone(),
            from_pid: std::process::id(),
            to_pid,
            outcome,
        };
        match result {
            Ok(to_pid) => {
                let _ = binaries::record(&self.state_dir, &record(to_pid, "ok".into()));
                let _ = self.handed_over.send(true);
                Ok(Outcome {
                    from_pid: std::process::id(),
                    to_pid,
                    from,
                    to,
                })
            }
            Err(e) => {
                let _ = binaries::record(&self.state_dir, &record(0, e.to_string()));
                // The failed process may have appended to the audit log; continue its chain.
                control.audit().resync();
                control.event(
                    "binary.upgrade_failed",
                    &to.path.display().to_string(),
                    &e.to_string(),
                );
                let _ = control.audit().record(crate::audit::Event {
                    actor: actor.into(),
                    action: format!("binary.{kind}"),
                    target: to.path.display().to_string(),
                    outcome: "error".into(),
                    detail: format!("{e} (binary {} sha256 {})", to.version, to.sha256),
                    ..Default::default()
                });
                rollouts.thaw();
                self.busy.store(false, Ordering::Release);
                Err(e)
            }
        }
    }

    /// Keeps a copy of the running binary and checks the target one: (from, to).
    async fn prepare(&self, req: &UpgradeRequest) -> Result<(Binary, Binary), UpgradeError> {
        let state_dir = self.state_dir.clone();
        let from = tokio::task::spawn_blocking(move || {
            binaries::keep_running(&state_dir, env!("CARGO_PKG_VERSION"))
        })
        .await
        .map_err(|e| UpgradeError::Local(e.to_string()))?
        .map_err(|e| {
            UpgradeError::Local(format!("cannot keep a copy of the running binary: {e}"))
        })?;
        let target = if req.rollback {
            binaries::previous(&self.state_dir, &from.sha256)
                .ok_or(UpgradeError::NoPrevious)?
                .path
        } else {
            req.binary.clone().unwrap_or_else(|| self.exe.clone())
        };
        let to = probe(&target).await?;
        Ok((from, to))
    }

    /// Starts `binary` and walks it through the handover; the new PID.
    async fn hand_over(&self, mut offer: Offer, binary: &Path) -> Result<u32, UpgradeError> {
        let fds = self.offer_fds(&mut offer)?;
        let path = self.state_dir.join("upgrade.sock");
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path)
            .map_err(|e| UpgradeError::Local(format!("{}: {e}", path.display())))?;
        let mut child = tokio::process::Command::new(binary)
            .args(&self.args)
            .env(SOCKET_ENV, &path)
            .stdin(std::process::Stdio::null())
            .spawn()
            .map_err(|e| UpgradeError::Binary(format!("cannot start {}: {e}", binary.display())))?;
        let pid = child.id().unwrap_or(0);
        let talk = converse(listener, pid, offer, fds);
        let result = tokio::select! {
            r = tokio::time::timeout(READY_TIMEOUT, talk) => match r {
                Ok(r) => r,
                Err(_) => Err(UpgradeError::Failed(format!("not serving within {READY_TIMEOUT:?}"))),
            },
            status = child.wait() => Err(UpgradeError::Failed(match status {
                Ok(s) => format!("it exited ({s}) before it was serving"),
                Err(e) => format!("it could not be watched: {e}"),
            })),
        };
        let _ = std::fs::remove_file(&path);
        if result.is_err() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
        result.map(|()| pid)
    }

    /// Fills the offer's socket list; the descriptors in the order the offer names them.
    fn offer_fds(&self, offer: &mut Offer) -> Result<Vec<OwnedFd>, UpgradeError> {
        let guard = self.handles.lock().expect("handles poisoned");
        let h = guard
            .as_ref()
            .ok_or_else(|| UpgradeError::Local("this process is stopping".into()))?;
        let dup = |fd: &OwnedFd| {
            fd.try_clone()
                .map_err(|e| UpgradeError::Local(e.to_string()))
        };
        let mut fds = Vec::new();
        for l in &h.listeners {
            offer
                .listeners
                .push((l.name.clone(), l.configured, l.sockets.len()));
            for s in &l.sockets {
                fds.push(dup(s)?);
            }
        }
        offer.admin = h.admin.0;
        fds.push(dup(&h.admin.1)?);
        fds.push(dup(&h.lock)?);
        Ok(fds)
    }
}

/// Accepts the new process's connection, checks it is the one started, and runs the frames.
async fn converse(
    listener: tokio::net::UnixListener,
    pid: u32,
    offer: Offer,
    fds: Vec<OwnedFd>,
) -> Result<(), UpgradeError> {
    let failed = |e: WireError| UpgradeError::Failed(format!("handover: {e}"));
    let (stream, _) = listener.accept().await.map_err(|e| failed(e.into()))?;
    let stream = stream.into_std().map_err(|e| failed(e.into()))?;
    tokio::task::spawn_blocking(move || {
        stream
            .set_nonblocking(false)
            .map_err(|e| failed(e.into()))?;
        stream
            .set_read_timeout(Some(READY_TIMEOUT))
            .map_err(|e| failed(e.into()))?;
        let peer = rustix::net::sockopt::socket_peercred(&stream)
            .map_err(|e| failed(std::io::Error::from(e).into()))?;
        if peer.pid.as_raw_nonzero().get() as u32 != pid {
            return Err(UpgradeError::Local(format!(
                "upgrade socket reached by PID {}, not the new binary ({pid})",
                peer.pid.as_raw_nonzero()
            )));
        }
        let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
        handoff::send(&stream, &offer, &borrowed).map_err(failed)?;
        match handoff::recv::<Reply>(&stream).map_err(failed)?.0 {
            Reply::Ready { .. } => {}
            Reply::Failed(why) => return Err(UpgradeError::Failed(why)),
            Reply::Serving => return Err(UpgradeError::Failed("answered out of order".into())),
        }
        handoff::send(&stream, &Go, &[]).map_err(failed)?;
        match handoff::recv::<Reply>(&stream).map_err(failed)?.0 {
            Reply::Serving => Ok(()),
            Reply::Failed(why) => Err(UpgradeError::Failed(why)),
            Reply::Ready { .. } => Err(UpgradeError::Failed("answered out of order".into())),
        }
    })
    .await
    .map_err(|e| UpgradeError::Local(e.to_string()))?
}

/// Checks that `path` is an nrdot: executable, and `version --short` answers within 10 s.
async fn probe(path: &Path) -> Result<Binary, UpgradeError> {
    use std::os::unix::fs::PermissionsExt;
    let bad = |why: String| UpgradeError::Binary(format!("{}: {why}", path.display()));
    let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(bad("not an executable file".into()));
    }
    let run = tokio::process::Command::new(path)
        .args(["version", "--short"])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .map_err(|_| bad("`version --short` did not answer within 10 s".into()))?
        .map_err(|e| bad(format!("cannot run it: {e}")))?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || version.is_empty() || version.contains('\n') || version.len() > 64 {
        return Err(bad(format!(
            "not an nrdot binary (`version --short` exited {} and printed {:?})",
            out.status,
            version.chars().take(64).collect::<String>()
        )));
    }
    let p = path.to_path_buf();
    let sha256 = tokio::task::spawn_blocking(move || binaries::sha256_file(&p))
        .await
        .map_err(|e| bad(e.to_string()))?
        .map_err(|e| bad(e.to_string()))?;
    Ok(Binary {
        path: path.to_path_buf(),
        version,
        sha256,
    })
}

/// The new process's side: what it was handed, until it says `Serving`.
pub struct Incoming {
    stream: std::os::unix::net::UnixStream,
    /// The offer.
    pub offer: Offer,
    /// Client-facing sockets to take over.
    pub inherited: Inherited,
    /// Configured admin address and its socket.
    pub admin: Option<(SocketAddr, std::net::TcpListener)>,
    /// The state-directory lock.
    pub lock: Option<OwnedFd>,
}

impl Incoming {
    /// Connects to the old process when `NRDOT_UPGRADE_SOCKET` says this start is an upgrade.
    pub fn from_env() -> Result<Option<Incoming>, UpgradeError> {
        let Some(path) = std::env::var_os(SOCKET_ENV) else {
            return Ok(None);
        };
        let failed = |e: WireError| UpgradeError::Failed(format!("handover: {e}"));
        let stream =
            std::os::unix::net::UnixStream::connect(&path).map_err(|e| failed(e.into()))?;
        stream
            .set_read_timeout(Some(READY_TIMEOUT))
            .map_err(|e| failed(e.into()))?;
        let (offer, fds) = handoff::recv::<Offer>(&stream).map_err(failed)?;
        let wanted: usize = offer.listeners.iter().map(|l| l.2).sum::<usize>() + 2;
        if fds.len() != wanted {
            return Err(UpgradeError::Failed(format!(
                "handover carried {} descriptors, expected {wanted}",
                fds.len()
            )));
        }
        let mut fds = fds.into_iter();
        let mut inherited = Inherited::default();
        for (name, configured, n) in &offer.listeners {
            let sockets = fds
                .by_ref()
                .take(*n)
                .map(std::net::TcpListener::from)
                .collect();
            inherited.insert(name.clone(), *configured, sockets);
        }
        let admin = fds
            .next()
            .map(|fd| (offer.admin, std::net::TcpListener::from(fd)));
        let lock = fds.next();
        Ok(Some(Incoming {
            stream,
            offer,
            inherited,
            admin,
            lock,
        }))
    }

    /// Says `Ready` and waits for `Go`.
    pub fn ready(&self) -> Result<(), UpgradeError> {
        let failed = |e: WireError| UpgradeError::Failed(format!("handover: {e}"));
        let pid = std::process::id();
        handoff::send(&self.stream, &Reply::Ready { pid }, &[]).map_err(failed)?;
        handoff::recv::<Go>(&self.stream).map_err(failed)?;
        Ok(())
    }

    /// Says `Serving`; the old process then drains.
    pub fn serving(self) -> Result<(), UpgradeError> {
        handoff::send(&self.stream, &Reply::Serving, &[])
            .map_err(|e| UpgradeError::Failed(format!("handover: {e}")))
    }

    /// Tells the old process why this one cannot run.
    pub fn fail(&self, why: &str) {
        let _ = handoff::send(&self.stream, &Reply::Failed(why.to_string()), &[]);
    }
}
