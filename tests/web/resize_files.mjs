// Test helper: run web/'s pixel functions over raw files.
// argv[2]: a JSON file listing jobs: {input, width, height, outWidth, outHeight, filter, output}
// (resizeRGB) or {alpha: true, input, output} (alphaOntoWhite over RGBA bytes).
import { readFileSync, writeFileSync } from "node:fs";
import { alphaOntoWhite } from "../../web/capgen.mjs";
import { resizeRGB } from "../../web/resample.mjs";

for (const job of JSON.parse(readFileSync(process.argv[2], "utf8"))) {
  const src = new Uint8Array(readFileSync(job.input));
  const out = job.alpha
    ? alphaOntoWhite(src)
    : resizeRGB(src, job.width, job.height, job.outWidth, job.outHeight, job.filter);
  writeFileSync(job.output, out);
}
