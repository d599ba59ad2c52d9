//! The `nrdot` binary: parses the command line and hands over; wiring only.
use std::process::ExitCode;

use clap::Parser;
use nrdot_admin::api::{
    self, DurationArg, PercentArg, RolloutCommand as Command_, StartRollout, StepsArg,
};
use nrdot_admin::cli::{
    AdminCommand, Args, AuditCommand, BackendCommand, BackupCommand, ClusterCommand, Command,
    ConfigCommand, HealthCommand, RolloutCommand, VersionCommand,
};
use nrdot_admin::client::{self, Client};
use nrdot_admin::{demo, doctor, offline, run};

/// jemalloc instead of glibc's malloc: tokio's task cells and I/O registrations are
/// 128-byte aligned, which glibc serves by over-allocating and splitting; jemalloc's size
/// classes are aligned by construction (measured: idle connections cost less).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    // A background thread returns freed pages to the kernel after jemalloc's 10 s decay:
    // without it, an idle process purges only when it allocates again, so what parsing and
    // compiling a large configuration freed stayed resident (10,001 routes: 90 MB serving,
    // 34 MB with the thread; 100,001: see benches/README.md). Best effort.
    let _ = tikv_jemalloc_ctl::background_thread::write(true);
    let args = Args::parse();
    // `serve` and `demo` set up their log from the configuration's `[log]`.
    if !matches!(args.command, Command::Serve { .. } | Command::Demo { .. }) {
        let _ = nrdot_admin::logging::init(&Default::default());
    }
    let opts = args.client;
    let json = opts.json;
    let client = || Client::new(&opts);
    macro_rules! with_client {
        (|$c:ident| $body:expr) => {
            match client() {
                Ok($c) => $body,
                Err(e) => {
                    eprintln!("nrdot: {e}");
                    e.exit()
                }
            }
        };
    }
    match args.command {
        Command::Serve {
            config,
            environment,
        } => match run::load(&config) {
            Ok(text) => exit(run::serve(Some(config), text, environment)),
            Err(e) => {
                eprintln!("nrdot: {e:#}");
                ExitCode::from(2)
            }
        },
        Command::Demo { listen, admin } => {
            let dir = opts
                .state_dir
                .clone()
                .unwrap_or_else(|| "./nrdot-state".into());
            exit(demo::run(listen, admin, &dir))
        }
        Command::Config { command } => config(command, json, client),
        Command::Backend { command } => match command {
            BackendCommand::List => with_client!(|c| client::backend_list(&c)),
            BackendCommand::Enable { server } => {
                with_client!(|c| client::backend_set(&c, &server, true, None))
            }
            BackendCommand::Disable { server, wait } => {
                with_client!(|c| client::backend_set(&c, &server, false, wait.as_deref()))
            }
        },
        Command::Health {
            command: HealthCommand::Check { server },
        } => {
            with_client!(|c| client::health_check(&c, server.as_deref()))
        }
        Command::Version { short: true, .. } => {
            println!("{}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Version { command, .. } => match command {
            None => with_client!(|c| client::version(&c)),
            Some(VersionCommand::History { binaries: true, .. }) => {
                with_client!(|c| client::binaries(&c))
            }
            Some(VersionCommand::History { quiet, .. }) => {
                with_client!(|c| client::history(&c, quiet))
            }
        },
        Command::Doctor { config, strict } => doctor::run(&config, json, strict),
        Command::Backup {
            command:
                BackupCommand::Restore {
                    archive,
                    key_file,
                    live: true,
                    ..
                },
        } => with_client!(|c| client::restore_live(&c, &archive, &key_file)),
        Command::Backup { command } => backup(command, opts.state_dir.as_deref(), json),
        Command::Upgrade { binary, rollback } => {
            with_client!(|c| client::upgrade(&c, binary, rollback))
        }
        Command::Audit { command, limit } => match command {
            None => with_client!(|c| client::audit(&c, limit)),
            Some(AuditCommand::Verify) => with_client!(|c| client::audit_verify(&c)),
        },
        Command::Cluster {
            command: ClusterCommand::Status,
        } => with_client!(|c| client::cluster_status(&c)),
        Command::Cluster {
            command: ClusterCommand::Init { config },
        } => cluster_init(&config),
        Command::Rollout { command } => rollout(command, client),
        Command::Admin { command } => match command {
            AdminCommand::RotateToken { name } => with_client!(|c| client::token(&c, &name, None)),
            AdminCommand::CreateToken { name, role } => {
                with_client!(|c| client::token(&c, &name, Some(&role)))
            }
            AdminCommand::SetPassword { password_stdin } => {
                match client::read_new_password(password_stdin) {
                    Ok(p) => with_client!(|c| client::set_password(&c, &p)),
                    Err(e) => {
                        eprintln!("nrdot: {e}");
                        ExitCode::from(2)
                    }
                }
            }
        },
    }
}

/// `nrdot config …`: the offline checks, and the changes made through a running nrdot.
fn config(
    command: ConfigCommand,
    json: bool,
    client: impl Fn() -> Result<Client, client::ClientError>,
) -> ExitCode {
    match command {
        ConfigCommand::Validate { file, environment } => match offline::expand(&file) {
            Ok(files) => worst(
                files
                    .iter()
                    .map(|f| offline::validate(f, environment.as_deref(), json)),
            ),
            Err(code) => code,
        },
        ConfigCommand::Lint {
            file,
            environment,
            strict,
        } => match offline::expand(&file) {
            Ok(files) => worst(
                files
                    .iter()
                    .map(|f| offline::lint(f, environment.as_deref(), strict, json)),
            ),
            Err(code) => code,
        },
        ConfigCommand::Test {
            file,
            environment,
            cases,
            request,
            headers,
            expect_route,
            expect_pool,
        } => {
            // The playbook's `config test --environment staging`: validate, lint, then the
            // routing cases, for that environment.
            let (file, cases) = offline::test_inputs(file, environment.as_deref(), cases);
            let linted = offline::lint(&file, environment.as_deref(), false, json);
            if linted != ExitCode::SUCCESS {
                return linted;
            }
            if cases.is_none() && request.is_none() {
                println!(
                    "{}: no routing cases (cases/ENVIRONMENT.toml or cases.toml beside it)",
                    file.display()
                );
                return ExitCode::SUCCESS;
            }
            offline::test(
                &file,
                environment.as_deref(),
                cases.as_deref(),
                request,
                &headers,
                expect_route,
                expect_pool,
                json,
            )
        }
        ConfigCommand::Apply {
            file,
            message,
            if_match,
            guard,
        } => with_client(&client, |c| {
            client::apply(&c, &file, &message, if_match, guard.as_deref())
        }),
        ConfigCommand::Rollback {
            version,
            message,
            guard,
        } => with_client(&client, |c| {
            client::rollback(&c, version, message.as_deref(), guard.as_deref())
        }),
        ConfigCommand::Diff { a, b } => with_client(&client, |c| client::diff(&c, a, b)),
    }
}

/// `nrdot backup …`: offline, on the node's host.
fn backup(command: BackupCommand, state_dir: Option<&std::path::Path>, json: bool) -> ExitCode {
    use nrdot_admin::backup_cmd as b;
    match command {
        BackupCommand::Create {
            config,
            output,
            key_file,
        } => match b::state_dir(state_dir, &config) {
            Ok(dir) => b::create(&dir, &config, &output, &key_file, json),
            Err(code) => code,
        },
        BackupCommand::List { output } => b::list(&output),
        BackupCommand::Prune {
            output,
            keep_days,
            keep_last,
        } => b::prune(&output, keep_days, keep_last),
        BackupCommand::Verify { archive, key_file } => b::verify(&archive, &key_file, json),
        BackupCommand::Restore {
            archive,
            config,
            key_file,
            dry_run,
            ..
        } => match b::state_dir(state_dir, &config) {
            Ok(dir) => b::restore(&archive, &key_file, &dir, dry_run),
            Err(code) => code,
        },
    }
}

/// Runs `f` with a client, or reports why there is none.
/// `nrdot cluster init`: refuses while the node runs (its state directory is locked).
fn cluster_init(config: &std::path::Path) -> ExitCode {
    let result = (|| -> anyhow::Result<String> {
        let text = run::load(config)?;
        let c = nrdot_config::Config::from_toml(&text)
            .map_err(|e| anyhow::anyhow!("{}", e.render(&config.display().to_string())))?;
        let settings = c.cluster.as_ref().ok_or_else(|| {
            anyhow::anyhow!(
                "{}: no [cluster] section names the etcd to import into",
                config.display()
            )
        })?;
        let _lock = nrdot_admin::lock::StateLock::acquire(&c.state_dir)?;
        let i = nrdot_admin::cluster_init::import(&c.state_dir, settings)?;
        Ok(format!(
            "imported {} into etcd {:?} under {}: {} versions (current {}), {} audit entries, {} rollouts, {} disabled backends, credentials {}",
            c.state_dir.display(),
            settings.etcd,
            settings.prefix,
            i.versions,
            i.current.map_or("none".into(), |v| v.to_string()),
            i.audit,
            i.rollouts,
            i.disabled,
            if i.credentials { "copied" } else { "none (the first node writes new ones)" }
        ))
    })();
    match result {
        Ok(summary) => {
            println!("nrdot: {summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("nrdot: cluster init: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn with_client(
    client: &impl Fn() -> Result<Client, client::ClientError>,
    f: impl FnOnce(Client) -> ExitCode,
) -> ExitCode {
    match client() {
        Ok(c) => f(c),
        Err(e) => {
            eprintln!("nrdot: {e}");
            e.exit()
        }
    }
}

fn rollout(
    command: RolloutCommand,
    client: impl Fn() -> Result<Client, client::ClientError>,
) -> ExitCode {
    let c = match client() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("nrdot: {e}");
            return e.exit();
        }
    };
    match command {
        RolloutCommand::Canary {
            route,
            to,
            from,
            steps,
            interval,
            region,
            max_error_rate,
            error_for,
            max_p99,
            min_healthy,
            healthy_for,
            memory_threshold,
            memory_for,
            min_requests,
            follow,
        } => client::rollout_create(
            &c,
            &StartRollout::Canary {
                route,
                to,
                from,
                steps: Some(StepsArg::Text(steps)),
                interval: Some(DurationArg::Text(interval)),
                region,
                triggers: api::Triggers {
                    max_error_rate: Some(PercentArg::Text(max_error_rate)),
                    error_for: Some(DurationArg::Text(error_for)),
                    max_p99: max_p99.map(DurationArg::Text),
                    min_healthy: Some(PercentArg::Text(min_healthy)),
                    healthy_for: Some(DurationArg::Text(healthy_for)),
                    memory_threshold: Some(PercentArg::Text(memory_threshold)),
                    memory_for: Some(DurationArg::Text(memory_for)),
                    min_requests: Some(min_requests),
                },
            },
            follow,
        ),
        RolloutCommand::BlueGreen {
            route,
            to,
            from,
            region,
            keep_old,
            check,
            guard,
            triggers,
            follow,
        } => client::rollout_create(
            &c,
            &StartRollout::BlueGreen {
                route,
                to,
                from,
                keep_old: Some(DurationArg::Text(keep_old)),
                check,
                guard: guard.map(DurationArg::Text),
                triggers: triggers.request(),
                region,
            },
            follow,
        ),
        RolloutCommand::Rolling {
            pool,
            batch,
            hook,
            wait,
            pause,
            triggers,
            follow,
        } => client::rollout_create(
            &c,
            &StartRollout::Rolling {
                pool,
                batch: Some(batch),
                hook,
                wait: Some(DurationArg::Text(wait)),
                pause: Some(DurationArg::Text(pause)),
                triggers: triggers.request(),
            },
            follow,
        ),
        RolloutCommand::Promote { id } => client::rollout_command(&c, id, Command_::Promote),
        RolloutCommand::Pause { id } => client::rollout_command(&c, id, Command_::Pause),
        RolloutCommand::Resume { id } => client::rollout_command(&c, id, Command_::Resume),
        RolloutCommand::Abort { id } => client::rollout_command(&c, id, Command_::Abort),
        RolloutCommand::Approve { id } => client::rollout_command(&c, id, Command_::Approve),
        RolloutCommand::Rollback { id } => client::rollout_command(&c, id, Command_::Rollback),
        RolloutCommand::Status { id } => client::rollout_status(&c, id),
        RolloutCommand::List => client::rollout_list(&c),
    }
}

/// The first failing exit code of several runs, or success.
fn worst(codes: impl Iterator<Item = ExitCode>) -> ExitCode {
    let mut out = ExitCode::SUCCESS;
    for c in codes {
        if c != ExitCode::SUCCESS && out == ExitCode::SUCCESS {
            out = c;
        }
    }
    out
}

fn exit(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nrdot: {e:#}");
            ExitCode::FAILURE
        }
    }
}
