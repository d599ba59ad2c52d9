//! `nrdot config validate | lint | test`: verbs that read files and need no running nrdot, so
//! they run in CI before a change is applied.
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use nrdot_config::split::stable_hash;
use nrdot_config::{Config, RouteTable, Sticky};
use serde_json::json;

fn read(file: &Path) -> Result<String, ExitCode> {
    std::fs::read_to_string(file).map_err(|e| {
        eprintln!("nrdot: cannot read {}: {e}", file.display());
        ExitCode::from(2)
    })
}

fn load(file: &Path, environment: Option<&str>) -> Result<Config, ExitCode> {
    let text = read(file)?;
    Config::from_toml_env(&text, environment).map_err(|e| {
        eprint!("{}", e.render(&file.display().to_string()));
        eprintln!("{}: {} problem(s)", file.display(), e.problems().len());
        ExitCode::from(1)
    })
}

/// Expands quoted globs (`--file 'config/*.toml'`, as the playbook's CI step writes them);
/// other paths pass as they are. A pattern that matches nothing is an error.
pub fn expand(files: &[std::path::PathBuf]) -> Result<Vec<std::path::PathBuf>, ExitCode> {
    let mut out = Vec::new();
    for f in files {
        let text = f.to_string_lossy();
        if !text.contains(['*', '?', '[']) {
            out.push(f.clone());
            continue;
        }
        let matched: Vec<_> = glob::glob(&text)
            .map_err(|e| {
                eprintln!("nrdot: bad pattern {text:?}: {e}");
                ExitCode::from(2)
            })?
            .flatten()
            .collect();
        if matched.is_empty() {
            eprintln!("nrdot: no file matches {text:?}");
            return Err(ExitCode::from(2));
        }
        out.extend(matched);
    }
    Ok(out)
}

/// `config test`'s defaults: the file (`./nrdot.toml`, else `/etc/nrdot/nrdot.toml`) and its
/// cases (`cases/ENV.toml`, else `cases.toml`, beside it), when not given.
pub fn test_inputs(
    file: Option<std::path::PathBuf>,
    environment: Option<&str>,
    cases: Option<std::path::PathBuf>,
) -> (std::path::PathBuf, Option<std::path::PathBuf>) {
    let file = file.unwrap_or_else(|| {
        let local = std::path::PathBuf::from("nrdot.toml");
        if local.exists() {
            local
        } else {
            std::path::PathBuf::from("/etc/nrdot/nrdot.toml")
        }
    });
    let cases = cases.or_else(|| {
        let dir = file.parent().unwrap_or(Path::new("."));
        let per_env = environment.map(|e| dir.join("cases").join(format!("{e}.toml")));
        per_env
            .into_iter()
            .chain([dir.join("cases.toml")])
            .find(|p| p.exists())
    });
    (file, cases)
}

/// `config validate`: 0 valid, 1 invalid (every problem printed), 2 unreadable.
pub fn validate(file: &Path, environment: Option<&str>, json_out: bool) -> ExitCode {
    match load(file, environment) {
        Ok(c) => {
            if json_out {
                println!(
                    "{}",
                    json!({"valid": true, "listeners": c.listeners.len(), "pools": c.pools.len(), "routes": c.routes.len()})
                );
            } else {
                println!(
                    "{}: OK ({} listener(s), {} pool(s), {} route(s))",
                    file.display(),
                    c.listeners.len(),
                    c.pools.len(),
                    c.routes.len()
                );
            }
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

/// `config lint`: warnings on stdout; exit 1 only with `--strict` and warnings.
pub fn lint(file: &Path, environment: Option<&str>, strict: bool, json_out: bool) -> ExitCode {
    let config = match load(file, environment) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let mut warnings = nrdot_config::lint::lint(&config);
    warnings.extend(certificate_warnings(&config));
    if json_out {
        let list: Vec<_> = warnings
            .iter()
            .map(|w| json!({"path": w.path, "message": w.message}))
            .collect();
        println!("{}", json!({ "warnings": list }));
    } else {
        for w in &warnings {
            println!("{}: warning: {}: {}", file.display(), w.path, w.message);
        }
        println!("{}: {} warning(s)", file.display(), warnings.len());
    }
    if strict && !warnings.is_empty() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// Certificates that expire within two weeks, or cannot be loaded at all.
pub fn certificate_warnings(config: &Config) -> Vec<nrdot_config::lint::Warning> {
    let mut out = Vec::new();
    for (i, l) in config.listeners.iter().enumerate() {
        let Some(tls) = &l.tls else { continue };
        let path = format!("listener[{i}].tls");
        match nrdot_proxy::tls::CertSet::load(tls) {
            Ok(set) => {
                for c in &set.info {
                    if c.expires_in_days < 14 {
                        out.push(nrdot_config::lint::Warning {
                            path: path.clone(),
                            message: format!(
                                "certificate {} ({}) expires in {} days",
                                c.names.first().map(String::as_str).unwrap_or("?"),
                                c.file,
                                c.expires_in_days
                            ),
                        });
                    }
                }
            }
            Err(e) => out.push(nrdot_config::lint::Warning {
                path,
                message: format!("cannot load certificates: {e}"),
            }),
        }
    }
    out
}

/// One request to try against the table, with what it should hit.
#[derive(Debug, Default, Clone)]
pub struct Case {
    /// `GET http://host/path`.
    pub request: String,
    /// Request headers, names lower case.
    pub headers: Vec<(String, String)>,
    /// Route that must be chosen.
    pub expect_route: Option<String>,
    /// Pool that must (or may, for a weighted split) be chosen.
    pub expect_pool: Option<String>,
    /// 404 to expect that nothing matches.
    pub expect_status: Option<u16>,
}

/// Reads `[[case]]` tables.
pub fn parse_cases(text: &str) -> Result<Vec<Case>, String> {
    let doc = toml_edit::ImDocument::parse(text).map_err(|e| e.to_string())?;
    let Some(cases) = doc.get("case").and_then(|c| c.as_array_of_tables()) else {
        return Err("expected [[case]] tables".into());
    };
    let mut out = Vec::new();
    for (i, t) in cases.iter().enumerate() {
        let s = |k: &str| t.get(k).and_then(|v| v.as_str()).map(str::to_string);
        let request = s("request").ok_or_else(|| format!("case[{i}]: missing request"))?;
        let mut headers = Vec::new();
        if let Some(h) = t.get("headers").and_then(|h| h.as_table_like()) {
            for (k, v) in h.iter() {
                headers.push((
                    k.to_ascii_lowercase(),
                    v.as_str().unwrap_or_default().to_string(),
                ));
            }
        }
        out.push(Case {
            request,
            headers,
            expect_route: s("expect_route"),
            expect_pool: s("expect_pool"),
            expect_status: t
                .get("expect_status")
                .and_then(|v| v.as_integer())
                .map(|n| n as u16),
        });
    }
    Ok(out)
}

/// What the table decides for one request.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Decision {
    /// The chosen route.
    pub route: Option<String>,
    /// The route's split: (pool, weight).
    pub split: Vec<(String, u32)>,
    /// The pool the request goes to, when it is determined (override, sticky key, or a split
    /// with one weighted pool); `None` when the split decides per request.
    pub pool: Option<String>,
    /// Servers of that pool (or of every pool in the split) that can take it.
    pub candidates: Vec<String>,
}

/// Routes `case` through `table` without sending anything.
pub fn decide(table: &RouteTable, case: &Case) -> Result<Decision, String> {
    let mut parts = case.request.split_whitespace();
    let (_method, target) = match (parts.next(), parts.next()) {
        (Some(m), Some(t)) => (m, t),
        (Some(t), None) => ("GET", t),
        _ => {
            return Err(format!(
                "cannot read request {:?}: expected 'METHOD URL'",
                case.request
            ))
        }
    };
    let uri: http::Uri = target
        .parse()
        .map_err(|e| format!("bad URL {target:?}: {e}"))?;
    let host_header = case
        .headers
        .iter()
        .find(|(k, _)| k == "host")
        .map(|(_, v)| v.as_str());
    let host = uri
        .host()
        .or(host_header)
        .unwrap_or("")
        .to_ascii_lowercase();
    let host = host
        .rsplit_once(':')
        .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
        .map(|(h, _)| h.to_string())
        .unwrap_or(host);
    let header = |name: &str| {
        case.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_bytes())
    };
    let cookie = |name: &str| -> Option<Vec<u8>> {
        let all = header("cookie")?;
        all.split(|b| *b == b';').find_map(|pair| {
            let pair = pair.trim_ascii();
            pair.strip_prefix(name.as_bytes())?
                .strip_prefix(b"=")
                .map(|v| v.to_vec())
        })
    };
    let Some(r) = table.route(&host, uri.path(), header) else {
        return Ok(Decision {
            route: None,
            split: Vec::new(),
            pool: None,
            candidates: Vec::new(),
        });
    };
    let route = &table.routes[r];
    let split: Vec<(String, u32)> = route
        .pools
        .iter()
        .enumerate()
        .map(|(i, &p)| (table.pools[p].config.name.clone(), route.split.weight(i)))
        .collect();
    let forced = route
        .override_header
        .as_deref()
        .and_then(|h| header(h).map(|v| v.to_vec()))
        .or_else(|| route.override_cookie.as_deref().and_then(cookie))
        .and_then(|name| split.iter().position(|(p, _)| p.as_bytes() == name));
    let sticky = match &route.sticky {
        Some(Sticky::Header(h)) => header(h).map(stable_hash),
        Some(Sticky::Cookie(c)) => cookie(c).map(|v| stable_hash(&v)),
        None => None,
    };
    let weighted: Vec<usize> = (0..split.len()).filter(|&i| split[i].1 > 0).collect();
    let entry = forced
        .or_else(|| sticky.map(|h| route.split.bucket(h)))
        .or_else(|| (weighted.len() == 1).then(|| weighted[0]));
    let pools: Vec<usize> = match entry {
        Some(e) => vec![route.pools[e]],
        None => weighted.iter().map(|&i| route.pools[i]).collect(),
    };
    let candidates = pools
        .iter()
        .flat_map(|&p| table.pools[p].backends.iter())
        .filter(|b| b.weight > 0)
        .map(|b| b.authority.to_string())
        .collect();
    Ok(Decision {
        route: Some(route.name.to_string()),
        split,
        pool: entry.map(|e| table.pools[route.pools[e]].config.name.clone()),
        candidates,
    })
}

/// Whether a decision meets a case's expectations; the reason when not.
pub fn check(case: &Case, d: &Decision) -> Result<(), String> {
    if case.expect_status == Some(404) {
        return match &d.route {
            None => Ok(()),
            Some(r) => Err(format!("expected no route (404), got route {r:?}")),
        };
    }
    if let Some(want) = &case.expect_route {
        if d.route.as_deref() != Some(want.as_str()) {
            return Err(format!(
                "expected route {want:?}, got {:?}",
                d.route.as_deref().unwrap_or("none (404)")
            ));
        }
    }
    if let Some(want) = &case.expect_pool {
        let ok = match &d.pool {
            Some(p) => p == want,
            None => d.split.iter().any(|(p, w)| p == want && *w > 0),
        };
        if !ok {
            return Err(format!(
                "expected pool {want:?}, got {}",
                d.pool
                    .clone()
                    .unwrap_or_else(|| format!("split {:?}", d.split))
            ));
        }
    }
    Ok(())
}

/// `config test`.
#[allow(clippy::too_many_arguments)]
pub fn test(
    file: &Path,
    environment: Option<&str>,
    cases_file: Option<&Path>,
    request: Option<String>,
    headers: &[String],
    expect_route: Option<String>,
    expect_pool: Option<String>,
    json_out: bool,
) -> ExitCode {
    let config = match load(file, environment) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let table = RouteTable::compile(Arc::new(config), 1, None);
    let mut cases = Vec::new();
    if let Some(path) = cases_file {
        let text = match read(path) {
            Ok(t) => t,
            Err(code) => return code,
        };
        match parse_cases(&text) {
            Ok(c) => cases.extend(c),
            Err(e) => {
                eprintln!("nrdot: {}: {e}", path.display());
                return ExitCode::from(2);
            }
        }
    }
    if let Some(request) = request {
        let mut parsed = Vec::new();
        for h in headers {
            match h.split_once(':') {
                Some((k, v)) => parsed.push((k.trim().to_ascii_lowercase(), v.trim().to_string())),
                None => {
                    eprintln!("nrdot: --header {h:?}: expected 'name: value'");
                    return ExitCode::from(2);
                }
            }
        }
        cases.push(Case {
            request,
            headers: parsed,
            expect_route,
            expect_pool,
            expect_status: None,
        });
    }
    if cases.is_empty() {
        eprintln!("nrdot: nothing to test: give --cases FILE or --request 'GET http://host/path'");
        return ExitCode::from(2);
    }
    let mut failed = 0;
    let mut results = Vec::new();
    for case in &cases {
        let (decision, verdict) = match decide(&table, case) {
            Ok(d) => {
                let v = check(case, &d);
                (Some(d), v)
            }
            Err(e) => (None, Err(e)),
        };
        if verdict.is_err() {
            failed += 1;
        }
        if json_out {
            results.push(json!({ "request": case.request, "decision": decision, "ok": verdict.is_ok(), "error": verdict.as_ref().err() }));
        } else {
            let what = match &decision {
                Some(Decision {
                    route: Some(r),
                    split,
                    pool,
                    candidates,
                }) => format!(
                    "route {r}, split {}, pool {}, candidates {}",
                    split
                        .iter()
                        .map(|(p, w)| format!("{p}={w}"))
                        .collect::<Vec<_>>()
                        .join(" "),
                    pool.as_deref().unwrap_or("by weight"),
                    if candidates.is_empty() {
                        "none".to_string()
                    } else {
                        candidates.join(" ")
                    }
                ),
                Some(_) => "no route (404)".to_string(),
                None => String::new(),
            };
            match &verdict {
                Ok(()) => println!("ok    {} -> {what}", case.request),
                Err(e) => println!("FAIL  {} -> {what}: {e}", case.request),
            }
        }
    }
    if json_out {
        println!(
            "{}",
            json!({ "passed": cases.len() - failed, "failed": failed, "results": results })
        );
    } else {
        println!("{} passed, {failed} failed", cases.len() - failed);
    }
    if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decide_follows_host_path_override_and_sticky() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../config/examples/nrdot.toml"
        ))
        .expect("example");
        let table =
            RouteTable::compile(Arc::new(Config::from_toml(&text).expect("valid")), 1, None);
        let case = |req: &str, headers: &[(&str, &str)]| Case {
            request: req.into(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Case::default()
        };
        let d = decide(&table, &case("GET http://shop.example.com/", &[])).expect("decide");
        assert_eq!(d.route.as_deref(), Some("shop"));
        assert_eq!(d.pool, None);
        assert_eq!(d.candidates.len(), 3);
        let d = decide(
            &table,
            &case("GET http://shop.example.com/api/x", &[("x-beta", "1")]),
        )
        .expect("decide");
        assert_eq!(
            (d.route.as_deref(), d.pool.as_deref()),
            (Some("shop-api-beta"), Some("canary"))
        );
        let d = decide(
            &table,
            &case(
                "GET http://a.shop.example.com/",
                &[("x-nrdot-pool", "canary")],
            ),
        )
        .expect("decide");
        assert_eq!(d.pool.as_deref(), Some("canary"));
        let d = decide(
            &table,
            &case(
                "GET http://shop.example.com/",
                &[("cookie", "nrdot_id=abc")],
            ),
        )
        .expect("decide");
        assert!(d.pool.is_some());
        assert!(decide(&table, &case("GET http://other.test/", &[]))
            .expect("decide")
            .route
            .is_none());
        let mut c = case("GET http://shop.example.com/", &[]);
        c.expect_pool = Some("canary".into());
        assert!(
            check(&c, &decide(&table, &c).expect("decide")).is_ok(),
            "canary is a possible pool of the split"
        );
        c.expect_route = Some("nope".into());
        assert!(check(&c, &decide(&table, &c).expect("decide")).is_err());
    }

    #[test]
    fn cases_file_parses() {
        let cases = parse_cases("[[case]]\nrequest = \"GET http://a/\"\nheaders = { X-Beta = \"1\" }\nexpect_route = \"r\"\n[[case]]\nrequest = \"GET http://b/\"\nexpect_status = 404\n").expect("parse");
        assert_eq!(cases.len(), 2);
        assert_eq!(
            cases[0].headers,
            vec![("x-beta".to_string(), "1".to_string())]
        );
        assert_eq!(cases[1].expect_status, Some(404));
    }
}
