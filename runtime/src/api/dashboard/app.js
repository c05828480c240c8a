// The runner dashboard: reads the /v1 API with the user's bearer token.
// Every piece of data goes into the page through textContent, never as
// markup: task names, inputs and results are untrusted.
"use strict";

const REFRESH_MS = 2000;
const LIVE_MAX = 300;
const FINAL = new Set(["SUCCESS", "FAILURE", "REVOKED", "EXPIRED"]);

const state = {
  token: "",
  view: "overview",
  job: null,          // id of the job shown in the detail view
  jobAsked: 0,        // GET /v1/jobs/{id} requests of the job view so far
  jobShown: 0,        // the one of them whose answer the view shows
  live: new Map(),    // id -> {id, queue, state, progress, task, seen}
  lookups: [],        // job ids whose task name is still to be read
  lookingUp: 0,
  rendered: {},       // view part -> JSON last rendered (no redraw if equal)
  stream: null,       // AbortController of the event stream
  liveDirty: false,
  findQuery: null,    // the query string of the last search
  findNext: null,     // its `next` cursor, while older jobs may be left
  jobQueue: null,     // the queue of the job shown (for its replay)
  queue: null,        // the queue shown in the queue view
  workflow: null,     // id of the workflow shown
  workflowAsked: 0,   // as jobAsked and jobShown, for the workflow view
  workflowShown: 0,
  workflowJobs: new Set(), // the jobs of its steps
  refreshing: null,   // the event-driven refresh under way, if any
  refreshAgain: false, // another was asked for meanwhile
  resyncs: 0,         // reads of live jobs again after missed events
  findAsked: 0,       // searches so far: a page answers only its own
};

// ---------------------------------------------------------------- helpers

function $(id) { return document.getElementById(id); }

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) {
    if (c == null) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

// A row of a job table: its id, the cells given; a click opens the job.
function jobRow(id, ...cells) {
  return el("tr", { class: "clickable", "data-job": id, onclick: () => openJob(id) }, jobCell(id), ...cells);
}

// A job's id as a button that opens the job: reachable with the keyboard
// (its row opens it on a click too).
function jobCell(id) {
  return el("td", { class: "id" },
    el("button", { type: "button", class: "link", text: id, onclick: e => { e.stopPropagation(); openJob(id); } }));
}

function td(text, cls) { return el("td", { text: text == null ? "" : String(text), class: cls || "" }); }

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

function explain(status, message) {
  if (status === 401) return "no valid token: enter a token above (401: " + message + ")";
  if (status === 403) return "this token cannot do that: admin needed (403: " + message + ")";
  return message + " (" + status + ")";
}

const API_TIMEOUT_MS = 30000;

async function api(method, path, body) {
  const headers = {};
  if (state.token) headers["Authorization"] = "Bearer " + state.token;
  // A request that hangs must not hold the refreshes behind it for ever.
  const init = { method, headers, signal: AbortSignal.timeout(API_TIMEOUT_MS) };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = typeof body === "string" ? body : JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, "the server cannot be reached (" + e.message + ")");
  }
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
  if (!res.ok) {
    const msg = data && data.error && data.error.message ? data.error.message : (text || res.statusText);
    throw new ApiError(res.status, explain(res.status, msg));
  }
  return data;
}

function showError(message) {
  const box = $("error");
  if (message) { box.textContent = message; box.hidden = false; }
  else { box.textContent = ""; box.hidden = true; }
}

function say(id, message, isError) {
  const box = $(id);
  box.textContent = message || "";
  box.className = isError ? "error" : "message";
}

function ago(iso) {
  if (!iso) return "";
  const s = Math.round((Date.now() - Date.parse(iso)) / 1000);
  if (!isFinite(s)) return iso;
  if (s < 60) return s + " s ago";
  if (s < 3600) return Math.round(s / 60) + " min ago";
  return Math.round(s / 3600) + " h ago";
}

// An RFC 3339 time without its fraction of a second.
function when(iso) {
  return iso ? String(iso).replace(/\.\d+/, "") : "";
}

// A byte count as people read it (peak memory of a run).
function bytesText(n) {
  if (n == null) return "";
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0, v = n;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return (i === 0 ? String(v) : v.toFixed(1)) + " " + units[i];
}

// To the millisecond: a job page tells two runs of a second apart.
function whenMs(iso) {
  return iso ? String(iso).replace(/(\.\d{1,3})\d*/, "$1") : "";
}

function progressText(p) {
  if (!p) return "";
  let t = p.total ? p.done + "/" + p.total : String(p.done ?? "");
  if (p.message) t += " " + p.message;
  return t;
}

// Redraws a part only when its data changed: no flicker, and buttons the
// user is about to click are not replaced under the pointer.
function changed(part, data) {
  const json = JSON.stringify(data);
  if (state.rendered[part] === json) return false;
  state.rendered[part] = json;
  return true;
}

// ---------------------------------------------------------------- views

function showView(view) {
  state.view = view;
  for (const s of document.querySelectorAll("section.view")) s.hidden = s.id !== "view-" + view;
  for (const b of document.querySelectorAll("#nav button")) b.classList.toggle("active", b.dataset.view === view);
  refresh();
}

// The refresh events ask for: one at a time, and at most one more after
// it however many come meanwhile (a workflow's members send events by the
// thousand). A user's action or a change of view refreshes at once.
function refreshSoon() {
  if (state.refreshing) { state.refreshAgain = true; return; }
  state.refreshing = (async () => {
    do { state.refreshAgain = false; await refresh(); } while (state.refreshAgain);
  })().finally(() => { state.refreshing = null; });
}

async function refresh() {
  try {
    switch (state.view) {
      case "overview": await refreshOverview(); break;
      case "jobs": renderLive(); break;
      case "job": await refreshJob(); break;
      case "workflow": await refreshWorkflow(); break;
      case "queue": await refreshQueue(); break;
      case "tasks": await refreshTasks(); break;
      case "schedules": await refreshSchedules(); break;
      case "dead": await refreshDead(); break;
      case "workers": await refreshWorkers(); break;
    }
    showError(null);
    $("status").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (e) {
    showError(e.message);
    $("status").textContent = "last attempt " + new Date().toLocaleTimeString() + " failed";
  }
}

async function refreshOverview() {
  // Counters come live from the workers' own answers (GET /v1/inspect);
  // a heartbeat's are up to a minute old.
  const [queues, beats, held, hour] = await Promise.all([
    api("GET", "/v1/queues"), api("GET", "/v1/workers"), api("GET", "/v1/inspect").catch(() => []),
    api("GET", "/v1/history"),
  ]);
  if (changed("hour", hour.history)) {
    chart($("chart-throughput"), "Jobs ended per minute", hour.history, THROUGHPUT);
    chart($("chart-waiting"), "Jobs waiting and running", hour.history, DEPTH);
  }
  const live = new Map(held.map(h => [h.id, h]));
  const workers = beats.map(w => {
    const h = live.get(w.id);
    return h ? { ...w, processed: h.processed, failed: h.failed, running: h.active.map(j => j.id) } : w;
  });
  if (changed("queues", queues)) {
    $("queues").tBodies[0].replaceChildren(...queues.map(q =>
      el("tr", { "data-queue": q.name },
        el("td", { class: "name" }, el("button", { type: "button", class: "link", text: q.name, onclick: () => openQueue(q.name) })),
        td(q.ready, "num ready"), td(q.delayed, "num delayed"),
        td(q.in_flight, "num in-flight"), td(q.dead, "num dead"))));
  }
  if (changed("workers", workers)) {
    $("workers").tBodies[0].replaceChildren(...workers.map(w =>
      el("tr", { "data-worker": w.id },
        td(w.id, "name"), td(w.hostname), td((w.queues || []).join(", ")),
        td(w.concurrency, "num"), td((w.running || []).length, "num running"),
        td(w.processed, "num processed"), td(w.failed, "num failed"),
        el("td", { class: "seen", "data-seen": w.last_seen || "" }))));
  }
  // Ages move on while the data stays the same (a heartbeat a minute):
  // written at every refresh, not only when the table is drawn.
  for (const c of $("workers").querySelectorAll("td.seen")) c.textContent = ago(c.dataset.seen || null);
}

// ---------------------------------------------------------------- charts

const SVG_NS = "http://www.w3.org/2000/svg";
const THROUGHPUT = [
  { key: "succeeded", name: "succeeded", total: true },
  { key: "failed", name: "failed", total: true },
];
const DEPTH = [
  { key: "waiting", name: "waiting" },
  { key: "running", name: "running" },
];

function svg(tag, attrs, text) {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  if (text != null) e.textContent = String(text);
  return e;
}

function minuteText(iso) {
  return new Date(iso).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

// Draws `series` of `points` (a history: one point a minute, oldest first)
// as lines in the figure `fig`. The picture is an image with a text summary
// (totals, or the value now and the peak) for screen readers and tests.
function chart(fig, title, points, series) {
  const W = 600, H = 160, L = 44, R = 8, T = 10, B = 22;
  const values = s => points.map(p => p[s.key]);
  const max = Math.max(1, ...series.flatMap(s => values(s).filter(v => v != null)));
  const x = i => L + (W - L - R) * (points.length > 1 ? i / (points.length - 1) : 0);
  const y = v => T + (H - T - B) * (1 - v / max);
  const summary = series.map(s => {
    const vs = values(s).filter(v => v != null);
    if (s.total) return vs.reduce((a, b) => a + b, 0) + " " + s.name;
    if (vs.length === 0) return s.name + " not known";
    return vs[vs.length - 1] + " " + s.name + " now (peak " + Math.max(...vs) + ")";
  }).join(", ");
  const pic = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart-svg", role: "img",
    "aria-label": title + ", last hour: " + summary });
  pic.append(
    svg("line", { x1: L, y1: y(0), x2: W - R, y2: y(0), class: "axis" }),
    svg("line", { x1: L, y1: y(max), x2: W - R, y2: y(max), class: "axis" }),
    svg("text", { x: L - 6, y: y(max) + 4, "text-anchor": "end" }, max),
    svg("text", { x: L - 6, y: y(0) + 4, "text-anchor": "end" }, 0));
  if (points.length > 0) {
    pic.append(
      svg("text", { x: L, y: H - 6 }, minuteText(points[0].at)),
      svg("text", { x: W - R, y: H - 6, "text-anchor": "end" }, "now"));
  }
  for (const s of series) {
    // A line per run of known values (a depth before the first change
    // recorded is not known).
    let run = [];
    const flush = () => {
      if (run.length > 0) pic.append(svg("polyline", { class: "series-" + s.key, points: run.join(" ") }));
      run = [];
    };
    values(s).forEach((v, i) => { if (v == null) flush(); else run.push(x(i).toFixed(1) + "," + y(v).toFixed(1)); });
    flush();
  }
  const legend = el("div", { class: "legend" }, ...series.map(s => el("span", { class: "series-" + s.key, text: s.name })));
  fig.replaceChildren(el("figcaption", { text: title }), pic, legend, el("p", { class: "summary hint", text: "Last hour: " + summary }));
}

// ---------------------------------------------------------------- one queue

function openQueue(name) {
  state.queue = name;
  delete state.rendered.queue;
  $("queue-name").textContent = name;
  $("queue-fields").replaceChildren();
  $("queue-limits").tBodies[0].replaceChildren();
  $("queue-history").tBodies[0].replaceChildren();
  showView("queue");
}

async function refreshQueue() {
  const name = state.queue;
  const q = await api("GET", "/v1/queues/" + encodeURIComponent(name));
  if (name !== state.queue || !changed("queue", q)) return;
  const fields = [["ready", q.ready], ["delayed", q.delayed], ["in flight", q.in_flight], ["dead", q.dead]];
  $("queue-fields").replaceChildren(...fields.flatMap(([k, v]) =>
    [el("dt", { text: k }), el("dd", { text: String(v), "data-field": k })]));
  $("queue-limits").tBodies[0].replaceChildren(...(q.rate_limits.length === 0
    ? [el("tr", {}, el("td", { colSpan: 3, class: "hint", text: "none: nothing holds this queue's jobs back" }))]
    : q.rate_limits.map(l => el("tr", { "data-limit": l.key },
      td(l.key, "key"), td(l.limit, "rule"), td(l.used + " of " + l.count, "num used")))));
  chart($("queue-chart-waiting"), "Jobs waiting and running", q.history, DEPTH);
  chart($("queue-chart-throughput"), "Jobs ended per minute", q.history, THROUGHPUT);
  const known = v => v == null ? "" : v;
  $("queue-history").tBodies[0].replaceChildren(...q.history.slice().reverse().map(p =>
    el("tr", { "data-at": p.at },
      td(minuteText(p.at)), td(known(p.waiting), "num waiting"), td(known(p.running), "num running"),
      td(p.enqueued, "num enqueued"), td(p.succeeded, "num succeeded"),
      td(p.failed, "num failed"), td(p.retried, "num retried"), td(p.revoked, "num revoked"),
      td(p.expired, "num expired"))));
}

// ---------------------------------------------------------------- live jobs

function liveRow(j) {
  return jobRow(j.id, td(j.task || "", "task"), td(j.queue, "queue"),
    td(j.state, "state state-" + j.state), td(progressText(j.progress)), td(new Date(j.seen).toLocaleTimeString()));
}

function renderLive() {
  state.liveDirty = false;
  if (state.view !== "jobs") return;
  const rows = [...state.live.values()].sort((a, b) => b.seen - a.seen);
  $("live").tBodies[0].replaceChildren(...rows.map(liveRow));
}

// One redraw for a burst of events.
function renderLiveSoon() {
  if (state.liveDirty) return;
  state.liveDirty = true;
  setTimeout(renderLive, 200);
}

function noteJob(ev) {
  let j = state.live.get(ev.id);
  if (!j) {
    j = { id: ev.id, queue: ev.queue, task: null };
    state.lookups.push(ev.id);
  }
  j.state = ev.state;
  j.resync = 0;
  if (ev.progress) j.progress = ev.progress;
  j.seen = Date.now();
  state.live.delete(ev.id);
  state.live.set(ev.id, j);
  while (state.live.size > LIVE_MAX) state.live.delete(state.live.keys().next().value);
  pumpLookups();
  renderLiveSoon();
  if (state.view === "job" && state.job === ev.id) refreshSoon();
  // A member of the workflow shown moved.
  if (state.view === "workflow" && state.workflowJobs.has(ev.id)) refreshSoon();
}

// A workflow's event (its state or count changed): the view follows it.
function noteWorkflow(ev) {
  if (state.view === "workflow" && state.workflow === ev.id) refreshSoon();
}

// The event carries no task name: read it, a few jobs at a time.
function pumpLookups() {
  while (state.lookingUp < 4 && state.lookups.length > 0) {
    const id = state.lookups.shift();
    if (!state.live.has(id)) continue;
    const sent = state.live.get(id).resync || 0;
    state.lookingUp++;
    api("GET", "/v1/jobs/" + encodeURIComponent(id))
      .then(job => {
        const j = state.live.get(id);
        if (j && job) {
          j.task = job.task || job.module || "";
          if (sent && j.resync === sent) { j.state = job.state; j.resync = 0; }
          renderLiveSoon();
        }
      })
      .catch(() => {})
      .finally(() => { state.lookingUp--; pumpLookups(); });
  }
}

async function followEvents() {
  for (;;) {
    const ctl = new AbortController();
    state.stream = ctl;
    try {
      // Without a token too: a server with `open = true` asks for none.
      const token = state.token;
      const headers = token ? { "Authorization": "Bearer " + token } : {};
      const res = await fetch("/v1/events", { headers, signal: ctl.signal });
      if (res.status === 401 && !token) {
        $("live-state").textContent = "(no token)";
        while (!state.token) await sleep(1000);
        continue;
      }
      if (!res.ok) {
        let msg = res.statusText;
        try { msg = (await res.json()).error.message; } catch (_) {}
        throw new ApiError(res.status, explain(res.status, msg));
      }
      $("live-state").textContent = "(connected)";
      // Events sent while no stream was open are lost: read again the jobs
      // shown as not ended.
      resyncLive();
      const reader = res.body.getReader();
      const decoder = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, cut);
          buf = buf.slice(cut + 2);
          handleSse(block);
        }
      }
      $("live-state").textContent = "(reconnecting)";
    } catch (e) {
      if (ctl.signal.aborted) continue;
      $("live-state").textContent = "(disconnected: " + e.message + ")";
    }
    await sleep(1000);
  }
}

function handleSse(block) {
  let event = "message", data = "";
  for (const line of block.split("\n")) {
    if (line.startsWith("event:")) event = line.slice(6).trim();
    else if (line.startsWith("data:")) data += line.slice(5).trim();
  }
  if (!data) return;
  let payload;
  try { payload = JSON.parse(data); } catch (_) { return; }
  if (event === "job" && payload.queue === "~wf") noteWorkflow(payload);
  else if (event === "job") noteJob(payload);
  else if (event === "lagged") {
    $("live-state").textContent = "(missed " + payload.missed + " events)";
    resyncLive();
  }
}

// Reads again every live job not shown as ended (events were missed). Only
// a read sent for this resync sets the state (one sent before it may be
// older than the missed events), and an event that comes meanwhile is
// newer than the read and wins.
function resyncLive() {
  const stamp = ++state.resyncs;
  for (const j of state.live.values()) {
    if (FINAL.has(j.state)) continue;
    j.resync = stamp;
    if (!state.lookups.includes(j.id)) state.lookups.push(j.id);
  }
  pumpLookups();
  if (state.view === "job" || state.view === "workflow") refreshSoon();
}

function sleep(ms) { return new Promise(r => setTimeout(r, ms)); }

// ---------------------------------------------------------------- find jobs

function foundRow(j) {
  return jobRow(j.id, td(j.task || "", "task"), td(j.queue, "queue"),
    td(j.state, "state state-" + j.state), td(when(j.created_at)), td(when(j.finished_at)));
}

// A new search (`more` false) or the next page of the last one. Pages of
// filters the index does not answer may come back short, even empty, with
// more to read: "Older jobs" goes on.
async function findJobs(more) {
  if (!more) {
    const q = new URLSearchParams();
    for (const [key, id] of [["task", "find-task"], ["state", "find-state"], ["queue", "find-queue"], ["since", "find-since"]]) {
      const v = $(id).value.trim();
      if (v) q.set(key, v);
    }
    q.set("limit", "50");
    state.findQuery = q.toString();
    state.findNext = null;
    $("found").tBodies[0].replaceChildren();
  }
  if (more && !state.findNext) return;
  let path = "/v1/jobs?" + state.findQuery;
  if (more) path += "&cursor=" + encodeURIComponent(state.findNext);
  // Only the latest request's answer is shown; "Older jobs" waits for it.
  const asked = ++state.findAsked;
  $("find-more").disabled = true;
  say("find-message", "searching…");
  try {
    const page = await api("GET", path);
    if (asked !== state.findAsked) return;
    $("found").tBodies[0].append(...page.jobs.map(foundRow));
    state.findNext = page.next || null;
    $("find-more").hidden = !state.findNext;
    const shown = $("found").tBodies[0].rows.length;
    say("find-message", shown + (shown === 1 ? " job" : " jobs") + (state.findNext ? "; older ones may be left" : ""));
  } catch (e) {
    if (asked !== state.findAsked) return;
    $("find-more").hidden = true;
    say("find-message", e.message, true);
  } finally {
    if (asked === state.findAsked) $("find-more").disabled = false;
  }
}

// ---------------------------------------------------------------- workers

function heldTable(cls, caption, jobs, since) {
  return el("table", { class: cls },
    el("caption", { text: caption + ": " + jobs.length }),
    el("thead", {}, el("tr", {}, ...["job", "task", "queue", "attempt", since[0], "fuel used"].map(h => el("th", { text: h })))),
    el("tbody", {}, ...jobs.map(j =>
      jobRow(j.id, td(j.task || "", "task"), td(j.queue, "queue"), td(j.attempt, "num"),
        td(whenMs(j[since[1]])), td(j.fuel_used, "num fuel")))));
}

async function refreshWorkers() {
  const workers = await api("GET", "/v1/inspect");
  if (!changed("held", workers)) return;
  if (workers.length === 0) {
    $("held").replaceChildren(el("p", { text: "No worker answered." }));
    return;
  }
  $("held").replaceChildren(...workers.map(w =>
    el("div", { "data-worker": w.id },
      el("h3", { text: w.id + " on " + w.hostname + " (pid " + w.pid + ")" }),
      el("p", { text: "queues " + w.queues.join(", ") + "; concurrency " + w.concurrency +
        ", prefetch " + w.prefetch + "; processed " + w.processed + ", failed " + w.failed }),
      heldTable("active", "Running", w.active, ["started", "started_at"]),
      heldTable("reserved", "Prefetched", w.reserved, ["leased", "leased_at"]))));
}

// ---------------------------------------------------------------- one job

function openJob(id) {
  state.job = id;
  delete state.rendered.job;
  // Nothing of the job shown before stays on screen while this one is read.
  $("job-id").textContent = id;
  $("job-fields").replaceChildren();
  $("job-outcome").textContent = "";
  $("job-input").textContent = "";
  $("job-log").textContent = "";
  $("job-revoke").disabled = true;
  $("job-replay").disabled = true;
  state.jobQueue = null;
  say("job-message", "");
  showView("job");
}

// Several reads of the job view can be under way at once (the 2 s refresh,
// one per event of the job, one when a job is opened) and their answers can
// arrive in any order: an answer is shown only if its job is still the one
// selected and no later read of it has been shown.
async function refreshJob() {
  const id = state.job, asked = ++state.jobAsked;
  let job;
  try {
    job = await api("GET", "/v1/jobs/" + encodeURIComponent(id));
  } catch (e) {
    if (id !== state.job) return;
    throw e;
  }
  if (id !== state.job || asked < state.jobShown) return;
  state.jobShown = asked;
  if (!changed("job", job)) return;
  $("job-id").textContent = job.id;
  const fields = [
    ["task", job.task || job.module], ["state", job.state], ["queue", job.queue],
    ["attempt", job.attempt], ["progress", progressText(job.progress)],
    ["beat", job.schedule ? job.schedule + " (due " + when(job.scheduled_for) + ")" : ""],
    ["created", whenMs(job.created_at)], ["started", whenMs(job.started_at)], ["finished", whenMs(job.finished_at)],
    ["worker", job.worker], ["fuel", job.fuel_used], ["memory", bytesText(job.memory_peak_bytes)],
  ];
  // Parent and children open their jobs (buttons: keyboard too).
  const links = [["parent", job.parent ? [job.parent] : []], ["children", job.children || []]]
    .filter(([, ids]) => ids.length > 0)
    .flatMap(([k, ids]) => [el("dt", { text: k }), el("dd", { "data-field": k },
      ...ids.map(id => el("button", { type: "button", class: "link", text: id, onclick: () => openJob(id) })))]);
  if (job.workflow) {
    links.push(el("dt", { text: "workflow" }), el("dd", { "data-field": "workflow" },
      el("button", { type: "button", class: "link", text: job.workflow.id, onclick: () => openWorkflow(job.workflow.id) }),
      el("code", { text: " " + job.workflow.path })));
  }
  $("job-fields").replaceChildren(...fields.filter(f => f[1] != null && f[1] !== "").flatMap(([k, v]) =>
    [el("dt", { text: k }), el("dd", { text: String(v), class: k === "state" ? "state state-" + v : "", "data-field": k })]), ...links);
  const outcome = job.error !== undefined ? job.error : job.result;
  $("job-outcome").textContent = outcome === undefined ? "(not ended yet)" : JSON.stringify(outcome, null, 2);
  $("job-input").textContent = JSON.stringify(job.input, null, 2);
  $("job-log").textContent = (job.log || []).map(l => "+" + l.at_ms + " ms " + l.level + " " + l.message).join("\n")
    || (FINAL.has(job.state) ? "(nothing logged)" : "(kept when the run ends)");
  $("job-revoke").disabled = FINAL.has(job.state);
  // A job that failed for good is a dead letter: it can run again.
  $("job-replay").disabled = job.state !== "FAILURE";
  state.jobQueue = job.queue;
}

// Puts the job shown back as a fresh attempt (if it is still a dead letter
// of its queue); the view then follows its new run.
async function replayJob() {
  try {
    const r = await api("POST", "/v1/queues/" + encodeURIComponent(state.jobQueue) + "/replay", { ids: [state.job] });
    say("job-message", r.replayed.length ? "replayed: running again" : "not a dead letter any more: nothing replayed");
    refresh();
  } catch (e) { say("job-message", e.message, true); }
}

async function revokeJob() {
  try {
    const terminate = $("job-terminate").checked;
    const r = await api("POST", "/v1/jobs/" + encodeURIComponent(state.job) + "/revoke", { terminate });
    say("job-message", "revoke: " + r.outcome);
    refresh();
  } catch (e) { say("job-message", e.message, true); }
}

// ---------------------------------------------------------------- one workflow

function openWorkflow(id) {
  state.workflow = id;
  delete state.rendered.workflow;
  $("wf-id").textContent = id;
  $("wf-fields").replaceChildren();
  $("wf-tree").replaceChildren();
  $("wf-result").textContent = "";
  $("wf-revoke").disabled = true;
  say("wf-message", "");
  showView("workflow");
}

// One step of the tree: its kind, task, state and job (a button that
// opens the job), then its steps and its error callback.
function stepItem(s) {
  const head = [el("span", { class: "kind", text: s.kind }), el("code", { text: s.path })];
  if (s.task) head.push(el("span", { text: " " + s.task }));
  head.push(el("span", { class: "step-state " + s.state, text: s.state }));
  if (s.job) head.push(el("button", { type: "button", class: "link", text: s.job, onclick: () => openJob(s.job) }));
  if (s.error) head.push(el("span", { class: "error", text: " " + (s.error.message || JSON.stringify(s.error)) }));
  const li = el("li", { "data-path": s.path, "data-state": s.state }, ...head);
  const children = (s.steps || []).map(stepItem);
  if (s.on_error) children.push(stepItem(s.on_error));
  if (children.length) li.append(el("ul", {}, ...children));
  return li;
}

// As for jobs: only the answer to the latest read of the workflow shown.
async function refreshWorkflow() {
  const id = state.workflow;
  if (!id) return;
  const asked = ++state.workflowAsked;
  let wf;
  try {
    wf = await api("GET", "/v1/workflows/" + encodeURIComponent(id));
  } catch (e) {
    if (id !== state.workflow) return;
    throw e;
  }
  if (id !== state.workflow || asked < state.workflowShown) return;
  state.workflowShown = asked;
  if (!changed("workflow", wf)) return;
  const fields = [
    ["state", wf.state], ["done", wf.done + " / " + wf.total], ["failed", wf.failed || ""],
    ["created", whenMs(wf.created_at)], ["finished", whenMs(wf.finished_at)],
  ];
  $("wf-fields").replaceChildren(...fields.filter(f => f[1] != null && f[1] !== "").flatMap(([k, v]) =>
    [el("dt", { text: k }), el("dd", { text: String(v), "data-field": k })]));
  $("wf-tree").replaceChildren(stepItem(wf.tree));
  const jobs = new Set();
  (function walk(st) {
    if (st.job) jobs.add(st.job);
    (st.steps || []).forEach(walk);
    if (st.on_error) walk(st.on_error);
  })(wf.tree);
  state.workflowJobs = jobs;
  $("wf-result").textContent = wf.result !== undefined ? JSON.stringify(wf.result, null, 2)
    : wf.state === "running" ? "(not ended yet)" : "(none: the workflow " + wf.state + ")";
  $("wf-revoke").disabled = wf.state !== "running";
}

async function revokeWorkflow() {
  try {
    const terminate = $("wf-terminate").checked;
    const r = await api("POST", "/v1/workflows/" + encodeURIComponent(state.workflow) + "/revoke", { terminate });
    say("wf-message", "revoke: " + r.state);
    refresh();
  } catch (e) { say("wf-message", e.message, true); }
}

// ---------------------------------------------------------------- tasks

function grantsText(g) {
  if (!g) return "";
  return Object.keys(g).sort().join(", ");
}

async function refreshTasks() {
  const tasks = await api("GET", "/v1/tasks");
  if (!changed("tasks", tasks)) return;
  $("task-names").replaceChildren(...tasks.map(t => el("option", { value: t.name })));
  $("tasks").tBodies[0].replaceChildren(...tasks.map(t =>
    el("tr", { "data-task": t.name },
      td(t.name, "name"), td((t.module || "").slice(0, 19), "module"), td(t.queue),
      td(t.rate_limit || ""), td(grantsText(t.grants)), td(when(t.bound_at)),
      el("td", {}, el("button", { type: "button", text: "History", onclick: () => showHistory(t.name) })))));
}

async function showHistory(name) {
  say("history-message", "");
  try {
    const view = await api("GET", "/v1/tasks/" + encodeURIComponent(name));
    $("history-name").textContent = name;
    const rows = [view.binding, ...(view.history || [])];
    $("history-table").tBodies[0].replaceChildren(...rows.map((b, i) =>
      el("tr", { "data-module": b.module },
        td(b.module), td(b.queue), td(when(b.bound_at)),
        el("td", {}, i === 0 ? el("span", { text: "current" }) :
          el("button", { type: "button", text: "Roll back to this", onclick: () => rollback(name, b.module, b.bound_at) })))));
    $("history").hidden = false;
  } catch (e) { say("history-message", e.message, true); $("history").hidden = false; }
}

// The row's own binding: the history may hold several of one module.
async function rollback(name, module, boundAt) {
  try {
    await api("POST", "/v1/tasks/" + encodeURIComponent(name) + "/rollback", { to: module, bound_at: boundAt });
    delete state.rendered.tasks;
    await showHistory(name);
    say("history-message", name + " is bound to " + module + " again");
    refresh();
  } catch (e) { say("history-message", e.message, true); }
}

async function enqueue(ev) {
  ev.preventDefault();
  const err = $("enqueue-error");
  err.hidden = true;
  const task = $("enqueue-task").value.trim();
  let input;
  try { input = JSON.parse($("enqueue-input").value); }
  catch (e) { err.textContent = "input is not JSON: " + e.message; err.hidden = false; return; }
  try {
    const r = await api("POST", "/v1/jobs", { task, input });
    openJob(r.id);
  } catch (e) { err.textContent = e.message; err.hidden = false; }
}

// ---------------------------------------------------------------- schedules

function scheduleText(b) {
  if (b.cron) return b.cron;
  if (b.every) return "every " + b.every;
  return "";
}

async function refreshSchedules() {
  const beats = await api("GET", "/v1/schedules");
  if (!changed("schedules", beats)) return;
  $("schedules").tBodies[0].replaceChildren(...beats.map(b => {
    const last = b.last_job;
    const lastText = last ? (last.state || "forgotten") + " " + last.id + (last.error ? ": " + last.error : "") : "";
    const lastCell = td(lastText.trim(), "last-job");
    if (last && last.id) { lastCell.classList.add("clickable"); lastCell.addEventListener("click", () => openJob(last.id)); }
    return el("tr", { "data-beat": b.name },
      td(b.name, "name"), td(b.task), td(scheduleText(b)), td(b.timezone),
      td(b.enabled ? "yes" : "no", "enabled"),
      td(b.next_fire ? when(b.next_fire.local) : ""), td(b.last_fire ? when(b.last_fire.due.local) + (b.last_fire.manual ? " (by hand)" : "") : ""),
      lastCell,
      el("td", {},
        el("button", { type: "button", class: "fire", text: "Fire now", onclick: () => beatAction(b.name, "fire") }),
        " ",
        el("button", { type: "button", class: b.enabled ? "disable" : "enable", text: b.enabled ? "Disable" : "Enable",
          onclick: () => beatAction(b.name, b.enabled ? "disable" : "enable") })));
  }));
}

async function beatAction(name, action) {
  try {
    const r = await api("POST", "/v1/schedules/" + encodeURIComponent(name) + "/" + action);
    if (action === "fire" && r && r.id) {
      const box = $("schedule-message");
      box.className = "message";
      box.replaceChildren("fired " + name + ": job ",
        el("a", { href: "#", text: r.id, "data-job": r.id, onclick: e => { e.preventDefault(); openJob(r.id); } }));
    } else {
      say("schedule-message", name + ": " + action + "d");
    }
    delete state.rendered.schedules;
    refresh();
  } catch (e) { say("schedule-message", e.message, true); }
}

// ---------------------------------------------------------------- dead letters

async function refreshDead() {
  const queues = await api("GET", "/v1/queues");
  const withDead = queues.filter(q => q.dead > 0);
  const lists = await Promise.all(withDead.map(q => api("GET", "/v1/queues/" + encodeURIComponent(q.name) + "/dead")));
  const data = withDead.map((q, i) => ({ queue: q.name, jobs: lists[i] }));
  if (!changed("dead", data)) return;
  if (data.length === 0) {
    $("dead-queues").replaceChildren(el("p", { text: "No dead letters." }));
    return;
  }
  $("dead-queues").replaceChildren(...data.map(d =>
    el("div", { "data-queue": d.queue },
      el("h3", {}, el("span", { text: d.queue + " " }),
        el("button", { type: "button", text: "Replay all", onclick: () => replay(d.queue) })),
      el("table", {},
        el("thead", {}, el("tr", {}, ...["job", "task", "attempt", "error", "finished"].map(h => el("th", { text: h })))),
        el("tbody", {}, ...d.jobs.map(j =>
          jobRow(j.id, td(j.task || j.module), td(j.attempt, "num"),
            td(j.error ? (j.error.message || JSON.stringify(j.error)) : ""), td(when(j.finished_at)))))))));
}

async function replay(queue) {
  try {
    const r = await api("POST", "/v1/queues/" + encodeURIComponent(queue) + "/replay", { ids: [] });
    say("dead-message", queue + ": replayed " + r.replayed.length);
    delete state.rendered.dead;
    refresh();
  } catch (e) { say("dead-message", e.message, true); }
}

// ---------------------------------------------------------------- start

function useToken(token) {
  state.token = token;
  if (token) sessionStorage.setItem("runner.token", token);
  else sessionStorage.removeItem("runner.token");
  state.rendered = {};
  if (state.stream) state.stream.abort();
  refresh();
}

function start() {
  // A token in the fragment (never sent to the server) wins; then drop it
  // from the address bar.
  const m = /(?:^|[#&])token=([^&]+)/.exec(location.hash);
  if (m) {
    // Taken as written when it is not valid percent-encoding (the API
    // then refuses it, and the page says so).
    try { state.token = decodeURIComponent(m[1]); } catch (e) { state.token = m[1]; }
    sessionStorage.setItem("runner.token", state.token);
    history.replaceState(null, "", location.pathname + location.search);
  } else {
    state.token = sessionStorage.getItem("runner.token") || "";
  }
  for (const b of document.querySelectorAll("#nav button")) b.addEventListener("click", () => showView(b.dataset.view));
  $("token-form").addEventListener("submit", e => { e.preventDefault(); useToken($("token").value.trim()); $("token").value = ""; });
  $("enqueue-form").addEventListener("submit", enqueue);
  $("find-form").addEventListener("submit", e => { e.preventDefault(); findJobs(false); });
  $("find-more").addEventListener("click", () => findJobs(true));
  $("job-revoke").addEventListener("click", revokeJob);
  $("job-replay").addEventListener("click", replayJob);
  $("wf-revoke").addEventListener("click", revokeWorkflow);
  $("wf-form").addEventListener("submit", e => {
    e.preventDefault();
    const id = $("wf-open").value.trim();
    if (id) openWorkflow(id);
  });
  showView("overview");
  setInterval(refresh, REFRESH_MS);
  followEvents();
}

document.addEventListener("DOMContentLoaded", start);
