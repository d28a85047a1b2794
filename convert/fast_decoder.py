"""Add the opt-in fast decoder step (`decoder_step.int8.onnx`) to a converted model folder.

It is made from the folder's own float32 step graph (no Keras files needed,
so folders converted before it existed can gain one) and recorded as
`decoder.int8_step_file`; the runtime uses it only for
`Captioner(fast_decoder=True)`. See `step_graph._int8_rescored_output` for
what it trades.
"""

from __future__ import annotations

from pathlib import Path

from capgen.runtime.atomic_write import atomic_write_bytes, prune_stale_temporaries
from capgen.runtime.errors import ModelError
from capgen.runtime.manifest import FAST_STEP_FILE, load_manifest
from capgen.runtime.onnx_external_data import read_single_file_graph
from capgen.runtime.optional_files import OptionalFile, add_optional_file

__all__ = ["FAST_STEP_FILE", "add_fast_decoder"]


def add_fast_decoder(model_dir: Path) -> Path:
    """Write `decoder_step.int8.onnx` next to the folder's step graph and record it; return its path."""
    import onnx

    from capgen.convert.portable import onnxruntime_requirement
    from capgen.convert.step_graph import fast_step_from_exact

    model_dir = Path(model_dir)
    prune_stale_temporaries(model_dir)  # left by a run that was killed while writing
    manifest = load_manifest(model_dir)
    graph = read_single_file_graph(manifest.path(manifest.decoder.step_file))
    try:
        exact = onnx.load_model_from_string(graph)
        fast = fast_step_from_exact(exact)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{model_dir}: cannot make a fast decoder step ({exc})") from exc
    target = model_dir / FAST_STEP_FILE
    atomic_write_bytes(target, fast.SerializeToString())
    add_optional_file(
        model_dir, OptionalFile.FAST_STEP, FAST_STEP_FILE, onnxruntime_requirement(fast)
    )
    return target
