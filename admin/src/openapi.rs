//! The OpenAPI 3.0 document of the admin API, served at `/api/v2/openapi.json`. Written by hand
//! next to the handlers it describes; the e2e suite checks that every path it lists answers.
use serde_json::{json, Value};

fn op(summary: &str, role: &str, responses: &[(&str, &str)]) -> Value {
    let mut r = serde_json::Map::new();
    for (code, desc) in responses {
        r.insert(code.to_string(), json!({ "description": desc }));
    }
    r.insert(
        "401".into(),
        json!({ "description": "missing or invalid token (no detail)" }),
    );
    r.insert(
        "403".into(),
        json!({ "description": "token lacks the role" }),
    );
    json!({ "summary": summary, "x-nrdot-role": role, "responses": r })
}

/// The document.
pub fn document() -> Value {
    let json_body = |schema: Value| json!({ "required": true, "content": { "application/json": { "schema": schema } } });
    let mut put = op(
        "Validate, store as a new version and publish",
        "admin",
        &[
            ("200", "the new version"),
            ("409", "If-Match names another version than the current one"),
            (
                "422",
                "invalid; every problem listed with line and column; nothing changed",
            ),
        ],
    );
    put["requestBody"] = json!({
        "required": true,
        "content": {
            "application/toml": { "schema": { "type": "string" } },
            "application/json": { "schema": { "type": "object", "required": ["toml"], "properties": { "toml": { "type": "string" }, "message": { "type": "string" } } } }
        }
    });
    put["parameters"] = json!([
        { "name": "If-Match", "in": "header", "schema": { "type": "string" }, "description": "version id the change is based on" },
        { "name": "X-Nrdot-Message", "in": "header", "schema": { "type": "string" } },
        { "name": "message", "in": "query", "schema": { "type": "string" } }
    ]);
    let mut rollback = op(
        "Make an old version current again (as a new version)",
        "admin",
        &[
            ("200", "the new version"),
            ("404", "no such version"),
            ("422", "that version no longer validates"),
        ],
    );
    rollback["requestBody"] = json_body(
        json!({ "type": "object", "required": ["version"], "properties": { "version": { "type": "integer" }, "message": { "type": "string" } } }),
    );
    let id_param = json!({ "name": "id", "in": "path", "required": true, "schema": { "type": "string" }, "description": "pool/address, address, or host" });
    let mut disable = op(
        "Drain: no new requests; in-flight requests complete",
        "operator",
        &[
            ("200", "disabled and drained"),
            ("202", "disabled, still draining at the deadline"),
            ("404", "no backend matches"),
        ],
    );
    disable["parameters"] = json!([id_param.clone(), { "name": "wait", "in": "query", "schema": { "type": "string" }, "description": "wait up to this long (e.g. 30s) for in-flight to reach 0" }]);
    let mut enable = op(
        "Back into rotation",
        "operator",
        &[("200", "enabled"), ("404", "no backend matches")],
    );
    enable["parameters"] = json!([id_param]);
    let mut version = op(
        "One version with its content",
        "viewer",
        &[("200", "the version"), ("404", "no such version")],
    );
    version["parameters"] =
        json!([{ "name": "id", "in": "path", "required": true, "schema": { "type": "integer" } }]);
    let mut diff = op(
        "Unified diff between two versions",
        "viewer",
        &[("200", "the diff"), ("404", "no such version")],
    );
    diff["parameters"] = json!([
        { "name": "from", "in": "query", "schema": { "type": "integer" } },
        { "name": "to", "in": "query", "schema": { "type": "integer" } }
    ]);
    let mut audit = op(
        "Last entries of the audit log",
        "viewer",
        &[("200", "entries, oldest first")],
    );
    audit["parameters"] =
        json!([{ "name": "limit", "in": "query", "schema": { "type": "integer" } }]);
    let mut tokens_post = op(
        "Create a token (shown once)",
        "admin",
        &[("200", "the token")],
    );
    tokens_post["requestBody"] = json_body(
        json!({ "type": "object", "required": ["name", "role"], "properties": { "name": { "type": "string" }, "role": { "type": "string", "enum": ["viewer", "operator", "admin"] } } }),
    );
    let mut rotate = op(
        "Replace a token's secret (shown once)",
        "admin",
        &[("200", "the new secret"), ("404", "no such token")],
    );
    rotate["requestBody"] = json!({ "required": false, "content": { "application/json": { "schema": { "type": "object", "properties": { "name": { "type": "string" } } } } } });

    let mut password = op(
        "Change the dashboard password (Argon2; audited; other sessions of the user end)",
        "admin",
        &[("200", "changed"), ("422", "shorter than 12 characters")],
    );
    password["requestBody"] = json_body(
        json!({ "type": "object", "required": ["password"], "properties": { "password": { "type": "string", "minLength": 12 }, "current": { "type": "string", "description": "required from a dashboard session" } } }),
    );
    let mut stats = op(
        "Per pool: requests/s, error rate and p99 over the last minutes (about 90 points)",
        "viewer",
        &[("200", "step_s and pools with their series, oldest first")],
    );
    stats["parameters"] = json!([{ "name": "minutes", "in": "query", "schema": { "type": "integer", "minimum": 1, "maximum": 60, "default": 15 } }]);
    let login = json!({
        "summary": "Log in: sets the HttpOnly, SameSite=Strict nrdot_session cookie (Secure over TLS); failures slow down like bad tokens",
        "x-nrdot-role": "none",
        "security": [],
        "requestBody": json_body(json!({ "type": "object", "required": ["user", "password"], "properties": { "user": { "type": "string" }, "password": { "type": "string" } } })),
        "responses": { "200": { "description": "the session: user, role, csrf, idle_timeout_s" }, "401": { "description": "wrong user or password" } }
    });
    let public = |summary: &str, codes: &[(&str, &str)]| {
        let mut o = op(summary, "none", codes);
        if let Some(r) = o["responses"].as_object_mut() {
            r.remove("401");
            r.remove("403");
        }
        o["security"] = json!([]);
        o
    };
    json!({
        "openapi": "3.0.3",
        "info": { "title": "nrdot admin API", "version": env!("CARGO_PKG_VERSION") },
        "servers": [{ "url": "http://127.0.0.1:8080" }],
        "components": { "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } } },
        "security": [{ "bearer": [] }],
        "paths": {
            "/health": { "get": public("Process health and pool availability", &[("200", "every pool has an available backend"), ("503", "a pool has none")]) },
            "/metrics": { "get": public("Prometheus metrics", &[("200", "text format 0.0.4")]) },
            "/api/v2/openapi.json": { "get": op("This document", "viewer", &[("200", "OpenAPI 3")]) },
            "/api/v2/version": { "get": op("Binary and running config version", "viewer", &[("200", "versions")]) },
            "/api/v2/upgrade": { "post": op("Replace the binary without closing a port: body {\"binary\": PATH} or {\"rollback\": true} or empty (the path nrdot was started from); answers once the new process serves", "admin", &[("200", "from/to PID, version and checksum"), ("409", "an upgrade is already running"), ("422", "not an nrdot binary, or no earlier binary"), ("502", "the new binary failed; the old process keeps serving")]) },
            "/api/v2/restore": { "post": op("Live restore: a backup's configuration (content, checksum, version, archive name) becomes a new version and its drained backends are drained again; audited", "admin", &[("200", "the new version and the backends changed"), ("422", "content does not match its checksum, or invalid")]) },
            "/api/v2/binaries": { "get": op("Binary history: every upgrade with the binaries' versions, checksums and kept copies", "viewer", &[("200", "records")]) },
            "/api/v2/config": {
                "get": op("Current configuration (TOML and JSON) with version and checksum", "viewer", &[("200", "the configuration")]),
                "put": put
            },
            "/api/v2/config/versions": { "get": op("Every version, oldest first", "viewer", &[("200", "versions"), ("500", "the store is damaged")]) },
            "/api/v2/config/versions/{id}": { "get": version },
            "/api/v2/config/diff": { "get": diff },
            "/api/v2/config/rollback": { "post": rollback },
            "/api/v2/backends": { "get": op("Every backend: pool, address, weight, admin state, health, in-flight, totals", "viewer", &[("200", "backends")]) },
            "/api/v2/backends/{id}/disable": { "post": disable },
            "/api/v2/backends/{id}/enable": { "post": enable },
            "/api/v2/audit": { "get": audit },
            "/api/v2/rollouts": {
                "get": op("Every rollout", "viewer", &[("200", "rollouts")]),
                "post": { "summary": "Start a canary, blue-green or rolling rollout", "x-nrdot-role": "operator",
                    "requestBody": { "required": true, "content": { "application/json": { "schema": { "type": "object", "required": ["kind"], "properties": {
                        "kind": { "type": "string", "enum": ["canary", "blue-green", "rolling"] },
                        "route": { "type": "string" }, "to": { "type": "string" }, "from": { "type": "string" }, "pool": { "type": "string" },
                        "steps": { "type": "array", "items": { "type": "integer" } }, "interval": { "type": "string" },
                        "max_error_rate": { "type": "string" }, "max_p99": { "type": "string" }, "error_for": { "type": "string" },
                        "min_healthy": { "type": "string" }, "healthy_for": { "type": "string" },
                        "memory_threshold": { "type": "string" }, "memory_for": { "type": "string" }, "min_requests": { "type": "integer" },
                        "keep_old": { "type": "string" }, "batch": { "type": "integer" }, "hook": { "type": "string" }, "wait": { "type": "string" }
                    } } } } },
                    "responses": { "201": { "description": "started" }, "400": { "description": "invalid" }, "409": { "description": "another rollout holds the route or pool" }, "401": { "description": "unauthorized" }, "403": { "description": "forbidden" } } }
            },
            "/api/v2/rollouts/{id}": { "get": {
                "summary": "One rollout with events and analysis", "x-nrdot-role": "viewer",
                "parameters": [{ "name": "id", "in": "path", "required": true, "schema": { "type": "integer" } }],
                "responses": { "200": { "description": "the rollout" }, "404": { "description": "no such rollout" }, "401": { "description": "unauthorized" } } } },
            "/api/v2/rollouts/{id}/{command}": { "post": {
                "summary": "promote, pause, resume, abort, approve or rollback", "x-nrdot-role": "operator",
                "parameters": [{ "name": "id", "in": "path", "required": true, "schema": { "type": "integer" } },
                               { "name": "command", "in": "path", "required": true, "schema": { "type": "string", "enum": ["promote", "pause", "resume", "abort", "approve", "rollback"] } }],
                "responses": { "200": { "description": "the rollout" }, "404": { "description": "no such rollout" }, "409": { "description": "not possible in this phase" }, "401": { "description": "unauthorized" }, "403": { "description": "forbidden" } } } },
            "/api/v2/tls": { "get": op("Certificates per listener with days to expiry", "viewer", &[("200", "certificates")]) },
            "/api/v2/tls/reload": { "post": op("Reload certificates, keys and CA files now", "admin", &[("200", "reloaded"), ("422", "a file is unusable; the old material keeps serving")]) },
            "/api/v2/events": { "get": op("Recent runtime events: health transitions, ejections, agent reports, rollout steps", "viewer", &[("200", "events, oldest first")]) },
            "/api/v2/audit/verify": { "get": op("Verify the audit chain", "viewer", &[("200", "intact"), ("409", "broken: where and how")]) },
            "/api/v2/tokens": {
                "get": op("Token names and roles", "admin", &[("200", "tokens")]),
                "post": tokens_post
            },
            "/api/v2/admin/rotate-token": { "post": rotate },
            "/api/v2/admin/password": { "post": password },
            "/api/v2/session": {
                "post": login,
                "get": public("The dashboard session: {logged_in: false} without one; user, role and CSRF token with one", &[("200", "the session")]),
                "delete": op("Log out (a session call: needs X-CSRF-Token)", "viewer", &[("200", "logged out; the cookie is cleared")])
            },
            "/api/v2/stats": { "get": stats },
            "/dashboard": { "get": public("The dashboard (HTML; script and styles embedded in the binary)", &[("200", "the page")]) }
        }
    })
}
