"""GET /: a page to pick or drop an image and see its caption. Plain HTML, a few lines of script.

Self-contained (no external assets, no build step); the caption is shown as
text (textContent), never as HTML. The API key, when the server has one, is
typed into the page and sent as a Bearer header; it is not stored.
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
  body { font-family: sans-serif; max-width: 40rem; margin: 2rem auto; padding: 0 1rem; }
  #drop { border: 2px dashed #888; border-radius: 8px; padding: 2rem; text-align: center; }
  #drop.over { background: #eef; }
  #preview { max-width: 100%; max-height: 20rem; display: block; margin: 1rem auto; }
  #caption { font-size: 1.4rem; min-height: 2rem; }
  #error { color: #b00; }
  #model { color: #444; }
  #demo { background: #ffd; padding: 0.5rem; border-radius: 4px; }
</style>
</head>
<body>
<h1>capgen</h1>
<p id="model"></p>
<p id="demo" hidden>This is the demonstration model, trained on synthetic scenes of coloured
shapes, not on photos: its captions of photos are not meaningful.</p>
<div id="drop">
  <p>Drop an image here, or pick one:</p>
  <input id="file" type="file" accept="image/*">
</div>
<p><label>API key (if the server needs one): <input id="key" type="password" autocomplete="off"></label></p>
<img id="preview" alt="">
<p id="caption" aria-live="polite"></p>
<p id="error" role="alert"></p>
<script>
"use strict";
const drop = document.getElementById("drop");
const caption = document.getElementById("caption");
const error = document.getElementById("error");
const preview = document.getElementById("preview");
async function describeModel() {
  // The model's name and one-line description (textContent: never HTML); a server that
  // needs a key for /v1/model leaves the line empty rather than showing an error.
  try {
    const key = document.getElementById("key").value;
    const answer = await fetch("v1/model", key ? {headers: {"Authorization": "Bearer " + key}} : {});
    if (!answer.ok) return;
    const model = await answer.json();
    document.getElementById("model").textContent =
      "Model: " + model.name + (model.description ? " \u2014 " + model.description : "");
    document.getElementById("demo").hidden = !model.demonstration;
  } catch (e) { /* the caption request reports a dead server */ }
}
describeModel();
async function send(file) {
  caption.textContent = "captioning…";
  error.textContent = "";
  preview.src = URL.createObjectURL(file);
  const headers = {"Content-Type": file.type && file.type.startsWith("image/") ? file.type : "image/*"};
  const key = document.getElementById("key").value;
  if (key) headers["Authorization"] = "Bearer " + key;
  try {
    const answer = await fetch("v1/captions", {method: "POST", headers: headers, body: file});
    const data = await answer.json();
    if (!answer.ok) throw new Error(data.message || answer.statusText);
    caption.textContent = data.results[0].caption;
  } catch (e) {
    caption.textContent = "";
    error.textContent = String(e.message || e);
  }
}
document.getElementById("file").addEventListener("change", (e) => {
  if (e.target.files.length) send(e.target.files[0]);
});
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (e.dataTransfer.files.length) send(e.dataTransfer.files[0]);
});
</script>
</body>
</html>
"""
