// capgen in the browser: a capgen model folder, served as static files, captions
// images with onnxruntime-web and gives the Python runtime's tokens.
//
// The module takes onnxruntime-web as an argument (`ort`, the object its dist
// `.mjs` files export) instead of importing it, so it works unbundled in a page
// and in Node alike; onnxruntime-web is a peer dependency.

import { FILTER_NAMES, resizeRGB } from "./resample.mjs";
import { beamSearch, greedySearch } from "./search.mjs";

export { resizeRGB } from "./resample.mjs";

/** Pillow's bomb threshold, as runtime/preprocess.py DEFAULT_MAX_PIXELS. */
export const DEFAULT_MAX_PIXELS = 89_478_485;
/** runtime/limits.py: the most bytes read for one image, the longest side decoded. */
export const MAX_IMAGE_BYTES = 256 * 1024 * 1024;
export const MAX_IMAGE_SIDE = 65_535;
export const MAX_BEAM_SIZE = 100;
export const MAX_CAPTION_LENGTH = 1000;
const FORMAT_NAME = "capgen-model";
const SUPPORTED_FORMAT_VERSIONS = [1];
// The site manifest's `web` section (capgen export web, convert/web_step.py).
const SUPPORTED_WEB_VERSIONS = [1];
const CACHE_NAME = "capgen-models-v1";

/** Every failure this module reports: one line, with a kind as the Python runtime's errors. */
export class CapgenError extends Error {
  constructor(kind, message) {
    super(message);
    this.name = "CapgenError";
    this.kind = kind; // "model" | "image" | "input" | "environment"
  }
}

function hex(buffer) {
  return Array.from(new Uint8Array(buffer), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** The sha256 of bytes, hex; crypto.subtle exists only in secure contexts (https, localhost). */
export async function sha256(bytes) {
  const subtle = globalThis.crypto?.subtle;
  if (!subtle) {
    throw new CapgenError(
      "environment",
      "cannot check the model's sha256: crypto.subtle needs a secure context (serve the page over https or from localhost)",
    );
  }
  return hex(await subtle.digest("SHA-256", bytes));
}

function versionNumbers(text) {
  return String(text)
    .split(/[.+-]/)
    .slice(0, 3)
    .map((part) => Number.parseInt(part, 10) || 0);
}

function olderThan(installed, needed) {
  const a = versionNumbers(installed);
  const b = versionNumbers(needed);
  for (let i = 0; i < 3; i++) {
    if ((a[i] ?? 0) !== (b[i] ?? 0)) return (a[i] ?? 0) < (b[i] ?? 0);
  }
  return false;
}

/** What a manifest `files` entry needs of onnxruntime ('>=1.22'), checked as runtime/integrity.py does. */
export function onnxruntimeShortfall(requirement, installed) {
  if (requirement === undefined || requirement === null) return null;
  const needed = String(requirement).replace(/^>=/, "");
  return olderThan(installed, needed) ? needed : null;
}

function required(object, key, type, where) {
  const value = object?.[key];
  if (typeof value !== type || value === null) {
    throw new CapgenError("model", `manifest.json: ${where}${key} is missing or not a ${type}`);
  }
  return value;
}

/** The fields of manifest.json this runtime uses, checked; a bad field is the model's fault. */
export function parseManifest(data, { int8 = false } = {}) {
  if (typeof data !== "object" || data === null || data.format !== FORMAT_NAME) {
    throw new CapgenError("model", "manifest.json is not a capgen model manifest");
  }
  if (!SUPPORTED_FORMAT_VERSIONS.includes(data.format_version)) {
    throw new CapgenError(
      "model",
      `model format_version ${JSON.stringify(data.format_version)} is not supported (supports ${SUPPORTED_FORMAT_VERSIONS.join(", ")})`,
    );
  }
  const encoder = required(data, "encoder", "object", "");
  const input = required(encoder, "input", "object", "encoder.");
  const decoder = required(data, "decoder", "object", "");
  const vocabulary = required(data, "vocabulary", "object", "");
  const files = required(data, "files", "object", "");
  const filter = required(input, "resize_filter", "string", "encoder.input.").toUpperCase();
  if (!FILTER_NAMES.includes(filter)) {
    throw new CapgenError("model", `unknown resize filter ${JSON.stringify(filter)} in the model's manifest`);
  }
  for (const [key, want] of [["layout", "NHWC"], ["dtype", "uint8"], ["color_mode", "RGB"], ["channels", 3]]) {
    if (input[key] !== undefined && input[key] !== want) {
      throw new CapgenError("model", `encoder.input.${key} ${JSON.stringify(input[key])} is not supported here (only ${want})`);
    }
  }
  let encoderFile = required(encoder, "file", "string", "encoder.");
  if (int8) {
    if (typeof encoder.int8_file !== "string") {
      throw new CapgenError("model", "this model has no INT8 encoder (manifest lists no encoder.int8_file)");
    }
    encoderFile = encoder.int8_file;
  }
  const spec = {
    name: typeof data.name === "string" ? data.name : "",
    description: typeof data.description === "string" ? data.description : "",
    demonstration: data.demonstration === true,
    width: required(input, "width", "number", "encoder.input."),
    height: required(input, "height", "number", "encoder.input."),
    resizeFilter: filter,
    units: required(decoder, "units", "number", "decoder."),
    projectionSize: required(decoder, "projection_size", "number", "decoder."),
    maxLength: required(data, "max_length", "number", ""),
    vocabulary: {
      file: required(vocabulary, "file", "string", "vocabulary."),
      size: required(vocabulary, "size", "number", "vocabulary."),
      startToken: vocabulary.start_token ?? null,
      endToken: vocabulary.end_token ?? null,
      startId: vocabulary.start_id ?? null,
      endId: vocabulary.end_id ?? null,
    },
    files: {
      encoder: encoderFile,
      projection: required(decoder, "projection_file", "string", "decoder."),
      step: required(decoder, "step_file", "string", "decoder."),
    },
    records: files,
    wordGates: null,
  };
  if (data.web !== undefined) {
    // An exported site: the step without its word-gate table, and the table's factors.
    const web = required(data, "web", "object", "");
    if (!SUPPORTED_WEB_VERSIONS.includes(web.format_version)) {
      throw new CapgenError("model", `manifest.json: web.format_version ${JSON.stringify(web.format_version)} is not supported (supports ${SUPPORTED_WEB_VERSIONS.join(", ")})`);
    }
    spec.files.step = required(web, "step_file", "string", "web.");
    spec.wordGates = parseWordGates(required(web, "word_gates", "object", "web."), spec.units);
  }
  const listed = [...Object.values(spec.files), spec.vocabulary.file];
  if (spec.wordGates) listed.push(spec.wordGates.file);
  for (const name of listed) {
    const record = files[name];
    if (typeof record !== "object" || record === null || !/^[0-9a-f]{64}$/.test(record.sha256 ?? "")) {
      throw new CapgenError("model", `manifest.json lists no sha256 for ${name}`);
    }
    if (name.includes("/") || name.includes("\\") || name.startsWith(".")) {
      throw new CapgenError("model", `manifest.json names a file outside the model folder: ${JSON.stringify(name)}`);
    }
  }
  return spec;
}

const WORD_GATE_ARRAYS = ["embedding", "kernel", "bias", "exception_indices", "exception_values"];

/** The manifest's web.word_gates: the layout of word_gates.bin, checked (shapes agree, in order, aligned). */
function parseWordGates(gates, units) {
  const where = "web.word_gates.";
  const vocabularySize = required(gates, "vocabulary_size", "number", where);
  const embeddingSize = required(gates, "embedding_size", "number", where);
  const width = required(gates, "gates", "number", where);
  const arrays = required(gates, "arrays", "object", where);
  const count = required(arrays.exception_indices ?? {}, "shape", "object", `${where}arrays.exception_indices.`)[0];
  const want = {
    embedding: ["float32", [vocabularySize, embeddingSize]],
    kernel: ["float32", [embeddingSize, width]],
    bias: ["float32", [width]],
    exception_indices: ["int32", [count]],
    exception_values: ["float32", [count]],
  };
  const layout = {};
  let end = 0;
  for (const name of WORD_GATE_ARRAYS) {
    const entry = required(arrays, name, "object", `${where}arrays.`);
    const [dtype, shape] = want[name];
    const offset = entry.offset;
    const ok =
      entry.dtype === dtype &&
      Array.isArray(entry.shape) &&
      JSON.stringify(entry.shape) === JSON.stringify(shape) &&
      shape.every((n) => Number.isInteger(n) && n >= 0) &&
      offset === end;
    if (!ok) {
      throw new CapgenError("model", `manifest.json: ${where}arrays.${name} is not ${dtype} ${JSON.stringify(shape)} at byte ${end}`);
    }
    layout[name] = { offset, length: shape.reduce((a, b) => a * b, 1) };
    end += layout[name].length * 4;
  }
  if (width !== 4 * units) {
    throw new CapgenError("model", `manifest.json: ${where}gates is ${width}, the decoder's 4 x units is ${4 * units}`);
  }
  return { file: required(gates, "file", "string", where), vocabularySize, embeddingSize, width, bytes: end, layout };
}

function float32s(view, { offset, length }) {
  const out = new Float32Array(length);
  for (let i = 0; i < length; i++) out[i] = view.getFloat32(offset + 4 * i, true);
  return out;
}

/**
 * The step's word-gate table, a row at a time, from word_gates.bin (convert/web_step.py):
 * float64, in this order, one rounding per operation (no fused multiply-add): acc = 0;
 * acc = acc + embedding[w, k] * kernel[k, j] for k = 0..E-1; acc + bias[j]; Math.fround;
 * then the exceptions (flat indices into [V, G]) set the entries where that differs from
 * the table in decoder_step.onnx. So each row is the table's row, bit for bit.
 */
export function wordGateRows(spec, bytes) {
  if (bytes.length !== spec.bytes) {
    throw new CapgenError("model", `${spec.file} has ${bytes.length} bytes, its layout ${spec.bytes}`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const { vocabularySize: rows, embeddingSize: depth, width, layout } = spec;
  const embedding = float32s(view, layout.embedding);
  const kernel = float32s(view, layout.kernel);
  const bias = float32s(view, layout.bias);
  const values = float32s(view, layout.exception_values);
  const exceptions = new Map(); // row -> [[column, value], ...]
  for (let i = 0; i < layout.exception_indices.length; i++) {
    const index = view.getInt32(layout.exception_indices.offset + 4 * i, true);
    if (!(index >= 0 && index < rows * width)) {
      throw new CapgenError("model", `${spec.file}: exception index ${index} is outside the [${rows}, ${width}] table`);
    }
    const row = Math.floor(index / width);
    if (!exceptions.has(row)) exceptions.set(row, []);
    exceptions.get(row).push([index % width, values[i]]);
  }
  const memo = new Map();
  return {
    width,
    /** The step's `x_gates` input for these words: their rows, stacked. */
    feed(ort, words) {
      const rows = new Float32Array(words.length * width);
      words.forEach((word, i) => rows.set(this.row(word), i * width));
      return { x_gates: new ort.Tensor("float32", rows, [words.length, width]) };
    },
    row(word) {
      let row = memo.get(word);
      if (row !== undefined) return row;
      if (!(Number.isInteger(word) && word >= 0 && word < rows)) {
        throw new CapgenError("model", `word id ${word} has no word-gate row (the table has ${rows})`);
      }
      const acc = new Float64Array(width);
      for (let k = 0; k < depth; k++) {
        const x = embedding[word * depth + k];
        const at = k * width;
        for (let j = 0; j < width; j++) acc[j] = acc[j] + x * kernel[at + j];
      }
      row = new Float32Array(width);
      for (let j = 0; j < width; j++) row[j] = Math.fround(acc[j] + bias[j]);
      for (const [column, value] of exceptions.get(word) ?? []) row[column] = value;
      memo.set(word, row);
      return row;
    },
  };
}

function makeVocabulary(words, spec) {
  if (!Array.isArray(words) || !words.every((w) => w === null || typeof w === "string")) {
    throw new CapgenError("model", "vocabulary.json must be a JSON list of words or null");
  }
  if (words.length !== spec.size) {
    throw new CapgenError("model", `vocabulary.json has ${words.length} entries, manifest says ${spec.size}`);
  }
  for (const [name, id, token] of [["start", spec.startId, spec.startToken], ["end", spec.endId, spec.endToken]]) {
    if (id === null) continue;
    if (!(id > 0 && id < words.length) || words[id] !== token) {
      throw new CapgenError("model", `vocabulary.json: ${name} id ${id} is not the word ${JSON.stringify(token)}`);
    }
  }
  const startWord = spec.startToken ?? (spec.startId !== null ? words[spec.startId] : null) ?? "";
  return { words, startId: spec.startId, endId: spec.endId, startWord, firstInputId: spec.startId ?? 0 };
}

// --- downloads: progress, sha256, Cache Storage -----------------------------------------------

async function readWithProgress(response, onChunk) {
  if (!response.body || typeof response.body.getReader !== "function") {
    const bytes = new Uint8Array(await response.arrayBuffer());
    onChunk(bytes.length);
    return bytes;
  }
  const reader = response.body.getReader();
  const chunks = [];
  let loaded = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    loaded += value.length;
    onChunk(loaded);
  }
  const bytes = new Uint8Array(loaded);
  let at = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, at);
    at += chunk.length;
  }
  return bytes;
}

function cacheKey(baseUrl, digest) {
  // A key, never fetched: the same bytes under any model URL share one entry.
  return new URL(`/__capgen_cache__/sha256/${digest}`, baseUrl).href;
}

async function openCache(enabled) {
  if (!enabled || typeof globalThis.caches?.open !== "function") return null;
  try {
    return await globalThis.caches.open(CACHE_NAME);
  } catch {
    return null; // storage blocked (private mode, opaque origin): download every time
  }
}

async function fetchVerified(name, record, { baseUrl, fetchImpl, cache, onProgress }) {
  const total = typeof record.bytes === "number" ? record.bytes : null;
  const report = (loaded, fromCache) => onProgress?.({ file: name, loaded, total, fromCache });
  const key = cacheKey(baseUrl, record.sha256);
  if (cache) {
    const hit = await cache.match(key).catch(() => undefined);
    if (hit) {
      const bytes = new Uint8Array(await hit.arrayBuffer());
      if ((await sha256(bytes)) === record.sha256) {
        report(bytes.length, true);
        return bytes;
      }
      await cache.delete(key).catch(() => false); // damaged entry: fetch again
    }
  }
  const url = new URL(name, baseUrl).href;
  let response;
  try {
    response = await fetchImpl(url);
  } catch (error) {
    throw new CapgenError("model", `cannot download ${name} (${error?.message ?? error})`);
  }
  if (!response.ok) {
    throw new CapgenError("model", `cannot download ${name}: HTTP ${response.status}`);
  }
  const bytes = await readWithProgress(response, (loaded) => report(loaded, false));
  if (total !== null && bytes.length !== total) {
    throw new CapgenError("model", `${name} has ${bytes.length} bytes, the manifest says ${total} (a broken or partial download?)`);
  }
  const digest = await sha256(bytes);
  if (digest !== record.sha256) {
    throw new CapgenError("model", `${name} does not match the sha256 in manifest.json (damaged or altered file)`);
  }
  if (cache) {
    await cache.put(key, new Response(bytes)).catch(() => undefined); // full storage: still usable
  }
  return bytes;
}

// --- the captioner ------------------------------------------------------------------------------

function checkCount(name, value, low, high) {
  if (!Number.isInteger(value) || value < low || value > high) {
    throw new CapgenError("input", `${name} must be an integer from ${low} to ${high}, got ${JSON.stringify(value)}`);
  }
}

/** Decoding options as runtime/decoding.py DecodingOptions, with its checks. */
export function decodingOptions({ beamSize = 3, maxLength = null, lengthPenalty = null, nBest = 1 } = {}) {
  checkCount("beamSize", beamSize, 1, MAX_BEAM_SIZE);
  if (maxLength !== null) checkCount("maxLength", maxLength, 1, MAX_CAPTION_LENGTH);
  checkCount("nBest", nBest, 1, beamSize);
  if (lengthPenalty !== null && !(typeof lengthPenalty === "number" && Number.isFinite(lengthPenalty) && lengthPenalty >= 0)) {
    throw new CapgenError("input", `lengthPenalty must be a non-negative number or null, got ${JSON.stringify(lengthPenalty)}`);
  }
  return { beamSize, maxLength, lengthPenalty, nBest };
}

/** The model folder's own step takes the word ids (a site's split step takes wordGateRows' feed). */
const WORD_IDS = {
  feed(ort, words) {
    return { word: new ort.Tensor("int64", BigInt64Array.from(words, (w) => BigInt(w)), [words.length]) };
  },
};

class StepState {
  constructor(ort, session, units, photo, projectionSize, wordInput = WORD_IDS) {
    this.ort = ort;
    this.session = session;
    this.wordInput = wordInput;
    this.units = units;
    this.projectionSize = projectionSize;
    this.rowPhoto = [photo];
    this.h = [new Float32Array(units)];
    this.c = [new Float32Array(units)];
  }

  stack(rows, width) {
    const out = new Float32Array(rows.length * width);
    rows.forEach((row, i) => out.set(row, i * width));
    return out;
  }

  async step(words) {
    const { ort, units } = this;
    const n = words.length;
    const outputs = await this.session.run({
      ...this.wordInput.feed(ort, words),
      h: new ort.Tensor("float32", this.stack(this.h, units), [n, units]),
      c: new ort.Tensor("float32", this.stack(this.c, units), [n, units]),
      photo: new ort.Tensor("float32", this.stack(this.rowPhoto, this.projectionSize), [n, this.projectionSize]),
    });
    const logProbs = outputs.log_probs;
    if (logProbs?.type !== "float32" || outputs.h_out?.type !== "float32" || outputs.c_out?.type !== "float32") {
      throw new CapgenError("model", "the decoder step did not give float32 log_probs, h_out, c_out");
    }
    const h = outputs.h_out.data;
    const c = outputs.c_out.data;
    this.h = words.map((_, i) => h.slice(i * units, (i + 1) * units));
    this.c = words.map((_, i) => c.slice(i * units, (i + 1) * units));
    return logProbs.data;
  }

  keep(parents) {
    this.h = parents.map((row) => this.h[row]);
    this.c = parents.map((row) => this.c[row]);
    this.rowPhoto = parents.map((row) => this.rowPhoto[row]);
  }
}

function toResult(ranked, vocabulary) {
  const runsToLength = vocabulary.endId === null;
  const one = (hyp) => {
    const words = hyp.tokens.map((id) => vocabulary.words[id] ?? "");
    const textWords = hyp.stopReason === "end" ? words.slice(0, -1) : words;
    return {
      text: textWords.join(" "),
      tokens: hyp.tokens,
      raw: [vocabulary.startWord, ...words].join(" "),
      logProbability: hyp.logProbability,
      finished: hyp.stopReason === "end" || (runsToLength && hyp.stopReason === "max_length"),
      stopReason: hyp.stopReason,
    };
  };
  return { ...one(ranked[0]), alternatives: ranked.slice(1).map(one) };
}

export class Captioner {
  constructor(ort, spec, vocabulary, sessions, info, wordGates = null) {
    this.ort = ort;
    this.spec = spec;
    this.vocabulary = vocabulary;
    this.sessions = sessions;
    this.info = info;
    this.wordInput = wordGates ?? WORD_IDS;
  }

  /** The encoder's input: packed RGB bytes resized as the Python runtime resizes them. */
  preprocess(rgb, width, height) {
    return resizeRGB(rgb, width, height, this.spec.width, this.spec.height, this.spec.resizeFilter);
  }

  /**
   * The photo's projection for decoded RGB pixels (height x width x 3 bytes, any size): what
   * every search over this image starts from, so several searches need one encoder run.
   */
  async encodePixels(rgb, width, height) {
    return this.projectFeatures(await this.encodeFeatures(rgb, width, height));
  }

  /**
   * The encoder's features for decoded RGB pixels, before the photo projection
   * (projectFeatures). They depend only on the encoder file and the pixels: captioners
   * whose models list the same encoder (its sha256 in spec.records) can share them.
   */
  async encodeFeatures(rgb, width, height) {
    const start = performance.now();
    const pixels = this.preprocess(rgb, width, height);
    const preprocessed = performance.now();
    const { ort, spec } = this;
    const { features } = await this.sessions.encoder.run({
      image: new ort.Tensor("uint8", pixels, [1, spec.height, spec.width, 3]),
    });
    if (features?.type !== "float32" || features.dims.length !== 2 || features.dims[0] !== 1) {
      throw new CapgenError("model", "the encoder gave no float32 [1, n] 'features' output");
    }
    return {
      features: features.data,
      timings: { preprocess: (preprocessed - start) / 1000, encode: (performance.now() - preprocessed) / 1000 },
    };
  }

  /** An encoded photo for captionEncoded from encodeFeatures' result (this model's or a same-encoder one's). */
  async projectFeatures({ features, timings }) {
    if (!(features instanceof Float32Array)) {
      throw new CapgenError("input", "projectFeatures takes encodeFeatures' result ({features: Float32Array, timings})");
    }
    const start = performance.now();
    const { ort, spec } = this;
    const { photo } = await this.sessions.projection.run({
      features: new ort.Tensor("float32", features, [1, features.length]),
    });
    if (photo?.type !== "float32" || photo.data.length !== spec.projectionSize) {
      throw new CapgenError("model", `the photo projection did not give float32 [1, ${spec.projectionSize}]`);
    }
    const encode = timings.encode + (performance.now() - start) / 1000;
    return { photo: photo.data, timings: { preprocess: timings.preprocess, encode } };
  }

  /** A caption searched from an encoded photo (encodePixels), with these decoding options. */
  async captionEncoded(encoded, options = {}) {
    return this.#search(encoded, decodingOptions(options));
  }

  /** A caption for decoded RGB pixels (height x width x 3 bytes, any size). */
  async captionPixels(rgb, width, height, options = {}) {
    const opts = decodingOptions(options); // bad options fail before the encoder runs
    return this.#search(await this.encodePixels(rgb, width, height), opts);
  }

  async #search(encoded, opts) {
    const { ort, spec } = this;
    const start = performance.now();
    const state = new StepState(ort, this.sessions.step, spec.units, encoded.photo, spec.projectionSize, this.wordInput);
    const maxLength = opts.maxLength ?? spec.maxLength;
    const ranked =
      opts.beamSize === 1
        ? await greedySearch(state, this.vocabulary, maxLength)
        : await beamSearch(state, this.vocabulary, maxLength, opts.beamSize, opts.lengthPenalty, opts.nBest);
    const decode = (performance.now() - start) / 1000;
    const result = toResult(ranked, this.vocabulary);
    const { preprocess, encode } = encoded.timings;
    result.timings = { preprocess, encode, decode, total: preprocess + encode + decode };
    return result;
  }

  /** A caption for an image file (a Blob or File) decoded by the browser (see decodeImage). */
  async captionBlob(blob, options = {}) {
    const { data, width, height } = await decodeImage(blob, options);
    return this.captionPixels(data, width, height, options);
  }

  async release() {
    await Promise.all(Object.values(this.sessions).map((s) => s.release?.()));
  }
}

/**
 * Load the model folder at `url` (its manifest.json and the files it lists):
 * every file's sha256 and size are checked, its onnxruntime requirement too;
 * verified files are kept in Cache Storage (keyed by sha256), so a second
 * visit does not download them again.
 */
export async function loadModel(url, options = {}) {
  const ort = options.ort ?? globalThis.ort;
  if (!ort?.InferenceSession) {
    throw new CapgenError("environment", "onnxruntime-web is not loaded: pass { ort } (the module its dist .mjs exports)");
  }
  const fetchImpl = options.fetch ?? globalThis.fetch.bind(globalThis);
  const base = new URL(url.endsWith("/") ? url : `${url}/`, globalThis.location?.href ?? undefined).href;
  let manifestData;
  try {
    const response = await fetchImpl(new URL("manifest.json", base).href, { cache: "no-cache" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    manifestData = await response.json();
  } catch (error) {
    throw new CapgenError("model", `cannot read ${base}manifest.json (${error?.message ?? error})`);
  }
  const spec = parseManifest(manifestData, { int8: options.int8 === true });
  const installed = ort.env?.versions?.web ?? ort.env?.versions?.common;
  const cache = await openCache(options.cache !== false);
  const context = { baseUrl: base, fetchImpl, cache, onProgress: options.onProgress };
  const names = [spec.vocabulary.file, spec.files.projection, spec.files.step];
  if (spec.wordGates) names.push(spec.wordGates.file);
  names.push(spec.files.encoder);
  const bytes = {};
  for (const name of names) {
    const record = spec.records[name];
    const needed = installed ? onnxruntimeShortfall(record.onnxruntime, installed) : null;
    if (needed !== null) {
      throw new CapgenError("model", `${name} needs onnxruntime >= ${needed}, this is onnxruntime-web ${installed}`);
    }
    bytes[name] = await fetchVerified(name, record, context);
  }
  let words;
  try {
    words = JSON.parse(new TextDecoder().decode(bytes[spec.vocabulary.file]));
  } catch (error) {
    throw new CapgenError("model", `cannot read the vocabulary (${error.message})`);
  }
  const vocabulary = makeVocabulary(words, spec.vocabulary);
  const wordGates = spec.wordGates ? wordGateRows(spec.wordGates, bytes[spec.wordGates.file]) : null;
  const sessionOptions = { executionProviders: ["wasm"], graphOptimizationLevel: "all", ...options.sessionOptions };
  const sessions = {};
  for (const [role, name] of Object.entries(spec.files)) {
    try {
      sessions[role] = await ort.InferenceSession.create(bytes[name], sessionOptions);
    } catch (error) {
      throw new CapgenError("model", `${name}: onnxruntime-web cannot load it (${String(error?.message ?? error).split("\n")[0]})`);
    }
  }
  const info = {
    name: spec.name,
    description: spec.description,
    demonstration: spec.demonstration,
    files: names,
    int8: options.int8 === true,
    onnxruntime: installed ?? null,
  };
  return new Captioner(ort, spec, vocabulary, sessions, info, wordGates);
}

// --- decoding image files in the browser -----------------------------------------------------

/**
 * Pillow's alpha_composite onto opaque white, then RGB (runtime/preprocess.py
 * `_alpha_on_white`): RGBA bytes in, packed RGB bytes out, the same integers.
 */
export function alphaOntoWhite(rgba) {
  const n = rgba.length / 4;
  const out = new Uint8Array(n * 3);
  for (let i = 0; i < n; i++) {
    const a = rgba[i * 4 + 3];
    for (let ch = 0; ch < 3; ch++) {
      let v;
      if (a === 255) v = rgba[i * 4 + ch];
      else if (a === 0) v = 255;
      else {
        // AlphaComposite.c with dst = white: coef1 = a * 128, coef2 = (255 - a) * 128
        const tmp = rgba[i * 4 + ch] * a * 128 + 255 * (255 - a) * 128 + (0x80 << 7);
        v = (((tmp >>> 8) + tmp) >>> 8) >>> 7;
      }
      out[i * 3 + ch] = v;
    }
  }
  return out;
}

/**
 * A Blob/File decoded by the browser: upright (EXIF orientation applied), no
 * colour management (Pillow applies none), transparent pixels onto white, as
 * packed RGB bytes. The byte limit is checked before decoding, the pixel limits
 * before any pixel is copied.
 */
export async function decodeImage(blob, { maxPixels = DEFAULT_MAX_PIXELS } = {}) {
  if (blob.size === 0) throw new CapgenError("image", "empty file");
  if (blob.size > MAX_IMAGE_BYTES) {
    throw new CapgenError("image", `image file is more than ${MAX_IMAGE_BYTES.toLocaleString("en")} bytes, the most capgen reads for one image`);
  }
  let bitmap;
  try {
    bitmap = await createImageBitmap(blob, {
      imageOrientation: "from-image",
      premultiplyAlpha: "none",
      colorSpaceConversion: "none",
    });
  } catch {
    throw new CapgenError("image", "not an image this browser can decode (JPEG, PNG, GIF, BMP, WebP)");
  }
  try {
    const { width, height } = bitmap;
    if (width * height > maxPixels) {
      throw new CapgenError("image", `image is ${width}x${height} = ${width * height} pixels, more than the ${maxPixels} capgen decodes (decompression bomb guard)`);
    }
    if (Math.max(width, height) > MAX_IMAGE_SIDE) {
      throw new CapgenError("image", `image is ${width}x${height} pixels; capgen decodes no side longer than ${MAX_IMAGE_SIDE} pixels`);
    }
    const canvas = typeof OffscreenCanvas === "function" ? new OffscreenCanvas(width, height) : Object.assign(document.createElement("canvas"), { width, height });
    const context = canvas.getContext("2d", { willReadFrequently: true, colorSpace: "srgb" });
    context.drawImage(bitmap, 0, 0);
    const rgba = context.getImageData(0, 0, width, height, { colorSpace: "srgb" }).data;
    return { data: alphaOntoWhite(rgba), width, height };
  } finally {
    bitmap.close();
  }
}
