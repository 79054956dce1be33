#!/usr/bin/env python3
"""Writes swarming-saved-objects.ndjson: Kibana 8.8+ and 9.x saved objects.

Run from anywhere after editing (`--stdout` prints instead of writing); commit
both files. tests/packaging_files.rs checks the committed file equals this output and
holds every object to the shape of Kibana's own saved objects
(contracts/saved-object-shapes.json).

Shape, as Kibana itself ships it (sample data sets, see contracts/README.md):
- version stamps `coreMigrationVersion: 8.8.0` and a per-type
  `typeMigrationVersion` no newer than what Kibana 8.8 knows, so every
  Kibana from 8.8 on runs its later migrations on import (9.x included:
  Kibana's own 9.x sample data carries the same stamps);
- data views by reference only: TSVB panels use `use_kibana_indexes` and
  `index_pattern_ref_name`, tables and saved searches use
  `searchSourceJSON.indexRefName`, dashboards name panels `panel_<i>` with
  references `<i>:panel_<i>` (of type `visualization` or `search`).
Kibana 7.x and 8.0-8.7 are not targeted (no typeMigrationVersion there).

Only the Python standard library is used.
"""
import json
import os
import sys

CORE = "8.8.0"
STAMPS = {"index-pattern": "7.11.0", "visualization": "8.0.0", "search": "7.9.3",
          "dashboard": "8.7.0"}
PANEL_VERSION = "8.8.0"

DATA_VIEW_ID = "swarming-checks"
# Both output modes: heartbeat-* (uptime) and synthetics-icmp-* (synthetics).
DATA_VIEW_TITLE = "heartbeat-*,synthetics-icmp-*"
# Only swarming's checks: real Heartbeat/Fleet ICMP monitors have no ping.*.
CHECKS = 'event.dataset : "icmp" and ping.sent : *'
LIFECYCLE = 'event.dataset : "swarming.agent"'
# State-change documents: one per verdict transition. An incident is the
# document of the bad state (verdict.since) and the one that ends it, which
# carries the start under verdict.previous.
VERDICTS = 'event.dataset : "swarming.verdict"'
INCIDENT_COLUMNS = ["verdict.kind", "verdict.subject", "verdict.state", "verdict.cause",
                    "verdict.previous.state", "verdict.previous.since", "verdict.since",
                    "message"]
INCIDENTS_ID = "swarming-incidents"
RTT_ECHOES = "ping.rtts_ms"  # every echo's rtt: percentiles over echoes
PERCENTS = [50, 95, 99]


def stamped(obj):
    obj["coreMigrationVersion"] = CORE
    obj["typeMigrationVersion"] = STAMPS[obj["type"]]
    obj["managed"] = False
    return obj


def data_view():
    return stamped({
        "type": "index-pattern",
        "id": DATA_VIEW_ID,
        "attributes": {
            "title": DATA_VIEW_TITLE,
            "name": "swarming checks",
            "timeFieldName": "@timestamp",
            "fieldFormatMap": json.dumps({"ping.loss": {"id": "percent"}}),
        },
        "references": [],
    })


def tsvb(vid, title, metric, field, split, unit):
    """A TSVB time series, one line per value of `split`."""
    m = {"id": vid + "-metric", "type": metric, "field": field}
    if metric == "percentile":
        m["percentiles"] = [{"id": vid + "-p95", "value": 95, "mode": "line",
                             "shade": 0.2, "color": "#68BC00"}]
    series = {
        "id": vid + "-series",
        "color": "#54B399",
        "split_mode": "terms",
        "terms_field": split,
        "terms_size": "20",
        "terms_order_by": "_count",
        "metrics": [m],
        "label": title,
        "formatter": "percent" if unit == "ratio" else "number",
        "value_template": "{{value}}" if unit == "ratio" else "{{value}} ms",
        "chart_type": "line",
        "line_width": 1,
        "point_size": 1,
        "fill": 0,
        "stacked": "none",
        "separate_axis": 0,
        "axis_position": "right",
        "split_color_mode": "kibana",
        "override_index_pattern": 0,
        "series_drop_last_bucket": 0,
    }
    params = {
        "id": vid + "-panel",
        "type": "timeseries",
        "series": [series],
        "time_field": "@timestamp",
        "use_kibana_indexes": True,
        "index_pattern_ref_name": "metrics_0_index_pattern",
        "interval": "",
        "axis_position": "left",
        "axis_formatter": "number",
        "axis_scale": "normal",
        "show_legend": 1,
        "truncate_legend": 1,
        "max_lines_legend": 1,
        "show_grid": 1,
        "tooltip_mode": "show_all",
        "drop_last_bucket": 0,
        "isModelInvalid": False,
        "filter": {"query": CHECKS, "language": "kuery"},
    }
    vis_state = {"title": title, "type": "metrics", "aggs": [], "params": params}
    return stamped({
        "type": "visualization",
        "id": vid,
        "attributes": {
            "title": title,
            "description": "",
            "version": 1,
            "visState": json.dumps(vis_state),
            "uiStateJSON": "{}",
            "kibanaSavedObjectMeta": {
                "searchSourceJSON": json.dumps(
                    {"query": {"query": "", "language": "kuery"}, "filter": []})
            },
        },
        "references": [{"name": "metrics_0_index_pattern", "type": "index-pattern",
                        "id": DATA_VIEW_ID}],
    })


def table(vid, title, query, buckets, metrics):
    """An aggregation-based data table: one row per bucket combination."""
    aggs = []
    for kind, field, label in metrics:
        params = {"customLabel": label}
        if field:
            params["field"] = field
        if kind == "percentiles":
            params["percents"] = PERCENTS
        aggs.append({"id": str(len(aggs) + 1), "enabled": True, "type": kind,
                     "params": params, "schema": "metric"})
    for field, label in buckets:
        aggs.append({"id": str(len(aggs) + 1), "enabled": True, "type": "terms",
                     "schema": "bucket",
                     "params": {"field": field, "size": 100, "order": "desc",
                                "orderBy": "_key", "otherBucket": False,
                                "missingBucket": False, "customLabel": label}})
    vis_state = {
        "title": title,
        "type": "table",
        "aggs": aggs,
        "params": {"perPage": 25, "showPartialRows": False,
                   "showMetricsAtAllLevels": False, "showTotal": False,
                   "totalFunc": "sum", "percentageCol": ""},
    }
    return stamped({
        "type": "visualization",
        "id": vid,
        "attributes": {
            "title": title,
            "description": "",
            "version": 1,
            "visState": json.dumps(vis_state),
            "uiStateJSON": "{}",
            "kibanaSavedObjectMeta": {
                "searchSourceJSON": json.dumps({
                    "query": {"query": query, "language": "kuery"},
                    "filter": [],
                    "indexRefName": "kibanaSavedObjectMeta.searchSourceJSON.index",
                })
            },
        },
        "references": [{"name": "kibanaSavedObjectMeta.searchSourceJSON.index",
                        "type": "index-pattern", "id": DATA_VIEW_ID}],
    })


def saved_search(sid, title, query, columns, sort):
    """A saved search (Discover) shown as a document table on dashboards."""
    return stamped({
        "type": "search",
        "id": sid,
        "attributes": {
            "title": title,
            "description": "",
            "version": 1,
            "hits": 0,
            "columns": columns,
            "sort": sort,
            "kibanaSavedObjectMeta": {
                "searchSourceJSON": json.dumps({
                    "highlightAll": True,
                    "version": True,
                    "query": {"query": query, "language": "kuery"},
                    "filter": [],
                    "indexRefName": "kibanaSavedObjectMeta.searchSourceJSON.index",
                })
            },
        },
        "references": [{"name": "kibanaSavedObjectMeta.searchSourceJSON.index",
                        "type": "index-pattern", "id": DATA_VIEW_ID}],
    })


SEARCHES = {INCIDENTS_ID}


def dashboard(did, title, description, panels):
    panel_json = []
    refs = []
    x = y = row_h = 0
    for i, (vid, w, h) in enumerate(panels):
        if x + w > 48:  # the dashboard grid is 48 columns wide
            x, y, row_h = 0, y + row_h, 0
        idx = str(i + 1)
        ty = "search" if vid in SEARCHES else "visualization"
        panel_json.append({
            "version": PANEL_VERSION,
            "type": ty,
            "gridData": {"x": x, "y": y, "w": w, "h": h, "i": idx},
            "panelIndex": idx,
            "embeddableConfig": {"enhancements": {}},
            "panelRefName": "panel_" + idx,
        })
        refs.append({"name": idx + ":panel_" + idx, "type": ty, "id": vid})
        x, row_h = x + w, max(row_h, h)
    return stamped({
        "type": "dashboard",
        "id": did,
        "attributes": {
            "title": title,
            "description": description,
            "version": 1,
            "timeRestore": True,
            "timeFrom": "now-24h",
            "timeTo": "now",
            "refreshInterval": {"pause": False, "value": 60000},
            "panelsJSON": json.dumps(panel_json),
            "optionsJSON": json.dumps({"useMargins": True, "syncColors": False,
                                       "syncCursor": True, "syncTooltips": False,
                                       "hidePanelTitles": False}),
            "kibanaSavedObjectMeta": {
                "searchSourceJSON": json.dumps(
                    {"query": {"query": "", "language": "kuery"}, "filter": []})
            },
        },
        "references": refs,
    })


TARGET = ("monitor.name", "Target")
AGENT = ("observer.name", "Agent")
PROVIDER = ("labels.provider", "Provider")
ROUND_METRICS = [
    ("avg", "ping.loss", "Loss (ratio)"),
    ("percentiles", RTT_ECHOES, "Echo rtt (ms)"),
    ("max", "ping.rtt.max_ms", "Worst rtt (ms)"),
    ("sum", "summary.down", "Rounds down"),
    ("count", None, "Rounds"),
]
TARGET_METRICS = ROUND_METRICS + [("cardinality", "observer.name", "Agents")]


def objects():
    return [
        data_view(),
        tsvb("swarming-loss-by-target", "swarming: loss by target", "avg", "ping.loss",
             "monitor.name", "ratio"),
        tsvb("swarming-rtt-p95-by-target", "swarming: echo rtt p95 by target", "percentile",
             RTT_ECHOES, "monitor.name", "ms"),
        tsvb("swarming-loss-by-agent", "swarming: loss by agent", "avg", "ping.loss",
             "observer.name", "ratio"),
        tsvb("swarming-rtt-p95-by-agent", "swarming: echo rtt p95 by agent", "percentile",
             RTT_ECHOES, "observer.name", "ms"),
        tsvb("swarming-loss-by-provider", "swarming: loss by provider", "avg", "ping.loss",
             "labels.provider", "ratio"),
        tsvb("swarming-rtt-p95-by-provider", "swarming: echo rtt p95 by provider",
             "percentile", RTT_ECHOES, "labels.provider", "ms"),
        table("swarming-targets-table", "swarming: targets", CHECKS, [TARGET],
              TARGET_METRICS),
        table("swarming-target-agent-table", "swarming: each target seen from each agent",
              CHECKS, [TARGET, AGENT, PROVIDER], ROUND_METRICS),
        table("swarming-agents-table", "swarming: agents and providers", CHECKS,
              [PROVIDER, AGENT], ROUND_METRICS),
        table("swarming-agent-lifecycle", "swarming: agent lost / shutdown events",
              LIFECYCLE, [AGENT, ("event.action", "Event")],
              [("count", None, "Events"), ("max", "@timestamp", "Last seen")]),
        saved_search(INCIDENTS_ID, "swarming: incidents", VERDICTS, INCIDENT_COLUMNS,
                     [["@timestamp", "desc"]]),
        dashboard("swarming-compare-targets", "swarming: compare targets",
                  "Loss and echo rtt percentiles per target, and per agent for each target.",
                  [("swarming-loss-by-target", 24, 15),
                   ("swarming-rtt-p95-by-target", 24, 15),
                   ("swarming-targets-table", 48, 15),
                   ("swarming-target-agent-table", 48, 20),
                   (INCIDENTS_ID, 48, 15)]),
        dashboard("swarming-compare-agents", "swarming: compare agents and providers",
                  "The same target seen from each agent and provider: loss and echo rtt "
                  "percentiles per agent and per labels.provider.",
                  [("swarming-loss-by-agent", 24, 15),
                   ("swarming-rtt-p95-by-agent", 24, 15),
                   ("swarming-loss-by-provider", 24, 15),
                   ("swarming-rtt-p95-by-provider", 24, 15),
                   ("swarming-target-agent-table", 48, 20),
                   ("swarming-agents-table", 48, 15),
                   ("swarming-agent-lifecycle", 48, 12),
                   (INCIDENTS_ID, 48, 15)]),
    ]


def ndjson():
    return "".join(json.dumps(o, sort_keys=True) + "\n" for o in objects())


if __name__ == "__main__":
    text = ndjson()
    if sys.argv[1:] == ["--stdout"]:
        sys.stdout.write(text)
    else:
        here = os.path.dirname(os.path.abspath(__file__))
        with open(os.path.join(here, "swarming-saved-objects.ndjson"), "w",
                  encoding="utf-8") as f:
            f.write(text)
