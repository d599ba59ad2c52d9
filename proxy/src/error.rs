//! Everything that ends a request with a response nrdot writes itself, and the one place that maps
//! those outcomes to status codes. Responses are short, plain text, carry `Server: nrdot`, and are
//! counted.
use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;

/// Why nrdot answered instead of an upstream.
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
pub enum ProxyError {
    /// Malformed or ambiguous request (source: client).
    #[error("bad request")]
    BadRequest,
    /// Request target longer than `max_request_line` (source: client).
    #[error("request target too long")]
    UriTooLong,
    /// A method nrdot does not forward: CONNECT, as nrdot is no forward proxy (source: client).
    #[error("method not allowed")]
    MethodNotAllowed,
    /// A transfer coding nrdot does not understand (source: client).
    #[error("transfer coding not implemented")]
    NotImplemented,
    /// An HTTP major version other than 1 in an HTTP/1 request line (source: client).
    #[error("HTTP version not supported")]
    VersionNotSupported,
    /// Body larger than `client_max_body_size` (source: client).
    #[error("request body too large")]
    BodyTooLarge,
    /// The client stopped sending its body (source: client).
    #[error("client timed out sending the body")]
    ClientTimeout,
    /// No route matches host and path (source: proxy).
    #[error("no route")]
    NoRoute,
    /// Every server of the chosen pool is disabled, unhealthy or ejected (source: proxy).
    #[error("no available backend")]
    NoAvailableBackend,
    /// Every available server is at `max_connections`: the circuit is open (source: proxy).
    #[error("all backends at their connection limit")]
    Overloaded,
    /// Connection to the upstream refused, reset or closed early (source: upstream).
    #[error("upstream connection failed")]
    UpstreamConnect,
    /// The upstream did not answer in time (source: upstream).
    #[error("upstream timed out")]
    UpstreamTimeout,
}

impl ProxyError {
    /// The status code an operator of nginx would expect for this outcome.
    pub fn status(self) -> StatusCode {
        match self {
            ProxyError::BadRequest => StatusCode::BAD_REQUEST,
            ProxyError::UriTooLong => StatusCode::URI_TOO_LONG,
            ProxyError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::NotImplemented => StatusCode::NOT_IMPLEMENTED,
            ProxyError::VersionNotSupported => StatusCode::HTTP_VERSION_NOT_SUPPORTED,
            ProxyError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::ClientTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::NoAvailableBackend | ProxyError::Overloaded => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::UpstreamConnect => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// Who caused it, for logs: `client`, `proxy` or `upstream`.
    pub fn source_label(self) -> &'static str {
        match self {
            ProxyError::BadRequest
            | ProxyError::UriTooLong
            | ProxyError::MethodNotAllowed
            | ProxyError::NotImplemented
            | ProxyError::VersionNotSupported
            | ProxyError::BodyTooLarge
            | ProxyError::ClientTimeout => "client",
            ProxyError::NoRoute | ProxyError::NoAvailableBackend | ProxyError::Overloaded => {
                "proxy"
            }
            ProxyError::UpstreamConnect | ProxyError::UpstreamTimeout => "upstream",
        }
    }

    /// Whether the client connection must close after the answer: after a client error the
    /// framing of whatever follows on the connection cannot be trusted.
    pub fn closes(self) -> bool {
        self.source_label() == "client"
    }
}

/// The methods nrdot forwards, for `Allow` in its own 405 and OPTIONS answers.
pub(crate) const ALLOW: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";

/// A short plain-text response with `Server: nrdot`, counted in the error metrics.
pub fn response(status: StatusCode, close: bool) -> Response<Full<Bytes>> {
    let (head, body) = answer(status, close);
    Response::from_parts(head, Full::new(body))
}

/// The head and body of [`response`], for writers that serialise responses themselves.
pub fn answer(status: StatusCode, close: bool) -> (http::response::Parts, Bytes) {
    crate::metrics::get().error(status.as_u16());
    let reason = status.canonical_reason().unwrap_or("Error");
    let body = Bytes::from(format!("{} {}\n", status.as_u16(), reason));
    let mut resp = Response::new(());
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::SERVER, HeaderValue::from_static("nrdot"));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if status == StatusCode::METHOD_NOT_ALLOWED {
        h.insert(header::ALLOW, HeaderValue::from_static(ALLOW));
    }
    if close {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    (resp.into_parts().0, body)
}
