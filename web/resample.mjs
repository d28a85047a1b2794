// Pillow's resampler (libImaging/Resample.c, 8 bits per channel), ported so that
// the browser feeds the encoder the bytes the Python runtime feeds it.
//
// Why a port: the canvas's own drawImage scaling is not Pillow's, and the
// encoder's features, then some captions, change with it. Why this order:
// capgen resizes in two one-axis passes, the horizontal one first, on every
// Pillow (runtime/preprocess.py `resize`); each pass rounds to uint8 as Pillow
// does. tests/web checks this port against Pillow byte for byte.

const PRECISION_BITS = 32 - 8 - 2;
const ONE = 1 << PRECISION_BITS;
const HALF = 1 << (PRECISION_BITS - 1);
const F054 = Math.fround(0.54); // Resample.c's hamming window uses float literals
const F046 = Math.fround(0.46);

function sinc(x) {
  if (x === 0.0) return 1.0;
  const px = x * Math.PI;
  return Math.sin(px) / px;
}

/** name -> [filter function, support], as in Resample.c. */
export const FILTERS = Object.freeze({
  BOX: [(x) => (x > -0.5 && x <= 0.5 ? 1.0 : 0.0), 0.5],
  BILINEAR: [
    (x) => {
      const a = Math.abs(x);
      return a < 1.0 ? 1.0 - a : 0.0;
    },
    1.0,
  ],
  HAMMING: [
    (x) => {
      let a = Math.abs(x);
      if (a === 0.0) return 1.0;
      if (a >= 1.0) return 0.0;
      a *= Math.PI;
      return (Math.sin(a) / a) * (F054 + F046 * Math.cos(a));
    },
    1.0,
  ],
  BICUBIC: [
    (x) => {
      const a = -0.5;
      const t = Math.abs(x);
      if (t < 1.0) return ((a + 2.0) * t - (a + 3.0)) * t * t + 1;
      if (t < 2.0) return (((t - 5) * t + 8) * t - 4) * a;
      return 0.0;
    },
    2.0,
  ],
  LANCZOS: [(x) => (x >= -3.0 && x < 3.0 ? sinc(x) * sinc(x / 3) : 0.0), 3.0],
});

/** The filter names a manifest's `encoder.input.resize_filter` may hold. */
export const FILTER_NAMES = Object.freeze(["NEAREST", ...Object.keys(FILTERS)]);

// precompute_coeffs + normalize_coeffs_8bpc: integer weights per output pixel.
function coefficients(inSize, outSize, [filter, filterSupport]) {
  const scale = inSize / outSize;
  const filterscale = scale < 1.0 ? 1.0 : scale;
  const support = filterSupport * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const weights = new Int32Array(outSize * ksize);
  const bounds = new Int32Array(outSize * 2);
  const row = new Float64Array(ksize);
  const ss = 1.0 / filterscale;
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    let ww = 0.0;
    const xmin = Math.max(Math.trunc(center - support + 0.5), 0);
    const xmax = Math.min(Math.trunc(center + support + 0.5), inSize) - xmin;
    for (let x = 0; x < xmax; x++) {
      const w = filter((x + xmin - center + 0.5) * ss);
      row[x] = w;
      ww += w;
    }
    for (let x = 0; x < xmax; x++) {
      const k = ww !== 0.0 ? row[x] / ww : row[x];
      weights[xx * ksize + x] = Math.trunc(k < 0 ? -0.5 + k * ONE : 0.5 + k * ONE);
    }
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = xmax;
  }
  return { ksize, weights, bounds };
}

function clip8(sum) {
  // sum >> PRECISION_BITS, clipped: Resample.c's clip8 (sums fit int32, so floor is the shift)
  const v = Math.floor(sum / ONE);
  return v < 0 ? 0 : v > 255 ? 255 : v;
}

// One output pixel: `taps` weighted source pixels from `start`, `step` bytes apart, into out[o..o+2].
function convolve(src, start, step, weights, k, taps, out, o) {
  let s0 = HALF;
  let s1 = HALF;
  let s2 = HALF;
  for (let t = 0; t < taps; t++) {
    const w = weights[k + t];
    const p = start + t * step;
    s0 += src[p] * w;
    s1 += src[p + 1] * w;
    s2 += src[p + 2] * w;
  }
  out[o] = clip8(s0);
  out[o + 1] = clip8(s1);
  out[o + 2] = clip8(s2);
}

function horizontal(src, width, height, outWidth, filter) {
  const { ksize, weights, bounds } = coefficients(width, outWidth, filter);
  const out = new Uint8Array(outWidth * height * 3);
  for (let y = 0; y < height; y++) {
    const line = y * width * 3;
    for (let xx = 0; xx < outWidth; xx++) {
      const start = line + bounds[xx * 2] * 3;
      convolve(src, start, 3, weights, xx * ksize, bounds[xx * 2 + 1], out, (y * outWidth + xx) * 3);
    }
  }
  return out;
}

function vertical(src, width, height, outHeight, filter) {
  const { ksize, weights, bounds } = coefficients(height, outHeight, filter);
  const out = new Uint8Array(width * outHeight * 3);
  for (let yy = 0; yy < outHeight; yy++) {
    const ymin = bounds[yy * 2];
    const ymax = bounds[yy * 2 + 1];
    for (let xx = 0; xx < width; xx++) {
      convolve(src, (ymin * width + xx) * 3, width * 3, weights, yy * ksize, ymax, out, (yy * width + xx) * 3);
    }
  }
  return out;
}

// Pillow's NEAREST resize is an affine transform (Geometry.c ImagingScaleAffine):
// source positions accumulate in doubles from the first pixel's centre.
function nearestPositions(inSize, outSize) {
  const step = inSize / outSize;
  const positions = new Int32Array(outSize);
  let pos = step * 0.5;
  for (let i = 0; i < outSize; i++) {
    positions[i] = pos < 0.0 ? -1 : Math.trunc(pos);
    pos += step;
  }
  return positions;
}

function nearest(src, width, height, outWidth, outHeight) {
  const xs = nearestPositions(width, outWidth);
  const ys = nearestPositions(height, outHeight);
  const out = new Uint8Array(outWidth * outHeight * 3);
  for (let y = 0; y < outHeight; y++) {
    for (let x = 0; x < outWidth; x++) {
      const p = (ys[y] * width + xs[x]) * 3;
      const o = (y * outWidth + x) * 3;
      out[o] = src[p];
      out[o + 1] = src[p + 1];
      out[o + 2] = src[p + 2];
    }
  }
  return out;
}

/**
 * Resize packed RGB bytes (height x width x 3) as capgen's Python runtime does:
 * Pillow's filter, the horizontal pass first, a pass skipped when its size
 * does not change. Returns a new Uint8Array of outHeight x outWidth x 3.
 */
export function resizeRGB(src, width, height, outWidth, outHeight, filterName = "BICUBIC") {
  const name = String(filterName).toUpperCase();
  if (!FILTER_NAMES.includes(name)) {
    throw new RangeError(`unknown resize filter ${JSON.stringify(filterName)}`);
  }
  if (src.length !== width * height * 3) {
    throw new RangeError(`expected ${width}x${height}x3 bytes, got ${src.length}`);
  }
  let pixels = src;
  if (name === "NEAREST") {
    if (width !== outWidth) pixels = nearest(pixels, width, height, outWidth, height);
    if (height !== outHeight) pixels = nearest(pixels, outWidth, height, outWidth, outHeight);
  } else {
    if (width !== outWidth) pixels = horizontal(pixels, width, height, outWidth, FILTERS[name]);
    if (height !== outHeight) pixels = vertical(pixels, outWidth, height, outHeight, FILTERS[name]);
  }
  return pixels === src ? new Uint8Array(src) : pixels;
}
