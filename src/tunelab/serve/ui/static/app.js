// tunelab's web UI: each page calls the same /v1 API a script would. No build step, no framework: plain
// modules, uPlot for the charts. The header below plus the sign-in cookie authorise the calls.

const UI_HEADERS = { "x-tunelab-ui": "1" };
const FINISHED = ["succeeded", "failed", "cancelled"];
const POLL_MS = 500;  // a job's page asks for news twice a second: a new step shows within a second
const STATUS_WORDS = {
  validating_files: "Checking your files before training.",
  queued: "Waiting for a free worker; it starts by itself.",
  running: "Training now.",
  paused: "Paused after saving; resume when you like.",
  succeeded: "Done: the tuned model is ready and already served.",
  failed: "Stopped with an error (below).",
  cancelled: "Cancelled; what it saved is kept.",
};
const LOSS_ON = {
  chat: "the assistant's replies (the user's turns are context only)",
  sharegpt: "the assistant's replies (the user's turns are context only)",
  alpaca: "the responses (the instructions are context only)",
  completion: "the completions (the prompts are context only)",
  text: "the whole text",
  classification: "the label of each text",
  trl: "which of two answers is better", openai_dpo: "which of two answers is better",
  hh_rlhf: "which of two answers is better",
};

export class ApiError extends Error {}

export async function api(path, { method = "GET", json, form } = {}) {
  const init = { method, headers: { ...UI_HEADERS }, credentials: "same-origin" };
  if (json !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(json);
  } else if (form !== undefined) {
    init.body = form;
  }
  const r = await fetch(`/v1${path}`, init);
  if (r.status === 401) {
    location.href = `/sign-in?next=${encodeURIComponent(location.pathname + location.search)}`;
  }
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new ApiError(body.error?.message || `${r.status} ${r.statusText}`);
  return body;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat(Infinity)) if (c !== null && c !== undefined) node.append(c);
  return node;
}

const $ = (id) => document.getElementById(id);
const when = (t) => (t ? new Date(t * 1000).toLocaleString() : "–");

export function duration(seconds) {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) return "–";
  const s = Math.max(0, Math.round(seconds));
  if (s < 90) return `${s} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

function statusBadge(status) {
  return el("span", { class: `status status-${status}`, text: status.replace("_", " ") });
}

function showError(id, err) {
  const box = $(id);
  box.textContent = err ? String(err.message || err) : "";
  box.hidden = !err;
}

// --- home: jobs and models ------------------------------------------------------------------------------

async function home() {
  const [jobs, models] = await Promise.all([api("/fine_tuning/jobs?limit=100"), api("/models")]);
  $("jobs").replaceChildren(jobs.data.length ? el("table", {},
    el("thead", {}, el("tr", {}, ["Job", "Status", "Tuned model", "Started"].map((h) => el("th", { scope: "col", text: h })))),
    el("tbody", {}, jobs.data.map((j) => el("tr", {},
      el("td", {}, el("a", { href: `/jobs/${j.id}`, text: j.id })),
      el("td", {}, statusBadge(j.status)),
      el("td", {}, j.fine_tuned_model ? el("a", { href: `/jobs/${j.id}/result` }, el("code", { text: j.fine_tuned_model })) : "–"),
      el("td", { text: when(j.created_at) })))))
    : el("p", {}, "No jobs yet. ", el("a", { href: "/data", text: "Upload your data" }), " to start one."));
  $("models").replaceChildren(el("ul", {}, models.data.map((m) => el("li", {}, el("code", { text: m.id }),
    m.id.startsWith("ft:") ? " (tuned by your project)" : ""))));
}

// --- data: upload and check ---------------------------------------------------------------------------

function histogram(rows) {
  const top = Math.max(1, ...rows.map((r) => r[2]));
  return el("table", { class: "hist" },
    el("caption", { text: "Rows by length in tokens" }),
    el("thead", {}, el("tr", {}, el("th", { scope: "col", text: "tokens" }), el("th", { scope: "col", text: "rows" }))),
    el("tbody", {}, rows.map(([lo, hi, n]) => el("tr", {},
      el("th", { scope: "row", text: `${lo}–${hi}` }),
      el("td", {}, el("span", { class: "bar", style: `width:${(100 * n) / top}%` }), ` ${n}`)))));
}

function problems(title, list, kind) {
  if (!list.length) return null;
  return el("section", { class: kind },
    el("h3", { text: `${title} (${list.length})` }),
    el("table", {}, el("thead", {}, el("tr", {}, ["Where (file:line)", "What is wrong"].map((h) => el("th", { scope: "col", text: h })))),
      el("tbody", {}, list.slice(0, 500).map((p) => el("tr", {}, el("td", {}, el("code", { text: p.where })),
        el("td", { text: p.field ? `${p.field}: ${p.message}` : p.message }))))),
    list.length > 500 ? el("p", { text: `… and ${list.length - 500} more.` }) : null);
}

function guessTask(rep) {
  const formats = Object.values(rep.formats || {});
  if (rep.kind === "preference") return "prefer";
  if (formats.includes("classification") || Object.keys(rep.labels || {}).length) return "classify";
  return "answer";
}

export function renderCheck(rep) {
  const formats = [...new Set(Object.values(rep.formats || {}))];
  const usable = rep.kind === "preference" ? rep.pairs : rep.valid_rows;
  const trained = rep.kind === "preference" ? rep.chosen_tokens + rep.rejected_tokens : rep.completion_tokens;
  const facts = [
    ["Format", formats.join(", ") || "not recognised", "How tunelab read your rows."],
    ["Rows it can use", `${usable ?? 0} of ${rep.rows}`, "Rows with a problem are listed below; none is used until fixed."],
    ["What the model learns from", formats.map((f) => LOSS_ON[f] || f).join("; ") || "–",
      "The part of each row the training scores the model on."],
    ["Exact duplicates", `${rep.duplicates ?? 0}`, "The same row more than once: it counts more than the others."],
    ["Tokens per pass over the data", (rep.est_tokens_per_epoch ?? 0).toLocaleString(),
      "Tokens are word pieces; time grows with them."],
    ["Time per pass on this server (rough)", rep.est_seconds_per_epoch ? `about ${duration(rep.est_seconds_per_epoch)}` : "–",
      "An estimate for the server's model and processor."],
  ];
  if (rep.labels && Object.keys(rep.labels).length) {
    const counts = Object.values(rep.labels);
    facts.push(["Labels", `${counts.length} (smallest has ${Math.min(...counts)} rows, largest ${Math.max(...counts)})`,
      "Categories the model will learn to pick from."]);
  }
  const ok = rep.ok && usable > 0;
  return el("div", {},
    el("p", { class: ok ? "verdict ok" : "verdict bad", role: "status",
      text: ok ? `Ready to train: ${usable} usable rows.` :
        `${rep.errors.length} problem(s) to fix before training. Fix them and upload the file again: your other settings stay.` }),
    el("dl", { class: "facts" }, facts.map(([k, v, help]) => [el("dt", { text: k }),
      el("dd", {}, el("strong", { text: v }), el("br"), el("small", { class: "muted", text: help }))])),
    problems("Rows that need fixing", rep.errors || [], "errors"),
    problems("Warnings (the rows are used)", rep.warnings || [], "warnings"),
    rep.length_histogram?.length ? histogram(rep.length_histogram) : null,
    ok ? el("p", {}, el("a", { role: "button", id: "use-file", href: `/jobs/new?file=${rep.file_id}&task=${guessTask(rep)}`,
      text: "Use this file: set up the job" })) : null);
}

async function data() {
  const input = $("file-input");
  const drop = $("drop");
  const out = $("check");
  async function take(file) {
    if (!file) return;
    out.replaceChildren(el("p", { "aria-busy": "true", text: `Uploading and checking ${file.name}…` }));
    try {
      const form = new FormData();
      form.append("purpose", "fine-tune");
      form.append("file", file, file.name);
      const uploaded = await api("/files", { method: "POST", form });
      const rep = await api(`/files/${uploaded.id}/check`, { method: "POST",
        json: { format: $("format").value, max_length: Number($("max-length").value) || 512 } });
      out.replaceChildren(el("h2", { text: `Check of ${file.name}` }), renderCheck(rep));
    } catch (err) {
      out.replaceChildren(el("p", { class: "error", role: "alert", text: String(err.message || err) }));
    }
    input.value = "";  // choosing the same (fixed) file again still uploads it
  }
  input.addEventListener("change", () => take(input.files[0]));
  for (const ev of ["dragenter", "dragover"]) drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.add("over"); });
  for (const ev of ["dragleave", "drop"]) drop.addEventListener(ev, () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); take(e.dataTransfer.files[0]); });
}

// --- new job --------------------------------------------------------------------------------------------

function advancedConfig() {
  const config = {};
  for (const field of document.querySelectorAll("[data-key]")) {
    const raw = field.value.trim();
    if (!raw || raw === field.dataset.default) continue;
    let value;
    try { value = JSON.parse(raw); } catch { value = raw; }  // words need no quotes
    config[field.dataset.key] = value;
  }
  return config;
}

export function jobRequest(form, config) {
  const task = form.task.value;
  const hyper = {};
  if (form.n_epochs.value.trim() && form.n_epochs.value.trim() !== "auto") hyper.n_epochs = Number(form.n_epochs.value);
  const body = { model: form.model.value, training_file: form.training_file.value };
  if (form.validation_file.value) body.validation_file = form.validation_file.value;
  if (form.suffix.value.trim()) body.suffix = form.suffix.value.trim();
  if (task === "prefer") body.method = { type: "dpo", dpo: { hyperparameters: hyper } };
  else if (task === "grader") body.method = { type: "reinforcement", reinforcement: { grader: JSON.parse(form.grader.value), hyperparameters: hyper } };
  else body.method = { type: "supervised", supervised: { hyperparameters: hyper } };
  if (task === "classify") config = { task: "classification", ...config };
  if (Object.keys(config).length) body.tunelab = { config };
  return body;
}

async function newJob() {
  const form = $("job-form");
  const [files, models] = await Promise.all([api("/files?purpose=fine-tune&limit=200"), api("/models")]);
  const options = files.data.map((f) => el("option", { value: f.id, text: `${f.filename} (${f.id}, ${when(f.created_at)})` }));
  $("training-file").replaceChildren(...options);
  $("validation-file").append(...options.map((o) => o.cloneNode(true)));
  if (form.dataset.file) $("training-file").value = form.dataset.file;
  $("model").replaceChildren(...models.data.filter((m) => !m.id.includes(":ckpt-step-"))
    .map((m) => el("option", { value: m.id, text: m.id })));
  const grader = () => { $("grader-box").hidden = form.task.value !== "grader"; };
  form.addEventListener("change", grader);
  grader();
  const estimate = async () => {
    const fid = $("training-file").value;
    if (!fid) { $("estimate").textContent = "Upload a file first, on the data page."; return; }
    try {
      const rep = await api(`/files/${fid}/check`, { method: "POST", json: {} });
      if (!rep.ok) {
        $("estimate").textContent = `This file has ${rep.errors.length} problem(s): fix them on the data page first.`;
        return;
      }
      const usable = `${rep.kind === "preference" ? rep.pairs : rep.valid_rows} usable rows`;
      $("estimate").textContent = `${usable}; measuring what training takes on this server (a few real steps)...`;
      const est = await api(`/files/${fid}/estimate`, { method: "POST", json: {} });
      if ($("training-file").value !== fid) return;  // another file was picked meanwhile
      $("estimate").textContent = `${usable}. On this server: about ${duration(est.total_seconds)} in all ` +
        `(${est.train.steps} steps, ${duration(est.train.seconds_per_epoch)} per pass over the data), peak memory ` +
        `${(est.peak_memory_mib / 1024).toFixed(1)} GiB of ${(est.limit_mib / 1024).toFixed(1)} GiB` +
        (est.fits ? "." : ": too much, training will use smaller batches or less memory-hungry settings.");
    } catch (err) { $("estimate").textContent = String(err.message || err); }
  };
  $("training-file").addEventListener("change", estimate);
  estimate();
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    showError("job-error", null);
    $("start").setAttribute("aria-busy", "true");
    try {
      const job = await api("/fine_tuning/jobs", { method: "POST", json: jobRequest(form, advancedConfig()) });
      location.href = `/jobs/${job.id}`;
    } catch (err) {
      showError("job-error", err);
      $("start").removeAttribute("aria-busy");
    }
  });
}

// --- job: live status, loss chart, events, checkpoints ---------------------------------------------------

function lossChart(target) {
  const width = () => Math.max(280, target.clientWidth || 600);
  const plot = new uPlot({
    width: width(), height: 260,
    scales: { x: { time: false } },
    axes: [{ label: "step" }, { label: "loss" }],
    series: [{ label: "step" },
      { label: "training loss", stroke: "#1f77b4", width: 2, spanGaps: true },
      { label: "validation loss", stroke: "#d62728", width: 2, spanGaps: true, points: { size: 7 } }],
  }, [[], [], []], target);
  window.addEventListener("resize", () => plot.setSize({ width: width(), height: 260 }));
  return plot;
}

const TASK_METRICS = [["valid_accuracy", "accuracy"], ["valid_token_f1", "word overlap with your answers (token F1)"],
  ["valid_rouge_l", "ROUGE-L"], ["valid_exact_match", "exact answers"], ["valid_numeric_accuracy", "right numbers"],
  ["valid_reward_accuracy", "pairs ranked right"]];

function scoreChart(target, label) {
  const width = () => Math.max(280, target.clientWidth || 600);
  const plot = new uPlot({ width: width(), height: 200, scales: { x: { time: false }, y: { range: [0, 1] } },
    axes: [{ label: "step" }, { label: "score" }],
    series: [{ label: "step" }, { label, stroke: "#2ca02c", width: 2, points: { size: 7 } }] }, [[], []], target);
  window.addEventListener("resize", () => plot.setSize({ width: width(), height: 200 }));
  return plot;
}

async function allEvents(jobId, known) {
  // newest first; page back until an event already shown
  const fresh = [];
  let after = null;
  for (;;) {
    const page = await api(`/fine_tuning/jobs/${jobId}/events?limit=100${after ? `&after=${after}` : ""}`);
    let seen = false;
    for (const e of page.data) {
      if (known.has(e.id)) { seen = true; break; }
      fresh.push(e);
    }
    if (seen || !page.has_more || !page.data.length) break;
    after = page.data[page.data.length - 1].id;
  }
  return fresh.reverse();
}

async function job() {
  const root = $("job");
  const jobId = root.dataset.job;
  const plot = lossChart($("chart"));
  const known = new Set();
  const points = new Map();  // step -> [train, valid]
  let total = null;
  let lastStep = 0;
  let taskName = "";
  let loadingSince = 0;
  let taskPlot = null;
  const trialsDone = new Set();  // a sweep job: the trials that have ended (finished or stopped early)

  const act = (what) => async () => {
    showError("job-error", null);
    try { await api(`/fine_tuning/jobs/${jobId}/${what}`, { method: "POST" }); await tick(); }
    catch (err) { showError("job-error", err); }
  };
  $("pause").addEventListener("click", act("pause"));
  $("resume").addEventListener("click", act("resume"));
  $("cancel").addEventListener("click", act("cancel"));

  function draw() {
    const steps = [...points.keys()].sort((a, b) => a - b);
    plot.setData([steps, steps.map((s) => points.get(s)[0]), steps.map((s) => points.get(s)[1])]);
    const last = steps.length ? points.get(steps[steps.length - 1]) : null;
    const valid = steps.map((s) => points.get(s)[1]).filter((v) => v !== null);
    const scores = steps.filter((s) => points.get(s)[2] !== null && points.get(s)[2] !== undefined);
    if (scores.length) {
      $("task-box").hidden = false;
      $("task-name").textContent = taskName;
      taskPlot = taskPlot || scoreChart($("task-chart"), taskName);
      taskPlot.setData([scores, scores.map((s) => points.get(s)[2])]);
      const last = points.get(scores[scores.length - 1])[2];
      $("task-text").textContent = `Latest ${taskName} on the validation rows: ${(100 * last).toFixed(1)}%.`;
    }
    $("chart-text").textContent = steps.length ?
      `Step ${steps[steps.length - 1]}${total ? ` of ${total}` : ""}: training loss ${last[0]?.toFixed(3) ?? "–"}` +
      (valid.length ? `, latest validation loss ${valid[valid.length - 1].toFixed(3)}` : "") + "." : "No steps yet.";
    root.dataset.steps = String(steps.length);  // for tests and screen readers' sake: what the chart holds
  }

  let ckpts = null;  // fetched at first, then only when an event says a checkpoint was made
  async function tick() {
    const [j, events] = await Promise.all([api(`/fine_tuning/jobs/${jobId}`), allEvents(jobId, known)]);
    if (ckpts === null || events.some((e) => e.message.startsWith("Checkpoint") || e.type === "message" && FINISHED.includes(j.status))) {
      ckpts = await api(`/fine_tuning/jobs/${jobId}/checkpoints?limit=100`);
    }
    for (const e of events) {
      if (known.has(e.id)) continue;  // a button's refresh and the poll may fetch the same news
      known.add(e.id);
      $("events").prepend(el("li", { class: `level-${e.level}` }, el("time", { text: when(e.created_at) }), " ", e.message));
      if (e.data?.trial !== undefined && ["complete", "pruned"].includes(e.data.state)) trialsDone.add(e.data.trial);
      if (e.type === "metrics" && e.data?.step !== undefined && e.data.trial === undefined) {  // a sweep's trials: in its events
        const p = points.get(e.data.step) || [null, null, null];
        if (e.data.train_loss !== undefined) p[0] = e.data.train_loss;
        if (e.data.valid_loss !== undefined) p[1] = e.data.valid_loss;
        const task = TASK_METRICS.find(([key]) => e.data[key] !== undefined);
        if (task) { p[2] = e.data[task[0]]; taskName = task[1]; }
        points.set(e.data.step, p);
        total = e.data.total_steps || total;
        lastStep = Math.max(lastStep, e.data.step);
      }
    }
    if (events.length) draw();
    $("status").replaceChildren(statusBadge(j.status));
    $("status-words").textContent = STATUS_WORDS[j.status] || "";
    const trials = j.tunelab?.sweep ? j.tunelab.sweep.trials : null;  // a sweep: progress in trials
    const done = j.status === "succeeded" ? 100 : trials ? Math.min(100, (100 * trialsDone.size) / trials)
      : total ? Math.min(100, (100 * lastStep) / total) : 0;
    $("progress").value = done;
    $("progress-text").textContent = j.tunelab?.sweep ? `sweep: ${trialsDone.size} trial(s) done` +
      (trials ? ` of ${trials}` : "") + "; each trial's steps are in the events" :
      total ? `step ${lastStep} of ${total} (${Math.round(done)}%)` : "";
    $("sweep-link").hidden = !j.tunelab?.sweep;
    $("eta").textContent = j.status === "running" && j.estimated_finish ?
      `About ${duration(j.estimated_finish - Date.now() / 1000)} left (finishing around ${when(j.estimated_finish)}).` : "";
    $("pause").hidden = j.status !== "running";
    $("resume").hidden = j.status !== "paused";
    $("cancel").hidden = FINISHED.includes(j.status);
    // the server loads a succeeded job's model within a second or so: offer the result once it answers
    const served = j.status === "succeeded" && j.fine_tuned_model &&
      (await api("/models")).data.some((m) => m.id === j.fine_tuned_model);
    if (j.status === "succeeded" && !served) {
      loadingSince = loadingSince || Date.now();
      $("status-words").textContent = Date.now() - loadingSince < 120_000 ? "Done: loading the tuned model…" :
        "Done, but the server has not loaded the tuned model: see its log (the model may not fit or its files may be damaged).";
    }
    $("result-link").hidden = !served;
    if (j.error?.message) showError("job-error", j.error.message);
    $("checkpoints").replaceChildren(ckpts.data.length ? el("table", {},
      el("thead", {}, el("tr", {}, ["Step", "Training loss", "Validation loss", "Use it as"].map((h) => el("th", { scope: "col", text: h })))),
      el("tbody", {}, ckpts.data.map((c) => el("tr", {}, el("td", { text: String(c.step_number) }),
        el("td", { text: c.metrics?.train_loss?.toFixed?.(3) ?? "–" }),
        el("td", { text: c.metrics?.valid_loss?.toFixed?.(3) ?? "–" }),
        el("td", {}, el("code", { text: c.fine_tuned_model_checkpoint }))))))
      : el("p", { class: "muted", text: "None yet." }));
    return j;
  }

  for (;;) {
    let j = null;
    try { j = await tick(); } catch (err) { showError("job-error", err); }
    const settled = !$("result-link").hidden === (j?.status === "succeeded") || (loadingSince && Date.now() - loadingSince > 120_000);
    if (j && FINISHED.includes(j.status) && settled) break;
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
}

// --- result: playground side by side --------------------------------------------------------------------

export async function stream(model, message, target) {
  target.textContent = "";
  target.setAttribute("aria-busy", "true");
  let requestId = null;
  try {
    const r = await fetch("/v1/chat/completions", { method: "POST", credentials: "same-origin",
      headers: { ...UI_HEADERS, "content-type": "application/json" },
      body: JSON.stringify({ model, stream: true, max_tokens: 200, messages: [{ role: "user", content: message }] }) });
    if (!r.ok) throw new ApiError((await r.json().catch(() => ({}))).error?.message || r.statusText);
    requestId = r.headers.get("x-request-id");
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      const lines = buffer.split("\n");
      buffer = lines.pop();
      for (const line of lines) {
        if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
        const delta = JSON.parse(line.slice(6)).choices?.[0]?.delta?.content;
        if (delta) target.textContent += delta;
      }
    }
  } catch (err) {
    target.textContent = `Error: ${err.message || err}`;
    requestId = null;
  } finally {
    target.removeAttribute("aria-busy");
  }
  return requestId;
}

// Thumbs up / down on one logged answer, with a corrected answer for a wrong one: POST /v1/feedback.
export function feedbackWidget(requestId, given = []) {
  const said = el("p", { class: "muted", "aria-live": "polite",
    text: given.length ? `Rated: ${given.map((f) => f.correction ? "corrected" : f.rating === "up" ? "good" : "wrong").join(", ")}` : "" });
  const correction = el("textarea", { rows: "3", id: `correction-${requestId}` });
  const send = async (rating, text) => {
    try {
      await api("/feedback", { method: "POST", json: { request_id: requestId, rating, ...(text ? { correction: text } : {}) } });
      said.textContent = text ? "Thank you: the correction is kept for the next round." : `Thank you: rated ${rating === "up" ? "good" : "wrong"}.`;
    } catch (err) { said.textContent = `Could not send: ${err.message || err}`; }
  };
  const box = el("div", { hidden: true },
    el("label", { for: `correction-${requestId}`, text: "The answer it should have given (optional)" }), correction,
    el("button", { type: "button", class: "send-correction", onclick: () => send("down", correction.value.trim()), text: "Send" }));
  return el("div", { class: "feedback" },
    el("div", { role: "group", "aria-label": "Rate this answer", class: "actions" },
      el("button", { type: "button", class: "secondary outline rate-up", onclick: () => send("up"), text: "Good answer" }),
      el("button", { type: "button", class: "secondary outline rate-down", onclick: () => { box.hidden = false; correction.focus(); },
        text: "Wrong answer" })),
    box, said);
}

async function result() {
  const root = $("result");
  if (!root.dataset.model) return;
  $("play-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const message = $("message").value.trim();
    if (!message) return;
    $("rate").replaceChildren();
    stream(root.dataset.base, message, $("answer-base"));
    stream(root.dataset.model, message, $("answer-tuned")).then((id) => {
      if (id) $("rate").replaceChildren(feedbackWidget(id));
    });
  });
}

// --- model: use it, watch it, improve it ----------------------------------------------------------------

function timeChart(target, series) {
  const width = () => Math.max(260, target.clientWidth || 500);
  const plot = new uPlot({ width: width(), height: 200, series: [{}, ...series], axes: [{}, {}] },
    [[], ...series.map(() => [])], target);
  window.addEventListener("resize", () => plot.setSize({ width: width(), height: 200 }));
  return plot;
}

function lastUserText(prompt) {
  if (prompt && !Array.isArray(prompt) && typeof prompt === "object") prompt = prompt.messages ?? prompt.prompt ?? JSON.stringify(prompt);
  if (Array.isArray(prompt)) {
    const users = prompt.filter((m) => m.role === "user");
    const c = users.length ? users[users.length - 1].content : "";
    return typeof c === "string" ? c : JSON.stringify(c);
  }
  return prompt === null || prompt === undefined ? "(not kept)" : String(prompt);
}

async function modelPage() {
  const root = $("model-page");
  const model = root.dataset.model;
  const enc = encodeURIComponent(model);
  const requests = timeChart($("requests-chart"), [
    { label: "requests", stroke: "#1f77b4", width: 2 }, { label: "errors", stroke: "#d62728", width: 2 }]);
  const latency = timeChart($("latency-chart"), [
    { label: "p50 s", stroke: "#2ca02c", width: 2, spanGaps: true }, { label: "p95 s", stroke: "#ff7f0e", width: 2, spanGaps: true }]);
  async function watch() {
    const m = await api(`/tunelab/models/${enc}/monitor?since=${$("since").value}&buckets=24`);
    const t = m.series.map((b) => b.start);
    requests.setData([t, m.series.map((b) => b.requests), m.series.map((b) => b.errors)]);
    latency.setData([t, m.series.map((b) => (b.latency_ms.p50 ?? null) && b.latency_ms.p50 / 1000),
      m.series.map((b) => (b.latency_ms.p95 ?? null) && b.latency_ms.p95 / 1000)]);
    const s = m.summary;
    $("summary").textContent = `${s.requests} request(s), ${s.errors} error(s)` +
      (s.latency_ms?.p50 ? `; a typical answer took ${(s.latency_ms.p50 / 1000).toFixed(1)} s` : "") + ".";
    $("drift").textContent = m.drift ? m.drift.message : "Drift is checked once the model has had some traffic.";
    root.dataset.watched = String(s.requests);
  }
  async function queue() {
    const page = await api(`/tunelab/models/${enc}/requests?limit=50`);
    const items = page.data.filter((r) => r.status === 200);
    $("queue").replaceChildren(items.length ? el("ol", { class: "queue" }, items.map((r) => el("li", {},
      el("p", {}, el("strong", { text: "Asked: " }), lastUserText(r.prompt)),
      el("p", {}, el("strong", { text: "Answered: " }), r.completion ?? "(not kept)"),
      r.completion !== null ? feedbackWidget(r.id, r.feedback) : null)))
      : el("p", { class: "muted", text: "No conversations with this model yet: try it in the playground or from a client." }));
  }
  for (const box of document.querySelectorAll(".export")) {
    const fmt = box.dataset.format;
    const status = box.querySelector(".export-status");
    const make = box.querySelector(".make-export");
    const link = box.querySelector(".download-export");
    const show = (e) => {
      const mb = e.bytes ? ` (${(e.bytes / 1e6).toFixed(0)} MB)` : "";
      status.textContent = { none: "", running: "Making it: a minute or two…", ready: `Ready${mb}.`,
        failed: `It failed: ${e.error || ""}` }[e.status];
      link.hidden = e.status !== "ready";
      make.hidden = e.status === "ready" || e.status === "running";
      box.dataset.status = e.status;
      return e.status;
    };
    const poll = async () => {
      if (show(await api(`/fine_tuning/jobs/${root.dataset.job}/exports/${fmt}`)) === "running") setTimeout(poll, 2000);
    };
    make.addEventListener("click", async () => {
      try {
        show(await api(`/fine_tuning/jobs/${root.dataset.job}/exports`, { method: "POST", json: { format: fmt } }));
        setTimeout(poll, 2000);
      } catch (err) { status.textContent = String(err.message || err); }
    });
    poll().catch(() => {});
  }
  $("since").addEventListener("change", watch);
  $("next-round").addEventListener("submit", async (e) => {
    e.preventDefault();
    showError("round-error", null);
    try {
      const job = await api(`/fine_tuning/jobs/${root.dataset.job}/next_round`, { method: "POST", json: { method: $("round-method").value } });
      location.href = `/jobs/${job.id}`;
    } catch (err) { showError("round-error", err); }
  });
  await Promise.all([watch(), queue()]);
}

const PAGES = { home, data, "new-job": newJob, job, result, model: modelPage };
const run = PAGES[document.body.dataset.page];
if (run) run().catch((err) => console.error(err));
