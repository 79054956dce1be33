//! The agent's one schedule, as a state machine driven by its caller (the
//! engine's loop, or a test with made-up clocks): a queue of next sends, a
//! table of echoes in flight, one timeout sweep and one rate limiter, for
//! every target at once.
//!
//! Rounds start at slots `k * interval + offset` named in wall-clock Unix
//! milliseconds. Targets are spread over the interval by a hash of (agent
//! seed, target), so different agents reach a target at different moments
//! and an unchanged target keeps its slot when the list changes; when the
//! list needs more than half of `max_rate`, they are spaced exactly evenly
//! (in hash order) so the echo rate has no bursts. Waiting runs on
//! the monotonic clock: the wall clock only names slots. A slot whose round
//! cannot start within one echo spacing is skipped and counted, never
//! replayed. When the list needs more echoes per second than `max_rate`,
//! the interval is stretched, the same for every target.

use std::cmp::Reverse;
use std::collections::hash_map::DefaultHasher;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::PingSettings;
use crate::protocol::Target;

/// A wall clock difference from the monotonic one beyond this is a step
/// (logged, slots renamed); below it, a slew (followed quietly).
const CLOCK_STEP_MS: i64 = 1000;
const CLOCK_SLEW_MS: i64 = 50;
/// Sends are grouped in ticks of this many echoes' worth of `max_rate`
/// (between 1 ms and [`MAX_TICK`]): one wake-up sends a few echoes instead
/// of one, which is most of the cost per echo. A round starts at most one
/// tick after its slot, and the largest burst is one tick's worth plus one.
const ECHOES_PER_TICK: f64 = 8.0;
const MAX_TICK: Duration = Duration::from_millis(50);
const MIN_TICK: Duration = Duration::from_millis(1);

/// What the schedule runs on.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub ping: PingSettings,
    /// Echo requests per second, whole agent (> 0).
    pub max_rate: f64,
    /// Mixed into the target order: the agent's name and instance.
    pub seed: String,
    /// One round per target, starting now, then nothing (`--once`).
    pub once: bool,
}

/// What the schedule asks of the outside world.
pub trait Io {
    /// Sends one echo request; returns the moment it left.
    fn send(&mut self, addr: IpAddr, seq: u16) -> std::io::Result<Instant>;
    /// Resolves a name; the answer comes back through
    /// [`Schedule::on_resolved`] with `key`.
    fn resolve(&mut self, target: &Target, key: Key);
    /// A finished round.
    fn result(&mut self, result: RoundResult);
}

/// Names one target entry across list changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    idx: u32,
    id: u64,
}

/// One round of one target.
#[derive(Debug, Clone, PartialEq)]
pub struct RoundResult {
    pub target: Target,
    /// Address pinged; `None` when the name did not resolve.
    pub addr: Option<IpAddr>,
    /// The slot, Unix milliseconds: the round's timestamp.
    pub slot_ms: u64,
    /// Interval in effect (stretched when the rate limit requires it).
    pub interval: Duration,
    /// Echo requests actually sent.
    pub sent: u32,
    /// One entry per echo, in send order: milliseconds, `None` if lost.
    pub rtts: Vec<Option<f64>>,
    pub error: Option<String>,
}

/// Counters since start.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    pub rounds: u64,
    pub sent: u64,
    pub received: u64,
    /// Slots not served because the round could not start in time.
    pub skipped: u64,
    pub send_errors: u64,
    pub clock_steps: u64,
}

#[derive(Debug)]
enum State {
    /// Next round at this slot.
    Waiting { slot: u64 },
    /// Slot reached, name being resolved.
    Resolving { slot: u64 },
    /// Echo `m` of the current round is next.
    Echo { m: u32 },
    /// `--once`: done.
    Idle,
}

#[derive(Debug)]
struct Round {
    slot: u64,
    /// When echo 0 was due (monotonic): later echoes follow at `spacing`.
    start: Instant,
    addr: Option<IpAddr>,
    rtts: Vec<Option<f64>>,
    sent: u32,
    attempted: u32,
    pending: u32,
    error: Option<String>,
    interval: Duration,
}

#[derive(Debug)]
struct Entry {
    target: Target,
    id: u64,
    /// Bumped on every queue push: older queue items are stale.
    tick: u32,
    order: u64,
    offset_ms: u64,
    /// The next round starts after this (wall ms): the last one's replies
    /// are all in or timed out by then.
    not_before: u64,
    state: State,
    round: Option<Round>,
}

#[derive(Debug, Clone, Copy)]
struct Flight {
    idx: u32,
    id: u64,
    slot: u64,
    echo: u32,
    sent_at: Instant,
    serial: u64,
}

/// The schedule of every target.
pub struct Schedule {
    plan: Plan,
    interval_ms: u64,
    period: Duration,
    tick: Duration,
    entries: Vec<Option<Entry>>,
    free: Vec<u32>,
    index: HashMap<Target, u32>,
    queue: BinaryHeap<Reverse<(Instant, u32, u64, u32)>>,
    flights: HashMap<u16, Flight>,
    timeouts: VecDeque<(Instant, u16, u64)>,
    next_seq: u16,
    next_serial: u64,
    next_id: u64,
    /// Earliest moment of the next send (rate limit).
    next_send: Instant,
    anchor: (Instant, u64),
    pub counters: Counters,
}

fn order(seed: &str, target: &Target) -> u64 {
    let mut h = DefaultHasher::new();
    seed.hash(&mut h);
    target.hash(&mut h);
    h.finish()
}

/// The first slot strictly after `after_ms`.
pub fn next_slot(after_ms: u64, interval_ms: u64, offset_ms: u64) -> u64 {
    let interval_ms = interval_ms.max(1);
    let k = after_ms.saturating_sub(offset_ms) / interval_ms;
    let slot = k.saturating_mul(interval_ms).saturating_add(offset_ms);
    if slot > after_ms {
        slot
    } else {
        slot.saturating_add(interval_ms)
    }
}

/// Milliseconds with microsecond precision.
fn round_ms(d: Duration) -> f64 {
    (d.as_micros() as f64) / 1000.0
}

impl Schedule {
    pub fn new(plan: Plan, now: Instant, wall_ms: u64) -> Schedule {
        let mut s = Schedule {
            interval_ms: 1,
            period: Duration::ZERO,
            tick: MIN_TICK,
            plan,
            entries: Vec::new(),
            free: Vec::new(),
            index: HashMap::new(),
            queue: BinaryHeap::new(),
            flights: HashMap::new(),
            timeouts: VecDeque::new(),
            next_seq: rand::random(),
            next_serial: 0,
            next_id: 0,
            next_send: now,
            anchor: (now, wall_ms),
            counters: Counters::default(),
        };
        s.replan(now, wall_ms);
        s
    }

    /// How long sends may be held to go out together (see
    /// `ECHOES_PER_TICK`): the caller wakes at most once per tick for
    /// sends.
    pub fn tick(&self) -> Duration {
        self.tick
    }

    /// The interval in effect, stretched when the rate limit requires it.
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// True when nothing is left to do (`--once` finished).
    pub fn idle(&self) -> bool {
        self.flights.is_empty()
            && self
                .entries
                .iter()
                .flatten()
                .all(|e| matches!(e.state, State::Idle) && e.round.is_none())
    }

    fn mono(&self, wall_ms: u64) -> Instant {
        let (m, w) = self.anchor;
        if wall_ms >= w {
            // A slot centuries away (a clock gone mad) must not overflow.
            m.checked_add(Duration::from_millis(wall_ms - w))
                .unwrap_or(m + Duration::from_secs(100 * 365 * 86_400))
        } else {
            m.checked_sub(Duration::from_millis(w - wall_ms))
                .unwrap_or(m)
        }
    }

    fn wall(&self, at: Instant) -> u64 {
        let (m, w) = self.anchor;
        let ms = at.saturating_duration_since(m).as_millis() as u64;
        w.saturating_add(ms)
    }

    fn push(&mut self, idx: u32, at: Instant) {
        if let Some(Some(e)) = self.entries.get_mut(idx as usize) {
            e.tick = e.tick.wrapping_add(1);
            self.queue.push(Reverse((at, idx, e.id, e.tick)));
        }
    }

    /// Replaces the settings; returns the interval now in effect.
    pub fn set_plan(&mut self, plan: Plan, now: Instant, wall_ms: u64) -> Duration {
        self.plan = plan;
        self.replan(now, wall_ms);
        self.interval()
    }

    /// Replaces the target list: added targets start, removed ones stop
    /// (their round in progress is dropped), unchanged ones keep their slot
    /// unless the spread over the interval moved it.
    pub fn set_targets(&mut self, targets: &[Target], now: Instant, wall_ms: u64) {
        let wanted: std::collections::HashSet<&Target> = targets.iter().collect();
        let gone: Vec<Target> = self
            .index
            .keys()
            .filter(|t| !wanted.contains(t))
            .cloned()
            .collect();
        for t in gone {
            if let Some(idx) = self.index.remove(&t) {
                if let Some(slot) = self.entries.get_mut(idx as usize) {
                    *slot = None;
                }
                self.free.push(idx);
            }
        }
        for t in targets {
            if self.index.contains_key(t) {
                continue;
            }
            self.next_id += 1;
            let entry = Entry {
                target: t.clone(),
                id: self.next_id,
                tick: 0,
                order: order(&self.plan.seed, t),
                offset_ms: u64::MAX,
                not_before: 0,
                state: State::Waiting { slot: 0 },
                round: None,
            };
            let idx = match self.free.pop() {
                Some(i) => {
                    self.entries[i as usize] = Some(entry);
                    i
                }
                None => {
                    self.entries.push(Some(entry));
                    (self.entries.len() - 1) as u32
                }
            };
            self.index.insert(t.clone(), idx);
        }
        self.replan(now, wall_ms);
    }

    /// Recomputes the interval and each target's offset, and moves the
    /// waiting targets whose slot changed.
    fn replan(&mut self, now: Instant, wall_ms: u64) {
        let ping = self.plan.ping;
        let rate = self.plan.max_rate.max(0.001);
        self.period = Duration::from_secs_f64(1.0 / rate);
        // Never more than half an echo spacing: rounds must start within one.
        self.tick = Duration::from_secs_f64(ECHOES_PER_TICK / rate)
            .min(MAX_TICK)
            .min(ping.spacing() / 2)
            .max(MIN_TICK);
        let n = self.index.len() as u64;
        let wanted = ping.interval.as_millis() as u64;
        // Milliseconds needed for n * count echoes at max_rate.
        let needed = ((n as f64) * f64::from(ping.count) * 1000.0 / rate).ceil() as u64;
        let before = self.interval_ms;
        self.interval_ms = wanted.max(needed).max(1);
        if self.interval_ms != before && needed > wanted && !self.plan.once {
            tracing::warn!(
                targets = n,
                count = ping.count,
                interval_s = ping.interval.as_secs_f64(),
                echoes_per_s = (n as f64) * f64::from(ping.count) / ping.interval.as_secs_f64(),
                max_rate = rate,
                stretched_interval_s = self.interval_ms as f64 / 1000.0,
                "the target list needs more echoes per second than limits.max_rate: the interval is stretched for every target"
            );
        } else if self.interval_ms != before && before > 1 && needed <= wanted {
            tracing::info!(
                interval_s = ping.interval.as_secs_f64(),
                "the target list fits limits.max_rate again: interval back to ping.interval"
            );
        }
        // Sparse lists: the offset is the hash, so an unchanged target keeps
        // its slot when the list changes. Dense ones (more than half of
        // max_rate): targets evenly spaced in hash order, so bursts of
        // nearby offsets never hold a round back past its tolerance.
        let dense = needed.saturating_mul(2) > self.interval_ms;
        let mut ranked: Vec<(u64, u32)> = self
            .entries
            .iter()
            .enumerate()
            .filter_map(|(i, e)| e.as_ref().map(|e| (e.order, i as u32)))
            .collect();
        if dense {
            ranked.sort_unstable();
        }
        let interval = u128::from(self.interval_ms);
        for (rank, (hash, idx)) in ranked.into_iter().enumerate() {
            let offset = if dense {
                (rank as u128 * interval / u128::from(n.max(1))) as u64
            } else {
                hash % self.interval_ms
            };
            let once = self.plan.once;
            let Some(Some(e)) = self.entries.get_mut(idx as usize) else {
                continue;
            };
            let moved = e.offset_ms != offset;
            e.offset_ms = offset;
            if let State::Waiting { slot } = e.state {
                if once && slot == 0 {
                    e.state = State::Waiting { slot: wall_ms };
                    self.push(idx, now);
                } else if !once && (moved || slot == 0) {
                    let slot = next_slot(wall_ms.max(e.not_before), self.interval_ms, offset);
                    e.state = State::Waiting { slot };
                    let at = self.mono(slot);
                    self.push(idx, at);
                }
            }
        }
    }

    /// Follows the wall clock: a slew re-anchors quietly, a step is logged
    /// and renames the waiting slots (none replayed, none skipped).
    fn check_clock(&mut self, now: Instant, wall_ms: u64) {
        let drift = wall_ms as i64 - self.wall(now) as i64;
        if drift.abs() < CLOCK_SLEW_MS {
            return;
        }
        self.anchor = (now, wall_ms);
        if drift.abs() < CLOCK_STEP_MS {
            return;
        }
        self.counters.clock_steps += 1;
        tracing::warn!(
            step_ms = drift,
            "the wall clock stepped: rounds keep their pace, slots are named by the new time; none replayed"
        );
        let idxs: Vec<u32> = self.index.values().copied().collect();
        for idx in idxs {
            let interval_ms = self.interval_ms;
            let Some(Some(e)) = self.entries.get_mut(idx as usize) else {
                continue;
            };
            e.not_before = e.not_before.saturating_add_signed(drift);
            if let State::Waiting { slot } = e.state {
                // A slot due right now stays due.
                let after = wall_ms.saturating_sub(1).max(e.not_before);
                let new = if self.plan.once {
                    slot
                } else {
                    next_slot(after, interval_ms, e.offset_ms)
                };
                e.state = State::Waiting { slot: new };
                let at = self.mono(new);
                self.push(idx, at);
            }
        }
    }

    /// Does everything due at `now`: timeouts, then sends. Returns when to
    /// call again at the latest.
    pub fn run_due(&mut self, now: Instant, wall_ms: u64, io: &mut dyn Io) -> Option<Instant> {
        self.check_clock(now, wall_ms);
        while let Some(&(deadline, seq, serial)) = self.timeouts.front() {
            if deadline > now {
                break;
            }
            self.timeouts.pop_front();
            if self.flights.get(&seq).is_some_and(|f| f.serial == serial) {
                if let Some(f) = self.flights.remove(&seq) {
                    self.settle(f, None, io);
                }
            }
        }
        while let Some(&Reverse((at, idx, id, tick))) = self.queue.peek() {
            if at > now {
                break;
            }
            let valid = matches!(self.entries.get(idx as usize), Some(Some(e)) if e.id == id && e.tick == tick);
            if !valid {
                self.queue.pop();
                continue;
            }
            let starting = matches!(
                self.entries[idx as usize].as_ref().map(|e| &e.state),
                Some(State::Waiting { .. })
            );
            let go = now.max(self.next_send.checked_sub(self.tick).unwrap_or(now));
            if starting && !self.plan.once {
                let slot = match self.entries[idx as usize].as_ref().map(|e| &e.state) {
                    Some(State::Waiting { slot }) => *slot,
                    _ => 0,
                };
                let late = go.saturating_duration_since(self.mono(slot));
                // One spacing, or two ticks when the spacing is shorter
                // than the timer can honour.
                if late > self.plan.ping.spacing().max(self.tick * 2) {
                    self.queue.pop();
                    self.skip(idx, slot, now);
                    continue;
                }
            }
            if go > now {
                // Rate limit: this send waits; so does everything behind it.
                break;
            }
            self.queue.pop();
            self.fire(idx, now, io);
        }
        let mut wake = self.queue.peek().map(|Reverse((at, ..))| {
            (*at).max(self.next_send.checked_sub(self.tick).unwrap_or(*at))
        });
        if let Some(&(deadline, ..)) = self.timeouts.front() {
            wake = Some(wake.map_or(deadline, |w| w.min(deadline)));
        }
        wake
    }

    fn skip(&mut self, idx: u32, slot: u64, now: Instant) {
        let wall = self.wall(now);
        let interval_ms = self.interval_ms;
        let Some(Some(e)) = self.entries.get_mut(idx as usize) else {
            return;
        };
        let next = next_slot(wall.max(e.not_before), interval_ms, e.offset_ms);
        let missed = ((next - slot.min(next)) / interval_ms.max(1)).max(1);
        self.counters.skipped += missed;
        tracing::debug!(ping_target = %e.target, slot, missed, "slot skipped: could not start in time");
        e.state = State::Waiting { slot: next };
        let at = self.mono(next);
        self.push(idx, at);
    }

    fn fire(&mut self, idx: u32, now: Instant, io: &mut dyn Io) {
        let interval = self.interval();
        let Some(Some(e)) = self.entries.get_mut(idx as usize) else {
            return;
        };
        match e.state {
            State::Waiting { slot } => {
                if let Some(ip) = e.target.ip() {
                    e.state = State::Echo { m: 0 };
                    let start = self.mono(slot).min(now);
                    self.begin(idx, slot, start, Ok(ip), interval, now, io);
                } else {
                    e.state = State::Resolving { slot };
                    let key = Key { idx, id: e.id };
                    io.resolve(&e.target, key);
                }
            }
            State::Echo { m } => self.send_echo(idx, m, now, io),
            State::Resolving { .. } | State::Idle => {}
        }
    }

    /// Starts a round; a failed resolution ends it at once.
    #[allow(clippy::too_many_arguments)]
    fn begin(
        &mut self,
        idx: u32,
        slot: u64,
        start: Instant,
        addr: Result<IpAddr, String>,
        interval: Duration,
        now: Instant,
        io: &mut dyn Io,
    ) {
        let count = self.plan.ping.count;
        let Some(Some(e)) = self.entries.get_mut(idx as usize) else {
            return;
        };
        if let Some(old) = e.round.take() {
            // Cannot happen by construction (the next slot comes after the
            // last timeout); finish it rather than mix two rounds.
            self.flights
                .retain(|_, f| !(f.idx == idx && f.slot == old.slot));
            let target = e.target.clone();
            Self::emit(&mut self.counters, target, old, io);
        }
        let Some(Some(e)) = self.entries.get_mut(idx as usize) else {
            return;
        };
        let (ip, error) = match addr {
            Ok(ip) => (Some(ip), None),
            Err(err) => (None, Some(err)),
        };
        e.round = Some(Round {
            slot,
            start,
            addr: ip,
            rtts: vec![None; count as usize],
            sent: 0,
            attempted: 0,
            pending: 0,
            error,
            interval,
        });
        if ip.is_none() {
            if let Some(r) = e.round.as_mut() {
                r.attempted = count;
                r.rtts.clear();
            }
            self.after_last_echo(idx, now);
            self.maybe_finish(idx, io);
            return;
        }
        self.send_echo(idx, 0, now, io);
    }

    fn alloc_seq(&mut self) -> Option<u16> {
        for _ in 0..=u16::MAX as u32 {
            let s = self.next_seq;
            self.next_seq = self.next_seq.wrapping_add(1);
            if !self.flights.contains_key(&s) {
                return Some(s);
            }
        }
        None
    }

    fn send_echo(&mut self, idx: u32, m: u32, now: Instant, io: &mut dyn Io) {
        let ping = self.plan.ping;
        let Some(Some(e)) = self.entries.get(idx as usize) else {
            return;
        };
        let Some(round) = e.round.as_ref() else {
            return;
        };
        let (id, slot, addr, start) = (e.id, round.slot, round.addr, round.start);
        let seq = self.alloc_seq();
        self.next_send = self.next_send.max(now) + self.period;
        let outcome = match (addr, seq) {
            (Some(addr), Some(seq)) => io
                .send(addr, seq)
                .map(|at| (seq, at))
                .map_err(|e| e.to_string()),
            (None, _) => Err("no address".to_owned()),
            (_, None) => Err("too many echoes in flight".to_owned()),
        };
        let ok = outcome.is_ok();
        match outcome {
            Ok((seq, sent_at)) => {
                self.next_serial += 1;
                let serial = self.next_serial;
                self.flights.insert(
                    seq,
                    Flight {
                        idx,
                        id,
                        slot,
                        echo: m,
                        sent_at,
                        serial,
                    },
                );
                self.timeouts
                    .push_back((sent_at + ping.timeout, seq, serial));
                self.counters.sent += 1;
            }
            Err(err) => {
                self.counters.send_errors += 1;
                if let Some(Some(e)) = self.entries.get_mut(idx as usize) {
                    if let Some(r) = e.round.as_mut() {
                        r.error.get_or_insert(format!("send failed: {err}"));
                    }
                }
            }
        }
        let Some(Some(e)) = self.entries.get_mut(idx as usize) else {
            return;
        };
        if let Some(r) = e.round.as_mut() {
            r.attempted += 1;
            // An echo that could not be sent (a local firewall, no route)
            // counts as sent and lost: the round must not read as fine
            // when this host cannot reach the target. `error` says why.
            r.sent += 1;
            if ok {
                r.pending += 1;
            }
        }
        if m + 1 < ping.count {
            e.state = State::Echo { m: m + 1 };
            let at = (start + ping.spacing() * (m + 1)).max(now);
            self.push(idx, at);
        } else {
            self.after_last_echo(idx, now);
        }
        self.maybe_finish(idx, io);
    }

    /// Schedules the next round after the last echo of this one.
    fn after_last_echo(&mut self, idx: u32, now: Instant) {
        let timeout = self.plan.ping.timeout;
        let done_by = self.wall(now + timeout);
        let interval_ms = self.interval_ms;
        let once = self.plan.once;
        let Some(Some(e)) = self.entries.get_mut(idx as usize) else {
            return;
        };
        e.not_before = done_by;
        if once {
            e.state = State::Idle;
            return;
        }
        let slot = next_slot(done_by, interval_ms, e.offset_ms);
        e.state = State::Waiting { slot };
        let at = self.mono(slot);
        self.push(idx, at);
    }

    fn maybe_finish(&mut self, idx: u32, io: &mut dyn Io) {
        let count = self.plan.ping.count;
        let Some(Some(e)) = self.entries.get_mut(idx as usize) else {
            return;
        };
        let done = e
            .round
            .as_ref()
            .is_some_and(|r| r.attempted >= count && r.pending == 0);
        if done {
            if let Some(r) = e.round.take() {
                let target = e.target.clone();
                Self::emit(&mut self.counters, target, r, io);
            }
        }
    }

    fn emit(counters: &mut Counters, target: Target, r: Round, io: &mut dyn Io) {
        counters.rounds += 1;
        io.result(RoundResult {
            target,
            addr: r.addr,
            slot_ms: r.slot,
            interval: r.interval,
            sent: r.sent,
            rtts: r.rtts,
            error: r.error,
        });
    }

    /// An echo's fate: a reply (rtt) or a timeout (`None`).
    fn settle(&mut self, f: Flight, rtt: Option<Duration>, io: &mut dyn Io) {
        let Some(Some(e)) = self.entries.get_mut(f.idx as usize) else {
            return;
        };
        if e.id != f.id {
            return;
        }
        let Some(r) = e.round.as_mut() else {
            return;
        };
        if r.slot != f.slot {
            return;
        }
        r.pending = r.pending.saturating_sub(1);
        if let (Some(rtt), Some(x)) = (rtt, r.rtts.get_mut(f.echo as usize)) {
            *x = Some(round_ms(rtt));
            self.counters.received += 1;
        }
        self.maybe_finish(f.idx, io);
    }

    /// An echo reply from `from` with sequence `seq`, read at `now`.
    pub fn on_reply(&mut self, from: IpAddr, seq: u16, now: Instant, io: &mut dyn Io) {
        let Some(f) = self.flights.get(&seq).copied() else {
            return;
        };
        let addr = match self.entries.get(f.idx as usize) {
            Some(Some(e)) if e.id == f.id => e.round.as_ref().and_then(|r| r.addr),
            _ => None,
        };
        // A reply to someone else's echo that happens to share the
        // sequence number (raw sockets see every host's replies).
        if addr.is_none_or(|a| a.to_canonical() != from.to_canonical()) {
            return;
        }
        self.flights.remove(&seq);
        self.settle(f, Some(now.saturating_duration_since(f.sent_at)), io);
    }

    /// The answer to a [`Io::resolve`] request.
    pub fn on_resolved(
        &mut self,
        key: Key,
        addr: Result<IpAddr, String>,
        now: Instant,
        io: &mut dyn Io,
    ) {
        let Some(Some(e)) = self.entries.get_mut(key.idx as usize) else {
            return;
        };
        if e.id != key.id {
            return;
        }
        let State::Resolving { slot } = e.state else {
            return;
        };
        e.state = State::Echo { m: 0 };
        let interval = self.interval();
        // The round's echoes follow the answer, spaced as usual.
        self.begin(key.idx, slot, now, addr, interval, now, io);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    const WALL0: u64 = 1_800_000_000_000;

    #[derive(Default)]
    struct Fake {
        sends: Vec<(Instant, IpAddr, u16)>,
        results: Vec<RoundResult>,
        resolves: Vec<(Target, Key)>,
        /// Replies come back after this; `None`: nothing answers.
        rtt: Option<Duration>,
        /// Sends fail (EPERM, as from a local firewall).
        refuse: bool,
        replies: VecDeque<(Instant, IpAddr, u16)>,
        now: Option<Instant>,
    }

    impl Io for Fake {
        fn send(&mut self, addr: IpAddr, seq: u16) -> std::io::Result<Instant> {
            let now = self.now.expect("time set");
            if self.refuse {
                return Err(std::io::Error::from(std::io::ErrorKind::PermissionDenied));
            }
            self.sends.push((now, addr, seq));
            if let Some(rtt) = self.rtt {
                self.replies.push_back((now + rtt, addr, seq));
            }
            Ok(now)
        }
        fn resolve(&mut self, target: &Target, key: Key) {
            self.resolves.push((target.clone(), key));
        }
        fn result(&mut self, result: RoundResult) {
            self.results.push(result);
        }
    }

    /// A simulated run from `from` to `until`; the wall clock is
    /// `WALL0 + (t - t0) + step(t)`.
    fn drive(
        s: &mut Schedule,
        io: &mut Fake,
        t0: Instant,
        from: Instant,
        until: Instant,
        step: &dyn Fn(Instant) -> i64,
    ) {
        let wall =
            |t: Instant| (WALL0 + (t - t0).as_millis() as u64).saturating_add_signed(step(t));
        let mut now = from;
        loop {
            while let Some(&(at, addr, seq)) = io.replies.front() {
                if at > now {
                    break;
                }
                io.replies.pop_front();
                io.now = Some(at);
                s.on_reply(addr, seq, at, io);
            }
            io.now = Some(now);
            let wake = s.run_due(now, wall(now), io);
            let reply = io.replies.front().map(|r| r.0);
            let next = match (wake, reply) {
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) | (None, Some(a)) => a,
                (None, None) => break,
            };
            if next > until {
                break;
            }
            assert!(next >= now, "time went back");
            now = next.max(now + Duration::from_micros(1));
        }
    }

    fn settings(interval_s: u64, count: u32, timeout_ms: u64) -> PingSettings {
        PingSettings {
            interval: Duration::from_secs(interval_s),
            count,
            timeout: Duration::from_millis(timeout_ms),
        }
    }

    fn plan(ping: PingSettings, max_rate: f64) -> Plan {
        Plan {
            ping,
            max_rate,
            seed: "probe/1".into(),
            once: false,
        }
    }

    /// A schedule at `t0` running `list`, and a world answering after
    /// `rtt_ms` (never when `None`).
    fn start(plan: Plan, list: &[Target], rtt_ms: Option<u64>) -> (Instant, Schedule, Fake) {
        let t0 = Instant::now();
        let mut s = Schedule::new(plan, t0, WALL0);
        let io = Fake {
            rtt: rtt_ms.map(Duration::from_millis),
            ..Fake::default()
        };
        s.set_targets(list, t0, WALL0);
        (t0, s, io)
    }

    /// Every one of `n` targets has at least `min_rounds` results, one
    /// interval apart, each saying that interval.
    fn assert_regular(io: &Fake, n: usize, interval_ms: u64, min_rounds: usize) {
        let mut per_target: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for r in &io.results {
            assert_eq!(r.interval, Duration::from_millis(interval_ms));
            per_target
                .entry(r.target.to_string())
                .or_default()
                .push(r.slot_ms);
        }
        assert_eq!(per_target.len(), n);
        for slots in per_target.values() {
            assert!(slots.len() >= min_rounds, "{slots:?}");
            assert!(
                slots.windows(2).all(|w| w[1] - w[0] == interval_ms),
                "{slots:?}"
            );
        }
    }

    /// Echoes sent from `from_ms` (included) to `to_ms` after `t0`.
    fn sends_between(io: &Fake, t0: Instant, from_ms: u64, to_ms: u64) -> usize {
        let (from, to) = (
            t0 + Duration::from_millis(from_ms),
            t0 + Duration::from_millis(to_ms),
        );
        io.sends.iter().filter(|s| s.0 >= from && s.0 < to).count()
    }

    fn targets(n: usize) -> Vec<Target> {
        (0..n)
            .map(|i| {
                format!("10.{}.{}.{}", i / 62500, (i / 250) % 250, i % 250 + 1)
                    .parse()
                    .unwrap()
            })
            .collect()
    }

    /// Checks every round started within one spacing of its slot: returns
    /// the largest lateness.
    fn max_lateness(io: &Fake, t0: Instant, spacing: Duration) -> Duration {
        let mut by_addr: BTreeMap<IpAddr, Vec<Instant>> = BTreeMap::new();
        for (at, addr, _) in &io.sends {
            by_addr.entry(*addr).or_default().push(*at);
        }
        let mut worst = Duration::ZERO;
        for r in &io.results {
            let addr = r.addr.expect("literal");
            let slot_at = t0 + Duration::from_millis(r.slot_ms - WALL0);
            let first = by_addr[&addr]
                .iter()
                .find(|&&t| t >= slot_at)
                .copied()
                .expect("a send for the round");
            let late = first - slot_at;
            assert!(
                late <= spacing,
                "{:?} started {late:?} after its slot",
                r.target
            );
            worst = worst.max(late);
        }
        worst
    }

    #[test]
    fn results_are_stamped_with_their_slot_one_interval_apart() {
        let ping = settings(10, 3, 1000);
        let (t0, mut s, mut io) = start(plan(ping, 100.0), &targets(20), Some(5));
        drive(
            &mut s,
            &mut io,
            t0,
            t0,
            t0 + Duration::from_secs(65),
            &|_| 0,
        );
        assert_eq!(s.interval(), Duration::from_secs(10), "not stretched");
        max_lateness(&io, t0, ping.spacing());
        for r in &io.results {
            assert_eq!((r.sent, r.rtts.len()), (3, 3));
            assert!(r.rtts.iter().all(|x| *x == Some(5.0)), "{:?}", r.rtts);
        }
        assert_regular(&io, 20, 10_000, 5);
        assert_eq!(s.counters.skipped, 0);
    }

    #[test]
    fn echoes_that_cannot_be_sent_count_as_lost() {
        let ping = settings(10, 3, 1000);
        let (t0, mut s, mut io) = start(plan(ping, 100.0), &targets(1), Some(5));
        io.refuse = true;
        drive(
            &mut s,
            &mut io,
            t0,
            t0,
            t0 + Duration::from_secs(15),
            &|_| 0,
        );
        let r = io.results.first().expect("a round");
        assert_eq!(r.sent, 3, "attempted echoes count as sent");
        assert_eq!(r.rtts, vec![None, None, None], "and as lost");
        assert!(
            r.error
                .as_deref()
                .is_some_and(|e| e.starts_with("send failed")),
            "{:?}",
            r.error
        );
        assert_eq!(s.counters.sent, 0, "the kernel sent nothing");
        assert!(s.counters.send_errors >= 3);
    }

    #[test]
    fn a_list_beyond_max_rate_stretches_the_interval_and_never_falls_behind() {
        // The shipped example's limits: 1,000 targets x 5 / 60 s = 83/s
        // against max_rate 50.
        let ping = settings(60, 5, 2000);
        let (t0, mut s, mut io) = start(plan(ping, 50.0), &targets(1000), Some(1));
        assert_eq!(s.interval(), Duration::from_secs(100));
        drive(
            &mut s,
            &mut io,
            t0,
            t0,
            t0 + Duration::from_secs(450),
            &|_| 0,
        );
        assert_eq!(s.counters.skipped, 0, "slots skipped");
        // Every round starts within a spacing of its slot, rounds stay one
        // (stretched) interval apart, and the result says which interval.
        max_lateness(&io, t0, ping.spacing());
        assert_regular(&io, 1000, 100_000, 3);
        // Never above max_rate: at most 50 sends in any 1 s window.
        let times: Vec<Instant> = io.sends.iter().map(|s| s.0).collect();
        let mut j = 0;
        for i in 0..times.len() {
            while times[i] - times[j] >= Duration::from_secs(1) {
                j += 1;
            }
            assert!(i - j < 51, "{} sends within 1 s", i - j + 1);
        }
        // And it keeps up: 1,000 x 5 echoes per 100 s.
        assert_eq!(sends_between(&io, t0, 200_000, 400_000), 10_000);
    }

    #[test]
    fn a_stall_skips_and_counts_slots_instead_of_replaying_them() {
        let ping = settings(10, 1, 1000);
        let (t0, mut s, mut io) = start(plan(ping, 100.0), &targets(10), Some(2));
        drive(
            &mut s,
            &mut io,
            t0,
            t0,
            t0 + Duration::from_secs(20),
            &|_| 0,
        );
        let before = io.sends.len();
        // The process is frozen for 45 s (SIGSTOP, a starved VM): no call.
        let resume = t0 + Duration::from_secs(65);
        drive(
            &mut s,
            &mut io,
            t0,
            resume,
            resume + Duration::from_millis(1),
            &|_| 0,
        );
        assert_eq!(io.sends.len(), before, "missed slots replayed");
        // 4 or 5 slots per target fell in the freeze.
        assert!(
            (40..=50).contains(&s.counters.skipped),
            "{}",
            s.counters.skipped
        );
        drive(
            &mut s,
            &mut io,
            t0,
            resume,
            t0 + Duration::from_secs(100),
            &|_| 0,
        );
        max_lateness(&io, t0, ping.spacing());
        let frozen = WALL0 + 21_000..WALL0 + 64_000;
        assert!(io.results.iter().all(|r| !frozen.contains(&r.slot_ms)));
        // Back on pace: one round per target per interval.
        assert_eq!(sends_between(&io, t0, 70_000, 100_000), 30);
    }

    #[test]
    fn clock_steps_are_logged_not_replayed_and_do_not_silence() {
        for step_ms in [3_600_000i64, -3_600_000] {
            let ping = settings(10, 1, 1000);
            let (t0, mut s, mut io) = start(plan(ping, 100.0), &targets(10), Some(2));
            let at = t0 + Duration::from_secs(25);
            let step = move |t: Instant| if t >= at { step_ms } else { 0 };
            drive(
                &mut s,
                &mut io,
                t0,
                t0,
                t0 + Duration::from_secs(100),
                &step,
            );
            assert_eq!(s.counters.clock_steps, 1, "step {step_ms}");
            assert_eq!(s.counters.skipped, 0, "step {step_ms}");
            // The pace is the monotonic one: 10 rounds per 10 s all along,
            // no burst after a step forward, no silence after a step back.
            for w in 0..9u64 {
                let from = 10_000 * w + 5_000;
                let n = sends_between(&io, t0, from, from + 10_000);
                assert_eq!(n, 10, "step {step_ms}: window {w}");
            }
            // Slots after the step carry the new time.
            let last = io.results.last().unwrap().slot_ms;
            let expected = (WALL0 + 100_000).saturating_add_signed(step_ms);
            assert!(
                last.abs_diff(expected) < 11_000,
                "step {step_ms}: {last} vs {expected}"
            );
        }
    }

    #[test]
    fn sparse_lists_keep_slots_when_the_list_changes() {
        let t0 = Instant::now();
        let mut s = Schedule::new(plan(settings(60, 5, 2000), 50.0), t0, WALL0);
        let mut io = Fake::default();
        let all = targets(50);
        s.set_targets(&all[..10], t0, WALL0);
        let offsets = |s: &Schedule| -> BTreeMap<Target, u64> {
            s.entries
                .iter()
                .flatten()
                .map(|e| (e.target.clone(), e.offset_ms))
                .collect()
        };
        let before = offsets(&s);
        io.now = Some(t0);
        s.set_targets(&all[..20], t0, WALL0);
        let after = offsets(&s);
        for (t, o) in &before {
            assert_eq!(after[t], *o, "{t} moved");
        }
    }

    #[test]
    fn replies_from_elsewhere_and_late_replies_are_ignored() {
        let (t0, mut s, mut io) = start(plan(settings(10, 1, 1000), 100.0), &targets(1), None);
        drive(
            &mut s,
            &mut io,
            t0,
            t0,
            t0 + Duration::from_secs(10),
            &|_| 0,
        );
        let (at, addr, seq) = io.sends[0];
        io.now = Some(at);
        // Right sequence, wrong address; then a reply after the timeout.
        s.on_reply(
            "10.9.9.9".parse().unwrap(),
            seq,
            at + Duration::from_millis(1),
            &mut io,
        );
        drive(
            &mut s,
            &mut io,
            t0,
            at + Duration::from_millis(1),
            at + Duration::from_millis(1500),
            &|_| 0,
        );
        s.on_reply(addr, seq, at + Duration::from_millis(1600), &mut io);
        assert_eq!(io.results.len(), 1);
        assert_eq!(io.results[0].rtts, vec![None]);
        assert_eq!(io.results[0].sent, 1);
        assert_eq!(s.counters.received, 0);
    }

    #[test]
    fn names_are_resolved_at_their_slot_and_failures_reported() {
        let names: Vec<Target> = vec!["a.example".parse().unwrap(), "b.example".parse().unwrap()];
        let (t0, mut s, mut io) = start(plan(settings(10, 2, 500), 100.0), &names, Some(3));
        drive(
            &mut s,
            &mut io,
            t0,
            t0,
            t0 + Duration::from_secs(10),
            &|_| 0,
        );
        assert_eq!(io.resolves.len(), 2);
        let now = t0 + Duration::from_secs(10);
        io.now = Some(now);
        let resolves = std::mem::take(&mut io.resolves);
        for (t, key) in resolves {
            let answer = if t.as_str() == "a.example" {
                Ok("192.0.2.1".parse().unwrap())
            } else {
                Err("cannot resolve b.example".to_owned())
            };
            s.on_resolved(key, answer, now, &mut io);
        }
        drive(
            &mut s,
            &mut io,
            t0,
            now,
            now + Duration::from_secs(3),
            &|_| 0,
        );
        let a = io
            .results
            .iter()
            .find(|r| r.target.as_str() == "a.example")
            .unwrap();
        assert_eq!((a.sent, a.rtts.clone()), (2, vec![Some(3.0), Some(3.0)]));
        let b = io
            .results
            .iter()
            .find(|r| r.target.as_str() == "b.example")
            .unwrap();
        assert_eq!((b.sent, b.addr), (0, None));
        assert!(b.error.as_deref().unwrap().contains("resolve"));
        assert!(b.slot_ms >= WALL0 && b.slot_ms < WALL0 + 10_000);
    }

    #[test]
    fn once_pings_each_target_one_round_then_is_idle() {
        let mut p = plan(settings(60, 3, 500), 10.0);
        p.once = true;
        let (t0, mut s, mut io) = start(p, &targets(5), Some(1));
        assert!(!s.idle());
        drive(
            &mut s,
            &mut io,
            t0,
            t0,
            t0 + Duration::from_secs(600),
            &|_| 0,
        );
        assert!(s.idle());
        assert_eq!(io.results.len(), 5);
        assert_eq!(io.sends.len(), 15);
        assert!(io
            .results
            .iter()
            .all(|r| r.rtts.iter().all(Option::is_some)));
    }

    #[test]
    fn slots_are_one_interval_apart_and_strictly_after() {
        assert_eq!(next_slot(10_000, 1000, 250), 10_250);
        assert_eq!(next_slot(10_250, 1000, 250), 11_250);
        assert_eq!(next_slot(10_249, 1000, 250), 10_250);
        assert_eq!(next_slot(0, 60_000, 0), 60_000);
        assert_eq!(next_slot(100, 60_000, 30_000), 30_000);
        assert_eq!(next_slot(u64::MAX, 1000, 5), u64::MAX);
    }
}
