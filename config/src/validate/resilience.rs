//! The pool keys about failure: hashing, slow start, fail-open, circuit breaking, retries, active
//! and passive health checks, agent checks. Split out of `validate.rs` only for size.
use std::time::Duration;

use toml_edit::TableLike;

use super::{valid_header_name, Span, V};
use crate::model::*;

pub(super) struct Resilience {
    pub hash_key: Option<HashKey>,
    pub slow_start: Duration,
    pub when_unavailable: WhenUnavailable,
    pub max_connections: u32,
    pub retries: u32,
    pub retry_on: RetryOn,
    pub retry_budget_percent: u32,
    pub health_check: Option<HealthCheck>,
    pub outlier: Option<Outlier>,
    pub agent: Option<Agent>,
}

pub(super) fn pool(
    v: &mut V<'_>,
    t: &dyn TableLike,
    path: &str,
    tspan: &Span,
    lb: Lb,
) -> Resilience {
    let hash_key = match v.table(t, "hash_key", path) {
        Some((h, hspan)) => {
            let hp = format!("{path}.hash_key");
            v.keys(h, &hp, &["header", "cookie", "client_ip"]);
            let header = v.str(h, "header", &hp);
            let cookie = v.str(h, "cookie", &hp);
            let ip = v.bool(h, "client_ip", &hp).unwrap_or(false);
            match (header, cookie, ip) {
                (Some((name, span)), None, false) => {
                    if !valid_header_name(&name) {
                        v.push(
                            &format!("{hp}.header"),
                            &span,
                            format!("invalid header name {name:?}"),
                        );
                    }
                    Some(HashKey::Header(name.to_ascii_lowercase()))
                }
                (None, Some((name, _)), false) => Some(HashKey::Cookie(name)),
                (None, None, true) => Some(HashKey::ClientIp),
                _ => {
                    v.push(
                        &hp,
                        &hspan,
                        "set exactly one of header, cookie or client_ip = true",
                    );
                    None
                }
            }
        }
        None => None,
    };
    if lb == Lb::Hash && hash_key.is_none() && v.get(t, "hash_key").is_none() {
        v.push(path, tspan, "lb = \"hash\" needs hash_key = { header = … } , { cookie = … } or { client_ip = true }");
    }
    if lb != Lb::Hash && hash_key.is_some() {
        let span = v.get(t, "hash_key").and_then(|(_, s)| s);
        v.push(
            &format!("{path}.hash_key"),
            &span,
            "hash_key only applies to lb = \"hash\"",
        );
    }
    let slow_start = v.duration(t, "slow_start", path, Duration::ZERO);
    let when_unavailable = match v.str(t, "when_unavailable", path) {
        None => WhenUnavailable::FailClosed,
        Some((s, span)) => match s.as_str() {
            "fail_closed" => WhenUnavailable::FailClosed,
            "fail_open" => WhenUnavailable::FailOpen,
            _ => {
                v.push(
                    &format!("{path}.when_unavailable"),
                    &span,
                    format!("unknown policy {s:?} (expected fail_closed or fail_open)"),
                );
                WhenUnavailable::FailClosed
            }
        },
    };
    let max_connections = v.int(t, "max_connections", path, 0..1_000_001).unwrap_or(0) as u32;
    let retries = v.int(t, "retries", path, 0..11).unwrap_or(1) as u32;
    let mut retry_on = RetryOn {
        connect_failure: true,
        reset: true,
        statuses: Vec::new(),
    };
    if v.get(t, "retry_on").is_some() {
        retry_on.connect_failure = false;
        retry_on.reset = false;
        for (i, (s, span)) in v.strings(t, "retry_on", path).into_iter().enumerate() {
            match s.as_str() {
                "connect-failure" => retry_on.connect_failure = true,
                "reset" => retry_on.reset = true,
                code => match code.parse::<u16>() {
                    Ok(c) if (500..600).contains(&c) => retry_on.statuses.push(c),
                    _ => v.push(
                        &format!("{path}.retry_on[{i}]"),
                        &span,
                        format!("unknown retry condition {s:?} (connect-failure, reset, or a 5xx status)"),
                    ),
                },
            }
        }
    }
    let retry_budget_percent = v.int(t, "retry_budget", path, 0..101).unwrap_or(20) as u32;
    Resilience {
        hash_key,
        slow_start,
        when_unavailable,
        max_connections,
        retries,
        retry_on,
        retry_budget_percent,
        health_check: health_check(v, t, path),
        outlier: outlier(v, t, path),
        agent: agent(v, t, path),
    }
}

fn health_check(v: &mut V<'_>, t: &dyn TableLike, path: &str) -> Option<HealthCheck> {
    let (h, _) = v.table(t, "health_check", path)?;
    let hp = format!("{path}.health_check");
    v.keys(
        h,
        &hp,
        &[
            "type",
            "method",
            "path",
            "host",
            "expect_status",
            "expect_body",
            "interval",
            "timeout",
            "rise",
            "fall",
            "jitter",
            "initial",
        ],
    );
    let kind = match v.str(h, "type", &hp) {
        Some((k, span)) if k != "http" && k != "tcp" => {
            v.push(
                &format!("{hp}.type"),
                &span,
                format!("unknown check type {k:?} (http or tcp)"),
            );
            None
        }
        Some((k, _)) if k == "tcp" => Some(CheckKind::Tcp),
        _ => {
            let method = v
                .str(h, "method", &hp)
                .map(|(m, _)| m)
                .unwrap_or_else(|| "GET".into());
            let check_path = match v.str(h, "path", &hp) {
                Some((p, span)) => {
                    if !p.starts_with('/') {
                        v.push(&format!("{hp}.path"), &span, "path must start with '/'");
                    }
                    p
                }
                None => "/".into(),
            };
            let status = match v.str(h, "expect_status", &hp) {
                None => (200, 399),
                Some((s, span)) => match parse_range(&s) {
                    Some(r) => r,
                    None => {
                        v.push(
                            &format!("{hp}.expect_status"),
                            &span,
                            format!("invalid status range {s:?} (like \"200\" or \"200-399\")"),
                        );
                        (200, 399)
                    }
                },
            };
            Some(CheckKind::Http {
                method,
                path: check_path,
                host: v.str(h, "host", &hp).map(|(s, _)| s),
                status,
                body: v.str(h, "expect_body", &hp).map(|(s, _)| s),
            })
        }
    }?;
    let interval = v.duration(h, "interval", &hp, Duration::from_secs(5));
    let timeout = v.duration(h, "timeout", &hp, Duration::from_secs(2));
    if interval.is_zero() || timeout.is_zero() {
        let span = v.get(h, "interval").and_then(|(_, s)| s);
        v.push(&hp, &span, "interval and timeout must be greater than zero");
    }
    let initial_unhealthy = match v.str(h, "initial", &hp) {
        None => false,
        Some((s, span)) => match s.as_str() {
            "unknown" => false,
            "unhealthy" => true,
            _ => {
                v.push(
                    &format!("{hp}.initial"),
                    &span,
                    format!("unknown initial state {s:?} (unknown or unhealthy)"),
                );
                false
            }
        },
    };
    Some(HealthCheck {
        kind,
        interval,
        timeout,
        rise: v.int(h, "rise", &hp, 1..101).unwrap_or(2) as u32,
        fall: v.int(h, "fall", &hp, 1..101).unwrap_or(3) as u32,
        jitter: v.duration(h, "jitter", &hp, Duration::ZERO),
        initial_unhealthy,
    })
}

fn parse_range(s: &str) -> Option<(u16, u16)> {
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let (a, b): (u16, u16) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    ((100..600).contains(&a) && (100..600).contains(&b) && a <= b).then_some((a, b))
}

fn outlier(v: &mut V<'_>, t: &dyn TableLike, path: &str) -> Option<Outlier> {
    let (o, _) = v.table(t, "outlier", path)?;
    let op = format!("{path}.outlier");
    v.keys(
        o,
        &op,
        &[
            "consecutive_failures",
            "base_ejection",
            "max_ejection_percent",
        ],
    );
    Some(Outlier {
        consecutive_failures: v.int(o, "consecutive_failures", &op, 1..1001).unwrap_or(5) as u32,
        base_ejection: v.duration(o, "base_ejection", &op, Duration::from_secs(30)),
        max_ejection_percent: v.int(o, "max_ejection_percent", &op, 0..101).unwrap_or(50) as u32,
    })
}

fn agent(v: &mut V<'_>, t: &dyn TableLike, path: &str) -> Option<Agent> {
    let (a, _) = v.table(t, "agent", path)?;
    let ap = format!("{path}.agent");
    v.keys(a, &ap, &["path", "port", "interval", "timeout"]);
    Some(Agent {
        path: v
            .str(a, "path", &ap)
            .map(|(p, _)| p)
            .unwrap_or_else(|| "/agent".into()),
        port: v.int(a, "port", &ap, 1..65536).map(|p| p as u16),
        interval: v.duration(a, "interval", &ap, Duration::from_secs(5)),
        timeout: v.duration(a, "timeout", &ap, Duration::from_secs(2)),
    })
}
