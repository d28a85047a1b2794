// Test helper: word-gate table rows as web/capgen.mjs computes them from a site's word_gates.bin.
// argv[2]: a site folder (capgen export web); argv[3]: JSON list of word ids.
// Prints one JSON object {id: base64 of the row's little-endian float32 bytes}.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { parseManifest, wordGateRows } from "../../web/capgen.mjs";

const folder = process.argv[2];
const spec = parseManifest(JSON.parse(readFileSync(join(folder, "manifest.json"), "utf8")));
const rows = wordGateRows(spec.wordGates, new Uint8Array(readFileSync(join(folder, spec.wordGates.file))));
const out = {};
for (const id of JSON.parse(process.argv[3])) {
  const row = rows.row(id);
  const bytes = new Uint8Array(row.length * 4);
  const view = new DataView(bytes.buffer);
  row.forEach((value, i) => view.setFloat32(4 * i, value, true));
  out[id] = Buffer.from(bytes).toString("base64");
}
process.stdout.write(JSON.stringify(out));
