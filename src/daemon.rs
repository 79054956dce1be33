//! What makes both binaries behave like systemd services: exit codes,
//! signals, sd_notify (readiness, status, reload, watchdog), logging to
//! journald / stderr / syslog, and the privilege check.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::config::{Broker, ConfigError, LogConfig, LogTarget};

/// Clean stop.
pub const EXIT_OK: u8 = 0;
/// Anything else (the error chain is logged).
pub const EXIT_FAILURE: u8 = 1;
/// Missing privilege (EX_NOPERM).
pub const EXIT_NOPERM: u8 = 77;
/// Bad configuration at start (EX_CONFIG).
pub const EXIT_CONFIG: u8 = 78;

/// What a signal asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// SIGTERM or SIGINT.
    Stop,
    /// SIGHUP.
    Reload,
}

/// The signal streams, created once before the main loop.
pub struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    pub fn new() -> std::io::Result<Self> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// The next request; cancel safe.
    pub async fn next(&mut self) -> Request {
        tokio::select! {
            _ = self.term.recv() => Request::Stop,
            _ = self.int.recv() => Request::Stop,
            _ = self.hup.recv() => Request::Reload,
        }
    }
}

/// Sends states to the service manager; a no-op without `NOTIFY_SOCKET`,
/// and a failure is logged, never fatal.
fn notify(states: &[NotifyState]) {
    // sd_notify::notify itself does nothing without NOTIFY_SOCKET.
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}

/// `READY=1` with a status line.
pub fn notify_ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// `STATUS=...`.
pub fn notify_status(status: &str) {
    notify(&[NotifyState::Status(status)]);
}

/// `RELOADING=1` with `MONOTONIC_USEC=` (systemd requires it since 253).
pub fn notify_reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => notify(&[
            NotifyState::Reloading,
            now,
            NotifyState::Status("reloading"),
        ]),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read CLOCK_MONOTONIC");
            notify(&[NotifyState::Reloading]);
        }
    }
}

/// `STOPPING=1`.
pub fn notify_stopping() {
    notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// Sends `WATCHDOG=1` at half the period systemd asked for, but only while
/// `heartbeat` moves: a stuck daemon stops petting and gets restarted.
pub fn spawn_watchdog(heartbeat: Arc<AtomicU64>) -> Option<tokio::task::JoinHandle<()>> {
    let period = sd_notify::watchdog_enabled()?;
    let every = (period / 2).max(Duration::from_millis(100));
    tracing::info!(
        period_ms = period.as_millis() as u64,
        "systemd watchdog enabled"
    );
    Some(tokio::spawn(async move {
        let mut last = u64::MAX;
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let now = heartbeat.load(Ordering::Relaxed);
            if now != last {
                notify(&[NotifyState::Watchdog]);
                last = now;
            } else {
                tracing::warn!(
                    "no progress since the last watchdog period: not petting the watchdog"
                );
            }
        }
    }))
}

/// True when stderr is connected to the journal: `JOURNAL_STREAM` holds
/// `device:inode` of stderr (systemd.exec(5)).
pub fn stderr_is_journal() -> bool {
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    journal_stream_matches(&v.to_string_lossy(), meta.dev(), meta.ino())
}

/// Parses `JOURNAL_STREAM` (`DEV:INODE`, decimal) and compares it.
pub fn journal_stream_matches(value: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = value.trim().split_once(':') else {
        return false;
    };
    matches!((d.parse::<u64>(), i.parse::<u64>()), (Ok(d), Ok(i)) if d == dev && i == ino)
}

/// Where logs go, decided from the config and the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogSink {
    Journald,
    Stderr { ansi: bool, timestamps: bool },
    Syslog,
}

/// Resolves `auto`: journald when stderr is the journal, else stderr.
pub fn choose_sink(target: LogTarget, stderr_journal: bool, stderr_tty: bool) -> LogSink {
    match target {
        LogTarget::Journald => LogSink::Journald,
        LogTarget::Syslog => LogSink::Syslog,
        LogTarget::Auto if stderr_journal => LogSink::Journald,
        LogTarget::Auto | LogTarget::Stderr => LogSink::Stderr {
            ansi: stderr_tty,
            // The journal stamps lines itself.
            timestamps: !stderr_journal,
        },
    }
}

/// The filter: `RUST_LOG` wins, then `-v` (debug, then trace), then the
/// config's level.
pub fn filter(level: &str, verbose: u8) -> EnvFilter {
    if let Ok(f) = EnvFilter::try_from_env("RUST_LOG") {
        return f;
    }
    let base = match verbose {
        0 => level.to_owned(),
        1 => "debug".to_owned(),
        _ => "trace".to_owned(),
    };
    // rumqttc is chatty at debug; keep it at info unless asked for trace.
    let spec = if verbose < 2 && !base.contains("rumqttc") {
        format!("{base},rumqttc=info")
    } else {
        base
    };
    EnvFilter::try_new(&spec).unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Handle to change the log filter at reload.
pub struct LogHandle {
    reload: Box<dyn Fn(EnvFilter) + Send + Sync>,
    verbose: u8,
}

impl LogHandle {
    /// Applies a new config level (ignored when `-v` or `RUST_LOG` rule).
    pub fn set_level(&self, level: &str) {
        if self.verbose == 0 && std::env::var_os("RUST_LOG").is_none() {
            (self.reload)(filter(level, 0));
        }
    }
}

/// Installs the global subscriber; records from the `log` crate (rumqttc)
/// reach the same output. Falls back to stderr when journald or syslog is
/// unreachable.
pub fn init_logging(
    ident: &str,
    cfg: &LogConfig,
    cli: Option<LogTarget>,
    verbose: u8,
) -> LogHandle {
    let target = cli.unwrap_or(cfg.target);
    let sink = choose_sink(target, stderr_is_journal(), std::io::stderr().is_terminal());
    let (filter_layer, handle) =
        tracing_subscriber::reload::Layer::new(filter(&cfg.level, verbose));
    let mut fallback_reason = None;
    let output: Box<dyn Layer<_> + Send + Sync> = match sink {
        LogSink::Journald => match tracing_journald::layer() {
            Ok(l) => Box::new(
                l.with_syslog_identifier(ident.to_owned())
                    .with_field_prefix(None),
            ),
            Err(e) => {
                fallback_reason = Some(format!("journald unreachable ({e})"));
                stderr_layer(!stderr_is_journal(), false)
            }
        },
        LogSink::Syslog => match SyslogLayer::new(ident) {
            Ok(l) => Box::new(l),
            Err(e) => {
                fallback_reason = Some(format!("syslog unreachable ({e})"));
                stderr_layer(true, false)
            }
        },
        LogSink::Stderr { ansi, timestamps } => stderr_layer(timestamps, ansi),
    };
    let _ = tracing_subscriber::registry()
        .with(filter_layer)
        .with(output)
        .try_init();
    if let Some(reason) = fallback_reason {
        tracing::warn!("{reason}: logging to stderr");
    }
    LogHandle {
        reload: Box::new(move |f| {
            let _ = handle.reload(f);
        }),
        verbose,
    }
}

fn stderr_layer<S>(timestamps: bool, ansi: bool) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let l = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false);
    if timestamps {
        Box::new(l)
    } else {
        Box::new(l.without_time())
    }
}

/// Sends each event to the local syslog daemon (for hosts without systemd).
struct SyslogLayer {
    logger: std::sync::Mutex<syslog::Logger<syslog::LoggerBackend, syslog::Formatter3164>>,
}

impl SyslogLayer {
    fn new(ident: &str) -> Result<Self, syslog::Error> {
        let formatter = syslog::Formatter3164 {
            facility: syslog::Facility::LOG_DAEMON,
            hostname: None,
            process: ident.to_owned(),
            pid: std::process::id(),
        };
        Ok(SyslogLayer {
            logger: std::sync::Mutex::new(syslog::unix(formatter)?),
        })
    }
}

/// Collects an event's message and fields as `message key=value ...`.
#[derive(Default)]
struct LineVisitor(String);

impl tracing::field::Visit for LineVisitor {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write;
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, " {}={:?}", field.name(), value);
        }
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        use std::fmt::Write;
        if field.name() == "message" {
            self.0.push_str(value);
        } else {
            let _ = write!(self.0, " {}={}", field.name(), value);
        }
    }
}

impl<S: tracing::Subscriber> Layer<S> for SyslogLayer {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let mut v = LineVisitor::default();
        event.record(&mut v);
        let mut logger = self.logger.lock().unwrap_or_else(|p| p.into_inner());
        let line = v.0;
        let _ = match *event.metadata().level() {
            tracing::Level::ERROR => logger.err(line),
            tracing::Level::WARN => logger.warning(line),
            tracing::Level::INFO => logger.info(line),
            _ => logger.debug(line),
        };
    }
}

/// True when running as root (uid 0).
pub fn is_root() -> bool {
    // /proc/self/status avoids a libc dependency for one call.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_detection() {
        assert!(journal_stream_matches("8:12345", 8, 12345));
        assert!(!journal_stream_matches("8:12345", 8, 12346));
        assert!(!journal_stream_matches("garbage", 8, 12345));
        assert!(!journal_stream_matches("", 0, 0));
    }

    #[test]
    fn sink_choice() {
        assert_eq!(choose_sink(LogTarget::Auto, true, false), LogSink::Journald);
        assert_eq!(
            choose_sink(LogTarget::Auto, false, true),
            LogSink::Stderr {
                ansi: true,
                timestamps: true
            }
        );
        assert_eq!(
            choose_sink(LogTarget::Stderr, true, false),
            LogSink::Stderr {
                ansi: false,
                timestamps: false
            }
        );
        assert_eq!(choose_sink(LogTarget::Syslog, true, true), LogSink::Syslog);
        assert_eq!(
            choose_sink(LogTarget::Journald, false, true),
            LogSink::Journald
        );
    }

    #[test]
    fn no_log_field_is_named_like_a_journal_field_of_tracing_journald() {
        // tracing-journald writes the event's module as TARGET (and
        // CODE_FILE, CODE_LINE); a field of ours with the same name turns
        // into a second value, an array in `journalctl -o json`.
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut dirs = vec![src];
        let mut bad = Vec::new();
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    dirs.push(p);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    let text = std::fs::read_to_string(&p).unwrap();
                    for (n, l) in text.lines().enumerate() {
                        for field in ["target", "code_file", "code_line"] {
                            if l.contains(&format!("!({field} = "))
                                || l.contains(&format!(", {field} = "))
                            {
                                bad.push(format!("{}:{}: {l}", p.display(), n + 1));
                            }
                        }
                    }
                }
            }
        }
        assert!(bad.is_empty(), "rename these fields:\n{}", bad.join("\n"));
    }

    #[test]
    fn verbosity_overrides_config_level() {
        // RUST_LOG is not set in the test environment we rely on here.
        if std::env::var_os("RUST_LOG").is_none() {
            assert!(filter("warn", 1).to_string().contains("debug"));
            assert!(filter("warn", 0).to_string().contains("warn"));
        }
    }
}

// ---------------------------------------------------------------- launcher

/// Settings a daemon can be launched with.
pub trait DaemonSettings: Sized + Send + 'static {
    /// Program name: syslog identifier, message prefix.
    const IDENT: &'static str;
    /// One line saying what the program is, first line of `--help`.
    const ABOUT: &'static str;
    /// Text after the options in `--help` (other modes of the program).
    const AFTER_HELP: &'static str = "";
    /// Configuration file used without `-c`.
    const DEFAULT_PATH: &'static str;
    /// Loads and validates; a missing file is fine when `missing_ok`.
    fn load(file: &Path, missing_ok: bool) -> Result<Self, ConfigError>;
    /// Brokers given on the command line replace the file's list.
    fn set_brokers(&mut self, brokers: Vec<Broker>);
    fn log(&self) -> &LogConfig;
}

/// Why a daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Exit 77.
    #[error("{0}")]
    NoPermission(String),
    /// Exit 1.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// A running daemon, driven by [`serve`].
pub trait Service: Sized + Send {
    type Settings: DaemonSettings;
    /// Runtime worker threads; 1 means a single-threaded runtime (no
    /// cross-thread wake-ups: the cheapest per probe on a tiny machine).
    const WORKER_THREADS: usize;
    /// Checks privileges, opens sockets, starts tasks. Ready when it returns.
    fn start(
        settings: Self::Settings,
    ) -> impl std::future::Future<Output = Result<Self, StartError>> + Send;
    /// One human line for `STATUS=`.
    fn status(&self) -> String;
    /// Applies new settings; returns the names of what changed.
    fn reload(
        &mut self,
        new: Self::Settings,
    ) -> impl std::future::Future<Output = Vec<&'static str>> + Send;
    /// Bumped by tasks that prove progress.
    fn heartbeat(&self) -> Arc<AtomicU64>;
    /// True when `heartbeat` moves only while every part of the service is
    /// live (each making progress or honestly idle): the main loop's own
    /// turns then do not count as progress for the watchdog.
    const HEARTBEAT_IS_LIVENESS: bool = false;
    /// Stops and drains in bounded time.
    fn shutdown(self) -> impl std::future::Future<Output = ()> + Send;
}

// The command line both daemons share; name, about line, version and the
// default path are set per daemon in `Args::parse_for`.
#[derive(Debug, clap::Parser)]
pub struct Args {
    /// Configuration file [default: DEFAULT_PATH; absent means defaults]
    #[arg(short, long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Load and validate the configuration, print "ok" or the error, exit 0 or 78
    #[arg(long)]
    pub check_config: bool,
    /// More logs: -v debug, -vv trace (RUST_LOG overrides)
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Log destination: auto, journald, stderr or syslog [default: from the file, else auto]
    #[arg(long, value_name = "TARGET", value_parser = parse_log_target)]
    pub log: Option<LogTarget>,
    /// Brokers (host, host:port or mqtt://host:port); replace the file's list
    #[arg(value_name = "BROKER")]
    pub brokers: Vec<String>,
}

fn parse_log_target(s: &str) -> Result<LogTarget, String> {
    match s {
        "auto" => Ok(LogTarget::Auto),
        "journald" => Ok(LogTarget::Journald),
        "stderr" => Ok(LogTarget::Stderr),
        "syslog" => Ok(LogTarget::Syslog),
        _ => Err("expected auto, journald, stderr or syslog".into()),
    }
}

/// `--version`: the program's version and the wire contract it speaks.
pub fn version_line() -> &'static str {
    // clap keeps &'static str; built once.
    static LINE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    LINE.get_or_init(|| {
        format!(
            "{} (wire contract v{})",
            env!("CARGO_PKG_VERSION"),
            crate::protocol::CONTRACT_VERSION
        )
    })
}

impl Args {
    /// Parses the process's arguments with the help text of daemon `S`.
    /// Exits for `--help`, `--version` and usage errors (status 2).
    pub fn parse_for<S: DaemonSettings>() -> Args {
        use clap::FromArgMatches;
        let matches = Self::command_for::<S>().get_matches();
        Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    }

    /// The clap command of daemon `S`.
    pub fn command_for<S: DaemonSettings>() -> clap::Command {
        use clap::CommandFactory;
        Args::command()
            .name(S::IDENT)
            .bin_name(S::IDENT)
            .about(S::ABOUT)
            .after_help(S::AFTER_HELP)
            .version(version_line())
            .mut_arg("config", |a| {
                a.help(format!(
                    "Configuration file [default: {}; absent means defaults]",
                    S::DEFAULT_PATH
                ))
            })
    }

    fn path<S: DaemonSettings>(&self) -> (PathBuf, bool) {
        match &self.config {
            Some(p) => (p.clone(), false),
            None => (PathBuf::from(S::DEFAULT_PATH), true),
        }
    }

    /// Loads the file and applies the command line's brokers.
    pub fn load<S: DaemonSettings>(&self) -> Result<S, ConfigError> {
        let (path, missing_ok) = self.path::<S>();
        let mut s = S::load(&path, missing_ok)?;
        if !self.brokers.is_empty() {
            s.set_brokers(crate::config::parse_brokers(
                Path::new("command line"),
                "BROKER",
                &self.brokers,
            )?);
        }
        Ok(s)
    }
}

/// The whole life of a daemon: parse arguments, load the configuration,
/// set up logging, start, serve signals, map errors to exit codes.
pub fn main<S: Service>() -> std::process::ExitCode {
    // One crypto provider for every TLS user (reqwest now, MQTT over TLS
    // later): with two in the build, rustls panics at first use unless the
    // process has chosen one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse_for::<S::Settings>();
    let ident = S::Settings::IDENT;
    let (path, missing_ok) = args.path::<S::Settings>();
    // Only the default path may be absent (then defaults apply); say so
    // rather than "ok" for a file that does not exist.
    let missing = missing_ok
        && matches!(std::fs::symlink_metadata(&path), Err(e) if e.kind() == std::io::ErrorKind::NotFound);
    let settings: S::Settings = match args.load() {
        Ok(s) => s,
        Err(ConfigError::Invalid { key, message, .. }) if missing => {
            eprintln!(
                "{ident}: {}: not found, and the defaults do not work: {key}: {message}",
                path.display()
            );
            return ExitCode::from(EXIT_CONFIG);
        }
        Err(e) => {
            eprintln!("{ident}: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if args.check_config {
        if missing {
            println!("{}: not found, defaults used", path.display());
        } else {
            println!("{}: ok", path.display());
        }
        return ExitCode::from(EXIT_OK);
    }
    let log = init_logging(ident, settings.log(), args.log, args.verbose);
    let mut builder = if S::WORKER_THREADS <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(S::WORKER_THREADS);
        b
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtime");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let code = runtime.block_on(async {
        // Created once, before anything that could take a while: a SIGTERM
        // during start-up must not kill us half way.
        let signals = match Signals::new() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot install signal handlers");
                return EXIT_FAILURE;
            }
        };
        let service = match S::start(settings).await {
            Ok(s) => s,
            Err(StartError::NoPermission(msg)) => {
                tracing::error!("{msg}");
                eprintln!("{ident}: {msg}");
                return EXIT_NOPERM;
            }
            Err(StartError::Other(e)) => {
                tracing::error!("cannot start: {e:#}");
                return EXIT_FAILURE;
            }
        };
        serve(service, signals, || args.load::<S::Settings>(), &log).await;
        EXIT_OK
    });
    // Tasks blocked in DNS look-ups must not hold the exit.
    runtime.shutdown_timeout(Duration::from_secs(1));
    ExitCode::from(code)
}

/// Serves signals until SIGTERM/SIGINT: SIGHUP reloads (parse, validate,
/// apply; a bad file keeps the old settings), `STATUS=` is kept current.
pub async fn serve<S: Service>(
    mut service: S,
    mut signals: Signals,
    load: impl Fn() -> Result<S::Settings, ConfigError>,
    log: &LogHandle,
) {
    let heartbeat = service.heartbeat();
    let watchdog = spawn_watchdog(heartbeat.clone());
    notify_ready(&service.status());
    tracing::info!(status = %service.status(), "ready");
    let mut reload_error: Option<String> = None;
    let mut tick = tokio::time::interval(STATUS_PERIOD);
    loop {
        tokio::select! {
            req = signals.next() => match req {
                Request::Stop => {
                    tracing::info!("stopping");
                    notify_stopping();
                    service.shutdown().await;
                    if let Some(w) = watchdog {
                        w.abort();
                    }
                    tracing::info!("stopped");
                    return;
                }
                Request::Reload => {
                    notify_reloading();
                    match load() {
                        Ok(new) => {
                            log.set_level(&new.log().level);
                            let changed = service.reload(new).await;
                            reload_error = None;
                            tracing::info!(changed = ?changed, "configuration reloaded");
                        }
                        Err(e) => {
                            tracing::error!("reload failed, still running on the previous configuration: {e}");
                            reload_error = Some(e.to_string());
                        }
                    }
                    notify_ready(&status_line(&service, &reload_error));
                }
            },
            _ = tick.tick() => {
                // The main loop turning is progress too, unless the
                // service proves its liveness part by part.
                if !S::HEARTBEAT_IS_LIVENESS {
                    heartbeat.fetch_add(1, Ordering::Relaxed);
                }
                notify_status(&status_line(&service, &reload_error));
            }
        }
    }
}

/// How often `STATUS=` is refreshed.
const STATUS_PERIOD: Duration = Duration::from_secs(2);

fn status_line<S: Service>(service: &S, reload_error: &Option<String>) -> String {
    match reload_error {
        Some(e) => format!("reload failed: {e}; {}", service.status()),
        None => service.status(),
    }
}
