"""The dashboard page: rendered on the server with the data of the moment, then kept
live by a small inline script that polls ``/dashboard/data`` every 2 s and fetches
``/api/jobs/{id}`` for a job's steps. Inline CSS and JS only (the page sends a CSP
that allows nothing else); every value from the database is escaped (``html.escape``
here, ``textContent`` in the script): job inputs and errors are client-controlled.
"""

from __future__ import annotations

import html
from datetime import datetime
from typing import Any

from app.formatting import duration

REFRESH_MS = 2000


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def clock(iso: str | None) -> str:
    if not iso:
        return ""
    return datetime.fromisoformat(iso).strftime("%H:%M:%S")


def seconds(value: float | None) -> str:
    return duration(value, missing="–")


def _until(iso: str | None, now: str) -> float | None:
    """Seconds from ``now`` to ``iso`` (0 once passed; None without a time)."""
    if not iso:
        return None
    return max(0.0, (datetime.fromisoformat(iso) - datetime.fromisoformat(now)).total_seconds())


def _badge(status: str) -> str:
    return f'<span class="badge {_e(status)}">{_e(status)}</span>'


def _cards(data: dict[str, Any]) -> str:
    queue = data["queue"]
    last = data["throughput"][-1] if data["throughput"] else {"success": 0, "failed": 0}
    cards = [
        ("pending", queue["pending"], "queue depth"),
        ("running", queue["running"], "jobs running"),
        ("oldest", seconds(queue["oldest_pending_seconds"]) if queue["pending"] else "–", "oldest pending"),
        ("minute", last["success"] + last["failed"], "finished this minute"),
        ("subscriptions", data["subscriptions"]["active"], "active subscriptions"),
        ("next-due", seconds(_until(data["subscriptions"]["next_due"], data["now"])), "next subscription due in"),
        ("missed", data["subscriptions"]["missed"], "intervals missed (this node)"),
    ]
    return "".join(
        f'<div class="card"><div class="num" id="card-{key}">{_e(value)}</div><div class="lbl">{_e(label)}</div></div>'
        for key, value, label in cards
    )


def _containers(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return '<tr><td colspan="9" class="muted">no containers configured</td></tr>'
    return "".join(
        "<tr>"
        f"<td>{_e(c['id'])}</td><td>{_badge(c['state'])}</td>"
        f'<td class="r">{_e(c["in_flight"])}/{_e(c["concurrency"])}</td>'
        f'<td class="r">{_e(c["done"])}</td><td class="r">{_e(c["failed"])}</td>'
        f'<td class="r">{_e(c["restarts"])}</td>'
        f'<td class="r">{_e(seconds(c["mean_seconds"]))}</td><td class="r">{_e(seconds(c["p95_seconds"]))}</td>'
        f'<td class="err">{_e(c["last_error"])}</td>'
        "</tr>"
        for c in rows
    )


def _jobs(rows: list[dict[str, Any]], failed: bool) -> str:
    if not rows:
        return f'<tr><td colspan="5" class="muted">{"no failed jobs" if failed else "no jobs yet"}</td></tr>'
    out = []
    for job in rows:
        last = f'<td class="err">{_e(job["error"])}</td>' if failed else f"<td>{_badge(job['status'])}</td>"
        when = clock(job["finished_at"] if failed else job["created_at"])
        out.append(
            f'<tr class="job" data-id="{_e(job["id"])}">'
            f'<td class="mono">{_e(job["id"][:8])}</td><td>{_e(" → ".join(job["containers"]))}</td>'
            f'<td class="r">{_e(job["attempts"])}</td><td>{_e(when)}</td>{last}</tr>'
        )
    return "".join(out)


def _webhooks(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return '<tr><td colspan="5" class="muted">no failing webhook endpoints</td></tr>'
    return "".join(
        f'<tr><td class="mono">{_e(w["url"])}</td><td>{_badge(w["state"])}</td>'
        f'<td class="r">{_e(w["deliveries"])}</td><td>{_e(clock(w["since"]))}</td>'
        f'<td class="err">{_e(w["error"])}</td></tr>'
        for w in rows
    )


def render(data: dict[str, Any], nonce: str) -> str:
    page = PAGE
    for marker, value in (
        ("@NONCE@", _e(nonce)),
        ("@NODE@", _e(data["node"])),
        ("@VERSION@", _e(data["version"])),
        ("@UPDATED@", _e(clock(data["now"]))),
        ("@REFRESH@", str(REFRESH_MS)),
        ("@CARDS@", _cards(data)),
        ("@CONTAINERS@", _containers(data["containers"])),
        ("@RECENT@", _jobs(data["recent"], failed=False)),
        ("@FAILED@", _jobs(data["failed"], failed=True)),
        ("@WEBHOOKS@", _webhooks(data["webhooks"])),
    ):
        page = page.replace(marker, value)
    return page


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>jobnode dashboard</title>
<link rel="icon" href="data:,">
<style nonce="@NONCE@">
:root { --bg:#f5f6f8; --card:#fff; --ink:#1d2330; --muted:#6b7385; --line:#e2e5eb; --ok:#1f9d55; --bad:#d64545;
        --run:#2f6fdb; --wait:#c98a00; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif; background:var(--bg); color:var(--ink); }
header { display:flex; align-items:baseline; gap:16px; padding:14px 24px; background:#1d2330; color:#fff; }
header h1 { font-size:18px; margin:0; }
header .meta { color:#aab2c5; font-size:12px; }
header .live { margin-left:auto; font-size:12px; color:#aab2c5; }
header .live.stale { color:#ffb4b4; }
main { padding:18px 24px; display:grid; gap:18px; grid-template-columns: 1fr 1fr; max-width:1400px; }
section { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:14px 16px; min-width:0; }
section.wide { grid-column: 1 / -1; }
h2 { font-size:13px; text-transform:uppercase; letter-spacing:.06em; color:var(--muted); margin:0 0 10px; }
.cards { display:grid; grid-template-columns:repeat(4,1fr); gap:12px; }
.card { border:1px solid var(--line); border-radius:8px; padding:10px 14px; }
.card .num { font-size:26px; font-weight:600; }
.card .lbl { color:var(--muted); font-size:12px; }
table { width:100%; border-collapse:collapse; }
th, td { text-align:left; padding:5px 8px; border-bottom:1px solid var(--line); vertical-align:top; }
th { color:var(--muted); font-weight:500; font-size:12px; }
td.r, th.r { text-align:right; }
td.err { color:var(--bad); max-width:420px; overflow-wrap:anywhere; }
td.muted, .muted { color:var(--muted); }
.mono, pre { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size:12px; }
tr.job { cursor:pointer; }
tr.job:hover { background:#eef3ff; }
tr.job.sel { background:#dfe8ff; }
.badge { display:inline-block; padding:1px 8px; border-radius:10px; font-size:12px; color:#fff; background:var(--muted); }
.badge.success, .badge.ready { background:var(--ok); }
.badge.failed, .badge.cancelled { background:var(--bad); }
.badge.running, .badge.starting { background:var(--run); }
.badge.pending, .badge.retrying { background:var(--wait); }
svg { width:100%; height:150px; display:block; }
.legend { font-size:12px; color:var(--muted); margin-top:4px; }
.legend b { display:inline-block; width:10px; height:10px; border-radius:2px; margin:0 4px 0 10px; vertical-align:-1px; }
.k-pending { background:var(--wait); } .k-running { background:var(--run); }
.k-success { background:var(--ok); } .k-failed { background:var(--bad); }
#detail pre { background:#f1f3f7; padding:6px 8px; border-radius:4px; margin:0; white-space:pre-wrap;
              overflow-wrap:anywhere; max-height:160px; overflow:auto; }
#detail pre.err { color:var(--bad); background:#fdf0f0; }
#detail dl { display:grid; grid-template-columns:max-content 1fr; gap:2px 14px; margin:0 0 12px; }
#detail dt { color:var(--muted); }
#detail dd { margin:0; }
@media (max-width: 1000px) { main { grid-template-columns: 1fr; } .cards { grid-template-columns:repeat(2,1fr); } }
</style>
</head>
<body>
<header><h1>jobnode</h1><span class="meta">node @NODE@ · v@VERSION@</span>
<span class="live" id="live">updated @UPDATED@ UTC</span></header>
<main>
<section class="wide"><div class="cards" id="cards">@CARDS@</div></section>
<section><h2>Queue depth (last minutes)</h2><svg id="depth" viewBox="0 0 600 150" preserveAspectRatio="none"></svg>
<div class="legend"><b class="k-pending"></b>pending<b class="k-running"></b>running</div></section>
<section><h2>Throughput (jobs finished per minute)</h2><svg id="throughput" viewBox="0 0 600 150" preserveAspectRatio="none"></svg>
<div class="legend"><b class="k-success"></b>success<b class="k-failed"></b>failed</div></section>
<section class="wide"><h2>Containers</h2><table><thead><tr><th>container</th><th>state</th><th class="r">in flight</th>
<th class="r">done</th><th class="r">failed</th><th class="r">restarts</th><th class="r">mean</th><th class="r">p95</th>
<th>last error</th></tr></thead><tbody id="containers">@CONTAINERS@</tbody></table></section>
<section><h2>Recent jobs</h2><table><thead><tr><th>id</th><th>containers</th><th class="r">attempts</th>
<th>created</th><th>status</th></tr></thead><tbody id="recent">@RECENT@</tbody></table></section>
<section><h2>Failed jobs</h2><table><thead><tr><th>id</th><th>containers</th><th class="r">attempts</th>
<th>finished</th><th>error</th></tr></thead><tbody id="failed">@FAILED@</tbody></table></section>
<section class="wide"><h2>Failing webhook endpoints</h2><table><thead><tr><th>url</th><th>state</th>
<th class="r">deliveries</th><th>since</th><th>error</th></tr></thead><tbody id="webhooks">@WEBHOOKS@</tbody></table>
</section>
<section class="wide" id="detail"><h2>Job</h2><p class="muted" id="detail-hint">Click a job to see its steps.</p>
<div id="detail-body"></div></section>
</main>
<script nonce="@NONCE@">
"use strict";
const REFRESH = @REFRESH@;
let selected = null;
const $ = (id) => document.getElementById(id);
function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}
function badge(status) { return el("span", status, "badge " + status); }
function clock(iso) { return iso ? new Date(iso).toISOString().slice(11, 19) : ""; }
function secs(v) {
  if (v === null || v === undefined) return "\\u2013";
  if (v < 1) return Math.round(v * 1000) + " ms";
  if (v < 120) return v.toFixed(1) + " s";
  if (v < 7200) return (v / 60).toFixed(1) + " min";
  return (v / 3600).toFixed(1) + " h";
}
function row(cells, cls) {
  const tr = document.createElement("tr");
  if (cls) tr.className = cls;
  for (const c of cells) {
    if (c.tagName === "TD" || c.tagName === "TH") tr.appendChild(c);
    else { const cell = document.createElement("td"); cell.appendChild(c); tr.appendChild(cell); }
  }
  return tr;
}
function td(text, cls) { return el("td", text, cls); }
function fill(body, rows, empty, span) {
  body.replaceChildren(...(rows.length ? rows : [row([td(empty, "muted")])]));
  if (!rows.length) body.firstChild.firstChild.colSpan = span;
}
function cards(d) {
  const last = d.throughput.length ? d.throughput[d.throughput.length - 1] : {success: 0, failed: 0};
  $("card-pending").textContent = d.queue.pending;
  $("card-running").textContent = d.queue.running;
  $("card-oldest").textContent = d.queue.pending ? secs(d.queue.oldest_pending_seconds) : "\\u2013";
  $("card-minute").textContent = last.success + last.failed;
  $("card-subscriptions").textContent = d.subscriptions.active;
  const due = d.subscriptions.next_due;
  $("card-next-due").textContent = secs(due ? Math.max(0, (new Date(due) - new Date(d.now)) / 1000) : null);
  $("card-missed").textContent = d.subscriptions.missed;
}
function containers(list) {
  fill($("containers"), list.map((c) => row([
    td(c.id), badge(c.state), td(c.in_flight + "/" + c.concurrency, "r"), td(c.done, "r"), td(c.failed, "r"),
    td(c.restarts, "r"), td(secs(c.mean_seconds), "r"), td(secs(c.p95_seconds), "r"), td(c.last_error, "err"),
  ])), "no containers configured", 9);
}
function jobs(body, list, failed) {
  fill(body, list.map((j) => {
    const tr = row([
      td(j.id.slice(0, 8), "mono"), td(j.containers.join(" \\u2192 ")), td(j.attempts, "r"),
      td(clock(failed ? j.finished_at : j.created_at)), failed ? td(j.error, "err") : badge(j.status),
    ], "job" + (j.id === selected ? " sel" : ""));
    tr.dataset.id = j.id;
    return tr;
  }), failed ? "no failed jobs" : "no jobs yet", 5);
}
const SVGNS = "http://www.w3.org/2000/svg";
function svgEl(tag, attrs) {
  const node = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}
function lines(svg, points, keys, colors) {
  const W = 600, H = 150, P = 14;
  svg.replaceChildren();
  if (points.length < 2) {
    const t = svgEl("text", {x: 8, y: 20, fill: "#6b7385", "font-size": 12});
    t.textContent = "collecting samples\\u2026";
    svg.appendChild(t);
    return;
  }
  const max = Math.max(1, ...points.flatMap((p) => keys.map((k) => p[k])));
  const x = (i) => (i / (points.length - 1)) * W;
  const y = (v) => H - P - (v / max) * (H - 2 * P);
  svg.appendChild(svgEl("line", {x1: 0, x2: W, y1: H - P, y2: H - P, stroke: "#e2e5eb"}));
  keys.forEach((k, n) => svg.appendChild(svgEl("polyline", {
    points: points.map((p, i) => x(i).toFixed(1) + "," + y(p[k]).toFixed(1)).join(" "),
    fill: "none", stroke: colors[n], "stroke-width": 2, "vector-effect": "non-scaling-stroke",
  })));
  const t = svgEl("text", {x: 4, y: 12, fill: "#6b7385", "font-size": 11});
  t.textContent = "max " + max;
  svg.appendChild(t);
}
function bars(svg, points) {
  const W = 600, H = 150, P = 14;
  svg.replaceChildren();
  const max = Math.max(1, ...points.map((p) => p.success + p.failed));
  const w = W / Math.max(1, points.length);
  points.forEach((p, i) => {
    const hs = (p.success / max) * (H - 2 * P), hf = (p.failed / max) * (H - 2 * P);
    svg.appendChild(svgEl("rect", {x: i * w + 3, width: w - 6, y: H - P - hs, height: hs, fill: "#1f9d55"}));
    svg.appendChild(svgEl("rect", {x: i * w + 3, width: w - 6, y: H - P - hs - hf, height: hf, fill: "#d64545"}));
    const label = svgEl("text", {x: i * w + w / 2, y: H - 2, fill: "#6b7385", "font-size": 10, "text-anchor": "middle"});
    label.textContent = clock(p.minute).slice(0, 5);
    svg.appendChild(label);
  });
  const t = svgEl("text", {x: 4, y: 12, fill: "#6b7385", "font-size": 11});
  t.textContent = "max " + max + "/min";
  svg.appendChild(t);
}
function render(d) {
  cards(d);
  containers(d.containers);
  jobs($("recent"), d.recent, false);
  jobs($("failed"), d.failed, true);
  fill($("webhooks"), d.webhooks.map((w) => row([
    td(w.url, "mono"), badge(w.state), td(w.deliveries, "r"), td(clock(w.since)), td(w.error, "err"),
  ])), "no failing webhook endpoints", 5);
  lines($("depth"), d.depth, ["pending", "running"], ["#c98a00", "#2f6fdb"]);
  bars($("throughput"), d.throughput);
  $("live").textContent = "updated " + clock(d.now) + " UTC";
  $("live").classList.remove("stale");
}
function detail(j) {
  const body = $("detail-body");
  $("detail-hint").textContent = "";
  const dl = el("dl");
  const add = (k, v) => { dl.appendChild(el("dt", k)); const dd = el("dd"); dd.append(v); dl.appendChild(dd); };
  add("id", el("span", j.id, "mono"));
  add("status", badge(j.status));
  add("containers", j.containers.join(" \\u2192 "));
  add("client", j.client);
  add("attempts", String(j.attempts));
  add("node", j.node || "\\u2013");
  add("created", j.created_at);
  add("started", j.started_at || "\\u2013");
  add("finished", j.finished_at || "\\u2013");
  add("input", el("pre", JSON.stringify(j.input, null, 2)));
  const table = el("table");
  const head = row(["#", "container", "result", "duration", "attempt", "node"].map(
    (h) => el("th", h, h === "duration" || h === "attempt" ? "r" : "")));
  table.appendChild(el("thead")).appendChild(head);
  const tbody = table.appendChild(el("tbody"));
  for (const s of j.steps) {
    const result = s.error !== null ? el("pre", s.error) : el("pre", JSON.stringify(s.output, null, 2));
    if (s.error !== null) result.className = "err";
    tbody.appendChild(row([td(s.position), td(s.container), result, td(secs(s.duration_seconds), "r"),
                           td(s.attempt, "r"), td(s.node || "")], s.error !== null ? "step failed" : "step"));
  }
  if (!j.steps.length) tbody.appendChild(row([td("no step finished yet", "muted")]));
  body.replaceChildren(dl, table);
}
async function getJson(url) {
  const r = await fetch(url, {credentials: "same-origin", headers: {"Accept": "application/json"}});
  if (!r.ok) throw new Error(url + ": HTTP " + r.status);
  return r.json();
}
async function refresh() {
  try {
    render(await getJson("/dashboard/data"));
    if (selected) detail(await getJson("/api/jobs/" + encodeURIComponent(selected)));
  } catch (e) {
    $("live").textContent = "not updated: " + e.message;
    $("live").classList.add("stale");
  }
}
document.addEventListener("click", async (ev) => {
  const tr = ev.target.closest("tr.job");
  if (!tr) return;
  selected = tr.dataset.id;
  document.querySelectorAll("tr.job").forEach((r) => r.classList.toggle("sel", r.dataset.id === selected));
  try { detail(await getJson("/api/jobs/" + encodeURIComponent(selected))); }
  catch (e) { $("detail-hint").textContent = e.message; }
});
refresh();
setInterval(refresh, REFRESH);
</script>
</body>
</html>
"""
