//! Verdict state-change documents: one per transition of a target's or an
//! agent's verdict.

use serde_json::{json, Map, Value};

use super::{hash_id, insert_opt, ECS_VERSION};
use crate::protocol::{AgentVerdict, TargetVerdict};

/// `event.dataset` of verdict state-change documents.
pub const VERDICT_DATASET: &str = "swarming.verdict";

/// A verdict that changed state or cause.
pub enum VerdictChange<'a> {
    Target(&'a TargetVerdict),
    Agent(&'a AgentVerdict),
}

/// The verdict a transition ends.
#[derive(Debug, Clone, PartialEq)]
pub struct Previous {
    pub state: String,
    pub cause: Option<String>,
    pub since: String,
}

fn wire<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The state-change document of a verdict transition, with its id: the
/// same for every indexer (kind, subject, state, cause, since), so two
/// indexers store one incident once. An incident is the document of the
/// bad state (its start, `verdict.since`) and the one that ends it, which
/// carries `verdict.previous` (state, cause, start).
pub fn verdict_doc(change: &VerdictChange, previous: Option<Previous>) -> (String, Value) {
    let mut v = Map::new();
    let (kind, subject, state, since, message) = match change {
        VerdictChange::Target(t) => {
            let state = wire(&t.state);
            let cause = wire(&t.cause);
            v.insert("cause".into(), json!(cause));
            v.insert("agents_bad".into(), json!(t.agents_bad));
            v.insert("agents_total".into(), json!(t.agents_total));
            v.insert("providers_bad".into(), json!(t.providers_bad));
            insert_opt(&mut v, "provider", t.provider.as_ref().map(|p| json!(p)));
            let message = format!(
                "target {}: {state}, cause {cause} ({} of {} agents bad, {} providers) since {}",
                t.target, t.agents_bad, t.agents_total, t.providers_bad, t.since
            );
            ("target", &t.target, state, &t.since, message)
        }
        VerdictChange::Agent(a) => {
            let state = wire(&a.state);
            v.insert("reason".into(), json!(a.reason));
            let message = format!("agent {}: {state} since {}: {}", a.agent, a.since, a.reason);
            ("agent", &a.agent, state, &a.since, message)
        }
    };
    let cause = v
        .get("cause")
        .and_then(|c| c.as_str())
        .unwrap_or("")
        .to_owned();
    let id = hash_id(&["verdict", kind, subject, &state, &cause, since]);
    v.insert("kind".into(), json!(kind));
    v.insert("subject".into(), json!(subject));
    v.insert("state".into(), json!(state));
    v.insert("since".into(), json!(since));
    let mut message = message;
    if let Some(p) = previous {
        message.push_str(&format!("; was {} since {}", p.state, p.since));
        let mut prev = Map::new();
        prev.insert("state".into(), json!(p.state));
        insert_opt(&mut prev, "cause", p.cause.map(|c| json!(c)));
        prev.insert("since".into(), json!(p.since));
        v.insert("previous".into(), Value::Object(prev));
    }
    let mut doc = json!({
        "@timestamp": since,
        "ecs": { "version": ECS_VERSION },
        "event": { "dataset": VERDICT_DATASET, "kind": "state", "action": format!("{kind}.{state}") },
        "verdict": v,
        "message": message,
    });
    if let VerdictChange::Agent(a) = change {
        doc["observer"] = json!({ "name": a.agent });
    }
    (id, doc)
}
