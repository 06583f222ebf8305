// The dashboard page's script (dashboard.html): served as a file, so the page's
// Content-Security-Policy needs no inline script.
"use strict";
const params = new URLSearchParams(location.search);
let windowName = params.get("window") || "all";
let dim = "utm_medium";
let sortKey = "expected";
let sortAsc = false;
let latest = null;
let source = null;

const fmt = (x, d = 0) => x === null || x === undefined ? "–" :
  Number(x).toLocaleString("en-US", {minimumFractionDigits: d, maximumFractionDigits: d});
const pct = (x) => x === null || x === undefined ? "–" : (100 * x).toFixed(1) + "%";
const esc = (s) => String(s ?? "").replace(/[&<>"']/g,
  (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));

function sparkline(values) {
  if (!values.length) return "";
  const w = 90, h = 22, top = Math.max(...values, 0.0001);
  const pts = values.map((v, i) => {
    const x = values.length === 1 ? w : (i * w) / (values.length - 1);
    return x.toFixed(1) + "," + (h - 2 - (v / top) * (h - 4)).toFixed(1);
  }).join(" ");
  return `<svg width="${w}" height="${h}" class="spark"><polyline fill="none"
    stroke="#c2410c" stroke-width="1.5" points="${pts}"/></svg>`;
}

function renderNow(d) {
  const n = d.now;
  document.getElementById("active").textContent = fmt(n.active_sessions);
  const last = (xs) => xs.length > 1 ? xs[xs.length - 2] : (xs[0] || 0);
  document.getElementById("events").textContent = fmt(last(n.events_per_minute));
  document.getElementById("scores").textContent = fmt(last(n.scores_per_minute));
  document.getElementById("lag").textContent = n.consumer_lag === null ? "no worker" :
    fmt(n.consumer_lag);
  document.getElementById("model").textContent = n.model_versions.join(", ") || "–";
  const when = n.event_time_ms ? new Date(n.event_time_ms).toISOString()
    .replace("T", " ").slice(0, 16) + " UTC" : "no events yet";
  document.getElementById("now-hint").textContent =
    `stream time ${when} · ${n.workers.length} worker(s) · last full minute`;
}

// A reason as the page shows it: the feature's name (as docs/features.md names it), the
// visitor's value, and its signed share of the score's log-odds.
function reasonText(r) {
  let v = r.value;
  if (v === null || v === undefined) v = "unknown";
  else if (typeof v === "number") v = Number.isInteger(v) ? String(v) : v.toFixed(2);
  const up = r.contribution >= 0;
  return `<span class="reason"><span class="${up ? "up" : "down"}">${up ? "+" : "−"}` +
    `${Math.abs(r.contribution).toFixed(2)}</span> ${esc(r.feature)} = ${esc(v)}</span>`;
}

function renderHot(d) {
  const body = document.querySelector("#hot tbody");
  body.innerHTML = d.hot.map((s) => `<tr data-session="${esc(s.session_id)}"
    data-probability="${s.probability}" data-hits="${s.hits}" data-tier="${esc(s.tier)}"
    data-reasons="${(s.reasons || []).length}">
    <td class="text" title="${esc(s.session_id)}">${esc(s.session_id)}</td>
    <td class="p">${pct(s.probability)}</td>
    <td class="text"><span class="tier ${esc(s.tier)}">${esc(s.tier)}</span></td>
    <td class="text why">${(s.reasons || []).map(reasonText).join("")}</td>
    <td class="text">${sparkline(s.trajectory)}</td>
    <td>${fmt(s.hits)}</td>
    <td class="text" title="${esc(s.utm_campaign)}">${esc(s.utm_medium)} / ${esc(s.utm_source)}</td>
    <td class="text">${esc(s.device_category)}</td>
    <td class="text">${esc(s.geo_city)}</td></tr>`).join("");
  document.getElementById("hot-empty").style.display = d.hot.length ? "none" : "block";
}

// The features that most separate a channel value's converting sessions from its others
// (from the model's card: measured on its test weeks).
function drivers(d, value) {
  const by = d.drivers && d.drivers.by_dimension && d.drivers.by_dimension[dim];
  const found = by && by[value];
  if (!found) return "";
  return found.map((f) => `<span class="reason"><span class="up">+${f.gap.toFixed(2)}</span> ` +
    `${esc(f.feature)}</span>`).join("");
}

function renderChannels(d) {
  const rows = [...(d.channels[dim] || [])];
  rows.sort((a, b) => {
    const x = a[sortKey], y = b[sortKey];
    const c = (x === null) - (y === null) || (typeof x === "string" ? x.localeCompare(y) : x - y);
    return sortAsc ? c : -c;
  });
  document.querySelector("#channels tbody").innerHTML = rows.map((r) => `<tr
    data-value="${esc(r.value)}" data-sessions="${r.sessions}" data-observed="${r.observed}"
    data-expected="${r.expected}">
    <td class="text" title="${esc(r.value)}">${esc(r.value)}</td>
    <td>${fmt(r.sessions)}</td><td>${pct(r.mean_probability)}</td>
    <td>${fmt(r.expected, 1)}</td><td>${fmt(r.observed)}</td>
    <td>${fmt(r.observed_to_expected, 2)}</td>
    <td class="text why">${drivers(d, r.value)}</td></tr>`).join("");
  document.querySelectorAll("#channels th").forEach((th) => {
    th.classList.toggle("sorted", th.dataset.key === sortKey);
    th.classList.toggle("asc", th.dataset.key === sortKey && sortAsc);
  });
}

function renderChart(d) {
  const svg = document.getElementById("chart");
  const pts = d.chart, W = 600, H = 300, L = 40, B = 24, T = 10;
  const top = Math.max(1, ...pts.map((p) => Math.max(p.expected, p.observed)));
  const x = (i) => L + (pts.length < 2 ? 0 : (i * (W - L - 10)) / (pts.length - 1));
  const y = (v) => H - B - (v / top) * (H - B - T);
  const line = (k, color) => `<polyline fill="none" stroke="${color}" stroke-width="2"
    points="${pts.map((p, i) => x(i).toFixed(1) + "," + y(p[k]).toFixed(1)).join(" ")}"/>`;
  const step = d.chart_bucket_ms >= 86400000 ? "day" : d.chart_bucket_ms >= 3600000 ?
    "hour" : "5 minutes";
  const label = (ms) => new Date(ms).toISOString().slice(step === "day" ? 5 : 11,
    step === "day" ? 10 : 16);
  let grid = "";
  for (let k = 0; k <= 4; k++) {
    const v = (top * k) / 4;
    grid += `<line x1="${L}" x2="${W - 10}" y1="${y(v)}" y2="${y(v)}" stroke="#e3e6ec"/>
      <text x="${L - 4}" y="${y(v) + 3}" text-anchor="end">${v.toFixed(v < 10 ? 1 : 0)}</text>`;
  }
  const ticks = pts.map((p, i) => i % Math.ceil(pts.length / 6) ? "" :
    `<text x="${x(i)}" y="${H - 6}" text-anchor="middle">${label(p.start_ms)}</text>`).join("");
  svg.innerHTML = grid + ticks + line("expected", "#1f7a4d") + line("observed", "#c2410c");
  document.getElementById("chart-hint").textContent = `per ${step}, by session start`;
}

function render(d) {
  latest = d;
  renderNow(d); renderHot(d); renderChannels(d); renderChart(d);
  const st = document.getElementById("status");
  st.textContent = "live · updated " + new Date(d.generated_at_ms).toLocaleTimeString();
  st.classList.remove("down");
}

function query() {
  // No key here: the stream is opened with the login cookie, never a key in its URL.
  return new URLSearchParams({window: windowName}).toString();
}

function connect() {
  if (source) source.close();
  source = new EventSource("dashboard/stream?" + query());
  source.onmessage = (e) => render(JSON.parse(e.data));
  source.addEventListener("problem", (e) => {
    const st = document.getElementById("status");
    st.textContent = JSON.parse(e.data).error;
    st.classList.add("down");
  });
  source.onerror = () => {
    const st = document.getElementById("status");
    st.textContent = "reconnecting…";
    st.classList.add("down");
    // A refused stream (the login expired) is not retried by the browser: load the
    // page again, which shows the login form if that is what it takes.
    if (source.readyState === EventSource.CLOSED) setTimeout(() => location.reload(), 5000);
  };
}

document.querySelectorAll("#windows button").forEach((b) => {
  b.classList.toggle("on", b.dataset.window === windowName);
  b.onclick = () => {
    windowName = b.dataset.window;
    document.querySelectorAll("#windows button").forEach((o) => o.classList.toggle("on", o === b));
    connect();
  };
});
document.querySelectorAll("#dims button").forEach((b) => b.onclick = () => {
  dim = b.dataset.dim;
  document.querySelectorAll("#dims button").forEach((o) => o.classList.toggle("on", o === b));
  if (latest) renderChannels(latest);
});
document.querySelectorAll("#channels th[data-key]").forEach((th) => th.onclick = () => {
  if (sortKey === th.dataset.key) sortAsc = !sortAsc; else { sortKey = th.dataset.key; sortAsc = false; }
  if (latest) renderChannels(latest);
});
connect();
