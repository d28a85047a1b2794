"""A fresh process that captions one photo with capgen's API and says where the time went.

`capgen caption` is what the cold-start figure times; this probe does the
same work through the Python API with a clock between stages, so the
latency breakdown chart can show imports, model load, preprocessing,
encoder and decoder for capgen as the tutorial script's `--timings` does.

Run: python benchmarks/capgen_probe.py MODEL_DIR PHOTO TIMINGS_JSON [--beam N] [--int8]
"""

from __future__ import annotations

import time

_STARTED = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir")
    parser.add_argument("photo")
    parser.add_argument("timings")
    parser.add_argument("--beam", type=int, default=1)
    parser.add_argument("--int8", action="store_true")
    args = parser.parse_args()
    from capgen import Captioner

    imported = time.perf_counter()
    captioner = Captioner(args.model_dir, int8=args.int8)
    loaded = time.perf_counter()
    result = captioner.caption(args.photo, beam_size=args.beam)
    print(result.text)
    stages = {
        "imports": imported - _STARTED,
        "model_load": loaded - imported,
        "preprocess": result.timings["preprocess"],
        "encode": result.timings["encode"],
        "decode": result.timings["decode"],
    }
    with open(args.timings, "w") as handle:
        json.dump(stages, handle)


if __name__ == "__main__":
    main()
