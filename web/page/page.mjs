// The exported site's page: the service page's look (serve/page.py), captioning in the browser.
// Every text a file name or the model supplies is shown with textContent, never as HTML.
import * as ort from "./ort.wasm.min.mjs";
import { loadModel, MAX_BEAM_SIZE } from "./capgen.mjs";

const $ = (id) => document.getElementById(id);
const state = { captioner: null, items: [], skipped: 0, urls: [], run: 0 };
const MAX_BEAM_ON_PAGE = Math.min(10, MAX_BEAM_SIZE);

// Threads need cross-origin isolation (the COOP/COEP headers in _headers); else one thread.
ort.env.wasm.wasmPaths = new URL("./", import.meta.url).href;
ort.env.wasm.numThreads = globalThis.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;

function element(tag, className, text) {
  const made = document.createElement(tag);
  if (className) made.className = className;
  if (text !== undefined) made.textContent = text;
  return made;
}

function score(value) {
  return value === null || value === undefined ? "" : `log p ${Number(value).toFixed(3)}`;
}

async function start() {
  let site;
  try {
    const answer = await fetch("capgen-site.json", { cache: "no-cache" });
    site = await answer.json();
  } catch (error) {
    $("model").textContent = `This site has no readable capgen-site.json (${error.message}).`;
    return;
  }
  const sizes = new Map();
  const cached = [];
  try {
    state.captioner = await loadModel(new URL("./", location.href).href, {
      ort,
      int8: site.model?.int8 === true,
      onProgress: ({ file, loaded, total, fromCache }) => {
        if (fromCache) cached.push(file);
        sizes.set(file, [loaded, total ?? loaded]);
        let done = 0;
        let all = 0;
        for (const [a, b] of sizes.values()) {
          done += a;
          all += b;
        }
        $("progress").value = all ? done / all : 0;
        $("model").textContent = `Loading the model… ${(done / 1e6).toFixed(1)} MB`;
      },
    });
  } catch (error) {
    $("model").textContent = `The model cannot be loaded: ${error.message}`;
    document.body.dataset.state = "failed";
    return;
  }
  const info = state.captioner.info;
  $("progress").hidden = true;
  $("model").textContent = `Model: ${info.name}${info.int8 ? " (INT8 encoder)" : ""}${info.description ? ` — ${info.description}` : ""}`;
  $("demo").hidden = !info.demonstration;
  $("beam").max = String(MAX_BEAM_ON_PAGE);
  $("maxlen").max = String(state.captioner.spec.maxLength);
  $("maxlen").placeholder = String(state.captioner.spec.maxLength);
  $("footer").textContent += ` onnxruntime-web ${info.onnxruntime}, ${ort.env.wasm.numThreads} thread(s).`;
  document.body.dataset.fromCache = cached.join(" "); // what this visit did not download
  document.body.dataset.state = "ready";
  if (state.items.length) captionAll();
}

function boundNBest() {
  const beam = $("beam");
  if (beam.checkValidity() && beam.value !== "") $("nbest").max = beam.value;
}

function chosenOptions() {
  const fields = [["beamSize", "beam", "Beam size"], ["nBest", "nbest", "Captions per image"], ["maxLength", "maxlen", "Max length"]];
  const chosen = {};
  for (const [name, id, label] of fields) {
    const input = $(id);
    if (!input.checkValidity()) {
      throw new Error(`${label} must be a whole number from ${input.min} to ${input.max || "the model's max length"}.`);
    }
    if (input.value !== "") chosen[name] = Number(input.value);
  }
  if (chosen.beamSize === 1) chosen.nBest = 1; // greedy: one caption, as capgen caption -b 1
  return chosen;
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
    row,
    file: item.file,
    caption: element("span", "caption", "captioning…"),
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

function show(parts, result) {
  parts.caption.textContent = result.text;
  parts.mark.hidden = result.finished !== false;
  parts.score.textContent = score(result.logProbability);
  parts.row.dataset.tokens = JSON.stringify(result.tokens);
  for (const alternative of result.alternatives) {
    const entry = element("li", "alternative");
    entry.append(element("span", "alt-caption", alternative.text), element("span", "score", score(alternative.logProbability)));
    parts.alternatives.append(entry);
  }
  parts.row.dataset.state = "done";
}

function fail(parts, message) {
  parts.caption.textContent = "";
  parts.error.textContent = message;
  parts.row.dataset.state = "failed";
}

async function captionAll() {
  if (!state.items.length || !state.captioner) return;
  let chosen;
  try {
    chosen = chosenOptions();
  } catch (error) {
    $("error").textContent = error.message;
    return;
  }
  const run = ++state.run;
  $("error").textContent = "";
  for (const url of state.urls) URL.revokeObjectURL(url);
  state.urls = [];
  $("results").replaceChildren();
  const rows = state.items.map(addRow);
  let failed = 0;
  for (const [index, parts] of rows.entries()) {
    if (run !== state.run) return; // a newer run replaced these rows
    $("status").textContent = `Captioning image ${index + 1} of ${rows.length}…`;
    try {
      show(parts, await state.captioner.captionBlob(parts.file, chosen));
    } catch (error) {
      failed += 1;
      fail(parts, error.message);
    }
  }
  $("status").textContent = `${rows.length} image(s) captioned${failed ? `, ${failed} failed.` : "."}${skippedNote()}`;
  document.body.dataset.run = String(run);
}

function skippedNote() {
  return state.skipped ? ` Skipped ${state.skipped} file(s) that are not images.` : "";
}

function take(items) {
  // Images only (a dropped folder may hold other files), in name order.
  const images = items.filter((item) => item.file.type.startsWith("image/"));
  images.sort((a, b) => a.name.localeCompare(b.name, undefined, { numeric: true }));
  state.items = images;
  state.skipped = items.length - images.length;
  $("again").disabled = !images.length;
  $("status").textContent = skippedNote().trim();
  if (images.length) captionAll();
}

async function walk(entry) {
  if (entry.isFile) {
    const file = await new Promise((ok, bad) => entry.file(ok, bad));
    return [{ file, name: entry.fullPath.replace(/^[/]/, "") }];
  }
  if (!entry.isDirectory) return [];
  const reader = entry.createReader();
  const found = [];
  for (;;) {
    const batch = await new Promise((ok, bad) => reader.readEntries(ok, bad));
    if (!batch.length) return found;
    for (const child of batch) found.push(...(await walk(child)));
  }
}

const fromList = (files) => Array.from(files, (file) => ({ file, name: file.webkitRelativePath || file.name }));

$("file").addEventListener("change", (e) => take(fromList(e.target.files)));
$("folder").addEventListener("change", (e) => take(fromList(e.target.files)));
$("again").addEventListener("click", captionAll);
$("beam").addEventListener("input", boundNBest);
const drop = $("drop");
drop.addEventListener("dragover", (e) => {
  e.preventDefault();
  drop.classList.add("over");
});
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
    } catch {
      /* an unreadable folder: fall back to the dropped files themselves */
    }
  }
  take(files);
});
start();
