// Test helper: web/capgen.mjs's encodePixels against its two steps, encodeFeatures then
// projectFeatures, and encoder features shared between two models with the same encoder file.
// `encodeSteps(ort, fetch, {a, b, input, width, height})`: model A, model B (folders), an RGB
// file, its width and height. Returns {encoders: [sha256 A, sha256 B], pixels, steps, features,
// shared, own}: photos and features as lists of numbers, `shared` and `own` the tokens of B's
// greedy and beam-2 captions. caption_files.mjs runs it as a job of the session's Node process
// ({encodeSteps: {...}}: onnxruntime-web is compiled once a session, not once more for this);
// run directly (argv: a, b, input, width, height) it prints that JSON, as it used to.
import { readFile } from "node:fs/promises";
import { readFileSync } from "node:fs";
import { fileURLToPath, pathToFileURL } from "node:url";
import { loadModel } from "../../web/capgen.mjs";

export async function encodeSteps(ort, fetch, { a, b, input, width, height }) {
  const load = (folder) => loadModel(pathToFileURL(folder).href, { ort, fetch });
  const [first, second] = [await load(a), await load(b)];
  try {
    const rgb = new Uint8Array(readFileSync(input));
    const [w, h] = [Number(width), Number(height)];
    const encoderOf = (captioner) => captioner.spec.records[captioner.spec.files.encoder].sha256;
    const features = await first.encodeFeatures(rgb, w, h);
    const options = [{ beamSize: 1 }, { beamSize: 2, nBest: 2 }];
    const shared = [];
    const own = [];
    for (const option of options) {
      shared.push((await second.captionEncoded(await second.projectFeatures(features), option)).tokens);
      own.push((await second.captionPixels(rgb, w, h, option)).tokens);
    }
    return {
      encoders: [encoderOf(first), encoderOf(second)],
      pixels: Array.from((await first.encodePixels(rgb, w, h)).photo),
      steps: Array.from((await first.projectFeatures(features)).photo),
      features: Array.from(features.features),
      shared,
      own,
    };
  } finally {
    await first.release();
    await second.release();
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const ort = await import(new URL("../../web/node_modules/onnxruntime-web/dist/ort.node.min.mjs", import.meta.url));
  ort.env.wasm.numThreads = 1;
  const fileFetch = async (url) => new Response(await readFile(fileURLToPath(url)));
  const [a, b, input, width, height] = process.argv.slice(2);
  process.stdout.write(JSON.stringify(await encodeSteps(ort, fileFetch, { a, b, input, width, height })));
}
