//! Warnings about configurations that are valid but risky: what an experienced operator would
//! point out in review. `nrdot config lint` prints them; they never block a config.
use std::time::Duration;

use crate::model::Config;

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// TOML path of the offending part.
    pub path: String,
    /// What is risky and why.
    pub message: String,
}

/// Timeouts longer than this tie up connections for too long when something hangs.
const LONG_CLIENT_TIMEOUT: Duration = Duration::from_secs(300);
const LONG_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const LONG_RESPONSE_TIMEOUT: Duration = Duration::from_secs(600);

/// Every warning for `config`, in file order.
pub fn lint(config: &Config) -> Vec<Warning> {
    let mut out = Vec::new();
    let mut warn = |path: String, message: String| out.push(Warning { path, message });

    if !config.admin_bind.ip().is_loopback() && config.admin_tls.is_none() {
        warn(
            "admin.bind".into(),
            format!(
                "the admin API listens on {} without TLS: tokens cross the network in clear; bind it to 127.0.0.1 or put it behind TLS",
                config.admin_bind
            ),
        );
    }
    let l = &config.limits;
    for (key, d) in [
        ("client_header_timeout", l.client_header_timeout),
        ("client_body_timeout", l.client_body_timeout),
        ("keepalive_timeout", l.keepalive_timeout),
    ] {
        if d > LONG_CLIENT_TIMEOUT {
            warn(
                format!("limits.{key}"),
                format!(
                    "{key} of {}s lets idle or slow clients hold connections for a long time",
                    d.as_secs()
                ),
            );
        }
    }
    if config.shutdown_grace > LONG_CLIENT_TIMEOUT {
        warn(
            "shutdown_grace".into(),
            format!(
                "a shutdown grace of {}s delays every restart by that much when a client hangs",
                config.shutdown_grace.as_secs()
            ),
        );
    }
    for (i, p) in config.pools.iter().enumerate() {
        let path = format!("pool[{i}]");
        if p.health_check.is_none() {
            warn(
                path.clone(),
                format!("pool {:?} has no health check: a dead server is only noticed by the requests that fail on it", p.name),
            );
        }
        let serving = p.servers.iter().filter(|s| s.weight > 0).count();
        if serving == 1 {
            warn(
                path.clone(),
                format!(
                    "pool {:?} has a single server: draining or losing it takes the pool down",
                    p.name
                ),
            );
        }
        if p.connect_timeout > LONG_CONNECT_TIMEOUT {
            warn(
                format!("{path}.connect_timeout"),
                format!(
                    "connect_timeout of {}s: a dead server holds each request that long",
                    p.connect_timeout.as_secs()
                ),
            );
        }
        if p.response_timeout > LONG_RESPONSE_TIMEOUT {
            warn(
                format!("{path}.response_timeout"),
                format!(
                    "response_timeout of {}s: a hung server holds each request that long",
                    p.response_timeout.as_secs()
                ),
            );
        }
    }
    for (i, r) in config.routes.iter().enumerate() {
        if r.split.len() > 1 {
            let total: u64 = r.split.iter().map(|e| e.weight as u64).sum();
            if total != 100 {
                warn(
                    format!("route[{i}].split"),
                    format!("the weights of route {:?} sum to {total}, not 100: they are relative shares, which reads easily as percentages", r.name),
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lint_flags_risky_settings() {
        let text = r#"
shutdown_grace = "1h"
[admin]
bind = "0.0.0.0:8080"
[[listener]]
name = "a"
bind = "127.0.0.1:80"
[limits]
keepalive_timeout = "1h"
[[pool]]
name = "one"
connect_timeout = "2m"
[[pool.server]]
address = "10.0.0.1:80"
[[pool]]
name = "two"
[[pool.server]]
address = "10.0.0.2:80"
[[pool.server]]
address = "10.0.0.3:80"
[[route]]
name = "r"
split = [{ pool = "one", weight = 3 }, { pool = "two", weight = 1 }]
"#;
        let w = lint(&Config::from_toml(text).expect("valid"));
        let paths: Vec<&str> = w.iter().map(|w| w.path.as_str()).collect();
        for want in [
            "admin.bind",
            "limits.keepalive_timeout",
            "shutdown_grace",
            "pool[0]",
            "pool[0].connect_timeout",
            "route[0].split",
        ] {
            assert!(paths.contains(&want), "{want} missing from {paths:?}");
        }
        assert_eq!(
            w.iter()
                .filter(|w| w.message.contains("single server"))
                .count(),
            1
        );
    }
}
