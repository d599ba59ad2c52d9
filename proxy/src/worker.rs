//! Worker threads. Each owns a current-thread tokio runtime and one SO_REUSEPORT socket per
//! listener, accepts connections and serves them with hyper (HTTP/1.1, and HTTP/2 with prior
//! knowledge, told apart by the connection preface). Nothing is shared between workers on the
//! request path except the table cell and the per-server atomics inside the table.
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use http::HeaderValue;
use nrdot_config::swap::Reader;
use tokio::sync::watch;

use crate::accesslog::AccessLog;
use crate::h1;
use crate::listener::Shared;
use crate::{handover, local};

/// Bound client-facing sockets: per listener, one socket per worker, and the TLS
/// configuration of HTTPS listeners.
pub struct Listeners {
    sockets: Vec<Bound>,
}

struct Bound {
    name: String,
    /// The configured address (its port may be 0), which names the socket in a handover.
    configured: SocketAddr,
    tls: Option<Arc<rustls::ServerConfig>>,
    sockets: Vec<std::net::TcpListener>,
}

/// Listening sockets handed over by the process this one replaces (a binary upgrade), by
/// listener name and configured address. A listener whose name and address both match takes
/// them over instead of binding, so the port is never closed; what nobody takes is closed.
#[derive(Default)]
pub struct Inherited(std::collections::HashMap<(String, SocketAddr), Vec<std::net::TcpListener>>);

impl Inherited {
    /// Adds the sockets of one listener.
    pub fn insert(
        &mut self,
        name: String,
        configured: SocketAddr,
        sockets: Vec<std::net::TcpListener>,
    ) {
        self.0
            .entry((name, configured))
            .or_default()
            .extend(sockets);
    }

    fn take(&mut self, name: &str, configured: SocketAddr) -> Vec<std::net::TcpListener> {
        self.0
            .remove(&(name.to_string(), configured))
            .unwrap_or_default()
    }
}

/// One listener's sockets, duplicated for a handover: the descriptors refer to the same
/// sockets, so the kernel's accept queues are shared, not copied.
pub struct Exported {
    /// Listener name.
    pub name: String,
    /// Configured address.
    pub configured: SocketAddr,
    /// The sockets.
    pub sockets: Vec<std::os::fd::OwnedFd>,
}

impl Listeners {
    /// Binds every configured listener once per worker, or takes over the sockets `inherited`
    /// holds for it. `tls` gives the server configuration of each HTTPS listener by name.
    pub fn bind(
        listeners: &[nrdot_config::Listener],
        workers: usize,
        tls: &std::collections::HashMap<String, Arc<rustls::ServerConfig>>,
        inherited: &mut Inherited,
    ) -> io::Result<Listeners> {
        let mut sockets = Vec::new();
        for l in listeners {
            let mut s = inherited.take(&l.name, l.bind);
            // Workers beyond the inherited sockets join the same port with sockets of their own.
            let missing = workers.max(1).saturating_sub(s.len());
            if missing > 0 {
                let addr = match s.first() {
                    Some(first) => first.local_addr()?,
                    None => l.bind,
                };
                let more = crate::listener::bind(addr, missing, l.defer_accept).map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("listener {:?} on {}: {e}", l.name, l.bind),
                    )
                })?;
                s.extend(more);
            }
            sockets.push(Bound {
                name: l.name.clone(),
                configured: l.bind,
                tls: tls.get(&l.name).cloned(),
                sockets: s,
            });
        }
        Ok(Listeners { sockets })
    }

    /// The addresses actually bound (useful when a port was 0), by listener name.
    pub fn local_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.sockets
            .iter()
            .filter_map(|b| Some((b.name.clone(), b.sockets.first()?.local_addr().ok()?)))
            .collect()
    }

    /// Duplicates of every socket, for handing them to a new binary.
    pub fn export(&self) -> io::Result<Vec<Exported>> {
        self.sockets
            .iter()
            .map(|b| {
                Ok(Exported {
                    name: b.name.clone(),
                    configured: b.configured,
                    sockets: b
                        .sockets
                        .iter()
                        .map(|s| s.try_clone().map(std::os::fd::OwnedFd::from))
                        .collect::<io::Result<_>>()?,
                })
            })
            .collect()
    }
}

/// The running data plane.
pub struct DataPlane {
    threads: Vec<JoinHandle<()>>,
    stop: watch::Sender<Option<Duration>>,
}

impl DataPlane {
    /// Starts `workers` threads serving `listeners` with tables from `reader`.
    pub fn start(
        listeners: Listeners,
        reader: Reader,
        log: AccessLog,
        workers: usize,
    ) -> io::Result<DataPlane> {
        let (stop, stop_rx) = watch::channel(None);
        let workers = workers.max(1);
        let mut per_worker: Vec<Vec<(Arc<Shared>, std::net::TcpListener)>> =
            (0..workers).map(|_| Vec::new()).collect();
        let https_port = listeners
            .sockets
            .iter()
            .find(|b| b.tls.is_some())
            .and_then(|b| b.sockets.first()?.local_addr().ok())
            .map(|a| a.port());
        for Bound {
            name, tls, sockets, ..
        } in listeners.sockets
        {
            let shared = Arc::new(Shared {
                reader: reader.clone(),
                log: log.clone(),
                proto: HeaderValue::from_static(if tls.is_some() { "https" } else { "http" }),
                tls: tls.map(tokio_rustls::TlsAcceptor::from),
                handshake_errors: metrics::counter!("nrdot_tls_handshake_errors_total", "listener" => name.clone()),
                https_port,
            });
            for (i, s) in sockets.into_iter().enumerate() {
                per_worker[i % workers].push((Arc::clone(&shared), s));
            }
        }
        let mut threads = Vec::new();
        for (i, sockets) in per_worker.into_iter().enumerate() {
            let stop_rx = stop_rx.clone();
            let t = std::thread::Builder::new()
                .name(format!("nrdot-worker-{i}"))
                .spawn(move || worker(sockets, stop_rx))?;
            threads.push(t);
        }
        Ok(DataPlane { threads, stop })
    }

    /// Stops accepting, lets in-flight requests finish for up to `grace`, then returns.
    pub fn shutdown(self, grace: Duration) {
        let _ = self.stop.send(Some(grace));
        for t in self.threads {
            let _ = t.join();
        }
    }
}

fn worker(
    sockets: Vec<(Arc<Shared>, std::net::TcpListener)>,
    stop: watch::Receiver<Option<Duration>>,
) {
    crate::clock::enable();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .on_thread_unpark(crate::clock::refresh)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "worker runtime failed to start");
            return;
        }
    };
    rt.block_on(async move {
        let sweeper = tokio::spawn(async {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                // A worker that never parks still takes the time once a second.
                crate::clock::refresh();
                crate::upstream::sweep();
                local::sweep_idle();
            }
        });
        handover::watch_connections();
        let drain = local::drain();
        let mut accept_loops = Vec::new();
        for (shared, socket) in sockets {
            let listener = match tokio::net::TcpListener::from_std(socket) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(error = %e, "listener socket unusable");
                    continue;
                }
            };
            let mut stop = stop.clone();
            accept_loops.push(tokio::spawn(async move {
                loop {
                    tokio::select! {
                        r = listener.accept() => match r {
                            Ok((stream, peer)) => {
                                // At `max_connections`, the oldest idle connection makes room;
                                // with none idle this one waits, and the next ones wait in the
                                // backlog, until one closes.
                                let max = shared.reader.load().config.limits.max_connections;
                                if max > 0 && local::open_connections() >= max {
                                    tokio::select! {
                                        _ = local::room(max) => {}
                                        _ = stop.changed() => break,
                                    }
                                }
                                serve(stream, peer, &shared)
                            }
                            Err(e) => {
                                // Out of descriptors or memory: back off instead of spinning.
                                tracing::warn!(error = %e, "accept failed");
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                        },
                        _ = stop.changed() => break,
                    }
                }
            }));
        }
        let mut stop = stop;
        let grace = loop {
            if let Some(g) = *stop.borrow_and_update() {
                break g;
            }
            if stop.changed().await.is_err() {
                break Duration::ZERO;
            }
        };
        drain.stop(tokio::time::Instant::now().into_std() + grace.min(local::CLOSE_IDLE_AFTER));
        for l in accept_loops {
            let _ = l.await; // drops the listening sockets
        }
        // In-flight exchanges finish (answered with `Connection: close`); hyper's connections
        // finish theirs; idle native connections get a few seconds to send one more request
        // (see `local::CLOSE_IDLE_AT`), tunnels the whole grace. This task runs on the
        // worker's only thread, so once it sees nothing open nothing can start before the
        // runtime is gone.
        let deadline = tokio::time::Instant::now() + grace;
        let graceful = handover::stop_watching();
        let finished = tokio::time::timeout_at(deadline, async {
            if let Some(g) = graceful {
                g.shutdown().await;
            }
            drain.idle().await;
        })
        .await;
        if finished.is_err() {
            tracing::warn!("shutdown grace period ended with requests still in flight");
        }
        sweeper.abort();
    });
}

fn serve(stream: tokio::net::TcpStream, peer: SocketAddr, shared: &Arc<Shared>) {
    // The native path sets TCP_NODELAY on plain connections only when a response needs more
    // than one write; TLS and the hyper path write in pieces from the start.
    let nodelay = shared.tls.is_some();
    if nodelay {
        let _ = stream.set_nodelay(true);
    }
    crate::metrics::get().connections.increment(1);
    let cx = h1::Ctx {
        shared: Arc::clone(shared),
        peer,
        nodelay: std::sync::atomic::AtomicBool::new(nodelay),
    };
    match &shared.tls {
        None => h1::spawn(stream, cx),
        Some(acceptor) => {
            let (acceptor, shared) = (acceptor.clone(), Arc::clone(shared));
            tokio::spawn(async move {
                // A handshake that fails or stalls costs this task only, never the worker.
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                            handover::serve_hyper(tls, peer, &shared)
                        } else {
                            h1::spawn(tls, cx)
                        }
                    }
                    Ok(Err(e)) => {
                        shared.handshake_errors.increment(1);
                        tracing::debug!(peer = %peer, error = %e, "TLS handshake failed");
                    }
                    Err(_) => {
                        shared.handshake_errors.increment(1);
                        tracing::debug!(peer = %peer, "TLS handshake timed out");
                    }
                }
            });
        }
    }
}
