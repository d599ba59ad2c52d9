//! `[listener.tls]` and `[pool.tls]`. Only the shape is checked here; whether the files exist,
//! parse and match is checked when they are loaded (at start, on every change, on reload), so
//! a bad file is reported there and the old certificate keeps serving.
use std::path::PathBuf;

use toml_edit::TableLike;

use super::{valid_host, V};
use crate::model::*;

fn files(v: &mut V<'_>, t: &dyn TableLike, path: &str) -> Option<CertFiles> {
    let cert = v.str(t, "cert", path);
    let key = v.str(t, "key", path);
    match (cert, key) {
        (Some((c, _)), Some((k, _))) => Some(CertFiles {
            cert: PathBuf::from(c),
            key: PathBuf::from(k),
        }),
        (c, k) => {
            let span = v
                .get(t, "cert")
                .or_else(|| v.get(t, "key"))
                .and_then(|(_, s)| s);
            if c.is_none() {
                v.push(path, &span, "missing key \"cert\" (PEM certificate chain)");
            }
            if k.is_none() {
                v.push(path, &span, "missing key \"key\" (PEM private key)");
            }
            None
        }
    }
}

pub(super) fn listener(v: &mut V<'_>, t: &dyn TableLike, path: &str) -> Option<ListenerTls> {
    let (tls, _) = v.table(t, "tls", path)?;
    let tp = format!("{path}.tls");
    v.keys(tls, &tp, &["cert", "key", "sni"]);
    let default = files(v, tls, &tp)?;
    let mut sni = Vec::new();
    for (i, (s, _)) in v.tables(tls, "sni", &tp).into_iter().enumerate() {
        let sp = format!("{tp}.sni[{i}]");
        v.keys(s, &sp, &["names", "cert", "key"]);
        let mut names = Vec::new();
        for (j, (n, span)) in v.strings(s, "names", &sp).into_iter().enumerate() {
            let n = n.to_ascii_lowercase();
            if !valid_host(&n) {
                v.push(
                    &format!("{sp}.names[{j}]"),
                    &span,
                    format!("invalid name {n:?}"),
                );
            }
            names.push(n);
        }
        if let Some(f) = files(v, s, &sp) {
            sni.push(SniCert { names, files: f });
        }
    }
    Some(ListenerTls { default, sni })
}

pub(super) fn upstream(v: &mut V<'_>, t: &dyn TableLike, path: &str) -> Option<UpstreamTls> {
    let (tls, _) = v.table(t, "tls", path)?;
    let tp = format!("{path}.tls");
    v.keys(
        tls,
        &tp,
        &["ca_file", "server_name", "client_cert", "client_key"],
    );
    let client_cert = match (
        v.str(tls, "client_cert", &tp),
        v.str(tls, "client_key", &tp),
    ) {
        (Some((c, _)), Some((k, _))) => Some(CertFiles {
            cert: PathBuf::from(c),
            key: PathBuf::from(k),
        }),
        (None, None) => None,
        (_, _) => {
            let span = v
                .get(tls, "client_cert")
                .or_else(|| v.get(tls, "client_key"))
                .and_then(|(_, s)| s);
            v.push(&tp, &span, "client_cert and client_key go together");
            None
        }
    };
    Some(UpstreamTls {
        ca_file: v.str(tls, "ca_file", &tp).map(|(f, _)| PathBuf::from(f)),
        server_name: v.str(tls, "server_name", &tp).map(|(n, _)| n),
        client_cert,
    })
}
