"""Section "web" (issue 27): the exported site's captions in headless Chromium against the Python runtime.

`capgen export web --int8` writes the default model's site into a scratch
folder, served on 127.0.0.1 with COOP/COEP (static_site.py); one headless
Chromium with a fresh profile (chromium.py) opens a blank page of the same
origin, imports the site's onnxruntime-web and capgen.mjs, asks for
`THREADS` WASM threads and then measures in the page with performance.now():

- the model load (`loadModel`, cold: empty Cache Storage and HTTP cache; the
  download from 127.0.0.1, every file's sha256, the WASM compile, the sessions);
- the first caption (greedy, the first photo), then one untimed pass over the
  photos (V8 tiers the WASM up in the background during the first captions);
- warm greedy captions of the example photos (examples/*.jpg, fetched from the
  same server as Blobs first), each `captionBlob` with its stages: the
  browser's image decoding, the resize, the encoder (with the photo
  projection), the search;
- warm beam-3 captions of the same photos;
- the model load again, from Cache Storage (a second visit);

and then opens the site's own page (index.html) to record that it runs
cross-origin isolated and how many threads onnxruntime-web uses there (the
page asks for min(4, cores)). onnxruntime-web falls back to one thread
without isolation and says so in `env.wasm.numThreads`, which is what
"threads" records.

The Python runtime (`Captioner(int8=True, threads=2)`, this process) captions
the same photos' bytes in the same run, the two arms taking turns repetition
by repetition (who goes first alternates); the ratio is the browser's median
÷ Python's. Issue 27's goal row: the warm greedy caption in Chromium ≤ 0.5 s
with 2 threads, met only when the page was isolated and really had 2 threads.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from capgen.benchmarks import chromium
from capgen.benchmarks.goals import goal_table, row
from capgen.benchmarks.processes import in_turn
from capgen.benchmarks.stats import ratio_range, speedup, summarize

Echo = Callable[[str], None]
THREADS = 2
GOAL_SECONDS = 0.5
WAIT_S = 600.0  # a bound for one WebDriver call on a loaded machine, not a timing
SETTLE_SECONDS = 0.05
BENCH_PAGE = "bench.html"
BLANK = (
    '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
    "<title>capgen web bench</title></head><body></body></html>\n"
)
# Stages of one warm caption in the page (seconds); `caption` is captionBlob's wall time.
WEB_STAGES = ("caption", "image_decode", "preprocess", "encode", "search")
PYTHON_STAGES = ("caption", "preprocess", "encode", "search")

LOAD_SCRIPT = """
const [threads, photoUrls, done] = arguments;
(async () => {
  const site = new URL("site/", location.href).href;
  const ort = await import(site + "ort.wasm.min.mjs");
  const capgen = await import(site + "capgen.mjs");
  ort.env.wasm.wasmPaths = site;
  ort.env.wasm.numThreads = threads;
  const photos = [];
  for (const url of photoUrls) photos.push(await (await fetch(url)).blob());
  const started = performance.now();
  const captioner = await capgen.loadModel(site, { ort, int8: true });
  const load = (performance.now() - started) / 1000;
  globalThis.capgenBench = { ort, capgen, captioner, photos, site };
  done({
    load, isolated: globalThis.crossOriginIsolated === true, threads: ort.env.wasm.numThreads,
    hardwareConcurrency: navigator.hardwareConcurrency, onnxruntime: captioner.info.onnxruntime,
    files: captioner.info.files, userAgent: navigator.userAgent,
  });
})().catch((error) => done({ error: String(error?.stack ?? error) }));
"""
CAPTION_SCRIPT = """
const [beamSize, indices, done] = arguments;
(async () => {
  const { captioner, photos } = globalThis.capgenBench;
  const rows = [];
  for (const index of indices) {
    const started = performance.now();
    const result = await captioner.captionBlob(photos[index], { beamSize, nBest: 1 });
    const caption = (performance.now() - started) / 1000;
    const t = result.timings;
    rows.push({
      caption, image_decode: Math.max(caption - t.total, 0), preprocess: t.preprocess,
      encode: t.encode, search: t.decode, tokens: result.tokens, text: result.text,
    });
  }
  done(rows);
})().catch((error) => done({ error: String(error?.stack ?? error) }));
"""
CACHED_LOAD_SCRIPT = """
const [done] = arguments;
(async () => {
  const { ort, capgen, site } = globalThis.capgenBench;
  const cached = [];
  const onProgress = ({ file, fromCache }) => { if (fromCache && !cached.includes(file)) cached.push(file); };
  const started = performance.now();
  const again = await capgen.loadModel(site, { ort, int8: true, onProgress });
  const load = (performance.now() - started) / 1000;
  await again.release();
  done({ load, cached });
})().catch((error) => done({ error: String(error?.stack ?? error) }));
"""
PAGE_STATE_SCRIPT = (
    "return {state: document.body.dataset.state || '', isolated: globalThis.crossOriginIsolated,"
    " model: document.getElementById('model').textContent};"
)
PAGE_THREADS_SCRIPT = """
const [done] = arguments;
import(new URL("ort.wasm.min.mjs", location.href).href)
  .then((ort) => done(ort.env.wasm.numThreads))
  .catch((error) => done({ error: String(error) }));
"""


def example_photos() -> list[Path]:
    from capgen.benchmarks.fixtures import REPO_ROOT

    return sorted((REPO_ROOT / "examples").glob("*.jpg"))


def why_not(model_dir: Path | None = None) -> str | None:
    """Why the section cannot run here, in one line (None: it can)."""
    from capgen.convert.web_export import ORT_FILES, default_ort_dir
    from capgen.runtime.captioner import resolve_model_dir
    from capgen.runtime.errors import CapgenError
    from capgen.runtime.manifest import load_manifest

    reason = chromium.missing()
    if reason is not None:
        return reason
    ort = default_ort_dir()
    if not all((ort / name).is_file() for name in ORT_FILES):
        return (
            f"onnxruntime-web is not installed in {ort.parents[1]} (run `make web`: npm ci there)"
        )
    try:
        folder, _ = resolve_model_dir(model_dir)
        manifest = load_manifest(folder)
    except CapgenError as exc:
        return f"the default model is not built here ({exc}); `capgen setup` builds it"
    if manifest.encoder.int8_file is None:
        return f"{folder} has no INT8 encoder (capgen convert quantize)"
    if not example_photos():
        return "no example photos in examples/*.jpg"
    return None


class _Page:
    """The WebDriver calls the section makes, each one failing with the page's own message."""

    def __init__(self, client: Any, session: str) -> None:
        self.client, self.session = client, session
        answer = client.post(f"{session}/timeouts", json={"script": int(WAIT_S * 1000)})
        if answer.status_code != 200:
            raise RuntimeError(f"chromedriver refused the script timeout: {answer.text}")

    def open(self, url: str) -> None:
        chromium.open_url(self.client, self.session, url)

    def run(self, script: str, *args: Any) -> Any:
        value = chromium.execute(self.client, self.session, script, *args, asynchronous=True)
        if isinstance(value, dict) and "error" in value:
            raise RuntimeError(f"in Chromium: {value['error']}")
        return value

    def state(self) -> dict[str, Any]:
        return dict(chromium.execute(self.client, self.session, PAGE_STATE_SCRIPT))


def _python_arm(captioner: Any, photos: Sequence[bytes], beam: int) -> list[dict[str, Any]]:
    rows = []
    for data in photos:
        started = time.perf_counter()
        result = captioner.caption(data, beam_size=beam, n_best=1)
        caption = time.perf_counter() - started
        t = result.timings
        rows.append(
            {
                "caption": caption,
                "preprocess": t["preprocess"],
                "encode": t["encode"],
                "search": t["decode"],
                "tokens": list(result.tokens),
            }
        )
    return rows


def _stats(rows: list[dict[str, Any]], stages: Sequence[str]) -> dict[str, Any]:
    return {stage: summarize([float(row[stage]) for row in rows]) for stage in stages}


def _compare(
    page: _Page, captioner: Any, photos: Sequence[bytes], beam: int, repetitions: int
) -> dict[str, Any]:
    """Both arms caption every photo, `repetitions` times, taking turns (who goes first alternates)."""
    indices = list(range(len(photos)))
    arms: dict[str, Callable[[], list[dict[str, Any]]]] = {
        "web": lambda: page.run(CAPTION_SCRIPT, beam, indices),
        "python": lambda: _python_arm(captioner, photos, beam),
    }
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in arms}
    for turn in range(repetitions):
        for name in in_turn(list(arms), turn):
            time.sleep(SETTLE_SECONDS)  # let the other arm's threads stop spinning
            rows[name] += arms[name]()
    web, python = _stats(rows["web"], WEB_STAGES), _stats(rows["python"], PYTHON_STAGES)
    same = sum(
        a["tokens"] == b["tokens"]
        for a, b in zip(rows["web"][: len(photos)], rows["python"][: len(photos)], strict=True)
    )
    return {
        "web": web,
        "python": python,
        # How many times longer the browser takes: its median ÷ Python's (IQRs crossed for the range).
        "ratio": speedup(web["caption"], python["caption"]),
        "ratio_range": ratio_range(web["caption"], python["caption"]),
        "same_tokens": f"{same}/{len(photos)}",
        "captions": [row["text"] for row in rows["web"][: len(photos)]],
    }


def _check_page(page: _Page, url: str) -> dict[str, Any]:
    """The site's own page: loaded (from Cache Storage by now), isolated, its thread count."""
    page.open(url)
    deadline = time.monotonic() + WAIT_S
    while (status := page.state())["state"] not in ("ready", "failed"):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the site's page did not load its model in {WAIT_S:.0f} s")
        time.sleep(0.25)
    if status["state"] != "ready":
        raise RuntimeError(f"the site's page failed: {status['model']}")
    return {
        "isolated": status["isolated"] is True,
        "threads": int(page.run(PAGE_THREADS_SCRIPT)),
    }


def measure_web(
    model_dir: Path | None,
    photos: Sequence[Path],
    repetitions: int,
    echo: Echo,
    warmup: bool = True,
) -> dict[str, Any]:
    """The section's numbers (see the module's docstring); raises RuntimeError with the page's message.

    `warmup`: the untimed pass over the photos before the timed ones (the bench always makes
    it; a smoke test, whose numbers mean nothing, may leave it out).
    """
    from capgen import Captioner
    from capgen.benchmarks.static_site import serve_folder
    from capgen.convert.web_export import export_web
    from capgen.runtime.captioner import max_threads, resolve_model_dir

    folder, _ = resolve_model_dir(model_dir)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="capgen-web-bench-") as scratch:
        root = Path(scratch)
        export_web(root / "site", model=folder, int8=True)
        (root / "photos").mkdir()
        for photo in photos:
            shutil.copyfile(photo, root / "photos" / photo.name)
        (root / BENCH_PAGE).write_text(BLANK)
        threads = min(THREADS, max_threads())
        captioner = Captioner(folder, int8=True, threads=threads)
        data = [photo.read_bytes() for photo in photos]
        _python_arm(captioner, data[:1], 1)  # its first caption: allocations, not speed
        with (
            serve_folder(root) as url,
            chromium.chromium_session(root / "profile", WAIT_S) as (client, session),
        ):
            page = _Page(client, session)
            page.open(url + BENCH_PAGE)
            urls = [f"{url}photos/{photo.name}" for photo in photos]
            loaded = page.run(LOAD_SCRIPT, THREADS, urls)
            echo(
                f"  model load (cold) {loaded['load']:.2f} s; isolated {loaded['isolated']}, "
                f"{loaded['threads']} thread(s), onnxruntime-web {loaded['onnxruntime']}"
            )
            (first,) = page.run(CAPTION_SCRIPT, 1, [0])
            # One untimed pass over the photos: WebAssembly's optimising tier compiles the hot
            # functions in the background during the first captions (they ran 30% slower).
            if warmup:
                page.run(CAPTION_SCRIPT, 1, list(range(len(photos))))
            greedy = _compare(page, captioner, data, 1, repetitions)
            echo(
                f"  warm greedy: Chromium {greedy['web']['caption']['median']:.3f} s "
                f"(encoder {greedy['web']['encode']['median']:.3f} s), Python "
                f"{greedy['python']['caption']['median'] * 1000:.0f} ms: {greedy['ratio']:.1f}x"
            )
            beam3 = _compare(page, captioner, data, 3, repetitions)
            echo(
                f"  warm beam 3: Chromium {beam3['web']['caption']['median']:.3f} s, Python "
                f"{beam3['python']['caption']['median'] * 1000:.0f} ms"
            )
            cached = page.run(CACHED_LOAD_SCRIPT)
            site_page = _check_page(page, url + "site/")
    del first["tokens"]
    section: dict[str, Any] = {
        "model": str(folder),
        "int8": True,
        "threads_asked": THREADS,
        "python_threads": threads,
        "photos": [photo.name for photo in photos],
        "repetitions": repetitions,
        "browser": {
            "user_agent": loaded["userAgent"],
            "onnxruntime_web": loaded["onnxruntime"],
            "isolated": loaded["isolated"],
            "threads": loaded["threads"],
            "hardware_concurrency": loaded["hardwareConcurrency"],
            "files": loaded["files"],
        },
        "page": site_page,
        "load_seconds": loaded["load"],
        "load_cached_seconds": cached["load"],
        "load_cached_files": len(cached["cached"]),
        "first_caption": first,
        "greedy": greedy,
        "beam3": beam3,
        "seconds": round(time.monotonic() - started, 1),
    }
    section["goal"] = goal_row(section)
    return section


def goal_row(section: dict[str, Any]) -> dict[str, Any]:
    """Issue 27's goal: warm greedy caption in Chromium ≤ 0.5 s, 2 threads, default model INT8."""
    browser = section["browser"]
    median = float(section["greedy"]["web"]["caption"]["median"])
    entry = row(
        f"warm greedy caption in Chromium, {THREADS} threads, default model INT8 (s)",
        median,
        "<=",
        GOAL_SECONDS,
        f"median of {section['greedy']['web']['caption']['n']} captions "
        f"({len(section['photos'])} example photos × {section['repetitions']}); "
        f"Python runtime {section['greedy']['python']['caption']['median'] * 1000:.0f} ms "
        f"({section['greedy']['ratio']:.1f}× faster)",
    )
    if not (browser["isolated"] and browser["threads"] == THREADS):
        entry["met"] = False
        entry["detail"] += (
            f"; not counted: isolated {browser['isolated']}, {browser['threads']} thread(s)"
        )
    return entry


def _chromium_version(user_agent: str) -> str:
    found = re.search(r"Chrome/([\d.]+)", user_agent)
    return found.group(1) if found else user_agent


def _ms(stats: dict[str, Any]) -> str:
    return f"{stats['median'] * 1000:.0f} ({stats['q1'] * 1000:.0f}–{stats['q3'] * 1000:.0f})"


def markdown(section: dict[str, Any]) -> list[str]:
    """RESULTS.md lines: the stages in Chromium and in Python, then issue 27's goal row."""
    if "skipped" in section:
        return ["", f"## Web: captions in Chromium\n**Not run: {section['skipped']}**"]
    if "error" in section:
        return ["", f"## Web: captions in Chromium\n**Not measured: {section['error']}**"]
    browser = section["browser"]
    first = section["first_caption"]
    lines = [
        "",
        f"## Web: captions in Chromium (default model INT8, {browser['threads']} WASM threads)",
        "",
        "`capgen export web --int8` served on 127.0.0.1 with COOP/COEP; headless Chromium "
        f"{_chromium_version(browser['user_agent'])}, "
        f"onnxruntime-web {browser['onnxruntime_web']}, cross-origin isolated: "
        f"{'yes' if browser['isolated'] else 'NO'}; the site's own page: isolated "
        f"{'yes' if section['page']['isolated'] else 'NO'}, {section['page']['threads']} thread(s). "
        f"{len(section['photos'])} example photos × {section['repetitions']} repetitions per arm, "
        "the browser and the Python runtime (`Captioner(int8=True, threads="
        f"{section['python_threads']})`, same bytes) taking turns. Milliseconds, median (IQR).",
        "",
        f"- model load, cold (empty caches): {section['load_seconds']:.2f} s; again from Cache "
        f"Storage: {section['load_cached_seconds']:.2f} s ({section['load_cached_files']} files)",
        f"- first caption (greedy): {first['caption'] * 1000:.0f} ms (encoder "
        f"{first['encode'] * 1000:.0f} ms, search {first['search'] * 1000:.0f} ms)",
        "",
        "| warm caption | arm | whole caption | image decode | resize | encoder | search | browser ÷ Python | same tokens |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, label in (("greedy", "greedy"), ("beam3", "beam 3")):
        entry = section[key]
        web, python = entry["web"], entry["python"]
        low, high = entry["ratio_range"]
        lines.append(
            f"| {label} | Chromium | {_ms(web['caption'])} | {_ms(web['image_decode'])} | "
            f"{_ms(web['preprocess'])} | {_ms(web['encode'])} | {_ms(web['search'])} | "
            f"{entry['ratio']:.1f}× ({low:.1f}–{high:.1f}) | {entry['same_tokens']} |"
        )
        lines.append(
            f"| {label} | Python | {_ms(python['caption'])} | (in resize) | "
            f"{_ms(python['preprocess'])} | {_ms(python['encode'])} | {_ms(python['search'])} | | |"
        )
    return [*lines, "", "### Goal (issue 27)", *goal_table({"web": section["goal"]})]
