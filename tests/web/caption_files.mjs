// Test helper: caption decoded RGB files with web/capgen.mjs on onnxruntime-web's WASM backend in Node.
// argv[2]: a JSON job {model, int8, runs: [options], images: [{input, width, height}]};
// prints one JSON line per run and image: {run, image, result}.
import { readFile } from "node:fs/promises";
import { readFileSync } from "node:fs";
import { fileURLToPath, pathToFileURL } from "node:url";
import { loadModel } from "../../web/capgen.mjs";

// onnxruntime-web as web/ installs it (make web: npm ci there), on its WASM backend.
const ort = await import(new URL("../../web/node_modules/onnxruntime-web/dist/ort.node.min.mjs", import.meta.url));
const job = JSON.parse(readFileSync(process.argv[2], "utf8"));
ort.env.wasm.numThreads = 1;
// Node's fetch reads no file: URLs; the model folder is read from disk instead.
const fileFetch = async (url) => new Response(await readFile(fileURLToPath(url)));
const captioner = await loadModel(pathToFileURL(job.model).href, { ort, int8: job.int8, fetch: fileFetch });
for (const [index, image] of job.images.entries()) {
  const rgb = new Uint8Array(readFileSync(image.input));
  const encoded = await captioner.encodePixels(rgb, image.width, image.height); // once per image
  for (const [run, options] of job.runs.entries()) {
    const result = await captioner.captionEncoded(encoded, options);
    process.stdout.write(`${JSON.stringify({ run, image: index, result })}\n`);
  }
}
await captioner.release();
