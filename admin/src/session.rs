//! Dashboard sessions over HTTP: log in with a password (or a token's name and secret), a
//! cookie that scripts cannot read and other sites cannot send, a CSRF token on every mutating
//! call, log out, and the dashboard password change. The credentials themselves live in
//! [`crate::auth`]; this module owns how they travel.
use std::net::IpAddr;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;

use crate::api::{Login, PasswordChange, SessionInfo};
use crate::app::Admin;
use crate::audit::Event;
use crate::auth::{Actor, AuthError, Session};
use crate::respond::{error, json_response, read_body, AdminBody};

/// The session cookie's name.
pub const COOKIE: &str = "nrdot_session";

/// The header a session's mutating calls carry their CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// How a call proved who it is.
pub enum Caller {
    /// `Authorization: Bearer`: scripts and the CLI; no cookie, so no CSRF to fear.
    Token(Actor),
    /// The dashboard's cookie.
    Session {
        /// The cookie value.
        id: String,
        /// What it stands for.
        session: Session,
    },
}

impl Caller {
    /// Who is calling.
    pub fn actor(&self) -> &Actor {
        match self {
            Caller::Token(a) => a,
            Caller::Session { session, .. } => &session.actor,
        }
    }
}

fn info(session: &Session, idle: std::time::Duration) -> SessionInfo {
    SessionInfo {
        logged_in: true,
        user: Some(session.actor.name.clone()),
        role: Some(session.actor.role),
        csrf: Some(session.csrf.clone()),
        idle_timeout_s: Some(idle.as_secs()),
    }
}

/// The cookie value sent with `req`, if any.
fn cookie<B>(req: &Request<B>) -> Option<String> {
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == COOKIE).then(|| v.to_string())
        })
}

/// Who made `req`: a bearer token first, else a live session cookie.
pub fn caller(admin: &Admin, req: &Request<AdminBody>) -> Option<Caller> {
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if authorization.is_some() {
        return admin.auth.check(authorization).map(Caller::Token);
    }
    let id = cookie(req)?;
    let session = admin.auth.session(&id)?;
    Some(Caller::Session { id, session })
}

/// Whether a mutating call may go ahead: token calls always, session calls only with their
/// CSRF token (compared in constant time).
pub fn csrf_ok(caller: &Caller, req: &Request<AdminBody>) -> bool {
    let Caller::Session { session, .. } = caller else {
        return true;
    };
    let sent = req
        .headers()
        .get(CSRF_HEADER)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    let want = session.csrf.as_bytes();
    sent.len() == want.len() && sent.iter().zip(want).fold(0u8, |d, (a, b)| d | (a ^ b)) == 0
}

fn set_cookie(r: &mut Response<Full<Bytes>>, value: &str, secure: bool, max_age: Option<u64>) {
    let mut c = format!("{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict");
    if secure {
        c.push_str("; Secure");
    }
    if let Some(s) = max_age {
        c.push_str(&format!("; Max-Age={s}"));
    }
    if let Ok(v) = HeaderValue::from_str(&c) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
}

fn secure(admin: &Admin) -> bool {
    admin.url.starts_with("https://")
}

fn audit(admin: &Admin, actor: &str, action: &str, outcome: &str, detail: String) {
    let _ = admin.control.audit().record(Event {
        actor: actor.to_string(),
        action: action.into(),
        target: "dashboard".into(),
        outcome: outcome.into(),
        detail,
        ..Event::default()
    });
}

/// `POST /api/v2/session`: 200 with the session (and its cookie) or, after the same growing
/// delay as a bad token, 401.
pub async fn login(admin: &Admin, peer: IpAddr, req: Request<AdminBody>) -> Response<Full<Bytes>> {
    let body = match read_body(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Ok(login) = serde_json::from_slice::<Login>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "body must be JSON {\"user\", \"password\"}",
        );
    };
    // Argon2 takes tens of milliseconds of CPU: off the admin's async threads.
    let auth_check = {
        let (user, password) = (login.user.clone(), login.password);
        let auth = admin.auth.clone();
        tokio::task::spawn_blocking(move || auth.login(&user, &password)).await
    };
    let Ok(Some(actor)) = auth_check else {
        let delay = admin.auth.failure_delay(peer);
        audit(
            admin,
            &login.user,
            "session.login",
            "unauthorized",
            format!("from {peer}"),
        );
        tokio::time::sleep(delay).await;
        return error(StatusCode::UNAUTHORIZED, "wrong user or password");
    };
    let (id, _) = match admin.auth.open_session(actor.clone()) {
        Ok(s) => s,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let Some(session) = admin.auth.session(&id) else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "session vanished");
    };
    audit(
        admin,
        &actor.name,
        "session.login",
        "ok",
        format!("from {peer}, role {:?}", actor.role).to_lowercase(),
    );
    let mut r = json_response(
        StatusCode::OK,
        json(&info(&session, admin.auth.session_idle())),
    );
    set_cookie(&mut r, &id, secure(admin), None);
    r
}

fn json<T: Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or_default()
}

/// `GET /api/v2/session` without a live session: 200 `{"logged_in": false}`, so the page can
/// ask whether to show its login form without an error (and without slowing anyone down).
pub fn anonymous() -> Response<Full<Bytes>> {
    json_response(
        StatusCode::OK,
        json(&SessionInfo {
            logged_in: false,
            user: None,
            role: None,
            csrf: None,
            idle_timeout_s: None,
        }),
    )
}

/// `GET` and `DELETE /api/v2/session`, after authentication (and CSRF for `DELETE`).
pub fn current(admin: &Admin, caller: &Caller, method: &Method) -> Response<Full<Bytes>> {
    if method != Method::GET && method != Method::DELETE {
        return error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    }
    let Caller::Session { id, session } = caller else {
        if method == Method::GET {
            // Who a token is, for scripts; there is no session to report.
            let a = caller.actor();
            return json_response(
                StatusCode::OK,
                json(&SessionInfo {
                    logged_in: false,
                    user: Some(a.name.clone()),
                    role: Some(a.role),
                    csrf: None,
                    idle_timeout_s: None,
                }),
            );
        }
        return error(
            StatusCode::BAD_REQUEST,
            "this call is authenticated by a token, not a session",
        );
    };
    if method == Method::DELETE {
        admin.auth.close_session(id);
        audit(
            admin,
            &session.actor.name,
            "session.logout",
            "ok",
            String::new(),
        );
        let mut r = anonymous();
        set_cookie(&mut r, "", secure(admin), Some(0));
        return r;
    }
    json_response(
        StatusCode::OK,
        json(&info(session, admin.auth.session_idle())),
    )
}

/// `POST /api/v2/admin/password` (admin): a new dashboard password, hashed with Argon2;
/// audited. Other sessions of the dashboard user end.
pub async fn change_password(
    admin: &Admin,
    caller: &Caller,
    req: Request<AdminBody>,
) -> Response<Full<Bytes>> {
    let body = match read_body(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Ok(change) = serde_json::from_slice::<PasswordChange>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "body must be JSON {\"password\", \"current\"?}",
        );
    };
    let actor = caller.actor().name.clone();
    let keep = match caller {
        Caller::Session { id, session } => {
            let current = change.current.clone().unwrap_or_default();
            let auth = admin.auth.clone();
            let user = session.actor.name.clone();
            let ok = tokio::task::spawn_blocking(move || auth.check_password(&user, &current))
                .await
                .unwrap_or(false);
            if !ok {
                audit(
                    admin,
                    &actor,
                    "admin.password",
                    "unauthorized",
                    "current password wrong".into(),
                );
                return error(StatusCode::FORBIDDEN, "the current password is wrong");
            }
            Some(id.clone())
        }
        Caller::Token(_) => None,
    };
    let auth = admin.auth.clone();
    let result =
        tokio::task::spawn_blocking(move || auth.set_password(&change.password, keep.as_deref()))
            .await
            .unwrap_or_else(|e| Err(AuthError::Random(e.to_string())));
    match result {
        Ok(()) => {
            audit(admin, &actor, "admin.password", "ok", String::new());
            json_response(
                StatusCode::OK,
                json(&crate::api::PasswordChanged { changed: true }),
            )
        }
        Err(e @ AuthError::WeakPassword) => {
            audit(admin, &actor, "admin.password", "invalid", e.to_string());
            error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
        }
        Err(e) => crate::respond::auth_error(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_is_found_among_others_and_set_with_every_flag() {
        let req = Request::get("/")
            .header(header::COOKIE, "a=1; nrdot_session=abc; b=2")
            .body(())
            .expect("request");
        assert_eq!(cookie(&req).as_deref(), Some("abc"));
        let none = Request::get("/")
            .header(header::COOKIE, "xnrdot_session=abc")
            .body(())
            .expect("request");
        assert_eq!(cookie(&none), None);

        let mut r = Response::new(Full::new(Bytes::new()));
        set_cookie(&mut r, "v", true, None);
        set_cookie(&mut r, "", false, Some(0));
        let set: Vec<&str> = r
            .headers()
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        assert_eq!(
            set,
            [
                "nrdot_session=v; Path=/; HttpOnly; SameSite=Strict; Secure",
                "nrdot_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"
            ]
        );
    }
}
