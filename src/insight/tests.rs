//! Scenario tests of the correlator: a swarm of four agents on two
//! providers, three targets, rounds one second apart.

use std::time::{Duration, SystemTime};

use super::levels::Levels;
use super::verdict::{Change, Correlator, Notice, Observation, Settings};
use crate::protocol::{AgentState, Cause, TargetState};

const AGENTS: [(&str, &str); 4] = [("a1", "x"), ("a2", "x"), ("a3", "y"), ("a4", "y")];
const TARGETS: [&str; 3] = ["t1", "t2", "t3"];
const T0: i64 = 1_800_000_000_000;

fn start() -> Correlator {
    let mut c = Correlator::new(Settings::default());
    let list: Vec<(String, Option<Levels>)> =
        TARGETS.iter().map(|t| (t.to_string(), None)).collect();
    c.set_targets(&list);
    c
}

fn at(round: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis((T0 + round * 1000) as u64)
}

/// What (agent, target) sees in a round: (received of 5, avg rtt ms).
type View = fn(&str, &str, i64) -> (u32, f64);

fn fine(_: &str, _: &str, _: i64) -> (u32, f64) {
    (5, 1.0)
}

/// Plays rounds `from..to`; agents report in their order within a round.
fn play(c: &mut Correlator, from: i64, to: i64, view: View) -> Vec<Change> {
    play_as(c, from, to, view, &AGENTS, false)
}

/// Plays rounds `from..to` for `agents` only; `reverse` delivers each
/// round's results in reverse order (as another indexer might get them).
fn play_as(
    c: &mut Correlator,
    from: i64,
    to: i64,
    view: View,
    agents: &[(&str, &str)],
    reverse: bool,
) -> Vec<Change> {
    let mut changes = Vec::new();
    for round in from..to {
        let mut rounds: Vec<(usize, &str, &str, &str)> = agents
            .iter()
            .enumerate()
            .flat_map(|(i, (a, p))| TARGETS.iter().map(move |t| (i, *a, *p, *t)))
            .collect();
        if reverse {
            rounds.reverse();
        }
        for (i, agent, provider, target) in rounds {
            let (received, rtt) = view(agent, target, round);
            c.observe(&Observation {
                agent,
                provider: Some(provider),
                target,
                at_ms: T0 + round * 1000 + i as i64 * 100,
                interval_ms: 1000,
                sent: 5,
                received,
                rtt_avg_ms: (received > 0).then_some(rtt),
            });
        }
        c.tick(at(round + 1));
        changes.extend(c.take_changes());
    }
    changes
}

fn target(c: &Correlator, t: &str) -> (TargetState, Cause, Option<String>, u32, u32) {
    let v = c.target_verdicts().find(|v| v.target == t).unwrap();
    (
        v.state,
        v.cause,
        v.provider.clone(),
        v.agents_bad,
        v.agents_total,
    )
}

fn agent(c: &Correlator, a: &str) -> AgentState {
    c.agent_verdicts().find(|v| v.agent == a).unwrap().state
}

fn transitions(changes: &[Change]) -> Vec<String> {
    changes
        .iter()
        .filter_map(|c| match c {
            Change::Target {
                verdict,
                transition: true,
            } => Some(format!(
                "{} {:?} {:?}",
                verdict.target, verdict.state, verdict.cause
            )),
            Change::Agent {
                verdict,
                transition: true,
            } => Some(format!("{} {:?}", verdict.agent, verdict.state)),
            _ => None,
        })
        .collect()
}

/// A calm swarm: everything up, every agent ok, every target and agent
/// published (healthy ones included).
fn calm() -> Correlator {
    let mut c = start();
    let first = play(&mut c, 0, 10, fine);
    for t in TARGETS {
        assert_eq!(target(&c, t), (TargetState::Up, Cause::None, None, 0, 4));
    }
    for (a, _) in AGENTS {
        assert_eq!(agent(&c, a), AgentState::Ok);
    }
    let published_targets = first
        .iter()
        .filter(|c| matches!(c, Change::Target { .. }))
        .count();
    assert!(published_targets >= 3, "every target published");
    c
}

#[test]
fn targets_start_unknown_and_are_published() {
    let mut c = start();
    let ch = c.take_changes();
    assert_eq!(ch.len(), 3);
    assert_eq!(target(&c, "t1").0, TargetState::Unknown);
}

#[test]
fn a_target_down_for_everyone_is_the_target() {
    let mut c = calm();
    let ch = play(
        &mut c,
        10,
        11,
        |_, t, _| if t == "t2" { (0, 0.0) } else { (5, 1.0) },
    );
    assert!(
        transitions(&ch).is_empty(),
        "one round is not enough: {ch:?}"
    );
    let ch = play(
        &mut c,
        11,
        12,
        |_, t, _| if t == "t2" { (0, 0.0) } else { (5, 1.0) },
    );
    assert_eq!(transitions(&ch), ["t2 Down Target"], "the confirming round");
    assert_eq!(
        target(&c, "t2"),
        (TargetState::Down, Cause::Target, None, 4, 4)
    );
    for (a, _) in AGENTS {
        assert_eq!(agent(&c, a), AgentState::Ok, "nobody's trouble");
    }
    let v = c.target_verdicts().find(|v| v.target == "t2").unwrap();
    assert_eq!(v.since, "2027-01-15T08:00:10.000Z", "the first bad round");
    // Back up after the confirming round.
    let ch = play(&mut c, 12, 14, fine);
    assert_eq!(transitions(&ch), ["t2 Up None"]);
}

#[test]
fn one_agents_dead_uplink_is_that_agent() {
    let mut c = calm();
    let ch = play(
        &mut c,
        10,
        13,
        |a, _, _| if a == "a3" { (0, 0.0) } else { (5, 1.0) },
    );
    for t in TARGETS {
        assert_eq!(target(&c, t), (TargetState::Down, Cause::Agent, None, 1, 4));
    }
    assert_eq!(agent(&c, "a3"), AgentState::Trouble);
    for a in ["a1", "a2", "a4"] {
        assert_eq!(agent(&c, a), AgentState::Ok);
    }
    assert!(transitions(&ch).contains(&"a3 Trouble".to_owned()));
}

#[test]
fn one_providers_agents_losing_one_target_is_the_provider() {
    let mut c = calm();
    play(&mut c, 10, 13, |a, t, _| {
        if t == "t1" && (a == "a3" || a == "a4") {
            (0, 0.0)
        } else {
            (5, 1.0)
        }
    });
    assert_eq!(
        target(&c, "t1"),
        (TargetState::Down, Cause::Provider, Some("y".into()), 2, 4)
    );
    assert_eq!(target(&c, "t2").0, TargetState::Up);
    for (a, _) in AGENTS {
        assert_eq!(
            agent(&c, a),
            AgentState::Ok,
            "one target of three is not most"
        );
    }
}

#[test]
fn lossy_and_slow_targets() {
    let mut c = calm();
    play(&mut c, 10, 13, |_, t, _| match t {
        "t1" => (3, 1.0),
        "t2" => (5, 40.0),
        _ => (5, 1.0),
    });
    assert_eq!(target(&c, "t1").0, TargetState::Lossy);
    assert_eq!(target(&c, "t1").1, Cause::Target);
    assert_eq!(
        target(&c, "t2").0,
        TargetState::Slow,
        "1 ms away, now 40 ms"
    );
    assert_eq!(target(&c, "t3").0, TargetState::Up);
}

#[test]
fn a_single_bad_round_changes_nothing() {
    let mut c = calm();
    let ch = play(&mut c, 10, 11, |_, _, _| (0, 0.0));
    let ch2 = play(&mut c, 11, 14, fine);
    assert!(transitions(&ch).is_empty() && transitions(&ch2).is_empty());
}

#[test]
fn a_broker_outage_expires_nothing_and_gives_no_verdict() {
    let mut c = calm();
    // Nothing arrives for a minute (every agent's broker is restarting).
    for s in 10..70 {
        c.tick(at(s));
    }
    assert!(transitions(&c.take_changes()).is_empty());
    // Then the queued rounds arrive late, and life goes on.
    let ch = play(&mut c, 10, 75, fine);
    assert!(transitions(&ch).is_empty(), "{ch:?}");
}

#[test]
fn a_silent_agent_is_lost_and_a_notice_is_final() {
    let mut c = calm();
    play(&mut c, 10, 15, fine);
    // a4 goes quiet: the others keep reporting. Three intervals (3 s) are
    // not enough: silence counts from 30 s on (a broker restart delays
    // rounds by the reconnect).
    let mut c2 = c;
    play_as(&mut c2, 15, 40, fine, &AGENTS[..3], false);
    assert_eq!(agent(&c2, "a4"), AgentState::Ok);
    play_as(&mut c2, 40, 50, fine, &AGENTS[..3], false);
    assert_eq!(agent(&c2, "a4"), AgentState::Lost);
    assert_eq!(
        target(&c2, "t1"),
        (TargetState::Up, Cause::None, None, 0, 3)
    );
    c2.notice("a1", Notice::Stopped, T0 + 60_000);
    assert_eq!(agent(&c2, "a1"), AgentState::Stopped);
    assert_eq!(target(&c2, "t1").4, 2, "a stopped agent no longer counts");
    // A will older than the agent's latest round is stale: ignored.
    c2.notice("a2", Notice::Lost, T0 + 1_000);
    assert_eq!(agent(&c2, "a2"), AgentState::Ok);
}

#[test]
fn agents_back_after_their_notice_count_again() {
    let mut c = calm();
    let up = |n| (TargetState::Up, Cause::None, None, 0, n);
    c.notice("a2", Notice::Stopped, T0 + 10_000);
    c.notice("a3", Notice::Lost, T0 + 10_000);
    assert_eq!(
        target(&c, "t1"),
        up(2),
        "agents under a notice do not count"
    );
    // a2 is back, a3 still gone: only a3 is left out.
    play_as(
        &mut c,
        11,
        13,
        fine,
        &[AGENTS[0], AGENTS[1], AGENTS[3]],
        false,
    );
    assert_eq!(agent(&c, "a2"), AgentState::Ok);
    assert_eq!(agent(&c, "a3"), AgentState::Lost);
    for t in TARGETS {
        assert_eq!(target(&c, t), up(3), "{t}");
    }
    // Everyone back: every view counts again.
    play(&mut c, 13, 15, fine);
    for t in TARGETS {
        assert_eq!(target(&c, t), up(4), "{t}");
    }
    // And a notice after that still takes effect.
    c.notice("a4", Notice::Stopped, T0 + 20_000);
    assert_eq!(target(&c, "t2"), up(3));
}

#[test]
fn two_indexers_seeing_results_in_other_orders_agree() {
    let mut a = calm();
    let mut b = calm();
    let view: View = |ag, t, r| {
        if (t == "t1" && r >= 12) || (ag == "a2" && r >= 15) {
            (0, 0.0)
        } else {
            (5, 1.0)
        }
    };
    play(&mut a, 10, 20, view);
    // b receives each round's results in reverse order.
    play_as(&mut b, 10, 20, view, &AGENTS, true);
    let ta: Vec<_> = a.target_verdicts().cloned().collect();
    let tb: Vec<_> = b.target_verdicts().cloned().collect();
    assert_eq!(ta, tb);
    let aa: Vec<_> = a.agent_verdicts().cloned().collect();
    let ab: Vec<_> = b.agent_verdicts().cloned().collect();
    assert_eq!(aa, ab);
}

#[test]
fn removed_targets_are_cleared_and_unknown_results_ignored() {
    let mut c = calm();
    c.set_targets(&[("t1".into(), None)]);
    let ch = c.take_changes();
    assert!(ch.contains(&Change::TargetRemoved("t2".into())));
    assert!(c
        .observe(&Observation {
            agent: "a1",
            provider: None,
            target: "t2",
            at_ms: T0 + 30_000,
            interval_ms: 1000,
            sent: 5,
            received: 5,
            rtt_avg_ms: Some(1.0),
        })
        .is_none());
}

#[test]
fn agents_are_bounded() {
    let mut c = Correlator::new(Settings {
        max_agents: 10,
        ..Settings::default()
    });
    c.set_targets(&[("t".into(), None)]);
    for i in 0..1000 {
        let name = format!("spoof{i}");
        c.observe(&Observation {
            agent: &name,
            provider: None,
            target: "t",
            at_ms: T0 + i,
            interval_ms: 1000,
            sent: 1,
            received: 1,
            rtt_avg_ms: Some(1.0),
        });
    }
    assert_eq!(c.agent_verdicts().count(), 10);
    assert!(c.agent_verdicts().any(|v| v.agent == "spoof999"));
}
