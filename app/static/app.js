// The hookline dashboard: one page over the read API, with no build step and nothing loaded
// from elsewhere. Every piece of data reaches the page through textContent or attributes,
// never as markup. The API token lives in sessionStorage only (this tab), never in a URL.

const TOKEN_KEY = "hookline.token";
const PAGE_SIZE = 50;
const MAX_ROWS = 1000; // the live tail drops the oldest rows past this
const STATS_EVERY_MS = 10_000;
const STREAM_IDLE_MS = 60_000; // no byte (not even a ping) for this long: reconnect
const SERIES = ["accepted", "duplicate", "rejected", "delivery_failed"];
const SVG_NS = "http://www.w3.org/2000/svg";

const $ = (selector) => document.querySelector(selector);

const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  identity: null, // the /api/whoami answer; `known: false` when the server has no whoami
  askingToken: false,
  started: false,
  filters: {},
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
  detailGen: 0,
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

function eventsQuery(extra = {}) {
  return new URLSearchParams({ ...state.filters, ...extra }).toString();
}

function idButton(kind, id) {
  if (!id) return "";
  return h("button", {
    type: "button", class: "link mono id", title: id, "data-kind": kind, "data-id": id,
    onclick: (e) => { e.stopPropagation(); openLifecycle(kind, id); },
  }, id);
}

function eventRow(event) {
  const row = h("tr", { "data-event-id": event.id, "data-testid": "event-row", tabindex: 0 },
    h("td", { class: "time", title: fmtFull(event.received_at) }, fmtTime(event.received_at)),
    h("td", {}, event.source),
    h("td", { class: "type" }, event.type),
    h("td", { class: "status" }, badge(event.status)),
    h("td", {}, idButton("job", event.job_id)),
    h("td", {}, idButton("file", event.file_id)),
  );
  row.addEventListener("click", () => openDetail(event.id));
  row.addEventListener("keydown", (e) => { if (e.key === "Enter") openDetail(event.id); });
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

function applyFilters() {
  state.filters = readFilters();
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
  const sums = Object.fromEntries(SERIES.map((k) => [k, 0]));
  for (const m of minutes) for (const k of SERIES) sums[k] += m[k] ?? 0;
  const dead = stats.deliveries?.dead;
  totals.replaceChildren(
    ...SERIES.map((k) => h("span", { class: "total", "data-series": k },
      h("i", { class: `swatch k-${k}` }), `${k.replace("_", " ")} `, h("b", {}, sums[k]))),
    dead !== undefined ? h("span", { class: "total" }, "dead letters ", h("b", {}, dead)) : "",
  );

  const width = 760, height = 210;
  const m = { left: 58, right: 10, top: 10, bottom: 38 };
  const plotW = width - m.left - m.right, plotH = height - m.top - m.bottom;
  const peak = Math.max(1, ...minutes.map((b) => SERIES.reduce((n, k) => n + (b[k] ?? 0), 0)));
  const step = niceStep(peak, 4);
  const top = Math.ceil(peak / step) * step;
  const y = (v) => m.top + plotH - (v / top) * plotH;
  const slot = plotW / minutes.length;

  const svg = s("svg", {
    viewBox: `0 0 ${width} ${height}`, role: "img", "data-testid": "chart-svg",
    "aria-label": "Events per minute over the last hour, by outcome",
  });
  for (let v = 0; v <= top + 1e-9; v += step) {
    svg.append(
      s("line", { class: "grid-line", x1: m.left, x2: width - m.right, y1: y(v), y2: y(v) }),
      s("text", { class: "tick", x: m.left - 6, y: y(v) + 4, "text-anchor": "end" },
        v),
    );
  }
  minutes.forEach((bucket, i) => {
    const x = m.left + i * slot + slot * 0.12;
    let base = 0;
    const parts = [];
    for (const k of SERIES) {
      const n = bucket[k] ?? 0;
      if (!n) continue;
      parts.push(`${n} ${k.replace("_", " ")}`);
      svg.append(s("rect", {
        class: `bar k-${k}`, x, width: slot * 0.76,
        y: y(base + n), height: Math.max(0, y(base) - y(base + n)),
      }));
      base += n;
    }
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
  svg.append(
    s("line", { class: "axis", x1: m.left, x2: width - m.right, y1: m.top + plotH,
      y2: m.top + plotH }),
    s("text", { class: "axis-title", x: m.left + plotW / 2, y: height - 4,
      "text-anchor": "middle" }, "minute (local time)"),
    s("text", { class: "axis-title", "text-anchor": "middle",
      transform: `translate(12 ${m.top + plotH / 2}) rotate(-90)` }, "events / min"),
  );
  box.replaceChildren(svg);
}

// ---------------------------------------------------------------- one event's detail

function selectRow(eventId) {
  for (const row of document.querySelectorAll("#events tr.selected")) row.classList.remove("selected");
  state.rows.get(eventId)?.classList.add("selected");
}

async function openDetail(eventId) {
  if (state.detailId !== eventId) {
    if (state.replayNote?.eventId !== eventId) state.replayNote = null;
    $(".col-side").scrollTop = 0; // the detail is the side column's first panel
  }
  state.detailId = eventId;
  selectRow(eventId);
  const gen = ++state.detailGen;
  const body = $("#detail-body");
  $("#detail-placeholder").hidden = true;
  body.hidden = false;
  try {
    const event = await api(`/api/events/${encodeURIComponent(eventId)}`);
    if (gen !== state.detailGen) return;
    renderDetail(event);
    setRowStatus(event.id, event.status);
  } catch (error) {
    if (error instanceof Unauthorized || gen !== state.detailGen) return;
    body.replaceChildren(h("p", { class: "error" }, `Could not load ${eventId}: ${describe(error)}`));
  }
}

const refreshDetailSoon = debounce(() => { if (state.detailId) openDetail(state.detailId); }, 300);

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
  );
  const note = state.replayNote?.eventId === event.id ? state.replayNote : null;
  const result = h("p", { id: "replay-result", "data-testid": "replay-result",
    class: note ? (note.ok ? "result ok" : "result error") : "result", hidden: !note },
  note?.text ?? "");

  const headers = Object.entries(event.headers ?? {});
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
    h("b", {}, delivery.handler), badge(delivery.status),
    h("span", { class: "muted" }, `${delivery.attempts} attempt${delivery.attempts === 1 ? "" : "s"}`),
    delivery.status === "pending" && delivery.next_attempt_at
      ? h("span", { class: "muted" }, `next ${fmtTime(delivery.next_attempt_at)}`) : "",
    h("span", { class: "spacer" }),
    h("span", { class: "muted mono small-text", title: delivery.id }, delivery.id)),
  delivery.last_error ? h("div", { class: "error small-text" }, delivery.last_error) : "",
  log.length ? h("table", { class: "attempts" },
    h("thead", {}, h("tr", {}, ["#", "started", "took", "outcome", "HTTP", "error"]
      .map((t) => h("th", {}, t)))),
    h("tbody", {}, log.map((a) => h("tr", {},
      h("td", {}, a.number),
      h("td", {}, fmtTime(a.started_at)),
      h("td", {}, a.ended_at ? fmtDuration(a.ended_at - a.started_at) : "running"),
      h("td", {}, badge(a.outcome)),
      h("td", {}, a.http_status ?? ""),
      h("td", { class: "error-text" }, a.error ?? ""))))) : "");
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
  await openDetail(eventId);
  // Delivery frames refresh the detail as the new delivery runs; without a live tail, look again.
  setTimeout(() => { if (state.detailId === eventId) openDetail(eventId); }, 1500);
  refreshDeadSoon();
  return note;
}

// ---------------------------------------------------------------- dead letters

async function loadDeadLetters(more = false) {
  const message = $("#dead-message");
  const table = $("#dead-table");
  const params = new URLSearchParams({ status: "dead", limit: "20" });
  if (more && state.deadCursor) params.set("cursor", state.deadCursor);
  try {
    const page = await api(`/api/deliveries?${params}`);
    const body = table.querySelector("tbody");
    if (!more) body.replaceChildren();
    for (const d of page.items) body.append(deadRow(d));
    state.deadCursor = page.next_cursor;
    $("#dead-more").hidden = !page.next_cursor;
    table.hidden = body.children.length === 0;
    message.textContent = body.children.length ? "" : "None: every delivery succeeded or is still trying.";
  } catch (error) {
    if (error instanceof Unauthorized) return;
    message.textContent = `Could not load dead letters: ${describe(error)}`;
  }
}

const refreshDeadSoon = debounce(() => loadDeadLetters(), 1000);

function deadRow(delivery) {
  const replayButton = isAdmin() ? h("button", { type: "button", class: "small secondary",
    title: `replay to ${delivery.handler}`,
    onclick: async () => {
      replayButton.disabled = true;
      replayButton.textContent = "…";
      const note = await replay(delivery.event_id, delivery.handler);
      replayButton.textContent = note?.ok ? "queued" : "failed";
    } }, "Replay") : "";
  return h("tr", { "data-delivery-id": delivery.id, "data-event-id": delivery.event_id },
    h("td", { class: "time", title: fmtFull(delivery.updated_at) }, fmtTime(delivery.updated_at)),
    h("td", { class: "type" }, h("button", { type: "button", class: "link",
      title: `open event ${delivery.event_id}`, onclick: () => openDetail(delivery.event_id) },
    delivery.event_type ?? delivery.event_id)),
    h("td", {}, delivery.handler),
    h("td", {}, delivery.attempts),
    h("td", { class: "error-text", title: delivery.last_error ?? "" }, delivery.last_error ?? ""),
    h("td", {}, replayButton),
  );
}

// ---------------------------------------------------------------- job and file lifecycle

async function openLifecycle(kind, id) {
  $("#lifecycle-kind").value = kind;
  $("#lifecycle-id").value = id;
  const out = $("#lifecycle-body");
  out.replaceChildren(h("p", { class: "muted" }, "Loading…"));
  $("#lifecycle").scrollIntoView({ block: "nearest", behavior: "smooth" });
  try {
    const life = await api(`/api/${kind}s/${encodeURIComponent(id)}`);
    renderLifecycle(life);
  } catch (error) {
    if (error instanceof Unauthorized) return;
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
      h("h3", {}, `${life.kind} `, h("span", { class: "mono" }, life.id)), badge(life.state)),
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
        h("td", { class: "type" }, h("button", { type: "button", class: "link",
          title: `open event ${step.id}`, onclick: () => openDetail(step.id) }, step.type)))))),
  );
}

// ---------------------------------------------------------------- wiring

function start() {
  applyFilters();
  refreshStats();
  loadDeadLetters();
  if (state.detailId) openDetail(state.detailId);
  if (state.started) return;
  state.started = true;
  state.statsTimer = setInterval(refreshStats, STATS_EVERY_MS);
  state.deadTimer = setInterval(() => { if (!state.askingToken) loadDeadLetters(); }, 30_000);
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
    askToken("Token forgotten. Enter a token to continue.");
  });
  $("#filters").addEventListener("submit", (e) => { e.preventDefault(); applyFilters(); });
  $("#filters").addEventListener("reset", () => setTimeout(applyFilters, 0));
  $("#load-more").addEventListener("click", () => loadEvents(true));
  $("#dead-refresh").addEventListener("click", () => loadDeadLetters());
  $("#dead-more").addEventListener("click", () => loadDeadLetters(true));
  $("#lifecycle-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const id = $("#lifecycle-id").value.trim();
    if (id) openLifecycle($("#lifecycle-kind").value, id);
  });
}

wire();
boot();
