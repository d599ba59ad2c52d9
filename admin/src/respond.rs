//! Building admin answers and reading admin requests: JSON bodies, errors, query strings and
//! the bounded request body. Shared by the API (`http`) and the dashboard's sessions.
use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use serde_json::{json, Value};

/// A JSON answer.
pub fn json_response(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// A typed answer as JSON.
pub fn answer<T: serde::Serialize>(status: StatusCode, body: &T) -> Response<Full<Bytes>> {
    json_response(status, serde_json::to_value(body).unwrap_or_default())
}

/// `{"error": message}` with `status`.
pub fn error(status: StatusCode, message: impl Into<String>) -> Response<Full<Bytes>> {
    json_response(status, json!({ "error": message.into() }))
}

/// A refused credential change: 404 for an unknown token, 422 for a weak password, 503 while
/// a cluster's credentials cannot be written.
pub fn auth_error(e: &crate::auth::AuthError) -> Response<Full<Bytes>> {
    use crate::auth::AuthError;
    let status = match e {
        AuthError::UnknownToken(_) => StatusCode::NOT_FOUND,
        AuthError::WeakPassword => StatusCode::UNPROCESSABLE_ENTITY,
        AuthError::Cluster(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, e.to_string())
}

/// Query parameter `key`, percent-decoded.
pub fn query(req: &Request<AdminBody>, key: &str) -> Option<String> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then(|| percent_decode(v))
    })
}

/// Decodes `%XX` escapes and `+` (as space in queries).
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An admin request's body: hyper's from the socket, or any other (a test's `Full<Bytes>`),
/// so handlers run without a socket.
pub type AdminBody = http_body_util::combinators::BoxBody<Bytes, BodyError>;

/// Why reading an admin request's body failed (the connection broke).
#[derive(Debug, thiserror::Error)]
#[error("reading the request body: {0}")]
pub struct BodyError(String);

/// Wraps any body as an [`AdminBody`].
pub fn admin_body<B>(body: B) -> AdminBody
where
    B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: std::fmt::Display,
{
    body.map_err(|e| BodyError(e.to_string())).boxed()
}

/// The largest admin request body: a whole configuration of 100,000 routes is about 15 MB.
pub const MAX_ADMIN_BODY: usize = 64 * 1024 * 1024;

/// The whole body, up to [`MAX_ADMIN_BODY`]; 413 beyond.
pub async fn read_body(req: Request<AdminBody>) -> Result<Bytes, Response<Full<Bytes>>> {
    match Limited::new(req.into_body(), MAX_ADMIN_BODY)
        .collect()
        .await
    {
        Ok(c) => Ok(c.to_bytes()),
        Err(_) => Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body larger than 64 MiB",
        )),
    }
}
