//! Raw TOML -> [`Config`]. The document is walked by hand over `toml_edit`'s spanned tree instead of
//! through serde, because serde stops at the first problem and loses positions; an operator fixing
//! a file wants every problem, each with its line and column, in one pass.
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use toml_edit::{ImDocument, Item, TableLike};

use crate::error::{ConfigError, ValidationError};
use crate::model::*;
use crate::units::{parse_duration, parse_size};

type Span = Option<Range<usize>>;

/// Largest weight of one server or split entry; keeps totals far from overflow.
const MAX_WEIGHT: i64 = 1_000_000;

struct V<'t> {
    text: &'t str,
    errors: Vec<ValidationError>,
    /// Offset of the piece being checked within `text` (a route section parsed on its own).
    base: usize,
}

impl<'t> V<'t> {
    fn new(text: &'t str) -> Self {
        V {
            text,
            errors: Vec::new(),
            base: 0,
        }
    }
}

fn item_span(item: &Item) -> Span {
    match item {
        Item::Value(v) => v.span(),
        Item::Table(t) => t.span(),
        Item::ArrayOfTables(a) => a.span(),
        Item::None => None,
    }
}

impl<'t> V<'t> {
    fn push(&mut self, path: &str, span: &Span, message: impl Into<String>) {
        let offset = self.base + span.as_ref().map(|r| r.start).unwrap_or(0);
        let (line, column) = position(self.text, offset);
        self.errors.push(ValidationError {
            path: path.to_string(),
            line,
            column,
            message: message.into(),
        });
    }

    /// Reports keys that the schema does not know, pointing at the key itself.
    fn keys(&mut self, t: &dyn TableLike, path: &str, allowed: &[&str]) {
        for (k, _) in t.iter() {
            if !allowed.contains(&k) {
                let span = t
                    .key(k)
                    .and_then(|key| key.span())
                    .or_else(|| t.get(k).and_then(item_span));
                self.push(
                    &join(path, k),
                    &span,
                    format!(
                        "unknown key {k:?} (expected one of: {})",
                        allowed.join(", ")
                    ),
                );
            }
        }
    }

    fn get<'a>(&self, t: &'a dyn TableLike, key: &str) -> Option<(&'a Item, Span)> {
        t.get_key_value(key)
            .map(|(k, item)| (item, item_span(item).or_else(|| k.span())))
    }

    fn str(&mut self, t: &dyn TableLike, key: &str, path: &str) -> Option<(String, Span)> {
        let (item, span) = self.get(t, key)?;
        match item.as_str() {
            Some(s) => Some((s.to_string(), span)),
            None => {
                self.push(
                    &join(path, key),
                    &span,
                    format!("expected a string, found {}", item.type_name()),
                );
                None
            }
        }
    }

    /// A string that must be one of `options`' names; the value it stands for.
    fn choice<T: Copy>(
        &mut self,
        t: &dyn TableLike,
        key: &str,
        path: &str,
        options: &[(&str, T)],
    ) -> Option<T> {
        let (s, span) = self.str(t, key, path)?;
        if let Some((_, v)) = options.iter().find(|(name, _)| *name == s) {
            return Some(*v);
        }
        let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
        let expected = match names.split_last() {
            Some((last, [])) => last.to_string(),
            Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
            None => String::new(),
        };
        self.push(
            &join(path, key),
            &span,
            format!("unknown {key} {s:?} (expected {expected})"),
        );
        None
    }

    fn int(&mut self, t: &dyn TableLike, key: &str, path: &str, range: Range<i64>) -> Option<i64> {
        let (item, span) = self.get(t, key)?;
        match item.as_integer() {
            Some(n) if range.contains(&n) => Some(n),
            Some(n) => {
                self.push(
                    &join(path, key),
                    &span,
                    format!(
                        "{n} is out of range (allowed {}..={})",
                        range.start,
                        range.end - 1
                    ),
                );
                None
            }
            None => {
                self.push(
                    &join(path, key),
                    &span,
                    format!("expected an integer, found {}", item.type_name()),
                );
                None
            }
        }
    }

    fn bool(&mut self, t: &dyn TableLike, key: &str, path: &str) -> Option<bool> {
        let (item, span) = self.get(t, key)?;
        let b = item.as_bool();
        if b.is_none() {
            self.push(
                &join(path, key),
                &span,
                format!("expected true or false, found {}", item.type_name()),
            );
        }
        b
    }

    /// A duration written as `"30s"` or as an integer number of seconds.
    fn duration(
        &mut self,
        t: &dyn TableLike,
        key: &str,
        path: &str,
        default: Duration,
    ) -> Duration {
        let Some((item, span)) = self.get(t, key) else {
            return default;
        };
        let parsed = if let Some(n) = item.as_integer() {
            u64::try_from(n)
                .map(Duration::from_secs)
                .map_err(|_| format!("invalid duration {n}: must not be negative"))
        } else if let Some(s) = item.as_str() {
            parse_duration(s)
        } else {
            Err(format!(
                "expected a duration like \"30s\", found {}",
                item.type_name()
            ))
        };
        parsed.unwrap_or_else(|e| {
            self.push(&join(path, key), &span, e);
            default
        })
    }

    /// A size written as `"10m"` or as an integer number of bytes.
    fn size(&mut self, t: &dyn TableLike, key: &str, path: &str, default: u64) -> u64 {
        let Some((item, span)) = self.get(t, key) else {
            return default;
        };
        let parsed = if let Some(n) = item.as_integer() {
            u64::try_from(n).map_err(|_| format!("invalid size {n}: must not be negative"))
        } else if let Some(s) = item.as_str() {
            parse_size(s)
        } else {
            Err(format!(
                "expected a size like \"10m\", found {}",
                item.type_name()
            ))
        };
        parsed.unwrap_or_else(|e| {
            self.push(&join(path, key), &span, e);
            default
        })
    }

    /// A sub-table (`[a]` or `a = { .. }`); reports a wrong type.
    fn table<'a>(
        &mut self,
        t: &'a dyn TableLike,
        key: &str,
        path: &str,
    ) -> Option<(&'a dyn TableLike, Span)> {
        let (item, span) = self.get(t, key)?;
        match item.as_table_like() {
            Some(tl) => Some((tl, span)),
            None => {
                self.push(
                    &join(path, key),
                    &span,
                    format!("expected a table, found {}", item.type_name()),
                );
                None
            }
        }
    }

    /// A list of tables, written either as `[[key]]` sections or as an array of inline tables.
    fn tables<'a>(
        &mut self,
        t: &'a dyn TableLike,
        key: &str,
        path: &str,
    ) -> Vec<(&'a dyn TableLike, Span)> {
        let Some((item, span)) = self.get(t, key) else {
            return Vec::new();
        };
        if let Some(aot) = item.as_array_of_tables() {
            return aot
                .iter()
                .map(|t| (t as &dyn TableLike, t.span().or_else(|| span.clone())))
                .collect();
        }
        if let Some(arr) = item.as_array() {
            let mut out = Vec::new();
            for (i, v) in arr.iter().enumerate() {
                match v.as_inline_table() {
                    Some(it) => out.push((it as &dyn TableLike, v.span())),
                    None => self.push(
                        &format!("{}[{i}]", join(path, key)),
                        &v.span(),
                        format!("expected a table, found {}", v.type_name()),
                    ),
                }
            }
            return out;
        }
        self.push(
            &join(path, key),
            &span,
            format!("expected a list of tables, found {}", item.type_name()),
        );
        Vec::new()
    }

    /// A string or a list of strings.
    fn strings(&mut self, t: &dyn TableLike, key: &str, path: &str) -> Vec<(String, Span)> {
        let Some((item, span)) = self.get(t, key) else {
            return Vec::new();
        };
        if let Some(s) = item.as_str() {
            return vec![(s.to_string(), span)];
        }
        if let Some(arr) = item.as_array() {
            let mut out = Vec::new();
            for (i, v) in arr.iter().enumerate() {
                match v.as_str() {
                    Some(s) => out.push((s.to_string(), v.span())),
                    None => self.push(
                        &format!("{}[{i}]", join(path, key)),
                        &v.span(),
                        format!("expected a string, found {}", v.type_name()),
                    ),
                }
            }
            return out;
        }
        self.push(
            &join(path, key),
            &span,
            format!(
                "expected a string or a list of strings, found {}",
                item.type_name()
            ),
        );
        Vec::new()
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// 1-based line and character column of a byte offset.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// Top-level keys an `[environment.NAME]` section may override.
const OVERRIDABLE: &[&str] = &[
    "worker_threads",
    "state_dir",
    "shutdown_grace",
    "admin",
    "listener",
    "limits",
    "access_log",
    "log",
    "backup",
    "store",
    "guard",
    "metrics",
    "cluster",
    "trusted_proxies",
    "pool",
    "route",
];

/// What a `[region.NAME]` section may hold: pools and routes, each replacing the base's of the
/// same name (or added). Unlike an environment, which replaces a whole list, a region changes
/// only what differs there.
const REGION_KEYS: &[&str] = &["pool", "route"];

/// Where a configuration is read: the `[environment.*]` overlay, and the `[region.*]` overlay
/// of the node's region (a cluster node's `[cluster] region`).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Place<'a> {
    pub env: Option<&'a str>,
    pub region: Option<&'a str>,
}

/// Validates `text`; with `env`, the `[environment.<env>]` overlay is applied first. Without
/// `env`, the base and every environment overlay are validated, so a broken staging section is
/// caught before anyone selects it. With a region, its overlay is applied over that; without
/// one, every region overlay is validated too.
pub(crate) fn config(text: &str, env: Option<&str>) -> Result<Config, ConfigError> {
    config_at(text, Place { env, region: None })
}

/// [`config`] at a place (environment and region).
pub(crate) fn config_at(text: &str, at: Place<'_>) -> Result<Config, ConfigError> {
    if let Some(cut) = sections::route_sections(text) {
        if let Ok(doc) = ImDocument::parse(cut.rest.as_str()) {
            // Routes a region overrides merge into the base's list: that needs the list.
            let region_routes = doc
                .get("region")
                .and_then(|r| r.as_table_like())
                .is_some_and(|r| r.iter().any(|(_, t)| t.get("route").is_some()));
            if !doc.contains_key("route") && !region_routes {
                if let Some(result) = checked(text, doc.as_table(), Some(&cut.routes), at) {
                    return result;
                }
            }
        }
    }
    whole_document(text, at)
}

/// The plain path: one `toml_edit` document of the whole file.
fn whole_document(text: &str, env: Place<'_>) -> Result<Config, ConfigError> {
    let doc = match ImDocument::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            let mut v = V::new(text);
            let msg = e.message().trim().to_string();
            v.push("", &e.span(), format!("TOML syntax error: {msg}"));
            return Err(ConfigError::Invalid(v.errors));
        }
    };
    // Without sections nothing is unsure; the empty error list is never reached.
    checked(text, doc.as_table(), None, env).unwrap_or(Err(ConfigError::Invalid(Vec::new())))
}

/// Checks a parsed root (the whole file, or the file without its route sections); `None` when
/// a route section turned out not to be a plain `[[route]]` table.
fn checked(
    text: &str,
    root: &toml_edit::Table,
    routes: Option<&[Range<usize>]>,
    at: Place<'_>,
) -> Option<Result<Config, ConfigError>> {
    let mut v = V::new(text);
    let names = environments(&mut v, root);
    let regions = regions(&mut v, root);
    let Some(name) = at.env else {
        let base = match at.region {
            Some(r) => region_overlay(root, r),
            None => root.clone(),
        };
        let overlays = if at.region.is_some() {
            Vec::new()
        } else {
            regions
        };
        return every_environment(text, &base, routes, &names, &overlays, v);
    };
    if !names.iter().any(|n| n == name) {
        v.push(
            "environment",
            &Some(0..0),
            format!(
                "unknown environment {name:?} (defined: {})",
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            ),
        );
        return Some(Err(ConfigError::Invalid(v.errors)));
    }
    let merged = overlay(root, name);
    match at.region {
        Some(r) => validate_root(v, &region_overlay(&merged, r), routes),
        None => every_environment(text, &merged, routes, &[], &regions, v),
    }
}

/// The base and every environment overlay, their problems merged (an overlay's marked with its
/// name); the base's config when all are valid.
fn every_environment(
    text: &str,
    root: &toml_edit::Table,
    routes: Option<&[Range<usize>]>,
    names: &[String],
    regions: &[String],
    v: V<'_>,
) -> Option<Result<Config, ConfigError>> {
    let base = validate_root(v, root, routes)?;
    let mut errors = match &base {
        Ok(_) => Vec::new(),
        Err(e) => e.problems().to_vec(),
    };
    let overlays = names
        .iter()
        .map(|n| ("environment", n, overlay(root, n)))
        .chain(
            regions
                .iter()
                .map(|r| ("region", r, region_overlay(root, r))),
        );
    for (kind, name, merged) in overlays {
        if let Err(e) = validate_root(V::new(text), &merged, routes)? {
            for p in e.problems() {
                if !errors.contains(p) {
                    let mut p = p.clone();
                    p.message = format!("{} (in {kind} {name:?})", p.message);
                    errors.push(p);
                }
            }
        }
    }
    if errors.is_empty() {
        return Some(base);
    }
    errors.sort_by_key(|e| (e.line, e.column));
    errors.dedup_by(|a, b| a.line == b.line && a.column == b.column && a.path == b.path);
    Some(Err(ConfigError::Invalid(errors)))
}

/// Names of the `[environment.*]` sections, checking their keys.
fn environments(v: &mut V<'_>, root: &toml_edit::Table) -> Vec<String> {
    overlay_names(v, root, "environment", OVERRIDABLE)
}

/// Names of the `[region.*]` sections, checking their keys.
fn regions(v: &mut V<'_>, root: &toml_edit::Table) -> Vec<String> {
    overlay_names(v, root, "region", REGION_KEYS)
}

/// Names of the sections under `kind` (`environment`, `region`), checking their keys.
fn overlay_names(
    v: &mut V<'_>,
    root: &toml_edit::Table,
    kind: &str,
    allowed: &[&str],
) -> Vec<String> {
    let Some((sections, _)) = v.table(root, kind, "") else {
        return Vec::new();
    };
    let mut names = Vec::new();
    for (name, item) in sections.iter() {
        let path = format!("{kind}.{name}");
        match item.as_table_like() {
            Some(t) => {
                v.keys(t, &path, allowed);
                names.push(name.to_string());
            }
            None => v.push(
                &path,
                &item_span(item),
                format!("expected a table, found {}", item.type_name()),
            ),
        }
    }
    names
}

/// The root table with region `name`'s pools and routes laid over it, each replacing the
/// base's entry of the same name in place (or appended). A region without a section is the
/// base. Items keep their spans, so problems point into the region section.
fn region_overlay(root: &toml_edit::Table, name: &str) -> toml_edit::Table {
    let mut merged = root.clone();
    merged.remove("region");
    let Some(region) = root
        .get("region")
        .and_then(|r| r.get(name))
        .and_then(|r| r.as_table_like())
    else {
        return merged;
    };
    for key in REGION_KEYS {
        let Some(over) = region.get(key).and_then(tables_of) else {
            continue;
        };
        let mut list = toml_edit::ArrayOfTables::new();
        for t in merged.get(key).and_then(tables_of).unwrap_or_default() {
            list.push(t);
        }
        for t in over.iter() {
            let name = t.get("name").and_then(|n| n.as_str());
            let same = list
                .iter()
                .position(|b| name.is_some() && b.get("name").and_then(|n| n.as_str()) == name);
            match same {
                Some(i) => {
                    if let Some(slot) = list.get_mut(i) {
                        *slot = t.clone();
                    }
                }
                None => list.push(t.clone()),
            }
        }
        merged.insert(key, toml_edit::Item::ArrayOfTables(list));
    }
    merged
}

/// A list of tables as either form TOML writes it (`[[key]]` sections, or an array of inline
/// tables); `None` for anything else, which validation then reports.
fn tables_of(item: &toml_edit::Item) -> Option<Vec<toml_edit::Table>> {
    if let Some(aot) = item.as_array_of_tables() {
        return Some(aot.iter().cloned().collect());
    }
    item.as_array()?
        .iter()
        .map(|v| v.as_inline_table().map(|t| t.clone().into_table()))
        .collect()
}

/// The root table with environment `name` laid over it: `admin`, `limits` and `access_log` are
/// merged key by key, every other key is replaced whole. Items keep their spans, so problems in
/// an overlay point into the environment section.
fn overlay(root: &toml_edit::Table, name: &str) -> toml_edit::Table {
    let mut merged = root.clone();
    merged.remove("environment");
    let Some(env) = root
        .get("environment")
        .and_then(|e| e.get(name))
        .and_then(|e| e.as_table_like())
    else {
        return merged;
    };
    for (k, item) in env.iter() {
        let key = env
            .key(k)
            .cloned()
            .unwrap_or_else(|| toml_edit::Key::new(k));
        let mergeable = matches!(
            k,
            "admin" | "limits" | "access_log" | "log" | "backup" | "store"
        );
        let mut value = item.clone();
        if mergeable {
            if let (Some(base), Some(over)) = (merged.get(k).cloned(), item.as_table_like()) {
                let mut base = base;
                if let Some(bt) = base.as_table_like_mut() {
                    for (ok, oi) in over.iter() {
                        bt.insert(ok, oi.clone());
                    }
                    value = base;
                }
            }
        }
        merged.insert_formatted(&key, value);
    }
    merged
}

fn validate_root(
    mut v: V<'_>,
    root: &toml_edit::Table,
    sections: Option<&[Range<usize>]>,
) -> Option<Result<Config, ConfigError>> {
    let root: &dyn TableLike = root;
    let top: Vec<&str> = ["version", "environment", "region"]
        .into_iter()
        .chain(OVERRIDABLE.iter().copied())
        .collect();
    v.keys(root, "", &top);
    if let Some((item, span)) = v.get(root, "version") {
        if item.as_integer() != Some(1) {
            v.push(
                "version",
                &span,
                "unsupported config version (this nrdot reads version = 1)",
            );
        }
    }
    let worker_threads = v
        .int(root, "worker_threads", "", 1..1025)
        .map(|n| n as usize);
    let state_dir = v
        .str(root, "state_dir", "")
        .map(|(s, _)| PathBuf::from(s))
        .unwrap_or_else(|| PathBuf::from("/var/lib/nrdot"));
    let shutdown_grace = v.duration(root, "shutdown_grace", "", Duration::from_secs(30));

    let mut admin_bind: SocketAddr = ([127, 0, 0, 1], 8080).into();
    let mut admin_tls = None;
    let mut admin_session_idle = Duration::from_secs(30 * 60);
    if let Some((t, _)) = v.table(root, "admin", "") {
        v.keys(t, "admin", &["bind", "tls", "session_idle"]);
        admin_session_idle = v.duration(t, "session_idle", "admin", admin_session_idle);
        if admin_session_idle.is_zero() {
            let span = v.get(t, "session_idle").and_then(|(_, s)| s);
            v.push("admin.session_idle", &span, "must be longer than 0s");
        }
        if let Some((tt, _)) = v.table(t, "tls", "admin") {
            v.keys(tt, "admin.tls", &["cert", "key"]);
            match (
                v.str(tt, "cert", "admin.tls"),
                v.str(tt, "key", "admin.tls"),
            ) {
                (Some((c, _)), Some((k, _))) => {
                    admin_tls = Some(CertFiles {
                        cert: PathBuf::from(c),
                        key: PathBuf::from(k),
                    })
                }
                _ => {
                    let span = v.get(t, "tls").and_then(|(_, s)| s);
                    v.push("admin.tls", &span, "needs cert and key");
                }
            }
        }
        if let Some((s, span)) = v.str(t, "bind", "admin") {
            match s.parse() {
                Ok(a) => admin_bind = a,
                Err(_) => v.push(
                    "admin.bind",
                    &span,
                    format!("invalid address {s:?}: expected ip:port"),
                ),
            }
        }
    }

    let listeners = listeners(&mut v, root, admin_bind);
    let limits = limits(&mut v, root);
    let access_log = access_log(&mut v, root);
    let log = log(&mut v, root);
    let backup = backup(&mut v, root);
    let guard = guard(&mut v, root);
    let metrics = metrics(&mut v, root);
    let cluster = cluster(&mut v, root);
    let keep_versions = match v.table(root, "store", "") {
        Some((t, _)) => {
            v.keys(t, "store", &["keep_versions"]);
            v.int(t, "keep_versions", "store", 0..1_000_000_001)
                .map(|n| n as usize)
                .unwrap_or(DEFAULT_KEEP_VERSIONS)
        }
        None => DEFAULT_KEEP_VERSIONS,
    };
    let trusted_proxies = trusted(&mut v, root);
    let pools = pools(&mut v, root);
    let routes = match sections {
        Some(sections) if !root.contains_key("route") => {
            routes_in_sections(&mut v, sections, &pools)?
        }
        _ => routes(&mut v, root, &pools),
    };

    if !v.errors.is_empty() {
        v.errors.sort_by_key(|e| (e.line, e.column));
        return Some(Err(ConfigError::Invalid(v.errors)));
    }
    Some(Ok(Config {
        worker_threads,
        state_dir,
        shutdown_grace,
        admin_bind,
        admin_tls,
        admin_session_idle,
        listeners,
        limits,
        access_log,
        log,
        backup,
        guard,
        metrics,
        cluster,
        keep_versions,
        trusted_proxies,
        pools,
        routes,
    }))
}

fn listeners(v: &mut V<'_>, root: &dyn TableLike, admin: SocketAddr) -> Vec<Listener> {
    let mut out = Vec::new();
    let mut names = HashSet::new();
    let mut binds: HashMap<SocketAddr, String> = HashMap::new();
    let tables = v.tables(root, "listener", "");
    if tables.is_empty() && v.get(root, "listener").is_none() {
        v.push(
            "listener",
            &Some(0..0),
            "at least one [[listener]] with a name and a bind address is required",
        );
    }
    for (i, (t, tspan)) in tables.into_iter().enumerate() {
        let path = format!("listener[{i}]");
        v.keys(t, &path, &["name", "bind", "tls", "defer_accept"]);
        let name = match v.str(t, "name", &path) {
            Some((n, span)) => {
                if n.is_empty() {
                    v.push(&format!("{path}.name"), &span, "name must not be empty");
                } else if !names.insert(n.clone()) {
                    v.push(
                        &format!("{path}.name"),
                        &span,
                        format!("duplicate listener name {n:?}"),
                    );
                }
                n
            }
            None => {
                v.push(&path, &tspan, "missing key \"name\"");
                String::new()
            }
        };
        let Some((bind, span)) = v.str(t, "bind", &path) else {
            v.push(&path, &tspan, "missing key \"bind\"");
            continue;
        };
        let Ok(addr) = bind.parse::<SocketAddr>() else {
            v.push(
                &format!("{path}.bind"),
                &span,
                format!("invalid address {bind:?}: expected ip:port, like 0.0.0.0:80 or [::]:443"),
            );
            continue;
        };
        // Port 0 asks the kernel for a free port, so two of them never collide.
        if let Some(other) = binds
            .insert(addr, name.clone())
            .filter(|_| addr.port() != 0)
        {
            v.push(
                &format!("{path}.bind"),
                &span,
                format!("address {addr} is already bound by listener {other:?}"),
            );
        }
        if addr == admin && addr.port() != 0 {
            v.push(
                &format!("{path}.bind"),
                &span,
                format!("address {addr} is also the admin address"),
            );
        }
        let tls = tls::listener(v, t, &path);
        let defer_accept = v.bool(t, "defer_accept", &path).unwrap_or(true);
        out.push(Listener {
            name,
            bind: addr,
            tls,
            defer_accept,
        });
    }
    out
}

fn limits(v: &mut V<'_>, root: &dyn TableLike) -> Limits {
    let d = Limits::default();
    let Some((t, _)) = v.table(root, "limits", "") else {
        return d;
    };
    let p = "limits";
    v.keys(
        t,
        p,
        &[
            "client_max_body_size",
            "client_header_timeout",
            "client_body_timeout",
            "keepalive_timeout",
            "keepalive_requests",
            "max_request_line",
            "max_header_size",
            "max_headers",
            "tunnel_idle_timeout",
            "max_connections",
        ],
    );
    let mut limits = Limits {
        client_max_body_size: v.size(t, "client_max_body_size", p, d.client_max_body_size),
        client_header_timeout: v.duration(t, "client_header_timeout", p, d.client_header_timeout),
        client_body_timeout: v.duration(t, "client_body_timeout", p, d.client_body_timeout),
        keepalive_timeout: v.duration(t, "keepalive_timeout", p, d.keepalive_timeout),
        keepalive_requests: v
            .int(t, "keepalive_requests", p, 1..i64::MAX)
            .map(|n| n as u64)
            .unwrap_or(d.keepalive_requests),
        max_request_line: v.size(t, "max_request_line", p, d.max_request_line),
        max_header_size: v.size(t, "max_header_size", p, d.max_header_size),
        max_headers: v
            .int(t, "max_headers", p, 1..10_001)
            .map(|n| n as usize)
            .unwrap_or(d.max_headers),
        tunnel_idle_timeout: v.duration(t, "tunnel_idle_timeout", p, d.tunnel_idle_timeout),
        max_connections: v
            .int(t, "max_connections", p, 0..100_000_001)
            .map(|n| n as usize)
            .unwrap_or(d.max_connections),
    };
    // hyper cannot buffer a request head in less than 8 KiB; smaller values would only
    // pretend to be enforced.
    if limits.max_header_size < 8192 {
        let span = v.get(t, "max_header_size").and_then(|(_, s)| s);
        v.push("limits.max_header_size", &span, "must be at least 8k");
        limits.max_header_size = 8192;
    }
    if limits.max_header_size > 1024 * 1024 {
        let span = v.get(t, "max_header_size").and_then(|(_, s)| s);
        v.push("limits.max_header_size", &span, "must be at most 1m");
    }
    limits
}

fn access_log(v: &mut V<'_>, root: &dyn TableLike) -> AccessLog {
    let mut log = AccessLog {
        enabled: true,
        path: "-".to_string(),
        format: AccessLogFormat::Combined,
    };
    let Some((t, _)) = v.table(root, "access_log", "") else {
        return log;
    };
    v.keys(t, "access_log", &["enabled", "path", "format"]);
    if let Some(b) = v.bool(t, "enabled", "access_log") {
        log.enabled = b;
    }
    if let Some((p, span)) = v.str(t, "path", "access_log") {
        if p.is_empty() {
            v.push(
                "access_log.path",
                &span,
                "path must not be empty (use \"-\" for stdout)",
            );
        }
        log.path = p;
    }
    let formats = [
        ("combined", AccessLogFormat::Combined),
        ("json", AccessLogFormat::Json),
    ];
    if let Some(f) = v.choice(t, "format", "access_log", &formats) {
        log.format = f;
    }
    log
}

fn log(v: &mut V<'_>, root: &dyn TableLike) -> Logging {
    let mut log = Logging::default();
    let Some((t, _)) = v.table(root, "log", "") else {
        return log;
    };
    v.keys(t, "log", &["level", "file", "format"]);
    let levels = ["error", "warn", "info", "debug", "trace"].map(|l| (l, l));
    if let Some(l) = v.choice(t, "level", "log", &levels) {
        log.level = l.to_string();
    }
    if let Some((f, span)) = v.str(t, "file", "log") {
        if f.is_empty() {
            v.push(
                "log.file",
                &span,
                "must not be empty (use \"-\" for stderr)",
            );
        }
        log.file = f;
    }
    let formats = [("text", LogFormat::Text), ("json", LogFormat::Json)];
    if let Some(f) = v.choice(t, "format", "log", &formats) {
        log.format = f;
    }
    log
}

fn backup(v: &mut V<'_>, root: &dyn TableLike) -> Option<Backup> {
    let (t, _) = v.table(root, "backup", "")?;
    let p = "backup";
    v.keys(
        t,
        p,
        &["interval", "dir", "keep_days", "keep_last", "key_file"],
    );
    let d = Backup::default();
    let interval = v.duration(t, "interval", p, d.interval);
    if interval < Duration::from_secs(1) {
        let span = v.get(t, "interval").and_then(|(_, s)| s);
        v.push("backup.interval", &span, "must be at least 1s");
    }
    Some(Backup {
        interval,
        dir: v
            .str(t, "dir", p)
            .map(|(s, _)| PathBuf::from(s))
            .unwrap_or(d.dir),
        keep_days: v
            .int(t, "keep_days", p, 0..36_501)
            .map(|n| n as u64)
            .unwrap_or(d.keep_days),
        keep_last: v
            .int(t, "keep_last", p, 0..1_000_001)
            .map(|n| n as usize)
            .unwrap_or(d.keep_last),
        key_file: v
            .str(t, "key_file", p)
            .map(|(s, _)| PathBuf::from(s))
            .unwrap_or(d.key_file),
    })
}

fn guard(v: &mut V<'_>, root: &dyn TableLike) -> Guard {
    let d = Guard::default();
    let Some((t, _)) = v.table(root, "guard", "") else {
        return d;
    };
    let p = "guard";
    v.keys(
        t,
        p,
        &[
            "window",
            "max_error_rate",
            "error_for",
            "min_requests",
            "min_healthy",
            "healthy_for",
        ],
    );
    let window = v
        .get(t, "window")
        .map(|_| v.duration(t, "window", p, Duration::ZERO));
    let percent = |v: &mut V<'_>, key: &str, default: f64| -> f64 {
        match v.str(t, key, p) {
            None => default,
            Some((s, span)) => match s.trim().trim_end_matches('%').parse::<f64>() {
                Ok(x) if (0.0..=100.0).contains(&x) => x / 100.0,
                _ => {
                    v.push(
                        &format!("guard.{key}"),
                        &span,
                        format!("{s:?} is not a percentage like \"5%\""),
                    );
                    default
                }
            },
        }
    };
    let g = Guard {
        window,
        max_error_rate: percent(v, "max_error_rate", d.max_error_rate),
        error_for: v.duration(t, "error_for", p, d.error_for),
        min_requests: v
            .int(t, "min_requests", p, 0..i64::MAX)
            .map(|n| n as u64)
            .unwrap_or(d.min_requests),
        min_healthy: percent(v, "min_healthy", d.min_healthy),
        healthy_for: v.duration(t, "healthy_for", p, d.healthy_for),
    };
    if let Some(w) = g.window {
        if w < g.error_for {
            let span = v.get(t, "window").and_then(|(_, s)| s);
            v.push("guard.window", &span, "must be at least error_for: a shorter guard could never see a whole analysis window");
        }
    }
    g
}

fn metrics(v: &mut V<'_>, root: &dyn TableLike) -> Metrics {
    let Some((t, _)) = v.table(root, "metrics", "") else {
        return Metrics::default();
    };
    v.keys(t, "metrics", &["per_route", "routes"]);
    let per_route = v.bool(t, "per_route", "metrics").unwrap_or(false);
    let mut routes = Vec::new();
    for (i, (pattern, span)) in v.strings(t, "routes", "metrics").into_iter().enumerate() {
        if pattern.is_empty() {
            v.push(
                &format!("metrics.routes[{i}]"),
                &span,
                "an empty pattern matches no route: name one, or use \"*\" (per_route = true)",
            );
        }
        routes.push(pattern);
    }
    Metrics { per_route, routes }
}

fn cluster(v: &mut V<'_>, root: &dyn TableLike) -> Option<Cluster> {
    let (t, span) = v.table(root, "cluster", "")?;
    v.keys(
        t,
        "cluster",
        &[
            "etcd",
            "node",
            "region",
            "prefix",
            "user",
            "password_file",
            "ca_file",
            "cert_file",
            "key_file",
        ],
    );
    let mut etcd = Vec::new();
    for (i, (e, espan)) in v.strings(t, "etcd", "cluster").into_iter().enumerate() {
        let rest = e
            .strip_prefix("http://")
            .or_else(|| e.strip_prefix("https://"));
        if !rest.is_some_and(|r| !r.is_empty() && !r.contains('/')) {
            v.push(
                &format!("cluster.etcd[{i}]"),
                &espan,
                format!("invalid etcd endpoint {e:?}: expected http://host:port"),
            );
        }
        etcd.push(e);
    }
    if etcd.is_empty() {
        v.push("cluster.etcd", &span, "needs at least one etcd endpoint");
    }
    let node = match v.str(t, "node", "cluster") {
        Some((n, nspan)) => {
            if !valid_name(&n) {
                v.push(
                    "cluster.node",
                    &nspan,
                    format!("invalid node name {n:?}: use letters, digits, '-', '_' and '.'"),
                );
            }
            n
        }
        None => {
            v.push("cluster", &span, "missing key \"node\" (this node's name)");
            String::new()
        }
    };
    let region = v
        .str(t, "region", "cluster")
        .map(|(r, _)| r)
        .unwrap_or_else(|| "default".into());
    let prefix = v
        .str(t, "prefix", "cluster")
        .map(|(p, _)| p.trim_end_matches('/').to_string())
        .unwrap_or_else(|| "/nrdot".into());
    let access = cluster_access(v, t, &span, &etcd);
    Some(Cluster {
        etcd,
        node,
        region,
        prefix,
        access,
    })
}

/// `[cluster]` credentials and TLS for etcd: pairs that need each other, and TLS files only
/// with `https://` endpoints.
fn cluster_access(
    v: &mut V<'_>,
    t: &dyn TableLike,
    span: &Span,
    etcd: &[String],
) -> crate::model::EtcdAccess {
    let path = |v: &mut V<'_>, key: &str| v.str(t, key, "cluster").map(|(p, _)| PathBuf::from(p));
    let user = v.str(t, "user", "cluster").map(|(u, _)| u);
    let password_file = path(v, "password_file");
    let (ca_file, cert_file, key_file) = (
        path(v, "ca_file"),
        path(v, "cert_file"),
        path(v, "key_file"),
    );
    if user.is_some() != password_file.is_some() {
        v.push("cluster", span, "user and password_file go together");
    }
    if cert_file.is_some() != key_file.is_some() {
        v.push("cluster", span, "cert_file and key_file go together");
    }
    let https = etcd.iter().any(|e| e.starts_with("https://"));
    if https && ca_file.is_none() {
        v.push(
            "cluster",
            span,
            "https:// etcd endpoints need ca_file (the CA that signed etcd's certificate)",
        );
    }
    if !https && (ca_file.is_some() || cert_file.is_some()) {
        v.push(
            "cluster",
            span,
            "ca_file, cert_file and key_file need https:// etcd endpoints",
        );
    }
    crate::model::EtcdAccess {
        user,
        password_file,
        ca_file,
        cert_file,
        key_file,
    }
}

fn trusted(v: &mut V<'_>, root: &dyn TableLike) -> Vec<Cidr> {
    let mut out = Vec::new();
    for (i, (s, span)) in v
        .strings(root, "trusted_proxies", "")
        .into_iter()
        .enumerate()
    {
        match parse_cidr(&s) {
            Some(c) => out.push(c),
            None => v.push(
                &format!("trusted_proxies[{i}]"),
                &span,
                format!("invalid network {s:?}: expected an address or address/prefix"),
            ),
        }
    }
    out
}

fn parse_cidr(s: &str) -> Option<Cidr> {
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a.parse::<IpAddr>().ok()?, Some(p.parse::<u8>().ok()?)),
        None => (s.parse::<IpAddr>().ok()?, None),
    };
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = prefix.unwrap_or(max);
    (prefix <= max).then_some(Cidr { addr, prefix })
}

/// `host:port` where host is an IP literal or a DNS name.
fn valid_address(s: &str) -> bool {
    if s.parse::<SocketAddr>().is_ok() {
        return true;
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return false;
    };
    if port.parse::<u16>().map(|p| p == 0).unwrap_or(true) {
        return false;
    }
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
        })
}

fn pools(v: &mut V<'_>, root: &dyn TableLike) -> Vec<Pool> {
    let mut out = Vec::new();
    let mut names = HashSet::new();
    for (i, (t, tspan)) in v.tables(root, "pool", "").into_iter().enumerate() {
        let path = format!("pool[{i}]");
        v.keys(
            t,
            &path,
            &[
                "name",
                "lb",
                "keepalive",
                "keepalive_idle_timeout",
                "connect_timeout",
                "response_timeout",
                "server",
                "hash_key",
                "slow_start",
                "when_unavailable",
                "max_connections",
                "retries",
                "retry_on",
                "retry_budget",
                "health_check",
                "outlier",
                "agent",
                "tls",
                "prefer_region",
            ],
        );
        let name = unique_name(v, t, &path, &tspan, "pool", &mut names);
        let prefer_region = v.bool(t, "prefer_region", &path).unwrap_or(false);
        let lb = lb_policy(v, t, &path);
        let keepalive = v
            .int(t, "keepalive", &path, 0..100_001)
            .map(|n| n as usize)
            .unwrap_or(32);
        let keepalive_idle_timeout =
            v.duration(t, "keepalive_idle_timeout", &path, Duration::from_secs(60));
        let connect_timeout = v.duration(t, "connect_timeout", &path, Duration::from_secs(5));
        let response_timeout = v.duration(t, "response_timeout", &path, Duration::from_secs(60));
        for (key, d) in [
            ("connect_timeout", connect_timeout),
            ("response_timeout", response_timeout),
        ] {
            if d.is_zero() {
                let span = v.get(t, key).and_then(|(_, s)| s);
                v.push(&format!("{path}.{key}"), &span, "must be greater than zero");
            }
        }
        let servers = servers(v, t, &path, &tspan, &name);
        let r = resilience::pool(v, t, &path, &tspan, lb);
        out.push(Pool {
            name,
            lb,
            keepalive,
            keepalive_idle_timeout,
            connect_timeout,
            response_timeout,
            hash_key: r.hash_key,
            slow_start: r.slow_start,
            when_unavailable: r.when_unavailable,
            max_connections: r.max_connections,
            retries: r.retries,
            retry_on: r.retry_on,
            retry_budget_percent: r.retry_budget_percent,
            health_check: r.health_check,
            outlier: r.outlier,
            agent: r.agent,
            tls: tls::upstream(v, t, &path),
            servers,
            prefer_region,
        });
    }
    out
}

/// A pool's `lb` policy (round robin when absent or unknown, the latter reported).
fn lb_policy(v: &mut V<'_>, t: &dyn TableLike, path: &str) -> Lb {
    match v.str(t, "lb", path) {
        None => Lb::RoundRobin,
        Some((s, span)) => match s.as_str() {
            "round_robin" => Lb::RoundRobin,
            "random" => Lb::Random,
            "least_requests" => Lb::LeastRequests,
            "hash" => Lb::Hash,
            _ => {
                v.push(
                    &format!("{path}.lb"),
                    &span,
                    format!("unknown policy {s:?} (expected round_robin, random, least_requests or hash)"),
                );
                Lb::RoundRobin
            }
        },
    }
}

/// A pool's `[[pool.server]]` entries: addresses well-formed and unique, not all of weight 0.
fn servers(v: &mut V<'_>, t: &dyn TableLike, path: &str, tspan: &Span, name: &str) -> Vec<Server> {
    let mut servers = Vec::new();
    let mut seen = HashSet::new();
    let server_tables = v.tables(t, "server", path);
    if server_tables.is_empty() {
        v.push(path, tspan, "a pool needs at least one [[pool.server]]");
    }
    for (j, (s, sspan)) in server_tables.into_iter().enumerate() {
        let spath = format!("{path}.server[{j}]");
        v.keys(s, &spath, &["address", "weight", "region"]);
        let region = v.str(s, "region", &spath).map(|(r, _)| r);
        let weight = v
            .int(s, "weight", &spath, 0..MAX_WEIGHT + 1)
            .map(|n| n as u32)
            .unwrap_or(1);
        match v.str(s, "address", &spath) {
            Some((addr, span)) => {
                if !valid_address(&addr) {
                    v.push(
                        &format!("{spath}.address"),
                        &span,
                        format!("invalid address {addr:?}: expected host:port, like 10.0.0.5:8080"),
                    );
                } else if !seen.insert(addr.clone()) {
                    v.push(
                        &format!("{spath}.address"),
                        &span,
                        format!("duplicate server {addr:?} in pool {name:?}"),
                    );
                }
                servers.push(Server {
                    address: addr,
                    weight,
                    region,
                });
            }
            None => v.push(&spath, &sspan, "missing key \"address\""),
        }
    }
    if !servers.is_empty() && servers.iter().all(|s| s.weight == 0) {
        v.push(
            path,
            tspan,
            format!("all servers of pool {name:?} have weight 0: it could never serve"),
        );
    }
    servers
}

/// Reads `name`: present, well-formed and unique among `names` (`kind` words the errors).
fn unique_name(
    v: &mut V<'_>,
    t: &dyn TableLike,
    path: &str,
    tspan: &Span,
    kind: &str,
    names: &mut HashSet<String>,
) -> String {
    match v.str(t, "name", path) {
        Some((n, span)) => {
            if !valid_name(&n) {
                v.push(
                    &format!("{path}.name"),
                    &span,
                    format!("invalid {kind} name {n:?}: use letters, digits, '-', '_' and '.'"),
                );
            } else if !names.insert(n.clone()) {
                v.push(
                    &format!("{path}.name"),
                    &span,
                    format!("duplicate {kind} name {n:?}"),
                );
            }
            n
        }
        None => {
            v.push(path, tspan, "missing key \"name\"");
            String::new()
        }
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn valid_host(h: &str) -> bool {
    let rest = h.strip_prefix("*.").unwrap_or(h);
    !rest.is_empty()
        && !rest.contains('*')
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

fn valid_header_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn routes(v: &mut V<'_>, root: &dyn TableLike, pools: &[Pool]) -> Vec<Route> {
    let mut checks = RouteChecks::new(pools);
    v.tables(root, "route", "")
        .into_iter()
        .enumerate()
        .map(|(i, (t, tspan))| checks.route(v, t, &tspan, i))
        .collect()
}

/// The routes of a file cut into sections, each parsed, checked and dropped in turn; `None`
/// when a section is not exactly one `[[route]]` table (the caller then parses the whole file).
fn routes_in_sections(
    v: &mut V<'_>,
    sections: &[Range<usize>],
    pools: &[Pool],
) -> Option<Vec<Route>> {
    let mut checks = RouteChecks::new(pools);
    let mut out = Vec::with_capacity(sections.len());
    let text = v.text;
    for (i, range) in sections.iter().enumerate() {
        let doc = ImDocument::parse(text.get(range.clone())?).ok()?;
        let root = doc.as_table();
        let tables = root.get("route")?.as_array_of_tables()?;
        if root.len() != 1 || tables.len() != 1 {
            return None;
        }
        let t = tables.get(0)?;
        v.base = range.start;
        out.push(checks.route(v, t, &t.span(), i));
        v.base = 0;
    }
    Some(out)
}

/// What checking one route needs to know of the others: pool names, route names and matches
/// taken so far.
struct RouteChecks<'p> {
    pool_names: HashSet<&'p str>,
    names: HashSet<String>,
    matches: HashMap<(String, String, Option<HeaderMatch>), String>,
}

impl<'p> RouteChecks<'p> {
    fn new(pools: &'p [Pool]) -> Self {
        RouteChecks {
            pool_names: pools.iter().map(|p| p.name.as_str()).collect(),
            names: HashSet::new(),
            matches: HashMap::new(),
        }
    }

    fn route(&mut self, v: &mut V<'_>, t: &dyn TableLike, tspan: &Span, i: usize) -> Route {
        let path = format!("route[{i}]");
        v.keys(
            t,
            &path,
            &[
                "name",
                "host",
                "path",
                "header",
                "pool",
                "split",
                "sticky",
                "override",
                "retry_unsafe",
                "https_redirect",
                "hsts",
            ],
        );
        let name = unique_name(v, t, &path, tspan, "route", &mut self.names);
        let mut hosts = Vec::new();
        for (j, (h, span)) in v.strings(t, "host", &path).into_iter().enumerate() {
            let h = h.to_ascii_lowercase();
            if !valid_host(&h) {
                v.push(
                    &format!("{path}.host[{j}]"),
                    &span,
                    format!(
                        "invalid host {h:?}: expected a name like example.com or *.example.com"
                    ),
                );
            }
            hosts.push(h);
        }
        let route_path = match v.str(t, "path", &path) {
            Some((p, span)) => {
                if !p.starts_with('/') {
                    v.push(
                        &format!("{path}.path"),
                        &span,
                        format!("path prefix {p:?} must start with '/'"),
                    );
                }
                p
            }
            None => "/".to_string(),
        };
        let header = route_header(v, t, &path);
        let split = route_split(v, t, &path, tspan, &self.pool_names);
        let sticky = route_sticky(v, t, &path);
        let (override_header, override_cookie) = route_override(v, t, &path);
        let retry_unsafe = v.bool(t, "retry_unsafe", &path).unwrap_or(false);
        let https_redirect = v.bool(t, "https_redirect", &path).unwrap_or(false);
        let hsts = match v.str(t, "hsts", &path) {
            Some((h, span)) => {
                if !h.starts_with("max-age=") {
                    v.push(&format!("{path}.hsts"), &span, "expected a Strict-Transport-Security value like \"max-age=31536000; includeSubDomains\"");
                }
                Some(h)
            }
            None => None,
        };
        let route = Route {
            name,
            hosts,
            path: route_path,
            header,
            split,
            sticky,
            override_header,
            override_cookie,
            retry_unsafe,
            https_redirect,
            hsts,
        };
        self.unique_match(v, t, tspan, &path, &route);
        route
    }

    /// Reports a route that matches exactly what an earlier one matches (host, path, header).
    fn unique_match(
        &mut self,
        v: &mut V<'_>,
        t: &dyn TableLike,
        tspan: &Span,
        path: &str,
        r: &Route,
    ) {
        let (name, route_path) = (&r.name, &r.path);
        let any = [String::new()];
        let host_keys = if r.hosts.is_empty() {
            &any[..]
        } else {
            &r.hosts
        };
        for h in host_keys {
            let key = (h.clone(), route_path.clone(), r.header.clone());
            if let Some(other) = self.matches.insert(key, name.clone()) {
                let span = v
                    .get(t, "path")
                    .and_then(|(_, s)| s)
                    .or_else(|| tspan.clone());
                v.push(
                    path,
                    &span,
                    format!(
                        "route {name:?} matches exactly what route {other:?} matches (host {:?}, path {route_path:?}); one of them could never be used",
                        if h.is_empty() { "*" } else { h.as_str() }
                    ),
                );
            }
        }
    }
}

/// A route's `override`: the header and/or cookie that force a pool by name.
fn route_override(
    v: &mut V<'_>,
    t: &dyn TableLike,
    path: &str,
) -> (Option<String>, Option<String>) {
    let Some((o, ospan)) = v.table(t, "override", path) else {
        return (None, None);
    };
    let op = format!("{path}.override");
    v.keys(o, &op, &["header", "cookie"]);
    let header = v.str(o, "header", &op).map(|(h, span)| {
        if !valid_header_name(&h) {
            v.push(
                &format!("{op}.header"),
                &span,
                format!("invalid header name {h:?}"),
            );
        }
        h.to_ascii_lowercase()
    });
    let cookie = v.str(o, "cookie", &op).map(|(c, _)| c);
    if header.is_none() && cookie.is_none() {
        v.push(&op, &ospan, "set \"header\", \"cookie\" or both");
    }
    (header, cookie)
}

/// A route's `header` condition: a valid name, and a value to match or none (presence).
fn route_header(v: &mut V<'_>, t: &dyn TableLike, path: &str) -> Option<HeaderMatch> {
    match v.table(t, "header", path) {
        Some((h, hspan)) => {
            let hp = format!("{path}.header");
            v.keys(h, &hp, &["name", "value"]);
            match v.str(h, "name", &hp) {
                Some((n, span)) => {
                    if !valid_header_name(&n) {
                        v.push(
                            &format!("{hp}.name"),
                            &span,
                            format!("invalid header name {n:?}"),
                        );
                    }
                    Some(HeaderMatch {
                        name: n.to_ascii_lowercase(),
                        value: v.str(h, "value", &hp).map(|(s, _)| s),
                    })
                }
                None => {
                    v.push(&hp, &hspan, "missing key \"name\"");
                    None
                }
            }
        }
        None => None,
    }
}

/// A route's `sticky` key: exactly one of a cookie or a header, with a valid name.
fn route_sticky(v: &mut V<'_>, t: &dyn TableLike, path: &str) -> Option<Sticky> {
    match v.table(t, "sticky", path) {
        Some((s, sspan)) => {
            let sp = format!("{path}.sticky");
            v.keys(s, &sp, &["cookie", "header"]);
            let cookie = v.str(s, "cookie", &sp);
            let header = v.str(s, "header", &sp);
            match (cookie, header) {
                (Some((c, span)), None) => {
                    if !valid_header_name(&c) {
                        v.push(
                            &format!("{sp}.cookie"),
                            &span,
                            format!("invalid cookie name {c:?}"),
                        );
                    }
                    Some(Sticky::Cookie(c))
                }
                (None, Some((h, span))) => {
                    if !valid_header_name(&h) {
                        v.push(
                            &format!("{sp}.header"),
                            &span,
                            format!("invalid header name {h:?}"),
                        );
                    }
                    Some(Sticky::Header(h.to_ascii_lowercase()))
                }
                _ => {
                    v.push(&sp, &sspan, "set exactly one of \"cookie\" or \"header\"");
                    None
                }
            }
        }
        None => None,
    }
}

fn route_split(
    v: &mut V<'_>,
    t: &dyn TableLike,
    path: &str,
    tspan: &Span,
    pools: &HashSet<&str>,
) -> Vec<SplitEntry> {
    let mut split = Vec::new();
    let single = v.str(t, "pool", path);
    let has_split = v.get(t, "split").is_some();
    match (single, has_split) {
        (Some(_), true) => {
            v.push(path, tspan, "set either \"pool\" or \"split\", not both");
        }
        (None, false) => {
            v.push(path, tspan, "a route needs \"pool\" or \"split\"");
        }
        (Some((p, span)), false) => {
            if !pools.contains(p.as_str()) {
                v.push(
                    &format!("{path}.pool"),
                    &span,
                    format!("undefined pool {p:?}"),
                );
            }
            split.push(SplitEntry { pool: p, weight: 1 });
        }
        (None, true) => {
            let sp = format!("{path}.split");
            let mut seen = HashSet::new();
            for (j, (s, sspan)) in v.tables(t, "split", path).into_iter().enumerate() {
                let ep = format!("{sp}[{j}]");
                v.keys(s, &ep, &["pool", "weight"]);
                let weight = match v.int(s, "weight", &ep, 0..MAX_WEIGHT + 1) {
                    Some(w) => w as u32,
                    None => {
                        if v.get(s, "weight").is_none() {
                            v.push(&ep, &sspan, "missing key \"weight\"");
                        }
                        0
                    }
                };
                match v.str(s, "pool", &ep) {
                    Some((p, span)) => {
                        if !pools.contains(p.as_str()) {
                            v.push(
                                &format!("{ep}.pool"),
                                &span,
                                format!("undefined pool {p:?}"),
                            );
                        } else if !seen.insert(p.clone()) {
                            v.push(
                                &format!("{ep}.pool"),
                                &span,
                                format!("pool {p:?} appears twice in this split"),
                            );
                        }
                        split.push(SplitEntry { pool: p, weight });
                    }
                    None => v.push(&ep, &sspan, "missing key \"pool\""),
                }
            }
            let span = v.get(t, "split").and_then(|(_, s)| s);
            if split.is_empty() {
                v.push(&sp, &span, "a split needs at least one pool");
            } else if split.iter().all(|e| e.weight == 0) {
                v.push(
                    &sp,
                    &span,
                    "all weights of this split are 0: it could never route",
                );
            }
        }
    }
    split
}

mod resilience;
mod sections;
#[cfg(test)]
mod tests;
mod tls;
