//! The `nrdot` binary: parses the command line and hands over to [`nrdot_admin::run`].
use std::process::ExitCode;

use clap::Parser;
use nrdot_admin::cli::{Args, Command, ConfigCommand};
use nrdot_admin::{demo, run};

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match args.command {
        Command::Version => {
            println!("nrdot {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Config {
            command: ConfigCommand::Validate { file },
        } => return run::validate(&file),
        Command::Serve { config } => match run::load(&config) {
            Ok((text, c)) => run::serve(Some(config), &text, c),
            Err(e) => {
                eprintln!("nrdot: {e:#}");
                return ExitCode::from(1);
            }
        },
        Command::Demo {
            listen,
            admin,
            state_dir,
        } => demo_main(listen, admin, &state_dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nrdot: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn demo_main(
    listen: std::net::SocketAddr,
    admin: std::net::SocketAddr,
    state_dir: &std::path::Path,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(state_dir)?;
    let state_dir = state_dir.canonicalize()?;
    let origins = demo::start_origins()?;
    let text = demo::config_text(listen, admin, &state_dir, &origins);
    let path = state_dir.join("demo.toml");
    std::fs::write(&path, &text)?;
    let config = nrdot_config::Config::from_toml(&text)
        .map_err(|e| anyhow::anyhow!("demo config: {}", e.render("demo.toml")))?;
    println!(
        "nrdot demo: stable v1 and canary v2 behind a 90/10 split (config: {})\n\
         try:\n  for i in $(seq 20); do curl -s http://{listen}/; done | sort | uniq -c\n  \
         curl -s -H 'x-nrdot-pool: canary' http://{listen}/      # force the canary\n  \
         curl -s -H 'x-user: alice' http://{listen}/             # sticky: alice always lands on one side\n  \
         curl -s http://{admin}/health\n  \
         curl -s http://{admin}/metrics | grep nrdot_requests_total\n\
         access log: {}\nstop with Ctrl-C",
        path.display(),
        state_dir.join("access.log").display()
    );
    run::serve(Some(path), &text, config)
}
