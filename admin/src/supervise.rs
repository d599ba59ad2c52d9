//! The control plane's thread once nrdot serves: the admin API, health checks, the rollout
//! controller, certificate watching and metrics upkeep, and the signals that steer the process
//! (SIGHUP reload, SIGUSR2 binary upgrade, SIGTERM/SIGINT drain). It ends when the process is
//! told to stop or a binary upgrade has handed everything to a new process; either way it then
//! drains the data plane for `shutdown_grace`.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use nrdot_proxy::DataPlane;
use tokio::signal::unix::{signal, SignalKind};

use crate::auth::Auth;
use crate::control::Control;
use crate::http::Admin;
use crate::rollout::Rollouts;
use crate::upgrade::{Incoming, UpgradeRequest, Upgrader};

/// What the control plane runs with.
pub struct Plane {
    pub(crate) control: Arc<Control>,
    pub(crate) certs: Arc<crate::certs::Certs>,
    pub(crate) admin_std: std::net::TcpListener,
    pub(crate) admin_url: String,
    pub(crate) admin_tls: Option<tokio_rustls::TlsAcceptor>,
    pub(crate) auth: Auth,
    pub(crate) prometheus: PrometheusHandle,
    pub(crate) upgrader: Arc<Upgrader>,
    pub(crate) state_dir: PathBuf,
    pub(crate) workers: usize,
    pub(crate) addrs: Vec<(String, SocketAddr)>,
    pub(crate) access_log: nrdot_proxy::accesslog::AccessLog,
}

impl Plane {
    /// Runs until stopped or replaced, then drains `data_plane`.
    pub async fn run(
        self,
        data_plane: DataPlane,
        incoming: Option<Box<Incoming>>,
    ) -> anyhow::Result<()> {
        // Handlers first: the addresses printed below tell supervisors and tests that signals
        // are safe to send (SIGHUP's default action would kill the process).
        let mut hup = signal(SignalKind::hangup())?;
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut usr1 = signal(SignalKind::user_defined1())?;
        let mut usr2 = signal(SignalKind::user_defined2())?;
        let control = Arc::clone(&self.control);
        let rollouts = Arc::new(Rollouts::open(Arc::clone(&control), &self.state_dir)?);
        let admin = Arc::new(Admin {
            control: Arc::clone(&control),
            auth: Arc::new(self.auth),
            prometheus: Some(self.prometheus.clone()),
            url: self.admin_url,
            rollouts: Arc::clone(&rollouts),
            upgrader: Arc::clone(&self.upgrader),
        });
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let listener = tokio::net::TcpListener::from_std(self.admin_std)?;
        let admin_addr = listener.local_addr()?;
        let admin_task = tokio::spawn(crate::http::serve(
            listener,
            self.admin_tls,
            Arc::clone(&admin),
            async {
                let _ = stop_rx.await;
            },
        ));
        let tasks = [
            tokio::spawn(Arc::clone(&rollouts).run()),
            tokio::spawn(crate::health::run(Arc::clone(&control))),
            tokio::spawn(watch_certs(Arc::clone(&control), self.certs)),
            tokio::spawn(upkeep(self.prometheus)),
            tokio::spawn(scheduled_backups(Arc::clone(&control))),
            tokio::spawn(join_cluster(Arc::clone(&control))),
            tokio::spawn(follow_credentials(Arc::clone(&admin.auth))),
        ];
        for (name, addr) in &self.addrs {
            println!("nrdot: listener {name} on {addr}");
        }
        println!("nrdot: admin on {admin_addr}");
        let v = control.version();
        println!(
            "nrdot: {} worker thread(s), config version {} ({})",
            self.workers,
            v.id,
            &v.checksum[..12]
        );
        announce(&control, incoming);
        let mut handed_over = self.upgrader.handed_over.subscribe();
        loop {
            tokio::select! {
                _ = hup.recv() => reload(&control, &self.upgrader),
                _ = usr1.recv() => {
                    // logrotate: both logs reopen their files by path.
                    self.access_log.reopen();
                    match crate::logging::reopen() {
                        Ok(()) => tracing::info!("log files reopened"),
                        Err(e) => tracing::error!("cannot reopen the log file, still writing the old one: {e}"),
                    }
                }
                _ = usr2.recv() => {
                    let admin = Arc::clone(&admin);
                    tokio::spawn(async move {
                        let r = admin.upgrader.run(&admin.control, &admin.rollouts, UpgradeRequest::default(), "SIGUSR2").await;
                        match r {
                            Ok(o) => tracing::info!(pid = o.to_pid, version = %o.to.version, "upgraded: the new process serves"),
                            Err(e) => tracing::error!("upgrade failed: {e}"),
                        }
                    });
                }
                _ = handed_over.changed() => {
                    tracing::info!("binary upgrade done: draining this process");
                    break;
                }
                _ = term.recv() => break,
                _ = int.recv() => break,
            }
        }
        let grace = control.current().config.shutdown_grace;
        tracing::info!(grace = ?grace, "shutting down: no new connections, finishing in-flight requests");
        self.upgrader.release();
        rollouts.stop().await;
        let _ = stop_tx.send(());
        // The data plane drains beside the admin API, whose requests in flight (the upgrade
        // call's own answer among them) finish within the same grace.
        let drained = tokio::task::spawn_blocking(move || data_plane.shutdown(grace));
        let _ = tokio::time::timeout(grace, admin_task).await;
        let _ = drained.await;
        for t in tasks {
            t.abort();
        }
        Ok(())
    }
}

/// Tells systemd (and a process this one replaces) that it serves.
/// In a cluster: publishes this node's version and serves every new current version of the
/// shared history (a watch on etcd). Returns at once without `[cluster]`.
async fn join_cluster(control: Arc<Control>) {
    let Some((etcd, settings)) = control.cluster().cloned() else {
        return;
    };
    let registry = {
        let control = Arc::clone(&control);
        crate::cluster::announce(
            Arc::clone(&etcd),
            settings.node.clone(),
            settings.region.clone(),
            move || crate::cluster::Report {
                version: control.version().id,
                pools: control
                    .current()
                    .pools
                    .iter()
                    .map(|p| {
                        let (requests, errors, latency) = p.state.outcomes.sample();
                        let totals = crate::cluster::Totals {
                            requests,
                            errors,
                            latency,
                        };
                        (p.config.name.clone(), totals)
                    })
                    .collect(),
            },
        )
    };
    let versions = {
        let control = Arc::clone(&control);
        crate::cluster::follow(Arc::clone(&etcd), "current", move |value| {
            let Some(id) = std::str::from_utf8(value)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
            else {
                return;
            };
            if id > control.version().id {
                let control = Arc::clone(&control);
                // The store read is a blocking call on the etcd thread.
                std::thread::spawn(move || {
                    if let Err(e) = control.adopt(id) {
                        tracing::error!(
                            "cannot serve cluster version {id}: {e}; keeping the running one"
                        );
                    }
                });
            }
        })
    };
    let disabled = crate::cluster::follow(etcd, "runtime/disabled", move |value| {
        if let Ok(set) = serde_json::from_slice(value) {
            control.adopt_disabled(set);
        }
    });
    tokio::join!(registry, versions, disabled);
}

/// Takes tokens and the password changed through other nodes.
async fn follow_credentials(auth: Arc<crate::auth::Auth>) {
    let Some(etcd) = auth.cluster().cloned() else {
        return;
    };
    crate::cluster::follow(etcd, "auth", move |value| {
        if let Err(e) = auth.adopt(value) {
            tracing::error!("cannot take the cluster's credentials: {e}");
        }
    })
    .await;
}

fn announce(control: &Control, incoming: Option<Box<Incoming>>) {
    if let Some(i) = incoming {
        let offer_detail = format!(
            "PID {} ({} sha256 {}) -> PID {} ({} sha256 {})",
            i.offer.from_pid,
            i.offer.from.version,
            &i.offer.from.sha256[..12],
            std::process::id(),
            i.offer.to.version,
            &i.offer.to.sha256[..12],
        );
        let _ = control.audit().record(crate::audit::Event {
            actor: i.offer.actor.clone(),
            action: format!("binary.{}", i.offer.kind),
            target: i.offer.to.path.display().to_string(),
            outcome: "ok".into(),
            detail: offer_detail.clone(),
            ..Default::default()
        });
        control.event(
            "binary.upgraded",
            &i.offer.to.path.display().to_string(),
            &offer_detail,
        );
        if let Err(e) = i.serving() {
            tracing::warn!("{e}");
        }
    }
    let pid = std::process::id();
    let _ = sd_notify::notify(&[
        sd_notify::NotifyState::MainPid(pid),
        sd_notify::NotifyState::Ready,
    ]);
}

fn reload(control: &Control, upgrader: &Upgrader) {
    if upgrader.busy() {
        tracing::warn!("SIGHUP ignored: a binary upgrade is in progress");
        return;
    }
    match control.reload() {
        Ok(Some(v)) => tracing::info!(version = v.id, "configuration reloaded"),
        Ok(None) => {
            // The file is unchanged; certificates may not be.
            match control.reload_certs() {
                Ok(()) => tracing::info!("configuration unchanged; certificates reloaded"),
                Err(e) => tracing::error!("certificate reload failed, keeping the old ones: {e}"),
            }
        }
        Err(e) => tracing::error!("reload failed, keeping the running configuration: {e}"),
    }
}

async fn watch_certs(control: Arc<Control>, certs: Arc<crate::certs::Certs>) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tick.tick().await;
        let config = control.current().config.clone();
        if certs.changed(&config) {
            match control.reload_certs() {
                Ok(()) => control.event(
                    "tls.reloaded",
                    "certificates",
                    "a certificate file changed on disk",
                ),
                Err(e) => control.event(
                    "tls.reload_failed",
                    "certificates",
                    &format!("{e}; the old certificates keep serving"),
                ),
            }
        }
    }
}

/// `[backup]`: one archive every `interval`, then the retention, off the admin thread's
/// runtime (a slow or full disk never blocks the API, let alone the proxy). The section is
/// re-read each time, so a reload changes the schedule.
async fn scheduled_backups(control: Arc<Control>) {
    let failures = metrics::counter!("nrdot_backup_failures_total");
    failures.absolute(0);
    loop {
        let Some(settings) = control.current().config.backup.clone() else {
            tokio::time::sleep(Duration::from_secs(5)).await;
            continue;
        };
        tokio::time::sleep(settings.interval).await;
        let (state_dir, config) = (
            control.state_dir().to_path_buf(),
            control.config_file().map(std::path::Path::to_path_buf),
        );
        let s = settings.clone();
        let result = tokio::task::spawn_blocking(move || {
            let out = crate::archives::Destination::parse(&s.dir.to_string_lossy());
            let (manifest, path) =
                crate::archives::write_archive(&state_dir, config.as_deref(), &out, &s.key_file)?;
            let removed = crate::archives::prune(
                &out,
                s.keep_days,
                s.keep_last,
                std::time::SystemTime::now(),
            )?;
            Ok::<_, crate::backup::BackupError>((manifest, path, removed))
        })
        .await;
        match result {
            Ok(Ok((manifest, path, removed))) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs_f64())
                    .unwrap_or(0.0);
                metrics::gauge!("nrdot_backup_last_success_timestamp_seconds").set(now);
                control.event(
                    "backup.created",
                    &path,
                    &format!(
                        "config version {}, {} components, {} old archive(s) removed",
                        manifest.config_version,
                        manifest.components.len(),
                        removed.len()
                    ),
                );
            }
            Ok(Err(e)) => {
                failures.increment(1);
                control.event(
                    "backup.failed",
                    &settings.dir.display().to_string(),
                    &e.to_string(),
                );
            }
            Err(e) => {
                failures.increment(1);
                control.event(
                    "backup.failed",
                    &settings.dir.display().to_string(),
                    &e.to_string(),
                );
            }
        }
    }
}

async fn upkeep(prometheus: PrometheusHandle) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        prometheus.run_upkeep();
    }
}
