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
        tracker.spawn(looped.run(rx, sink, stop, false));
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
    fn send(&mut self, addr: IpAddr, seq: u16) -> std::io::Result<()> {
        let sock = match addr {
            IpAddr::V4(_) => self.v4,
            IpAddr::V6(_) => self
                .v6
                .ok_or_else(|| std::io::Error::other("no IPv6 ICMP socket on this host"))?,
        };
        sock.get_ref().send(addr, self.ident, seq)
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
        let sleep = tokio::time::sleep_until(now + Duration::from_secs(3600));
        tokio::pin!(sleep);
        let mut started = false;
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
            if until_idle && started && sched.idle() {
                break;
            }
            sleep
                .as_mut()
                .reset(wake.unwrap_or(now + Duration::from_secs(3600)));
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
