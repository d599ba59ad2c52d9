//! nrdot's own log (`[log]`: level, file, format), as opposed to the access log. The file is
//! opened by path and reopened on SIGUSR1, so logrotate can move it away and signal, as with
//! nginx's USR1. Log lines are rare (transitions, errors), never per request, so one mutex
//! around the destination costs nothing on the request path.
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

use nrdot_config::{LogFormat, Logging};

enum Target {
    Stderr,
    File { path: PathBuf, file: File },
}

static TARGET: Mutex<Target> = Mutex::new(Target::Stderr);

fn open(path: &PathBuf) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

/// One line's writer: the current destination.
pub struct Writer;

impl Write for Writer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut t = TARGET.lock().unwrap_or_else(|p| p.into_inner());
        match &mut *t {
            Target::Stderr => std::io::stderr().write(buf),
            Target::File { file, .. } => file.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct MakeWriter;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for MakeWriter {
    type Writer = Writer;
    fn make_writer(&'a self) -> Writer {
        Writer
    }
}

fn filter(level: &str) -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level))
}

/// Installs the log for `settings` (`RUST_LOG`, when set, wins over the level). A second call
/// in one process (tests) keeps the first subscriber but still switches the destination.
pub fn init(settings: &Logging) -> std::io::Result<()> {
    if settings.file != "-" {
        let path = PathBuf::from(&settings.file);
        let file = open(&path)?;
        *TARGET.lock().unwrap_or_else(|p| p.into_inner()) = Target::File { path, file };
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(&settings.level))
        .with_writer(MakeWriter)
        .with_ansi(settings.file == "-" && std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match settings.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    Ok(())
}

/// Reopens the log file by its path (after logrotate moved it). Standard error needs nothing.
pub fn reopen() -> std::io::Result<()> {
    let mut t = TARGET.lock().unwrap_or_else(|p| p.into_inner());
    if let Target::File { path, file } = &mut *t {
        *file = open(path)?;
    }
    Ok(())
}
