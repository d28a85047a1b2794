"""A long-lived measuring process for one arm: the tutorial's Keras code, or capgen.

The benchmark keeps one worker per arm alive and sends them the same
requests in alternation (one JSON object per line on stdin, one answer per
line on stdout), so both arms see the same machine state, and TensorFlow and
onnxruntime never share a process (each would distort the other's memory and
threads). Timing happens inside the worker, around the measured call only.

Run: python -m capgen.benchmarks.worker {baseline|capgen} MODEL_JSON [--int8] [--weights W]
     [--provider NAME] [--precision MODE] (the OpenVINO arm runs this in its own venv: benchmarks/provider_venv.py)
"""

from __future__ import annotations

import time

_STARTED = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from capgen.benchmarks.fixtures import BenchModel  # noqa: E402


def _peak_rss_mb() -> float:
    """This process's own high-water mark (VmHWM). getrusage's ru_maxrss would
    also count the parent's peak, which Linux carries across fork and exec."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _current_rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


class BaselineArm:
    """The tutorial's functions (benchmarks/tutorial/main.py), warm: models loaded once."""

    def __init__(self, model: BenchModel, weights: Path) -> None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        started = time.perf_counter()
        from capgen.benchmarks.tutorial import main as tutorial

        self.tutorial = tutorial
        imported = time.perf_counter()
        self.model, self.tokenizer, self.xception = tutorial.load_everything(
            str(model.keras_file), str(model.tokenizer), str(weights)
        )
        self.colour = model.colour
        self.max_length = tutorial.model_max_length(self.model)
        self.setup = {"imports": imported - started, "model_load": time.perf_counter() - imported}
        self._features: dict[str, np.ndarray] = {}

    def _scaled_pixels(self, photo: str) -> np.ndarray:
        """The preprocessing lines of the tutorial's extract_features, alone."""
        from PIL import Image

        image = np.array(Image.open(photo).resize((299, 299)))
        return np.expand_dims(image, axis=0) / 127.5 - 1.0

    def features(self, photo: str) -> np.ndarray:
        if photo not in self._features:
            self._features[photo] = self.tutorial.extract_features(
                photo, self.xception, self.colour
            )
        return self._features[photo]

    def latency(self, photo: str, beam: int) -> dict[str, Any]:
        started = time.perf_counter()
        self._scaled_pixels(photo)
        preprocessed = time.perf_counter()
        features = self.tutorial.extract_features(photo, self.xception, self.colour)
        encoded = time.perf_counter()
        text = self._decode(features, beam, None)
        done = time.perf_counter()
        # extract_features repeats the preprocessing; subtract it to get the encoder alone.
        preprocess = preprocessed - started
        return {
            "seconds": done - preprocessed,
            "text": text,
            "stages": {
                "preprocess": preprocess,
                "encode": max(encoded - preprocessed - preprocess, 0.0),
                "decode": done - encoded,
            },
        }

    def _decode(self, features: np.ndarray, beam: int, steps: int | None) -> str:
        if beam == 1:
            return self.tutorial.generate_desc(
                self.model,
                self.tokenizer,
                features,
                self.max_length,
                steps=steps,
                stop=steps is None,
            )
        return self.tutorial.beam_search_desc(
            self.model, self.tokenizer, features, self.max_length, beam_index=beam
        )

    def decode(self, photo: str, steps: int, beam: int) -> dict[str, Any]:
        features = self.features(photo)
        started = time.perf_counter()
        text = self._decode(features, beam, steps if beam == 1 else None)
        return {"seconds": time.perf_counter() - started, "words": len(text.split()) - 1}

    def encode(self, photo: str, batch: int) -> dict[str, Any]:
        pixels = np.repeat(self._scaled_pixels(photo), batch, axis=0)
        started = time.perf_counter()
        self.xception.predict(pixels, verbose=0)
        return {"seconds": time.perf_counter() - started}

    def throughput(self, photos: list[str], beam: int) -> dict[str, Any]:
        started = time.perf_counter()
        for photo in photos:
            self._decode(
                self.tutorial.extract_features(photo, self.xception, self.colour), beam, None
            )
        return {"seconds": time.perf_counter() - started, "count": len(photos)}


class CapgenArm:
    """capgen's public API, warm: one Captioner."""

    def __init__(
        self,
        model: BenchModel,
        int8: bool,
        fast_decoder: bool = False,
        provider: str | None = None,
        precision: str | None = None,
    ) -> None:
        started = time.perf_counter()
        from capgen import Captioner
        from capgen.runtime.decoding import DecodingOptions

        self.options = DecodingOptions
        imported = time.perf_counter()
        options: dict[str, Any] = {"fast_decoder": True} if fast_decoder else {}
        if provider is not None:
            options["providers"] = [provider]
        if precision is not None:
            options["precision"] = precision
        self.captioner = Captioner(model.model_dir, int8=int8, **options)
        self.setup = {"imports": imported - started, "model_load": time.perf_counter() - imported}
        self._features: dict[str, np.ndarray] = {}

    def features(self, photo: str) -> np.ndarray:
        if photo not in self._features:
            self._features[photo] = self.captioner.features(
                self.captioner.preprocess(photo)[np.newaxis]
            )
        return self._features[photo]

    def latency(self, photo: str, beam: int) -> dict[str, Any]:
        started = time.perf_counter()
        result = self.captioner.caption(photo, beam_size=beam)
        seconds = time.perf_counter() - started
        stages = {key: result.timings[key] for key in ("preprocess", "encode", "decode")}
        return {"seconds": seconds, "text": result.raw, "stages": stages}

    def decode(self, photo: str, steps: int, beam: int) -> dict[str, Any]:
        features = self.features(photo)
        options = self.options(beam_size=beam, max_length=steps)
        started = time.perf_counter()
        (result,) = self.captioner.decode_features(features, options)
        return {"seconds": time.perf_counter() - started, "words": len(result.tokens)}

    def encode(self, photo: str, batch: int) -> dict[str, Any]:
        pixels = np.repeat(self.captioner.preprocess(photo)[np.newaxis], batch, axis=0)
        started = time.perf_counter()
        self.captioner.features(pixels)
        return {"seconds": time.perf_counter() - started}

    def throughput(self, photos: list[str], beam: int) -> dict[str, Any]:
        started = time.perf_counter()
        results = self.captioner.caption_batch(photos, beam_size=beam)
        return {"seconds": time.perf_counter() - started, "count": len(results)}


def _serve(arm: BaselineArm | CapgenArm) -> None:
    ready = {"ready": True, "setup": arm.setup, "since_start": time.perf_counter() - _STARTED}
    print(json.dumps(ready), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        op = request.pop("op")
        if op == "quit":
            break
        if op == "rss":
            answer: dict[str, Any] = {"peak_rss_mb": _peak_rss_mb(), "rss_mb": _current_rss_mb()}
        else:
            answer = getattr(arm, op)(**request)
        print(json.dumps(answer), flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("arm", choices=["baseline", "capgen"])
    parser.add_argument("model_json", help="BenchModel as JSON")
    parser.add_argument("--int8", action="store_true")
    parser.add_argument("--fast-decoder", action="store_true")
    parser.add_argument("--weights", type=Path, help="Xception weights (baseline)")
    parser.add_argument("--provider", help="onnxruntime execution provider (capgen; default CPU)")
    parser.add_argument("--precision", help="capgen's precision mode (fp32, bf16, int8, auto)")
    args = parser.parse_args(argv)
    model = BenchModel.from_json(json.loads(args.model_json))
    if args.arm == "baseline":
        if args.weights is None:
            parser.error("the baseline needs --weights")
        arm: BaselineArm | CapgenArm = BaselineArm(model, args.weights)
    else:
        arm = CapgenArm(model, args.int8, args.fast_decoder, args.provider, args.precision)
    _serve(arm)


if __name__ == "__main__":
    main()
