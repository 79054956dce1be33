//! Agent lifecycle documents: one per `rip/agent/{name}` notice.

use std::time::SystemTime;

use serde_json::{json, Map, Value};

use super::{canonical_timestamp, hash_id, insert_opt, AGENT_DATASET, ECS_VERSION};
use crate::protocol::{Rip, RipReason};

/// Stable document id of a lifecycle notice: from what the agent sent
/// (agent, reason and the start of the agent's session, `since`), so every
/// indexer, and every redelivery, gives one notice one id. Notices of agents
/// that do not send `since` fall back to the receive time `at`.
pub fn rip_doc_id(rip: &Rip, at: SystemTime) -> String {
    match rip.since.as_deref().map(canonical_timestamp) {
        Some(Ok((_, since))) => hash_id(&[&rip.agent, rip.reason.as_str(), &since]),
        _ => {
            let at = humantime::format_rfc3339_millis(at).to_string();
            hash_id(&[&rip.agent, rip.reason.as_str(), &at])
        }
    }
}

/// The lifecycle document of an agent notice received at `at`. A `stale`
/// notice is one of an earlier connection of an agent that is connected
/// again (a will a returning broker publishes late): recorded as such,
/// never as the agent's loss.
pub fn rip_document(rip: &Rip, at: SystemTime, stale: bool) -> Value {
    let action = rip.reason.as_str();
    let mut message = match rip.reason {
        RipReason::Lost => format!("agent {} lost (broker published its last will)", rip.agent),
        RipReason::Shutdown => format!("agent {} shut down", rip.agent),
        RipReason::Online => format!(
            "agent {} connected to {}",
            rip.agent,
            rip.broker.as_deref().unwrap_or("a broker")
        ),
    };
    if stale {
        message = format!(
            "stale notice (the agent is connected again, or its broker went down; connection since {}), ignored: {message}",
            rip.since.as_deref().unwrap_or("?")
        );
    }
    let mut agent = Map::new();
    insert_opt(
        &mut agent,
        "instance",
        rip.instance.as_ref().map(|i| json!(i)),
    );
    insert_opt(&mut agent, "since", rip.since.as_ref().map(|s| json!(s)));
    insert_opt(&mut agent, "broker", rip.broker.as_ref().map(|b| json!(b)));
    insert_opt(
        &mut agent,
        "watch_version",
        rip.watch_version.as_ref().map(|v| json!(v)),
    );
    agent.insert("stale".into(), json!(stale));
    json!({
        "@timestamp": humantime::format_rfc3339_millis(at).to_string(),
        "ecs": { "version": ECS_VERSION },
        "event": { "dataset": AGENT_DATASET, "kind": "event", "action": action },
        "observer": { "name": rip.agent },
        "swarming": { "agent": agent },
        "message": message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn notice_ids_come_from_what_the_agent_sent() {
        let rip = Rip {
            agent: "a".into(),
            reason: RipReason::Lost,
            since: Some("2026-11-25T12:00:00Z".into()),
            ..Rip::default()
        };
        let t1 = SystemTime::now();
        let t2 = t1 + Duration::from_secs(3);
        assert_eq!(rip_doc_id(&rip, t1), rip_doc_id(&rip, t2));
        let other = Rip {
            since: Some("2026-11-25T12:05:00Z".into()),
            ..rip.clone()
        };
        assert_ne!(rip_doc_id(&rip, t1), rip_doc_id(&other, t1));
    }

    #[test]
    fn rip_documents() {
        let at = humantime::parse_rfc3339("2026-11-25T12:00:05.250Z").unwrap();
        let lost = Rip {
            agent: "a1".into(),
            reason: RipReason::Lost,
            ..Rip::default()
        };
        let d = rip_document(&lost, at, false);
        assert_eq!(d["@timestamp"], "2026-11-25T12:00:05.250Z");
        assert_eq!(d["event"]["dataset"], "swarming.agent");
        assert_eq!(d["event"]["action"], "lost");
        assert_eq!(d["observer"]["name"], "a1");
        let shut = Rip {
            agent: "a1".into(),
            reason: RipReason::Shutdown,
            ..Rip::default()
        };
        assert_eq!(
            rip_document(&shut, at, false)["event"]["action"],
            "shutdown"
        );
        assert_ne!(rip_doc_id(&lost, at), rip_doc_id(&shut, at));
        assert_eq!(rip_doc_id(&lost, at), rip_doc_id(&lost.clone(), at));
    }
}
