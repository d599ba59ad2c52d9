//! The admin API's request and answer types: what each endpoint takes and gives back. The
//! server (`http`), the CLI (`client`) and the OpenAPI document (`openapi`, generated from these
//! by utoipa) all use them, so a field renamed here is renamed for every client at once.
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub use crate::rollout::request::{
    DurationArg, PercentArg, RolloutCommand, StartRollout, StepArg, StepsArg, Triggers,
};

/// `{"error": …}`: every refusal.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for a person.
    pub error: String,
}

/// `422` of a configuration change: every problem, nothing changed.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Invalid {
    /// `invalid configuration; nothing changed`.
    pub error: String,
    /// Each with its place in the file.
    pub problems: Vec<Problem>,
}

/// One problem of a configuration.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    /// Dotted path of the key (`route[2].split[0].pool`).
    pub path: String,
    /// 1-based.
    pub line: usize,
    /// 1-based, in characters.
    pub column: usize,
    /// What is wrong.
    pub message: String,
    /// The whole line as the CLI prints it (`config:3:7: route[0].path: …`).
    pub text: String,
}

/// `GET /api/v2/version`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VersionInfo {
    /// This binary's version.
    pub binary: String,
    /// The configuration version served.
    pub config_version: u64,
    /// Its SHA-256.
    pub config_checksum: String,
    /// Routing tables published since start.
    pub generation: u64,
    /// `[environment.*]` overlay in use.
    pub environment: Option<String>,
}

/// `GET /api/v2/config`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ConfigView {
    /// The version served.
    pub version: crate::store::VersionMeta,
    /// `[environment.*]` overlay in use.
    pub environment: Option<String>,
    /// The text, exactly as stored.
    pub toml: String,
    /// The same as JSON, as written (not defaulted).
    #[schema(value_type = Object)]
    pub json: Option<serde_json::Value>,
}

/// `GET /api/v2/config/versions`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VersionList {
    /// The current version's id.
    pub current: u64,
    /// Oldest first.
    pub versions: Vec<crate::store::VersionMeta>,
}

/// `GET /api/v2/config/diff`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Diff {
    /// Older version.
    pub from: u64,
    /// Newer version.
    pub to: u64,
    /// Unified diff of their texts.
    pub diff: String,
}

/// `POST /api/v2/config/rollback`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RollbackRequest {
    /// The version whose content becomes current again (as a new version).
    pub version: u64,
    /// Why, for the history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// With a guard window (e.g. `"5m"`): watched, and reverted on a breach.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<String>,
}

/// `PUT /api/v2/config` as JSON.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ConfigChange {
    /// The whole configuration.
    pub toml: String,
    /// Why, for the history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The answer to a configuration change (`PUT /api/v2/config`, rollback, live restore).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Changed {
    /// The new version.
    pub version: crate::store::VersionMeta,
    /// The guard watching it, when one was asked for and the change touched a pool.
    #[serde(default)]
    pub guard: Option<GuardStarted>,
}

/// A guard started on a change.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GuardStarted {
    /// Its rollout id.
    pub rollout: u64,
    /// What it watches.
    pub plan: crate::rollout::Plan,
}

/// `GET /api/v2/backends`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BackendList {
    /// Every backend of every pool.
    pub backends: Vec<crate::control::BackendInfo>,
}

/// `POST /api/v2/backends/{id}/{enable,disable}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BackendChange {
    /// The backends changed.
    pub backends: Vec<crate::control::BackendInfo>,
    /// No request in flight on them any more (always true for enable).
    pub drained: bool,
}

/// `GET /api/v2/rollouts`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RolloutList {
    /// Oldest first.
    pub rollouts: Vec<crate::rollout::Rollout>,
}

/// `GET /api/v2/stats`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Stats {
    /// Seconds between points.
    pub step_s: u64,
    /// Every pool.
    pub pools: Vec<crate::rollout::PoolStats>,
}

/// `GET /api/v2/audit`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditList {
    /// Oldest first.
    pub entries: Vec<crate::audit::Entry>,
}

/// `GET /api/v2/audit/verify`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditVerified {
    /// The chain is whole.
    pub ok: bool,
    /// Entries checked.
    pub entries: u64,
}

/// `GET /api/v2/events`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EventList {
    /// Oldest first: health transitions, ejections, agent reports, rollout steps.
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<serde_json::Value>,
}

/// `POST /api/v2/tokens`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenRequest {
    /// Token name (replaces a token of that name).
    pub name: String,
    /// What it may do.
    pub role: crate::auth::Role,
}

/// `POST /api/v2/admin/rotate-token`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct RotateRequest {
    /// Token name (default `admin`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A token's secret, shown once.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenSecret {
    /// Token name.
    pub name: String,
    /// Its role (absent for a rotation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<crate::auth::Role>,
    /// The secret; nrdot keeps only its hash.
    pub token: String,
}

/// `GET /api/v2/tokens`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenList {
    /// Names and roles, never secrets.
    pub tokens: Vec<TokenInfo>,
}

/// One token.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenInfo {
    /// Name.
    pub name: String,
    /// Role.
    pub role: crate::auth::Role,
    /// RFC 3339.
    pub created: String,
}

/// `POST /api/v2/session` body.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Login {
    /// The dashboard user, or a token's name.
    pub user: String,
    /// The dashboard password, or that token's secret.
    pub password: String,
}

/// `GET /api/v2/session`, and the answer to a login.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SessionInfo {
    /// False without a session (then nothing else is set, or only who a token is).
    pub logged_in: bool,
    /// Who is logged in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// With which role: the dashboard hides what the role may not do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<crate::auth::Role>,
    /// To send in `X-CSRF-Token` with every mutating call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csrf: Option<String>,
    /// Seconds of inactivity after which the session ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_s: Option<u64>,
}

/// `POST /api/v2/admin/password` body.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PasswordChange {
    /// The new password (12 characters or more).
    pub password: String,
    /// The current password: required from a dashboard session, so a session left open on
    /// someone's screen cannot lock its owner out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
}

/// `GET /api/v2/cluster`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ClusterView {
    /// Whether this node is in a cluster (`[cluster]`).
    pub clustered: bool,
    /// This node.
    pub node: Option<String>,
    /// Its region.
    pub region: Option<String>,
    /// The cluster's current version (this node's, alone).
    pub current: u64,
    /// Every live node, by name.
    pub nodes: Vec<crate::cluster::NodeStatus>,
    /// The node that runs rollouts (elected), if any.
    #[serde(default)]
    pub leader: Option<String>,
}

/// The answer to a password change.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PasswordChanged {
    /// Always true: a refusal is an error answer.
    pub changed: bool,
}
