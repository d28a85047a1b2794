"""GET /: a page to caption several images at once, with the API's options. Plain HTML and script.

Self-contained (no external assets, no build step) because the service runs
offline and the Content-Security-Policy allows inline script and style and
this server alone. Every text the server or a file name supplies is shown
with textContent, never as HTML, so a caption or file name cannot inject
markup.

What it does, and why:

- Images: pick several files, pick a folder, or drop files or folders; each
  image gets its own row (thumbnail, caption, score, alternatives). They are
  sent as multipart forms in chunks small enough for the server's queue
  (`batching.max_queue` from /v1/model), one chunk at a time, so a folder of
  hundreds of images does not hit `too_many_images` or the queue bound; a 503
  with Retry-After is retried a few times, as the server asks.
- Options: beam size, n-best, max length, bounded as the server bounds them
  (`batching.max_beam` and the model's `max_length` from /v1/model, n-best by
  the beam), so a bad value is caught before a round trip.
- `[max length reached]` marks a caption whose record says `"finished": false`,
  as `capgen caption` does: such a caption was cut, not ended by the model.
- The API key field is shown only when the server needs a key: /v1/model
  answering 401 without one says so (the middleware refuses before the model
  is even asked, so this works while the model loads and reveals nothing).
  The key is sent as a Bearer header and never stored.
"""

from __future__ import annotations

# Scripts and styles are inline only; the page may talk to this server alone.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "img-src blob: data:; connect-src 'self'; form-action 'none'; frame-ancestors 'none'; "
    "base-uri 'none'"
)

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>capgen</title>
<style>
  [hidden] { display: none !important; }
  body { font-family: sans-serif; max-width: 48rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
  h1 { margin-bottom: 0.25rem; }
  #model { color: #444; margin-top: 0; }
  #demo { background: #ffd; padding: 0.5rem; border-radius: 4px; }
  #drop { border: 2px dashed #888; border-radius: 8px; padding: 1rem 1.5rem; text-align: center; }
  #drop.over { background: #eef; }
  #drop label { display: inline-block; margin: 0.25rem 0.75rem; }
  #options { display: flex; flex-wrap: wrap; gap: 0.5rem 1.5rem; align-items: center;
             border: 1px solid #ccc; border-radius: 8px; margin: 1rem 0; padding: 0.5rem 1rem; }
  #options input { width: 4rem; }
  #error { color: #b00; }
  #status { color: #444; }
  #results { list-style: none; padding: 0; }
  .row { display: flex; gap: 1rem; align-items: flex-start; border-top: 1px solid #ddd;
         padding: 0.75rem 0; }
  .thumb { width: 8rem; height: 6rem; object-fit: cover; border-radius: 4px; flex: none;
           background: #eee; }
  .text { flex: 1; min-width: 0; }
  .name { color: #666; font-size: 0.85rem; margin: 0; overflow-wrap: anywhere; }
  .line { font-size: 1.25rem; margin: 0.25rem 0; }
  .mark { color: #a60; font-size: 0.9rem; margin-left: 0.4rem; white-space: nowrap; }
  .score { color: #777; font-size: 0.85rem; margin-left: 0.4rem; white-space: nowrap; }
  .alternatives { margin: 0.25rem 0 0; padding-left: 1.5rem; color: #333; }
  .row .error { color: #b00; margin: 0.25rem 0; }
</style>
</head>
<body>
<h1>capgen</h1>
<p id="model" aria-live="polite"></p>
<p id="demo" hidden>This is the demonstration model, trained on synthetic scenes of coloured
shapes, not on photos: its captions of photos are not meaningful.</p>
<div id="drop">
  <p>Drop images or folders here, or pick them:</p>
  <label>Images <input id="file" type="file" accept="image/*" multiple></label>
  <label>A folder <input id="folder" type="file" webkitdirectory multiple></label>
</div>
<div id="options">
  <label>Beam size <input id="beam" type="number" min="1" max="10" step="1" value="3"></label>
  <label>Captions per image (n-best) <input id="nbest" type="number" min="1" max="3" step="1"
    value="1"></label>
  <label>Max length (words) <input id="maxlen" type="number" min="1" step="1"
    title="empty: the model's own"></label>
  <button id="again" type="button" disabled>Caption again</button>
</div>
<p id="keyline" hidden><label>API key (this server needs one):
  <input id="key" type="password" autocomplete="off"></label></p>
<p id="error" role="alert"></p>
<p id="status" aria-live="polite"></p>
<ol id="results"></ol>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const DEFAULT_BEAM = 3;  // the server's default beam_size: its queue counts cost relative to it
const state = {model: null, items: [], skipped: 0, urls: [], run: 0};

function authHeaders() {
  const key = $("key").value;
  return key ? {"Authorization": "Bearer " + key} : {};
}

async function describeModel(tries) {
  // The model's name, its bounds for the options, and whether a key is needed (401).
  let answer;
  try {
    answer = await fetch("v1/model", {headers: authHeaders()});
  } catch (e) {
    $("model").textContent = "The server does not answer.";
    return;
  }
  if (answer.status === 401) {
    $("keyline").hidden = false;
    $("model").textContent = $("key").value
      ? "The server refused this API key."
      : "This server needs an API key: type it below.";
    return;
  }
  if (answer.status === 503 && tries > 0) {  // the model is still loading
    $("model").textContent = "The model is loading\u2026";
    setTimeout(() => describeModel(tries - 1), 1000);
    return;
  }
  if (!answer.ok) return;
  const model = await answer.json();
  state.model = model;
  $("model").textContent =
    "Model: " + model.name + (model.description ? " \u2014 " + model.description : "");
  $("demo").hidden = !model.demonstration;
  $("beam").max = String(model.batching.max_beam);
  $("maxlen").max = String(model.max_length);
  $("maxlen").placeholder = String(model.max_length);  // empty means the model's own
  boundNBest();
}

function boundNBest() {
  // n-best can be at most the beam size, as the server checks.
  const beam = $("beam");
  if (beam.checkValidity() && beam.value !== "") $("nbest").max = beam.value;
}

function chosenOptions() {
  // [[name, value]] for the form, or an Error saying which field is out of bounds.
  const fields = [["beam_size", "beam", "Beam size"], ["n_best", "nbest", "Captions per image"],
                  ["max_length", "maxlen", "Max length"]];
  const chosen = [];
  for (const [name, id, label] of fields) {
    const input = $(id);
    if (!input.checkValidity()) {
      throw new Error(label + " must be a whole number from " + input.min + " to " +
                      (input.max || "the model's max length") + ".");
    }
    if (input.value !== "") chosen.push([name, input.value]);
  }
  return chosen;
}

function chunkSize(chosen) {
  // Images per request: as many as the server's queue admits at these options, at most 8.
  const model = state.model;
  if (!model) return 4;
  const given = Object.fromEntries(chosen);
  const beam = Number(given.beam_size || DEFAULT_BEAM);
  const length = Number(given.max_length || model.max_length);
  const cost = (beam * length) / (DEFAULT_BEAM * model.max_length);
  return Math.max(1, Math.min(8, Math.floor(model.batching.max_queue / cost)));
}

function element(tag, className, text) {
  const made = document.createElement(tag);
  if (className) made.className = className;
  if (text !== undefined) made.textContent = text;
  return made;
}

function score(value) {
  return value === null || value === undefined ? "" : "log p " + Number(value).toFixed(3);
}

function addRow(item) {
  const row = element("li", "row");
  row.dataset.state = "pending";
  const thumb = element("img", "thumb");
  thumb.alt = "";
  const url = URL.createObjectURL(item.file);
  state.urls.push(url);
  thumb.src = url;
  const text = element("div", "text");
  const line = element("p", "line");
  const parts = {
    row: row, file: item.file,
    caption: element("span", "caption", "captioning\u2026"),
    mark: element("span", "mark", "[max length reached]"),
    score: element("span", "score"),
    alternatives: element("ol", "alternatives"),
    error: element("p", "error"),
  };
  parts.mark.hidden = true;
  line.append(parts.caption, parts.mark, parts.score);
  text.append(element("p", "name", item.name), line, parts.alternatives, parts.error);
  row.append(thumb, text);
  $("results").append(row);
  return parts;
}

function showRecord(parts, record) {
  if (record.error !== undefined) {
    fail([parts], record.error);
    return;
  }
  parts.caption.textContent = record.caption;
  parts.mark.hidden = record.finished !== false;
  parts.score.textContent = score(record.log_probability);
  for (const alternative of record.alternatives || []) {
    const entry = element("li", "alternative");
    entry.append(element("span", "alt-caption", alternative.caption),
                 element("span", "score", score(alternative.log_probability)));
    parts.alternatives.append(entry);
  }
  parts.row.dataset.state = "done";
}

function fail(rows, message) {
  for (const parts of rows) {
    parts.caption.textContent = "";
    parts.error.textContent = message;
    parts.row.dataset.state = "failed";
  }
}

const sleep = (ms) => new Promise((done) => setTimeout(done, ms));

async function captionChunk(rows, chosen, run) {
  const form = new FormData();
  for (const parts of rows) form.append("files", parts.file, parts.file.name);
  for (const [name, value] of chosen) form.append(name, value);
  for (let attempt = 0; ; attempt++) {
    let answer, data;
    try {
      answer = await fetch("v1/captions", {method: "POST", headers: authHeaders(), body: form});
      data = await answer.json().catch(() => ({}));
    } catch (e) {
      if (run === state.run) fail(rows, "The server did not answer: " + (e.message || e));
      return;
    }
    if (run !== state.run) return;  // a newer run replaced these rows
    const wait = Number(answer.headers.get("Retry-After"));
    if (answer.status === 503 && wait > 0 && attempt < 3) {
      $("status").textContent = "The server is busy; retrying in " + wait + " s\u2026";
      await sleep(Math.min(wait, 30) * 1000);
      continue;
    }
    if (answer.status === 401) $("keyline").hidden = false;
    if (!answer.ok || !Array.isArray(data.results)) {
      fail(rows, data.message || ("HTTP " + answer.status + " " + answer.statusText));
      return;
    }
    data.results.forEach((record, i) => showRecord(rows[i], record));
    return;
  }
}

async function captionAll() {
  if (!state.items.length) return;
  let chosen;
  try {
    chosen = chosenOptions();
  } catch (e) {
    $("error").textContent = e.message;
    return;
  }
  const run = ++state.run;
  $("error").textContent = "";
  for (const url of state.urls) URL.revokeObjectURL(url);
  state.urls = [];
  $("results").replaceChildren();
  const rows = state.items.map(addRow);
  const per = chunkSize(chosen);
  for (let start = 0; start < rows.length && run === state.run; start += per) {
    $("status").textContent = "Captioning " + rows.length + " image(s)\u2026";
    await captionChunk(rows.slice(start, start + per), chosen, run);
  }
  if (run === state.run) {
    const failed = rows.filter((parts) => parts.row.dataset.state === "failed").length;
    $("status").textContent = rows.length + " image(s) captioned" +
      (failed ? ", " + failed + " failed." : ".") + skippedNote();
  }
}

function skippedNote() {
  return state.skipped ? " Skipped " + state.skipped + " file(s) that are not images." : "";
}

function take(items) {
  // Images only (a dropped folder may hold other files), in name order.
  const images = items.filter((item) => item.file.type.startsWith("image/"));
  images.sort((a, b) => a.name.localeCompare(b.name, undefined, {numeric: true}));
  state.items = images;
  state.skipped = items.length - images.length;
  $("again").disabled = !images.length;
  $("status").textContent = skippedNote().trim();
  if (images.length) captionAll();
}

async function walk(entry) {
  // The files under a dropped folder entry, recursively.
  if (entry.isFile) {
    const file = await new Promise((ok, bad) => entry.file(ok, bad));
    return [{file: file, name: entry.fullPath.replace(/^[/]/, "")}];
  }
  if (!entry.isDirectory) return [];
  const reader = entry.createReader();
  const found = [];
  for (;;) {
    const batch = await new Promise((ok, bad) => reader.readEntries(ok, bad));
    if (!batch.length) return found;
    for (const child of batch) found.push(...await walk(child));
  }
}

const fromList = (files) => Array.from(files, (file) => ({file: file,
  name: file.webkitRelativePath || file.name}));

$("file").addEventListener("change", (e) => take(fromList(e.target.files)));
$("folder").addEventListener("change", (e) => take(fromList(e.target.files)));
$("again").addEventListener("click", captionAll);
$("beam").addEventListener("input", boundNBest);
$("key").addEventListener("change", () => describeModel(30));
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", async (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  // Entries must be taken before the first await: the drop's data is gone after the event.
  const entries = Array.from(e.dataTransfer.items || [])
    .filter((item) => item.kind === "file")
    .map((item) => (item.webkitGetAsEntry ? item.webkitGetAsEntry() : null));
  const files = fromList(e.dataTransfer.files);
  if (entries.length && entries.every(Boolean)) {
    try {
      take((await Promise.all(entries.map(walk))).flat());
      return;
    } catch (error) { /* an unreadable folder: fall back to the dropped files themselves */ }
  }
  take(files);
});
describeModel(30);
</script>
</body>
</html>
"""
