//! The admin HTTP server (default 127.0.0.1:8080). Every operation it serves is a row of
//! [`crate::openapi::Op`] (method, path, role, request and answer types); a request is routed
//! there, and `/api/v2/openapi.json` is generated from the same rows. Handlers are plain
//! functions of (`&Admin`, peer, request) over any body ([`crate::respond::AdminBody`]), so
//! they are tested without a socket.
//!
//! `GET /` redirects to the dashboard (`/dashboard`, assets embedded in the binary).
//!
//! Every `/api/v2` call needs `Authorization: Bearer <token>` or a dashboard session cookie
//! (whose mutating calls also need `X-CSRF-Token`, else 403); without either 401 with no detail
//! (answered ever more slowly on repeated failures from one address), with too small a role
//! 403. Mutating calls are audited whatever their outcome.
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};

use crate::api;
use crate::audit::Event;
use crate::auth::{Actor, Role};
use crate::control::{AdminError, Control};
use crate::openapi::Op;
use crate::respond::{answer, error, json_response, percent_decode, query, read_body, AdminBody};
use crate::session;

pub use crate::app::Admin;

/// Serves the admin API on `listener` until `shutdown` resolves, then lets the requests in
/// flight finish (each answered with `Connection: close`) and closes idle connections; it
/// returns when none is left, so callers bound the wait.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    admin: Arc<Admin>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let (admin, tls, watcher) = (Arc::clone(&admin), tls.clone(), graceful.watcher());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let admin = Arc::clone(&admin);
                let req = req.map(crate::respond::admin_body);
                async move { Ok::<_, Infallible>(handle(&admin, peer.ip(), req).await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            match tls {
                None => {
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    let _ = watcher.watch(conn.into_owned()).await;
                }
                Some(acceptor) => {
                    let Ok(Ok(stream)) =
                        tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                            .await
                    else {
                        return;
                    };
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    let _ = watcher.watch(conn.into_owned()).await;
                }
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// The standard `process_*` series (CPU, resident memory, open and maximum fds, threads,
/// start time), read from `/proc` at each scrape.
fn process_metrics() -> &'static metrics_process::Collector {
    static COLLECTOR: std::sync::OnceLock<metrics_process::Collector> = std::sync::OnceLock::new();
    COLLECTOR.get_or_init(|| {
        let c = metrics_process::Collector::default();
        c.describe();
        c
    })
}

/// jemalloc's own figures: bytes the program holds and bytes of heap pages resident. The gap
/// between them and the process RSS tells fragmentation from growth, as Envoy's
/// `server.memory_allocated` / `memory_heap_size` do. Zero when jemalloc is not the allocator.
fn heap_metrics() {
    use tikv_jemalloc_ctl::{epoch, stats};
    if epoch::advance().is_err() {
        return;
    }
    if let Ok(n) = stats::allocated::read() {
        metrics::gauge!("nrdot_heap_allocated_bytes").set(n as f64);
    }
    if let Ok(n) = stats::resident::read() {
        metrics::gauge!("nrdot_heap_resident_bytes").set(n as f64);
    }
}

fn admin_error(e: &AdminError) -> Response<Full<Bytes>> {
    match e {
        AdminError::Invalid(problems) => answer(
            StatusCode::UNPROCESSABLE_ENTITY,
            &api::Invalid {
                error: "invalid configuration; nothing changed".into(),
                problems: problems
                    .iter()
                    .map(|p| api::Problem {
                        path: p.path.clone(),
                        line: p.line,
                        column: p.column,
                        message: p.message.clone(),
                        text: p.render("config"),
                    })
                    .collect(),
            },
        ),
        AdminError::Conflict { current } => json_response(
            StatusCode::CONFLICT,
            json!({ "error": e.to_string(), "current_version": current }),
        ),
        AdminError::NoBackend(_) => error(StatusCode::NOT_FOUND, e.to_string()),
        AdminError::BadRequest(_) => error(StatusCode::BAD_REQUEST, e.to_string()),
        AdminError::Tls(_) => error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("{e}; nothing changed"),
        ),
        AdminError::Store(crate::store::StoreError::NotFound(_)) => {
            error(StatusCode::NOT_FOUND, e.to_string())
        }
        AdminError::Store(crate::store::StoreError::Conflict { current }) => json_response(
            StatusCode::CONFLICT,
            json!({ "error": e.to_string(), "current_version": current }),
        ),
        AdminError::Store(crate::store::StoreError::Unavailable(_)) => {
            error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
        _ => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Routes one admin request.
pub async fn handle(admin: &Admin, peer: IpAddr, req: Request<AdminBody>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/health") => {
            return match query(&req, "server") {
                Some(server) => probe(admin, &server).await,
                None => health(admin),
            }
        }
        (&Method::GET, "/metrics") => {
            return match &admin.prometheus {
                Some(p) => {
                    process_metrics().collect();
                    heap_metrics();
                    // The memory trigger's own number, for the alert that mirrors it.
                    metrics::gauge!("nrdot_memory_usage_ratio")
                        .set(crate::rollout::memory_fraction());
                    let mut text = p.render();
                    crate::scrape::render_atomics(&admin.control.current(), &mut text);
                    let mut r = Response::new(Full::new(Bytes::from(text)));
                    r.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("text/plain; version=0.0.4"),
                    );
                    r
                }
                None => error(StatusCode::SERVICE_UNAVAILABLE, "metrics disabled"),
            };
        }
        (_, "/health" | "/metrics") => {
            return error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => {}
    }
    if let Some(r) = crate::dashboard::page(req.method(), &path) {
        return r;
    }
    let Some(rest) = path.strip_prefix("/api/v2/") else {
        return error(StatusCode::NOT_FOUND, "not found");
    };
    if rest == "session" && req.method() == Method::POST {
        return session::login(admin, peer, req).await;
    }
    let mutating = req.method() != Method::GET && req.method() != Method::HEAD;
    let caller = session::caller(admin, &req);
    let anonymous = caller.is_none() && !req.headers().contains_key(header::AUTHORIZATION);
    if rest == "session" && req.method() == Method::GET && anonymous {
        return session::anonymous();
    }
    let caller = match checked(admin, peer, &req, rest, caller).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let actor = caller.actor().clone();
    let segments: Vec<&str> = rest.split('/').collect();
    let op = match Op::route(req.method(), &path) {
        Ok(op) => op,
        Err(true) => return error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
        Err(false) => return error(StatusCode::NOT_FOUND, "not found"),
    };
    let needed = op.spec().role.unwrap_or(Role::Viewer);
    if actor.role < needed {
        if mutating {
            let _ = admin.control.audit().record(Event {
                actor: actor.name.clone(),
                action: format!("{} /api/v2/{rest}", req.method()),
                target: rest.to_string(),
                outcome: "forbidden".into(),
                detail: format!("role {:?} needs {:?}", actor.role, needed),
                ..Event::default()
            });
        }
        return error(
            StatusCode::FORBIDDEN,
            format!("this call needs the {needed:?} role").to_lowercase(),
        );
    }
    match op {
        Op::Session | Op::Logout => return session::current(admin, &caller, req.method()),
        Op::Password => return session::change_password(admin, &caller, req).await,
        Op::Upgrade => return upgrade(admin, &actor, req).await,
        Op::Restore if !admin.upgrader.busy() => return restore(admin, &actor, req).await,
        Op::Binaries => {
            let history = crate::binaries::history(&admin.control.current().config.state_dir);
            return json_response(StatusCode::OK, json!({ "binaries": history }));
        }
        _ if mutating && admin.upgrader.busy() => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "a binary upgrade is in progress; retry in a few seconds (the new process answers then)",
            )
        }
        _ => {}
    }
    api(admin, &actor, op, req, &segments).await
}

/// The caller of an `/api/v2` request once it proved who it is: 401 (after the failure delay)
/// without valid credentials, 403 for a session's change without its CSRF token. Refused
/// changes are audited.
async fn checked(
    admin: &Admin,
    peer: IpAddr,
    req: &Request<AdminBody>,
    rest: &str,
    caller: Option<session::Caller>,
) -> Result<session::Caller, Response<Full<Bytes>>> {
    let mutating = req.method() != Method::GET && req.method() != Method::HEAD;
    let Some(caller) = caller else {
        let delay = admin.auth.failure_delay(peer);
        if mutating {
            let _ = admin.control.audit().record(Event {
                actor: "anonymous".into(),
                action: format!("{} /api/v2/{rest}", req.method()),
                target: rest.to_string(),
                outcome: "unauthorized".into(),
                detail: format!("from {peer}"),
                ..Event::default()
            });
        }
        tokio::time::sleep(delay).await;
        let mut r = error(StatusCode::UNAUTHORIZED, "unauthorized");
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return Err(r);
    };
    let actor = caller.actor().clone();
    if mutating && !session::csrf_ok(&caller, req) {
        let _ = admin.control.audit().record(Event {
            actor: actor.name.clone(),
            action: format!("{} /api/v2/{rest}", req.method()),
            target: rest.to_string(),
            outcome: "forbidden".into(),
            detail: format!("session call without its CSRF token, from {peer}"),
            ..Event::default()
        });
        return Err(error(
            StatusCode::FORBIDDEN,
            "missing or wrong CSRF token (X-CSRF-Token)",
        ));
    }
    Ok(caller)
}

/// `POST /api/v2/restore` (admin): makes a backup's configuration the current one, as a new
/// version, and its drained backends drained again. The CLI opens and verifies the archive
/// (the key never leaves the operator's host) and sends what it holds.
async fn restore(admin: &Admin, actor: &Actor, req: Request<AdminBody>) -> Response<Full<Bytes>> {
    let body = match read_body(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let r: crate::backup::LiveRestore = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad restore request: {e}")),
    };
    if crate::durable::sha256_hex(r.content.as_bytes()) != r.checksum {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "the configuration does not match its checksum",
        );
    }
    let control = &admin.control;
    let message = format!(
        "restore of {} (version {}, {})",
        r.archive,
        r.version,
        r.checksum.get(..12).unwrap_or("")
    );
    let meta = match control.apply(&r.content, &actor.name, &message, None) {
        Ok(m) => m,
        Err(e) => return admin_error(&e),
    };
    let mut changed = Vec::new();
    for b in control.backends() {
        let want_enabled = !r.disabled.contains(&b.id);
        if want_enabled != (b.admin_state == "enabled") {
            if let Ok(ids) = control.set_enabled(&b.id, want_enabled, &actor.name) {
                changed.extend(ids);
            }
        }
    }
    let _ = control.audit().record(Event {
        actor: actor.name.clone(),
        action: "backup.restore".into(),
        target: r.archive.clone(),
        version_after: Some(meta.id),
        outcome: "ok".into(),
        detail: format!("{message}; backends changed: {changed:?}"),
        ..Event::default()
    });
    json_response(
        StatusCode::OK,
        json!({ "version": meta, "backends_changed": changed }),
    )
}

/// Starts the guard of a change that went live (from `before`, version `before_id`, to
/// version `after`), when one was asked for and the change touched a pool.
fn start_guard(
    admin: &Admin,
    actor: &Actor,
    before: &nrdot_config::RouteTable,
    before_id: u64,
    after: u64,
    guard: Option<(Duration, nrdot_config::Guard)>,
) -> Option<api::GuardStarted> {
    let (window, settings) = guard?;
    let now = admin.control.current();
    let pools = crate::rollout::guard::touched(&before.config, &now.config);
    if pools.is_empty() {
        return None;
    }
    let g = admin
        .rollouts
        .guard(before_id, after, pools, window, &settings, &actor.name)
        .ok()?;
    Some(api::GuardStarted {
        rollout: g.id,
        plan: g.plan,
    })
}

/// `POST /api/v2/config/rollback` `{"version": N, "message"?, "guard"?: "5m"}` (or the
/// `X-Nrdot-Guard` header): version N's content, live again as a new version.
async fn rollback_config(
    admin: &Admin,
    actor: &Actor,
    req: Request<AdminBody>,
) -> Response<Full<Bytes>> {
    let header = req
        .headers()
        .get("x-nrdot-guard")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = match read_body(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Ok(v) = serde_json::from_slice::<api::RollbackRequest>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "body must be JSON: {\"version\": N}",
        );
    };
    let id = v.version;
    let control = &admin.control;
    let spec = v.guard.clone().or(header);
    let text = match control.store().get(id) {
        Ok(version) => version.content,
        Err(e) => return admin_error(&AdminError::from(e)),
    };
    let guard = match guard_request(spec.as_deref(), &text, control) {
        Ok(g) => g,
        Err(e) => return rollout_error(&e),
    };
    let (before, before_id) = (control.current(), control.version().id);
    match control.rollback(id, &actor.name, v.message.as_deref()) {
        Ok(meta) => {
            let guard = start_guard(admin, actor, &before, before_id, meta.id, guard);
            answer(
                StatusCode::OK,
                &api::Changed {
                    version: meta,
                    guard,
                },
            )
        }
        Err(e) => admin_error(&e),
    }
}

/// The guard a change asks for (`X-Nrdot-Guard: 5m`) or its configuration's `[guard] window`
/// gives it, with the thresholds of that configuration; checked before the change applies.
fn guard_request(
    header: Option<&str>,
    text: &str,
    control: &Control,
) -> Result<Option<(Duration, nrdot_config::Guard)>, crate::rollout::RolloutError> {
    use crate::rollout::RolloutError;
    let settings = control.parse(text).map(|c| c.guard).unwrap_or_default();
    let window = match header {
        Some(h) => Some(
            nrdot_config::units::parse_duration(h.trim())
                .map_err(|e| RolloutError::Invalid(format!("X-Nrdot-Guard: {e}")))?,
        ),
        None => settings.window,
    };
    match window {
        Some(w) if !w.is_zero() => {
            crate::rollout::guard::check_window(w, &settings)?;
            Ok(Some((w, settings)))
        }
        _ => Ok(None),
    }
}

/// `POST /api/v2/upgrade`: replaces this process's binary; answers once the new process
/// serves (200) or with why this one keeps serving.
async fn upgrade(admin: &Admin, actor: &Actor, req: Request<AdminBody>) -> Response<Full<Bytes>> {
    use crate::upgrade::UpgradeError;
    let body = match read_body(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let request: crate::upgrade::UpgradeRequest = if body.is_empty() {
        Default::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad upgrade request: {e}")),
        }
    };
    match admin
        .upgrader
        .run(&admin.control, &admin.rollouts, request, &actor.name)
        .await
    {
        Ok(outcome) => json_response(StatusCode::OK, json!(outcome)),
        Err(e) => {
            let status = match e {
                UpgradeError::Busy => StatusCode::CONFLICT,
                UpgradeError::Binary(_) | UpgradeError::NoPrevious => {
                    StatusCode::UNPROCESSABLE_ENTITY
                }
                UpgradeError::Failed(_) => StatusCode::BAD_GATEWAY,
                UpgradeError::Local(_) => StatusCode::INTERNAL_SERVER_ERROR,
            };
            error(status, e.to_string())
        }
    }
}

async fn api(
    admin: &Admin,
    actor: &Actor,
    op: Op,
    req: Request<AdminBody>,
    segments: &[&str],
) -> Response<Full<Bytes>> {
    use Op::*;
    match op {
        OpenApi | Version | Config | PutConfig | Versions | VersionById | Diff | Rollback => {
            config_api(admin, actor, op, req, segments).await
        }
        Backends | Enable | Disable | Stats => traffic_api(admin, actor, op, req, segments).await,
        Rollouts | RolloutById | StartRollout | RolloutCommand => {
            rollout_api(admin, actor, op, req, segments).await
        }
        Cluster => cluster_api(admin),
        Tokens | CreateToken | RotateToken => token_api(admin, actor, op, req).await,
        _ => admin_api(admin, actor, op, req, segments).await,
    }
}

/// Versions, diffs, changes and rollbacks of the configuration.
async fn config_api(
    admin: &Admin,
    actor: &Actor,
    op: Op,
    req: Request<AdminBody>,
    segments: &[&str],
) -> Response<Full<Bytes>> {
    let control = &admin.control;
    match (op, segments) {
        (Op::OpenApi, _) => json_response(
            StatusCode::OK,
            serde_json::to_value(crate::openapi::document()).unwrap_or_default(),
        ),
        (Op::Version, _) => {
            let v = control.version();
            answer(
                StatusCode::OK,
                &api::VersionInfo {
                    binary: env!("CARGO_PKG_VERSION").into(),
                    config_version: v.id,
                    config_checksum: v.checksum,
                    generation: control.current().generation,
                    environment: control.environment().map(str::to_string),
                },
            )
        }
        (Op::Config, _) => {
            let v = control.version();
            match control.store().get(v.id) {
                Ok(full) => answer(
                    StatusCode::OK,
                    &api::ConfigView {
                        version: v,
                        environment: control.environment().map(str::to_string),
                        json: nrdot_config::document::to_json(&full.content),
                        toml: full.content,
                    },
                ),
                Err(e) => admin_error(&e.into()),
            }
        }
        (Op::PutConfig, _) => put_config(admin, actor, req).await,
        (Op::Versions, _) => match control.store().list() {
            Ok(list) => {
                let current = control.version().id;
                answer(
                    StatusCode::OK,
                    &api::VersionList {
                        current,
                        versions: list,
                    },
                )
            }
            Err(e) => admin_error(&e.into()),
        },
        (Op::VersionById, [_, _, id]) => match id.parse::<u64>() {
            Ok(id) => match control.store().get(id) {
                Ok(v) => answer(StatusCode::OK, &v),
                Err(e) => admin_error(&e.into()),
            },
            Err(_) => error(StatusCode::BAD_REQUEST, "version ids are numbers"),
        },
        (Op::Diff, _) => {
            let current = control.version().id;
            let parse = |k: &str, default: u64| -> Result<u64, String> {
                match query(&req, k) {
                    None => Ok(default),
                    Some(v) => v.parse().map_err(|_| format!("{k} must be a version id")),
                }
            };
            let (from, to) = match (
                parse("from", current.saturating_sub(1).max(1)),
                parse("to", current),
            ) {
                (Ok(f), Ok(t)) => (f, t),
                (Err(e), _) | (_, Err(e)) => return error(StatusCode::BAD_REQUEST, e),
            };
            match (control.store().get(from), control.store().get(to)) {
                (Ok(a), Ok(b)) => {
                    let diff = similar::TextDiff::from_lines(&a.content, &b.content)
                        .unified_diff()
                        .header(&format!("version {from}"), &format!("version {to}"))
                        .to_string();
                    answer(StatusCode::OK, &api::Diff { from, to, diff })
                }
                (Err(e), _) | (_, Err(e)) => admin_error(&e.into()),
            }
        }
        (Op::Rollback, _) => rollback_config(admin, actor, req).await,
        _ => error(StatusCode::NOT_FOUND, "not found"),
    }
}

/// Backends, live pool figures and the cluster's nodes.
async fn traffic_api(
    admin: &Admin,
    actor: &Actor,
    op: Op,
    req: Request<AdminBody>,
    segments: &[&str],
) -> Response<Full<Bytes>> {
    let control = &admin.control;
    match (op, segments) {
        (Op::Backends, _) => answer(
            StatusCode::OK,
            &api::BackendList {
                backends: control.backends(),
            },
        ),
        (Op::Enable | Op::Disable, [_, selector, action]) => {
            let selector = percent_decode(selector);
            let enable = *action == "enable";
            let wait = match query(&req, "wait").map(|w| nrdot_config::units::parse_duration(&w)) {
                None => None,
                Some(Ok(d)) => Some(d.min(Duration::from_secs(3600))),
                Some(Err(e)) => return error(StatusCode::BAD_REQUEST, e),
            };
            let ids = match control.set_enabled(&selector, enable, &actor.name) {
                Ok(ids) => ids,
                Err(e) => return admin_error(&e),
            };
            let mut drained = enable || in_flight(control, &ids) == 0;
            if let (false, Some(wait)) = (drained, wait) {
                let deadline = Instant::now() + wait;
                while Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    if in_flight(control, &ids) == 0 {
                        drained = true;
                        break;
                    }
                }
            }
            let backends: Vec<_> = control
                .backends()
                .into_iter()
                .filter(|b| ids.contains(&b.id))
                .collect();
            let status = if drained {
                StatusCode::OK
            } else {
                StatusCode::ACCEPTED
            };
            answer(status, &api::BackendChange { backends, drained })
        }
        (Op::Stats, _) => {
            let minutes = query(&req, "minutes")
                .and_then(|m| m.parse::<u64>().ok())
                .unwrap_or(15)
                .clamp(1, 60);
            let span = Duration::from_secs(minutes * 60);
            let step = Duration::from_secs((minutes * 60 / 90).max(2));
            answer(
                StatusCode::OK,
                &api::Stats {
                    step_s: step.as_secs(),
                    pools: admin.rollouts.stats(span, step),
                },
            )
        }
        _ => error(StatusCode::NOT_FOUND, "not found"),
    }
}

/// Rollouts: list, start, one, commands.
async fn rollout_api(
    admin: &Admin,
    actor: &Actor,
    op: Op,
    req: Request<AdminBody>,
    segments: &[&str],
) -> Response<Full<Bytes>> {
    if matches!(op, Op::Rollouts | Op::RolloutById) {
        admin.rollouts.catch_up().await;
    }
    match (op, segments) {
        (Op::Rollouts, _) => answer(
            StatusCode::OK,
            &api::RolloutList {
                rollouts: admin.rollouts.list(),
            },
        ),
        (Op::RolloutById, [_, id]) => {
            match id.parse::<u64>().ok().and_then(|id| admin.rollouts.get(id)) {
                Some(r) => answer(StatusCode::OK, &r),
                None => error(StatusCode::NOT_FOUND, format!("no rollout {id}")),
            }
        }
        (Op::StartRollout, _) => {
            let body = match read_body(req).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            let start = match serde_json::from_slice::<crate::api::StartRollout>(&body) {
                Ok(s) => s,
                Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad rollout: {e}")),
            };
            match admin.rollouts.create(&start, &actor.name) {
                Ok(r) => answer(StatusCode::CREATED, &r),
                Err(e) => rollout_error(&e),
            }
        }
        (Op::RolloutCommand, [_, id, verb]) => match (id.parse::<u64>(), verb.parse()) {
            (Err(_), _) => error(StatusCode::BAD_REQUEST, "rollout ids are numbers"),
            (_, Err(e)) => error(StatusCode::BAD_REQUEST, e),
            (Ok(id), Ok(command)) => match admin.rollouts.command(id, command, &actor.name) {
                Ok(r) => answer(StatusCode::OK, &r),
                Err(e) => rollout_error(&e),
            },
        },
        _ => error(StatusCode::NOT_FOUND, "not found"),
    }
}

/// `GET /api/v2/cluster`: this node, and every live node with the version it serves.
fn cluster_api(admin: &Admin) -> Response<Full<Bytes>> {
    let control = &admin.control;
    let current = control.version().id;
    match control.cluster() {
        None => answer(
            StatusCode::OK,
            &api::ClusterView {
                clustered: false,
                node: None,
                region: None,
                current,
                nodes: Vec::new(),
                leader: None,
            },
        ),
        Some((etcd, c)) => {
            let current = control.store().current().ok().flatten().unwrap_or(current);
            match crate::cluster::nodes(etcd, current) {
                Ok(nodes) => answer(
                    StatusCode::OK,
                    &api::ClusterView {
                        clustered: true,
                        node: Some(c.node.clone()),
                        region: Some(c.region.clone()),
                        current,
                        nodes,
                        leader: crate::cluster::leader(etcd).ok().flatten(),
                    },
                ),
                Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
            }
        }
    }
}

/// Tokens: list, create, rotate.
async fn token_api(
    admin: &Admin,
    actor: &Actor,
    op: Op,
    req: Request<AdminBody>,
) -> Response<Full<Bytes>> {
    match op {
        Op::Tokens => answer(
            StatusCode::OK,
            &api::TokenList {
                tokens: admin
                    .auth
                    .tokens()
                    .into_iter()
                    .map(|(name, role, created)| api::TokenInfo {
                        name,
                        role,
                        created,
                    })
                    .collect(),
            },
        ),
        Op::CreateToken => {
            let body = match read_body(req).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            let Ok(t) = serde_json::from_slice::<api::TokenRequest>(&body) else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "body must be JSON: {\"name\": …, \"role\": viewer|operator|admin}",
                );
            };
            let result = admin.auth.create(&t.name, t.role);
            audit_token(admin, actor, "token.create", &t.name, &result);
            match result {
                Ok(token) => answer(
                    StatusCode::OK,
                    &api::TokenSecret {
                        name: t.name,
                        role: Some(t.role),
                        token,
                    },
                ),
                Err(e) => crate::respond::auth_error(&e),
            }
        }
        Op::RotateToken => {
            let body = match read_body(req).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            let rotate: api::RotateRequest = if body.is_empty() {
                api::RotateRequest::default()
            } else {
                match serde_json::from_slice(&body) {
                    Ok(r) => r,
                    Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad request: {e}")),
                }
            };
            let name = rotate.name.unwrap_or_else(|| "admin".into());
            let result = admin.auth.rotate(&name, &admin.url);
            audit_token(admin, actor, "token.rotate", &name, &result);
            match result {
                Ok(token) => answer(
                    StatusCode::OK,
                    &api::TokenSecret {
                        name,
                        role: None,
                        token,
                    },
                ),
                Err(e) => crate::respond::auth_error(&e),
            }
        }
        _ => error(StatusCode::NOT_FOUND, "not found"),
    }
}

/// Certificates, events and the audit log.
async fn admin_api(
    admin: &Admin,
    actor: &Actor,
    op: Op,
    req: Request<AdminBody>,
    segments: &[&str],
) -> Response<Full<Bytes>> {
    let control = &admin.control;
    match (op, segments) {
        (Op::Tls, _) => json_response(StatusCode::OK, tls_info(admin)),
        (Op::TlsReload, _) => {
            let result = control.reload_certs();
            let v = control.version().id;
            let _ = control.audit().record(Event {
                actor: actor.name.clone(),
                action: "tls.reload".into(),
                target: "certificates".into(),
                version_before: Some(v),
                version_after: Some(v),
                outcome: if result.is_ok() { "ok" } else { "invalid" }.into(),
                detail: result.as_ref().err().cloned().unwrap_or_default(),
            });
            match result {
                Ok(()) => json_response(StatusCode::OK, tls_info(admin)),
                Err(e) => error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("{e}; the old certificates keep serving"),
                ),
            }
        }
        (Op::Events, _) => {
            let limit = query(&req, "limit")
                .and_then(|l| l.parse().ok())
                .unwrap_or(100usize);
            answer(
                StatusCode::OK,
                &api::EventList {
                    events: control.events(limit),
                },
            )
        }
        (Op::Audit, _) => {
            let limit = query(&req, "limit")
                .and_then(|l| l.parse().ok())
                .unwrap_or(100usize);
            match control.audit().tail(limit) {
                Ok(entries) => answer(StatusCode::OK, &api::AuditList { entries }),
                Err(e @ crate::audit::AuditError::Unavailable(_)) => {
                    error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
                }
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            }
        }
        (Op::AuditVerify, _) => match control.audit().verify() {
            Ok(n) => answer(
                StatusCode::OK,
                &api::AuditVerified {
                    ok: true,
                    entries: n,
                },
            ),
            Err(e @ crate::audit::AuditError::Unavailable(_)) => {
                error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }
            Err(e) => json_response(
                StatusCode::CONFLICT,
                json!({ "ok": false, "error": e.to_string() }),
            ),
        },
        _ => error(StatusCode::NOT_FOUND, "not found"),
    }
}

fn tls_info(admin: &Admin) -> Value {
    let certs: Vec<Value> = admin
        .control
        .certs()
        .map(|c| c.info())
        .unwrap_or_default()
        .into_iter()
        .map(|(listener, i)| json!({ "listener": listener, "names": i.names, "file": i.file, "expires_in_days": i.expires_in_days, "default": i.default }))
        .collect();
    json!({ "certificates": certs })
}

fn rollout_error(e: &crate::rollout::RolloutError) -> Response<Full<Bytes>> {
    use crate::rollout::RolloutError;
    match e {
        RolloutError::Invalid(_) => error(StatusCode::BAD_REQUEST, e.to_string()),
        RolloutError::NotFound(_) => error(StatusCode::NOT_FOUND, e.to_string()),
        RolloutError::Conflict(_) => error(StatusCode::CONFLICT, e.to_string()),
        RolloutError::Admin(a) => admin_error(a),
    }
}

fn audit_token<T>(
    admin: &Admin,
    actor: &Actor,
    action: &str,
    name: &str,
    result: &Result<T, crate::auth::AuthError>,
) {
    let v = admin.control.version().id;
    let _ = admin.control.audit().record(Event {
        actor: actor.name.clone(),
        action: action.into(),
        target: name.into(),
        version_before: Some(v),
        version_after: Some(v),
        outcome: if result.is_ok() { "ok" } else { "error" }.into(),
        detail: result
            .as_ref()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default(),
    });
}

fn in_flight(control: &Control, ids: &[String]) -> u64 {
    let table = control.current();
    table
        .pools
        .iter()
        .flat_map(|p| p.backends.iter().map(move |b| (p, b)))
        .filter(|(p, b)| ids.contains(&format!("{}/{}", p.config.name, b.state.address)))
        .map(|(_, b)| b.state.in_flight.load(Ordering::Relaxed))
        .sum()
}

async fn put_config(
    admin: &Admin,
    actor: &Actor,
    req: Request<AdminBody>,
) -> Response<Full<Bytes>> {
    let if_match = match req
        .headers()
        .get(header::IF_MATCH)
        .map(|v| v.to_str().unwrap_or(""))
    {
        None => None,
        Some(v) => match v
            .trim()
            .trim_start_matches("W/")
            .trim_matches('"')
            .parse::<u64>()
        {
            Ok(id) => Some(id),
            Err(_) => return error(StatusCode::BAD_REQUEST, "If-Match must carry a version id"),
        },
    };
    let guard_header = req
        .headers()
        .get("x-nrdot-guard")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let header_message = req
        .headers()
        .get("x-nrdot-message")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| query(&req, "message"));
    let is_json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/json"));
    let body = match read_body(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let (text, message) = if is_json {
        let v = match serde_json::from_slice::<api::ConfigChange>(&body) {
            Ok(v) => v,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("JSON body needs a \"toml\" string: {e}"),
                )
            }
        };
        (v.toml, v.message.or(header_message))
    } else {
        match String::from_utf8(body.to_vec()) {
            Ok(t) => (t, header_message),
            Err(_) => return error(StatusCode::BAD_REQUEST, "configuration must be UTF-8"),
        }
    };
    let message = message.unwrap_or_else(|| "configuration change through the admin API".into());
    let before = admin.control.current();
    let before_id = admin.control.version().id;
    // The guard is settled before anything changes: a bad window refuses the change.
    let guard = match guard_request(guard_header.as_deref(), &text, &admin.control) {
        Ok(g) => g,
        Err(e) => return rollout_error(&e),
    };
    match admin.control.apply(&text, &actor.name, &message, if_match) {
        Ok(meta) => {
            let guard = start_guard(admin, actor, &before, before_id, meta.id, guard);
            let mut r = answer(
                StatusCode::OK,
                &api::Changed {
                    version: meta.clone(),
                    guard,
                },
            );
            if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", meta.id)) {
                r.headers_mut().insert(header::ETAG, v);
            }
            r
        }
        Err(e) => admin_error(&e),
    }
}

/// `/health?server=S`: checks every backend matching S now — with its pool's health check when
/// it has one, else a TCP connect (1 s). 200 when all pass, 503 when one fails, 404 when none
/// matches. A drained server is checked too: this is how a rolling upgrade asks whether an
/// upgraded server may go back into rotation.
async fn probe(admin: &Admin, server: &str) -> Response<Full<Bytes>> {
    let matching: Vec<_> = admin
        .control
        .backends()
        .into_iter()
        .filter(|b| crate::control::matches_selector(b, server))
        .collect();
    if matching.is_empty() {
        return error(
            StatusCode::NOT_FOUND,
            format!("no backend matches {server:?}"),
        );
    }
    let mut checks = Vec::new();
    let mut all = true;
    let table = admin.control.current();
    for b in matching {
        let check = table
            .pools
            .iter()
            .find(|p| p.config.name == b.pool)
            .and_then(|p| p.config.health_check.clone());
        let reachable = crate::health::ready(check.as_ref(), &b.address).await;
        all &= reachable;
        checks.push(json!({ "id": b.id, "address": b.address, "admin_state": b.admin_state, "reachable": reachable }));
    }
    json_response(
        if all {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        json!({ "status": if all { "ok" } else { "unhealthy" }, "checks": checks }),
    )
}

fn health(admin: &Admin) -> Response<Full<Bytes>> {
    let table = admin.control.current();
    let mut healthy = true;
    let pools: Vec<_> = table
        .pools
        .iter()
        .map(|p| {
            let available = p
                .backends
                .iter()
                .filter(|b| b.weight > 0 && b.state.available())
                .count();
            healthy &= available > 0;
            json!({ "name": p.config.name, "available": available, "total": p.backends.len() })
        })
        .collect();
    let backends: Vec<_> = admin
        .control
        .backends()
        .into_iter()
        .map(|b| json!({ "id": b.id, "address": b.address, "admin_state": b.admin_state, "health": b.health, "ejected": b.ejected }))
        .collect();
    let v = admin.control.version();
    // A node that cannot reach etcd still serves (its status stays ok) but says so.
    let (cluster, cluster_detail) = match admin.control.cluster() {
        None => (None, None),
        Some((etcd, _)) => match etcd.degraded() {
            None => (Some("ok"), None),
            Some(why) => (Some("degraded"), Some(format!("etcd unreachable: {why}"))),
        },
    };
    json_response(
        if healthy {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        json!({
            "status": if healthy { "ok" } else { "unavailable" },
            "version": env!("CARGO_PKG_VERSION"),
            "config_version": v.id,
            "config_checksum": v.checksum,
            "generation": table.generation,
            "pools": pools,
            "backends": backends,
            "cluster": cluster,
            "cluster_detail": cluster_detail,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::respond::admin_body;

    /// An `Admin` over a fresh state directory, as `serve` builds it, without any socket
    /// serving it: handlers are called directly.
    fn admin(dir: &std::path::Path) -> Admin {
        let text = format!(
            "state_dir = {:?}\n[[listener]]\nname = \"h\"\nbind = \"127.0.0.1:0\"\n[[pool]]\nname = \"p\"\n[[pool.server]]\naddress = \"127.0.0.1:9\"\n[[route]]\nname = \"r\"\npool = \"p\"\n",
            dir.display().to_string()
        );
        let config = nrdot_config::Config::from_toml(&text).expect("valid");
        let (control, _) = Control::start(dir, None, &text, config, None).expect("control");
        let control = Arc::new(control);
        let (auth, _) = crate::auth::Auth::open(dir, "http://127.0.0.1:8080").expect("auth");
        let socket = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = socket.local_addr().expect("addr");
        let lock = std::fs::File::create(dir.join("lock")).expect("lock");
        let handles = crate::upgrade::Handles {
            listeners: Vec::new(),
            admin: (addr, socket.into()),
            lock: lock.into(),
        };
        Admin {
            rollouts: Arc::new(
                crate::rollout::Rollouts::open(Arc::clone(&control), dir).expect("rollouts"),
            ),
            upgrader: Arc::new(crate::upgrade::Upgrader::new(dir, handles)),
            control,
            auth: Arc::new(auth),
            prometheus: None,
            url: "http://127.0.0.1:8080".into(),
        }
    }

    fn request(method: &str, path: &str, token: Option<&str>, body: &str) -> Request<AdminBody> {
        let mut b = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        b.body(admin_body(Full::new(Bytes::from(body.to_string()))))
            .expect("request")
    }

    async fn call(admin: &Admin, req: Request<AdminBody>) -> (StatusCode, Bytes) {
        let r = handle(admin, [127, 0, 0, 1].into(), req).await;
        let status = r.status();
        let body = http_body_util::BodyExt::collect(r.into_body())
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        (status, body)
    }

    #[tokio::test]
    async fn handlers_answer_typed_bodies_without_a_socket() {
        let dir = std::env::temp_dir().join(format!("nrdot-http-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let admin = admin(&dir);
        let token = crate::auth::read_credentials(&dir.join("admin-credentials"))
            .and_then(|c| c.get("NRDOT_TOKEN").cloned())
            .expect("token");
        let t = Some(token.as_str());

        let (status, body) = call(&admin, request("GET", "/api/v2/version", t, "")).await;
        assert_eq!(status, StatusCode::OK);
        let v: api::VersionInfo = serde_json::from_slice(&body).expect("VersionInfo");
        assert_eq!(v.config_version, 1);

        let (status, body) = call(&admin, request("GET", "/api/v2/backends", t, "")).await;
        assert_eq!(status, StatusCode::OK);
        let list: api::BackendList = serde_json::from_slice(&body).expect("BackendList");
        assert_eq!(list.backends.len(), 1);

        // A typed request: a canary needs a second pool; a bad kind never reaches the controller.
        let canary = r#"{"kind": "canary", "route": "r", "to": "p"}"#;
        let (status, body) = call(&admin, request("POST", "/api/v2/rollouts", t, canary)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let e: api::ErrorBody = serde_json::from_slice(&body).expect("ErrorBody");
        assert!(e.error.contains("no pool besides"), "{}", e.error);
        let bad = r#"{"kind": "sideways"}"#;
        let (status, _) = call(&admin, request("POST", "/api/v2/rollouts", t, bad)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, _) = call(&admin, request("POST", "/api/v2/rollouts/1/stop", t, "")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);

        assert_eq!(
            call(&admin, request("GET", "/api/v2/version", None, ""))
                .await
                .0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            call(&admin, request("GET", "/api/v2/nothing", t, ""))
                .await
                .0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            call(&admin, request("DELETE", "/api/v2/config", t, ""))
                .await
                .0,
            StatusCode::METHOD_NOT_ALLOWED
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(
            super::percent_decode("stable%2F127.0.0.1%3A80"),
            "stable/127.0.0.1:80"
        );
        assert_eq!(super::percent_decode("a+b%zz%4"), "a b%zz%4");
    }
}
