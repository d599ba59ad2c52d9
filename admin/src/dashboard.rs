//! The dashboard's pages: a single HTML page with its script and style sheet, embedded in the
//! binary (no Node.js, no build step, nothing to deploy beside nrdot). Everything it shows and
//! does goes through the same `/api/v2` calls as the CLI, authenticated by the session cookie.
use bytes::Bytes;
use http::{header, HeaderValue, Method, Response, StatusCode};
use http_body_util::Full;

const INDEX: &str = include_str!("../dashboard/index.html");
const SCRIPT: &str = include_str!("../dashboard/app.js");
const STYLE: &str = include_str!("../dashboard/app.css");

/// Only our own script and style may run or load; nothing may frame the dashboard.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The answer for `path` when it is the dashboard's (`/`, `/dashboard`, `/dashboard/...`).
pub fn page(method: &Method, path: &str) -> Option<Response<Full<Bytes>>> {
    if path != "/" && path != "/dashboard" && !path.starts_with("/dashboard/") {
        return None;
    }
    if method != Method::GET && method != Method::HEAD {
        return Some(plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "method not allowed",
        ));
    }
    Some(match path {
        "/" => {
            let mut r = plain(StatusCode::FOUND, "text/plain", "");
            r.headers_mut()
                .insert(header::LOCATION, HeaderValue::from_static("/dashboard"));
            r
        }
        "/dashboard" | "/dashboard/" => plain(StatusCode::OK, "text/html; charset=utf-8", INDEX),
        "/dashboard/app.js" => plain(StatusCode::OK, "text/javascript; charset=utf-8", SCRIPT),
        "/dashboard/app.css" => plain(StatusCode::OK, "text/css; charset=utf-8", STYLE),
        _ => plain(StatusCode::NOT_FOUND, "text/plain", "not found"),
    })
}

fn plain(
    status: StatusCode,
    content_type: &'static str,
    body: &'static str,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_redirects_and_assets_are_served_with_a_strict_policy() {
        let r = page(&Method::GET, "/").expect("dashboard path");
        assert_eq!(r.status(), StatusCode::FOUND);
        assert_eq!(r.headers()[header::LOCATION], "/dashboard");
        let r = page(&Method::GET, "/dashboard").expect("dashboard path");
        assert_eq!(r.status(), StatusCode::OK);
        assert!(r.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .is_ok_and(|c| c.contains("script-src 'self'")));
        assert_eq!(
            page(&Method::GET, "/dashboard/nope").map(|r| r.status()),
            Some(StatusCode::NOT_FOUND)
        );
        assert_eq!(
            page(&Method::POST, "/dashboard").map(|r| r.status()),
            Some(StatusCode::METHOD_NOT_ALLOWED)
        );
        assert!(page(&Method::GET, "/api/v2/version").is_none());
        assert!(INDEX.contains("app.js") && SCRIPT.contains("X-CSRF-Token"));
    }
}
