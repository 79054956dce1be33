#!/usr/bin/env python3
"""Writes swarming-saved-objects.ndjson (Kibana 7.10+/8.x saved objects import).

Run from this directory after editing; commit both files. Visualizations are
TSVB (`metrics`) time series and aggregation-based data tables, whose saved
shapes are stable across Kibana 7.10 to 8.x (Kibana migrates them on import).
"""
import json

DATA_VIEW_ID = "swarming-heartbeat"
DATA_VIEW_TITLE = "heartbeat-*"
CHECKS = 'event.dataset : "icmp"'
LIFECYCLE = 'event.dataset : "swarming.agent"'

objects = [
    {
        "type": "index-pattern",
        "id": DATA_VIEW_ID,
        "attributes": {
            "title": DATA_VIEW_TITLE,
            "name": "heartbeat-* (swarming)",
            "timeFieldName": "@timestamp",
        },
        "references": [],
    }
]


def tsvb(vid, title, field, split, label, percent):
    series = {
        "id": vid + "-series",
        "color": "#54B399",
        "split_mode": "terms",
        "terms_field": split,
        "terms_size": "20",
        "terms_order_by": "_count",
        "metrics": [{"id": vid + "-metric", "type": "avg", "field": field}],
        "label": label,
        "formatter": "percent" if percent else "number",
        "value_template": "{{value}}" if percent else "{{value}} ms",
        "chart_type": "line",
        "line_width": 1,
        "point_size": 1,
        "fill": 0,
        "stacked": "none",
        "separate_axis": 0,
        "axis_position": "right",
        "split_color_mode": "kibana",
    }
    params = {
        "id": vid + "-panel",
        "type": "timeseries",
        "index_pattern": DATA_VIEW_TITLE,
        "use_kibana_indexes": False,
        "time_field": "@timestamp",
        "interval": "auto",
        "drop_last_bucket": 0,
        "axis_position": "left",
        "axis_formatter": "number",
        "axis_scale": "normal",
        "show_legend": 1,
        "show_grid": 1,
        "tooltip_mode": "show_all",
        "isModelInvalid": False,
        "filter": {"query": CHECKS, "language": "kuery"},
        "series": [series],
    }
    vis_state = {"title": title, "type": "metrics", "aggs": [], "params": params}
    return {
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
                    {"query": {"query": "", "language": "kuery"}, "filter": []}
                )
            },
        },
        "references": [],
    }


def table(vid, title, query, buckets, metrics):
    aggs = []
    n = 1
    for kind, field, label in metrics:
        params = {"customLabel": label}
        if field:
            params["field"] = field
        if kind == "percentiles":
            params["percents"] = [95]
        aggs.append({"id": str(n), "enabled": True, "type": kind,
                     "params": params, "schema": "metric"})
        n += 1
    for field, label in buckets:
        aggs.append({"id": str(n), "enabled": True, "type": "terms", "schema": "bucket",
                     "params": {"field": field, "size": 100, "order": "desc",
                                "orderBy": "_key", "otherBucket": False,
                                "missingBucket": False, "customLabel": label}})
        n += 1
    vis_state = {
        "title": title,
        "type": "table",
        "aggs": aggs,
        "params": {"perPage": 25, "showPartialRows": False,
                   "showMetricsAtAllLevels": False, "showTotal": False,
                   "totalFunc": "sum", "percentageCol": ""},
    }
    return {
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
        "references": [{
            "name": "kibanaSavedObjectMeta.searchSourceJSON.index",
            "type": "index-pattern",
            "id": DATA_VIEW_ID,
        }],
    }


def dashboard(did, title, description, panels):
    panel_json = []
    refs = []
    x = y = row_h = 0
    for i, (vid, w, h) in enumerate(panels):
        if x + w > 48:  # the dashboard grid is 48 columns wide
            x, y, row_h = 0, y + row_h, 0
        panel_json.append({
            "version": "7.10.0",
            "type": "visualization",
            "gridData": {"x": x, "y": y, "w": w, "h": h, "i": str(i + 1)},
            "panelIndex": str(i + 1),
            "embeddableConfig": {},
            "panelRefName": "panel_%d" % i,
        })
        refs.append({"name": "panel_%d" % i, "type": "visualization", "id": vid})
        x, row_h = x + w, max(row_h, h)
    return {
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
                                       "hidePanelTitles": False}),
            "kibanaSavedObjectMeta": {
                "searchSourceJSON": json.dumps(
                    {"query": {"query": "", "language": "kuery"}, "filter": []}
                )
            },
        },
        "references": refs,
    }


TARGET = ("monitor.name", "Target")
AGENT = ("observer.name", "Agent")
ROUND_METRICS = [
    ("avg", "ping.loss", "Loss (ratio)"),
    ("avg", "ping.rtt.avg_ms", "Average rtt (ms)"),
    ("max", "ping.rtt.max_ms", "Worst rtt (ms)"),
    ("percentiles", "ping.rtt.avg_ms", "Round rtt p95 (ms)"),
    ("sum", "summary.down", "Rounds down"),
    ("count", None, "Rounds"),
]

objects += [
    tsvb("swarming-loss-by-target", "swarming: loss by target", "ping.loss",
         "monitor.name", "loss", True),
    tsvb("swarming-rtt-by-target", "swarming: average rtt by target",
         "ping.rtt.avg_ms", "monitor.name", "rtt", False),
    tsvb("swarming-loss-by-agent", "swarming: loss by agent", "ping.loss",
         "observer.name", "loss", True),
    tsvb("swarming-rtt-by-agent", "swarming: average rtt by agent",
         "ping.rtt.avg_ms", "observer.name", "rtt", False),
    tsvb("swarming-loss-by-provider", "swarming: loss by provider", "ping.loss",
         "labels.provider", "loss", True),
    tsvb("swarming-rtt-by-provider", "swarming: average rtt by provider",
         "ping.rtt.avg_ms", "labels.provider", "rtt", False),
    table("swarming-targets-table", "swarming: targets", CHECKS, [TARGET],
          ROUND_METRICS),
    table("swarming-agents-table", "swarming: agents", CHECKS,
          [AGENT, ("labels.provider", "Provider"), ("observer.geo.name", "Location")],
          ROUND_METRICS),
    table("swarming-agent-target-table", "swarming: agent x target", CHECKS,
          [AGENT, TARGET], ROUND_METRICS),
    table("swarming-agent-lifecycle", "swarming: agent lost / shutdown events",
          LIFECYCLE, [AGENT, ("event.action", "Event")],
          [("count", None, "Events"), ("max", "@timestamp", "Last seen")]),
    dashboard("swarming-compare-targets", "swarming: compare targets",
              "Packet loss and round-trip time per target, all agents together.",
              [("swarming-loss-by-target", 24, 15), ("swarming-rtt-by-target", 24, 15),
               ("swarming-targets-table", 48, 15)]),
    dashboard("swarming-compare-agents", "swarming: compare agents and providers",
              "Packet loss and round-trip time per agent and per labels.provider.",
              [("swarming-loss-by-agent", 24, 15), ("swarming-rtt-by-agent", 24, 15),
               ("swarming-loss-by-provider", 24, 15), ("swarming-rtt-by-provider", 24, 15),
               ("swarming-agents-table", 48, 15), ("swarming-agent-lifecycle", 48, 15)]),
    dashboard("swarming-agent-target", "swarming: agent x target",
              "Every (agent, target) pair; click a row value to filter the charts.",
              [("swarming-agent-target-table", 48, 20), ("swarming-loss-by-agent", 24, 15),
               ("swarming-rtt-by-agent", 24, 15), ("swarming-loss-by-target", 24, 15),
               ("swarming-rtt-by-target", 24, 15)]),
]

with open("swarming-saved-objects.ndjson", "w", encoding="utf-8") as f:
    for o in objects:
        f.write(json.dumps(o, sort_keys=True) + "\n")
