"""INT8 encoder: onnxruntime static QDQ quantization of the Xception convolutions.

Choices, each measured with onnxruntime 1.32 on a 2-core AMD EPYC (AVX-512,
VNNI) machine, where FP32 Xception takes 38-40 ms per image, static QDQ INT8
about 15 ms and dynamic quantization 62 ms:
- static QDQ, u8 activations, s8 per-channel weights, percentile calibration
  (see CALIBRATION_PERCENTILE): about 2.5x faster than FP32; dynamic
  quantization is slower than FP32 here and the QOperator format broke the
  features (cosine 0.2), so neither is offered.
- calibration images are ones capgen has offline and never evaluates on
  (see `capgen.convert.calibration`); their ranges are measured one image at a
  time (`capgen.convert.percentile_ranges`: onnxruntime's own arithmetic, a
  fraction of its memory).
- only the Xception branch is quantized. In an `xception+colour` encoder the
  colour features are a handful of cheap ops on the raw uint8 image whose
  outputs (pixel shares, histogram counts) have narrow, data-dependent
  ranges; 8-bit steps there would wipe out exactly the colour information the
  colour features exist to keep, and they cost nothing to leave in float.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from capgen.convert.portable import file_requirement, make_portable
from capgen.runtime.atomic_write import atomic_writer, prune_stale_temporaries
from capgen.runtime.errors import ConversionError, ModelError
from capgen.runtime.manifest import (
    INT8_ENCODER_FILE,
    Manifest,
    load_manifest,
)
from capgen.runtime.onnx_external_data import read_single_file_graph
from capgen.runtime.optional_files import OptionalFile, add_optional_file

INT8_FILENAME = INT8_ENCODER_FILE  # the name this module used before
# Calibration set, measured (feature cosine INT8 vs FP32 on held-out images,
# worst / median; 24 test-split scenes and the 12 Flickr8k photos):
#   18 kitchenware photos, MinMax              scenes 0.798 / 0.986   Flickr 0.989 / 0.994
#   18 kitchenware, percentile 99.999          scenes 0.942 / 0.992   Flickr 0.992 / 0.997
#   18 kitchenware + 4 scenes, pct 99.999      scenes 0.948 / 0.991   Flickr 0.990 / 0.996
#   18 kitchenware + 16 scenes, pct 99.999     scenes 0.909 / 0.982   Flickr 0.973 / 0.982
#   18 kitchenware + 16 scenes, MinMax         scenes 0.701 / 0.902   Flickr 0.853 / 0.892
#   18 kitchenware + 64 scenes, MinMax         scenes 0.680 / 0.786   Flickr 0.665 / 0.750
# Flat synthetic colours drive some Xception activations far outside what
# photos produce, so many scenes stretch the ranges for everything; a few
# help the worst scene a little. Ranges come from the 99.999th percentile,
# not the extremes, for the same reason.
# Caption level (default model, greedy, test-split scenes; benchmarks/int8_eval.py):
# about 83% of captions are identical to FP32 and BLEU-4 drops about 0.02; most
# differences are near-tie synonyms ("big"/"large", a different template).
# Keeping the exit flow (last 10 convolutions) in float changed nothing
# (80% vs 81% on 100 scenes); keeping the entry flow (first 6) gave 84%, within
# the noise of 100 scenes, for about an eighth of the network's multiply-adds
# in float, so the whole Xception branch is quantized.
# Per-node sensitivity (relative L2 error of every node's output, INT8 vs FP32, on
# test scenes): the error grows steadily through the middle flow, with the three
# largest jumps at pointwise convolutions (Conv__745 / Conv__759, block 5 and 6
# sepconv3; Conv__857, block 13's strided residual). Keeping those three in float
# (`keep_float`) gave 83.5% identical captions vs 82.5% with the stage-1 decoder and
# 86.5% vs 88.0% with the stage-2 one (200 test scenes, greedy; BLEU-4 lost 0.006 /
# 0.000 vs 0.017 / 0.008): within the noise of 200 scenes, for float convolutions
# on the path of the 2x speed-up, so none is kept. Calibrating on 16 scenes instead
# of 4 needed over 10 GB during calibration when onnxruntime's calibrator kept every
# activation (capgen.convert.percentile_ranges now keeps one image's).
DEFAULT_SCENE_COUNT = 4
CALIBRATION_PERCENTILE = 99.999


@dataclass(frozen=True)
class QuantizationReport:
    output: Path
    calibration_images: int
    excluded_nodes: tuple[str, ...]
    fp32_bytes: int
    int8_bytes: int


class _ImageReader:
    """Feeds calibration images one at a time, the shape the runtime uses for a single photo."""

    def __init__(self, images: Sequence[np.ndarray]) -> None:
        self._images = list(images)
        self._iterator: Iterator[np.ndarray] = iter(self._images)

    def get_next(self) -> dict[str, np.ndarray] | None:
        image = next(self._iterator, None)
        return None if image is None else {"image": image[np.newaxis]}

    def rewind(self) -> None:
        self._iterator = iter(self._images)


def _ancestors(model: Any, node: Any) -> set[str]:
    producers = {output: n for n in model.graph.node for output in n.output}
    found: set[str] = set()
    pending = [node]
    while pending:
        current = pending.pop()
        if current.name in found:
            continue
        found.add(current.name)
        pending.extend(producers[name] for name in current.input if name in producers)
    return found


def xception_branch_nodes(model: Any) -> set[str]:
    """Names of the nodes that feed the Xception features (everything upstream of its pooling).

    The Xception branch ends in a GlobalAveragePool; if the colour features
    also pool globally, Xception's is the one with the most convolutions
    upstream. Every node not upstream of it (the colour features, the final
    Concat) stays float.
    """
    pools = [node for node in model.graph.node if node.op_type == "GlobalAveragePool"]
    if not pools:
        raise ConversionError("no GlobalAveragePool (the end of Xception) in the encoder graph")
    convolutions = {node.name for node in model.graph.node if node.op_type == "Conv"}
    branches = [_ancestors(model, pool) for pool in pools]
    return max(branches, key=lambda branch: len(branch & convolutions))


def nodes_kept_float(model: Any) -> list[str]:
    """Every node outside the Xception branch (except the Squeeze that only reshapes its
    output), and the Xception nodes that read a tensor those float nodes read too.

    onnxruntime's QDQ quantizer puts one Quantize/Dequantize pair on a tensor
    that any quantized node reads and points *every* reader at the dequantized
    copy, excluded readers included. The colour features and Xception's
    preprocessing both read the image cast to float; with that Mul quantized,
    the colour branch saw the pixels scaled by the calibrated step (0.9995, not
    1), so the INT8 encoder's colour features differed from FP32's. Keeping the
    shared readers float leaves no QDQ pair on a tensor the float branch reads.
    """
    if not any(node.op_type == "GlobalAveragePool" for node in model.graph.node):
        return []  # one branch, no pooling (VGG16's fc2): the whole graph is the image branch
    branch = xception_branch_nodes(model)
    branch_outputs = {
        output for node in model.graph.node if node.name in branch for output in node.output
    }
    outside = {
        node.name
        for node in model.graph.node
        if node.name not in branch
        and not (node.op_type == "Squeeze" and node.input and node.input[0] in branch_outputs)
    }
    read_by_float = {
        name for node in model.graph.node if node.name in outside for name in node.input
    }
    shared_readers = {
        node.name
        for node in model.graph.node
        if node.name in branch and any(name in read_by_float for name in node.input)
    }
    return sorted(outside | shared_readers)


def quantize_encoder(
    fp32_path: Path,
    output_path: Path,
    calibration_images: Sequence[np.ndarray],
    keep_float: Sequence[str] = (),
    progress: Callable[[str], None] | None = None,
) -> QuantizationReport:
    """Write the static-QDQ INT8 version of `fp32_path` to `output_path` (atomically).

    `keep_float` names Xception nodes to leave in float too (sensitivity experiments).
    `progress` gets a line before each long stage (the quantizer's own output is
    silenced, so without it a terminal shows nothing for a minute or more).
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    if not calibration_images:
        raise ConversionError("INT8 quantization needs at least one calibration image")
    # Resolved before changing into the scratch folder, where relative paths mean something else.
    fp32_path, output_path = fp32_path.resolve(), output_path.resolve()
    output_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="capgen-quantize-") as scratch_name:
        scratch = Path(scratch_name)
        prepared = scratch / "prepared.onnx"
        # Shape inference + graph fusions first, so the quantizer sees fused
        # Conv+Relu patterns and every tensor's shape (onnxruntime's advice).
        # onnxruntime's symbolic shape inference dumps `sym_shape_infer_temp.onnx`
        # and an 83 MB `<uuid>.data` into the working directory when it gives up;
        # running it inside the scratch folder keeps the user's folder clean.
        # It needs sympy, which an install without the full `convert` extra may lack;
        # ONNX's own shape inference then types the graph, and for Xception the
        # quantizer writes the same INT8 nodes and weights either way (measured), so
        # without sympy it is skipped rather than tried, failed and retried.
        symbolic = importlib.util.find_spec("sympy") is not None
        if progress is not None:
            progress("preparing the FP32 graph for the quantizer (shape inference, fusions)")
        with contextlib.chdir(scratch), _quiet():
            try:
                quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=not symbolic)
            except Exception:
                if not symbolic:
                    raise
                # The colour features' graph defeats onnxruntime's symbolic shape
                # inference ("Incomplete symbolic shape inference"); ONNX's own
                # shape inference still types every Xception tensor, which is all
                # the quantizer needs there.
                quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        model = onnx.load(str(prepared))
        excluded = sorted({*nodes_kept_float(model), *keep_float})
        partial = scratch / "int8.onnx"
        if progress is not None:
            progress("calibrating and writing the INT8 graph (the longest step)")
        with _quiet():
            calibration: dict[str, Any] = {
                "calibration_data_reader": _ImageReader(calibration_images)
            }
            if _takes_calibration_cache(quantize_static):
                # The same ranges onnxruntime's calibrator computes, one image's activations in
                # memory at a time instead of all of them (5.2 GB for 18 photos): see
                # capgen.convert.percentile_ranges. Older onnxruntime calibrates itself.
                from onnxruntime.quantization.calibrate import save_tensors_data

                from capgen.convert.percentile_ranges import percentile_ranges

                ranges = percentile_ranges(
                    prepared, calibration_images, CALIBRATION_PERCENTILE, scratch
                )
                cache = scratch / "calibration.json"
                save_tensors_data(ranges, cache)
                del ranges
                calibration = {"calibration_data_reader": None, "calibration_cache_path": cache}
            quantize_static(
                str(prepared),
                str(partial),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.Percentile,
                nodes_to_exclude=excluded,
                extra_options={"CalibPercentile": CALIBRATION_PERCENTILE},
                **calibration,
            )
        _copy_metadata(fp32_path, partial)
        with atomic_writer(output_path) as handle, partial.open("rb") as source:
            shutil.copyfileobj(source, handle)
    return QuantizationReport(
        output=output_path,
        calibration_images=len(calibration_images),
        excluded_nodes=tuple(excluded),
        fp32_bytes=fp32_path.stat().st_size,
        int8_bytes=output_path.stat().st_size,
    )


def _takes_calibration_cache(quantize_static: Callable[..., Any]) -> bool:
    """Whether this onnxruntime's quantize_static reads ranges from a calibration cache file."""
    import inspect

    return "calibration_cache_path" in inspect.signature(quantize_static).parameters


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Keep the quantizer's own chatter off the user's terminal.

    onnxruntime's quantization tools print, log, warn and let its C++ core
    write to the process's file descriptors directly, so the descriptors
    themselves (1 and 2) point at /dev/null while they run; their errors
    still arrive as exceptions.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(os.devnull, "wb") as sink:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for descriptor, copy in zip((1, 2), saved, strict=True):
            os.dup2(copy, descriptor)
            os.close(copy)


def _copy_metadata(source: Path, target: Path) -> None:
    """Keep the encoder's self-description (kind, preprocessing) and note the quantization."""
    import onnx

    source_model = onnx.load(str(source), load_external_data=False)
    target_model = onnx.load(str(target))
    props = {prop.key: prop.value for prop in source_model.metadata_props}
    props["capgen.encoder.quantization"] = json.dumps(
        {
            "format": "QDQ",
            "activations": "uint8",
            "weights": "int8 per-channel",
            "calibration": f"percentile {CALIBRATION_PERCENTILE}",
        }
    )
    onnx.helper.set_model_props(target_model, props)
    # The quantizer keeps its input's IR version; a graph from elsewhere may carry a newer one.
    make_portable(target_model)
    onnx.save(target_model, str(target))


def calibration_pixels(
    kind: str, scene_count: int = DEFAULT_SCENE_COUNT, size: tuple[int, int] | None = None
) -> list[np.ndarray]:
    """Kitchenware photos for every encoder, plus the images its kind adds (train-split scenes for the colour encoder).

    `size` (height, width): the encoder's input (VGG16's 224x224); default Xception's 299x299.
    """
    from capgen.convert.calibration import fetch_kitchenware_photos, kind_pixels, photo_pixels

    photos = fetch_kitchenware_photos()
    resized = photo_pixels(photos) if size is None else photo_pixels(photos, *size)
    return resized + kind_pixels(kind, scene_count)


def add_int8_to_manifest(model_dir: Path, int8_name: str = INT8_FILENAME) -> Manifest:
    """Record the INT8 encoder in the manifest: `encoder.int8_file` and its sha256/bytes."""
    path = Path(model_dir) / int8_name
    return add_optional_file(
        model_dir, OptionalFile.INT8_ENCODER, int8_name, file_requirement(path)
    )


def _silent(message: str) -> None:
    """Where results go when the caller asked for none."""


def quantize_model_folder(
    model_dir: Path,
    images: Sequence[np.ndarray] | None = None,
    scene_count: int = DEFAULT_SCENE_COUNT,
    echo: Callable[[str], None] | None = None,
    progress: Callable[[str], None] | None = None,
) -> QuantizationReport:
    """Add `encoder.int8.onnx` to a converted model folder and record it in its manifest.

    `echo` gets the results; `progress` a line before each long stage (see quantize_encoder).
    Both default to silence: the library never prints, its command lines pass `typer.echo`.
    """
    echo = echo or _silent
    model_dir = Path(model_dir).resolve()
    prune_stale_temporaries(model_dir)  # left by a run that was killed while writing
    manifest = load_manifest(model_dir)
    fp32_path = manifest.path(manifest.encoder.file)
    if not fp32_path.is_file():
        raise ModelError(
            f"{model_dir}: manifest names no existing encoder file ({manifest.encoder.file!r})"
        )
    read_single_file_graph(fp32_path)  # external data: refused, as the runtime would
    kind = manifest.encoder.kind
    if images is None:
        size = (manifest.encoder.height, manifest.encoder.width)
        if progress is not None:
            progress("reading the calibration photos")
        images = calibration_pixels(kind, scene_count, size)
    echo(f"calibrating on {len(images)} images ({kind} encoder)")
    report = quantize_encoder(fp32_path, model_dir / INT8_FILENAME, images, progress=progress)
    add_int8_to_manifest(model_dir)
    if report.excluded_nodes:
        echo(f"kept in float (outside Xception): {len(report.excluded_nodes)} nodes")
    echo(
        f"wrote {report.output} ({report.int8_bytes / 1e6:.1f} MB, FP32 {report.fp32_bytes / 1e6:.1f} MB)"
    )
    return report


def feature_cosines(fp32_path: Path, int8_path: Path, images: Sequence[np.ndarray]) -> np.ndarray:
    """Per-image cosine between FP32 and INT8 features: how much quantization moved them."""
    from capgen.runtime.session import plain_cpu_session, plain_options

    batch = np.stack(list(images))
    options = plain_options()
    options.log_severity_level = 3  # onnxruntime's warnings are not the user's problem
    sessions = [plain_cpu_session(path, options) for path in (fp32_path, int8_path)]
    reference, quantized = (session.run(["features"], {"image": batch})[0] for session in sessions)
    dot = np.sum(reference * quantized, axis=1)
    norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(quantized, axis=1)
    return dot / np.maximum(norms, 1e-12)
