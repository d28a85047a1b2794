// Test helper: caption decoded RGB files with web/capgen.mjs on onnxruntime-web's WASM backend in Node.
// A job is JSON {model, int8, runs: [options], images: [{input, width, height}]}; for each image
// and run it prints one JSON line {run, image, result}, then {done: true} after the job.
// argv[2]: one job file; without it, one job per line of stdin (tests/web/conftest.py's
// `web_node`: one process for the session, so WebAssembly is compiled and tiered up once,
// not once per test; each job loads its model and releases it).
// Each image is encoded once for every run; its encoder features are kept, keyed by the
// encoder file's sha256 and the pixels, for later jobs whose model lists the same encoder
// (the tutorial-size model runs the default model's encoder.onnx on the same photos).
// A job {encodeSteps: {a, b, input, width, height}} is encode_steps.mjs's check instead: it
// prints {steps: its result}, then {done: true}.
import { createHash } from "node:crypto";
import { readFile } from "node:fs/promises";
import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { fileURLToPath, pathToFileURL } from "node:url";
import { loadModel } from "../../web/capgen.mjs";

// onnxruntime-web as web/ installs it (make web: npm ci there), on its WASM backend.
const ort = await import(new URL("../../web/node_modules/onnxruntime-web/dist/ort.node.min.mjs", import.meta.url));
ort.env.wasm.numThreads = 1;
// Node's fetch reads no file: URLs; the model folder is read from disk instead.
const fileFetch = async (url) => new Response(await readFile(fileURLToPath(url)));

const featuresSeen = new Map(); // `${encoder sha256} ${pixels sha256} ${width}x${height}` -> features

async function caption(job) {
  const captioner = await loadModel(pathToFileURL(job.model).href, { ort, int8: job.int8, fetch: fileFetch });
  const encoder = captioner.spec.records[captioner.spec.files.encoder].sha256;
  try {
    for (const [index, image] of job.images.entries()) {
      const rgb = new Uint8Array(readFileSync(image.input));
      const key = `${encoder} ${createHash("sha256").update(rgb).digest("hex")} ${image.width}x${image.height}`;
      let features = featuresSeen.get(key);
      if (features === undefined) {
        features = await captioner.encodeFeatures(rgb, image.width, image.height); // once per image
        featuresSeen.set(key, features);
      }
      const encoded = await captioner.projectFeatures(features);
      for (const [run, options] of job.runs.entries()) {
        const result = await captioner.captionEncoded(encoded, options);
        process.stdout.write(`${JSON.stringify({ run, image: index, result })}\n`);
      }
    }
  } finally {
    await captioner.release();
  }
  process.stdout.write(`${JSON.stringify({ done: true })}\n`);
}

async function runJob(job) {
  if (job.encodeSteps === undefined) return caption(job);
  const { encodeSteps } = await import("./encode_steps.mjs");
  const steps = await encodeSteps(ort, fileFetch, job.encodeSteps);
  process.stdout.write(`${JSON.stringify({ steps })}\n`);
  process.stdout.write(`${JSON.stringify({ done: true })}\n`);
}

if (process.argv[2]) {
  await caption(JSON.parse(readFileSync(process.argv[2], "utf8")));
} else {
  for await (const line of createInterface({ input: process.stdin, crlfDelay: Infinity })) {
    if (!line.trim()) continue;
    try {
      await runJob(JSON.parse(line));
    } catch (error) {
      process.stdout.write(`${JSON.stringify({ error: String(error?.stack ?? error) })}\n`);
    }
  }
}
