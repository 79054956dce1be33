//! ICMP echo for every target from one loop: a queue of next sends, a table
//! of echoes in flight with one timeout sweep, one receive path per address
//! family, one agent-wide rate limit ([`schedule`]); raw or datagram ICMP
//! sockets ([`socket`]). Nothing here knows about MQTT: finished rounds go
//! to a sink the caller provides.

pub mod schedule;
pub mod socket;

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use schedule::{Counters, Key, Plan, RoundResult, Schedule};
pub use socket::{IcmpSocket, Mode, OpenError, Sockets};

use crate::guard::Guard;
use crate::protocol::Target;

impl std::os::fd::AsRawFd for IcmpSocket {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.socket().as_raw_fd()
    }
}

/// Skipped slots are logged at most this often.
const SKIP_REPORT_EVERY: Duration = Duration::from_secs(60);

/// Changes for a running engine.
#[derive(Debug)]
pub enum Command {
    Targets(Vec<Target>),
    Plan(Plan),
    Resolved(Key, Result<IpAddr, String>),
}

/// Live counters of a running engine.
#[derive(Debug, Default)]
pub struct EngineStats {
    pub rounds: AtomicU64,
    pub sent: AtomicU64,
    pub received: AtomicU64,
    pub skipped: AtomicU64,
    pub send_errors: AtomicU64,
    pub clock_steps: AtomicU64,
    /// Interval in effect, milliseconds (stretched when needed).
    pub interval_ms: AtomicU64,
    /// The loop has ended (stopped, or failed: logged).
    pub ended: std::sync::atomic::AtomicBool,
}

impl EngineStats {
    fn update(&self, c: &Counters, interval: Duration) {
        self.rounds.store(c.rounds, Ordering::Relaxed);
        self.sent.store(c.sent, Ordering::Relaxed);
        self.received.store(c.received, Ordering::Relaxed);
        self.skipped.store(c.skipped, Ordering::Relaxed);
        self.send_errors.store(c.send_errors, Ordering::Relaxed);
        self.clock_steps.store(c.clock_steps, Ordering::Relaxed);
        self.interval_ms
            .store(interval.as_millis() as u64, Ordering::Relaxed);
    }
}

/// Where finished rounds go.
pub type Sink = Box<dyn FnMut(RoundResult) + Send>;

/// A running engine.
pub struct Engine {
    tx: mpsc::UnboundedSender<Command>,
    pub stats: Arc<EngineStats>,
    pub mode: Mode,
}

impl Engine {
    /// Starts the loop on the current runtime; it runs until `stop`.
    pub fn spawn(
        sockets: Sockets,
        plan: Plan,
        sink: Sink,
        guard: Arc<Guard>,
        stop: CancellationToken,
        tracker: &TaskTracker,
    ) -> std::io::Result<Engine> {
        let (tx, rx) = mpsc::unbounded_channel();
        let stats = Arc::new(EngineStats::default());
        let mode = sockets.mode;
        let looped = Loop::new(sockets, plan, guard, tx.clone(), stats.clone())?;
        let stopped = stop.clone();
        let loop_stats = stats.clone();
        let inner = tokio::spawn(looped.run(rx, sink, stop, false));
        // Supervises the loop: its end is logged and shown in the status.
        tracker.spawn(async move {
            let outcome = inner.await;
            loop_stats.ended.store(true, Ordering::Relaxed);
            match outcome {
                Err(e) => {
                    tracing::error!(error = %e, "the ICMP loop failed: no more echoes are sent")
                }
                Ok(()) if !stopped.is_cancelled() => {
                    tracing::error!("the ICMP loop ended: no more echoes are sent")
                }
                Ok(()) => {}
            }
        });
        Ok(Engine { tx, stats, mode })
    }

    pub fn set_targets(&self, targets: Vec<Target>) {
        let _ = self.tx.send(Command::Targets(targets));
    }

    pub fn set_plan(&self, plan: Plan) {
        let _ = self.tx.send(Command::Plan(plan));
    }
}

/// One round towards each target, now; returns the results in the order
/// the rounds finished.
pub async fn once(
    sockets: Sockets,
    plan: Plan,
    guard: Arc<Guard>,
    targets: Vec<Target>,
) -> std::io::Result<Vec<RoundResult>> {
    let (tx, rx) = mpsc::unbounded_channel();
    let stats = Arc::new(EngineStats::default());
    let looped = Loop::new(sockets, plan, guard, tx.clone(), stats)?;
    let _ = tx.send(Command::Targets(targets));
    let results = Arc::new(std::sync::Mutex::new(Vec::new()));
    let collected = results.clone();
    let sink: Sink = Box::new(move |r| {
        collected.lock().unwrap_or_else(|p| p.into_inner()).push(r);
    });
    looped.run(rx, sink, CancellationToken::new(), true).await;
    let out = std::mem::take(&mut *results.lock().unwrap_or_else(|p| p.into_inner()));
    Ok(out)
}

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Resolves a target name (IPv4 and IPv6; the first answer the agent's
/// rules permit wins, in the system's preference order).
async fn resolve(target: &Target, guard: &Guard) -> Result<IpAddr, String> {
    let addrs: Vec<IpAddr> = tokio::net::lookup_host((target.as_str(), 0))
        .await
        .map_err(|e| format!("cannot resolve {target}: {e}"))?
        .map(|a| a.ip())
        .collect();
    guard.pick(target.as_str(), &addrs)
}

struct Loop {
    v4: AsyncFd<IcmpSocket>,
    v6: Option<AsyncFd<IcmpSocket>>,
    /// Our echo identifier on raw sockets (datagram sockets get theirs
    /// from the kernel, which also sorts replies per socket).
    ident: u16,
    mode: Mode,
    plan: Plan,
    /// What may be pinged: names resolving elsewhere are refused.
    guard: Arc<Guard>,
    tx: mpsc::UnboundedSender<Command>,
    stats: Arc<EngineStats>,
    lookups: TaskTracker,
}

/// The schedule's view of the world during one turn of the loop.
struct LoopIo<'a> {
    v4: &'a AsyncFd<IcmpSocket>,
    v6: Option<&'a AsyncFd<IcmpSocket>>,
    ident: u16,
    sink: &'a mut Sink,
    tx: &'a mpsc::UnboundedSender<Command>,
    lookups: &'a TaskTracker,
    guard: &'a Arc<Guard>,
}

impl schedule::Io for LoopIo<'_> {
    fn send(&mut self, addr: IpAddr, seq: u16) -> std::io::Result<Instant> {
        let sock = match addr {
            IpAddr::V4(_) => self.v4,
            IpAddr::V6(_) => self
                .v6
                .ok_or_else(|| std::io::Error::other("no IPv6 ICMP socket on this host"))?,
        };
        let at = Instant::now();
        sock.get_ref().send(addr, self.ident, seq)?;
        Ok(at)
    }

    fn resolve(&mut self, target: &Target, key: Key) {
        let target = target.clone();
        let tx = self.tx.clone();
        let guard = self.guard.clone();
        self.lookups.spawn(async move {
            let r = resolve(&target, &guard).await;
            let _ = tx.send(Command::Resolved(key, r));
        });
    }

    fn result(&mut self, result: RoundResult) {
        (self.sink)(result)
    }
}

impl Loop {
    fn new(
        sockets: Sockets,
        plan: Plan,
        guard: Arc<Guard>,
        tx: mpsc::UnboundedSender<Command>,
        stats: Arc<EngineStats>,
    ) -> std::io::Result<Loop> {
        let mode = sockets.mode;
        Ok(Loop {
            v4: register(sockets.v4)?,
            v6: sockets.v6.map(register).transpose()?,
            ident: rand::random(),
            mode,
            plan,
            guard,
            tx,
            stats,
            lookups: TaskTracker::new(),
        })
    }

    async fn run(
        self,
        mut rx: mpsc::UnboundedReceiver<Command>,
        mut sink: Sink,
        stop: CancellationToken,
        until_idle: bool,
    ) {
        let now = Instant::now();
        let mut sched = Schedule::new(self.plan.clone(), now, unix_ms(SystemTime::now()));
        let started_at = now;
        let mut armed = now + Duration::from_secs(3600);
        let sleep = tokio::time::sleep_until(armed);
        tokio::pin!(sleep);
        let mut started = false;
        let mut reported_skips = 0u64;
        let mut last_skip_report: Option<Instant> = None;
        loop {
            let now = Instant::now();
            let mut io = LoopIo {
                v4: &self.v4,
                v6: self.v6.as_ref(),
                ident: self.ident,
                sink: &mut sink,
                tx: &self.tx,
                lookups: &self.lookups,
                guard: &self.guard,
            };
            let wake = sched.run_due(now, unix_ms(SystemTime::now()), &mut io);
            self.stats.update(&sched.counters, sched.interval());
            let skipped = sched.counters.skipped;
            if skipped > reported_skips
                && last_skip_report.is_none_or(|t| now.duration_since(t) >= SKIP_REPORT_EVERY)
            {
                tracing::warn!(
                    skipped = skipped - reported_skips,
                    total = skipped,
                    "slots skipped: their rounds could not start in time (the agent was stopped, starved of CPU or suspended); none is replayed"
                );
                reported_skips = skipped;
                last_skip_report = Some(now);
            }
            if until_idle && started && sched.idle() {
                break;
            }
            // Wake on a grid of ticks: sends due within one tick go out
            // together.
            let wake = wake.map_or(now + Duration::from_secs(3600), |w| {
                on_grid(started_at, w, sched.tick())
            });
            if wake != armed {
                sleep.as_mut().reset(wake);
                armed = wake;
            }
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                ready = self.v4.readable() => {
                    if let Ok(mut guard) = ready {
                        self.drain(&mut guard, &mut sched, &mut io);
                    }
                }
                ready = readable(self.v6.as_ref()) => {
                    if let Ok(mut guard) = ready {
                        self.drain(&mut guard, &mut sched, &mut io);
                    }
                }
                cmd = rx.recv() => {
                    let Some(cmd) = cmd else { break };
                    let now = Instant::now();
                    let wall = unix_ms(SystemTime::now());
                    match cmd {
                        Command::Targets(t) => {
                            sched.set_targets(&t, now, wall);
                            started = true;
                        }
                        Command::Plan(p) => {
                            sched.set_plan(p, now, wall);
                        }
                        Command::Resolved(key, addr) => sched.on_resolved(key, addr, now, &mut io),
                    }
                }
                _ = &mut sleep => {}
            }
        }
        self.lookups.close();
    }

    /// Reads every waiting packet of one socket.
    fn drain(
        &self,
        guard: &mut tokio::io::unix::AsyncFdReadyGuard<'_, IcmpSocket>,
        sched: &mut Schedule,
        io: &mut LoopIo<'_>,
    ) {
        loop {
            match guard.try_io(|fd| fd.get_ref().recv()) {
                Ok(Ok(Some(reply))) => {
                    if self.mode == Mode::Raw && reply.ident != self.ident {
                        continue;
                    }
                    sched.on_reply(reply.from, reply.seq, Instant::now(), io);
                }
                Ok(Ok(None)) => {}
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "ICMP receive error");
                    break;
                }
                Err(_would_block) => break,
            }
        }
    }
}

/// The first point of the grid `origin + k * tick` at or after `at`.
fn on_grid(origin: Instant, at: Instant, tick: Duration) -> Instant {
    let tick_ns = tick.as_nanos().max(1);
    let since = at.saturating_duration_since(origin).as_nanos();
    let k = since.div_ceil(tick_ns);
    let offset = k.saturating_mul(tick_ns);
    origin + Duration::from_nanos(u64::try_from(offset).unwrap_or(u64::MAX))
}

fn register(s: IcmpSocket) -> std::io::Result<AsyncFd<IcmpSocket>> {
    // SAFETY: the socket owns its descriptor for as long as it lives, and
    // as_raw_fd always returns that one.
    Ok(unsafe { AsyncFd::register_with_interest(s, tokio::io::Interest::READABLE)? })
}

async fn readable(
    fd: Option<&AsyncFd<IcmpSocket>>,
) -> std::io::Result<tokio::io::unix::AsyncFdReadyGuard<'_, IcmpSocket>> {
    match fd {
        Some(fd) => fd.readable().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wake_ups_fall_on_a_grid_of_ticks() {
        let o = Instant::now();
        let ms = Duration::from_millis;
        assert_eq!(on_grid(o, o, ms(50)), o);
        assert_eq!(on_grid(o, o + ms(1), ms(50)), o + ms(50));
        assert_eq!(on_grid(o, o + ms(50), ms(50)), o + ms(50));
        assert_eq!(on_grid(o, o + ms(51), ms(50)), o + ms(100));
        // Before the origin: the origin.
        assert_eq!(on_grid(o + ms(10), o, ms(50)), o + ms(10));
    }
}
