//! ICMP echo rounds on raw sockets: one surge-ping client per address family
//! shared by every target, a distinct identifier per target, increasing
//! sequence numbers, and one agent-wide rate limit.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use surge_ping::{Client, Config, PingIdentifier, PingSequence, SurgeError, ICMP};
use tokio::time::Instant;

use crate::config::PingSettings;

/// Echo payload: 56 bytes like ping(8), recognisable in a capture.
const PAYLOAD: &[u8; 56] = b"swarming echo request payload, 56 bytes like ping(8)....";

/// Receive buffer asked for each ICMP socket, in bytes: replies of many
/// targets can arrive together.
const RCVBUF_BYTES: usize = 4 * 1024 * 1024;

/// Why the ICMP sockets could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum PingError {
    #[error("cannot open a raw ICMP socket ({0}); the agent needs CAP_NET_RAW")]
    Permission(std::io::Error),
    #[error("cannot open an ICMP socket: {0}")]
    Io(std::io::Error),
}

/// Shared raw sockets (one per address family) and identifier allocation.
pub struct Pinger {
    v4: Client,
    /// `None` where the host has no IPv6.
    v6: Option<Client>,
    next_ident: AtomicU16,
}

fn open(kind: ICMP) -> std::io::Result<Client> {
    let cfg = Config::builder()
        .kind(kind)
        // Ask for RAW explicitly: unprivileged ICMP is off on Debian, and a
        // failure must say so instead of silently trying DGRAM first.
        .sock_type_hint(socket2::Type::RAW)
        .build();
    let client = Client::new(&cfg)?;
    let fd = client.get_socket().get_native_sock();
    let borrowed = BorrowedFd(fd);
    let sock = socket2::SockRef::from(&borrowed);
    if let Err(e) = sock.set_recv_buffer_size(RCVBUF_BYTES) {
        tracing::debug!(error = %e, "cannot raise SO_RCVBUF on the ICMP socket");
    }
    Ok(client)
}

/// Lets socket2 set options on a descriptor it does not own.
struct BorrowedFd(std::os::fd::RawFd);

impl std::os::fd::AsFd for BorrowedFd {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        // The descriptor belongs to the surge-ping client, alive for the
        // whole call this borrow is used in.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(self.0) }
    }
}

impl Pinger {
    /// Opens the raw ICMP sockets. Must run inside a tokio runtime.
    pub fn new() -> Result<Pinger, PingError> {
        let v4 = open(ICMP::V4).map_err(|e| match e.kind() {
            std::io::ErrorKind::PermissionDenied => PingError::Permission(e),
            _ => PingError::Io(e),
        })?;
        let v6 = match open(ICMP::V6) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(error = %e, "no IPv6 ICMP socket: IPv6 targets will fail");
                None
            }
        };
        Ok(Pinger {
            v4,
            v6,
            next_ident: AtomicU16::new(rand::random()),
        })
    }

    /// A fresh echo identifier for one target.
    pub fn ident(&self) -> u16 {
        self.next_ident.fetch_add(1, Ordering::Relaxed)
    }

    /// Runs one round towards `addr`: `count` echoes spaced by
    /// `settings.spacing()`, each waited for up to `settings.timeout`.
    /// Sequence numbers start at `*seq` and `*seq` is advanced.
    pub async fn round(
        &self,
        addr: IpAddr,
        ident: u16,
        seq: &mut u16,
        settings: &PingSettings,
        limiter: &RateLimiter,
    ) -> RoundOutcome {
        let client = match (addr, &self.v6) {
            (IpAddr::V4(_), _) => &self.v4,
            (IpAddr::V6(_), Some(v6)) => v6,
            (IpAddr::V6(_), None) => {
                return RoundOutcome {
                    sent: 0,
                    rtts: vec![None; settings.count as usize],
                    error: Some("no IPv6 ICMP socket on this host".into()),
                }
            }
        };
        let start = Instant::now();
        let spacing = settings.spacing();
        let first = *seq;
        *seq = seq.wrapping_add(settings.count as u16);
        let echoes = (0..settings.count).map(|i| {
            let at = start + spacing * i;
            let sequence = PingSequence(first.wrapping_add(i as u16));
            async move {
                tokio::time::sleep_until(at).await;
                limiter.acquire().await;
                let mut pinger = client.pinger(addr, PingIdentifier(ident)).await;
                pinger.timeout(settings.timeout);
                match pinger.ping(sequence, PAYLOAD).await {
                    Ok((_, rtt)) => Echo::Reply(rtt),
                    Err(SurgeError::Timeout { .. }) => Echo::Lost,
                    Err(e) => Echo::Failed(e.to_string()),
                }
            }
        });
        let echoes = futures_util::future::join_all(echoes).await;
        let mut outcome = RoundOutcome {
            sent: 0,
            rtts: Vec::with_capacity(echoes.len()),
            error: None,
        };
        for echo in echoes {
            match echo {
                Echo::Reply(rtt) => {
                    outcome.sent += 1;
                    outcome.rtts.push(Some(round_ms(rtt)));
                }
                Echo::Lost => {
                    outcome.sent += 1;
                    outcome.rtts.push(None);
                }
                Echo::Failed(e) => {
                    outcome.rtts.push(None);
                    outcome.error.get_or_insert(format!("send failed: {e}"));
                }
            }
        }
        outcome
    }
}

enum Echo {
    Reply(Duration),
    Lost,
    Failed(String),
}

/// Milliseconds with microsecond precision.
fn round_ms(d: Duration) -> f64 {
    (d.as_micros() as f64) / 1000.0
}

/// What one round measured.
#[derive(Debug, Clone, PartialEq)]
pub struct RoundOutcome {
    /// Echo requests actually sent.
    pub sent: u32,
    /// One entry per echo, in send order: milliseconds or `None` if lost.
    pub rtts: Vec<Option<f64>>,
    /// First send error, if any.
    pub error: Option<String>,
}

/// Agent-wide pacing of echo requests: at most `rate` per second, evenly
/// spaced (no bursts: routers drop ICMP bursts).
pub struct RateLimiter {
    /// Nanoseconds between two echo requests.
    period_ns: AtomicU64,
    next: Mutex<Instant>,
}

impl RateLimiter {
    /// `rate`: echo requests per second (> 0).
    pub fn new(rate: f64) -> Self {
        let r = RateLimiter {
            period_ns: AtomicU64::new(0),
            next: Mutex::new(Instant::now()),
        };
        r.set_rate(rate);
        r
    }

    /// Changes the rate; takes effect for the next request.
    pub fn set_rate(&self, rate: f64) {
        let ns = (1e9 / rate.max(0.001)) as u64;
        self.period_ns.store(ns, Ordering::Relaxed);
    }

    /// Waits for this request's slot.
    pub async fn acquire(&self) {
        let period = Duration::from_nanos(self.period_ns.load(Ordering::Relaxed));
        let slot = {
            // A poisoned lock only means another task panicked mid-update of
            // an Instant: the value is still usable.
            let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let slot = (*next).max(now);
            *next = slot + period;
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn rate_limiter_spaces_requests_evenly() {
        let r = RateLimiter::new(10.0);
        let t0 = Instant::now();
        for _ in 0..5 {
            r.acquire().await;
        }
        // Slots at 0, 100, 200, 300, 400 ms.
        assert_eq!(Instant::now() - t0, Duration::from_millis(400));
    }

    #[test]
    fn payload_is_56_bytes() {
        assert_eq!(PAYLOAD.len(), 56);
    }
}
