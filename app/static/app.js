// The hookline dashboard: one page over the read API, with no build step and nothing loaded
// from elsewhere. Every piece of data reaches the page through textContent or attributes,
// never as markup. The API token lives in sessionStorage only (this tab), never in a URL.

const TOKEN_KEY = "hookline.token";
const PAGE_SIZE = 50;
const MAX_ROWS = 1000; // the live tail drops the oldest rows past this
const STATS_EVERY_MS = 10_000;
const STREAM_IDLE_MS = 60_000; // no byte (not even a ping) for this long: reconnect
const OUTCOMES = ["accepted", "duplicate", "rejected"]; // how requests were taken in
const FAILURES = "delivery_failed"; // failed delivery attempts, retries included
const SVG_NS = "http://www.w3.org/2000/svg";

const $ = (selector) => document.querySelector(selector);

const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  identity: null, // the /api/whoami answer; `known: false` when the server has no whoami
  askingToken: false,
  started: false,
  filters: null,
  cursor: null,
  listGen: 0,
  rows: new Map(), // event id -> <tr>
  stream: null, // AbortController of the live tail
  lastEventId: null,
  stats: null,
  statsTimer: null,
  redraw: null,
  statsSoon: null,
  detailId: null,
  detailDelivery: null,
  detailGen: 0,
  returnFocus: null,
  route: null, // the fragment's parameters, as last rendered
  deadGen: 0,
  lifecycleGen: 0,
  rejectionCursor: null,
  rejectionGen: 0,
  rejectionDetailGen: 0,
  healthGen: 0,
  retryPlan: null,
  timersSet: false,
  detailTimer: null,
  replayNote: null, // {eventId, text, ok}: the last replay's answer, kept across refreshes
  deadCursor: null,
  deadTimer: null,
};

// ---------------------------------------------------------------- small helpers

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  appendAll(el, children);
  return el;
}

function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  setAttrs(el, attrs);
  appendAll(el, children);
  return el;
}

function setAttrs(el, attrs) {
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
}

function appendAll(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

const pad = (n) => String(n).padStart(2, "0");

function fmtTime(ts) {
  if (ts === null || ts === undefined) return "";
  const d = new Date(ts * 1000);
  const clock = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  const today = new Date();
  if (d.toDateString() === today.toDateString()) return clock;
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${clock}`;
}

function fmtFull(ts) {
  if (ts === null || ts === undefined) return "";
  const d = new Date(ts * 1000);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined) return "";
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${pad(Math.round(seconds % 60))} s`;
  return `${Math.floor(seconds / 3600)} h ${pad(Math.floor((seconds % 3600) / 60))} min`;
}

const badge = (status) =>
  h("span", { class: `badge s-${status}`, "data-status": status }, status ?? "");

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
  });
}

function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

// ---------------------------------------------------------------- the API client

class Unauthorized extends Error {}

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function authHeaders() {
  return state.token ? { Authorization: `Bearer ${state.token}` } : {};
}

async function request(path, { method = "GET", body, signal, headers = {} } = {}) {
  const init = { method, signal, headers: { ...authHeaders(), ...headers } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (response.status === 401) {
    askToken("The server refused the token; enter it again.");
    throw new Unauthorized("unauthorized");
  }
  return response;
}

async function failure(response) {
  let error = {};
  try { error = (await response.json()).error ?? {}; } catch { /* not JSON */ }
  const message = error.message || response.statusText || `HTTP ${response.status}`;
  return new ApiError(response.status, error.code || `http_${response.status}`, message);
}

async function api(path, options) {
  const response = await request(path, options);
  if (!response.ok) throw await failure(response);
  return response.json();
}

function describe(error) {
  if (error instanceof ApiError) {
    if (error.status === 403) return "This token lacks the scope for that.";
    return `${error.message} (${error.status})`;
  }
  return String(error.message || error);
}

// ---------------------------------------------------------------- token and identity

function askToken(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = null;
  stopStream();
  if (message) $("#auth-message").textContent = message;
  if (state.askingToken) return;
  state.askingToken = true;
  $("#auth").hidden = false;
  $("#token-input").value = "";
  $("#token-input").focus();
}

async function whoami() {
  const response = await fetch("/api/whoami", { headers: authHeaders() });
  if (response.ok) return { known: true, ...(await response.json()) };
  if (response.status === 401 || response.status === 403) return null;
  // An older server without /api/whoami: whether the event list answers tells enough.
  const probe = await fetch("/api/events?limit=1", { headers: authHeaders() });
  if (probe.ok) return { known: false, name: null, scopes: [], open: !state.token };
  return null;
}

const isAdmin = () => Boolean(state.identity?.scopes?.includes("admin"));

function showIdentity() {
  const who = state.identity;
  let text = "";
  if (who.open) text = "open API (loopback)";
  else if (who.known) text = `${who.name ?? "token"} · ${who.scopes.join(", ")}`;
  else text = "token accepted";
  $("#whoami").textContent = text;
  $("#sign-out").hidden = !state.token;
  document.body.classList.toggle("admin", isAdmin());
}

async function boot() {
  let who;
  try {
    who = await whoami();
  } catch (error) {
    $("#auth-message").textContent = `Cannot reach the server: ${describe(error)}`;
    $("#auth").hidden = false;
    return;
  }
  if (!who) {
    askToken(state.token ? "The server refused the token; enter it again." : null);
    return;
  }
  state.identity = who;
  state.askingToken = false;
  $("#auth").hidden = true;
  $("#app").hidden = false;
  showIdentity();
  start();
}

// ---------------------------------------------------------------- the event log

const FILTER_KEYS = ["source", "type", "status", "job_id", "file_id", "q", "since", "until"];

function toLocalInput(seconds) {
  const d = new Date(Number(seconds) * 1000);
  if (Number.isNaN(d.getTime())) return "";
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

function readFilters() {
  const form = new FormData($("#filters"));
  const filters = {};
  for (const [name, raw] of form.entries()) {
    const value = String(raw).trim();
    if (!value) continue;
    if (name === "since" || name === "until") {
      const when = new Date(value).getTime();
      if (!Number.isNaN(when)) filters[name] = String(Math.floor(when / 1000));
    } else {
      filters[name] = value;
    }
  }
  return filters;
}

function fillFilters(filters) {
  const form = $("#filters");
  for (const name of FILTER_KEYS) {
    const value = filters[name] ?? "";
    form.elements[name].value = name === "since" || name === "until"
      ? (value ? toLocalInput(value) : "") : value;
  }
}

function eventsQuery(extra = {}) {
  return new URLSearchParams({ ...state.filters, ...extra }).toString();
}

function idButton(kind, id) {
  if (!id) return "";
  return h("a", {
    class: "link mono id", title: id, "data-kind": kind, "data-id": id,
    href: linkTo({ [kind]: id, event: null, delivery: null }),
    onclick: (e) => e.stopPropagation(),
  }, id);
}

function eventRow(event) {
  const row = h("tr", { "data-event-id": event.id, "data-testid": "event-row", tabindex: 0 },
    h("td", { class: "time", title: fmtFull(event.received_at) }, fmtTime(event.received_at)),
    h("td", { class: "clip", title: event.source }, event.source),
    h("td", { class: "type clip", title: event.type }, event.type),
    h("td", { class: "status" }, badge(event.status)),
    h("td", { class: "opt" }, idButton("job", event.job_id)),
    h("td", { class: "opt" }, idButton("file", event.file_id)),
  );
  const open = () => go({ event: event.id, delivery: null });
  row.addEventListener("click", open);
  row.addEventListener("keydown", (e) => { if (e.key === "Enter") open(); });
  if (event.id === state.detailId) row.classList.add("selected");
  return row;
}

function setRowStatus(eventId, status) {
  const cell = state.rows.get(eventId)?.querySelector("td.status");
  if (cell && cell.firstChild?.dataset.status !== status) cell.replaceChildren(badge(status));
}

function addRow(event, where) {
  if (state.rows.has(event.id)) {
    setRowStatus(event.id, event.status);
    return;
  }
  const row = eventRow(event);
  state.rows.set(event.id, row);
  const body = $("#events tbody");
  if (where === "top") {
    row.classList.add("fresh");
    body.prepend(row);
    if (state.rows.size > MAX_ROWS) trimRows(body);
  } else {
    body.append(row);
  }
  $("#events-empty").hidden = true;
}

function trimRows(body) {
  while (state.rows.size > MAX_ROWS) {
    const last = body.lastElementChild;
    state.rows.delete(last.dataset.eventId);
    last.remove();
  }
  // The cursor pointed past rows that are gone: older events are a filter (until) away.
  state.cursor = null;
  $("#load-more").hidden = true;
  $("#log-note").textContent = `Showing the newest ${MAX_ROWS}; set "until" to see older events.`;
}

async function loadEvents(more = false) {
  const gen = more ? state.listGen : ++state.listGen;
  const extra = { limit: String(PAGE_SIZE) };
  if (more && state.cursor) extra.cursor = state.cursor;
  const error = $("#log-error");
  try {
    const page = await api(`/api/events?${eventsQuery(extra)}`);
    if (gen !== state.listGen) return; // the filters changed meanwhile
    error.hidden = true;
    for (const event of page.items) addRow(event, "bottom");
    state.cursor = page.next_cursor;
    $("#load-more").hidden = !state.cursor;
    $("#events-empty").hidden = state.rows.size > 0;
  } catch (e) {
    if (e instanceof Unauthorized || gen !== state.listGen) return;
    error.textContent = `Could not load events: ${describe(e)}`;
    error.hidden = false;
  }
}

function applyFilters(filters) {
  state.filters = filters;
  fillFilters(filters);
  state.rows.clear();
  state.cursor = null;
  $("#events tbody").replaceChildren();
  $("#load-more").hidden = true;
  $("#log-note").textContent = state.filters.q
    ? "New events are not added live while a text search is set." : "";
  state.lastEventId = null; // the list is read afresh: the tail starts from now
  startStream();
  loadEvents();
}

// ---------------------------------------------------------------- the live tail (SSE over fetch)

function setLive(kind, text) {
  const el = $("#live-status");
  el.dataset.state = kind;
  el.textContent = text;
}

function stopStream() {
  state.stream?.abort();
  state.stream = null;
  if (!$("#live-status").dataset.state.startsWith("unavailable")) setLive("off", "live: off");
}

function startStream() {
  state.stream?.abort();
  const controller = new AbortController();
  state.stream = controller;
  runStream(controller.signal);
}

async function runStream(signal) {
  let delay = 1000;
  while (!signal.aborted) {
    setLive("connecting", "live: connecting…");
    try {
      const headers = { Accept: "text/event-stream", ...authHeaders() };
      if (state.lastEventId) headers["Last-Event-ID"] = state.lastEventId;
      const { q, ...filters } = state.filters;
      const query = new URLSearchParams(filters).toString();
      const response = await fetch(`/api/stream${query ? `?${query}` : ""}`,
        { headers, signal, cache: "no-store" });
      if (response.status === 401) {
        askToken("The server refused the token; enter it again.");
        return;
      }
      if (response.status === 404) {
        setLive("unavailable", "live: not offered by this server");
        await sleep(60_000, signal);
        continue;
      }
      if (response.status === 403) {
        setLive("unavailable", "live: not allowed for this token");
        return;
      }
      if (!response.ok || !response.body) throw new Error(`stream answered ${response.status}`);
      setLive("live", "live");
      await readFrames(response.body, signal, (frame) => { delay = 1000; onFrame(frame); });
    } catch (error) {
      if (signal.aborted) return;
    }
    if (signal.aborted) return;
    setLive("retrying", `live: reconnecting in ${Math.round(delay / 1000)} s`);
    await sleep(delay * (1 + Math.random() * 0.3), signal);
    delay = Math.min(delay * 2, 30_000);
  }
}

// Reads `text/event-stream` frames (https://html.spec.whatwg.org/#event-stream-interpretation).
async function readFrames(body, signal, onFrame) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let frame = { event: "", data: [], id: null };
  let idle = null;
  const watch = () => {
    clearTimeout(idle);
    idle = setTimeout(() => reader.cancel().catch(() => {}), STREAM_IDLE_MS);
  };
  const field = (line) => {
    if (line.startsWith(":")) return; // a comment, e.g. the heartbeat
    const colon = line.indexOf(":");
    const name = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (name === "event") frame.event = value;
    else if (name === "data") frame.data.push(value);
    else if (name === "id" && !value.includes("\0")) frame.id = value;
  };
  try {
    watch();
    for (;;) {
      const { value, done } = await reader.read();
      if (done || signal.aborted) return;
      watch();
      buffer += decoder.decode(value, { stream: true });
      for (;;) {
        const end = buffer.search(/\r\n|\r|\n/);
        if (end < 0 || (buffer[end] === "\r" && end === buffer.length - 1)) break;
        const line = buffer.slice(0, end);
        buffer = buffer.slice(end + (buffer.startsWith("\r\n", end) ? 2 : 1));
        if (line !== "") {
          field(line);
          continue;
        }
        if (frame.id !== null) state.lastEventId = frame.id;
        if (frame.data.length) {
          onFrame({ event: frame.event || "message", data: frame.data.join("\n") });
        }
        frame = { event: "", data: [], id: null };
      }
    }
  } finally {
    clearTimeout(idle);
    reader.cancel().catch(() => {});
  }
}

function onFrame(frame) {
  let data;
  try { data = JSON.parse(frame.data); } catch { return; }
  if (frame.event === "event") {
    if (!state.filters.q) addRow(data, "top");
    nudgeChart("accepted", data.received_at);
  } else if (frame.event === "delivery") {
    onDelivery(data);
  }
}

function onDelivery(delivery) {
  // The row's status follows the store's rule as far as one frame tells it; the detail, when
  // open on this event, is read again for the exact answer.
  const row = state.rows.get(delivery.event_id);
  const current = row?.querySelector("td.status [data-status]")?.dataset.status;
  if (row) {
    if (delivery.status === "dead") setRowStatus(delivery.event_id, "failed");
    else if (delivery.status === "succeeded") {
      if (current !== "failed") setRowStatus(delivery.event_id, "delivered");
    } else if (current !== "failed") setRowStatus(delivery.event_id, "pending");
  }
  if (delivery.event_id === state.detailId) refreshDetailSoon();
  if (delivery.status === "dead") {
    nudgeChart("delivery_failed", delivery.ended_at);
    refreshDeadSoon();
  }
}

// ---------------------------------------------------------------- the chart

async function refreshStats() {
  if (state.askingToken) return;
  try {
    const response = await request("/api/stats?window=3600");
    if (response.status === 404) {
      state.stats = null;
      drawChart(null, "no data (this server offers no /api/stats)");
      return;
    }
    if (!response.ok) throw await failure(response);
    state.stats = await response.json();
    drawChart(state.stats);
  } catch (error) {
    if (error instanceof Unauthorized) return;
    if (!state.stats) drawChart(null, `no data: ${describe(error)}`);
  }
}

function refreshStatsSoon() {
  state.statsSoon ??= setTimeout(() => { state.statsSoon = null; refreshStats(); }, 1500);
}

function nudgeChart(series, at) {
  const minutes = state.stats?.per_minute;
  if (!minutes?.length) return;
  const last = minutes[minutes.length - 1];
  const when = at ?? Date.now() / 1000;
  if (when >= last.minute && when < last.minute + 60) {
    last[series] = (last[series] ?? 0) + 1;
    // A busy tail sends many frames a second: draw at most twice a second.
    state.redraw ??= setTimeout(() => { state.redraw = null; drawChart(state.stats); }, 500);
  }
  refreshStatsSoon();
}

function niceStep(max, ticks) {
  const raw = Math.max(1, max / ticks); // counts: whole steps only
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  for (const m of [1, 2, 5, 10]) if (m * magnitude >= raw) return m * magnitude;
  return 10 * magnitude;
}

function drawChart(stats, message = "no data") {
  const box = $("#chart");
  const totals = $("#chart-totals");
  const minutes = stats?.per_minute;
  if (!minutes?.length) {
    totals.replaceChildren();
    box.replaceChildren(h("p", { class: "no-data", "data-testid": "chart-empty" }, message));
    return;
  }
  const sums = Object.fromEntries([...OUTCOMES, FAILURES].map((k) => [k, 0]));
  for (const m of minutes) for (const k of Object.keys(sums)) sums[k] += m[k] ?? 0;
  const dead = stats.deliveries?.dead;
  totals.replaceChildren(
    ...OUTCOMES.map((k) => h("span", { class: "total", "data-series": k },
      h("i", { class: `swatch k-${k}` }), `${k} `, k === "rejected" && sums[k]
        ? h("a", { href: linkTo({ view: "rejections" }), title: "see the rejected requests" },
          h("b", {}, sums[k]))
        : h("b", {}, sums[k]))),
    h("span", { class: "total", "data-series": FAILURES },
      h("i", { class: "swatch line k-delivery_failed" }), "failed delivery attempts ",
      h("b", {}, sums[FAILURES])),
    dead !== undefined ? h("span", { class: "total" }, "dead letters ", h("b", {}, dead)) : "",
  );

  const width = 760, height = 210;
  const m = { left: 58, right: 10, top: 10, bottom: 38 };
  const plotW = width - m.left - m.right, plotH = height - m.top - m.bottom;
  // Requests are stacked by ingest outcome; failed delivery attempts are a line of their own,
  // never added to the requests (one event can fail many attempts).
  const peak = Math.max(1, ...minutes.map((b) => Math.max(
    OUTCOMES.reduce((n, k) => n + (b[k] ?? 0), 0), b[FAILURES] ?? 0)));
  const step = niceStep(peak, 4);
  const top = Math.ceil(peak / step) * step;
  const y = (v) => m.top + plotH - (v / top) * plotH;
  const slot = plotW / minutes.length;

  const svg = s("svg", {
    viewBox: `0 0 ${width} ${height}`, role: "img", "data-testid": "chart-svg",
    "aria-label": "Webhook requests per minute over the last hour by ingest outcome, " +
      "and failed delivery attempts per minute as a separate line",
  });
  for (let v = 0; v <= top + 1e-9; v += step) {
    svg.append(
      s("line", { class: "grid-line", x1: m.left, x2: width - m.right, y1: y(v), y2: y(v) }),
      s("text", { class: "tick", x: m.left - 6, y: y(v) + 4, "text-anchor": "end" }, v),
    );
  }
  const failurePoints = [];
  minutes.forEach((bucket, i) => {
    const x = m.left + i * slot + slot * 0.12;
    let base = 0;
    const parts = [];
    for (const k of OUTCOMES) {
      const n = bucket[k] ?? 0;
      if (!n) continue;
      parts.push(`${n} ${k}`);
      svg.append(s("rect", {
        class: `bar k-${k}`, "data-series": k, x, width: slot * 0.76,
        y: y(base + n), height: Math.max(0, y(base) - y(base + n)),
      }));
      base += n;
    }
    const failed = bucket[FAILURES] ?? 0;
    if (failed) parts.push(`${failed} failed delivery attempt${failed === 1 ? "" : "s"}`);
    failurePoints.push([m.left + i * slot + slot / 2, y(failed), failed]);
    const label = `${fmtTime(bucket.minute)}: ${parts.join(", ") || "nothing"}`;
    svg.append(s("rect", { class: "hover", x: m.left + i * slot, y: m.top, width: slot,
      height: plotH }, s("title", {}, label)));
    const d = new Date(bucket.minute * 1000);
    if (d.getMinutes() % 10 === 0) {
      const cx = m.left + i * slot + slot / 2;
      svg.append(
        s("line", { class: "axis", x1: cx, x2: cx, y1: m.top + plotH, y2: m.top + plotH + 4 }),
        s("text", { class: "tick", x: cx, y: m.top + plotH + 16, "text-anchor": "middle" },
          `${pad(d.getHours())}:${pad(d.getMinutes())}`),
      );
    }
  });
  if (failurePoints.some(([, , n]) => n)) {
    svg.append(s("polyline", { class: "failure-line", "data-series": FAILURES,
      points: failurePoints.map(([px, py]) => `${px.toFixed(1)},${py.toFixed(1)}`).join(" ") }));
    for (const [px, py, n] of failurePoints) {
      if (n) svg.append(s("circle", { class: "failure-dot", cx: px, cy: py, r: 2.5 }));
    }
  }
  svg.append(
    s("line", { class: "axis", x1: m.left, x2: width - m.right, y1: m.top + plotH,
      y2: m.top + plotH }),
    s("text", { class: "axis-title", x: m.left + plotW / 2, y: height - 4,
      "text-anchor": "middle" }, "minute (local time)"),
    s("text", { class: "axis-title", "text-anchor": "middle",
      transform: `translate(12 ${m.top + plotH / 2}) rotate(-90)` }, "per minute"),
  );
  box.replaceChildren(svg);
}

// ---------------------------------------------------------------- one event's detail (a dialog)

function selectRow(eventId) {
  for (const row of document.querySelectorAll("#events tr.selected")) row.classList.remove("selected");
  if (eventId) state.rows.get(eventId)?.classList.add("selected");
}

function showDialog() {
  const dialog = $("#detail");
  if (!dialog.open) {
    state.returnFocus = document.activeElement;
    dialog.showModal();
    $("#detail-close").focus();
  }
}

function closeDetail() {
  state.detailId = null;
  state.detailGen++;
  selectRow(null);
  const dialog = $("#detail");
  if (dialog.open) dialog.close();
}

async function openDetail(eventId, deliveryId = null) {
  if (state.detailId !== eventId && state.replayNote?.eventId !== eventId) {
    state.replayNote = null;
  }
  const fresh = state.detailId !== eventId;
  state.detailId = eventId;
  state.detailDelivery = deliveryId;
  selectRow(eventId);
  const gen = ++state.detailGen;
  const body = $("#detail-body");
  if (fresh) body.replaceChildren(h("p", { class: "muted" }, "Loading…"));
  showDialog();
  try {
    const event = await api(`/api/events/${encodeURIComponent(eventId)}`);
    if (gen !== state.detailGen) return;
    renderDetail(event);
    setRowStatus(event.id, event.status);
    const card = deliveryId && body.querySelector(`[data-delivery-id="${CSS.escape(deliveryId)}"]`);
    if (card) {
      card.classList.add("focused");
      if (fresh) card.scrollIntoView({ block: "nearest" });
    }
  } catch (error) {
    if (error instanceof Unauthorized || gen !== state.detailGen) return;
    body.replaceChildren(h("p", { class: "error" }, error.status === 404
      ? `No event has the id ${eventId}.` : `Could not load ${eventId}: ${describe(error)}`));
  }
}

const refreshDetailSoon = debounce(() => {
  if (state.detailId) openDetail(state.detailId, state.detailDelivery);
}, 300);

function dl(pairs) {
  const list = h("dl", { class: "facts" });
  for (const [term, value] of pairs) {
    if (value === null || value === undefined || value === "" ||
        (Array.isArray(value) && !value.length)) continue;
    list.append(h("dt", {}, term), h("dd", {}, value));
  }
  return list;
}

function renderDetail(event) {
  const actions = h("div", { class: "actions" },
    h("button", { type: "button", id: "raw-button", class: "secondary small",
      onclick: () => showRaw(event.id) }, "Raw body"),
    isAdmin() ? h("button", { type: "button", id: "replay-button", class: "small",
      "data-testid": "replay-button", onclick: () => replay(event.id) }, "Replay") : "",
    h("a", { class: "small-text", href: linkTo({ event: event.id, delivery: null }),
      id: "detail-link" }, "link to this event"),
  );
  const note = state.replayNote?.eventId === event.id ? state.replayNote : null;
  const result = h("p", { id: "replay-result", "data-testid": "replay-result",
    class: note ? (note.ok ? "result ok" : "result error") : "result", hidden: !note },
  note?.text ?? "");

  const headers = Object.entries(event.headers ?? {});
  $("#detail-heading").textContent = `Event ${event.type}`;
  $("#detail-body").replaceChildren(
    h("div", { class: "detail-title" }, h("h3", { class: "type" }, event.type), badge(event.status)),
    h("div", { class: "mono muted small-text", id: "detail-id" }, event.id),
    actions,
    result,
    dl([
      ["source", event.source],
      ["received", fmtFull(event.received_at)],
      ["occurred", fmtFull(event.occurred_at)],
      ["upstream id", event.upstream_id],
      ["job", idButton("job", event.job_id)],
      ["file", idButton("file", event.file_id)],
      ["company", event.company_id],
      ["tasks", (event.task_ids ?? []).join(", ")],
      ["query", event.query],
    ]),
    h("h4", {}, `Deliveries (${event.deliveries?.length ?? 0})`),
    h("div", { id: "detail-deliveries" },
      event.deliveries?.length ? event.deliveries.map(deliveryCard)
        : h("p", { class: "muted" }, "No handler was routed this event.")),
    h("h4", {}, "Payload"),
    h("pre", { id: "detail-payload", class: "code" }, JSON.stringify(event.payload, null, 2)),
    h("h4", {}, `Headers (${headers.length})`),
    h("table", { id: "detail-headers", class: "kv" },
      h("tbody", {}, headers.map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", {}, v))))),
    h("div", { id: "raw-box", hidden: true },
      h("h4", {}, "Raw body ", h("span", { id: "raw-type", class: "muted" })),
      h("pre", { id: "raw-body", class: "code" })),
  );
}

function deliveryCard(delivery) {
  const log = delivery.attempt_log ?? [];
  return h("div", { class: "delivery", "data-delivery-id": delivery.id,
    "data-status": delivery.status, "data-testid": "delivery" },
  h("div", { class: "delivery-head" },
    h("a", { class: "handler-name", href: linkTo({ handler: delivery.handler, event: null,
      delivery: null }) }, delivery.handler), badge(delivery.status),
    h("span", { class: "muted" }, `${delivery.attempts} attempt${delivery.attempts === 1 ? "" : "s"}`),
    delivery.status === "pending" && delivery.next_attempt_at
      ? h("span", { class: "muted" }, `next ${fmtTime(delivery.next_attempt_at)}`) : "",
    h("span", { class: "spacer" }),
    h("a", { class: "muted mono small-text id", title: `link to delivery ${delivery.id}`,
      href: linkTo({ event: delivery.event_id, delivery: delivery.id }) }, delivery.id)),
  delivery.last_error ? h("div", { class: "error small-text wrap" }, delivery.last_error) : "",
  log.length ? h("div", { class: "table-wrap" }, h("table", { class: "attempts" },
    h("thead", {}, h("tr", {}, ["#", "started", "took", "outcome", "HTTP", "error"]
      .map((t) => h("th", {}, t)))),
    h("tbody", {}, log.map((a) => h("tr", {},
      h("td", {}, a.number),
      h("td", {}, fmtTime(a.started_at)),
      h("td", {}, a.ended_at ? fmtDuration(a.ended_at - a.started_at) : "running"),
      h("td", {}, badge(a.outcome)),
      h("td", {}, a.http_status ?? ""),
      h("td", { class: "error-text" }, a.error ?? "")))))) : "");
}

async function showRaw(eventId) {
  const box = $("#raw-box");
  const pre = $("#raw-body");
  box.hidden = false;
  pre.textContent = "Loading…";
  try {
    const response = await request(`/api/events/${encodeURIComponent(eventId)}/raw`);
    if (!response.ok) throw await failure(response);
    $("#raw-type").textContent = response.headers.get("x-hookline-content-type") ??
      response.headers.get("content-type") ?? "";
    pre.textContent = await response.text();
  } catch (error) {
    if (error instanceof Unauthorized) return;
    pre.textContent = error.status === 404 && error.code !== "not_found"
      ? "This server does not offer the raw body." : `Could not load: ${describe(error)}`;
  }
  box.scrollIntoView({ block: "nearest" });
}

async function replay(eventId, handler = null) {
  let note;
  try {
    const answer = await api(`/api/events/${encodeURIComponent(eventId)}/replay`,
      { method: "POST", body: handler ? { handler } : {} });
    const n = answer.deliveries?.length ?? 0;
    note = {
      eventId, ok: true,
      text: n ? `Replay queued: ${n} new deliver${n === 1 ? "y" : "ies"} to ` +
        `${answer.handlers.join(", ")}.` : "Replay done: no route matches this event now.",
    };
  } catch (error) {
    if (error instanceof Unauthorized) return null;
    note = { eventId, ok: false, text: `Replay failed: ${describe(error)}` };
  }
  state.replayNote = note;
  if (state.detailId === eventId) {
    await openDetail(eventId, state.detailDelivery);
    // Delivery frames refresh the detail as the new delivery runs; without a live tail, look again.
    setTimeout(() => { if (state.detailId === eventId) openDetail(eventId, state.detailDelivery); }, 1500);
  }
  refreshDeadSoon();
  return note;
}

// ---------------------------------------------------------------- dead letters

function deadFilters() {
  const filters = {};
  if (state.route.dead_handler) filters.handler = state.route.dead_handler;
  if (state.route.dead_type) filters.type = state.route.dead_type;
  return filters;
}

async function loadDeadLetters(more = false) {
  const message = $("#dead-message");
  const list = $("#dead-list");
  const params = new URLSearchParams({ status: "dead", limit: "20", ...deadFilters() });
  if (more && state.deadCursor) params.set("cursor", state.deadCursor);
  const gen = more ? state.deadGen : ++state.deadGen;
  try {
    const page = await api(`/api/deliveries?${params}`);
    if (gen !== state.deadGen) return;
    if (!more) list.replaceChildren();
    for (const d of page.items) list.append(deadItem(d));
    state.deadCursor = page.next_cursor;
    $("#dead-more").hidden = !page.next_cursor;
    const filtered = Object.keys(deadFilters()).length > 0;
    message.textContent = list.children.length ? "" : filtered
      ? "None match these filters."
      : "None: every delivery succeeded or is still trying.";
    $("#retry-all").disabled = list.children.length === 0;
  } catch (error) {
    if (error instanceof Unauthorized) return;
    message.textContent = `Could not load dead letters: ${describe(error)}`;
  }
}

const refreshDeadSoon = debounce(() => loadDeadLetters(), 1000);

function firstLine(text) {
  const line = String(text ?? "").split("\n", 1)[0];
  return line;
}

function deadItem(delivery) {
  const error = delivery.last_error ?? "";
  const buttons = isAdmin() ? [
    h("button", { type: "button", class: "small", "data-testid": "retry-one",
      title: `retry delivery ${delivery.id} to ${delivery.handler}`,
      onclick: (e) => retryOne(delivery, e.currentTarget) }, "Retry"),
    h("button", { type: "button", class: "small secondary",
      title: `replay event ${delivery.event_id} to ${delivery.handler} as a new delivery`,
      onclick: async (e) => {
        const button = e.currentTarget;
        button.disabled = true;
        const note = await replay(delivery.event_id, delivery.handler);
        button.textContent = note?.ok ? "replayed" : "replay failed";
      } }, "Replay"),
  ] : [];
  return h("li", { class: "dead-item", "data-delivery-id": delivery.id,
    "data-event-id": delivery.event_id, "data-testid": "dead-letter" },
  h("div", { class: "dead-head" },
    h("a", { class: "type", href: linkTo({ event: delivery.event_id, delivery: delivery.id }),
      title: `open event ${delivery.event_id}` }, delivery.event_type ?? delivery.event_id),
    h("span", { class: "muted" }, "to"),
    h("a", { class: "handler-name", href: linkTo({ handler: delivery.handler }),
      "data-testid": "dead-handler" }, delivery.handler)),
  h("div", { class: "dead-meta muted small-text" },
    h("span", { class: "time", title: fmtFull(delivery.updated_at) }, fmtTime(delivery.updated_at)),
    ` · ${delivery.attempts} attempt${delivery.attempts === 1 ? "" : "s"}`,
    h("span", { class: "spacer" }),
    buttons),
  error ? h("details", { class: "dead-error" },
    h("summary", { class: "error-text", title: error }, firstLine(error)),
    h("pre", { class: "code", "data-testid": "dead-error" }, error)) : "",
  h("p", { class: "dead-note small-text", role: "status" }),
  );
}

function retryResult(ok, text) {
  const out = $("#retry-result");
  out.className = ok ? "result ok" : "result error";
  out.textContent = text;
  out.hidden = false;
}

async function retryOne(delivery, button) {
  const item = button.closest(".dead-item");
  const note = item.querySelector(".dead-note");
  button.disabled = true;
  try {
    await api(`/api/deliveries/${encodeURIComponent(delivery.id)}/retry`,
      { method: "POST", body: {} });
    item.remove();
    retryResult(true, `The delivery of ${delivery.event_type ?? delivery.event_id} to ` +
      `${delivery.handler} is pending again.`);
    refreshDeadSoon();
    refreshStatsSoon();
  } catch (error) {
    if (error instanceof Unauthorized) return;
    button.disabled = false;
    note.className = "dead-note small-text error";
    note.textContent = error.status === 404 && error.code !== "not_found"
      ? "This server offers no retry." : `Retry failed: ${describe(error)}`;
  }
}

async function askRetryAll() {
  const filters = deadFilters();
  const text = $("#retry-confirm-text");
  const box = $("#retry-confirm");
  $("#retry-all").disabled = true;
  try {
    const plan = await api("/api/deliveries/retry", { method: "POST",
      body: { status: "dead", ...filters, dry_run: true } });
    state.retryPlan = filters;
    const n = plan.deliveries;
    const scope = Object.entries(filters).map(([k, v]) => `${k} ${v}`).join(", ");
    text.textContent = n
      ? `Retry ${n} dead deliver${n === 1 ? "y" : "ies"}${scope ? ` (${scope})` : ""}? ` +
        "Each goes back to pending, its attempts kept."
      : "No dead delivery matches: nothing to retry.";
    $("#retry-confirm-yes").hidden = !n;
    box.hidden = false;
    (n ? $("#retry-confirm-yes") : $("#retry-confirm-no")).focus();
  } catch (error) {
    if (error instanceof Unauthorized) return;
    retryResult(false, error.status === 404 && error.code !== "not_found"
      ? "This server offers no retry." : `Could not count: ${describe(error)}`);
  } finally {
    $("#retry-all").disabled = false;
  }
}

async function retryAll() {
  const box = $("#retry-confirm");
  box.hidden = true;
  try {
    const answer = await api("/api/deliveries/retry", { method: "POST",
      body: { status: "dead", ...(state.retryPlan ?? {}) } });
    const n = answer.deliveries;
    retryResult(true, `${n} deliver${n === 1 ? "y is" : "ies are"} pending again.`);
    loadDeadLetters();
    refreshStatsSoon();
  } catch (error) {
    if (error instanceof Unauthorized) return;
    retryResult(false, `Retry failed: ${describe(error)}`);
  }
  $("#retry-all").focus();
}

// ---------------------------------------------------------------- job and file lifecycle

async function openLifecycle(kind, id) {
  const panel = $("#lifecycle");
  panel.hidden = false;
  const out = $("#lifecycle-body");
  out.replaceChildren(h("p", { class: "muted" }, "Loading…"));
  const gen = ++state.lifecycleGen;
  panel.scrollIntoView({ block: "nearest" });
  try {
    const life = await api(`/api/${kind}s/${encodeURIComponent(id)}`);
    if (gen === state.lifecycleGen) renderLifecycle(life);
  } catch (error) {
    if (error instanceof Unauthorized || gen !== state.lifecycleGen) return;
    out.replaceChildren(h("p", { class: error.status === 404 ? "muted" : "error" },
      error.status === 404 ? `No event names ${kind} ${id}.` : describe(error)));
  }
}

function renderLifecycle(life) {
  const links = (kind, ids) => (ids ?? []).filter((x) => x !== life.id)
    .map((x) => [idButton(kind, x), " "]);
  const anomalies = life.anomalies ?? [];
  $("#lifecycle-body").replaceChildren(
    h("div", { class: "detail-title" },
      h("h3", {}, `${life.kind} `, h("span", { class: "mono wrap" }, life.id)), badge(life.state)),
    dl([
      ["outcome", life.outcome],
      ["first seen", fmtFull(life.first_seen)],
      ["last seen", fmtFull(life.last_seen)],
      ["time to done", fmtDuration(life.time_to_done)],
      ["restarts", String(life.restarts ?? 0)],
      ["upstream retries", String(life.upstream_retries ?? 0)],
      ["jobs", links("job", life.job_ids)],
      ["files", links("file", life.file_ids)],
    ]),
    anomalies.length
      ? h("div", { class: "anomalies" }, h("h4", {}, `Anomalies (${anomalies.length})`),
        h("ul", {}, anomalies.map((a) => h("li", {}, typeof a === "string" ? a : JSON.stringify(a)))))
      : h("p", { class: "muted small-text" }, "No anomalies."),
    h("h4", {}, `Timeline (${life.timeline?.length ?? 0})`),
    h("table", { class: "grid timeline" },
      h("tbody", {}, (life.timeline ?? []).map((step) => h("tr", {},
        h("td", { class: "time", title: fmtFull(step.at) }, fmtTime(step.at)),
        h("td", { class: "type" }, h("a", { href: linkTo({ event: step.id, delivery: null }),
          title: `open event ${step.id}` }, step.type)))))),
  );
}

// ---------------------------------------------------------------- rejected requests

const REJECTION_KEYS = { rj_source: "source", rj_code: "code" };

async function loadRejections(more = false) {
  const message = $("#rejections-message");
  const body = $("#rejections-table tbody");
  const params = new URLSearchParams({ limit: String(PAGE_SIZE) });
  for (const [key, name] of Object.entries(REJECTION_KEYS)) {
    if (state.route[key]) params.set(name, state.route[key]);
  }
  if (more && state.rejectionCursor) params.set("cursor", state.rejectionCursor);
  const gen = more ? state.rejectionGen : ++state.rejectionGen;
  try {
    const page = await api(`/api/rejections?${params}`);
    if (gen !== state.rejectionGen) return;
    if (!more) body.replaceChildren();
    for (const r of page.items) body.append(rejectionRow(r));
    state.rejectionCursor = page.next_cursor;
    $("#rejections-more").hidden = !page.next_cursor;
    message.textContent = body.children.length ? "" : "No rejected request matches.";
  } catch (error) {
    if (error instanceof Unauthorized || gen !== state.rejectionGen) return;
    body.replaceChildren();
    message.textContent = error.status === 404
      ? "This server keeps no log of rejected requests."
      : `Could not load rejected requests: ${describe(error)}`;
  }
}

function rejectionRow(r) {
  const open = () => go({ rejection: r.id });
  const row = h("tr", { "data-rejection-id": r.id, "data-testid": "rejection-row", tabindex: 0,
    class: r.id === state.route.rejection ? "selected" : null },
  h("td", { class: "time", title: fmtFull(r.received_at) }, fmtTime(r.received_at)),
  h("td", { class: "clip", title: r.source }, r.source, r.known ? "" : " (unknown)"),
  h("td", {}, h("span", { class: "badge s-rejected" }, r.code)),
  h("td", { class: "opt" }, r.status),
  h("td", { class: "clip", title: r.message }, r.message));
  row.addEventListener("click", open);
  row.addEventListener("keydown", (e) => { if (e.key === "Enter") open(); });
  return row;
}

async function openRejection(id) {
  const panel = $("#rejection-detail");
  panel.hidden = false;
  for (const row of document.querySelectorAll("#rejections-table tr.selected")) {
    row.classList.remove("selected");
  }
  document.querySelector(`#rejections-table tr[data-rejection-id="${CSS.escape(id)}"]`)
    ?.classList.add("selected");
  panel.replaceChildren(h("p", { class: "muted" }, "Loading…"));
  const gen = ++state.rejectionDetailGen;
  try {
    const r = await api(`/api/rejections/${encodeURIComponent(id)}`);
    if (gen === state.rejectionDetailGen) renderRejection(r);
  } catch (error) {
    if (error instanceof Unauthorized || gen !== state.rejectionDetailGen) return;
    panel.replaceChildren(h("p", { class: "error" }, error.status === 404
      ? `No rejected request has the id ${id}.` : describe(error)));
  }
}

function fieldError(detail) {
  if (detail === null || typeof detail !== "object") return h("li", {}, String(detail));
  const loc = Array.isArray(detail.loc) ? detail.loc.join(".") : detail.loc;
  const rest = Object.entries(detail).filter(([k]) => k !== "loc" && k !== "msg");
  return h("li", { "data-testid": "field-error" },
    loc !== undefined && loc !== "" ? h("code", {}, loc) : "",
    loc !== undefined && loc !== "" ? ": " : "",
    detail.msg ?? "",
    rest.length ? h("span", { class: "muted" }, ` ${JSON.stringify(Object.fromEntries(rest))}`) : "");
}

function renderRejection(r) {
  const headers = Object.entries(r.headers ?? {});
  const details = r.details ?? [];
  $("#rejection-detail").replaceChildren(
    h("div", { class: "panel-head" },
      h("h2", {}, "Rejected request"),
      h("button", { type: "button", class: "secondary small", id: "rejection-close",
        onclick: () => go({ rejection: null }) }, "Close")),
    h("div", { class: "detail-title" }, h("span", { class: "badge s-rejected" }, r.code),
      h("span", {}, `HTTP ${r.status}`)),
    h("div", { class: "mono muted small-text wrap" }, r.id),
    h("p", { id: "rejection-message", class: "wrap" }, r.message),
    dl([
      ["received", fmtFull(r.received_at)],
      ["source", r.known ? r.source : `${r.source} (no such source)`],
      ["remote", r.remote],
      ["body size", r.body_bytes === null || r.body_bytes === undefined ? "" : `${r.body_bytes} bytes`],
      ["left out before", r.dropped_before ? `${r.dropped_before} similar (sampled)` : ""],
    ]),
    h("h4", {}, `Field errors (${details.length})`),
    details.length ? h("ul", { id: "rejection-errors", class: "field-errors" },
      details.map(fieldError)) : h("p", { class: "muted" }, "None given."),
    h("h4", {}, `Headers (${headers.length})`),
    h("table", { class: "kv" },
      h("tbody", {}, headers.map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", {}, v))))),
    h("h4", {}, "Body", r.truncated ? " (cut short)" : ""),
    r.body === null || r.body === undefined
      ? h("p", { class: "muted" }, "Not kept (the request was not authenticated).")
      : h("pre", { id: "rejection-body", class: "code" }, r.body),
  );
}

// ---------------------------------------------------------------- sources, routes and handlers

function pct(rate) {
  return rate === null || rate === undefined ? "–" : `${(rate * 100).toFixed(1)}%`;
}

function seconds(value) {
  return value === null || value === undefined ? "–" : fmtDuration(value);
}

function routeText(route) {
  const where = Object.entries(route.where ?? {}).map(([k, v]) => `${k}=${v}`).join(" ");
  return [route.source ? `${route.source}:` : "", route.match, where ? ` where ${where}` : ""].join("");
}

async function loadHealth() {
  const gen = ++state.healthGen;
  const [handlers, sources] = await Promise.allSettled([api("/api/handlers"), api("/api/sources")]);
  if (gen !== state.healthGen) return;
  const missing = (what, result) => {
    const error = result.reason;
    if (error instanceof Unauthorized) return h("p", {});
    return h("p", { class: "muted" }, error?.status === 404
      ? `This server offers no ${what}.` : `Could not load: ${describe(error)}`);
  };
  $("#handlers-body").replaceChildren(handlers.status === "fulfilled"
    ? handlersTable(handlers.value.handlers ?? []) : missing("/api/handlers", handlers));
  $("#sources-body").replaceChildren(sources.status === "fulfilled"
    ? sourcesTable(sources.value.sources ?? []) : missing("/api/sources", sources));
  const chosen = state.route.handler &&
    document.querySelector(`#handlers-body [data-handler="${CSS.escape(state.route.handler)}"]`);
  chosen?.scrollIntoView({ block: "nearest" });
}

function handlersTable(handlers) {
  if (!handlers.length) return h("p", { class: "muted" }, "No handler is configured.");
  return h("ul", { class: "health-list" }, handlers.map((x) => {
    const chosen = x.name === state.route.handler;
    const breaker = x.breaker?.state ?? "";
    const dead = x.deliveries?.dead ?? 0;
    return h("li", { class: chosen ? "health-item chosen" : "health-item", "data-handler": x.name,
      "data-testid": "handler" },
    h("details", { open: chosen },
      h("summary", {},
        h("span", { class: "handler-name" }, x.name),
        h("span", { class: "muted small-text" }, ` ${x.use} `),
        breaker && breaker !== "closed" ? badge(breaker) : "",
        dead ? h("span", { class: "badge s-dead" }, `${dead} dead`) : "",
        h("span", { class: "health-figures small-text" },
          `pending ${x.deliveries?.pending ?? 0} · success ${pct(x.success_rate)} · ` +
          `p50 ${seconds(x.attempt_seconds?.p50)} · p99 ${seconds(x.attempt_seconds?.p99)}`)),
      dl([
        ["deliveries", Object.entries(x.deliveries ?? {}).map(([k, v]) => `${k} ${v}`).join(", ")],
        ["attempts", `${x.attempts?.total ?? 0}: ` + Object.entries(x.attempts?.by_outcome ?? {})
          .map(([k, v]) => `${k} ${v}`).join(", ")],
        ["oldest pending", x.oldest_pending_at ? `${fmtFull(x.oldest_pending_at)} ` +
          `(${seconds(x.oldest_pending_seconds)} ago)` : "none"],
        ["breaker", x.breaker ? `${x.breaker.state} (${x.breaker.upstream}, ` +
          `${x.breaker.consecutive_failures} failures in a row)` : "none"],
        ["routes", (x.routes ?? []).length
          ? h("ul", { class: "plain" }, x.routes.map((r) => h("li", { class: "mono" }, routeText(r))))
          : "no route reaches it"],
        ["dead letters", dead ? h("a", { href: linkTo({ view: null, handler: null,
          dead_handler: x.name }) }, `show the ${dead}`) : "none"],
      ])));
  }));
}

function sourcesTable(sources) {
  if (!sources.length) return h("p", { class: "muted" }, "No source is configured.");
  return h("div", { class: "table-wrap" }, h("table", { class: "grid" },
    h("thead", {}, h("tr", {}, h("th", {}, "Source"), h("th", { class: "opt" }, "Auth"),
      h("th", {}, "Accepted"), h("th", {}, "Duplicate"), h("th", {}, "Rejected"),
      h("th", { class: "opt" }, "Last event"), h("th", { class: "opt" }, "Routes"))),
    h("tbody", {}, sources.map((x) => h("tr", { "data-source": x.name, "data-testid": "source" },
      h("td", { class: "wrap" }, h("b", {}, x.name),
        h("div", { class: "muted small-text" }, x.platform, h("span", { class: "narrow-only" },
          x.auth?.scheme ? ` · ${x.auth.scheme}` : ""))),
      h("td", { class: "small-text opt" }, x.auth?.scheme ?? ""),
      h("td", {}, x.requests?.accepted ?? 0),
      h("td", {}, x.requests?.duplicate ?? 0),
      h("td", {}, (x.requests?.rejected ?? 0)
        ? h("a", { href: linkTo({ view: "rejections", rj_source: x.name }) }, x.requests.rejected)
        : "0"),
      h("td", { class: "time opt" }, fmtFull(x.last_event_at) || "never"),
      h("td", { class: "opt mono small-text" }, (x.routes ?? []).map((r) =>
        h("div", {}, `${routeText(r)} → `, h("a", { href: linkTo({ view: "health",
          handler: r.handler }) }, r.handler)))))))));
}

// ---------------------------------------------------------------- search by id

async function search(id) {
  const out = $("#search-result");
  out.hidden = false;
  out.replaceChildren(`Looking for ${id}…`);
  const kinds = [["event", "events"], ["job", "jobs"], ["file", "files"]];
  const answers = await Promise.allSettled(
    kinds.map(([, path]) => api(`/api/${path}/${encodeURIComponent(id)}`)));
  if (answers.some((a) => a.reason instanceof Unauthorized)) return;
  const found = kinds.filter((_, i) => answers[i].status === "fulfilled").map(([kind]) => kind);
  if (found.length === 1) {
    out.hidden = true;
    go({ [found[0]]: id, view: null, event: found[0] === "event" ? id : null, delivery: null });
    return;
  }
  if (!found.length) {
    out.replaceChildren(`No event, job or file has the id ${id}.`);
    return;
  }
  out.replaceChildren(`${id} is `, found.map((kind, i) => [i ? " and " : "",
    h("a", { href: linkTo({ [kind]: id, view: null, event: kind === "event" ? id : null }),
      onclick: () => { out.hidden = true; } }, `a ${kind}`)]), ".");
}

// ---------------------------------------------------------------- the address: one URL per view

// Every view is in the fragment (`#event=…`, `#job=…`, `#view=rejections&rj_code=…`), so a link
// opens the same view and back/forward step through what was looked at.
const SELECTION_KEYS = ["event", "delivery", "job", "file", "rejection", "handler"];

function readRoute() {
  return Object.fromEntries(new URLSearchParams(location.hash.slice(1)));
}

function linkTo(changes) {
  const params = new URLSearchParams(location.hash.slice(1));
  for (const [key, value] of Object.entries(changes)) {
    if (value === null || value === undefined || value === "") params.delete(key);
    else params.set(key, value);
  }
  const view = params.get("view");
  if (view === "events") params.delete("view");
  const text = params.toString();
  return text ? `#${text}` : "#";
}

function go(changes) {
  const target = linkTo(changes);
  if (target === (location.hash || "#")) render();
  else location.hash = target;
}

function viewOf(route) {
  if (route.rejection) return "rejections";
  if (route.handler) return "health";
  if (route.view === "rejections" || route.view === "health") return route.view;
  return "events";
}

function render() {
  if (!state.started) return;
  const route = readRoute();
  const before = state.route;
  state.route = route;
  const view = viewOf(route);
  $("#app").dataset.view = view;
  for (const tab of document.querySelectorAll("#tabs a")) {
    const name = tab.dataset.view;
    const clear = Object.fromEntries(SELECTION_KEYS.map((k) => [k, null]));
    tab.href = linkTo({ ...clear, view: name });
    if (name === view) tab.setAttribute("aria-current", "page");
    else tab.removeAttribute("aria-current");
  }

  const filters = Object.fromEntries(FILTER_KEYS.filter((k) => route[k]).map((k) => [k, route[k]]));
  if (!before || JSON.stringify(filters) !== JSON.stringify(state.filters)) applyFilters(filters);

  $("#dead-handler").value = route.dead_handler ?? "";
  $("#dead-type").value = route.dead_type ?? "";
  if (!before || before.dead_handler !== route.dead_handler || before.dead_type !== route.dead_type) {
    $("#retry-confirm").hidden = true;
    if (before) $("#retry-result").hidden = true;
    loadDeadLetters();
  }

  const kind = route.job ? "job" : route.file ? "file" : null;
  if (kind) {
    if (!before || before[kind] !== route[kind]) openLifecycle(kind, route[kind]);
  } else {
    $("#lifecycle").hidden = true;
  }

  if (view === "rejections") {
    const form = $("#rejection-filters");
    for (const key of Object.keys(REJECTION_KEYS)) form.elements[key].value = route[key] ?? "";
    const changed = !before || viewOf(before) !== "rejections" ||
      Object.keys(REJECTION_KEYS).some((k) => before[k] !== route[k]);
    if (changed) loadRejections();
    if (route.rejection) openRejection(route.rejection);
    else $("#rejection-detail").hidden = true;
  }
  if (view === "health" && (!before || viewOf(before) !== "health" ||
      before.handler !== route.handler)) {
    loadHealth();
  }

  if (route.event) {
    if (state.detailId !== route.event || state.detailDelivery !== (route.delivery ?? null)) {
      openDetail(route.event, route.delivery ?? null);
    }
  } else if (state.detailId || $("#detail").open) {
    closeDetail();
  }
}

// ---------------------------------------------------------------- wiring

function start() {
  $("#tabs").hidden = false;
  $("#search-form").hidden = false;
  state.route = null;
  state.filters = null;
  state.started = true;
  render();
  refreshStats();
  if (state.timersSet) return;
  state.timersSet = true;
  state.statsTimer = setInterval(refreshStats, STATS_EVERY_MS);
  state.deadTimer = setInterval(() => { if (!state.askingToken) loadDeadLetters(); }, 30_000);
}

function formValues(form) {
  const values = {};
  for (const [name, raw] of new FormData(form).entries()) values[name] = String(raw).trim() || null;
  return values;
}

function wire() {
  $("#auth-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const token = $("#token-input").value.trim();
    if (!token) return;
    state.token = token;
    sessionStorage.setItem(TOKEN_KEY, token);
    state.askingToken = false;
    $("#auth").hidden = true;
    boot();
  });
  $("#sign-out").addEventListener("click", () => {
    $("#app").hidden = true;
    $("#tabs").hidden = true;
    closeDetail();
    askToken("Token forgotten. Enter a token to continue.");
  });
  window.addEventListener("hashchange", render);
  $("#filters").addEventListener("submit", (e) => {
    e.preventDefault();
    const filters = readFilters();
    go(Object.fromEntries(FILTER_KEYS.map((k) => [k, filters[k] ?? null])));
  });
  $("#filters").addEventListener("reset", (e) => {
    e.preventDefault();
    go(Object.fromEntries(FILTER_KEYS.map((k) => [k, null])));
  });
  $("#load-more").addEventListener("click", () => loadEvents(true));
  $("#dead-refresh").addEventListener("click", () => loadDeadLetters());
  $("#dead-more").addEventListener("click", () => loadDeadLetters(true));
  $("#dead-filters").addEventListener("submit", (e) => {
    e.preventDefault();
    go(formValues(e.currentTarget));
  });
  $("#retry-all").addEventListener("click", askRetryAll);
  $("#retry-confirm-yes").addEventListener("click", retryAll);
  $("#retry-confirm-no").addEventListener("click", () => {
    $("#retry-confirm").hidden = true;
    $("#retry-all").focus();
  });
  $("#lifecycle-close").addEventListener("click", () => go({ job: null, file: null }));
  $("#rejection-filters").addEventListener("submit", (e) => {
    e.preventDefault();
    go({ ...formValues(e.currentTarget), rejection: null });
  });
  $("#rejections-more").addEventListener("click", () => loadRejections(true));
  $("#health-refresh").addEventListener("click", loadHealth);
  $("#search-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const id = $("#search-input").value.trim();
    if (id) search(id);
  });
  const dialog = $("#detail");
  $("#detail-close").addEventListener("click", () => dialog.close());
  // Escape, the close button or a click on the backdrop: the address loses the event.
  dialog.addEventListener("close", () => {
    const focus = state.returnFocus;
    state.returnFocus = null;
    if (readRoute().event) go({ event: null, delivery: null });
    state.detailId = null;
    selectRow(null);
    if (focus?.isConnected) focus.focus();
  });
  dialog.addEventListener("click", (e) => { if (e.target === dialog) dialog.close(); });
}

wire();
boot();
