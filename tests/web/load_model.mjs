// Test helper: load a model folder with web/capgen.mjs in Node; print {ok, files, error, kind} as JSON.
import { readFile } from "node:fs/promises";
import { fileURLToPath, pathToFileURL } from "node:url";
import { loadModel } from "../../web/capgen.mjs";

const ort = await import(new URL("../../web/node_modules/onnxruntime-web/dist/ort.node.min.mjs", import.meta.url));
ort.env.wasm.numThreads = 1;
const fileFetch = async (url) => {
  try {
    return new Response(await readFile(fileURLToPath(url)));
  } catch {
    return new Response("", { status: 404 });
  }
};
const progress = [];
try {
  const captioner = await loadModel(pathToFileURL(process.argv[2]).href, {
    ort,
    int8: process.argv[3] === "int8",
    fetch: fileFetch,
    onProgress: ({ file, loaded, total }) => progress.push([file, loaded, total]),
  });
  process.stdout.write(JSON.stringify({ ok: true, info: captioner.info, progress }));
  await captioner.release();
} catch (error) {
  process.stdout.write(JSON.stringify({ ok: false, kind: error.kind, error: error.message }));
}
