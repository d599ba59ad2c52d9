//! The verb that runs nrdot: `serve` (and so `demo`). A start claims the state directory
//! (its lock, or what a binary upgrade hands over), loads it, binds or takes over the sockets,
//! then runs the data plane and the control plane until SIGTERM/SIGINT or a finished upgrade.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use nrdot_config::Config;
use nrdot_proxy::accesslog::AccessLog;
use nrdot_proxy::{DataPlane, Inherited, Listeners};

use crate::auth::Auth;
use crate::control::Control;
use crate::lock::StateLock;
use crate::upgrade::{Handles, Incoming, Upgrader};

/// Reads the file `serve` starts with.
pub fn load(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// How this process holds its state directory: its own lock, or a binary upgrade's handover
/// (which carries the old process's lock and sockets).
pub enum Claim {
    /// A fresh start.
    Fresh(StateLock),
    /// Taking over from the process named in the offer.
    Upgrade(Box<Incoming>),
}

/// Claims `state_dir`: takes over when started by `nrdot upgrade`, else locks it. A second
/// nrdot on the same directory is refused here, before it changes anything.
pub fn claim(state_dir: &Path) -> anyhow::Result<Claim> {
    match Incoming::from_env()? {
        Some(incoming) => Ok(Claim::Upgrade(Box::new(incoming))),
        None => Ok(Claim::Fresh(StateLock::acquire(state_dir)?)),
    }
}

/// Runs proxy and admin until SIGTERM or SIGINT; SIGHUP reloads `path`. `text` is the file's
/// content; whether it or the version store's current version is served is decided by
/// [`Control::start`].
pub fn serve(
    path: Option<PathBuf>,
    text: String,
    environment: Option<String>,
) -> anyhow::Result<()> {
    serve_claimed(path, text, environment, None)
}

/// [`serve`] with the state directory already claimed (the demo claims it before writing
/// its files there).
pub fn serve_claimed(
    path: Option<PathBuf>,
    text: String,
    environment: Option<String>,
    claimed: Option<Claim>,
) -> anyhow::Result<()> {
    let label = path
        .as_deref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "config".into());
    // The file names the state directory, so it must at least validate.
    let bootstrap = Config::from_toml_env(&text, environment.as_deref())
        .map_err(|e| anyhow::anyhow!("invalid configuration:\n{}", e.render(&label).trim_end()))?;
    crate::logging::init(&bootstrap.log)
        .with_context(|| format!("cannot open log file {}", bootstrap.log.file))?;
    raise_fd_limit();
    let claim = match claimed {
        Some(c) => c,
        None => claim(&bootstrap.state_dir)?,
    };
    let (lock, mut incoming) = match claim {
        Claim::Fresh(lock) => (lock, None),
        Claim::Upgrade(mut i) => match i.lock.take() {
            Some(fd) => (StateLock::adopt(fd, &bootstrap.state_dir), Some(i)),
            None => anyhow::bail!("upgrade handover carried no state-directory lock"),
        },
    };
    let started = match Started::new(
        path,
        &text,
        bootstrap,
        environment,
        &label,
        incoming.as_deref_mut(),
    ) {
        Ok(s) => s,
        Err(e) => {
            if let Some(i) = &incoming {
                i.fail(&format!("{e:#}"));
            }
            return Err(e);
        }
    };
    // The store holds the text now; a large file should not stay resident twice.
    drop(text);
    if let Some(i) = &incoming {
        // Told to go, this process is the server; the old one stops accepting once we serve.
        i.ready()?;
        started.control.restore_health(&i.offer.health);
    }
    lock.write_pid()?;
    started.run(lock, incoming)
}

/// Everything loaded and bound, nothing serving yet.
struct Started {
    control: Arc<Control>,
    certs: Arc<crate::certs::Certs>,
    listeners: Listeners,
    admin_std: std::net::TcpListener,
    admin_url: String,
    admin_tls: Option<tokio_rustls::TlsAcceptor>,
    auth: Auth,
    log: AccessLog,
    workers: usize,
    prometheus: PrometheusHandle,
}

impl Started {
    /// `config` is `text` validated (with `environment`).
    fn new(
        path: Option<PathBuf>,
        text: &str,
        config: Config,
        environment: Option<String>,
        label: &str,
        mut incoming: Option<&mut Incoming>,
    ) -> anyhow::Result<Started> {
        let prometheus = install_recorder()?;
        let state_dir = config.state_dir.clone();
        let (control, created) = Control::start(&state_dir, path, text, config, environment)?;
        let control = Arc::new(control);
        if let Some(v) = created {
            tracing::info!(version = v.id, "stored {label} as config version {}", v.id);
        }
        let table = control.current();
        let config = &table.config;
        let workers = config.worker_threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        });
        let log = AccessLog::start(&config.access_log)
            .with_context(|| format!("cannot open access log {}", config.access_log.path))?;
        let (certs, tls_servers) =
            crate::certs::Certs::start(config).map_err(|e| anyhow::anyhow!("TLS: {e}"))?;
        let certs = Arc::new(certs);
        control.attach_certs(Arc::clone(&certs));
        let mut none = Inherited::default();
        let inherited = match incoming.as_deref_mut() {
            Some(i) => &mut i.inherited,
            None => &mut none,
        };
        let listeners = Listeners::bind(&config.listeners, workers, &tls_servers, inherited)?;
        let admin_std = admin_socket(config.admin_bind, incoming.and_then(|i| i.admin.take()))?;
        let scheme = if config.admin_tls.is_some() {
            "https"
        } else {
            "http"
        };
        let admin_url = format!("{scheme}://{}", admin_std.local_addr()?);
        let (auth, written) = match control.cluster() {
            Some((etcd, _)) => Auth::open_shared(&state_dir, &admin_url, Arc::clone(etcd))?,
            None => Auth::open(&state_dir, &admin_url)?,
        };
        auth.set_session_idle(config.admin_session_idle);
        if let Some(p) = written {
            println!(
                "nrdot: admin credentials written to {} (mode 0600; only hashes are kept)",
                p.display()
            );
        }
        let admin_tls = admin_acceptor(config.admin_tls.as_ref())?;
        drop(table);
        Ok(Started {
            control,
            certs,
            listeners,
            admin_std,
            admin_url,
            admin_tls,
            auth,
            log,
            workers,
            prometheus,
        })
    }

    /// Serves until stopped or replaced.
    fn run(self, lock: StateLock, incoming: Option<Box<Incoming>>) -> anyhow::Result<()> {
        let control = self.control;
        let state_dir = control.current().config.state_dir.clone();
        let handles = Handles {
            listeners: self.listeners.export()?,
            admin: (
                control.current().config.admin_bind,
                self.admin_std.try_clone()?.into(),
            ),
            lock: lock.share()?,
        };
        let upgrader = Arc::new(Upgrader::new(&state_dir, handles));
        let addrs = self.listeners.local_addrs();
        let access_log = self.log.clone();
        let data_plane =
            DataPlane::start(self.listeners, control.reader(), self.log, self.workers)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let plane = crate::supervise::Plane {
            control,
            certs: self.certs,
            admin_std: self.admin_std,
            admin_url: self.admin_url,
            admin_tls: self.admin_tls,
            auth: self.auth,
            prometheus: self.prometheus,
            upgrader,
            state_dir,
            workers: self.workers,
            addrs,
            access_log,
        };
        rt.block_on(plane.run(data_plane, incoming))?;
        drop(lock);
        tracing::info!("stopped");
        Ok(())
    }
}

/// The admin socket: taken over when the old process's was configured at the same address.
fn admin_socket(
    bind: std::net::SocketAddr,
    inherited: Option<(std::net::SocketAddr, std::net::TcpListener)>,
) -> anyhow::Result<std::net::TcpListener> {
    let socket = match inherited {
        Some((configured, socket)) if configured == bind => socket,
        _ => std::net::TcpListener::bind(bind)
            .with_context(|| format!("cannot bind admin address {bind}"))?,
    };
    socket.set_nonblocking(true)?;
    Ok(socket)
}

fn admin_acceptor(
    files: Option<&nrdot_config::CertFiles>,
) -> anyhow::Result<Option<tokio_rustls::TlsAcceptor>> {
    let Some(files) = files else { return Ok(None) };
    let set = nrdot_proxy::tls::CertSet::load(&nrdot_config::ListenerTls {
        default: files.clone(),
        sni: Vec::new(),
    })
    .map_err(|e| anyhow::anyhow!("admin TLS: {e}"))?;
    let cfg = nrdot_proxy::tls::server_config(nrdot_proxy::tls::CertStore::new(set))
        .map_err(|e| anyhow::anyhow!("admin TLS: {e}"))?;
    Ok(Some(tokio_rustls::TlsAcceptor::from(cfg)))
}

fn install_recorder() -> anyhow::Result<PrometheusHandle> {
    let prometheus = PrometheusBuilder::new()
        .set_buckets(&[
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ])
        .context("metrics buckets")?
        .build_recorder();
    let handle = prometheus.handle();
    // A second serve in one process (tests) keeps the first recorder; metrics still work.
    let _ = metrics::set_global_recorder(prometheus);
    Ok(handle)
}

/// Raises the open-file limit to its hard limit (nginx's `worker_rlimit_nofile`): every
/// client and upstream connection is a descriptor, and the usual soft limit of 1024 runs out
/// at a few hundred concurrent clients.
pub fn raise_fd_limit() -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    let hard = limit.maximum;
    if limit.current != hard {
        limit.current = hard;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::warn!(error = %e, "cannot raise the open-file limit");
        }
    }
    let now = getrlimit(Resource::Nofile).current;
    match now {
        Some(n) => tracing::info!(limit = n, "open-file limit"),
        None => tracing::info!("open-file limit: unlimited"),
    }
    now
}
