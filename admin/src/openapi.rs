//! Every operation the admin listener serves, as one table: the router finds requests' operations
//! in it (so a path is served only if it is listed), and the OpenAPI 3.1 document at
//! `/api/v2/openapi.json` is generated from it and from the request and answer types in
//! [`crate::api`] (utoipa derives their schemas). Nothing here is kept in step by hand.
use http::Method;
use utoipa::openapi::path::{HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ComponentsBuilder, Content, InfoBuilder, OpenApi, OpenApiBuilder, PathItem, PathsBuilder, Ref,
    RefOr, ResponseBuilder, Schema,
};
use utoipa::ToSchema;

use crate::api;
use crate::auth::Role;

/// One operation of the admin listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `GET /health`.
    Health,
    /// `GET /metrics`.
    Metrics,
    /// `GET /dashboard`.
    Dashboard,
    /// `GET /api/v2/openapi.json`.
    OpenApi,
    /// `GET /api/v2/version`.
    Version,
    /// `GET /api/v2/config`.
    Config,
    /// `PUT /api/v2/config`.
    PutConfig,
    /// `GET /api/v2/config/versions`.
    Versions,
    /// `GET /api/v2/config/versions/{id}`.
    VersionById,
    /// `GET /api/v2/config/diff`.
    Diff,
    /// `POST /api/v2/config/rollback`.
    Rollback,
    /// `GET /api/v2/backends`.
    Backends,
    /// `POST /api/v2/backends/{id}/disable`.
    Disable,
    /// `POST /api/v2/backends/{id}/enable`.
    Enable,
    /// `GET /api/v2/stats`.
    Stats,
    /// `GET /api/v2/rollouts`.
    Rollouts,
    /// `POST /api/v2/rollouts`.
    StartRollout,
    /// `GET /api/v2/rollouts/{id}`.
    RolloutById,
    /// `POST /api/v2/rollouts/{id}/{command}`.
    RolloutCommand,
    /// `GET /api/v2/tls`.
    Tls,
    /// `POST /api/v2/tls/reload`.
    TlsReload,
    /// `GET /api/v2/events`.
    Events,
    /// `GET /api/v2/audit`.
    Audit,
    /// `GET /api/v2/audit/verify`.
    AuditVerify,
    /// `GET /api/v2/tokens`.
    Tokens,
    /// `POST /api/v2/tokens`.
    CreateToken,
    /// `POST /api/v2/admin/rotate-token`.
    RotateToken,
    /// `POST /api/v2/admin/password`.
    Password,
    /// `POST /api/v2/session`.
    Login,
    /// `GET /api/v2/session`.
    Session,
    /// `DELETE /api/v2/session`.
    Logout,
    /// `POST /api/v2/upgrade`.
    Upgrade,
    /// `POST /api/v2/restore`.
    Restore,
    /// `GET /api/v2/binaries`.
    Binaries,
    /// `GET /api/v2/cluster`.
    Cluster,
}

/// Named schemas collected while the document is built.
type Schemas = Vec<(String, RefOr<Schema>)>;

/// What goes in or comes out of an operation.
#[derive(Clone, Copy)]
pub enum Payload {
    /// Nothing.
    None,
    /// JSON of a type, by a function that adds its schema (and those it refers to).
    Json(fn(&mut Schemas) -> RefOr<Schema>),
    /// Text of a content type.
    Text(&'static str),
}

fn json<T: ToSchema>(schemas: &mut Schemas) -> RefOr<Schema> {
    T::schemas(schemas);
    schemas.push((T::name().into_owned(), T::schema()));
    RefOr::Ref(Ref::from_schema_name(T::name()))
}

/// One row of the table.
pub struct Spec {
    /// HTTP method.
    pub method: Method,
    /// Path, with `{param}` segments.
    pub path: &'static str,
    /// Role needed; `None` for calls without credentials.
    pub role: Option<Role>,
    /// What it does.
    pub summary: &'static str,
    /// Request body.
    pub request: Payload,
    /// Success answer.
    pub answer: Payload,
    /// Other answers: status and meaning.
    pub other: &'static [(u16, &'static str)],
    /// Query parameters: name and meaning.
    pub query: &'static [(&'static str, &'static str)],
}

const NOT_FOUND: &[(u16, &str)] = &[(404, "no such object")];

impl Op {
    /// Every operation.
    pub const ALL: [Op; 35] = [
        Op::Health,
        Op::Metrics,
        Op::Dashboard,
        Op::OpenApi,
        Op::Version,
        Op::Config,
        Op::PutConfig,
        Op::Versions,
        Op::VersionById,
        Op::Diff,
        Op::Rollback,
        Op::Backends,
        Op::Disable,
        Op::Enable,
        Op::Stats,
        Op::Rollouts,
        Op::StartRollout,
        Op::RolloutById,
        Op::RolloutCommand,
        Op::Tls,
        Op::TlsReload,
        Op::Events,
        Op::Audit,
        Op::AuditVerify,
        Op::Tokens,
        Op::CreateToken,
        Op::RotateToken,
        Op::Password,
        Op::Login,
        Op::Session,
        Op::Logout,
        Op::Upgrade,
        Op::Restore,
        Op::Binaries,
        Op::Cluster,
    ];

    /// The operation's row.
    pub fn spec(self) -> Spec {
        use Payload::{Json, Text};
        use Role::{Admin, Operator, Viewer};
        let s = |method: Method,
                 path: &'static str,
                 role: Option<Role>,
                 summary: &'static str,
                 request: Payload,
                 answer: Payload| Spec {
            method,
            path,
            role,
            summary,
            request,
            answer,
            other: &[],
            query: &[],
        };
        let none = Payload::None;
        match self {
            Op::Health => Spec {
                other: &[(503, "a pool has no available server")],
                query: &[("server", "probe this server now")],
                ..s(Method::GET, "/health", None, "Process health and pool availability", none, Text("application/json"))
            },
            Op::Metrics => s(Method::GET, "/metrics", None, "Prometheus metrics", none, Text("text/plain")),
            Op::Dashboard => s(Method::GET, "/dashboard", None, "The dashboard (`GET /` redirects here)", none, Text("text/html")),
            Op::OpenApi => s(Method::GET, "/api/v2/openapi.json", Some(Viewer), "This document", none, Text("application/json")),
            Op::Version => s(Method::GET, "/api/v2/version", Some(Viewer), "Binary and running configuration version", none, Json(json::<api::VersionInfo>)),
            Op::Config => s(Method::GET, "/api/v2/config", Some(Viewer), "The current configuration (TOML and JSON) with its version", none, Json(json::<api::ConfigView>)),
            Op::PutConfig => Spec {
                other: &[(409, "If-Match names another version than the current one"), (422, "invalid: every problem with line and column; nothing changed")],
                query: &[("message", "why (also X-Nrdot-Message)")],
                ..s(Method::PUT, "/api/v2/config", Some(Admin), "Validate, store as a new version and publish (TOML body, or JSON {toml, message}; If-Match: <version>)", Text("application/toml"), Json(json::<crate::store::VersionMeta>))
            },
            Op::Versions => s(Method::GET, "/api/v2/config/versions", Some(Viewer), "Every version, oldest first", none, Json(json::<api::VersionList>)),
            Op::VersionById => Spec { other: NOT_FOUND, ..s(Method::GET, "/api/v2/config/versions/{id}", Some(Viewer), "One version with its content", none, Json(json::<crate::store::Version>)) },
            Op::Diff => Spec {
                other: NOT_FOUND,
                query: &[("from", "older version"), ("to", "newer version (default: current)")],
                ..s(Method::GET, "/api/v2/config/diff", Some(Viewer), "Unified diff between two versions", none, Json(json::<api::Diff>))
            },
            Op::Rollback => Spec { other: &[(404, "no such version"), (422, "that version no longer validates")], ..s(Method::POST, "/api/v2/config/rollback", Some(Admin), "Make an old version current again, as a new version", Json(json::<api::RollbackRequest>), Json(json::<crate::store::VersionMeta>)) },
            Op::Backends => s(Method::GET, "/api/v2/backends", Some(Viewer), "Every backend: admin state, health, in flight, totals", none, Json(json::<api::BackendList>)),
            Op::Disable => Spec {
                other: &[(202, "disabled, still draining at the deadline"), (404, "no backend matches")],
                query: &[("wait", "answer when in-flight reaches 0, waiting up to this long (e.g. 30s)")],
                ..s(Method::POST, "/api/v2/backends/{id}/disable", Some(Operator), "Drain: no new requests; in-flight requests complete", none, Json(json::<api::BackendChange>))
            },
            Op::Enable => Spec { other: &[(404, "no backend matches")], ..s(Method::POST, "/api/v2/backends/{id}/enable", Some(Operator), "Back into rotation", none, Json(json::<api::BackendChange>)) },
            Op::Stats => Spec { query: &[("minutes", "how far back (1-60, default 15)")], ..s(Method::GET, "/api/v2/stats", Some(Viewer), "Per pool: requests/s, error rate and p99 over the last minutes", none, Json(json::<api::Stats>)) },
            Op::Rollouts => s(Method::GET, "/api/v2/rollouts", Some(Viewer), "Every rollout", none, Json(json::<api::RolloutList>)),
            Op::StartRollout => Spec { other: &[(400, "invalid"), (409, "another rollout holds the route or pool")], ..s(Method::POST, "/api/v2/rollouts", Some(Operator), "Start a canary, blue-green or rolling rollout (201)", Json(json::<api::StartRollout>), Json(json::<crate::rollout::Rollout>)) },
            Op::RolloutById => Spec { other: NOT_FOUND, ..s(Method::GET, "/api/v2/rollouts/{id}", Some(Viewer), "One rollout with its events and latest analysis", none, Json(json::<crate::rollout::Rollout>)) },
            Op::RolloutCommand => Spec { other: &[(404, "no such rollout"), (409, "not possible in its phase")], ..s(Method::POST, "/api/v2/rollouts/{id}/{command}", Some(Operator), "promote, pause, resume, approve, abort or rollback", none, Json(json::<crate::rollout::Rollout>)) },
            Op::Tls => s(Method::GET, "/api/v2/tls", Some(Viewer), "Certificates served per listener, with days to expiry", none, Text("application/json")),
            Op::TlsReload => Spec { other: &[(422, "a file is unusable; the old material keeps serving")], ..s(Method::POST, "/api/v2/tls/reload", Some(Admin), "Reload certificates, keys and CA files now", none, Text("application/json")) },
            Op::Events => Spec { query: &[("limit", "how many (default 100)")], ..s(Method::GET, "/api/v2/events", Some(Viewer), "Recent runtime events: health, ejections, agents, rollout steps", none, Json(json::<api::EventList>)) },
            Op::Audit => Spec { query: &[("limit", "how many (default 100)")], ..s(Method::GET, "/api/v2/audit", Some(Viewer), "Last entries of the audit log", none, Json(json::<api::AuditList>)) },
            Op::AuditVerify => Spec { other: &[(409, "broken: where and how")], ..s(Method::GET, "/api/v2/audit/verify", Some(Viewer), "Verify the audit log's hash chain", none, Json(json::<api::AuditVerified>)) },
            Op::Tokens => s(Method::GET, "/api/v2/tokens", Some(Admin), "Token names and roles", none, Json(json::<api::TokenList>)),
            Op::CreateToken => s(Method::POST, "/api/v2/tokens", Some(Admin), "Create a token (secret shown once)", Json(json::<api::TokenRequest>), Json(json::<api::TokenSecret>)),
            Op::RotateToken => Spec { other: NOT_FOUND, ..s(Method::POST, "/api/v2/admin/rotate-token", Some(Admin), "Replace a token's secret (shown once)", Json(json::<api::RotateRequest>), Json(json::<api::TokenSecret>)) },
            Op::Password => Spec { other: &[(422, "shorter than 12 characters")], ..s(Method::POST, "/api/v2/admin/password", Some(Admin), "Change the dashboard password (Argon2; audited; other sessions end)", Json(json::<api::PasswordChange>), Json(json::<api::PasswordChanged>)) },
            Op::Login => Spec { other: &[(401, "wrong user or password")], ..s(Method::POST, "/api/v2/session", None, "Log in: sets the HttpOnly, SameSite=Strict nrdot_session cookie (Secure over TLS)", Json(json::<api::Login>), Json(json::<api::SessionInfo>)) },
            Op::Session => s(Method::GET, "/api/v2/session", None, "The session: user, role and CSRF token; {logged_in: false} without one", none, Json(json::<api::SessionInfo>)),
            Op::Logout => s(Method::DELETE, "/api/v2/session", Some(Viewer), "Log out (a session call: needs X-CSRF-Token)", none, Json(json::<api::SessionInfo>)),
            Op::Upgrade => Spec { other: &[(409, "an upgrade is already running"), (422, "not an nrdot binary, or no earlier binary"), (502, "the new binary failed; the old process keeps serving")], ..s(Method::POST, "/api/v2/upgrade", Some(Admin), "Replace the binary without closing a port: {binary: PATH}, {rollback: true} or empty", Text("application/json"), Text("application/json")) },
            Op::Restore => Spec { other: &[(422, "content does not match its checksum, or invalid")], ..s(Method::POST, "/api/v2/restore", Some(Admin), "Live restore of a backup's configuration and drained backends", Text("application/json"), Text("application/json")) },
            Op::Cluster => Spec { other: &[(503, "etcd unreachable")], ..s(Method::GET, "/api/v2/cluster", Some(Viewer), "Every node of the cluster: region, version served, lagging", none, Json(json::<api::ClusterView>)) },
            Op::Binaries => s(Method::GET, "/api/v2/binaries", Some(Viewer), "Binary history: every upgrade with versions and checksums", none, Text("application/json")),
        }
    }

    /// The operation for `method` and `path` (without the query): `Err(true)` when the path
    /// exists with other methods (405), `Err(false)` when it does not (404).
    pub fn route(method: &Method, path: &str) -> Result<Op, bool> {
        let mut path_known = false;
        for op in Op::ALL {
            let spec = op.spec();
            if matches(spec.path, path) {
                if spec.method == method || (method == Method::HEAD && spec.method == Method::GET) {
                    return Ok(op);
                }
                path_known = true;
            }
        }
        Err(path_known)
    }
}

/// Whether `path` fits `template`, whose `{param}` segments match any one segment.
fn matches(template: &str, path: &str) -> bool {
    let (mut t, mut p) = (template.split('/'), path.split('/'));
    loop {
        match (t.next(), p.next()) {
            (None, None) => return true,
            (Some(a), Some(b)) if a.starts_with('{') && !b.is_empty() => {}
            (Some(a), Some(b)) if a == b => {}
            _ => return false,
        }
    }
}

fn method_of(m: &Method) -> HttpMethod {
    match *m {
        Method::PUT => HttpMethod::Put,
        Method::POST => HttpMethod::Post,
        Method::DELETE => HttpMethod::Delete,
        _ => HttpMethod::Get,
    }
}

fn content(
    p: Payload,
    schemas: &mut Vec<(String, RefOr<Schema>)>,
) -> Option<(&'static str, Content)> {
    match p {
        Payload::None => None,
        Payload::Json(f) => Some(("application/json", Content::new(Some(f(schemas))))),
        Payload::Text(t) => Some((t, Content::new(None::<RefOr<Schema>>))),
    }
}

/// The OpenAPI document, generated from [`Op::ALL`] and the types of [`crate::api`].
pub fn document() -> OpenApi {
    let mut schemas = Vec::new();
    let mut paths = PathsBuilder::new();
    for op in Op::ALL {
        let spec = op.spec();
        let mut b = OperationBuilder::new()
            .summary(Some(spec.summary))
            .operation_id(Some(format!("{op:?}")));
        for seg in spec.path.split('/').filter(|s| s.starts_with('{')) {
            let name = seg.trim_matches(|c| c == '{' || c == '}');
            b = b.parameter(
                ParameterBuilder::new()
                    .name(name)
                    .parameter_in(ParameterIn::Path)
                    .required(utoipa::openapi::Required::True),
            );
        }
        for (name, what) in spec.query {
            b = b.parameter(
                ParameterBuilder::new()
                    .name(*name)
                    .parameter_in(ParameterIn::Query)
                    .description(Some(*what)),
            );
        }
        if let Some((ct, c)) = content(spec.request, &mut schemas) {
            b = b.request_body(Some(RequestBodyBuilder::new().content(ct, c).build()));
        }
        let mut ok = ResponseBuilder::new().description("success");
        if let Some((ct, c)) = content(spec.answer, &mut schemas) {
            ok = ok.content(ct, c);
        }
        b = b.response("200", ok.build());
        let error = json::<api::ErrorBody>(&mut schemas);
        for (code, what) in spec.other {
            b = b.response(
                code.to_string(),
                ResponseBuilder::new()
                    .description(*what)
                    .content("application/json", Content::new(Some(error.clone())))
                    .build(),
            );
        }
        match spec.role {
            None => b = b.security(SecurityRequirement::default()),
            Some(role) => {
                b = b
                    .response("401", ResponseBuilder::new().description("no valid token or session").build())
                    .response("403", ResponseBuilder::new().description(format!("needs the {role:?} role; or a session call without its CSRF token").to_lowercase()).build());
            }
        }
        paths = paths.path(spec.path, PathItem::new(method_of(&spec.method), b.build()));
    }
    schemas.sort_by(|a, b| a.0.cmp(&b.0));
    schemas.dedup_by(|a, b| a.0 == b.0);
    let components = ComponentsBuilder::new()
        .schemas_from_iter(schemas)
        .security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        )
        .build();
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("nrdot admin API")
                .version(env!("CARGO_PKG_VERSION"))
                .build(),
        )
        .paths(paths.build())
        .components(Some(components))
        .security(Some(vec![SecurityRequirement::new(
            "bearer",
            Vec::<String>::new(),
        )]))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_is_routed_to_itself_and_documented() {
        let doc = serde_json::to_value(document()).expect("document");
        for op in Op::ALL {
            let spec = op.spec();
            let concrete = spec.path.replace("{id}", "7").replace("{command}", "pause");
            assert_eq!(Op::route(&spec.method, &concrete), Ok(op), "{}", spec.path);
            let method = spec.method.as_str().to_lowercase();
            assert!(
                doc["paths"][spec.path][&method].is_object(),
                "{} {} missing from the document",
                spec.method,
                spec.path
            );
        }
        assert_eq!(Op::route(&Method::DELETE, "/api/v2/config"), Err(true));
        assert_eq!(Op::route(&Method::GET, "/api/v2/nothing"), Err(false));
        assert_eq!(
            Op::route(&Method::GET, "/api/v2/rollouts//pause"),
            Err(false)
        );
        // The types' schemas are there, by reference.
        for name in [
            "StartRollout",
            "Rollout",
            "VersionMeta",
            "BackendInfo",
            "ErrorBody",
        ] {
            assert!(doc["components"]["schemas"][name].is_object(), "{name}");
        }
    }
}
