//! The verbs of the `nrdot` binary: `serve` (and so `demo`), `config validate`, `version`.
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use metrics_exporter_prometheus::PrometheusBuilder;
use nrdot_config::Config;
use nrdot_proxy::accesslog::AccessLog;
use nrdot_proxy::{DataPlane, Listeners};

use crate::control::Control;
use crate::http::Admin;

/// `nrdot config validate --file F`: 0 valid, 1 invalid (every problem printed), 2 unreadable.
pub fn validate(file: &Path) -> ExitCode {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("nrdot: cannot read {}: {e}", file.display());
            return ExitCode::from(2);
        }
    };
    match Config::from_toml(&text) {
        Ok(c) => {
            println!(
                "{}: OK ({} listener(s), {} pool(s), {} route(s))",
                file.display(),
                c.listeners.len(),
                c.pools.len(),
                c.routes.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprint!("{}", e.render(&file.display().to_string()));
            eprintln!("{}: {} problem(s)", file.display(), e.problems().len());
            ExitCode::from(1)
        }
    }
}

/// Reads and validates the file `serve` starts with.
pub fn load(path: &Path) -> anyhow::Result<(String, Config)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let config = Config::from_toml(&text).map_err(|e| {
        anyhow::anyhow!(
            "invalid configuration:\n{}",
            e.render(&path.display().to_string()).trim_end()
        )
    })?;
    Ok((text, config))
}

/// Runs proxy and admin until SIGTERM or SIGINT; SIGHUP reloads `path`.
pub fn serve(path: Option<PathBuf>, text: &str, config: Config) -> anyhow::Result<()> {
    let prometheus = PrometheusBuilder::new()
        .set_buckets(&[
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ])
        .context("metrics buckets")?
        .build_recorder();
    let prom_handle = prometheus.handle();
    // A second serve in one process (tests) keeps the first recorder; metrics still work.
    let _ = metrics::set_global_recorder(prometheus);

    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("cannot create state_dir {}", config.state_dir.display()))?;
    let workers = config.worker_threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let grace = config.shutdown_grace;
    let admin_bind = config.admin_bind;
    let log = AccessLog::start(&config.access_log)
        .with_context(|| format!("cannot open access log {}", config.access_log.path))?;
    let listeners = Listeners::bind(&config.listeners, workers)?;
    let admin_std = std::net::TcpListener::bind(admin_bind)
        .with_context(|| format!("cannot bind admin address {admin_bind}"))?;
    admin_std.set_nonblocking(true)?;

    let control = Arc::new(Control::new(path, text, config));
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
        let admin = Arc::new(Admin {
            control: Arc::clone(&control),
            prometheus: Some(prom_handle.clone()),
        });
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let listener = tokio::net::TcpListener::from_std(admin_std)?;
        let admin_addr = listener.local_addr()?;
        let admin_task = tokio::spawn(crate::http::serve(listener, admin, async {
            let _ = stop_rx.await;
        }));
        for (name, addr) in &addrs {
            println!("nrdot: listener {name} on {addr}");
        }
        println!("nrdot: admin on {admin_addr}");
        println!("nrdot: {workers} worker thread(s), config {}", &control.checksum()[..12]);
        let upkeep = tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
            loop {
                tick.tick().await;
                prom_handle.run_upkeep();
            }
        });
        loop {
            tokio::select! {
                _ = hup.recv() => match control.reload() {
                    Ok(generation) => tracing::info!(generation, "configuration reloaded"),
                    Err(e) => tracing::error!("reload failed: {e}"),
                },
                _ = term.recv() => break,
                _ = int.recv() => break,
            }
        }
        tracing::info!(grace = ?grace, "shutting down: no new connections, finishing in-flight requests");
        let _ = stop_tx.send(());
        let _ = admin_task.await;
        upkeep.abort();
        anyhow::Ok(())
    })?;
    data_plane.shutdown(grace);
    tracing::info!("stopped");
    Ok(())
}
