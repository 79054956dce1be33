// The live matrix: polls /api/state and redraws. Plain DOM, no framework,
// nothing fetched but this indexer's own endpoint.
"use strict";

const PERIOD_MS = 2000;
const SPARK_W = 160, SPARK_H = 22;

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== undefined && v !== null) e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

function svg(tag, attrs) {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
}

const fmtMs = (x) => (x === null || x === undefined) ? "–" : (x < 10 ? x.toFixed(3) : x.toFixed(1)) + " ms";
const fmtLoss = (x) => (x === null || x === undefined) ? "–" : Math.round(x * 100) + " %";
const fmtAge = (s) => s < 90 ? Math.round(s) + " s" : s < 5400 ? Math.round(s / 60) + " min" : Math.round(s / 3600) + " h";

function provider(a) { return (a.labels && a.labels.provider) || "(no provider)"; }

function sparkline(points) {
  const s = svg("svg", { class: "spark", width: SPARK_W, height: SPARK_H, viewBox: `0 0 ${SPARK_W} ${SPARK_H}` });
  if (!points || points.length === 0) return s;
  const rtts = points.map(p => p.rtt_ms).filter(x => x !== null && x !== undefined);
  const max = Math.max(...rtts, 0.001);
  const step = SPARK_W / Math.max(points.length, 1);
  const line = [];
  points.forEach((p, i) => {
    const x = i * step + step / 2;
    if (p.rtt_ms !== null && p.rtt_ms !== undefined) {
      line.push(`${x.toFixed(1)},${(SPARK_H - 2 - (p.rtt_ms / max) * (SPARK_H - 6)).toFixed(1)}`);
    }
    if (p.loss) {
      const h = Math.max(2, p.loss * (SPARK_H - 2));
      s.append(svg("rect", { x: (x - step / 2).toFixed(1), y: (SPARK_H - h).toFixed(1), width: Math.max(1, step - 1).toFixed(1), height: h.toFixed(1) }));
    }
  });
  if (line.length > 0) s.append(svg("polyline", { points: line.join(" ") }));
  const t = svg("title", {});
  t.textContent = `last ${points.length} results; rtt max ${fmtMs(max)}`;
  s.append(t);
  return s;
}

function render(st) {
  const agents = [...st.agents].sort((a, b) =>
    provider(a).localeCompare(provider(b)) || a.name.localeCompare(b.name));
  const alive = agents.filter(a => a.alive).length;
  const up = st.brokers.filter(b => b.connected).length;
  document.getElementById("summary").textContent =
    `${alive}/${agents.length} agents alive · ${st.targets.length} targets · brokers ${up}/${st.brokers.length} · ` +
    `elasticsearch ${st.indexer.elasticsearch} · updated ${new Date(st.now * 1000).toLocaleTimeString()}`;

  // Brokers are numbered in the configured order: #1, #2... The matrix
  // shows each agent's broker by number, so a failover is one digit changing.
  const brokerNo = new Map(st.brokers.map((b, i) => [b.broker, "#" + (i + 1)]));
  const brokers = document.getElementById("brokers");
  brokers.replaceChildren(...st.brokers.map(b => {
    const on = agents.filter(a => a.alive && a.broker === b.broker).length;
    return el("span", { class: "broker " + (b.connected ? "up" : "down"), "data-broker": b.broker },
      `${brokerNo.get(b.broker)} ${b.broker}: ${b.connected ? "connected" : "down"}, ${on} agent${on === 1 ? "" : "s"}`);
  }));

  const cells = new Map(st.cells.map(c => [c.target + "\u0000" + c.agent, c]));
  // The indexers' verdicts (retained on verdict/...): whose fault a bad view is.
  const verdicts = st.verdicts || { targets: [], agents: [] };
  const targetVerdict = new Map(verdicts.targets.map(v => [v.target, v]));
  const agentVerdict = new Map(verdicts.agents.map(v => [v.agent, v]));
  const table = document.getElementById("matrix");
  const groups = [];
  for (const a of agents) {
    const p = provider(a);
    if (groups.length && groups[groups.length - 1].name === p) groups[groups.length - 1].n++;
    else groups.push({ name: p, n: 1 });
  }
  const head1 = el("tr", {}, el("th", {}));
  for (const g of groups) head1.append(el("th", { class: "provider", colspan: g.n, title: g.name }, g.name));
  head1.append(el("th", {}));
  const head2 = el("tr", {}, el("th", {}, "target \\ agent"));
  const head3 = el("tr", {}, el("th", { class: "target" }, "broker"));
  for (const a of agents) {
    const v = agentVerdict.get(a.name);
    const title = `${a.name}\nbroker ${a.broker || "–"}\n` +
      (a.alive ? "alive" : "not alive" + (a.notice ? " (" + a.notice + ")" : "")) +
      (a.list_version ? `\nlist ${a.list_version}` : "") +
      (v ? `\nverdict: ${v.state} since ${v.since} (${v.reason})` : "");
    const trouble = v && v.state === "trouble" ? " trouble" : "";
    head2.append(el("th", { class: "agent" + (a.alive ? "" : " dead") + trouble, "data-agent": a.name,
      "data-verdict": v ? v.state : "", title: title }, a.name));
    head3.append(el("th", { class: "broker-of", "data-agent": a.name, "data-broker": a.broker || "", title: title },
      a.broker ? (brokerNo.get(a.broker) || a.broker) : "–"));
  }
  head2.append(el("th", {}, "history"));
  head2.append(el("th", {}, "verdict"));
  head3.append(el("th", {}));
  head3.append(el("th", {}));
  const rows = [head1, head2, head3];
  for (const t of st.targets) {
    const tr = el("tr", { "data-target": t }, el("th", { class: "target" }, t));
    for (const a of agents) {
      const c = cells.get(t + "\u0000" + a.name);
      const state = c ? c.state : "none";
      const title = c
        ? `${a.name} → ${t}\n${state}\nrtt ${fmtMs(c.rtt_ms)}\nloss ${fmtLoss(c.loss)} (${c.received}/${c.sent})\n` +
          `round ${c.round}, ${fmtAge(c.age_s)} ago` + (c.error ? `\n${c.error}` : "")
        : `${a.name} → ${t}\nno result`;
      tr.append(el("td", { class: "cell state-" + state, "data-agent": a.name, "data-target": t,
        "data-state": state, title: title }, c && c.loss ? Math.round(c.loss * 100) : ""));
    }
    tr.append(el("td", { class: "history" }, sparkline(st.history[t])));
    const v = targetVerdict.get(t);
    const cause = !v || v.cause === "none" ? "" :
      v.cause === "provider" ? ` (provider ${v.provider})` : ` (${v.cause})`;
    tr.append(el("td", { class: "verdict verdict-" + (v ? v.state : "none"), "data-verdict": v ? v.state : "",
      "data-cause": v ? v.cause : "", title: v ? `${v.agents_bad} of ${v.agents_total} agents see it bad, since ${v.since}` : "no verdict yet" },
      v ? v.state + cause : "–"));
    rows.push(tr);
  }
  table.replaceChildren(...rows);
}

async function refresh() {
  const err = document.getElementById("error");
  try {
    const r = await fetch("/api/state", { cache: "no-store" });
    if (!r.ok) throw new Error(`/api/state answered ${r.status}`);
    render(await r.json());
    err.hidden = true;
  } catch (e) {
    err.textContent = `cannot reach the indexer (${e.message}); retrying`;
    err.hidden = false;
  } finally {
    setTimeout(refresh, PERIOD_MS);
  }
}

refresh();
