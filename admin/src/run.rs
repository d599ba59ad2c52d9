//! The verbs of the `nrdot` binary: `serve` (and so `demo`), `config validate`, `version`.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use metrics_exporter_prometheus::PrometheusBuilder;
use nrdot_config::Config;
use nrdot_proxy::accesslog::AccessLog;
use nrdot_proxy::{DataPlane, Listeners};

use crate::auth::Auth;
use crate::control::Control;
use crate::http::Admin;

/// Reads the file `serve` starts with.
pub fn load(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Runs proxy and admin until SIGTERM or SIGINT; SIGHUP reloads `path`. `text` is the file's
/// content; whether it or the version store's current version is served is decided by
/// [`Control::start`].
pub fn serve(path: Option<PathBuf>, text: &str, environment: Option<String>) -> anyhow::Result<()> {
    let label = path
        .as_deref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "config".into());
    // The file names the state directory, so it must at least validate.
    let bootstrap = Config::from_toml_env(text, environment.as_deref())
        .map_err(|e| anyhow::anyhow!("invalid configuration:\n{}", e.render(&label).trim_end()))?;
    let prometheus = PrometheusBuilder::new()
        .set_buckets(&[
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ])
        .context("metrics buckets")?
        .build_recorder();
    let prom_handle = prometheus.handle();
    // A second serve in one process (tests) keeps the first recorder; metrics still work.
    let _ = metrics::set_global_recorder(prometheus);

    let state_dir = bootstrap.state_dir.clone();
    let (control, created) = Control::start(&state_dir, path, text, environment)?;
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
    let grace = config.shutdown_grace;
    let admin_bind = config.admin_bind;
    let admin_tls = config.admin_tls.clone();
    let log = AccessLog::start(&config.access_log)
        .with_context(|| format!("cannot open access log {}", config.access_log.path))?;
    let (certs, tls_servers) =
        crate::certs::Certs::start(config).map_err(|e| anyhow::anyhow!("TLS: {e}"))?;
    let certs = Arc::new(certs);
    control.attach_certs(Arc::clone(&certs));
    let listeners = Listeners::bind(&config.listeners, workers, &tls_servers)?;
    let admin_std = std::net::TcpListener::bind(admin_bind)
        .with_context(|| format!("cannot bind admin address {admin_bind}"))?;
    admin_std.set_nonblocking(true)?;
    let scheme = if config.admin_tls.is_some() {
        "https"
    } else {
        "http"
    };
    let admin_url = format!("{scheme}://{}", admin_std.local_addr()?);
    let (auth, written) = Auth::open(&state_dir, &admin_url)?;
    if let Some(p) = written {
        println!(
            "nrdot: admin credentials written to {} (mode 0600; only hashes are kept)",
            p.display()
        );
    }
    drop(table);
    let addrs = listeners.local_addrs();
    let data_plane = DataPlane::start(listeners, control.reader(), log, workers)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        use tokio::signal::unix::{signal, SignalKind};
        // Handlers first: the addresses printed below tell supervisors and tests that signals
        // are safe to send (SIGHUP's default action would kill the process).
        let mut hup = signal(SignalKind::hangup())?;
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let rollouts = Arc::new(crate::rollout::Rollouts::open(Arc::clone(&control), &state_dir)?);
        let controller = tokio::spawn(Arc::clone(&rollouts).run());
        let admin = Arc::new(Admin {
            control: Arc::clone(&control),
            auth,
            prometheus: Some(prom_handle.clone()),
            url: admin_url,
            rollouts,
        });
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let listener = tokio::net::TcpListener::from_std(admin_std)?;
        let admin_addr = listener.local_addr()?;
        let admin_tls = match &admin_tls {
            Some(files) => {
                let set = nrdot_proxy::tls::CertSet::load(&nrdot_config::ListenerTls { default: files.clone(), sni: Vec::new() })
                    .map_err(|e| anyhow::anyhow!("admin TLS: {e}"))?;
                let cfg = nrdot_proxy::tls::server_config(nrdot_proxy::tls::CertStore::new(set))
                    .map_err(|e| anyhow::anyhow!("admin TLS: {e}"))?;
                Some(tokio_rustls::TlsAcceptor::from(cfg))
            }
            None => None,
        };
        let admin_task = tokio::spawn(crate::http::serve(listener, admin_tls, admin, async {
            let _ = stop_rx.await;
        }));
        for (name, addr) in &addrs {
            println!("nrdot: listener {name} on {addr}");
        }
        println!("nrdot: admin on {admin_addr}");
        let v = control.version();
        println!("nrdot: {workers} worker thread(s), config version {} ({})", v.id, &v.checksum[..12]);
        let prober = tokio::spawn(crate::health::run(Arc::clone(&control)));
        let watcher = tokio::spawn({
            let (control, certs) = (Arc::clone(&control), Arc::clone(&certs));
            async move {
                let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
                loop {
                    tick.tick().await;
                    let config = control.current().config.clone();
                    if certs.changed(&config) {
                        match control.reload_certs() {
                            Ok(()) => control.event("tls.reloaded", "certificates", "a certificate file changed on disk"),
                            Err(e) => control.event("tls.reload_failed", "certificates", &format!("{e}; the old certificates keep serving")),
                        }
                    }
                }
            }
        });
        let upkeep = tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
            loop {
                tick.tick().await;
                prom_handle.run_upkeep();
            }
        });
        loop {
            tokio::select! {
                _ = hup.recv() => {
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
                _ = term.recv() => break,
                _ = int.recv() => break,
            }
        }
        tracing::info!(grace = ?grace, "shutting down: no new connections, finishing in-flight requests");
        let _ = stop_tx.send(());
        let _ = admin_task.await;
        upkeep.abort();
        prober.abort();
        controller.abort();
        watcher.abort();
        anyhow::Ok(())
    })?;
    data_plane.shutdown(grace);
    tracing::info!("stopped");
    Ok(())
}
