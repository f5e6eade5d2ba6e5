// Mosaic dashboard: plain JS, no build step.  Everything shown comes from peers' signed records
// and query traces, i.e. remote input: it is only ever inserted as text (textContent), never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { peers: [], queries: new Map(), usage: {}, names: {}, asked: null };
let token = null;

// ------------------------------------------------------------------ token (docs/operators.md)

function readToken() {
  const match = /(?:^|&)token=([^&]*)/.exec(location.hash.slice(1));
  if (match) {
    sessionStorage.setItem("mosaic-token", decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname + location.search); // keep it out of the address bar
  }
  token = sessionStorage.getItem("mosaic-token");
}

function authHeaders(extra) {
  const headers = Object.assign({}, extra || {});
  if (token) headers.Authorization = "Bearer " + token;
  return headers;
}

class Unauthorized extends Error {}

async function api(path, options) {
  const opts = Object.assign({}, options || {});
  opts.headers = authHeaders(opts.headers);
  const reply = await fetch(path, opts);
  if (reply.status === 401) { askForToken(); throw new Unauthorized("token required"); }
  return reply;
}

function askForToken() {
  $("token-form").hidden = false;
  $("token-input").focus();
}

// ------------------------------------------------------------------ small DOM helpers

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

const short = (id) => (id && id.length > 12 ? "…" + id.slice(-8) : id || "");
const secs = (s) => (s === null || s === undefined ? "–" : s < 10 ? s.toFixed(2) + " s" : s.toFixed(0) + " s");

function peerLabel(peerId) {
  const name = state.names[peerId];
  return el("span", { class: "peer", "data-peer": peerId, title: peerId }, name ? `${name} (${short(peerId)})` : short(peerId));
}

// ------------------------------------------------------------------ peers

const KNOWN_RECORD_FIELDS = new Set(["v", "t", "peer_id", "multiaddrs", "name", "description", "tags", "base_model",
  "base_model_cid", "adapters", "tokenizer", "max_context", "device", "load", "queue_depth", "seq", "issued_at", "ttl"]);

function renderPeers(peers) {
  state.peers = peers;
  for (const p of peers) state.names[p.record.peer_id] = p.record.name;
  const body = $("peers").tBodies[0];
  body.replaceChildren(...peers.map((p) => {
    const r = p.record;
    const adapters = (r.adapters || []).map((a) => el("div", {}, el("b", { text: a.name }), " ",
      a.cid ? el("span", { class: "cid", title: "adapter CID" }, a.cid) : null,
      a.description ? el("div", { class: "muted", text: a.description }) : null));
    // Anything the record carries beyond the fields above (dev scores, evaluations, ...), shown as is.
    const extra = Object.entries(r).filter(([k, v]) => !KNOWN_RECORD_FIELDS.has(k) && !isEmpty(v));
    const scores = extra.map(([k, v]) => el("div", {}, el("span", { class: "muted", text: k + ": " }), renderValue(v)));
    return el("tr", { "data-peer-id": r.peer_id },
      el("td", {}, el("b", { class: "expert-name", text: r.name }), " ",
        p.self ? el("span", { class: "badge self", text: "this node" }) : null,
        el("div", {}, el("code", { title: r.peer_id, text: short(r.peer_id) })),
        r.description ? el("div", { class: "muted", text: r.description }) : null),
      el("td", {}, ...(r.tags || []).map((t) => el("span", { class: "tag", text: t }))),
      el("td", {}, r.base_model ? el("div", { text: r.base_model }) : el("span", { class: "muted", text: "no model (coordinator)" }),
        r.base_model_cid ? el("div", { class: "cid", title: "base model CID", text: r.base_model_cid }) : null,
        r.base_model ? el("div", { class: "muted", text: r.device }) : null),
      el("td", {}, ...adapters),
      el("td", {}, ...scores),
      el("td", {}, r.base_model ? `${(r.load * 100).toFixed(0)}% · queue ${r.queue_depth}` : "–"),
      el("td", {}, secs(p.latency_s), p.recent_failures ? el("div", { class: "unverified", text: `${p.recent_failures} recent failures` }) : null,
        p.reputation && p.reputation.demoted ? el("div", { class: "unverified", title: p.reputation.demoted_why || "", text: "demoted (lying?)" }) : null),
      el("td", {}, p.last_seen_s === null ? "–" : `${secs(p.last_seen_s)} ago`, el("div", { class: "muted", text: p.source || "" })));
  }));
  $("peer-count").textContent = `(${peers.length})`;
}

// Fields left at their default say nothing: false, 0, "", null, [] and {}.
function isEmpty(v) {
  return v === null || v === undefined || v === false || v === 0 || v === "" ||
    (Array.isArray(v) && v.length === 0) || (typeof v === "object" && !Array.isArray(v) && Object.keys(v).length === 0);
}

function renderValue(v) {
  if (v === null || typeof v !== "object") return document.createTextNode(String(v));
  return el("code", {}, JSON.stringify(v));
}

// ------------------------------------------------------------------ traces (any shape, drawn as a tree)

const PEER_KEYS = ["peer", "peer_id", "served_by"];
const HEAD_KEYS = ["role", "kind", "step", "strategy", "expert", "model", "adapter", "status"];

// Provenance is the trace of a query that has none (before the coordinator recorded traces).
function traceOf(trace, provenance) {
  if (trace !== null && trace !== undefined) return trace;
  return (provenance || []).map((p) => Object.assign({ role: p.role || "answer" }, p));
}

function renderTrace(trace) {
  if (trace && typeof trace === "object" && Array.isArray(trace.steps)) return renderStepTrace(trace);
  return el("ul", {}, ...(Array.isArray(trace) ? trace : [trace]).map(renderStep));
}

// A trace made of numbered steps (protocol/trace.py): the strategy and its decision at the root,
// then one branch per round, and a failover (a step that `continues` another) under the step it took over from.
function renderStepTrace(trace) {
  const { steps, t, v, request_id, ...about } = trace; // t, v: the message envelope
  const known = new Set(steps.map((s) => s.index));
  const takeovers = new Map();
  const tops = [];
  for (const step of steps) {
    if (step.continues !== null && step.continues !== undefined && known.has(step.continues)) {
      if (!takeovers.has(step.continues)) takeovers.set(step.continues, []);
      takeovers.get(step.continues).push(step);
    } else tops.push(step);
  }
  const branch = (step) => {
    const { index, round, continues, ...shown } = step;
    const item = renderStep(shown);
    item.dataset.step = index;
    const next = takeovers.get(index);
    if (next) item.append(el("div", { class: "muted", text: "failover: continued by" }), el("ul", {}, ...next.map(branch)));
    return item;
  };
  const rounds = [...new Set(tops.map((s) => s.round || 0))].sort((a, b) => a - b);
  const root = renderStep(Object.assign({ role: about.strategy || "query" }, about, { strategy: undefined }));
  if (rounds.length > 1) {
    root.append(el("ul", {}, ...rounds.map((r) => el("li", { class: "step" }, el("span", { class: "role", text: "round " + r }),
      el("ul", {}, ...tops.filter((s) => (s.round || 0) === r).map(branch))))));
  } else {
    root.append(el("ul", {}, ...tops.map(branch)));
  }
  return el("ul", {}, root);
}

function renderStep(step) {
  if (step === null || typeof step !== "object" || Array.isArray(step)) {
    return el("li", { class: "step" }, Array.isArray(step) ? renderTrace(step) : String(step));
  }
  const failed = step.error || step.failover || step.status === "failed" || step.ok === false;
  const head = el("div", { class: "head" });
  const role = step.role || step.kind || step.step || step.strategy || "step";
  head.append(el("span", { class: "role", text: role }));
  for (const key of PEER_KEYS) {
    if (typeof step[key] === "string" && step[key]) { head.append(" "); head.append(peerLabel(step[key])); break; }
  }
  if (step.expert && step.expert !== state.names[step.peer || step.peer_id || step.served_by]) {
    head.append(el("span", { class: "field", text: step.expert }));
  }
  if (step.adapter) head.append(el("span", { class: "field", text: "adapter " + step.adapter }));
  if (typeof step.verified === "boolean") {
    head.append(el("span", { class: "field " + (step.verified ? "verified" : "unverified"),
      text: step.verified ? "receipt verified" : "receipt NOT verified" }));
  } else if (step.receipt) {
    head.append(el("span", { class: "field", text: "signed receipt (not checked here)" }));
  }
  const children = [];
  const fields = [];
  for (const [key, value] of Object.entries(step)) {
    if (PEER_KEYS.includes(key) || ["role", "kind", "step", "expert", "adapter", "verified", "receipt"].includes(key)) continue;
    if (key === "receipt_check" && step.verified === true) continue; // the detail matters when a check fails
    if (isEmpty(value) && value !== 0) continue;
    if (key === "dropped_steps" && !value) continue;
    if (key === "call" && value === "generate") continue; // the default call; score / next_token stand out
    if (Array.isArray(value) && value.some((v) => v && typeof v === "object")) children.push([key, value]);
    else if (typeof value === "object" && !Array.isArray(value) && Object.values(value).some((v) => v && typeof v === "object")) children.push([key, value]);
    else fields.push([key, value]);
  }
  for (const [key, value] of fields) {
    let text;
    if (typeof value === "number" && /(_s|seconds)$/.test(key)) text = `${key} ${secs(value)}`;
    else if (typeof value === "object") text = `${key} ${JSON.stringify(value)}`;
    else if (/digest$/.test(key) && typeof value === "string") text = `${key} ${value.slice(0, 19)}…`;
    else text = `${key} ${String(value).length > 80 ? String(value).slice(0, 80) + "…" : value}`;
    head.append(el("span", { class: "field", text }));
  }
  const item = el("li", { class: "step" + (failed ? " failed" : "") }, head);
  for (const [key, value] of children) {
    item.append(el("div", { class: "muted", text: key }), renderTrace(value));
  }
  return item;
}

// ------------------------------------------------------------------ queries feed

function renderQuery(q) {
  state.queries.set(q.request_id, q);
  let item = document.querySelector(`#queries li[data-request-id="${CSS.escape(q.request_id)}"]`);
  const fresh = el("li", { "data-request-id": q.request_id },
    el("div", {}, el("b", { text: q.strategy }), el("span", { class: "muted", text: ` via ${q.protocol} · ` }),
      el("span", { class: "status-" + q.status, text: q.status }),
      q.seconds !== null ? el("span", { class: "muted", text: ` · ${secs(q.seconds)}` }) : null,
      q.first_token_s !== null ? el("span", { class: "muted", text: ` · first token ${secs(q.first_token_s)}` }) : null,
      q.completion_tokens ? el("span", { class: "muted", text: ` · ${q.completion_tokens} tokens` }) : null),
    el("div", { class: "muted", text: "“" + q.prompt + "”" }),
    q.error ? el("div", { class: "status-error", text: `${q.error.code}: ${q.error.message}` }) : null,
    q.answer ? el("div", { class: "answer", text: q.answer }) : null,
    q.status === "ok" ? el("div", { class: "trace" }, renderTrace(traceOf(q.trace, q.provenance))) : null);
  if (item) item.replaceWith(fresh);
  else $("queries").prepend(fresh);
  // The node's own record of the question asked from the box carries its receipts checked: show that one.
  if (q.request_id === state.asked && q.status === "ok") {
    $("ask-trace").replaceChildren(renderTrace(traceOf(q.trace, q.provenance)));
    $("ask-trace").dataset.checked = "1";
  }
  while ($("queries").children.length > 50) $("queries").lastChild.remove();
}

function renderUsage(usage) {
  state.usage = usage;
  const rows = Object.entries(usage).sort((a, b) => b[1].won - a[1].won || b[1].served - a[1].served);
  $("usage").tBodies[0].replaceChildren(...rows.map(([peer, u]) => el("tr", { "data-peer-id": peer },
    el("td", { text: u.name || state.names[peer] || "" }), el("td", {}, el("code", { title: peer, text: short(peer) })),
    el("td", { text: u.served }), el("td", { text: u.won }), el("td", { text: u.completion_tokens }))));
}

async function renderReport(report) {
  if (!report || !report.files.length) { $("report-section").hidden = true; return; }
  $("report-section").hidden = false;
  $("report-name").textContent = report.name;
  const box = $("report");
  if (box.dataset.key === report.name + report.modified) return;
  box.dataset.key = report.name + report.modified;
  box.replaceChildren();
  for (const file of report.files) {
    // <img src> cannot send the bearer token: fetch the plot and show it as a blob.
    const reply = await api(file.url);
    if (!reply.ok) continue;
    if (file.name.endsWith(".md")) {
      box.append(el("details", {}, el("summary", { text: file.name }), el("pre", { text: await reply.text() })));
    } else {
      box.append(el("img", { alt: file.name, title: file.name, src: URL.createObjectURL(await reply.blob()) }));
    }
  }
}

function renderState(s) {
  $("node-name").textContent = s.node.name;
  $("node-id").textContent = s.node.peer_id;
  const relays = ((s.node.nat || {}).reservations || {}).relays || [];
  $("node-reach").textContent = `reachability: ${s.node.reachability || "unknown"}` +
    (relays.length ? ` via ${relays.length} relay(s)` : "");
  renderPeers(s.peers);
  $("queries").replaceChildren();
  for (const q of s.queries) renderQuery(q);
  renderUsage(s.usage);
  renderReport(s.report).catch(() => {});
}

// ------------------------------------------------------------------ server-sent events over fetch
// (EventSource cannot send an Authorization header; fetch + a stream reader can.)

async function* sseEvents(reply) {
  const reader = reply.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
      if (data) yield data;
    }
  }
}

async function follow() {
  let delay = 1000;
  for (;;) {
    try {
      const reply = await api("/v1/dashboard/events");
      if (!reply.ok) throw new Error("events: HTTP " + reply.status);
      setLive(true);
      delay = 1000;
      for await (const data of sseEvents(reply)) {
        const event = JSON.parse(data);
        if (event.type === "state") renderState(event.state);
        else if (event.type === "peers") renderPeers(event.peers);
        else if (event.type === "query") renderQuery(event.query);
        else if (event.type === "usage") renderUsage(event.usage);
      }
    } catch (err) {
      if (err instanceof Unauthorized) { setLive(false); return; }
    }
    setLive(false);
    await new Promise((resolve) => setTimeout(resolve, delay));
    delay = Math.min(delay * 2, 15000);
  }
}

function setLive(on) {
  $("live").textContent = on ? "live" : "offline";
  $("live").className = "badge " + (on ? "on" : "off");
}

// ------------------------------------------------------------------ ask box

async function loadStrategies() {
  const reply = await api("/v1/models");
  const models = (await reply.json()).data;
  const select = $("strategy");
  const strategies = models.filter((m) => m.id.startsWith("mosaic/")).map((m) => m.id);
  select.replaceChildren(...strategies.map((id) => el("option", { value: id, text: id.slice("mosaic/".length) })));
}

async function ask(event) {
  event.preventDefault();
  const answer = $("answer");
  answer.textContent = "";
  $("ask-trace").replaceChildren();
  $("ask-meta").textContent = "asking…";
  $("ask-button").disabled = true;
  try {
    const reply = await api("/v1/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({
        model: $("strategy").value, stream: true, stream_options: { include_usage: true },
        max_tokens: Number($("max-tokens").value) || 256,
        messages: [{ role: "user", content: $("question").value }],
      }),
    });
    if (!reply.ok) {
      const body = await reply.json().catch(() => ({}));
      throw new Error((body.error && body.error.message) || "HTTP " + reply.status);
    }
    const servedBy = reply.headers.get("x-mosaic-served-by");
    state.asked = reply.headers.get("x-mosaic-request-id");
    $("ask-trace").dataset.checked = "";
    $("ask-meta").textContent = servedBy ? `answering: ${state.names[servedBy] || short(servedBy)}` : "answering…";
    let final = null;
    let usage = null;
    for await (const data of sseEvents(reply)) {
      if (data === "[DONE]") break;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.usage) usage = chunk.usage;
      for (const choice of chunk.choices || []) {
        if (choice.delta && choice.delta.content) answer.textContent += choice.delta.content;
        if (choice.finish_reason) final = chunk.mosaic || {};
      }
    }
    const parts = [];
    if (final && final.strategy) parts.push("strategy " + final.strategy);
    if (final && final.seconds !== undefined) parts.push(secs(final.seconds));
    if (usage) parts.push(`${usage.completion_tokens} tokens`);
    $("ask-meta").textContent = parts.join(" · ");
    const recorded = state.queries.get(state.asked);
    if (recorded && recorded.status === "ok") renderQuery(recorded); // its checked trace arrived first
    else if (final) $("ask-trace").replaceChildren(renderTrace(traceOf(final.trace, final.provenance)));
    $("ask-trace").dataset.done = "1";
  } catch (err) {
    if (!(err instanceof Unauthorized)) $("ask-meta").textContent = "error: " + err.message;
  } finally {
    $("ask-button").disabled = false;
  }
}

// ------------------------------------------------------------------ start

async function start() {
  readToken();
  $("token-form").hidden = true;
  try {
    await loadStrategies();
  } catch (err) {
    if (err instanceof Unauthorized) return;
  }
  follow();
}

$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem("mosaic-token", $("token-input").value);
  start();
});
$("ask").addEventListener("submit", ask);
start();
