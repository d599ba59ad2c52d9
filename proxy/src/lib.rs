//! nrdot-proxy: the data plane. It owns the client-facing listeners, the worker threads (one
//! current-thread tokio runtime and one SO_REUSEPORT socket per listener each), the HTTP service
//! that routes and forwards requests, the per-worker upstream keep-alive pools, and the access log.
//!
//! It reads routing tables and never writes them: the control plane publishes tables through
//! [`nrdot_config::swap`], and this crate never names the control plane.
//!
//! `accept -> h1 (native HTTP/1.1: parse in place -> rules -> relay::send(Whole); a 101 ->
//! tunnel)`, handing unusual requests and HTTP/2 to `handover -> inspect -> hyper ->
//! service -> rules -> relay::send(Whole | Streamed)`. Modules import only downward; the
//! layers are drawn in `docs/architecture.md`.

pub mod accesslog;
mod buffers;
mod clock;
pub mod error;
mod h1;
mod handover;
mod http1;
mod inspect;
mod linger;
pub mod listener;
mod local;
pub mod metrics;
mod relay;
mod reqbody;
mod respbody;
mod rules;
mod service;
pub mod tls;
mod tunnel;
mod upstream;
pub mod worker;

pub use worker::{DataPlane, Exported, Inherited, Listeners};

#[doc(hidden)]
pub use h1::relay_parse;
#[doc(hidden)]
pub use http1::request_chunked_parse;
