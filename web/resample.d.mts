/** Pillow's resampling filters, by the names a capgen manifest uses. */
export type FilterName = "NEAREST" | "BOX" | "BILINEAR" | "HAMMING" | "BICUBIC" | "LANCZOS";

export declare const FILTER_NAMES: readonly FilterName[];

/**
 * Resize packed RGB bytes (height x width x 3) exactly as capgen's Python runtime
 * does (Pillow's resampler, horizontal pass first). Returns outHeight x outWidth x 3 bytes.
 */
export declare function resizeRGB(
  src: Uint8Array | Uint8ClampedArray,
  width: number,
  height: number,
  outWidth: number,
  outHeight: number,
  filterName?: FilterName | Lowercase<FilterName>,
): Uint8Array;
