//! The access log: one line per request, combined or JSON. Workers format the line and hand it to
//! a writer thread over a bounded channel, so a slow disk never slows a request; when the writer
//! falls behind, lines are dropped and counted instead.
use std::io::Write;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};

use std::time::Instant;

use http::{Method, Version};
use nrdot_config::{AccessLog as Settings, AccessLogFormat};

/// What a finished request contributes to its log line.
pub struct Entry<'a> {
    /// Client address.
    pub client: std::net::IpAddr,
    /// Method.
    pub method: &'a str,
    /// Request target.
    pub target: &'a str,
    /// `HTTP/1.1`, `HTTP/2.0`.
    pub version: &'a str,
    /// Response status.
    pub status: u16,
    /// Response body bytes sent.
    pub bytes: u64,
    /// Referer header.
    pub referer: &'a str,
    /// User-Agent header.
    pub user_agent: &'a str,
    /// Time from request head to the end of the response, in seconds.
    pub duration: f64,
    /// Route name, or `-`.
    pub route: &'a str,
    /// Upstream `host:port`, or `-`.
    pub upstream: &'a str,
}

/// Handle through which workers log; cheap to clone.
#[derive(Clone)]
pub struct AccessLog {
    tx: Option<SyncSender<String>>,
    format: AccessLogFormat,
}

impl AccessLog {
    /// A log that writes nothing.
    pub fn disabled() -> AccessLog {
        AccessLog {
            tx: None,
            format: AccessLogFormat::Combined,
        }
    }

    /// Opens the configured destination and starts its writer thread.
    pub fn start(settings: &Settings) -> std::io::Result<AccessLog> {
        if !settings.enabled {
            return Ok(AccessLog::disabled());
        }
        let path = settings.path.clone();
        let open = move || -> std::io::Result<Box<dyn Write + Send>> {
            Ok(if path == "-" {
                Box::new(std::io::stdout())
            } else {
                Box::new(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&path)?,
                )
            })
        };
        let first = open()?;
        let (tx, rx) = sync_channel::<String>(16 * 1024);
        std::thread::Builder::new()
            .name("nrdot-access-log".into())
            .spawn(move || {
                let mut buf = std::io::BufWriter::with_capacity(64 * 1024, first);
                while let Ok(line) = rx.recv() {
                    // Write out whenever the queue is momentarily empty, so lines show up
                    // promptly at low load and in large writes at high load.
                    let mut next = Some(line);
                    while let Some(line) = next.take() {
                        if line.is_empty() {
                            // The reopen mark (a log line is never empty): logrotate moved
                            // the file; what came before goes to the old one.
                            let _ = buf.flush();
                            match open() {
                                Ok(out) => buf = std::io::BufWriter::with_capacity(64 * 1024, out),
                                Err(e) => tracing::error!(error = %e, "cannot reopen the access log; still writing the old file"),
                            }
                        } else {
                            let _ = buf.write_all(line.as_bytes());
                        }
                        next = rx.try_recv().ok();
                    }
                    let _ = buf.flush();
                }
            })?;
        Ok(AccessLog {
            tx: Some(tx),
            format: settings.format,
        })
    }

    /// Reopens the file by its path (SIGUSR1, after logrotate moved it). Lines queued before
    /// still go to the old file.
    pub fn reopen(&self) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(String::new());
        }
    }

    /// Whether lines are written at all; callers skip collecting fields when not.
    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Queues one line.
    pub fn log(&self, e: &Entry<'_>) {
        let Some(tx) = &self.tx else { return };
        let line = match self.format {
            AccessLogFormat::Combined => format!(
                "{} - - [{}] \"{} {} {}\" {} {} \"{}\" \"{}\" {:.3} {} {}\n",
                e.client,
                clf_time(),
                e.method,
                e.target,
                e.version,
                e.status,
                e.bytes,
                e.referer,
                e.user_agent,
                e.duration,
                e.route,
                e.upstream
            ),
            AccessLogFormat::Json => {
                let mut s = serde_json::json!({
                    "time": unix_time(),
                    "client": e.client.to_string(),
                    "method": e.method,
                    "target": e.target,
                    "version": e.version,
                    "status": e.status,
                    "bytes": e.bytes,
                    "referer": e.referer,
                    "user_agent": e.user_agent,
                    "duration": e.duration,
                    "route": e.route,
                    "upstream": e.upstream,
                })
                .to_string();
                s.push('\n');
                s
            }
        };
        if let Err(TrySendError::Full(_)) = tx.try_send(line) {
            crate::metrics::get().access_log_dropped.increment(1);
        }
    }
}

fn unix_time() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// `10/Oct/2000:13:55:36 +0000`, nginx's `$time_local` in UTC.
fn clf_time() -> String {
    let secs = unix_time() as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    let (y, m, d) = nrdot_config::units::civil_from_days(days);
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{:02}/{}/{}:{:02}:{:02}:{:02} +0000",
        d,
        MONTHS[(m - 1) as usize],
        y,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Fields of the access log line, copied only when the log is on.
pub(crate) struct LogFields {
    client: std::net::IpAddr,
    method: Method,
    target: String,
    version: Version,
    referer: String,
    user_agent: String,
    start: Instant,
    pub route: Box<str>,
    pub upstream: String,
    log: AccessLog,
}

impl LogFields {
    pub fn new(
        log: &AccessLog,
        client: std::net::IpAddr,
        method: Method,
        target: &str,
        version: Version,
        referer: Option<&str>,
        user_agent: Option<&str>,
    ) -> Box<LogFields> {
        Box::new(LogFields {
            client: client.to_canonical(),
            method,
            target: target.to_string(),
            version,
            referer: referer.unwrap_or("-").to_string(),
            user_agent: user_agent.unwrap_or("-").to_string(),
            start: Instant::now(),
            route: "-".into(),
            upstream: "-".to_string(),
            log: log.clone(),
        })
    }

    pub fn write(&self, status: u16, bytes: u64) {
        self.log.log(&Entry {
            client: self.client,
            method: self.method.as_str(),
            target: &self.target,
            version: version_str(self.version),
            status,
            bytes,
            referer: &self.referer,
            user_agent: &self.user_agent,
            duration: self.start.elapsed().as_secs_f64(),
            route: &self.route,
            upstream: &self.upstream,
        });
    }
}

fn version_str(v: Version) -> &'static str {
    match v {
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}
