#!/usr/bin/env python3
"""Helper of insight-scenarios.sh (standard library only).

  respond ADDR DELAY_MS     answer ICMP echo requests to ADDR after DELAY_MS
                            (a raw socket; the script drops the kernel's own
                            replies from ADDR while it runs)
  ready LOG ...             wait until every agent's latest round of every
                            target is up (and, with --verdicts, every
                            verdict healthy)
  observe LOG ...           follow one scenario from its fault: the first
                            verdict on its subject, when, after how many
                            rounds, and any false verdict elsewhere; prints
                            one JSON line
  report RESULTS            the table, confusion matrix, accuracy, SUMMARY

LOG is the subscriber's log: one line per message, "ARRIVAL TOPIC PAYLOAD"
(mosquitto_sub -F '%U %t %p' on ping/# and verdict/#), in arrival order.
"""

import argparse
import collections
import datetime
import heapq
import json
import select
import socket
import struct
import sys
import time

SLOW_MS = 150.0  # the harness's own reading of a round, for display only
LOSSY = 0.1


# ------------------------------------------------------------ responder


def checksum(b):
    if len(b) % 2:
        b += b"\0"
    t = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    t = (t >> 16) + (t & 0xFFFF)
    t += t >> 16
    return ~t & 0xFFFF


def respond(addr, delay_ms):
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    # Bound: replies leave from ADDR, and only packets to ADDR come in.
    s.bind((addr, 0))
    delay = delay_ms / 1000.0
    due = []  # (when, n, reply, destination)
    n = 0
    print("ready", flush=True)
    while True:
        wait = max(0.0, due[0][0] - time.monotonic()) if due else None
        r, _, _ = select.select([s], [], [], wait)
        if r:
            pkt, (src, _) = s.recvfrom(65535)
            icmp = pkt[(pkt[0] & 0x0F) * 4:]
            if len(icmp) >= 8 and icmp[0] == 8 and icmp[1] == 0:
                rest = icmp[4:]  # identifier, sequence, payload: echoed as is
                reply = b"\0\0" + struct.pack("!H", checksum(b"\0\0\0\0" + rest)) + rest
                n += 1
                heapq.heappush(due, (time.monotonic() + delay, n, reply, src))
        now = time.monotonic()
        while due and due[0][0] <= now:
            _, _, reply, dst = heapq.heappop(due)
            s.sendto(reply, (dst, 0))


# ------------------------------------------------------------ the log


def parse_ts(s):
    return datetime.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


Result = collections.namedtuple("Result", "arrival agent target ts sent received avg")


def round_state(r):
    """The harness's own reading of a round (absolute default levels)."""
    if r.sent == 0 or r.received == 0 or r.avg is None:
        return "down"
    if 1.0 - min(r.received, r.sent) / r.sent > LOSSY:
        return "lossy"
    if r.avg > SLOW_MS:
        return "slow"
    return "up"


def label(topic, p):
    """(label, healthy) of a verdict payload: `state/cause[/provider]` for
    targets, the state for agents, `cleared` for an empty payload."""
    if not isinstance(p, dict):
        return "cleared", False
    if topic.startswith("verdict/agent/"):
        st = str(p.get("state"))
        return st, st == "ok"
    st, cause = str(p.get("state")), str(p.get("cause"))
    text = st + "/" + cause + ("/" + str(p["provider"]) if p.get("provider") else "")
    return text, st == "up"


class Feed:
    """Follows the log as it grows."""

    def __init__(self, path):
        self.f = open(path, "rb")  # pylint: disable=consider-using-with
        self.rest = b""
        self.results = []  # Result, arrival order
        self.verdicts = []  # (arrival, topic, payload or None)
        self.latest = {}  # (agent, target) -> Result
        self.now = {}  # verdict topic -> payload

    def poll(self):
        data = self.f.read()
        if not data:
            return
        lines = (self.rest + data).split(b"\n")
        self.rest = lines.pop()
        for raw in lines:
            parts = raw.decode("utf-8", "replace").split(" ", 2)
            if len(parts) < 2:
                continue
            try:
                arrival = float(parts[0])
            except ValueError:
                continue
            topic = parts[1]
            payload = parts[2] if len(parts) > 2 else ""
            try:
                p = json.loads(payload) if payload.strip() else None
            except ValueError:
                p = None
            if topic.startswith("ping/") and isinstance(p, dict):
                try:
                    rtt = p.get("rtt") or {}
                    r = Result(arrival, p["agent"], p["target"], parse_ts(p["timestamp"]),
                               int(p.get("sent", 0)), int(p.get("received", 0)), rtt.get("avg"))
                except (KeyError, ValueError, TypeError):
                    continue
                self.results.append(r)
                self.latest[(r.agent, r.target)] = r
            elif topic.startswith("verdict/"):
                self.verdicts.append((arrival, topic, p if isinstance(p, dict) else None))
                self.now[topic] = p if isinstance(p, dict) else None


def csv(s):
    return [x for x in (s or "").split(",") if x]


# ------------------------------------------------------------ ready


def not_ready(feed, a):
    agents, targets = csv(a.agents), csv(a.targets)
    missing = []
    for ag in agents:
        for t in targets:
            r = feed.latest.get((ag, t))
            if r is None or r.ts < a.since:
                missing.append("%s: no new round of %s" % (ag, t))
            elif round_state(r) != "up":
                missing.append("%s: %s is %s" % (ag, t, round_state(r)))
    if a.verdicts:
        topics = ["verdict/target/" + t for t in targets] + ["verdict/agent/" + g for g in agents]
        for topic in topics:
            if topic not in feed.now:
                missing.append(topic + ": none yet")
                continue
            text, healthy = label(topic, feed.now[topic])
            if not healthy:
                missing.append(topic + ": " + text)
    return missing


def ready(a):
    feed = Feed(a.log)
    deadline = time.time() + a.timeout
    while True:
        feed.poll()
        missing = not_ready(feed, a)
        if not missing:
            return 0
        if time.time() > deadline:
            if not a.quiet:
                shown = missing[:8] + (["..."] if len(missing) > 8 else [])
                print("not ready after %.0f s: %s" % (a.timeout, "; ".join(shown)))
            return 1
        time.sleep(0.2)


# ------------------------------------------------------------ observe


def summarize(rs):
    """`down x3, loss 100%` or `slow x3, rtt 301 ms` for a list of rounds."""
    if not rs:
        return "no round"
    counts = collections.Counter(round_state(r) for r in rs)
    states = ", ".join("%s x%d" % (s, n) for s, n in counts.most_common())
    sent = sum(r.sent for r in rs)
    loss = 100.0 * (1.0 - sum(r.received for r in rs) / sent) if sent else 100.0
    avgs = [r.avg for r in rs if r.avg is not None]
    rtt = (", rtt %.1f ms" % (sum(avgs) / len(avgs))) if avgs else ""
    return "%s, loss %.0f%%%s" % (states, loss, rtt)


def observe(a):
    feed = Feed(a.log)
    agents, targets = csv(a.agents), csv(a.targets)
    t0 = a.t0
    after = a.after if a.after is not None else t0
    kind = a.kind
    subject = ("verdict/target/" if kind == "target" else "verdict/agent/") + a.subject \
        if kind in ("target", "agent") else None
    deadline = time.time() + a.timeout

    def groups(upto=None):
        """Post-fault rounds, by the key the window counts in."""
        g = {}
        if kind == "target":
            for ag in agents:
                g[ag] = []
        elif kind == "agent":
            for t in targets:
                g[t] = []
        else:
            for ag in agents:
                for t in targets:
                    g[(ag, t)] = []
        for r in feed.results:
            if upto is not None and r.arrival > upto:
                break
            if r.ts < after:
                continue
            if kind == "target" and r.target == a.subject:
                g[r.agent].append(r)
            elif kind == "agent" and r.agent == a.subject and r.target in g:
                g[r.target].append(r)
            elif kind == "none" and (r.agent, r.target) in g:
                g[(r.agent, r.target)].append(r)
        return g

    def rounds(upto=None):
        """(rounds of the fault, fewest rounds of any member): the first is
        the most post-fault rounds published by an agent that saw the fault
        (for a target, agents with a bad round of it; for an agent, its
        targets), up to `upto`. Peers that see the target fine do not count:
        their rounds neither show nor confirm the fault."""
        g = groups(upto)
        counts = [len(v) for v in g.values()]
        if not counts:
            return 0, 0
        if kind == "target":
            hit = {k for k, v in groups().items() if any(round_state(r) != "up" for r in v)}
            faulted = [len(v) for k, v in g.items() if k in hit]
            if faulted:
                return max(faulted), min(counts)
        return max(counts), min(counts)

    def permitted(topic, p):
        # An agent's dead uplink makes every target look bad to that agent
        # alone: cause `agent` is the right reading of those targets.
        return kind == "agent" and topic.startswith("verdict/target/") \
            and isinstance(p, dict) and p.get("cause") == "agent"

    prev = {}
    first = None  # (arrival, label, rounds)
    later = []  # further changes on the subject after the first
    false = []  # (arrival, topic, label, an agent verdict's reason)
    seen_v = 0
    timed_out = False
    while True:
        feed.poll()
        for arrival, topic, p in feed.verdicts[seen_v:]:
            text, healthy = label(topic, p)
            if arrival < t0 or prev.get(topic) == text:
                prev[topic] = text
                continue
            prev[topic] = text
            if topic == subject:
                if first is None and not healthy:
                    first = (arrival, text, rounds(arrival)[0])
                elif first is not None:
                    later.append((arrival, text))
            elif not healthy and not permitted(topic, p):
                why = p.get("reason") if isinstance(p, dict) and topic.startswith("verdict/agent/") else None
                false.append((arrival, topic, text, why))
        seen_v = len(feed.verdicts)
        _, least = rounds()
        if kind == "none" or not a.verdicts:
            if least >= a.max_rounds:
                break
        elif first is not None:
            if least >= max(first[2] + 1, 2):
                break
        elif least >= a.max_rounds:
            break
        if time.time() > deadline:
            timed_out = True
            break
        time.sleep(0.2)

    g = groups()
    if kind == "target":
        seen = "; ".join("%s: %s" % (k, summarize(v)) for k, v in g.items())
    elif kind == "agent":
        own = [r for v in g.values() for r in v]
        peers = [r for r in feed.results if r.ts >= t0 and r.agent != a.subject]
        seen = "%s: %s; peers: %s" % (a.subject, summarize(own), summarize(peers))
    else:
        per = {}
        for (ag, _), v in g.items():
            per[ag] = min(per.get(ag, len(v)), len(v))
        seen = "rounds after the restart (each target): " + ", ".join("%s %d" % (ag, per.get(ag, 0)) for ag in agents)
    notes = []
    if timed_out:
        notes.append("timed out after %.0f s" % a.timeout)
    if kind == "none":
        republished = {t for (arr, t, p) in feed.verdicts if arr >= after and p is not None}
        notes.append("verdict topics re-published after the restart: %d" % len(republished))
        published = "no change" if not false else "%s %s" % (false[0][1], false[0][2])
        right = not false and not timed_out
        rnd, secs = None, None
    else:
        published = first[1] if first else "none"
        rnd = first[2] if first else None
        secs = round(first[0] - t0, 2) if first else None
        right = bool(first) and first[1] == a.expect and first[2] <= 2 and not false
        if first and first[1] == a.expect and first[2] > 2:
            notes.append("right, but late")
    if later:
        notes.append("then " + ", ".join("%s (+%.1f s)" % (t, arr - t0) for arr, t in later[:4]))
    out = {
        "scenario": a.name,
        "subject": ("%s %s" % (kind, a.subject)) if kind != "none" else "all",
        "expected": a.expect,
        "published": published,
        "rounds": rnd,
        "seconds": secs,
        "right": right,
        "false": ["%s %s (+%.1f s%s)" % (t, x, arr - t0, ", " + why if why else "")
                  for arr, t, x, why in false[:6]],
        "seen": seen,
        "notes": notes,
        "t0": t0,
    }
    print(json.dumps(out), flush=True)
    return 0


# ------------------------------------------------------------ report


def report(a):
    rows = []
    with open(a.results, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    w = "%-9s %-19s %-18s %-26s %6s %8s  %s"
    print()
    print(w % ("scenario", "subject", "expected", "published", "rounds", "seconds", "right"))
    for r in rows:
        print(w % (r["scenario"], r["subject"], r["expected"], r["published"][:26],
                   "-" if r["rounds"] is None else r["rounds"],
                   "-" if r["seconds"] is None else "%.1f" % r["seconds"],
                   "yes" if r["right"] else "NO"))
    print()
    print("What the agents' results showed from the fault on (harness's reading, absolute levels):")
    for r in rows:
        print("  %-9s %s" % (r["scenario"], r["seen"]))
        for x in r["false"]:
            print("  %-9s false verdict: %s" % ("", x))
        for x in r["notes"]:
            print("  %-9s %s" % ("", x))
    # Confusion matrix: expected (rows) x first published verdict (columns).
    exp = sorted({r["expected"] for r in rows})
    pub = sorted({r["published"] if r["published"] in exp else "other" if r["published"] != "none" else "none"
                  for r in rows} | set(exp), key=lambda x: (x in ("other", "none"), x))
    m = collections.Counter()
    for r in rows:
        p = r["published"] if r["published"] in exp else ("none" if r["published"] == "none" else "other")
        m[(r["expected"], p)] += 1
    width = max(10, *(len(x) + 1 for x in pub))
    print()
    print("Confusion (rows: expected, columns: first verdict published on the subject):")
    print("  %-18s" % "" + "".join(("%" + str(width) + "s") % x for x in pub))
    for e in exp:
        print("  %-18s" % e + "".join(("%" + str(width) + "d") % m[(e, p)] for p in pub))
    right = sum(1 for r in rows if r["right"])
    total = len(rows)
    pct = 100.0 * right / total if total else 0.0
    times = sorted(r["seconds"] for r in rows if r["right"] and r["seconds"] is not None)
    rnds = sorted(r["rounds"] for r in rows if r["right"] and r["rounds"] is not None)
    print()
    if times:
        print("fault to verdict (right ones): median %.1f s, max %.1f s; rounds median %d, max %d"
              % (times[len(times) // 2], times[-1], rnds[len(rnds) // 2], rnds[-1]))
    print("right within 2 rounds: %d/%d = %.0f%%" % (right, total, pct))
    print("SUMMARY right=%d total=%d" % (right, total))
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("respond")
    p.add_argument("addr")
    p.add_argument("delay_ms", type=float)
    for name in ("ready", "observe"):
        p = sub.add_parser(name)
        p.add_argument("log")
        p.add_argument("--agents", required=True)
        p.add_argument("--targets", required=True)
        p.add_argument("--verdicts", action="store_true")
        p.add_argument("--timeout", type=float, default=60.0)
    p = sub.choices["ready"]
    p.add_argument("--since", type=float, default=0.0)
    p.add_argument("--quiet", action="store_true")
    p = sub.choices["observe"]
    p.add_argument("--name", required=True)
    p.add_argument("--kind", choices=("target", "agent", "none"), required=True)
    p.add_argument("--subject", default="")
    p.add_argument("--expect", required=True)
    p.add_argument("--t0", type=float, required=True)
    p.add_argument("--after", type=float)
    p.add_argument("--max-rounds", type=int, default=5)
    p = sub.add_parser("report")
    p.add_argument("results")
    a = ap.parse_args()
    if a.cmd == "respond":
        respond(a.addr, a.delay_ms)
        return 0
    return {"ready": ready, "observe": observe, "report": report}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
