//! The proxy's request path on loopback: one keep-alive GET answered by a small origin, sent
//! directly and through nrdot's data plane (one worker, in this process). The difference is what
//! nrdot adds to a request: two extra socket round trips plus parsing, routing and rewriting.
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use nrdot_config::{swap, Config, RouteTable};
use nrdot_proxy::accesslog::AccessLog;
use nrdot_proxy::{DataPlane, Listeners};

/// A keep-alive origin answering every request with 13 bytes, on its own thread.
fn origin() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            std::thread::spawn(move || {
                let _ = s.set_nodelay(true);
                let mut buf = [0u8; 4096];
                let mut have = 0;
                loop {
                    match s.read(&mut buf[have..]) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => have += n,
                    }
                    while let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.copy_within(end + 4..have, 0);
                        have -= end + 4;
                        let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\nhello world!\n";
                        if s.write_all(resp).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

/// Sends one GET on `s` and reads the whole response.
fn get(s: &mut TcpStream, buf: &mut [u8]) {
    s.write_all(b"GET /small HTTP/1.1\r\nHost: bench.test\r\nUser-Agent: criterion\r\n\r\n")
        .expect("write");
    let mut have = 0;
    loop {
        let n = s.read(&mut buf[have..]).expect("read");
        assert!(n > 0, "connection closed");
        have += n;
        if let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end]).expect("head");
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|v| v.trim().to_string())
                })
                .and_then(|v| v.parse().ok())
                .expect("content-length");
            if have >= end + 4 + len {
                return;
            }
        }
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_nodelay(true).expect("nodelay");
    s
}

fn proxy_path(c: &mut Criterion) {
    let origin = origin();
    let text = format!(
        "worker_threads = 1\n[limits]\nkeepalive_requests = 1000000000\n[[listener]]\nname = \"http\"\nbind = \"127.0.0.1:0\"\n\
         [access_log]\nenabled = false\n[[pool]]\nname = \"o\"\n[[pool.server]]\naddress = \"{origin}\"\n\
         [[route]]\nname = \"r\"\npool = \"o\"\n"
    );
    let config = Config::from_toml(&text).expect("valid");
    let listeners = Listeners::bind(
        &config.listeners,
        1,
        &Default::default(),
        &mut Default::default(),
    )
    .expect("bind listener");
    let proxy = listeners.local_addrs()[0].1;
    let table = RouteTable::compile(Arc::new(config), 1, None);
    let (_publisher, reader) = swap::channel(table);
    let plane = DataPlane::start(listeners, reader, AccessLog::disabled(), 1).expect("start");

    let mut buf = vec![0u8; 16384];
    let mut group = c.benchmark_group("keep-alive GET, 13-byte body");
    let mut direct = connect(origin);
    group.bench_function("direct to origin", |b| {
        b.iter(|| get(&mut direct, &mut buf))
    });
    let mut via = connect(proxy);
    group.bench_function("through nrdot", |b| b.iter(|| get(&mut via, &mut buf)));
    group.finish();
    drop((direct, via));
    plane.shutdown(Duration::from_secs(1));
}

criterion_group!(benches, proxy_path);
criterion_main!(benches);
