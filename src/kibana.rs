//! What Kibana shows of our data stream, by Kibana line: the Uptime app's
//! default index setting, the Synthetics app's reach, and which index
//! template a data stream gets. Facts and their sources:
//! `packaging/kibana/contracts/README.md`; user-facing text:
//! `docs/documents.md`.
//!
//! The Kibana line is taken to be the Elasticsearch one (`major.minor` of
//! `GET /`): Kibana must run the same major and at most that minor.

use serde_json::{json, Value};

use crate::config::SYNTHETICS_PREFIX;

/// Name of the index template of `heartbeat-*` (mode uptime) data streams.
pub const UPTIME_TEMPLATE: &str = "swarming";
/// Name of the index template of a `synthetics-icmp-<namespace>` (mode
/// synthetics) data stream.
pub const SYNTHETICS_TEMPLATE: &str = "swarming-synthetics";
/// Priority of the Synthetics template: above Fleet's package templates
/// (200, `synthetics-icmp-*`, `dynamic: false`, which would leave our
/// `ping.*` fields unmapped) and Elasticsearch's built-in `synthetics`
/// template (100).
pub const SYNTHETICS_TEMPLATE_PRIORITY: u64 = 250;
/// First Kibana line whose Synthetics app lists monitors that exist only
/// as documents in `synthetics-*` (read-only; kibana PR #274947).
pub const SYNTHETICS_READ_ONLY_SINCE: (u32, u32) = (9, 6);
/// First Kibana line where Uptime is deprecated and hidden by default.
pub const UPTIME_HIDDEN_SINCE: (u32, u32) = (8, 15);

/// Whether `index` is a mode-synthetics data stream.
pub fn is_synthetics(index: &str) -> bool {
    index.starts_with(SYNTHETICS_PREFIX)
}

/// The index template name for data stream `index`.
pub fn template_name(index: &str) -> &'static str {
    if is_synthetics(index) {
        SYNTHETICS_TEMPLATE
    } else {
        UPTIME_TEMPLATE
    }
}

/// Turns the packaged template into the Synthetics one when `index` is a
/// `synthetics-icmp-*` data stream: only that data stream, at a priority
/// above Fleet's. The mapping is the same.
pub fn adapt_template(template: &mut Value, index: &str) {
    if is_synthetics(index) {
        template["index_patterns"] = json!([format!("{index}*")]);
        template["priority"] = json!(SYNTHETICS_TEMPLATE_PRIORITY);
    }
}

/// The Uptime app's default index setting (`heartbeatIndices`) in Kibana
/// `major.minor`.
pub fn uptime_default_patterns(major: u32, minor: u32) -> &'static [&'static str] {
    match (major, minor) {
        (..=7, _) => &["heartbeat-7*"],
        (8, 0..=1) => &["heartbeat-8*"],
        (8, 2..=8) => &["heartbeat-8*", "heartbeat-7*", "synthetics-*"],
        (8, 9..=10) => &["heartbeat-8*", "heartbeat-7*"],
        _ => &["heartbeat-*"],
    }
}

/// Whether Kibana `major.minor`'s Uptime app shows `index` with its
/// settings untouched.
pub fn uptime_shows(index: &str, major: u32, minor: u32) -> bool {
    uptime_default_patterns(major, minor)
        .iter()
        .any(|p| index.starts_with(p.trim_end_matches('*')))
}

/// How loud a start-up note is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Something an operator must act on for the data to be seen.
    Warn,
    /// Where the data shows, for the record.
    Info,
}

/// What to tell the operator at start about where Kibana `major.minor`
/// shows data stream `index`.
pub fn startup_notes(index: &str, major: u32, minor: u32) -> Vec<(Level, String)> {
    let mut notes = Vec::new();
    let v = (major, minor);
    let line = format!("{major}.{minor}");
    let shown = uptime_shows(index, major, minor);
    if is_synthetics(index) {
        if v < SYNTHETICS_READ_ONLY_SINCE {
            notes.push((
                Level::Warn,
                format!(
                    "Kibana {line}'s Synthetics app lists only monitors it manages, not checks written by \
                     swarming (shown read-only from Kibana 9.6): use the swarming dashboards{}",
                    if shown {
                        " or the Uptime app"
                    } else {
                        ", or add synthetics-* to Uptime > Settings > Indices"
                    }
                ),
            ));
        } else {
            notes.push((
                Level::Info,
                format!(
                    "Kibana {line}'s Synthetics app shows these checks as read-only monitors (data \
                     stream {index}, space in elasticsearch.space_id)"
                ),
            ));
        }
        return notes;
    }
    if !shown {
        let hint = if major <= 7 {
            "name it e.g. heartbeat-7-swarming"
        } else {
            "name it e.g. heartbeat-8-swarming"
        };
        notes.push((
            Level::Warn,
            format!(
                "Kibana {line}'s Uptime app reads {} by default, not {index}: add it under Uptime > \
                 Settings > Indices, or {hint}",
                uptime_default_patterns(major, minor).join(",")
            ),
        ));
    }
    if v >= UPTIME_HIDDEN_SINCE {
        notes.push((
            Level::Info,
            format!(
                "Kibana {line}: the Uptime app is deprecated and hidden unless the advanced setting \
                 observability:enableLegacyUptimeApp is on (or it had data in the last week); \
                 elasticsearch.mode: synthetics writes for the Synthetics app"
            ),
        ));
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptime_defaults_by_line() {
        let idx = "heartbeat-8-swarming";
        assert!(!uptime_shows(idx, 7, 17));
        assert!(uptime_shows("heartbeat-7-swarming", 7, 10));
        for minor in [0, 2, 8, 10, 11, 19] {
            assert!(uptime_shows(idx, 8, minor), "8.{minor}");
        }
        assert!(uptime_shows(idx, 9, 0));
        // heartbeat-swarming only from 8.11 on (heartbeat-*).
        assert!(!uptime_shows("heartbeat-swarming", 8, 10));
        assert!(uptime_shows("heartbeat-swarming", 8, 11));
        assert!(uptime_shows("heartbeat-swarming", 9, 2));
        // synthetics-* only in 8.2 to 8.8.
        assert!(!uptime_shows("synthetics-icmp-swarming", 8, 1));
        assert!(uptime_shows("synthetics-icmp-swarming", 8, 2));
        assert!(uptime_shows("synthetics-icmp-swarming", 8, 8));
        assert!(!uptime_shows("synthetics-icmp-swarming", 8, 9));
        assert!(!uptime_shows("synthetics-icmp-swarming", 9, 0));
    }

    fn warnings(index: &str, major: u32, minor: u32) -> Vec<String> {
        startup_notes(index, major, minor)
            .into_iter()
            .filter(|(l, _)| *l == Level::Warn)
            .map(|(_, m)| m)
            .collect()
    }

    #[test]
    fn startup_warning_only_where_a_default_kibana_misses_the_data() {
        // The default name: fine on 8.x and 9.x, not on 7.x.
        assert!(warnings("heartbeat-8-swarming", 8, 5).is_empty());
        assert!(warnings("heartbeat-8-swarming", 8, 17).is_empty());
        assert!(warnings("heartbeat-8-swarming", 9, 1).is_empty());
        let w = warnings("heartbeat-8-swarming", 7, 17);
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("heartbeat-7*") && w[0].contains("heartbeat-7-swarming"));
        // heartbeat-swarming: a real miss before 8.11 only (no false alarm on 8.11+).
        assert_eq!(warnings("heartbeat-swarming", 8, 10).len(), 1);
        assert!(warnings("heartbeat-swarming", 8, 11).is_empty());
        assert!(warnings("heartbeat-swarming", 9, 0).is_empty());
        assert_eq!(warnings("pings", 9, 0).len(), 1);
        // Synthetics: before 9.6 the app does not list our checks.
        let w = warnings("synthetics-icmp-swarming", 8, 5);
        assert!(w[0].contains("Uptime app"), "{w:?}");
        let w = warnings("synthetics-icmp-swarming", 9, 0);
        assert!(w[0].contains("add synthetics-*"), "{w:?}");
        assert!(warnings("synthetics-icmp-swarming", 9, 6).is_empty());
        // Uptime hidden from 8.15: said, but as information.
        let notes = startup_notes("heartbeat-8-swarming", 9, 0);
        assert!(notes
            .iter()
            .any(|(l, m)| *l == Level::Info && m.contains("enableLegacyUptimeApp")));
        assert!(startup_notes("heartbeat-8-swarming", 8, 14).is_empty());
    }

    #[test]
    fn synthetics_data_streams_get_their_own_template() {
        assert_eq!(template_name("heartbeat-8-swarming"), UPTIME_TEMPLATE);
        assert_eq!(
            template_name("synthetics-icmp-swarming"),
            SYNTHETICS_TEMPLATE
        );
        let mut t = json!({"index_patterns": ["heartbeat-8-swarming*"], "priority": 200});
        adapt_template(&mut t, "heartbeat-8-swarming");
        assert_eq!(t["priority"], 200);
        adapt_template(&mut t, "synthetics-icmp-probes");
        assert_eq!(t["index_patterns"], json!(["synthetics-icmp-probes*"]));
        assert_eq!(t["priority"], SYNTHETICS_TEMPLATE_PRIORITY);
    }
}
