// The dashboard: plain JavaScript, no build step. Reads the HTTP API, follows the websockets.
"use strict";

const PAGE = 25;
// Metric columns of the sensor table: the metrics most sensors of the page report.
const METRIC_COLUMNS = 3;
const CHART_SPAN_MS = 15 * 60 * 1000;
// The API token, when the API wants one: typed into the page, kept for this tab only, sent as
// a header (never in a URL); websockets get a single-use ticket for it.
let token = sessionStorage.getItem("telemetry-token");
const state = { offset: 0, total: 0, query: "", sensor: null, metric: null, openBySensor: {},
  bands: [], live: [], socket: null, alertSocket: null, units: {}, labels: [], metrics: [] };
const $ = (id) => document.getElementById(id);

function authorised(headers = {}) {
  return token ? { ...headers, Authorization: `Bearer ${token}` } : headers;
}

class TokenNeeded extends Error {}

async function getJson(path) {
  const response = await fetch(path, { headers: authorised() });
  if (response.status === 401 || response.status === 403) {
    $("token-form").hidden = false;
    throw new TokenNeeded(`${path}: ${response.status}`);
  }
  if (!response.ok) throw new Error(`${path}: ${response.status}`);
  return [await response.json(), response];
}

// POST or DELETE; alert actions need the admin token, which the token form then asks for.
async function sendJson(method, path, body) {
  const response = await fetch(path, {
    method, body: body === undefined ? undefined : JSON.stringify(body),
    headers: authorised({ "Content-Type": "application/json" }),
  });
  if (response.status === 401 || response.status === 403) {
    $("token-input").placeholder = "admin API token";
    $("token-form").hidden = false;
    throw new TokenNeeded(`${path}: ${response.status}`);
  }
  if (!response.ok) throw new Error(`${path}: ${response.status}`);
  return response.status === 204 ? null : response.json();
}

// Runs a loader; one stopped by a missing token waits for the token form instead of failing.
function whenAllowed(load) {
  return () => load().catch((err) => { if (!(err instanceof TokenNeeded)) throw err; });
}

async function openSocket(path) {
  const url = new URL(path, location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  if (token) {
    const response = await fetch("/ws-ticket", {
      method: "POST", body: "{}", headers: authorised({ "Content-Type": "application/json" }),
    });
    if (response.ok) url.searchParams.set("ticket", (await response.json()).ticket);
  }
  return new WebSocket(url);
}

function ago(ms) {
  const s = Math.max(0, (Date.now() - ms) / 1000);
  if (s < 60) return `${s.toFixed(0)} s ago`;
  if (s < 3600) return `${(s / 60).toFixed(0)} min ago`;
  return `${(s / 3600).toFixed(1)} h ago`;
}

function cell(text) {
  const td = document.createElement("td");
  td.textContent = text;
  return td;
}

function fmt(value, digits = 2) {
  return value === undefined || value === null ? "–"
    : String(Number(Number(value).toPrecision(digits + 2)));
}

function withUnit(metric) {
  const unit = state.units[metric];
  return unit ? `${metric} (${unit})` : metric;
}

function header(names) {
  return names.map((name) => {
    const th = document.createElement("th");
    th.textContent = name;
    return th;
  });
}

// The metrics and label names the fleet actually has, most common first, and their units.
function learn(sensors) {
  const metricCounts = {};
  const labelNames = new Set(state.labels);
  for (const s of sensors) {
    for (const m of s.metrics) metricCounts[m] = (metricCounts[m] || 0) + 1;
    for (const [m, unit] of Object.entries(s.units || {})) state.units[m] = unit;
    for (const name of Object.keys(s.labels || {})) labelNames.add(name);
  }
  const metrics = Object.keys(metricCounts).sort((a, b) => metricCounts[b] - metricCounts[a] || a.localeCompare(b));
  state.labels = [...labelNames].sort();
  return metrics;
}

// -- fleet ------------------------------------------------------------------------------

async function loadSensors() {
  const q = encodeURIComponent(state.query);
  const [sensors, response] = await getJson(`/sensors?q=${q}&offset=${state.offset}&limit=${PAGE}`);
  state.total = Number(response.headers.get("X-Total-Count") || sensors.length);
  $("sensor-count").textContent = `${state.total.toLocaleString()}`;
  $("page-info").textContent = state.total
    ? `${state.offset + 1}–${state.offset + sensors.length} of ${state.total.toLocaleString()}`
    : state.query ? `no sensor matches “${state.query}”` : "no sensors yet";
  $("prev").disabled = state.offset === 0;
  $("next").disabled = state.offset + PAGE >= state.total;
  const metrics = learn(sensors);
  const columns = metrics.slice(0, METRIC_COLUMNS);
  $("sensor-head").replaceChildren(...header(["sensor", "last seen", ...columns.map(withUnit), "alerts"]));
  if (metrics.length) state.metrics = [...new Set([...state.metrics, ...metrics])];
  fillGroupChoices();
  let latest = {};
  if (sensors.length) {
    const ids = sensors.map((s) => `sensor=${encodeURIComponent(s.sensor_id)}`).join("&");
    [latest] = await getJson(`/fleet/latest?${ids}`);
  }
  const rows = sensors.map((s) => {
    const tr = document.createElement("tr");
    tr.dataset.sensor = s.sensor_id;
    if (s.sensor_id === state.sensor) tr.classList.add("selected");
    const values = latest[s.sensor_id] || {};
    tr.append(cell(s.sensor_id), cell(ago(s.last_seen_ms)),
      ...columns.map((m) => cell(fmt(values[m]?.value, 3))));
    const open = state.openBySensor[s.sensor_id] || 0;
    const td = document.createElement("td");
    if (open) {
      const badge = document.createElement("span");
      badge.className = "badge";
      badge.textContent = open;
      td.append(badge);
    }
    tr.append(td);
    tr.addEventListener("click", () => selectSensor(s.sensor_id, s.metrics));
    return tr;
  });
  $("sensor-rows").replaceChildren(...rows);
  if (!state.sensor && sensors.length) selectSensor(sensors[0].sensor_id, sensors[0].metrics);
}

// -- the fleet by label -----------------------------------------------------------------------

function options(select, names, empty) {
  const chosen = select.value;
  const items = names.length ? names : [empty];
  select.replaceChildren(...items.map((name) => {
    const option = document.createElement("option");
    option.value = names.length ? name : "";
    option.textContent = name;
    return option;
  }));
  if (names.includes(chosen)) select.value = chosen;
}

function fillGroupChoices() {
  const before = `${$("group-label").value}|${$("group-metric").value}`;
  options($("group-label"), state.labels, "no labels yet");
  options($("group-metric"), state.metrics, "no metrics yet");
  if (`${$("group-label").value}|${$("group-metric").value}` !== before) loadGroups();
}

async function loadGroups() {
  const label = $("group-label").value;
  const metric = $("group-metric").value;
  $("group-head").textContent = label || "value";
  if (!label || !metric) {
    $("group-rows").replaceChildren();
    return;
  }
  const [groups] = await getJson(`/fleet/groups?metric=${encodeURIComponent(metric)}` +
    `&group_by=${encodeURIComponent(label)}&last=1h`);
  const rows = groups.filter((g) => g.stats).map((g) => {
    const tr = document.createElement("tr");
    tr.append(cell(g.value ?? "(none)"), cell(String(g.sensors)), cell(String(g.stats.count)),
      ...["mean", "min", "max", "p95"].map((k) => cell(fmt(g.stats[k], 3))));
    return tr;
  });
  $("group-rows").replaceChildren(...rows);
}

// -- one sensor ---------------------------------------------------------------------------

function selectSensor(sensorId, metrics) {
  state.sensor = sensorId;
  state.metric = metrics.includes(state.metric) ? state.metric : (metrics.includes("temp") ? "temp" : metrics[0]);
  $("detail-title").textContent = sensorId;
  for (const tr of $("sensor-rows").children) {
    tr.classList.toggle("selected", tr.dataset.sensor === sensorId);
  }
  const tabs = metrics.map((m) => {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = withUnit(m);
    b.classList.toggle("active", m === state.metric);
    b.addEventListener("click", () => { state.metric = m; selectSensor(sensorId, metrics); });
    return b;
  });
  $("metrics").replaceChildren(...tabs);
  state.live = [];
  loadBands();
  followSensor();
}

async function loadBands() {
  if (!state.sensor) return;
  const path = `/sensors/${encodeURIComponent(state.sensor)}/aggregates` +
    `?metric=${state.metric}&tier=10s&from=15m&to=now`;
  try {
    [state.bands] = await getJson(path);
  } catch (err) {
    state.bands = [];
  }
  drawChart();
}

async function followSensor() {
  if (state.socket) state.socket.close();
  const socket = await openSocket(`/ws/readings?sensor=${encodeURIComponent(state.sensor)}`);
  state.socket = socket;
  socket.onmessage = (event) => {
    const { id, fields } = JSON.parse(event.data);
    if (fields.sensor_id !== state.sensor || !(state.metric in fields)) return;
    const ts = fields.ts ? Number(fields.ts) : Number(id.split("-")[0]);
    state.live.push([ts, Number(fields[state.metric])]);
    const cutoff = Date.now() - CHART_SPAN_MS;
    while (state.live.length && state.live[0][0] < cutoff) state.live.shift();
    scheduleDraw();
  };
}

let drawPending = false;
function scheduleDraw() {
  if (drawPending) return;
  drawPending = true;
  requestAnimationFrame(() => { drawPending = false; drawChart(); });
}

function drawChart() {
  const svg = $("chart");
  const W = 640, H = 260, pad = 34;
  const now = Date.now();
  // Up to 15 minutes, but no wider than the data, so a fresh sensor's chart is not a sliver.
  const earliest = Math.min(...state.bands.map((b) => b.start_ms), ...state.live.map(([t]) => t));
  const from = Math.max(now - CHART_SPAN_MS, Math.min(earliest, now - 60_000));
  const span = now - from;
  const values = [];
  for (const b of state.bands) values.push(b.min, b.max);
  for (const [, v] of state.live) values.push(v);
  $("live-count").textContent = `· ${state.live.length} live points`;
  if (!values.length) {
    svg.innerHTML = `<text x="${W / 2 - 60}" y="${H / 2}">waiting for readings…</text>`;
    return;
  }
  let lo = Math.min(...values), hi = Math.max(...values);
  if (hi - lo < 1e-9) { lo -= 1; hi += 1; }
  const x = (t) => pad + ((t - from) / span) * (W - pad - 8);
  const y = (v) => H - 18 - ((v - lo) / (hi - lo)) * (H - 30);
  const parts = [];
  for (let i = 0; i <= 4; i++) {
    const v = lo + ((hi - lo) * i) / 4;
    parts.push(`<line class="grid" x1="${pad}" x2="${W - 8}" y1="${y(v)}" y2="${y(v)}"/>`,
      `<text x="2" y="${y(v) + 4}">${v.toFixed(2)}</text>`);
  }
  const bands = state.bands.filter((b) => b.end_ms > from);
  if (bands.length) {
    const top = bands.map((b) => `${x(Math.max(b.start_ms, from))},${y(b.max)} ${x(b.end_ms)},${y(b.max)}`);
    const bottom = bands.slice().reverse().map((b) => `${x(b.end_ms)},${y(b.min)} ${x(Math.max(b.start_ms, from))},${y(b.min)}`);
    parts.push(`<polygon class="band" points="${top.join(" ")} ${bottom.join(" ")}"/>`);
    const p95 = bands.filter((b) => b.p95 !== null).map((b) => `${x((b.start_ms + b.end_ms) / 2)},${y(b.p95)}`);
    if (p95.length) parts.push(`<polyline class="p95" points="${p95.join(" ")}"/>`);
  }
  if (state.live.length) {
    parts.push(`<polyline class="live" points="${state.live.map(([t, v]) => `${x(t)},${y(v)}`).join(" ")}"/>`);
    const [t, v] = state.live[state.live.length - 1];
    parts.push(`<circle class="dot" cx="${x(t)}" cy="${y(v)}" r="3.5"/>`);
  }
  const spanLabel = span >= 120_000 ? `${Math.round(span / 60_000)} min` : `${Math.round(span / 1000)} s`;
  parts.push(`<text x="${pad}" y="${H - 3}">−${spanLabel}</text>`, `<text x="${W - 36}" y="${H - 3}">now</text>`);
  svg.innerHTML = parts.join("");
}

// -- alerts -------------------------------------------------------------------------------

function alertItem(a) {
  const li = document.createElement("li");
  li.className = a.state;
  const when = document.createElement("span");
  when.className = "when";
  when.textContent = new Date(Number(a.ts)).toLocaleTimeString();
  const head = document.createElement("span");
  const sev = document.createElement("span");
  sev.className = `sev ${a.severity}`;
  sev.textContent = a.state === "raised" ? a.severity : a.state;
  head.append(sev, ` ${a.sensor_id} · ${a.rule}`);
  const what = document.createElement("span");
  what.className = "what";
  what.textContent = a.message;
  li.append(when, head, what);
  return li;
}

async function loadAlerts() {
  const [recent] = await getJson("/alerts?limit=50");
  const feed = recent.map((a) => alertItem({ ...a, ts: a.ts_ms }));
  $("alert-feed").replaceChildren(...feed);
  await loadOpenAlerts();
  // A new token starts the page again: the feed follows one socket, not one per start.
  if (state.alertSocket) {
    state.alertSocket.onclose = null;
    state.alertSocket.close();
  }
  const socket = await openSocket("/ws/alerts");
  state.alertSocket = socket;
  socket.onmessage = (event) => {
    const { fields } = JSON.parse(event.data);
    $("alert-feed").prepend(alertItem(fields));
    while ($("alert-feed").children.length > 200) $("alert-feed").lastChild.remove();
    loadOpenAlerts();
  };
  socket.onclose = () => setTimeout(whenAllowed(loadAlerts), 2000);
}

function actionButton(label, act) {
  const button = document.createElement("button");
  button.textContent = label;
  button.addEventListener("click", whenAllowed(async () => { await act(); await loadOpenAlerts(); }));
  return button;
}

function openAlertItem(a) {
  const li = document.createElement("li");
  const sev = document.createElement("span");
  sev.className = `sev ${a.severity}`;
  sev.textContent = a.severity;
  const what = document.createElement("span");
  what.className = "what";
  what.textContent = `${a.sensor_id} · ${a.rule} · ${a.message}`;
  const path = `/alerts/${encodeURIComponent(a.sensor_id)}/${encodeURIComponent(a.rule)}/ack`;
  const acked = document.createElement("span");
  acked.className = "acked muted";
  if (a.acknowledged_ms) acked.textContent = `acknowledged by ${a.by}`;
  const buttons = a.acknowledged_ms ? [] : [actionButton("ack", () => sendJson("POST", path, { by: "dashboard" }))];
  buttons.push(actionButton("silence 1 h", () => sendJson("POST", "/silences",
    { sensors: a.sensor_id, rules: a.rule, duration: "1h", by: "dashboard" })));
  li.append(sev, what, acked, ...buttons);
  return li;
}

function silenceItem(s) {
  const li = document.createElement("li");
  const what = document.createElement("span");
  what.className = "what";
  const labels = s.labels ? ` · ${s.labels}` : "";
  what.textContent = `silenced: ${s.sensors} · ${s.rules}${labels} until ${new Date(s.ends_ms).toLocaleTimeString()} by ${s.by}`;
  li.append(what, actionButton("end", () => sendJson("DELETE", `/silences/${s.id}?by=dashboard`)));
  return li;
}

async function loadOpenAlerts() {
  const [[open], [silences]] = await Promise.all([getJson("/alerts?open=true&limit=10000"), getJson("/silences")]);
  state.openBySensor = {};
  for (const a of open) state.openBySensor[a.sensor_id] = (state.openBySensor[a.sensor_id] || 0) + 1;
  $("open-count").textContent = `${open.length} open`;
  $("open-alerts").replaceChildren(...open.slice(0, 50).map(openAlertItem), ...silences.map(silenceItem));
}

// -- health -------------------------------------------------------------------------------

function chip(label, value, bad = false) {
  const span = document.createElement("span");
  span.className = bad ? "chip bad" : "chip";
  const b = document.createElement("b");
  b.textContent = value;
  span.append(`${label} `, b);
  return span;
}

async function loadHealth() {
  try {
    const [report] = await getJson("/groups");
    // One stream, or each shard's (the report then has `shards` and their `total`).
    const chips = [];
    for (const status of report.shards ?? [report]) {
      chips.push(
        chip(status.stream, `${status.length.toLocaleString()} / ${status.maxlen.toLocaleString()}`),
        chip("dead letters", status.dead_letters, status.dead_letters > 0),
      );
      for (const g of status.groups) {
        chips.push(chip(g.name, `lag ${g.lag ?? "?"} · pending ${g.pending}`, g.warnings.length > 0));
      }
    }
    $("health").replaceChildren(...chips);
  } catch (err) {
    $("health").replaceChildren(chip("API", "unreachable", true));
  }
}

// -- wiring -------------------------------------------------------------------------------

let searchTimer = null;
$("search").addEventListener("input", (event) => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(() => { state.query = event.target.value.trim(); state.offset = 0; loadSensors(); }, 200);
});
$("group-label").addEventListener("change", whenAllowed(loadGroups));
$("group-metric").addEventListener("change", whenAllowed(loadGroups));
$("prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - PAGE); loadSensors(); });
$("next").addEventListener("click", () => { state.offset += PAGE; loadSensors(); });
$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  token = $("token-input").value.trim() || null;
  if (token) sessionStorage.setItem("telemetry-token", token);
  $("token-form").hidden = true;
  loadHealth();
  start();
});

const start = whenAllowed(() => loadAlerts().then(loadSensors));
start();
loadHealth();
setInterval(loadHealth, 5000);
setInterval(whenAllowed(loadSensors), 10000);
setInterval(whenAllowed(loadBands), 10000);
setInterval(whenAllowed(loadGroups), 15000);
