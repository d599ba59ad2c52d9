//! `nrdot config validate`, `nrdot version`, and startup with a bad file.
use std::process::Command;

use nrdot_tests::temp_dir;

use crate::BIN;

fn validate(text: &str) -> (i32, String, String) {
    let dir = temp_dir("validate");
    let file = dir.join("nrdot.toml");
    std::fs::write(&file, text).expect("write");
    let out = Command::new(BIN)
        .args(["config", "validate", "--file"])
        .arg(&file)
        .output()
        .expect("run");
    let _ = std::fs::remove_dir_all(&dir);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn validate_example_config_exits_0() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/examples/nrdot.toml");
    let out = Command::new(BIN)
        .args(["config", "validate", "--file", path])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK"));
}

#[test]
fn validate_lists_every_problem_with_file_line_column_and_exits_1() {
    let (code, _, err) = validate(
        "[[listener]]\nname = \"a\"\nbind = \"nowhere\"\n\n[[pool]]\nname = \"p\"\ntimeout = 3\n[[pool.server]]\naddress = \"127.0.0.1:1\"\n\n[[route]]\nname = \"r\"\npool = \"ghost\"\n",
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("nrdot.toml:3:8: listener[0].bind: invalid address"),
        "{err}"
    );
    assert!(
        err.contains("nrdot.toml:7:1: pool[0].timeout: unknown key"),
        "{err}"
    );
    assert!(
        err.contains("nrdot.toml:13:8: route[0].pool: undefined pool \"ghost\""),
        "{err}"
    );
    assert!(err.contains("3 problem(s)"), "{err}");
}

#[test]
fn validate_unreadable_file_exits_2() {
    let out = Command::new(BIN)
        .args(["config", "validate", "--file", "/nonexistent/nrdot.toml"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn serve_refuses_invalid_config_with_positions() {
    let dir = temp_dir("serve-bad");
    let file = dir.join("bad.toml");
    std::fs::write(
        &file,
        "[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:0\"\nworkers = 3\n",
    )
    .expect("write");
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&file)
        .output()
        .expect("run");
    let _ = std::fs::remove_dir_all(&dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("bad.toml:4:1: listener[0].workers: unknown key"),
        "{err}"
    );
}

#[test]
fn version_prints_version() {
    let out = Command::new(BIN).arg("version").output().expect("run");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("nrdot 0."));
}

#[test]
fn lint_warns_and_strict_fails() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/examples/nrdot.toml");
    let out = Command::new(BIN)
        .args(["config", "lint", "--file", path])
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("has no health check"), "{text}");
    assert!(text.contains("single server"), "{text}");
    let strict = Command::new(BIN)
        .args(["config", "lint", "--strict", "--file", path])
        .output()
        .expect("run");
    assert_eq!(strict.status.code(), Some(1));
}

#[test]
fn config_test_runs_cases_and_single_requests() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/examples/nrdot.toml");
    let dir = temp_dir("cases");
    let cases = dir.join("cases.toml");
    std::fs::write(
        &cases,
        "[[case]]\nrequest = \"GET http://shop.example.com/api/items\"\nheaders = { x-beta = \"1\" }\nexpect_route = \"shop-api-beta\"\nexpect_pool = \"canary\"\n\n[[case]]\nrequest = \"GET http://www.shop.example.com/\"\nexpect_route = \"shop\"\nexpect_pool = \"stable\"\n\n[[case]]\nrequest = \"GET http://elsewhere.test/\"\nexpect_status = 404\n",
    )
    .expect("write");
    let out = Command::new(BIN)
        .args(["config", "test", "--file", path, "--cases"])
        .arg(&cases)
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains(
            "route shop-api-beta, split canary=1, pool canary, candidates 10.0.2.10:8080"
        ),
        "{text}"
    );
    assert!(text.contains("3 passed, 0 failed"), "{text}");
    let fail = Command::new(BIN)
        .args([
            "config",
            "test",
            "--file",
            path,
            "--request",
            "GET http://shop.example.com/",
            "--header",
            "x-nrdot-pool: canary",
            "--expect-pool",
            "stable",
        ])
        .output()
        .expect("run");
    assert_eq!(fail.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&fail.stdout).contains("FAIL"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn environments_select_an_overlay() {
    let dir = temp_dir("env");
    let file = dir.join("nrdot.toml");
    std::fs::write(
        &file,
        "[[listener]]\nname = \"http\"\nbind = \"0.0.0.0:80\"\n[[pool]]\nname = \"web\"\n[[pool.server]]\naddress = \"10.0.0.1:80\"\n[[route]]\nname = \"r\"\npool = \"web\"\n[environment.staging]\n[[environment.staging.pool]]\nname = \"web\"\n[[environment.staging.pool.server]]\naddress = \"127.0.0.1:9000\"\n",
    )
    .expect("write");
    let run = |args: &[&str]| Command::new(BIN).args(args).output().expect("run");
    let f = file.to_str().expect("path");
    let prod = run(&["config", "test", "--file", f, "--request", "GET http://x/"]);
    assert!(String::from_utf8_lossy(&prod.stdout).contains("10.0.0.1:80"));
    let staging = run(&[
        "config",
        "test",
        "--file",
        f,
        "--environment",
        "staging",
        "--request",
        "GET http://x/",
    ]);
    assert!(String::from_utf8_lossy(&staging.stdout).contains("127.0.0.1:9000"));
    assert_eq!(
        run(&["config", "validate", "--file", f, "--environment", "nope"])
            .status
            .code(),
        Some(1)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn config_test_for_an_environment_finds_its_file_and_cases_and_globs_expand() {
    let dir = nrdot_tests::temp_dir("envtest");
    let config = "[[listener]]\nname = \"http\"\nbind = \"0.0.0.0:80\"\n[[pool]]\nname = \"web\"\n[[pool.server]]\naddress = \"10.0.0.1:80\"\n[[pool]]\nname = \"beta\"\n[[pool.server]]\naddress = \"10.0.0.2:80\"\n[[route]]\nname = \"r\"\npool = \"web\"\n[environment.staging]\n[[environment.staging.route]]\nname = \"r\"\npool = \"beta\"\n";
    std::fs::write(dir.join("nrdot.toml"), config).expect("config");
    std::fs::create_dir_all(dir.join("cases")).expect("cases dir");
    let cases = |pool: &str| {
        format!("[[case]]\nrequest = \"GET http://any.example.com/\"\nexpect_route = \"r\"\nexpect_pool = \"{pool}\"\n")
    };
    std::fs::write(dir.join("cases/staging.toml"), cases("beta")).expect("cases");
    let run = |args: &[&str]| {
        std::process::Command::new(BIN)
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("run")
    };
    // As the playbook's CI writes it: the file and the cases are found by themselves.
    let ok = run(&["config", "test", "--environment", "staging"]);
    assert!(
        ok.status.success(),
        "{}{}",
        String::from_utf8_lossy(&ok.stdout),
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(
        String::from_utf8_lossy(&ok.stdout).contains("warning"),
        "lint ran"
    );
    // The staging overlay routes to beta, so the base's expectation fails there.
    std::fs::write(dir.join("cases/staging.toml"), cases("web")).expect("cases");
    let bad = run(&["config", "test", "--environment", "staging"]);
    assert_eq!(
        bad.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&bad.stdout)
    );
    // Quoted globs expand; a pattern that matches nothing is an error.
    std::fs::write(dir.join("second.toml"), config).expect("second");
    let both = run(&["config", "validate", "--file", "*.toml"]);
    assert!(
        both.status.success(),
        "{}",
        String::from_utf8_lossy(&both.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&both.stdout)
            .matches(": OK")
            .count(),
        2
    );
    let none = run(&["config", "lint", "--file", "nothing/*.toml"]);
    assert_eq!(none.status.code(), Some(2));
    let _ = std::fs::remove_dir_all(&dir);
}
