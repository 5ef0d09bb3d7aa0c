// The explorer: hash routes, one view per page, each rebuilt from the node's JSON API every
// REFRESH_MS while it is shown. Everything from the API is text to this page (textContent only):
// names and fields come from devices and peers, never trusted as markup.
(() => {
"use strict";

const REFRESH_MS = 2000;
const { lineChart } = window.charts;

// --- small DOM helpers -------------------------------------------------------------------------
function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = v; else el.setAttribute(k, String(v));
  }
  for (const kid of kids.flat()) {
    if (kid === undefined || kid === null || kid === false) continue;
    el.appendChild(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return el;
}
const link = (href, text, cls) => h("a", { href, class: cls }, text);
const short = (hex, n) => (typeof hex === "string" ? hex.slice(0, n || 16) : "-");
const mono = (text) => h("span", { class: "mono" }, text);
const fmtTime = (ms) => (typeof ms === "number" && ms > 0 ? new Date(ms).toISOString().replace("T", " ").slice(0, 19) : "-");
const kb = (n) => (typeof n === "number" ? (n / 1024).toFixed(0) : "-");
const fmtMetric = (v) => (typeof v === "number" ? (Math.abs(v) >= 100 ? v.toFixed(1) : v.toPrecision(4)) : String(v));

function table(headers, rows, empty) {
  if (!rows.length) return h("p", { class: "muted" }, empty || "none");
  return h("table", {},
    h("thead", {}, h("tr", {}, headers.map((x) => h("th", { class: x.endsWith("#") ? "num" : null }, x.replace(/#$/, ""))))),
    h("tbody", {}, rows.map((r) => h("tr", {}, r.map((c, i) => h("td", { class: headers[i].endsWith("#") ? "num" : null }, c))))));
}
function cards(pairs) {
  return h("div", { class: "cards" }, pairs.map(([k, v]) => h("div", { class: "card" }, h("div", { class: "k" }, k), h("div", { class: "v" }, v))));
}
function kv(pairs) {
  return h("dl", { class: "kv" }, pairs.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

async function api(path) {
  const r = await fetch(path, { cache: "no-store" });
  let body;
  try { body = await r.json(); } catch (e) { throw new Error(`${path}: HTTP ${r.status}, not JSON`); }
  if (!r.ok) throw new Error(body && body.error ? body.error : `${path}: HTTP ${r.status}`);
  return body;
}

// --- links between pages ----------------------------------------------------------------------
const blockLink = (hgt) => link(`#/block/${hgt}`, String(hgt));
const txLink = (id, n) => link(`#/tx/${id}`, short(id, n), "mono");
const deviceLink = (key, text) => link(`#/device/${key}`, text || short(key));
const modelLink = (run, round, text) => link(`#/model/${run}/${round}`, text || `round ${round}`);
const runLink = (run, text) => link(`#/run/${run}`, text || short(run, 12), "mono");

// --- federation ----------------------------------------------------------------------------------
function throughputSeries(blocks) {
  // Finalized readings per second in equal time bins over the blocks shown.
  if (!blocks.length) return [];
  const t0 = blocks[0].time_ms, t1 = blocks[blocks.length - 1].time_ms;
  const binMs = Math.max(1000, Math.ceil((t1 - t0) / 60 / 1000) * 1000);
  const bins = new Map();
  for (const b of blocks) {
    const k = Math.floor((b.time_ms - t0) / binMs);
    bins.set(k, (bins.get(k) || 0) + b.readings);
  }
  const last = Math.floor((t1 - t0) / binMs);
  const pts = [];
  for (let k = 0; k <= last; k++) pts.push([t0 + k * binMs, (bins.get(k) || 0) / (binMs / 1000)]);
  return pts;
}

async function viewFederation() {
  const [st, peers, act] = await Promise.all([api("/status"), api("/peers"), api("/activity?last=300")]);
  const heights = new Map(peers.peers.map((p) => [p.key, p.height]));
  const sync = st.sync || {};
  const rejected = Object.entries(st.rejected || {});
  return [
    h("h1", {}, `Federation ${st.chain_id}`),
    cards([
      ["height", st.height], ["head", mono(short(st.head_hash))], ["head time", fmtTime(st.head_time_ms)],
      ["consensus", `h ${st.consensus.height} r ${st.consensus.round} ${st.consensus.step}`],
      ["readings", st.readings], ["devices", st.devices], ["transactions", st.txs],
      ["mempool", st.mempool], ["peers", st.peers],
      ["sync", sync.syncing ? `syncing ${sync.height}/${sync.target_height} (${sync.mode})` : `caught up (${sync.mode || "-"})`],
      ["finality p50 / p99", st.finality_ms && st.finality_ms.p50 != null ? `${st.finality_ms.p50.toFixed(0)} / ${st.finality_ms.p99.toFixed(0)} ms` : "-"],
      ["this node", `${st.name} (${st.node_id}, ${st.role})`],
    ]),
    h("h2", {}, "Finalized readings per second"),
    lineChart([{ name: "readings/s", points: throughputSeries(act.blocks) }],
      { id: "chart-throughput", time: true, xPad: 30000, yLabel: "readings/s", xLabel: "block time (UTC)", empty: "no blocks yet" }),
    h("p", { class: "muted" }, `over the last ${act.blocks.length} blocks`),
    h("h2", {}, `Validators (${st.validators.length})`),
    table(["node", "height#", ""], st.validators.map((v) => {
      const me = v.public_key === st.public_key;
      const hgt = me ? st.height : heights.get(v.public_key);
      return [mono(v.node_id), hgt == null ? "-" : hgt, me ? "this node" : heights.has(v.public_key) ? "connected" : h("span", { class: "bad" }, "not connected")];
    })),
    h("h2", {}, `Peers (${peers.peers.length})`),
    table(["node", "url", "role", "direction", "height#", "misbehaviour score#", "KB in#", "KB out#"], peers.peers.map((p) => [
      mono(p.short_id), p.url || "-", p.role || "-", p.direction, p.height == null ? "-" : p.height,
      typeof p.score === "number" ? p.score.toFixed(1) : "-", kb(p.bytes_in), kb(p.bytes_out)])),
    h("h2", {}, "Refused at this node"),
    table(["reason", "count#"], rejected.sort((a, b) => b[1] - a[1]), "nothing refused"),
  ];
}

// --- blocks --------------------------------------------------------------------------------------
const PAGE = 20;
async function viewBlocks(q) {
  const to = q.get("to");
  const hi = Number(to);
  const res = await api(Number.isInteger(hi) && hi >= 1 ? `/blocks?from=${Math.max(1, hi - PAGE + 1)}&to=${hi}` : "/blocks");
  const blocks = res.blocks.slice().reverse();
  const top = blocks.length ? blocks[0].height : 0, bottom = blocks.length ? blocks[blocks.length - 1].height : 0;
  return [
    h("h1", {}, `Blocks (height ${res.height})`),
    h("div", { class: "pager" },
      top < res.height ? link(`#/blocks?to=${Math.min(res.height, top + PAGE)}`, "← newer") : h("span", { class: "muted" }, "newest"),
      bottom > 1 ? link(`#/blocks?to=${bottom - 1}`, "older →") : h("span", { class: "muted" }, "oldest")),
    table(["height#", "time (UTC)", "round#", "proposer", "txs#", "hash"], blocks.map((b) => [
      blockLink(b.height), fmtTime(b.time_ms), b.round, mono(b.proposer), b.num_txs, mono(short(b.hash))]), "no blocks yet"),
  ];
}

function describeTx(t) {
  const b = t.body || {};
  if (t.kind === "reading") return [deviceLink(b.device, `device ${short(b.device, 8)}`), ` seq ${b.seq}  ${Number(b.temperature_c).toFixed(2)} °C  ${Number(b.humidity_pct).toFixed(1)} %RH`];
  if (t.kind === "register_device") return ["device ", deviceLink(b.device, `${b.name} (${short(b.device, 8)})`)];
  if (t.kind === "model_update" || t.kind === "model_commit") return [`${b.task} `, modelLink(b.run, b.round)];
  if (t.kind === "train_request") return [runLink(t.id, `${b.task}, ${b.rounds} rounds, ${b.strategy}`)];
  if (t.kind === "join_request" || t.kind === "member_vote") return [link("#/members", `${b.action || "join"} as ${b.role}`)];
  return [];
}

const TX_PAGE = 100;
async function viewBlock(hgt, q) {
  const b = await api(`/block/${hgt}`);
  const commit = b.commit;
  const pages = Math.max(1, Math.ceil(b.txs.length / TX_PAGE));
  const pg = Math.min(pages, Math.max(1, Number(q.get("page")) || 1));
  const shown = b.txs.slice((pg - 1) * TX_PAGE, pg * TX_PAGE);
  return [
    h("h1", {}, `Block ${b.height}`),
    h("div", { class: "pager" }, b.height > 1 ? link(`#/block/${b.height - 1}`, "← previous") : null, link(`#/block/${b.height + 1}`, "next →")),
    kv([["hash", mono(b.hash)], ["time", fmtTime(b.time_ms)], ["round", b.round], ["proposer", mono(b.proposer)],
        ["previous", b.height > 1 ? link(`#/block/${b.height - 1}`, short(b.prev_hash), "mono") : mono(short(b.prev_hash))],
        ["commit certificate", commit ? `round ${commit.round}, ${b.commit_signers.length} of ${b.validators} validators` : "none stored"],
        ["signers", b.commit_signers.length ? mono(b.commit_signers.join(" ")) : "-"]]),
    h("h2", {}, `Transactions (${b.txs.length})`),
    pages > 1 ? h("div", { class: "pager" }, `page ${pg} of ${pages}`,
      pg > 1 ? link(`#/block/${b.height}?page=${pg - 1}`, "← previous txs") : null,
      pg < pages ? link(`#/block/${b.height}?page=${pg + 1}`, "next txs →") : null) : null,
    table(["#", "kind", "id", ""], shown.map((t, i) => [(pg - 1) * TX_PAGE + i, t.kind, txLink(t.id), h("span", {}, describeTx(t))]), "no transactions"),
  ];
}

async function viewTx(id) {
  const t = await api(`/tx/${id}`);
  const body = t.tx.body || {};
  const field = (v) => {
    if (typeof v === "object") return mono(JSON.stringify(v));
    if (typeof v !== "string" || v.length <= 40) return String(v);
    // Model weights are kilobytes of hex: show their start and size, not all of it.
    return mono(v.length > 256 ? `${v.slice(0, 64)}… (${v.length / 2} bytes)` : v);
  };
  const fields = Object.entries(body).map(([k, v]) => [k, field(v)]);
  return [
    h("h1", {}, `Transaction ${short(t.id)}`),
    kv([["id", mono(t.id)], ["kind", t.kind], ["block", blockLink(t.height)], ["index", t.index], ["signer", mono(t.signer)],
        ["links", h("span", { id: "tx-links" }, describeTx({ kind: t.kind, id: t.id, body }))]]),
    h("h2", {}, "Body"),
    kv(fields),
  ];
}

// --- devices -------------------------------------------------------------------------------------
async function viewDevices() {
  const res = await api("/devices");
  return [
    h("h1", {}, `Devices (${res.devices.length})`),
    table(["name", "device", "owner", "last seq#", "registered at#"], res.devices.map((d) => [
      deviceLink(d.device, d.name || d.id), mono(d.id), mono(d.owner), d.last_seq == null ? "-" : d.last_seq, blockLink(d.registered_height)]), "no devices registered"),
  ];
}

async function viewDevice(key) {
  const [d, susp] = await Promise.all([api(`/device/${key}?last=300`), suspiciousView(SUSPICIOUS_HOURS)]);
  const temp = d.readings.map((r) => [r.timestamp_ms, r.temperature_c]);
  const hum = d.readings.map((r) => [r.timestamp_ms, r.humidity_pct]);
  const refused = Object.entries(d.refused);
  return [
    h("h1", {}, `Device ${d.name || d.id}`),
    kv([["device", mono(d.device)], ["owner", `${d.owner.name || "-"} (${d.owner.node_id}, ${d.owner.role})`],
        ["registered at", blockLink(d.registered_height)], ["last sequence", d.last_seq == null ? "no reading yet" : d.last_seq]]),
    h("h2", {}, `Latest ${d.readings.length} readings`),
    h("div", { class: "charts" },
      lineChart([{ name: "temperature °C", color: "#dc2626", points: temp }], { id: "chart-temperature", time: true, xPad: 30000, yLabel: "°C", xLabel: "reading time (UTC)" }),
      lineChart([{ name: "humidity %RH", color: "#2563eb", points: hum }], { id: "chart-humidity", time: true, xPad: 30000, yLabel: "%RH", xLabel: "reading time (UTC)" })),
    table(["seq#", "time (UTC)", "°C#", "%RH#", "block#", "tx"], d.readings.slice(-10).reverse().map((r) => [
      r.seq, fmtTime(r.timestamp_ms), r.temperature_c.toFixed(2), r.humidity_pct.toFixed(1), blockLink(r.height), txLink(r.tx, 12)]), "no readings yet"),
    h("h2", {}, `Suspicious windows (latest ${SUSPICIOUS_HOURS} h)`),
    deviceFlags(susp, key, d.name),
    h("h2", {}, "Readings refused by this node"),
    table(["reason", "count#"], refused.sort((a, b) => b[1] - a[1]), "none refused by this node (refusals are not on the ledger: each node counts its own)"),
    h("h2", {}, "Models its owner contributed to"),
    table(["run", "round#", "update", "block#"], d.owner_updates.map((u) => [runLink(u.run), modelLink(u.run, u.round), txLink(u.tx, 12), blockLink(u.height)]), "no model updates by the owner in the latest runs"),
  ];
}

// --- suspicious readings --------------------------------------------------------------------------
// The node scores the latest readings against the committed fingerprints in a background thread
// and caches the answer (202 while the first one is computed, 429 when asked for too many views):
// the page shows what it has and asks again at the next refresh.
const SUSPICIOUS_HOURS = 48;
async function suspiciousView(hours) {
  try {
    const r = await fetch(`/suspicious?hours=${hours}`, { cache: "no-store" });
    const body = await r.json();
    // 202 (computing), 429 (too many views lately) and 503 (stopping) say what to wait for.
    if (r.ok || r.status === 429 || r.status === 503) return body;
    return { state: "failed", detail: body.error || `HTTP ${r.status}` };
  } catch (e) {
    return { state: "failed", detail: String(e.message || e) };
  }
}

const FLAG_HEADERS = ["device", "from (UTC)", "to (UTC)", "hours#", "windows#", "looks like", "score#", "flagged above#"];
function flagRows(s, flags) {
  return flags.map((f) => {
    const unknown = f.kind === "unknown_device";
    const copy = f.kind === "copy_of";
    return [
      f.device_key ? deviceLink(f.device_key, f.device) : f.device, fmtTime(f.start_ms), fmtTime(f.end_ms), f.hours, f.windows,
      unknown ? h("span", { class: "bad" }, "no known device") : f.looks_like_key ? deviceLink(f.looks_like_key, f.looks_like) : f.looks_like,
      unknown ? `${fmtMetric(f.score)} (distance)` : copy ? `${fmtMetric(f.score)} (replays it)` : `${fmtMetric(f.score)} nats/h`,
      unknown ? `${s.unknown_q} (distance)` : copy ? `${s.copy_threshold} (correlation)` : `${s.threshold} nats/h`,
    ];
  });
}

function suspiciousState(s) {
  if (s.state === "no_model") {
    return [h("p", { class: "muted", id: "suspicious-state", "data-state": s.state },
      "No device fingerprints are committed on this ledger yet, so there is nothing to score readings with. Train them (a traceability run) from a node's directory:"),
      h("code", { class: "cmd" }, s.train || "fedledger train DIR --task traceability --rounds 1")];
  }
  const cls = s.state === "failed" ? "error" : "muted";
  const text = s.state === "failed" ? s.detail : `${s.state.replace("_", " ")}: ${s.detail}`;
  return [h("p", { class: cls, id: "suspicious-state", "data-state": s.state }, text)];
}

async function viewSuspicious(q) {
  const asked = Number(q.get("hours")) || SUSPICIOUS_HOURS; // the node checks the range (400)
  const s = await suspiciousView(asked);
  const choices = [...new Set([24, SUSPICIOUS_HOURS, 168, asked])].sort((a, b) => a - b);
  const kids = [
    h("h1", {}, "Suspicious readings"),
    h("p", {}, "A reading's signature proves which key signed it, not that the key is still on the device it was registered for. ",
      "Each device's latest readings are scored, window by window, against the fingerprints of every device of the latest traceability run (each device's hourly patterns, committed on the ledger): ",
      "a window is flagged when another device explains its hours better than the device whose key signed them, by more than the threshold in nats (log-likelihood ratio) per hour, ",
      "or when no fingerprint fits it at all (no known device: a sensor from outside the federation, or made-up values). A flag is a reason to look at the device, not a proof."),
    h("div", { class: "pager", id: "suspicious-hours" }, "readings of the latest",
      choices.map((x) => (x === asked ? h("strong", {}, `${x} h`) : link(`#/suspicious?hours=${x}`, `${x} h`)))),
  ];
  if (s.state !== "ready") return kids.concat(suspiciousState(s));
  const more = s.flagged_total - s.flagged.length;
  return kids.concat([
    kv([["model", h("span", { id: "suspicious-model" }, modelLink(s.run, s.round, `run ${short(s.run, 12)} round ${s.round}`), " (traceability)")],
        ["model hash", mono(s.model_hash)],
        ["fingerprints", `${s.fingerprints.length} of ${s.devices.length} devices of the run`],
        ["scored", `${s.readings} readings from ${fmtTime(s.from_ms)} to ${fmtTime(s.to_ms)} UTC, ${s.windows_scored} windows of ${s.window_hours} h`],
        ["flagged when", `another device scores more than ${s.threshold} nats/h higher, or no fingerprint is within a mean squared Mahalanobis distance of ${s.unknown_q} per hour`],
        ["computed", `at height ${s.height}, in ${s.compute_ms} ms (recomputed at most every few seconds as blocks commit)`]]),
    h("h2", {}, `Flagged (${s.flagged_total})`),
    s.flagged.length ? h("div", { id: "suspicious-flags" }, table(FLAG_HEADERS, flagRows(s, s.flagged)))
      : h("p", { class: "ok", id: "suspicious-state", "data-state": "nothing" }, "nothing suspicious: every window looks most like the device that signed it"),
    more > 0 ? h("p", { class: "muted" }, `... and ${more} more (the ${s.flagged.length} highest scores are listed)`) : null,
    (s.copies || []).length ? h("div", { id: "suspicious-copies" },
      h("h2", {}, `Copies (${s.copies.length})`),
      h("p", {}, "Devices whose readings replay another device's, minute by minute (at a time lag): the later on the ledger is the copy. A copy is not scored and no window is attributed to it."),
      table(["device", "copy of", "correlation#", "lag (min)#", "minutes#", "committed later#"],
        s.copies.map((c) => [c.device_key ? deviceLink(c.device_key, c.device) : c.device,
          c.copy_of_key ? deviceLink(c.copy_of_key, c.copy_of) : c.copy_of,
          fmtMetric(c.correlation), c.lag_minutes, c.minutes, c.committed_later]))) : null,
  ]);
}

function deviceFlags(s, key, name) {
  if (s.state === "no_model") return h("p", { class: "muted", id: "device-flags" }, "not scored: no device fingerprints are committed on this ledger yet (a traceability run makes them; ", link("#/suspicious", "suspicious readings"), ")");
  if (s.state !== "ready") return suspiciousState(s)[0];
  const mine = s.flagged.filter((f) => f.device_key === key);
  const model = `fingerprints of run ${short(s.run, 12)} round ${s.round}`;
  if (!s.devices.includes(name)) return h("p", { class: "muted", id: "device-flags" }, `not scored: not a device of the run behind the ${model}`);
  if (!s.fingerprints.includes(name)) return h("p", { class: "muted", id: "device-flags" }, `not scored: no fingerprint of it in the ${model} (its owner trained none)`);
  if (!mine.length) return h("p", { class: "muted", id: "device-flags" }, `none flagged (${model}; `, link("#/suspicious", "all devices"), ")");
  return h("div", { id: "device-flags" }, table(FLAG_HEADERS, flagRows(s, mine)), h("p", { class: "muted" }, `${model}; `, link("#/suspicious", "all devices")));
}

// --- members -------------------------------------------------------------------------------------
async function viewMembers() {
  const m = await api("/members?last=1000");
  const ms = m.membership;
  // Each list is the latest 1,000 at most; say so when the ledger holds more.
  const more = (name, shown) => (ms.totals[name] > shown ? h("p", { class: "muted" }, `latest ${shown} of ${ms.totals[name]}`) : null);
  return [
    h("h1", {}, `Members (${ms.totals.members})`),
    more("members", m.members.length),
    table(["name", "node", "role", "since height#"], m.members.map((x) => [x.name, mono(x.node_id), x.role, x.since_height])),
    h("h2", {}, "Join requests"),
    table(["node", "name", "role", "url", "height#", "tx"], ms.join_requests.map((r) => [mono(r.node_id), r.name, r.role, r.url, r.height, txLink(r.tx, 12)]), "no open join requests"),
    h("h2", {}, "Votes and tallies"),
    table(["action", "node", "role", "voters", "counted#", "needed#"], ms.votes.map((v) => [v.action, mono(v.node_id), v.role, mono(v.voters.join(" ")), v.counted, v.needed]), "no votes under way"),
    h("h2", {}, "Scheduled changes"),
    table(["action", "node", "name", "role", "decided#", "effective#"], ms.scheduled.map((c) => [c.action, mono(c.node_id), c.name, c.role, c.decided_height, c.effective_height]), "nothing scheduled"),
    h("h2", {}, "Applied changes"),
    more("history", ms.history.length),
    table(["action", "node", "name", "role", "decided#", "effective#"], ms.history.map((c) => [c.action, mono(c.node_id), c.name, c.role, c.decided_height, c.effective_height]), "none since genesis"),
    h("h2", {}, "Validator sets"),
    table(["from height#", "validators"], ms.validator_sets.map((e) => [e.from_height, mono(e.validators.join(" "))])),
  ];
}

// --- training ------------------------------------------------------------------------------------
async function viewTraining() {
  const res = await api("/runs?last=50");
  return [
    h("h1", {}, `Training runs (${res.total})`),
    table(["run", "task", "strategy", "rounds#", "committed#", "state", "coordinator", "requested at#"], res.runs.map((r) => [
      runLink(r.run), r.task, r.strategy, r.rounds, r.committed_rounds, r.complete ? h("span", { class: "ok" }, "complete") : "running",
      mono(r.coordinator), blockLink(r.height)]), "no training run on this ledger yet"),
  ];
}

// The held-out score of a round: aggregated over the nodes' signed model_evals, weighted by their
// held-out examples (the node computes it as `fedledger model list` does).
function heldOut(holdout, metric, baseline, baseName) {
  if (!holdout || typeof holdout[metric] !== "number") return "-";
  let text = `${metric}=${fmtMetric(holdout[metric])}`;
  if (typeof holdout[baseline] === "number") text += ` (${baseName} ${fmtMetric(holdout[baseline])})`;
  return `${text}, ${holdout.nodes} node${holdout.nodes === 1 ? "" : "s"}`;
}

async function viewRun(run) {
  const r = await api(`/run/${run}`);
  const metric = r.holdout_metric, base = r.baseline_metric;
  const scored = r.models.filter((m) => typeof m.holdout[metric] === "number");
  const series = [{ name: `held-out ${metric}`, color: "#2563eb", points: scored.map((m) => [m.round, m.holdout[metric]]) }];
  const baseline = scored.filter((m) => typeof m.holdout[base] === "number").map((m) => [m.round, m.holdout[base]]);
  if (baseline.length) series.push({ name: r.baseline, color: "#9ca3af", points: baseline });
  // The training metrics each commit carries (the averages of the nodes' own) come second: they
  // are measured on the data the nodes trained on or split from it, not on held-out readings.
  const keys = [...new Set(r.models.flatMap((m) => Object.keys(m.metrics)))]
    .sort((a, b) => (b.startsWith("val_") - a.startsWith("val_")) || a.localeCompare(b));
  return [
    h("h1", {}, `Run ${short(r.run, 12)}: ${r.task}`),
    kv([["run", mono(r.run)], ["strategy", r.strategy], ["rounds", `${r.committed_rounds} of ${r.rounds} committed`],
        ["coordinator", mono(r.coordinator)], ["requested at", blockLink(r.height)], ["parameters", mono(JSON.stringify(r.params))]]),
    h("h2", {}, `Learning curve: held-out ${metric || "score"} per round`),
    scored.length ? lineChart(series, { id: "chart-holdout", yLabel: metric, xLabel: "round", xPad: 1, integer: true })
      : h("p", { class: "muted", id: "no-holdout" }, "no held-out evaluation on the ledger yet"),
    h("p", { class: "muted" }, `Each round's model scored by the nodes on held-out readings that no node trained on (one hour in every five), aggregated over their signed evaluations weighted by held-out examples, next to the ${r.baseline || "baseline"}.`),
    h("h2", {}, "Training metrics (committed with each round, averaged over the nodes' updates)"),
    keys.length ? h("div", { class: "charts small", id: "learning-curves" }, keys.map((k) => lineChart(
      [{ name: k, points: r.models.filter((m) => typeof m.metrics[k] === "number").map((m) => [m.round, m.metrics[k]]) }],
      { id: `chart-metric-${k}`, yLabel: k, xLabel: "round", xPad: 1, integer: true }))) : h("p", { class: "muted" }, "no metrics committed yet"),
    h("h2", {}, "Models"),
    table(["round#", "model", "updates#", "block#", "held-out", "training metrics"], r.models.map((m) => [
      modelLink(r.run, m.round, String(m.round)), mono(short(m.model_hash)), m.updates, blockLink(m.height),
      heldOut(m.holdout, metric, base, r.baseline),
      Object.entries(m.metrics).map(([k, v]) => `${k}=${fmtMetric(v)}`).join(" ")]), "no model committed yet"),
  ];
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// A humidity model's .keras file is written on demand by the node (in a child process, one at a
// time): ask until it is ready (202 while it is written, 503/429 while the node is busy), then save
// what came back. A traceability model's fingerprints (JSON) come at once.
async function downloadModel(dl, button, state) {
  button.disabled = true;
  state.className = "muted";
  try {
    for (let tries = 0; tries < 150; tries++) {
      const r = await fetch(dl.url, { cache: "no-store" });
      if (r.status === 200) {
        const blob = await r.blob();
        const a = h("a", { href: URL.createObjectURL(blob), download: dl.filename });
        document.body.appendChild(a);
        a.click();
        a.remove();
        setTimeout(() => URL.revokeObjectURL(a.href), 60000);
        state.className = "ok";
        state.textContent = `saved ${dl.filename} (${(blob.size / 1024).toFixed(1)} KB)`;
        return;
      }
      let body = {};
      try { body = await r.json(); } catch (e) { /* not JSON: reported below */ }
      const waiting = r.status === 202 || r.status === 429 || (r.status === 503 && body.state === "busy");
      if (!waiting) throw new Error(body.error || body.detail || `HTTP ${r.status}`);
      state.textContent = `${body.state === "exporting" ? "exporting" : "waiting"}: ${body.detail || ""}`;
      await sleep(1000 * Math.min(30, Math.max(1, Number(body.retry_after_s) || 2)));
    }
    throw new Error("gave up waiting for the export");
  } catch (e) {
    state.className = "bad";
    state.textContent = `no download: ${e.message || e}`;
  } finally {
    button.disabled = false;
  }
}

async function viewModel(run, round) {
  const m = await api(`/model/${run}/${round}`);
  const rc = m.recomputed;
  const dl = m.download;
  const keras = dl.format === "keras";
  const cmd = `fedledger model export DIR --task ${m.task} --round ${m.round} --run ${short(m.run, 12)} --out ${m.task}-round${m.round}.${dl.format}`;
  const button = h("button", { type: "button", id: "download-model", "data-format": dl.format, disabled: dl.state === "unavailable" }, `Download ${dl.filename}`);
  const state = h("span", { id: "download-state", class: dl.state === "unavailable" || dl.state === "failed" ? "bad" : "muted" },
    dl.state === "ready" ? `ready (${(dl.size / 1024).toFixed(1)} KB)` : dl.detail || dl.state);
  button.addEventListener("click", () => downloadModel(dl, button, state));
  return [
    h("h1", {}, `Model: ${m.task} round ${m.round}`),
    kv([["run", runLink(m.run, m.run)], ["model hash", mono(m.model_hash)], ["strategy", m.strategy],
        ["committed", h("span", {}, "block ", blockLink(m.height), ` at ${fmtTime(m.time_ms)}, tx `, txLink(m.commit_tx))],
        ["coordinator", mono(m.coordinator)],
        ["base model", m.base_model ? h("span", {}, mono(short(m.base_model)), " (", modelLink(m.run, m.round - 1), ")") : m.round === 0 ? "none: the initial model" : "-"],
        ["held-out", h("span", { id: "holdout" }, m.evaluations.length ? heldOut(m.holdout, m.holdout_metric, m.baseline_metric, m.baseline) : "no evaluation on the ledger yet")],
        ["training metrics", Object.entries(m.metrics).map(([k, v]) => `${k}=${fmtMetric(v)}`).join(" ") || "-"],
        ["re-computation", h("span", { class: rc.ok ? "ok" : "bad", id: "recomputed" }, rc.ok ? "verified" : "FAILED"), ` ${rc.detail}`]]),
    h("h2", {}, `Updates (${m.updates.length})`),
    table(["node", "name", "update tx", "block#", "examples#", "readings root", "base", "metrics"], m.updates.map((u) => [
      mono(u.node), u.node_name || "-", txLink(u.tx, 12), blockLink(u.height), u.num_examples, mono(short(u.readings_root)),
      mono(short(u.base_model_hash, 12)), Object.entries(u.metrics).map(([k, v]) => `${k}=${fmtMetric(v)}`).join(" ")])),
    h("h2", {}, `Held-out evaluations (${m.evaluations.length})`),
    table(["node", "eval tx", "block#", "data cut#", "held-out examples#", "metrics"], m.evaluations.map((e) => [
      mono(e.node), txLink(e.tx, 12), blockLink(e.height), e.data_cut, e.num_examples,
      Object.entries(e.metrics).map(([k, v]) => `${k}=${fmtMetric(v)}`).join(" ")]), "none signed yet"),
    h("h2", {}, "Download"),
    h("p", {}, button, " ", state),
    h("p", { class: "muted" }, keras
      ? "The node re-computes the weights from the updates above and writes the .keras file (a Keras model of the humidity line, in physical units) with `fedledger model export` in a child process (the node itself never loads Keras). The same from a shell, DIR being a node's data directory:"
      : "The node re-computes the fingerprints from the updates above and writes them as JSON (per device the mean and covariance of its hourly feature vectors; the format is in the file), as `fedledger model export` does. The same from a shell, DIR being a node's data directory:"),
    h("code", { class: "cmd", id: "export-cmd" }, cmd),
  ];
}

// --- router --------------------------------------------------------------------------------------
const ROUTES = [
  [/^\/?$/, "federation", () => viewFederation(), true],
  [/^\/blocks$/, "blocks", (m, q) => viewBlocks(q), true],
  [/^\/block\/(\d+)$/, "blocks", (m, q) => viewBlock(m[1], q), false],
  [/^\/tx\/([0-9a-f]{64})$/, "blocks", (m) => viewTx(m[1]), false],
  [/^\/devices$/, "devices", () => viewDevices(), true],
  [/^\/device\/([0-9a-f]{64})$/, "devices", (m) => viewDevice(m[1]), true],
  [/^\/members$/, "members", () => viewMembers(), true],
  [/^\/suspicious$/, "suspicious", (m, q) => viewSuspicious(q), true],
  [/^\/training$/, "training", () => viewTraining(), true],
  [/^\/run\/([0-9a-f]{64})$/, "training", (m) => viewRun(m[1]), true],
  [/^\/model\/([0-9a-f]{64})\/(\d+)$/, "training", (m) => viewModel(m[1], m[2]), false],
];

let generation = 0;
let timer = null;

async function render(initial) {
  const mine = ++generation;
  const hash = location.hash.replace(/^#/, "") || "/";
  const [path, qs] = hash.split("?");
  const q = new URLSearchParams(qs || "");
  const main = document.getElementById("main");
  const route = ROUTES.find(([re]) => re.test(path));
  clearTimeout(timer);
  if (!route) {
    main.replaceChildren(h("div", { class: "error" }, `no page ${path}`), link("#/", "back to the federation"));
    return;
  }
  const [re, nav, view, live] = route;
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.nav === nav);
  try {
    const kids = await view(path.match(re), q);
    if (mine !== generation) return; // the user moved on while this loaded
    main.replaceChildren(...kids.filter((k) => k !== null));
    main.dataset.view = nav;
    main.dataset.route = location.hash || "#/";
    main.dataset.loaded = String(Date.now());
    setLive(true);
  } catch (e) {
    if (mine !== generation) return;
    if (initial || !main.dataset.loaded) main.replaceChildren(h("div", { class: "error" }, String(e.message || e)));
    setLive(false, e);
  }
  if (live && mine === generation) timer = setTimeout(() => render(false), REFRESH_MS);
}

function setLive(ok, err) {
  const el = document.getElementById("live");
  el.className = ok ? "live" : "live stale";
  el.textContent = ok ? `updated ${new Date().toISOString().slice(11, 19)} UTC` : `not updating: ${err && err.message ? err.message : err}`;
}

window.addEventListener("hashchange", () => { delete document.getElementById("main").dataset.loaded; render(true); });
render(true);
})();
