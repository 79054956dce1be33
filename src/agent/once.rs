//! `swarming-agent --once TARGET...`: one round towards each target, now,
//! with the configured ping settings (or flags), printed; no broker needed.
//! The first command a new probe's operator runs.

use std::sync::Arc;

use crate::guard::Guard;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::config::{AgentSettings, AGENT_CONFIG_PATH};
use crate::daemon::{EXIT_CONFIG, EXIT_FAILURE, EXIT_NOPERM, EXIT_OK};
use crate::ping::{self, OpenError, Sockets};
use crate::protocol::{PingResult, Target};

use super::{new_instance, plan, to_result, Identity, NO_PERMISSION_HELP};

/// Command line of the one-shot probe.
#[derive(Debug, clap::Parser)]
#[command(
    name = "swarming-agent --once",
    about = "Ping each TARGET once now (one round of ping.count echoes) and print the result; no broker needed.\nExit status: 0 every target answered, 1 some did not, 77 no privilege to ping, 78 bad configuration or arguments."
)]
pub struct OnceArgs {
    /// One round towards each TARGET, now
    #[arg(long)]
    pub once: bool,
    /// Configuration file for the ping settings [default: /etc/swarming/agent.yaml; absent means defaults]
    #[arg(short, long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Echo requests per target [default: ping.count]
    #[arg(long, value_name = "N")]
    pub count: Option<u32>,
    /// How long to wait for each reply, e.g. 500ms [default: ping.timeout]
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
    /// Print each result as the JSON published on ping/{target}, one per line
    #[arg(long)]
    pub json: bool,
    /// Host names or addresses
    #[arg(value_name = "TARGET", required = true)]
    pub targets: Vec<String>,
}

/// True when the command line asks for `--once`.
pub fn requested() -> bool {
    std::env::args_os().skip(1).any(|a| a == "--once")
}

/// Settings from the file, then the flags; `Err` is printable (exit 78).
pub fn settings(args: &OnceArgs) -> Result<AgentSettings, String> {
    let (path, missing_ok) = match &args.config {
        Some(p) => (p.clone(), false),
        None => (PathBuf::from(AGENT_CONFIG_PATH), true),
    };
    let mut s = AgentSettings::load(&path, missing_ok).map_err(|e| e.to_string())?;
    if let Some(n) = args.count {
        if !(1..=100).contains(&n) {
            return Err("--count: must be between 1 and 100".into());
        }
        s.ping.count = n;
    }
    if let Some(t) = args.timeout {
        if t.is_zero() {
            return Err("--timeout: must be greater than zero".into());
        }
        s.ping.timeout = t;
    }
    // One second between echoes, like ping(8), whatever the interval.
    let needed = s.ping.timeout + Duration::from_secs(u64::from(s.ping.count));
    s.ping.interval = s.ping.interval.max(needed);
    Ok(s)
}

/// One readable line for a result.
pub fn line(r: &PingResult) -> String {
    let loss = if r.sent == 0 {
        100
    } else {
        100 - (u64::from(r.received) * 100 / u64::from(r.sent))
    };
    let addr = r.addr.map(|a| format!(" ({a})")).unwrap_or_default();
    let rtt = match &r.rtt {
        Some(s) => format!("rtt min/avg/max {:.3}/{:.3}/{:.3} ms", s.min, s.avg, s.max),
        None => "rtt -".to_owned(),
    };
    let error = r
        .error
        .as_deref()
        .map(|e| format!(", error: {e}"))
        .unwrap_or_default();
    format!(
        "{}{addr}: sent {}, received {}, loss {loss}%, {rtt}{error}",
        r.target, r.sent, r.received
    )
}

/// Runs `--once`; returns the exit status.
pub fn main() -> ExitCode {
    use clap::Parser;
    let args = OnceArgs::parse();
    let settings = match settings(&args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("swarming-agent: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let mut targets: Vec<Target> = Vec::new();
    for t in &args.targets {
        match t.parse::<Target>() {
            Ok(t) if !targets.contains(&t) => targets.push(t),
            Ok(_) => {}
            Err(e) => {
                eprintln!("swarming-agent: target {t:?}: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        }
    }
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(crate::daemon::filter("warn", 0))
        .with_target(false)
        .without_time()
        .try_init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("swarming-agent: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let identity = Identity {
        name: settings.name.clone(),
        labels: settings.labels.clone(),
    };
    let plan = plan(&settings, &new_instance(), true);
    let outcome = runtime.block_on(async {
        let sockets = Sockets::open()?;
        eprintln!(
            "swarming-agent: {} echo(es) per target through {}",
            settings.ping.count,
            sockets.mode.describe()
        );
        Ok::<_, OpenError>(
            ping::once(
                sockets,
                plan,
                Arc::new(Guard::new(settings.rules.clone())),
                targets.clone(),
            )
            .await,
        )
    });
    runtime.shutdown_timeout(Duration::from_millis(100));
    let results = match outcome {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            eprintln!("swarming-agent: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
        Err(e @ OpenError::Permission { .. }) => {
            eprintln!("swarming-agent: {e}: {NO_PERMISSION_HELP}");
            return ExitCode::from(EXIT_NOPERM);
        }
        Err(e) => {
            eprintln!("swarming-agent: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let mut all_answered = true;
    for t in &targets {
        let Some(r) = results.iter().find(|r| &r.target == t) else {
            all_answered = false;
            println!("{t}: no result");
            continue;
        };
        let r = to_result(&identity, r.clone());
        all_answered &= r.received > 0;
        if args.json {
            match serde_json::to_string(&r) {
                Ok(j) => println!("{j}"),
                Err(e) => eprintln!("swarming-agent: {e}"),
            }
        } else {
            println!("{}", line(&r));
        }
    }
    ExitCode::from(if all_answered { EXIT_OK } else { EXIT_FAILURE })
}
