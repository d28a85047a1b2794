"""`Captioner`: the whole Python API for captioning images.

    from capgen import Captioner
    captioner = Captioner()                       # the default model (capgen setup)
    captioner.caption("photo.jpg").text           # beam search, beam 3
    captioner.caption("photo.jpg", beam_size=1)   # the tutorial's greedy loop

Sessions are created once here; nothing in a call mutates the captioner, so
one instance can be shared by many threads.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from capgen.runtime.decoding import DecodingOptions, DecodingResult, decode
from capgen.runtime.encoder import Encoder
from capgen.runtime.errors import CapgenError, InputError, ModelError
from capgen.runtime.home import default_model_dir, models_dir
from capgen.runtime.identity import is_demonstration
from capgen.runtime.integrity import verify_files
from capgen.runtime.limits import is_count
from capgen.runtime.manifest import MANIFEST_FILE, Manifest, load_manifest
from capgen.runtime.precision import EncoderPlan, plan_encoder
from capgen.runtime.preprocess import DEFAULT_MAX_PIXELS, prepare, resample_filter
from capgen.runtime.session import resolve_providers
from capgen.runtime.step_model import StepModel, step_file_for
from capgen.runtime.vocabulary import Vocabulary, load_vocabulary

DEFAULT_BATCH_SIZE = 8
# A batch's pixels and encoder activations are held at once (Xception's largest
# activation is ~11 MB per image), so --batch-size 1000 on a big folder would be
# an out-of-memory kill that loses the whole batch; past ~16 nothing gets faster.
MAX_BATCH_SIZE = 64
# onnxruntime spins one thread per requested thread: 1000 on 2 cores never
# finished loading. More threads than cores (or 64) cannot help.
MIN_THREAD_LIMIT = 64


def max_threads() -> int:
    return max(MIN_THREAD_LIMIT, os.cpu_count() or 1)


def check_batch_size(batch_size: object) -> None:
    """Raise InputError unless 1 <= batch_size <= MAX_BATCH_SIZE (the CLI checks before touching --output)."""
    if not is_count(batch_size) or not 1 <= batch_size <= MAX_BATCH_SIZE:  # type: ignore[operator]
        raise InputError(
            f"batch_size must be an integer from 1 to {MAX_BATCH_SIZE}, got {batch_size!r}"
        )


# (image as given, its pixels or why it has none, seconds spent preprocessing)
_Prepared = tuple[Any, "np.ndarray | CapgenError", float]


def _options(
    options: DecodingOptions | None,
    overrides: dict[str, Any],
    beam_size: int | None = None,
    max_length: int | None = None,
    length_penalty: float | None = None,
    n_best: int | None = None,
) -> DecodingOptions:
    """`options` with the keywords given (not None) applied; DecodingOptions checks the values.

    `overrides` holds any other keywords a caller passed: an unknown name is an
    InputError (the one error family callers catch), not Python's TypeError.
    """
    known = {f.name for f in fields(DecodingOptions)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise InputError(
            f"unknown decoding option {unknown[0]!r} (options: {', '.join(sorted(known))})"
        )
    given = {
        name: value
        for name, value in (
            ("beam_size", beam_size),
            ("max_length", max_length),
            ("length_penalty", length_penalty),
            ("n_best", n_best),
        )
        if value is not None
    }
    changes = {**overrides, **given}
    if not changes:
        return options or DecodingOptions()
    return replace(options or DecodingOptions(), **changes)


def _installed_model(name: str) -> Path | None:
    """`$CAPGEN_HOME/models/NAME` when NAME is a plain name and that folder holds a model."""
    if name in ("", ".", "..") or any(sep in name for sep in ("/", "\\", "\0")):
        return None
    folder = models_dir() / name
    try:
        return folder if (folder / MANIFEST_FILE).is_file() else None
    except OSError:
        return None


def resolve_model_dir(model_dir: str | Path | None) -> tuple[Path, bool]:
    """The folder to load, and whether none was given (capgen setup's default model).

    A path that exists is that folder; otherwise a plain NAME is looked up as
    `$CAPGEN_HOME/models/NAME` (`capgen models` lists them); anything else is
    returned as given, for the loader's own "not found" message.
    """
    if model_dir is not None:
        path = Path(model_dir)
        if not path.exists():
            installed = _installed_model(str(model_dir))
            if installed is not None:
                return installed, False
        return path, False
    folder = default_model_dir()
    if not (folder / MANIFEST_FILE).is_file():
        raise ModelError(
            f"no default model at {folder}; build it with `capgen setup` (needs the conversion "
            "stack: pip install 'capgen[convert]'), or pass a model folder or an installed model's "
            "name (capgen convert model model_9.h5 tokenizer.p -o mymodel/)"
        )
    return folder, True


class Captioner:
    """Captions images with one converted model folder (docs/design.md)."""

    def __init__(
        self,
        model_dir: str | Path | None = None,
        threads: int | None = None,
        int8: bool = False,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        fast_decoder: bool = False,
        providers: str | Sequence[str] | None = None,
        precision: str | None = None,
    ) -> None:
        """`model_dir`: a model folder, or the name of one in `$CAPGEN_HOME/models` (None: the default).

        `precision`: how the encoder runs (precision.py): "fp32" (exact, onnxruntime;
        the default), "bf16" (OpenVINO, needs pip install 'capgen[openvino]' and a
        bf16 CPU), "int8" (the INT8 graph on onnxruntime, as `int8=True`) or "auto"
        (the fastest mode `capgen tune` found agreeing with fp32 for this model on
        this machine, INT8 on OpenVINO included; else fp32).
        `encoder_plan` says what runs and why.

        `threads`: onnxruntime threads for the encoder (None: one per core).

        `providers`: onnxruntime execution provider names, in order of preference
        (e.g. "OpenVINOExecutionProvider"); None is the CPU. Each must be in
        `onnxruntime.get_available_providers()`, else an InputError names those.

        `fast_decoder`: use the model's optional fast step (INT8 output layer,
        the best words rescored exactly): greedy captions equal the exact
        step's (measured 100%) in about half the decode time; log-probabilities
        are approximate (~0.01 per word), so beam results match ~99%.
        """
        if threads is not None and (not is_count(threads) or not 1 <= threads <= max_threads()):
            raise InputError(
                f"threads must be an integer from 1 to {max_threads()}, got {threads!r}"
            )
        self.providers = resolve_providers(providers)
        folder, self.is_default_model = resolve_model_dir(model_dir)
        manifest = load_manifest(folder)
        # What the CLI's demonstration note keys on: the manifest, not the folder's location.
        self.is_demonstration = is_demonstration(manifest)
        # Which graph, on which engine: before any file is verified or session built.
        self.encoder_plan: EncoderPlan = plan_encoder(manifest, precision, int8, self.providers)
        encoder_file = self.encoder_plan.file
        decoder = manifest.decoder
        step_file = step_file_for(manifest, fast_decoder)
        verify_files(
            manifest, [encoder_file, decoder.projection_file, step_file, manifest.vocabulary.file]
        )
        self.manifest: Manifest = manifest
        # The graph files this captioner runs (-v names them: FP32 or INT8, exact or fast step).
        self.model_files: tuple[str, ...] = (encoder_file, decoder.projection_file, step_file)
        self.vocabulary: Vocabulary = load_vocabulary(
            manifest.path(manifest.vocabulary.file), manifest.vocabulary
        )
        self._resize_filter = resample_filter(manifest.encoder.resize_filter)
        self._max_pixels = max_pixels
        self._encoder = Encoder(
            manifest.path(encoder_file),
            manifest.encoder,
            threads=threads,
            sha256=manifest.files[encoder_file].sha256,
            providers=self.providers,
            engine=self.encoder_plan.engine,
            inference_precision=self.encoder_plan.inference_precision,
        )
        self._step_model = StepModel(
            manifest.path(decoder.projection_file),
            manifest.path(step_file),
            decoder,
            vocab_size=self.vocabulary.size,
            # A step is ~2 M multiply-adds: splitting it across threads costs more in
            # wake-ups than it saves (measured 2x slower with 2 threads), so the
            # decoder runs on one thread and `threads` is for the encoder.
            threads=1,
            providers=self.providers,
            sha256=(
                manifest.files[decoder.projection_file].sha256,
                manifest.files[step_file].sha256,
            ),
        )
        self._step_model.check_vocabulary()
        if self.vocabulary.start_id is None:
            self._check_padding_start(folder)

    def _check_padding_start(self, folder: Path) -> None:
        """A model whose start word is not in the vocabulary starts from the padding id.

        That is exact only if the step graph leaves the zero state unchanged for
        padding (capgen writes such graphs for these models); a folder whose
        manifest claims it without such a graph would caption from a wrong first word.
        """
        h, c = self._step_model.initial_state(1)
        photo = np.zeros((1, self._step_model.projection_size), dtype=np.float32)
        _, h_out, c_out = self._step_model.step(
            np.array([self.vocabulary.first_input_id], dtype=np.int64), h, c, photo
        )
        if np.any(h_out) or np.any(c_out):
            raise ModelError(
                f"{folder}: the manifest says the start word {self.vocabulary.start_word!r} is not "
                "in the vocabulary, but the step graph does not treat the padding id as empty "
                "input; reconvert the model with this capgen"
            )

    def preprocess(self, image: Any) -> np.ndarray:
        """uint8 [H, W, 3] pixels exactly as the encoder sees them."""
        spec = self.manifest.encoder
        return prepare(image, spec.width, spec.height, self._resize_filter, self._max_pixels)

    def features(self, pixels: np.ndarray) -> np.ndarray:
        """Encoder features [N, F] for preprocessed pixels [N, H, W, 3]."""
        return self._encoder.encode(pixels)

    def decode_features(
        self, features: np.ndarray, options: DecodingOptions
    ) -> list[DecodingResult]:
        photo = self._step_model.project(np.ascontiguousarray(features, dtype=np.float32))
        return decode(self._step_model, photo, self.vocabulary, options, self.manifest.max_length)

    def caption(
        self,
        image: Any,
        options: DecodingOptions | None = None,
        *,
        beam_size: int | None = None,
        max_length: int | None = None,
        length_penalty: float | None = None,
        n_best: int | None = None,
        **overrides: Any,
    ) -> DecodingResult:
        """Caption one image (path, bytes, file object, PIL image or array; see preprocess.py).

        `options` (default: beam 3) with any of its fields overridden by keyword,
        e.g. `caption(path, beam_size=1)` for the tutorial's greedy loop. A keyword
        left at None keeps the value from `options` (see DecodingOptions for what
        each means); a bad value or an unknown keyword is an InputError.
        """
        options = _options(options, overrides, beam_size, max_length, length_penalty, n_best)
        ((_, outcome),) = self.iter_captions([image], options=options, batch_size=1)
        if isinstance(outcome, CapgenError):
            raise outcome
        return outcome

    def caption_batch(
        self,
        images: Iterable[Any],
        options: DecodingOptions | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        errors: Literal["raise", "return"] = "raise",
        *,
        beam_size: int | None = None,
        max_length: int | None = None,
        length_penalty: float | None = None,
        n_best: int | None = None,
        **overrides: Any,
    ) -> list[DecodingResult | CapgenError]:
        """Caption many images; with errors="return", failures are CapgenError items in the list.

        Options (`options` and the keywords) as for `caption`.
        """
        if isinstance(images, (str, bytes, bytearray, os.PathLike)):
            # A lone path would be captioned letter by letter (an [N, H, W, 3] array is N images: fine).
            raise InputError("caption_batch takes a list of images; use caption() for one image")
        if errors not in ("raise", "return"):
            raise InputError(f"errors must be 'raise' or 'return', got {errors!r}")
        options = _options(options, overrides, beam_size, max_length, length_penalty, n_best)
        results: list[DecodingResult | CapgenError] = []
        for _, outcome in self.iter_captions(images, options=options, batch_size=batch_size):
            if isinstance(outcome, CapgenError) and errors == "raise":
                raise outcome
            results.append(outcome)
        return results

    def iter_captions(
        self,
        images: Iterable[Any],
        options: DecodingOptions | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        *,
        beam_size: int | None = None,
        max_length: int | None = None,
        length_penalty: float | None = None,
        n_best: int | None = None,
        **overrides: Any,
    ) -> Iterator[tuple[Any, DecodingResult | CapgenError]]:
        """(image, result or error) in input order, as soon as each batch is done.

        Options (`options` and the keywords) as for `caption`; they are checked
        on the first `next()`, as this is a generator.

        Images are preprocessed one by one (a bad one becomes its error and
        the rest go on), then encoded `batch_size` at a time, and every image of
        the batch is decoded together, one step call per word position. With
        batches, the next images are decoded from disk on a helper thread while
        the current batch runs through onnxruntime (both release the GIL).
        """
        options = _options(options, overrides, beam_size, max_length, length_penalty, n_best)
        check_batch_size(batch_size)
        prepared = (
            self._prefetched(images, ahead=2 * batch_size)
            if batch_size > 1
            else map(self._prepare, images)
        )
        pending: list[_Prepared] = []
        ready = 0
        for item in prepared:
            pending.append(item)
            if not isinstance(item[1], CapgenError):
                ready += 1
            if ready == batch_size:
                yield from self._finish_batch(pending, options)
                pending, ready = [], 0
        if pending:
            yield from self._finish_batch(pending, options)

    def _prepare(self, image: Any) -> _Prepared:
        started = time.perf_counter()
        try:
            pixels: np.ndarray | CapgenError = self.preprocess(image)
        except CapgenError as exc:
            pixels = exc
        return image, pixels, time.perf_counter() - started

    def _prefetched(self, images: Iterable[Any], ahead: int) -> Iterator[_Prepared]:
        """`_prepare` for each image, in order, up to `ahead` images ahead on one helper thread."""
        queue: deque[Future[_Prepared]] = deque()
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="capgen-preprocess")
        try:
            for image in images:
                queue.append(pool.submit(self._prepare, image))
                if len(queue) > ahead:
                    yield queue.popleft().result()
            while queue:
                yield queue.popleft().result()
        finally:  # also on Ctrl-C or an abandoned generator: drop what was not started
            pool.shutdown(wait=True, cancel_futures=True)

    def _finish_batch(
        self, pending: list[_Prepared], options: DecodingOptions
    ) -> Iterator[tuple[Any, DecodingResult | CapgenError]]:
        good = [item for item in pending if not isinstance(item[1], CapgenError)]
        results: list[DecodingResult] = []
        encode_each = decode_each = 0.0
        if good:
            started = time.perf_counter()
            features = self.features(np.stack([item[1] for item in good]))  # type: ignore[misc]
            encoded = time.perf_counter()
            results = self.decode_features(features, options)
            decode_each = (time.perf_counter() - encoded) / len(good)
            encode_each = (encoded - started) / len(good)
        produced = iter(results)
        for image, prepared, preprocess_seconds in pending:
            if isinstance(prepared, CapgenError):
                yield image, prepared
                continue
            timings = {
                "preprocess": preprocess_seconds,
                "encode": encode_each,
                "decode": decode_each,
                "total": preprocess_seconds + encode_each + decode_each,
            }
            yield image, next(produced).with_timings(timings)
