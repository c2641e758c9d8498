// The browser client of engine.serve: camera -> WebSocket -> canvas, and offline jobs.
// Plain JS, no build step. Wire format: engine/serve/protocol.py (FRVI in, FRVO out).
"use strict";

const $ = (id) => document.getElementById(id);
const frvd = (window.frvd = {
  state: "idle",
  error: null,
  stats: { sent: 0, received: 0, dropped: 0, fps: 0, latencyMs: 0, serverLatencyMs: 0 },
});

function authHeaders() {
  const key = $("key").value.trim();
  return key ? { Authorization: "Bearer " + key } : {};
}

function wsUrl(path) {
  return (location.protocol === "https:" ? "wss://" : "ws://") + location.host + path;
}

function fileToBase64(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(",", 2)[1]);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

function showError(el, text) {
  el.textContent = text;
  el.classList.add("error");
  frvd.error = text;
}

// ------------------------------------------------------------------------------------- live
let ws = null;
let camera = null;
let timer = null;
let ending = false; // set by Stop: frames still being encoded are not sent after the end message
const capture = document.createElement("canvas");
const arrivals = []; // receive times of the last results, for fps
const latencies = [];

async function startLive() {
  const stats = $("stats");
  stats.classList.remove("error");
  const file = $("live-source").files[0];
  if (!file) return showError(stats, "choose a source portrait first");
  $("start").disabled = true;
  frvd.state = "starting";
  try {
    camera = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: false });
  } catch (err) {
    $("start").disabled = false;
    return showError(stats, "camera: " + err.message);
  }
  $("camera").srcObject = camera;
  ending = false;
  const token = $("key").value.trim() || undefined;
  const start = {
    type: "start",
    source: { data: await fileToBase64(file) },
    options: { steps: Number($("live-steps").value) || 1 },
    queue: "drop_oldest",
  };
  ws = new WebSocket(wsUrl("/v1/stream"));
  ws.binaryType = "arraybuffer";
  // with a key, authenticate with a small message first: until then the server takes only small messages
  ws.onopen = () => ws.send(JSON.stringify(token ? { type: "auth", token } : start));
  ws.onmessage = (ev) => {
    if (typeof ev.data !== "string") return onFrame(ev.data);
    const msg = JSON.parse(ev.data);
    if (msg.type === "authenticated") ws.send(JSON.stringify(start));
    else onControl(msg);
  };
  ws.onclose = (ev) => {
    stopCapture();
    frvd.state = "closed";
    frvd.closeCode = ev.code;
    if (ev.code !== 1000 && !frvd.error) showError(stats, `closed ${ev.code}: ${ev.reason || "connection lost"}`);
    $("start").disabled = false;
    $("stop").disabled = true;
  };
  $("stop").disabled = false;
}

function onControl(msg) {
  if (msg.type === "ready") {
    frvd.state = "streaming";
    frvd.session = msg;
    sendControls(); // before the first frame: the controls apply from it
    const fps = Math.max(1, Number($("live-fps").value) || 10);
    timer = setInterval(sendFrame, 1000 / fps);
  } else if (msg.type === "controls" || msg.type === "source") {
    frvd[msg.type] = msg; // what the server now applies (engine/serve/live.py)
  } else if (msg.type === "error") {
    showError($("stats"), `${msg.code} ${msg.field ? msg.field + ": " : ""}${msg.message}`);
  } else if (msg.type === "done") {
    frvd.done = msg.stats;
  }
}

function sendFrame() {
  const video = $("camera");
  if (!ws || ws.readyState !== WebSocket.OPEN || !video.videoWidth) return;
  if (ws.bufferedAmount > 1 << 20) return; // the network is behind: skip rather than queue
  const scale = Math.min(1, 320 / Math.min(video.videoWidth, video.videoHeight));
  capture.width = Math.round(video.videoWidth * scale);
  capture.height = Math.round(video.videoHeight * scale);
  capture.getContext("2d").drawImage(video, 0, 0, capture.width, capture.height);
  const stamp = performance.now();
  capture.toBlob(async (blob) => {
    if (!blob || ending || !ws || ws.readyState !== WebSocket.OPEN) return;
    const image = new Uint8Array(await blob.arrayBuffer());
    const msg = new Uint8Array(12 + image.length);
    const view = new DataView(msg.buffer);
    msg.set([0x46, 0x52, 0x56, 0x49]); // "FRVI"
    view.setFloat64(4, stamp, true);
    msg.set(image, 12);
    ws.send(msg);
    frvd.stats.sent += 1;
  }, "image/jpeg", 0.85);
}

async function onFrame(buffer) {
  const view = new DataView(buffer);
  const magic = String.fromCharCode(...new Uint8Array(buffer, 0, 4));
  if (magic !== "FRVO") return;
  const index = view.getUint32(4, true);
  const stamp = view.getFloat64(8, true);
  const serverMs = view.getFloat32(16, true);
  const bitmap = await createImageBitmap(new Blob([new Uint8Array(buffer, 20)], { type: "image/jpeg" }));
  const canvas = $("result");
  canvas.getContext("2d").drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  bitmap.close();
  const now = performance.now();
  const s = frvd.stats;
  s.received += 1;
  s.dropped = Math.max(0, index + 1 - s.received); // gaps in the echoed index: frames the server dropped
  s.lastIndex = index;
  arrivals.push(now);
  while (arrivals.length && arrivals[0] < now - 2000) arrivals.shift();
  s.fps = arrivals.length / 2;
  if (!Number.isNaN(stamp)) latencies.push(now - stamp);
  if (latencies.length > 50) latencies.shift();
  s.latencyMs = latencies.length ? latencies.reduce((a, b) => a + b) / latencies.length : 0;
  s.serverLatencyMs = serverMs;
  $("stats").textContent =
    `frames ${s.received} | ${s.fps.toFixed(1)} fps | latency ${s.latencyMs.toFixed(0)} ms ` +
    `(server ${serverMs.toFixed(0)} ms) | sent ${s.sent} | skipped ${s.dropped}`;
}

function stopCapture() {
  if (timer) clearInterval(timer);
  timer = null;
  if (camera) camera.getTracks().forEach((t) => t.stop());
  camera = null;
}

function stopLive() {
  ending = true;
  stopCapture();
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "end" }));
  $("stop").disabled = true;
}

// ----------------------------------------------------------------- motion controls, source switch
const SLIDERS = ["smooth", "expression_scale", "pose_scale"];
const CHECKS = ["lock_pose", "lock_expression"];

function currentControls() {
  const controls = {};
  for (const id of SLIDERS) controls[id] = Number($(id).value);
  for (const id of CHECKS) controls[id] = $(id).checked;
  for (const id of ["eyes", "lips"]) controls[id] = $(id).checked ? "source" : "driving";
  return controls;
}

function sendControls() {
  for (const id of SLIDERS) $(id + "-value").textContent = $(id).value;
  if (ws && ws.readyState === WebSocket.OPEN && frvd.state === "streaming")
    ws.send(JSON.stringify({ type: "controls", controls: currentControls() }));
}

async function switchSource() {
  const file = $("switch-source").files[0];
  if (!file || !ws || ws.readyState !== WebSocket.OPEN) return;
  ws.send(JSON.stringify({ type: "source", source: { data: await fileToBase64(file) } }));
}

for (const id of [...SLIDERS, ...CHECKS, "eyes", "lips"]) $(id).addEventListener("input", sendControls);
$("switch-source").addEventListener("change", () => switchSource().catch((e) => showError($("stats"), String(e))));

// ------------------------------------------------------------------------------------- jobs
const STAGES = { "": [0, 0.02], source: [0, 0.05], motion: [0.05, 0.25], denoise: [0.25, 0.9], decode: [0.9, 0.98] };

async function submitJob(ev) {
  ev.preventDefault();
  const status = $("job-status");
  status.classList.remove("error");
  $("job-download").hidden = true;
  $("job-video").hidden = true;
  const form = new FormData($("job-form"));
  for (const [k, v] of [...form.entries()]) if (v === "") form.delete(k); // unset = the server's default
  status.textContent = "uploading...";
  const res = await fetch("/v1/jobs", { method: "POST", body: form, headers: authHeaders() });
  const body = await res.json();
  if (res.status !== 202) {
    const e = body.error || {};
    return showError(status, `${res.status} ${e.field || ""}: ${e.message || ""} ${e.hint ? "(" + e.hint + ")" : ""}`);
  }
  frvd.job = body.id;
  await followJob(body.id);
}

async function followJob(id) {
  const status = $("job-status");
  const res = await fetch(`/v1/jobs/${id}/events`, { headers: authHeaders() });
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const event = (block.match(/^event: (.*)$/m) || [])[1];
      const data = (block.match(/^data: (.*)$/m) || [])[1];
      if (!event || !data) continue;
      const job = JSON.parse(data);
      if (event === "progress") {
        const [lo, hi] = STAGES[job.stage] || [0.98, 1];
        $("job-progress").value = job.state === "done" ? 1 : lo + (hi - lo) * (job.total ? job.done / job.total : 0);
        status.textContent = `${job.state} ${job.stage} ${job.done}/${job.total}`;
      } else if (event === "done") {
        $("job-progress").value = 1;
        status.textContent = `done: ${job.num_frames} frames in ${job.timings.total.toFixed(1)} s`;
        await showResult(id);
      } else if (event === "failed") {
        showError(status, "failed: " + job.error);
      }
    }
  }
}

async function showResult(id) {
  const res = await fetch(`/v1/jobs/${id}/result`, { headers: authHeaders() });
  const url = URL.createObjectURL(await res.blob());
  const link = $("job-download");
  link.href = url;
  link.download = `${id}.mp4`;
  link.hidden = false;
  $("job-video").src = url;
  $("job-video").hidden = false;
  frvd.jobDone = id;
}

$("start").addEventListener("click", () => startLive().catch((e) => showError($("stats"), String(e))));
$("stop").addEventListener("click", stopLive);
$("job-form").addEventListener("submit", (ev) => submitJob(ev).catch((e) => showError($("job-status"), String(e))));
$("server").textContent = location.host;
