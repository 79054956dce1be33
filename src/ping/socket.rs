//! ICMP echo sockets, one per address family: raw sockets (CAP_NET_RAW)
//! with a kernel filter that passes only echo replies, or unprivileged
//! datagram ping sockets (`SOCK_DGRAM`/`IPPROTO_ICMP`, allowed by
//! `net.ipv4.ping_group_range`) when raw ones are refused.
//!
//! Hand-written on socket2 rather than surge-ping: surge-ping spawns a
//! receive task and a oneshot channel per echo and arms a timer per echo,
//! which is exactly the per-echo cost the agent's single scheduling loop
//! removes; it also cannot set `ICMP_FILTER`.

use std::io;
use std::mem::MaybeUninit;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// Echo payload: 56 bytes like ping(8), recognisable in a capture.
pub const PAYLOAD: &[u8; 56] = b"swarming echo request payload, 56 bytes like ping(8)....";

/// Receive buffer asked for each ICMP socket, in bytes: replies of many
/// targets can arrive together.
const RCVBUF_BYTES: usize = 4 * 1024 * 1024;

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMP6_ECHO_REQUEST: u8 = 128;
const ICMP6_ECHO_REPLY: u8 = 129;
/// linux/icmp.h: `SOL_RAW` level option taking a bit mask of ICMP types to
/// drop.
const SOL_RAW: libc::c_int = 255;
const ICMP_FILTER: libc::c_int = 1;
/// linux/icmpv6.h: `struct icmp6_filter`, a set bit drops that type.
const ICMP6_FILTER: libc::c_int = 1;

/// How echo requests are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Raw ICMP sockets: needs CAP_NET_RAW.
    Raw,
    /// Unprivileged datagram ping sockets: needs the process's group in
    /// `net.ipv4.ping_group_range`. The kernel sets the identifier.
    Datagram,
}

impl Mode {
    pub fn describe(self) -> &'static str {
        match self {
            Mode::Raw => "raw ICMP sockets",
            Mode::Datagram => "unprivileged datagram ping sockets (net.ipv4.ping_group_range)",
        }
    }
}

/// Address family of a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

/// An echo reply as read from a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    pub from: IpAddr,
    pub ident: u16,
    pub seq: u16,
}

/// One non-blocking ICMP socket.
pub struct IcmpSocket {
    sock: Socket,
    family: Family,
    mode: Mode,
}

impl IcmpSocket {
    /// Opens a socket of `family` in `mode`.
    pub fn open(family: Family, mode: Mode) -> io::Result<IcmpSocket> {
        let (domain, proto) = match family {
            Family::V4 => (Domain::IPV4, Protocol::ICMPV4),
            Family::V6 => (Domain::IPV6, Protocol::ICMPV6),
        };
        let ty = match mode {
            Mode::Raw => Type::RAW,
            Mode::Datagram => Type::DGRAM,
        };
        let sock = Socket::new(domain, ty, Some(proto))?;
        sock.set_nonblocking(true)?;
        if let Err(e) = sock.set_recv_buffer_size(RCVBUF_BYTES) {
            tracing::debug!(error = %e, "cannot raise SO_RCVBUF on the ICMP socket");
        }
        let s = IcmpSocket { sock, family, mode };
        if mode == Mode::Raw {
            // A raw socket otherwise reads every ICMP packet of the host,
            // our own requests on loopback included.
            s.pass_only_echo_replies()?;
        }
        Ok(s)
    }

    fn pass_only_echo_replies(&self) -> io::Result<()> {
        let fd = self.sock.as_raw_fd();
        let rc = match self.family {
            Family::V4 => {
                let mask: u32 = !(1u32 << ICMP_ECHO_REPLY);
                // SAFETY: fd is a valid socket for the call; the option
                // value is a u32 of the stated length.
                unsafe {
                    libc::setsockopt(
                        fd,
                        SOL_RAW,
                        ICMP_FILTER,
                        (&mask as *const u32).cast(),
                        std::mem::size_of::<u32>() as libc::socklen_t,
                    )
                }
            }
            Family::V6 => {
                let mut filter = [u32::MAX; 8];
                let t = ICMP6_ECHO_REPLY as usize;
                filter[t >> 5] &= !(1u32 << (t & 31));
                // SAFETY: as above, with the 32-byte struct icmp6_filter.
                unsafe {
                    libc::setsockopt(
                        fd,
                        libc::IPPROTO_ICMPV6,
                        ICMP6_FILTER,
                        filter.as_ptr().cast(),
                        std::mem::size_of_val(&filter) as libc::socklen_t,
                    )
                }
            }
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn family(&self) -> Family {
        self.family
    }

    /// The underlying socket (for readiness registration).
    pub fn socket(&self) -> &Socket {
        &self.sock
    }

    /// Sends one echo request; `WouldBlock` when the send buffer is full.
    pub fn send(&self, to: IpAddr, ident: u16, seq: u16) -> io::Result<()> {
        let mut pkt = [0u8; 8 + PAYLOAD.len()];
        pkt[0] = match self.family {
            Family::V4 => ICMP_ECHO_REQUEST,
            Family::V6 => ICMP6_ECHO_REQUEST,
        };
        pkt[4..6].copy_from_slice(&ident.to_be_bytes());
        pkt[6..8].copy_from_slice(&seq.to_be_bytes());
        pkt[8..].copy_from_slice(PAYLOAD);
        if self.family == Family::V4 {
            // The kernel computes ICMPv6 checksums itself, and the ICMPv4
            // one on datagram sockets; raw ICMPv4 needs ours.
            let sum = checksum(&pkt);
            pkt[2..4].copy_from_slice(&sum.to_be_bytes());
        }
        let addr = SockAddr::from(SocketAddr::new(to, 0));
        self.sock.send_to(&pkt, &addr).map(|_| ())
    }

    /// Reads one packet: `Ok(Some(reply))` for an echo reply, `Ok(None)` for
    /// anything else, `WouldBlock` when nothing is left.
    pub fn recv(&self) -> io::Result<Option<Reply>> {
        let mut buf = [MaybeUninit::<u8>::uninit(); 1500];
        let (n, from) = self.sock.recv_from(&mut buf)?;
        // SAFETY: recv_from initialised the first n bytes.
        let data: &[u8] = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n) };
        let Some(from) = from.as_socket().map(|a| a.ip()) else {
            return Ok(None);
        };
        Ok(
            parse_reply(self.family, self.mode, data).map(|(ident, seq)| Reply {
                from,
                ident,
                seq,
            }),
        )
    }
}

/// Identifier and sequence of an echo reply; `None` for anything else. Raw
/// IPv4 sockets deliver the IP header too.
pub fn parse_reply(family: Family, mode: Mode, data: &[u8]) -> Option<(u16, u16)> {
    let icmp = match (family, mode) {
        (Family::V4, Mode::Raw) => {
            let ihl = usize::from(*data.first()? & 0x0f) * 4;
            data.get(ihl..)?
        }
        _ => data,
    };
    let want = match family {
        Family::V4 => ICMP_ECHO_REPLY,
        Family::V6 => ICMP6_ECHO_REPLY,
    };
    if icmp.len() < 8 || icmp[0] != want || icmp[1] != 0 {
        return None;
    }
    Some((
        u16::from_be_bytes([icmp[4], icmp[5]]),
        u16::from_be_bytes([icmp[6], icmp[7]]),
    ))
}

/// The Internet checksum (RFC 1071).
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = match chunk {
            [a, b] => u16::from_be_bytes([*a, *b]),
            [a] => u16::from_be_bytes([*a, 0]),
            _ => 0,
        };
        sum = sum.wrapping_add(u32::from(word));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Why no ICMP socket could be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Neither raw (CAP_NET_RAW) nor datagram (ping_group_range) sockets
    /// are allowed: exit 77.
    #[error("cannot open raw ICMP sockets ({raw}) nor datagram ping sockets ({dgram})")]
    Permission { raw: io::Error, dgram: io::Error },
    #[error("cannot open an ICMP socket: {0}")]
    Io(io::Error),
}

fn refused(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::PermissionDenied)
        || e.raw_os_error() == Some(libc::EPERM)
        || e.raw_os_error() == Some(libc::EACCES)
}

/// The agent's sockets: IPv4 always, IPv6 where the host has it, both in
/// the same mode.
pub struct Sockets {
    pub v4: IcmpSocket,
    pub v6: Option<IcmpSocket>,
    pub mode: Mode,
}

impl Sockets {
    /// Raw sockets when allowed, else datagram ping sockets.
    pub fn open() -> Result<Sockets, OpenError> {
        let v4 = match IcmpSocket::open(Family::V4, Mode::Raw) {
            Ok(s) => s,
            Err(raw) if refused(&raw) => match IcmpSocket::open(Family::V4, Mode::Datagram) {
                Ok(s) => s,
                Err(dgram) if refused(&dgram) => return Err(OpenError::Permission { raw, dgram }),
                Err(e) => return Err(OpenError::Io(e)),
            },
            Err(e) => return Err(OpenError::Io(e)),
        };
        let mode = v4.mode();
        let v6 = match IcmpSocket::open(Family::V6, mode) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "no IPv6 ICMP socket: IPv6 targets will fail");
                None
            }
        };
        Ok(Sockets { v4, v6, mode })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_is_56_bytes() {
        assert_eq!(PAYLOAD.len(), 56);
    }

    #[test]
    fn checksum_of_a_known_echo_request() {
        // type 8, code 0, id 0x1234, seq 1, no payload: ~(0x0800 + 0x1234 + 1)
        let pkt = [8, 0, 0, 0, 0x12, 0x34, 0, 1];
        assert_eq!(checksum(&pkt), !(0x0800u16 + 0x1234 + 1));
        // A packet carrying its checksum sums to zero.
        let mut p = pkt;
        p[2..4].copy_from_slice(&checksum(&pkt).to_be_bytes());
        assert_eq!(checksum(&p), 0);
    }

    #[test]
    fn replies_are_parsed_and_everything_else_ignored() {
        let mut v4 = vec![0x45u8];
        v4.extend([0u8; 19]);
        v4.extend([0, 0, 0, 0, 0xab, 0xcd, 0, 7]);
        assert_eq!(parse_reply(Family::V4, Mode::Raw, &v4), Some((0xabcd, 7)));
        assert_eq!(
            parse_reply(Family::V4, Mode::Datagram, &v4[20..]),
            Some((0xabcd, 7))
        );
        // Our own request, truncated packets, a bogus header length.
        assert_eq!(
            parse_reply(Family::V4, Mode::Datagram, &[8, 0, 0, 0, 0, 0, 0, 1]),
            None
        );
        assert_eq!(parse_reply(Family::V4, Mode::Raw, &v4[..24]), None);
        assert_eq!(parse_reply(Family::V4, Mode::Raw, &[0x4f]), None);
        assert_eq!(parse_reply(Family::V4, Mode::Raw, &[]), None);
        assert_eq!(
            parse_reply(Family::V6, Mode::Raw, &[129, 0, 0, 0, 0, 1, 0, 2]),
            Some((1, 2))
        );
        assert_eq!(
            parse_reply(Family::V6, Mode::Raw, &[128, 0, 0, 0, 0, 1, 0, 2]),
            None
        );
    }
}
