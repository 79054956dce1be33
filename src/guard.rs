//! What an agent may ping, whatever `watch` says: never a forbidden
//! address (in any IPv6 form), and only what the operator's `allow`/`deny`
//! prefixes permit. Refusals are counted and logged; a refused address is
//! never pinged.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use ipnet::IpNet;

use crate::protocol::forbidden_address;

/// `allow` and `deny` prefixes, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    /// When non-empty, only addresses inside one of these may be pinged.
    pub allow: Vec<IpNet>,
    /// Never pinged; wins over `allow`.
    pub deny: Vec<IpNet>,
}

/// Why an address is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("{0} is a multicast, broadcast or unspecified address")]
    Forbidden(IpAddr),
    #[error("{0} is inside deny prefix {1}")]
    Denied(IpAddr, IpNet),
    #[error("{0} is outside every allow prefix")]
    NotAllowed(IpAddr),
}

/// The IPv4 address an IPv6 one stands for (IPv4-mapped `::ffff:a.b.c.d`
/// or IPv4-compatible `::a.b.c.d`), so prefixes written in IPv4 apply.
fn as_v4(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4() {
            // `::` and `::1` are IPv6's own unspecified and loopback.
            Some(v4) if !v6.is_unspecified() && !v6.is_loopback() => IpAddr::V4(v4),
            _ => ip,
        },
        v4 => v4,
    }
}

impl Rules {
    /// Parses `allow`/`deny` lists (`10.0.0.0/8`, `2001:db8::/32`; a bare
    /// address is a single-address prefix). `Err((index, message))`.
    pub fn parse_list(list: &[String]) -> Result<Vec<IpNet>, (usize, String)> {
        list.iter()
            .enumerate()
            .map(|(i, s)| {
                let s = s.trim();
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                    .map(|n| n.trunc())
                    .map_err(|_| (i, format!("{s:?} is not a CIDR prefix (e.g. 192.0.2.0/24)")))
            })
            .collect()
    }

    /// May `ip` be pinged?
    pub fn check(&self, ip: IpAddr) -> Result<(), Refused> {
        let v4 = as_v4(ip);
        if forbidden_address(ip) {
            return Err(Refused::Forbidden(ip));
        }
        let inside = |n: &IpNet| n.contains(&ip) || n.contains(&v4);
        if let Some(n) = self.deny.iter().find(|n| inside(n)) {
            return Err(Refused::Denied(ip, *n));
        }
        if !self.allow.is_empty() && !self.allow.iter().any(inside) {
            return Err(Refused::NotAllowed(ip));
        }
        Ok(())
    }
}

/// The rules in force (replaced on reload) and the refusal count.
#[derive(Debug, Default)]
pub struct Guard {
    rules: RwLock<Arc<Rules>>,
    refused: AtomicU64,
    /// Refusals already logged at warn level: a name refused every round
    /// is said once, then at debug level.
    logged: std::sync::Mutex<HashSet<(String, IpAddr)>>,
}

/// Most refusals remembered as logged; past it the memory starts over.
const LOGGED_MAX: usize = 10_000;

impl Guard {
    pub fn new(rules: Rules) -> Self {
        Guard {
            rules: RwLock::new(Arc::new(rules)),
            refused: AtomicU64::new(0),
            logged: Default::default(),
        }
    }

    pub fn set(&self, rules: Rules) {
        *self.rules.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(rules);
        self.logged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Checks `ip` for `target`; a refusal is counted and logged.
    pub fn permit(&self, target: &str, ip: IpAddr) -> bool {
        let rules = self.rules.read().unwrap_or_else(|p| p.into_inner()).clone();
        match rules.check(ip) {
            Ok(()) => true,
            Err(why) => {
                let total = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
                let first = {
                    let mut logged = self.logged.lock().unwrap_or_else(|p| p.into_inner());
                    if logged.len() >= LOGGED_MAX {
                        logged.clear();
                    }
                    logged.insert((target.to_owned(), ip))
                };
                if first {
                    tracing::warn!(ping_target = %target.escape_debug(), reason = %why, refused_total = total, "target refused by the agent's rules, never pinged");
                } else {
                    tracing::debug!(ping_target = %target.escape_debug(), reason = %why, refused_total = total, "target refused by the agent's rules, never pinged");
                }
                false
            }
        }
    }

    /// The address to ping for a name that resolved to `addrs` (in the
    /// system's preference order): the first one the rules permit. A name
    /// with a forbidden address among its answers is refused whole: it
    /// points at something no agent may ping. One refusal is counted.
    pub fn pick(&self, target: &str, addrs: &[IpAddr]) -> Result<IpAddr, String> {
        if let Some(bad) = addrs.iter().copied().find(|a| forbidden_address(*a)) {
            self.permit(target, bad);
            return Err(format!("{target} resolves to {bad}, which is never pinged"));
        }
        let rules = self.rules.read().unwrap_or_else(|p| p.into_inner()).clone();
        match addrs.iter().copied().find(|a| rules.check(*a).is_ok()) {
            Some(a) => Ok(a),
            None => match addrs.first() {
                Some(first) => {
                    self.permit(target, *first);
                    Err(format!(
                        "{target} resolves to no address the agent's allow/deny rules permit"
                    ))
                }
                None => Err(format!("{target} resolves to no address")),
            },
        }
    }

    /// Refusals so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn every_form_of_a_forbidden_address_is_refused() {
        let r = Rules::default();
        for bad in [
            "224.0.0.1",
            "255.255.255.255",
            "0.0.0.0",
            "::ffff:224.0.0.1",
            "::ffff:255.255.255.255",
            "::ffff:0.0.0.0",
            "::224.0.0.1",
            "::255.255.255.255",
            "ff02::1",
            "::",
        ] {
            assert!(
                matches!(r.check(ip(bad)), Err(Refused::Forbidden(_))),
                "{bad} permitted"
            );
        }
        for good in ["127.0.0.1", "::1", "::ffff:127.0.0.1", "2001:db8::1"] {
            assert_eq!(r.check(ip(good)), Ok(()), "{good}");
        }
    }

    #[test]
    fn deny_wins_and_allow_limits_in_both_families() {
        let r = Rules {
            allow: Rules::parse_list(&["127.0.0.0/8".into(), "2001:db8::/32".into()]).unwrap(),
            deny: Rules::parse_list(&["127.0.0.9".into(), "127.1.0.0/16".into()]).unwrap(),
        };
        assert_eq!(r.check(ip("127.0.0.1")), Ok(()));
        assert_eq!(r.check(ip("::ffff:127.0.0.1")), Ok(()));
        assert_eq!(r.check(ip("2001:db8::7")), Ok(()));
        assert!(matches!(r.check(ip("127.0.0.9")), Err(Refused::Denied(..))));
        assert!(matches!(
            r.check(ip("::ffff:127.1.2.3")),
            Err(Refused::Denied(..))
        ));
        assert!(matches!(
            r.check(ip("10.0.0.1")),
            Err(Refused::NotAllowed(_))
        ));
        assert!(matches!(r.check(ip("::1")), Err(Refused::NotAllowed(_))));
        assert_eq!(
            Rules::parse_list(&["10.0.0.0/8".into(), "nope".into()])
                .unwrap_err()
                .0,
            1
        );
        // Host bits are dropped: 10.1.2.3/8 means 10.0.0.0/8.
        assert_eq!(
            Rules::parse_list(&["10.1.2.3/8".into()]).unwrap()[0].to_string(),
            "10.0.0.0/8"
        );
    }

    #[test]
    fn refusals_are_counted() {
        let g = Guard::new(Rules {
            allow: vec![],
            deny: Rules::parse_list(&["127.0.0.2".into()]).unwrap(),
        });
        assert!(g.permit("127.0.0.1", ip("127.0.0.1")));
        assert!(!g.permit("127.0.0.2", ip("127.0.0.2")));
        assert_eq!(g.refused(), 1);
        assert_eq!(
            g.pick("n", &[ip("127.0.0.2"), ip("127.0.0.3")]),
            Ok(ip("127.0.0.3"))
        );
        assert!(g.pick("n", &[ip("127.0.0.2")]).is_err());
        assert_eq!(g.refused(), 2);
        assert!(g
            .pick("n", &[ip("127.0.0.3"), ip("::ffff:224.0.0.1")])
            .is_err());
        assert_eq!(g.refused(), 3);
        g.set(Rules::default());
        assert!(g.permit("127.0.0.2", ip("127.0.0.2")));
    }
}
