//! The admin HTTP server (default 127.0.0.1:8080). Endpoints:
//!
//! | method | path       | answer                                                                  |
//! |--------|------------|-------------------------------------------------------------------------|
//! | GET    | `/health`  | 200 JSON summary (config checksum, generation, pools with available/total servers); 503 when a pool has no available server |
//! | GET    | `/metrics` | 200 Prometheus text format                                              |
//! | other  | any        | 404 JSON error; wrong method 405                                        |
use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::control::Control;

/// What the handlers need.
pub struct Admin {
    /// The single writer.
    pub control: Arc<Control>,
    /// Renders `/metrics`.
    pub prometheus: Option<PrometheusHandle>,
}

/// Serves the admin API on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    admin: Arc<Admin>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => return,
        };
        let admin = Arc::clone(&admin);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let admin = Arc::clone(&admin);
                async move { Ok::<_, Infallible>(handle(&admin, req).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Routes one admin request. Plain function so it is testable without a socket.
pub async fn handle(admin: &Admin, req: Request<Incoming>) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/health") => health(admin),
        (&Method::GET, "/metrics") => match &admin.prometheus {
            Some(p) => {
                let mut r = Response::new(Full::new(Bytes::from(p.render())));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    http::HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                r
            }
            None => json(
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({"error": "metrics disabled"}),
            ),
        },
        (_, "/health" | "/metrics") => json(
            StatusCode::METHOD_NOT_ALLOWED,
            serde_json::json!({"error": "method not allowed"}),
        ),
        _ => json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "not found"}),
        ),
    }
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
            serde_json::json!({
                "name": p.config.name,
                "available": available,
                "total": p.backends.len(),
            })
        })
        .collect();
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(
        status,
        serde_json::json!({
            "status": if healthy { "ok" } else { "unavailable" },
            "version": env!("CARGO_PKG_VERSION"),
            "config_checksum": admin.control.checksum(),
            "generation": table.generation,
            "pools": pools,
        }),
    )
}

fn json(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}
