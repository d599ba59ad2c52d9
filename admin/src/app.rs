//! The state every admin request handler shares: the control plane, credentials and sessions,
//! the metrics renderer, the rollout controller and the upgrader. Its own module, below both
//! the API handlers (`http`) and the dashboard sessions (`session`), which both take it.
use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;

use crate::auth::Auth;
use crate::control::Control;

/// What the handlers need.
pub struct Admin {
    /// The single writer.
    pub control: Arc<Control>,
    /// Credentials and dashboard sessions.
    pub auth: Arc<Auth>,
    /// Renders `/metrics`.
    pub prometheus: Option<PrometheusHandle>,
    /// Base URL clients reach this API at (for the credentials file).
    pub url: String,
    /// The rollout controller.
    pub rollouts: Arc<crate::rollout::Rollouts>,
    /// Binary upgrades.
    pub upgrader: Arc<crate::upgrade::Upgrader>,
}
