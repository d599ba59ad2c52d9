//! Client-facing sockets. Every worker gets its own socket per listener, bound with SO_REUSEPORT,
//! so the kernel spreads new connections over workers without a shared accept lock.
use std::io;
use std::net::SocketAddr;

use http::HeaderValue;
use nrdot_config::swap::Reader;
use socket2::{Domain, Protocol, Socket, Type};

use crate::accesslog::AccessLog;

/// Binds `count` sockets to `addr` with SO_REUSEPORT. When `addr` has port 0, the first socket
/// picks a free port and the others join it, so tests can ask for any free port. `defer`:
/// see [`defer_accept`].
pub fn bind(addr: SocketAddr, count: usize, defer: bool) -> io::Result<Vec<std::net::TcpListener>> {
    let mut out = Vec::with_capacity(count);
    let mut addr = addr;
    for _ in 0..count.max(1) {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        if addr.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        if defer {
            defer_accept(&socket)?;
        }
        socket.listen(4096)?;
        let listener: std::net::TcpListener = socket.into();
        addr = listener.local_addr()?;
        out.push(listener);
    }
    Ok(out)
}

/// Seconds a connection may stay silent before it is accepted anyway. The kernel turns this
/// into SYN-ACK retransmissions: one, at about a second. A client that sent nothing by then is
/// accepted when it acknowledges the retransmission and meets the header timeout, so a
/// silent connection is not held longer than without the option (nginx passes its whole
/// `client_header_timeout` here, 60 s, during which the connection is invisible).
const DEFER_SECS: libc::c_int = 1;

/// `TCP_DEFER_ACCEPT`: the listener reports a connection once its first data arrived, so
/// accepting it and reading its request take one wakeup instead of two (the bare ACK that
/// completes the handshake no longer wakes the proxy). A connection per request: proxy CPU
/// 0.96 → 0.72× nginx's (benches/README.md, "Deferred accept").
///
/// socket2 does not expose the option; this is the one `unsafe` in the crate.
#[allow(unsafe_code)]
fn defer_accept(socket: &Socket) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let secs = DEFER_SECS;
    // SAFETY: `socket` owns a valid descriptor for the whole call, and the option value is a
    // live `c_int` whose exact size is passed with it.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            std::ptr::from_ref(&secs).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// What every connection of a listener shares.
pub struct Shared {
    pub reader: Reader,
    pub log: AccessLog,
    pub proto: HeaderValue,
    /// Present on HTTPS listeners.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub handshake_errors: metrics::Counter,
    /// The port the first HTTPS listener bound (its configured port may be 0), for redirects
    /// to HTTPS when the configuration names none. A property of the bound sockets, set once
    /// at start: no cell beside the routing table changes on a configuration change.
    pub https_port: Option<u16>,
}
