// sonic-pipeline's page: plain JavaScript, no build step.
// The token lives in localStorage and goes out as "Authorization: Bearer" on fetch();
// EventSource and <video> cannot send headers, so the token is traded once for an
// HttpOnly session cookie (POST /v1/session) that the service honours on GET only.
"use strict";

const STAGES = ["preprocess", "gpu", "encode", "upload", "callback"];
const FINAL = new Set(["completed", "failed", "rejected", "cancelled", "expired"]);
const $ = (sel) => document.querySelector(sel);
let stream = null;
let nextCursor = null;

function token() { return localStorage.getItem("sonic.token") || ""; }

function notice(text) {
  const box = $("#notice");
  box.textContent = text || "";
  box.hidden = !text;
}

async function api(path, options = {}) {
  const headers = Object.assign({ Authorization: "Bearer " + token() }, options.headers || {});
  const answer = await fetch(path, Object.assign({}, options, { headers }));
  const body = (answer.headers.get("content-type") || "").includes("json") ? await answer.json() : null;
  if (!answer.ok) {
    const error = (body && body.error) || { code: "http.error", message: answer.statusText };
    throw Object.assign(new Error(error.code + ": " + error.message), { error, status: answer.status });
  }
  return body;
}

async function signIn() {
  if (!token()) { $("#who").textContent = "not signed in"; return false; }
  try {
    const who = await api("/v1/session", { method: "POST" });
    $("#who").textContent = who.operator ? "operator" : "tenant " + who.tenant;
    return true;
  } catch (err) {
    $("#who").textContent = "";
    notice(err.message);
    return false;
  }
}

function cell(row, text) {
  const td = document.createElement("td");
  if (text instanceof Node) td.appendChild(text); else td.textContent = text == null ? "" : String(text);
  row.appendChild(td);
  return td;
}

function when(iso) { return iso ? new Date(iso).toLocaleString() : ""; }

// --- new job -------------------------------------------------------------------------
async function submitJob(event) {
  event.preventDefault();
  notice("");
  const form = new FormData($("#upload-form"));
  for (const [name, value] of Array.from(form.entries())) {
    if (value === "") form.delete(name);  // an empty knob means the default
  }
  $("#submit").disabled = true;
  try {
    const job = await api("/v1/tasks", { method: "POST", body: form });
    location.hash = "#/jobs/" + encodeURIComponent(job.task_id);
  } catch (err) {
    notice(err.message);
  } finally {
    $("#submit").disabled = false;
  }
}

// --- job list ------------------------------------------------------------------------
async function loadJobs(append) {
  const params = new URLSearchParams();
  const status = $("#filter-status").value;
  const tenant = $("#filter-tenant").value.trim();
  const since = $("#filter-since").value;
  if (status) params.set("status", status);
  if (tenant) params.set("tenant", tenant);
  if (since) params.set("since", new Date(since).toISOString());
  params.set("limit", "25");
  if (append && nextCursor) params.set("cursor", nextCursor);
  const body = $("#jobs-table tbody");
  if (!append) body.textContent = "";
  try {
    const page = await api("/v1/tasks?" + params.toString());
    for (const job of page.tasks) {
      const row = document.createElement("tr");
      const link = document.createElement("a");
      link.href = "#/jobs/" + encodeURIComponent(job.task_id);
      link.textContent = job.task_id;
      cell(row, link);
      cell(row, job.tenant);
      cell(row, job.status).className = "status-" + job.status;
      cell(row, job.stage);
      cell(row, when(job.received_at));
      cell(row, job.error ? job.error.code : "");
      body.appendChild(row);
    }
    nextCursor = page.next_cursor;
    $("#more").hidden = !nextCursor;
  } catch (err) {
    notice(err.message);
  }
}

// --- one job -------------------------------------------------------------------------
function drawTimeline() {
  const list = $("#timeline");
  list.textContent = "";
  for (const stage of STAGES) {
    const item = document.createElement("li");
    item.dataset.stage = stage;
    item.dataset.state = "pending";
    item.textContent = stage;
    const note = document.createElement("small");
    note.textContent = "pending";
    item.appendChild(note);
    list.appendChild(item);
  }
}

function markStage(stage, state, text) {
  const item = document.querySelector(`#timeline li[data-stage="${stage}"]`);
  if (!item) return;
  item.dataset.state = state;
  item.querySelector("small").textContent = text || state;
}

function showError(error) {
  const box = $("#error");
  box.hidden = !error;
  box.textContent = error ? error.code + ": " + (error.message || "") : "";
}

function showView(view) {
  $("#job-status").textContent = view.status;
  if (view.error) showError(view.error);
  if (view.status === "completed" && view.video_url) {
    const video = $("#video");
    if (video.getAttribute("src") !== view.video_url) {
      video.src = view.video_url;
      video.hidden = false;
      video.play().catch(() => {});  // autoplay may be refused; the controls remain
    }
  }
}

function onEvent(data) {
  const row = document.createElement("tr");
  cell(row, data.id);
  cell(row, when(data.at));
  cell(row, data.stage);
  cell(row, data.event);
  cell(row, data.status);
  $("#events tbody").appendChild(row);
  $("#job-status").textContent = data.status;
  const stageState = { stage_started: "running", stage_succeeded: "done", stage_failed: "failed",
                       stage_retrying: "running", stage_requeued: "running",
                       stage_lease_lost: "running", stage_waiting_for_credential: "running",
                       stage_credential_acquired: "running" }[data.event];
  if (data.stage && stageState) {
    const took = data.timings && data.timings.duration_s != null
      ? ` ${data.timings.duration_s.toFixed(1)} s` : "";
    markStage(data.stage, stageState, data.event.replace("stage_", "") + took);
  }
  if (data.event === "progress" && data.progress != null) {
    $("#job-live").textContent = `live, ${Math.round(data.progress * 100)} %`;
  }
  if (data.error) showError(data.error);
}

function openJob(taskId) {
  if (stream) stream.close();
  $("#job-id").textContent = taskId;
  $("#job-status").textContent = "…";
  $("#events tbody").textContent = "";
  $("#video").hidden = true;
  $("#video").removeAttribute("src");
  showError(null);
  drawTimeline();
  api("/v1/tasks/" + encodeURIComponent(taskId)).then(showView).catch((err) => notice(err.message));
  stream = new EventSource("/v1/tasks/" + encodeURIComponent(taskId) + "/events");
  $("#job-live").textContent = "live";
  stream.addEventListener("status", (e) => onEvent(JSON.parse(e.data)));
  stream.addEventListener("end", (e) => {
    stream.close();
    stream = null;
    $("#job-live").textContent = "";
    const view = JSON.parse(e.data);
    if (view.status === "completed") STAGES.slice(0, 4).forEach((s) => markStage(s, "done"));
    showView(view);
  });
  stream.onerror = () => {
    // The browser reconnects on its own with Last-Event-ID; a 401/404 closes it for good.
    if (stream && stream.readyState === EventSource.CLOSED) {
      $("#job-live").textContent = "disconnected";
    }
  };
}

// --- routing -------------------------------------------------------------------------
function route() {
  notice("");
  const hash = location.hash || "#/";
  for (const view of document.querySelectorAll(".view")) view.hidden = true;
  const job = hash.match(/^#\/jobs\/(.+)$/);
  if (job) {
    $("#view-job").hidden = false;
    openJob(decodeURIComponent(job[1]));
    return;
  }
  if (stream) { stream.close(); stream = null; }
  if (hash.startsWith("#/jobs")) {
    $("#view-jobs").hidden = false;
    loadJobs(false);
  } else {
    $("#view-new").hidden = false;
  }
}

document.addEventListener("DOMContentLoaded", async () => {
  $("#token").value = token();
  $("#token-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    localStorage.setItem("sonic.token", $("#token").value.trim());
    if (await signIn()) route();
  });
  $("#upload-form").addEventListener("submit", submitJob);
  $("#filters").addEventListener("submit", (event) => { event.preventDefault(); loadJobs(false); });
  $("#more").addEventListener("click", () => loadJobs(true));
  window.addEventListener("hashchange", route);
  await signIn();
  route();
});
