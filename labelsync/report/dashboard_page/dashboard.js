// labelsync's dashboard: polls /api/status (the JSON of `labelsync status --json`) every
// second and redraws when it changed (ETag). Every value goes into the DOM as text.
"use strict";

const POLL_MS = 1000;
const MAX_POOLS = 300; // cards drawn at once; the filter narrows the rest
const MAX_CONTAINERS = 300;
const SPARK = { width: 180, height: 34 };

let etag = null;
let report = null;
let lastOk = null;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function badge(text) {
  return el("span", { class: "badge " + String(text).replace(/\s+/g, "-"), text });
}

function pill(label, ok, title) {
  const cls = ok === null ? "pill plain" : ok ? "pill ok" : "pill bad";
  return el("span", { class: cls, title: title || null, text: label });
}

function count(value) {
  return value === null || value === undefined ? "–" : String(value);
}

// SVG elements in the namespace of the page's own (empty) <svg id="svg-namespace">.
function svg(tag, attrs, ...children) {
  const namespace = document.getElementById("svg-namespace").namespaceURI;
  const node = document.createElementNS(namespace, tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
  node.append(...children);
  return node;
}

function rate(value) {
  return value >= 10 ? value.toFixed(0) : value >= 1 ? value.toFixed(1) : value.toFixed(2);
}

function millis(ms) {
  if (ms === null || ms === undefined) return "–";
  return ms >= 1000 ? `${(ms / 1000).toPrecision(3)} s` : `${ms.toPrecision(3)} ms`;
}

function filterTerm() {
  return document.getElementById("filter").value.trim().toLowerCase();
}

function matches(term, ...texts) {
  if (!term) return true;
  return texts.some((t) => t && String(t).toLowerCase().includes(term));
}

function poolTarget(pool) {
  return (pool.hosts || []).join(", ") || "(no host)";
}

function channel(pool) {
  if (pool.upstreams === "dynamic") return "dynamic · labelsync's resolver";
  if (pool.upstreams === "static") return "static · members in Caddy's JSON";
  return "membership unknown";
}

// -- drawing -------------------------------------------------------------------------------

function drawReach(data) {
  const reach = document.getElementById("reach");
  const d = data.daemon;
  const items = [];
  if (!d) {
    items.push(pill("labelsync not running", false));
  } else {
    items.push(pill(d.docker_up ? "Docker up" : "Docker unreachable", !!d.docker_up));
    items.push(pill(d.caddy_up ? "Caddy up" : "Caddy unreachable", !!d.caddy_up, data.caddy.admin));
    items.push(
      pill(d.last_apply_ok ? "last apply ok" : "last apply failed", !!d.last_apply_ok,
        d.last_error || null));
    items.push(pill(`${d.upstreams} mode`, null));
  }
  // Several Docker engines: each one up or out (an engine that is out keeps its last listing).
  const engines = data.engines || [];
  for (const engine of engines) items.push(enginePill(engine));
  // A config source the daemon cannot use: it still serves the last good version. The
  // warnings end with one per engine that is out, shown by its own pill above.
  const out = engines.filter((e) => !e.up).length;
  const stale = (data.warnings || []).slice(0, Math.max(0, (data.warnings || []).length - out));
  if (stale.length) items.push(pill(`${stale.length} stale config file(s)`, false, stale.join("\n")));
  reach.replaceChildren(...items);
}

function enginePill(engine) {
  const counts = `${engine.containers} container(s), ${engine.members} member(s)`;
  const title = engine.up
    ? `${engine.endpoint}: up, ${counts}`
    : `${engine.endpoint}: out${engine.since ? " since " + engine.since : ""}: ` +
      `${engine.reason || "it does not answer"}; ${counts}, as last listed`;
  const node = pill(engine.up ? `engine ${engine.name}` : `engine ${engine.name} out`, !!engine.up,
    title);
  node.dataset.engine = engine.name;
  node.dataset.up = String(!!engine.up);
  return node;
}

function drawNotes(data) {
  const notes = document.getElementById("notes");
  const items = [];
  const d = data.daemon;
  if (d && d.last_error) items.push(el("div", { class: "note bad", text: "Last error: " + d.last_error }));
  // The warnings: stale config files, then one per Docker engine that is out.
  const warnings = data.warnings || [];
  const firstEngine = warnings.length - (data.engines || []).filter((e) => !e.up).length;
  warnings.forEach((warning, i) => {
    const kind = i >= firstEngine ? "data-engine-out" : "data-stale";
    items.push(el("div", { class: "note bad", [kind]: "true", text: warning }));
  });
  for (const note of data.notes || []) items.push(el("div", { class: "note", text: note }));
  for (const note of (data.traffic && data.traffic.notes) || []) {
    items.push(el("div", { class: "note", "data-traffic-note": "true", text: note }));
  }
  notes.replaceChildren(...items);
}

function tile(n, label, bad) {
  return el("div", { class: bad ? "tile bad" : "tile" }, el("div", { class: "n", text: n }),
    el("div", { class: "label", text: label }));
}

function drawSummary(data, unrouted, problems) {
  const members = data.pools.flatMap((p) => p.members);
  const by = (h) => members.filter((m) => m.health === h).length;
  const errors = problems.filter((p) => p.severity === "error").length;
  document.getElementById("summary").replaceChildren(
    tile(data.pools.length, "pools"),
    tile(`${by("healthy")} / ${members.length}`, "members healthy"),
    tile(by("unhealthy"), "members unhealthy", by("unhealthy") > 0),
    tile(unrouted.length, "containers not routed", unrouted.length > 0),
    tile(problems.length, `label problems (${errors} error${errors === 1 ? "" : "s"})`, errors > 0),
  );
}

function memberRow(member, showTotal, showEngine) {
  const name = member.container || (member.origin === "static" ? "(static)" : "–");
  return el("tr", { "data-container": member.container, "data-health": member.health,
    "data-address": member.address, "data-engine": member.engine },
  el("td", { class: "name", text: name }),
  showEngine ? el("td", { class: "engine", text: member.engine || "–" }) : null,
  el("td", { class: "mono", text: member.address }),
  el("td", {}, badge(member.health)),
  el("td", { class: "num", text: count(member.active_requests) }),
  el("td", { class: "num", text: count(member.failures) }),
  showTotal ? el("td", { class: "num", text: count(member.total_requests) }) : null,
  el("td", { class: "why", text: member.reason || "" }));
}

// Requests/s (and failed/s below them, on the same scale) per interval: inline SVG.
function sparkline(series) {
  const { width, height } = SPARK;
  const requests = series ? series.requests : [];
  const failed = series ? series.failed : [];
  const interval = series ? series.interval_seconds : 5;
  const top = Math.max(1, ...requests);
  const step = requests.length > 1 ? width / (requests.length - 1) : width;
  const points = (counts) => counts.map((n, i) =>
    `${(i * step).toFixed(1)},${(height - 1 - (n / top) * (height - 2)).toFixed(1)}`).join(" ");
  const minutes = Math.round((requests.length * interval) / 60);
  const title = series
    ? `requests/s (blue) and failed/s (red) over the last ${minutes || "<1"} min, ` +
      `every ${interval} s; peak ${rate(top / interval)}/s`
    : "no requests in the last 10 minutes";
  const lines = [svg("line", { class: "spark-base", x1: 0, y1: height - 1, x2: width, y2: height - 1 })];
  if (requests.length > 1) {
    lines.push(svg("polyline", { class: "spark-requests", points: points(requests) }));
    lines.push(svg("polyline", { class: "spark-failed", points: points(failed) }));
  }
  return svg("svg", { class: "spark", width, height, viewBox: `0 0 ${width} ${height}`,
    role: "img", "aria-label": title }, svg("title", {}, title), ...lines);
}

function trafficLine(traffic) {
  const minute = traffic.last_minute;
  const totals = `${traffic.requests} requests · ${traffic.failed} failed (5xx)` +
    (traffic.proxy_errors ? ` · ${traffic.proxy_errors} proxy errors` : "");
  const recent = minute
    ? `last ${Math.round(minute.seconds)} s: ${rate(minute.requests_per_second)} req/s · ` +
      `${rate(minute.failed_per_second)} failed/s · p50 ${millis(minute.p50_ms)} · ` +
      `p95 ${millis(minute.p95_ms)}`
    : "rates after the first interval";
  const node = el("div", { class: "traffic", "data-requests": traffic.requests,
    "data-failed": traffic.failed, "data-proxy-errors": traffic.proxy_errors },
  sparkline(traffic.series),
  el("div", { class: "figures" },
    el("span", { class: "totals", text: totals }),
    el("span", { class: "recent", title: "latency: bucket estimates from Caddy's histogram",
      text: recent })));
  if (traffic.note) node.append(el("div", { class: "traffic-note", text: traffic.note }));
  return node;
}

function drawPool(pool, members, showTotal, showEngine) {
  const healthy = pool.members.filter((m) => m.health === "healthy").length;
  const unhealthy = pool.members.some((m) => m.health === "unhealthy");
  const head = el("div", { class: "card-head" },
    el("span", { class: "title", text: poolTarget(pool) }),
    pool.path ? el("span", { class: "path", text: pool.path }) : null,
    el("span", { class: "tag", text: `policy ${pool.policy || "–"}` }),
    el("span", { class: "tag", text: channel(pool) }),
    el("span", { class: "tag", text: `${healthy}/${pool.members.length} healthy` }),
    el("span", { class: "id", text: pool.id }));
  const card = el("article", { class: unhealthy ? "card pool warn" : "card pool",
    "data-pool-id": pool.id, "data-hosts": (pool.hosts || []).join(",") }, head);
  if (pool.traffic) card.append(trafficLine(pool.traffic));
  if (pool.note) card.append(el("div", { class: "empty", text: pool.note }));
  if (!members.length) {
    if (!pool.note) card.append(el("div", { class: "empty", text: "no members" }));
    return card;
  }
  const header = el("tr", {}, el("th", { text: "Member" }),
    showEngine ? el("th", { title: "the Docker engine of the member's container", text: "Engine" })
      : null,
    el("th", { text: "Address" }),
    el("th", { text: "Health" }),
    el("th", { class: "num", title: "requests in flight (Caddy)", text: "In flight" }),
    el("th", { class: "num", title: "failures in the passive window (Caddy)", text: "Fails" }),
    showTotal ? el("th", { class: "num", text: "Total" }) : null,
    el("th", { text: "Why" }));
  card.append(el("table", { class: "members" }, el("thead", {}, header),
    el("tbody", {}, ...members.map((m) => memberRow(m, showTotal, showEngine)))));
  return card;
}

function drawPools(data, term) {
  const showTotal = data.pools.some((p) => p.members.some((m) => m.total_requests !== null));
  const showEngine = (data.engines || []).length > 0;
  const cards = [];
  let shown = 0;
  let matching = 0;
  for (const pool of data.pools) {
    const poolMatch = matches(term, poolTarget(pool), pool.path, pool.id);
    const members = poolMatch ? pool.members
      : pool.members.filter((m) => matches(term, m.container, m.address, m.engine));
    if (!poolMatch && !members.length) continue;
    matching += 1;
    if (shown >= MAX_POOLS) continue;
    shown += 1;
    cards.push(drawPool(pool, members, showTotal, showEngine));
  }
  if (matching > shown) {
    cards.push(el("div", { class: "more",
      text: `${matching - shown} more pool(s) match: narrow the filter to see them` }));
  }
  if (!cards.length) {
    cards.push(el("div", { class: "card empty", text: term ? "no pool matches the filter" : "no pools" }));
  }
  document.getElementById("pools").replaceChildren(...cards);
  document.getElementById("pool-count").textContent =
    term ? `${matching} of ${data.pools.length}` : String(data.pools.length);
  document.getElementById("counts-note").textContent = countsNote(data, showTotal);
}

function countsNote(data, showTotal) {
  const members = showTotal
    ? "In flight, Fails and Total are Caddy's counts per upstream address."
    : "In flight and Fails are Caddy's own counts per upstream address: requests in flight, " +
      "and failures inside the passive health check's fail_duration window (– when Caddy " +
      "has not dialled the member yet).";
  const traffic = data.traffic;
  if (traffic && traffic.caddy_metrics === "on") {
    return "Requests, failures and latency per pool are Caddy's per-host counters, added up " +
      `by labelsync since ${traffic.since || "it started"} and read every ` +
      `${traffic.interval_seconds} s; the sparkline shows requests/s and failed/s over the ` +
      "last 10 minutes, p50/p95 are estimates at the resolution of Caddy's buckets. Caddy " +
      "counts per host, not per member. " + members;
  }
  const why = traffic && traffic.fixes && traffic.fixes.length ? traffic.fixes[0]
    : "labelsync has not read Caddy's counters yet";
  return `${members} Total requests are not shown: ${why}.`;
}

function reasonNodes(reasons) {
  return reasons.map((r) => el("div", { class: "reason" }, el("span", { text: r.why }),
    r.fix ? el("div", { class: "fix", text: r.fix }) : null));
}

function routeName(route) {
  const target = (route.hosts || []).join(", ") + (route.path || "");
  const name = route.route ? `route ${route.route}` : "default route";
  return target ? `${name} (${target})` : name;
}

function drawContainer(c) {
  const body = el("div", { class: "body" });
  if (!c.routes.length) body.append(...reasonNodes(c.reasons));
  const several = c.routes.length > 1;
  for (const route of c.routes) {
    body.append(el("div", { class: "route-line" }, several ? badge(route.status) : null,
      several ? " " : null, el("span", { class: "route-name", text: routeName(route) })));
    body.append(...reasonNodes(route.reasons));
  }
  const state = c.docker_health ? `${c.state}, ${c.docker_health}` : c.state;
  return el("article", { class: c.status === "not routed" ? "card alert" : "card warn",
    "data-container": c.name, "data-status": c.status },
  el("div", { class: "card-head" }, el("span", { class: "title", text: c.name }),
    badge(c.status), el("span", { class: "tag", text: state }),
    c.engine ? el("span", { class: "tag", "data-engine": c.engine, text: `engine ${c.engine}` })
      : null,
    el("span", { class: "id", text: c.id.slice(0, 12) })),
  body);
}

function drawUnrouted(unrouted, term) {
  const shown = unrouted.filter((c) => matches(term, c.name, c.id, c.engine,
    ...c.routes.flatMap((r) => [...(r.hosts || []), r.path])));
  document.getElementById("unrouted-section").hidden = unrouted.length === 0;
  document.getElementById("unrouted-count").textContent =
    term ? `${shown.length} of ${unrouted.length}` : String(unrouted.length);
  const cards = shown.slice(0, MAX_CONTAINERS).map(drawContainer);
  if (shown.length > MAX_CONTAINERS) {
    cards.push(el("div", { class: "more", text: `${shown.length - MAX_CONTAINERS} more: narrow the filter` }));
  }
  if (!cards.length) cards.push(el("div", { class: "card empty", text: "no container matches the filter" }));
  document.getElementById("unrouted").replaceChildren(...cards);
}

function drawProblems(problems, term) {
  const groups = new Map();
  for (const p of problems) {
    if (!matches(term, p.container, p.key)) continue;
    if (!groups.has(p.container)) groups.set(p.container, []);
    groups.get(p.container).push(p);
  }
  document.getElementById("problems-section").hidden = problems.length === 0;
  document.getElementById("problem-count").textContent = String(problems.length);
  const cards = [];
  for (const [container, list] of [...groups.entries()].slice(0, MAX_CONTAINERS)) {
    const errors = list.some((p) => p.severity === "error");
    cards.push(el("article", { class: errors ? "card alert" : "card warn", "data-problems-of": container },
      el("div", { class: "card-head" }, el("span", { class: "title", text: container })),
      el("div", { class: "body" }, ...list.map((p) => el("div", { class: "problem" },
        badge(p.severity), el("span", { class: "text", text: p.text }))))));
  }
  if (!cards.length) cards.push(el("div", { class: "card empty", text: "no problem matches the filter" }));
  document.getElementById("problems").replaceChildren(...cards);
}

function draw() {
  if (!report) return;
  const term = filterTerm();
  const containers = report.containers || [];
  const unrouted = containers.filter((c) => c.status !== "routed");
  const problems = [...containers.flatMap((c) => c.problems), ...(report.other_problems || [])];
  drawReach(report);
  drawNotes(report);
  drawSummary(report, unrouted, problems);
  drawUnrouted(unrouted, term);
  drawPools(report, term);
  drawProblems(problems, term);
  const d = report.daemon;
  document.getElementById("footer").textContent =
    `Caddy ${report.caddy.admin}, server '${report.caddy.server}'` +
    (d ? ` · labelsync pid ${d.pid} · state of ${d.updated}` : "") +
    " · the same data as `labelsync status --json`, at /api/status";
}

// -- polling -------------------------------------------------------------------------------

function setLive(ok) {
  const live = document.getElementById("live");
  if (ok) lastOk = new Date();
  live.className = ok ? "live" : "live bad";
  live.textContent = ok
    ? `live · ${lastOk.toLocaleTimeString()}`
    : "daemon not answering" + (lastOk ? ` since ${lastOk.toLocaleTimeString()}` : "");
}

async function poll() {
  try {
    const headers = etag ? { "If-None-Match": etag } : {};
    const response = await fetch("/api/status", { headers, cache: "no-store" });
    if (response.status === 200) {
      report = await response.json();
      etag = response.headers.get("ETag");
      draw();
      document.body.dataset.loaded = "true";
    } else if (response.status !== 304) {
      throw new Error(`HTTP ${response.status}`);
    }
    setLive(true);
  } catch (error) {
    setLive(false);
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

function start() {
  const filter = document.getElementById("filter");
  const fromHash = new URLSearchParams(location.hash.slice(1)).get("q");
  if (fromHash) filter.value = fromHash;
  filter.addEventListener("input", () => {
    const term = filter.value.trim();
    history.replaceState(null, "", term ? `#q=${encodeURIComponent(term)}` : location.pathname);
    draw();
  });
  poll();
}

document.addEventListener("DOMContentLoaded", start);
