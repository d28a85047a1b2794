// Types of capgen.mjs: capgen model folders in the browser (onnxruntime-web, WASM).
import type * as OrtModule from "onnxruntime-web";

export { resizeRGB } from "./resample.mjs";

export declare const DEFAULT_MAX_PIXELS: number;
export declare const MAX_IMAGE_BYTES: number;
export declare const MAX_IMAGE_SIDE: number;
export declare const MAX_BEAM_SIZE: number;
export declare const MAX_CAPTION_LENGTH: number;

/** Every failure: one line; `kind` as the Python runtime's error categories. */
export declare class CapgenError extends Error {
  kind: "model" | "image" | "input" | "environment";
  constructor(kind: CapgenError["kind"], message: string);
}

export type StopReason = "end" | "no_word" | "max_length";

/** One caption, as runtime/decoding.py DecodingResult. */
export interface Caption {
  text: string;
  /** Generated ids, the end token included when stopReason is "end". */
  tokens: number[];
  raw: string;
  logProbability: number;
  finished: boolean;
  stopReason: StopReason;
}

export interface CaptionResult extends Caption {
  /** The next-best captions when nBest > 1. */
  alternatives: Caption[];
  /** Seconds per stage. */
  timings: { preprocess: number; encode: number; decode: number; total: number };
}

/** As runtime/decoding.py DecodingOptions: beamSize 1 is the tutorial's greedy loop. */
export interface DecodingOptions {
  beamSize?: number;
  maxLength?: number | null;
  lengthPenalty?: number | null;
  nBest?: number;
}

export interface Progress {
  file: string;
  loaded: number;
  total: number | null;
  fromCache: boolean;
}

export interface LoadOptions {
  /** The onnxruntime-web module (default: globalThis.ort). */
  ort?: typeof OrtModule;
  /** Run the model's INT8 encoder. */
  int8?: boolean;
  /** Called as each file downloads (or comes from Cache Storage). */
  onProgress?: (progress: Progress) => void;
  /** Keep verified files in Cache Storage (default true where it exists). */
  cache?: boolean;
  fetch?: (url: string, init?: RequestInit) => Promise<Response>;
  sessionOptions?: OrtModule.InferenceSession.SessionOptions;
}

export interface ModelInfo {
  name: string;
  description: string;
  demonstration: boolean;
  files: string[];
  int8: boolean;
  onnxruntime: string | null;
}

export interface ModelSpec {
  name: string;
  width: number;
  height: number;
  resizeFilter: string;
  units: number;
  projectionSize: number;
  maxLength: number;
  /** The model files this captioner runs (encoder: the INT8 one when loaded with int8). */
  files: { encoder: string; projection: string; step: string };
  /** The manifest's `files` records: each file's sha256 (and bytes, onnxruntime requirement). */
  records: Record<string, { sha256: string; bytes?: number; onnxruntime?: string | null }>;
}

export interface DecodedImage {
  /** Packed RGB bytes, height x width x 3. */
  data: Uint8Array;
  width: number;
  height: number;
}

/** An image after the encoder and the photo projection: where every search over it starts. */
export interface EncodedPhoto {
  photo: Float32Array;
  timings: { preprocess: number; encode: number };
}

/** An image after the encoder, before the photo projection (Captioner.encodeFeatures). */
export interface EncodedFeatures {
  features: Float32Array;
  timings: { preprocess: number; encode: number };
}

export declare class Captioner {
  readonly info: ModelInfo;
  readonly spec: ModelSpec;
  /** The encoder's input bytes for decoded RGB pixels (Pillow's resize, capgen's pass order). */
  preprocess(rgb: Uint8Array, width: number, height: number): Uint8Array;
  captionPixels(rgb: Uint8Array, width: number, height: number, options?: DecodingOptions): Promise<CaptionResult>;
  /** Encode once, then search several ways (captionEncoded): one encoder run per image. */
  encodePixels(rgb: Uint8Array, width: number, height: number): Promise<EncodedPhoto>;
  /** encodePixels in two steps: the encoder's features depend only on the encoder file and the
   * pixels, so models listing the same encoder (sha256 in spec.records) can share them. */
  encodeFeatures(rgb: Uint8Array, width: number, height: number): Promise<EncodedFeatures>;
  projectFeatures(encoded: EncodedFeatures): Promise<EncodedPhoto>;
  captionEncoded(encoded: EncodedPhoto, options?: DecodingOptions): Promise<CaptionResult>;
  captionBlob(blob: Blob, options?: DecodingOptions & { maxPixels?: number }): Promise<CaptionResult>;
  release(): Promise<void>;
}

/** Load a model folder served at `url` (its manifest.json and the files it lists, sha256-checked). */
export declare function loadModel(url: string, options?: LoadOptions): Promise<Captioner>;

/** Decode an image file in the browser: upright, alpha onto white, RGB bytes. */
export declare function decodeImage(blob: Blob, options?: { maxPixels?: number }): Promise<DecodedImage>;

/** Pillow's alpha_composite onto white, RGBA bytes to RGB bytes. */
export declare function alphaOntoWhite(rgba: Uint8Array | Uint8ClampedArray): Uint8Array;

export declare function sha256(bytes: BufferSource): Promise<string>;

export declare function onnxruntimeShortfall(requirement: string | null | undefined, installed: string): string | null;

export declare function decodingOptions(options?: DecodingOptions): Required<DecodingOptions>;

/** A site manifest's web.word_gates, checked: where word_gates.bin holds each array. */
export interface WordGatesSpec {
  file: string;
  vocabularySize: number;
  embeddingSize: number;
  /** 4 x the decoder's units: the step's x_gates width. */
  width: number;
  bytes: number;
  layout: Record<
    "embedding" | "kernel" | "bias" | "exception_indices" | "exception_values",
    { offset: number; length: number }
  >;
}

/** The step's word-gate table rows, computed on demand (and memoised) bit for bit as the table holds them. */
export interface WordGateRows {
  readonly width: number;
  row(word: number): Float32Array;
}

export declare function wordGateRows(spec: WordGatesSpec, bytes: Uint8Array): WordGateRows;
