"""The decoder as a step model: photo projection once, then one word at a time.

`decoding.py` searches over this; it never sees ONNX. Keeping the interface
tiny (project, step) is what lets greedy and beam search share it, and lets
tests swap in hand-made step models with known answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from capgen.runtime.errors import ModelError
from capgen.runtime.manifest import DecoderSpec, Manifest
from capgen.runtime.session import DEFAULT_PROVIDERS, OnnxSession

_FLOAT32 = np.dtype(np.float32)  # compared as a dtype object: half the cost of np.float32


class StepModel:
    def __init__(
        self,
        projection_path: Path,
        step_path: Path,
        spec: DecoderSpec,
        vocab_size: int,
        threads: int | None = None,
        providers: Sequence[str] = DEFAULT_PROVIDERS,
        sha256: tuple[str, str] | None = None,
    ) -> None:
        """`sha256`: the verified (projection, step) files' checksums, which key their cached
        optimised graphs (runtime/graph_cache.py: the step's word-gate table is then memory-mapped)."""
        projection_key, step_key = sha256 or (None, None)
        self.units = spec.units
        self.projection_size = spec.projection_size
        self.vocab_size = vocab_size
        self._projection = OnnxSession(
            projection_path,
            ["features"],
            ["photo"],
            threads=threads,
            cache_key=projection_key,
            providers=providers,
        )
        self._step = OnnxSession(
            step_path,
            ["word", "h", "c", "photo"],
            ["log_probs", "h_out", "c_out"],
            threads,
            cache_key=step_key,
            providers=providers,
        )
        self._step_path = step_path
        self._run_step = self._step.run

    def project(self, features: np.ndarray) -> np.ndarray:
        (photo,) = self._projection.run({"features": features})
        if photo.shape != (features.shape[0], self.projection_size) or photo.dtype != np.float32:
            raise ModelError(
                f"photo projection gave {photo.dtype} of shape {photo.shape}, "
                f"expected float32 [N, {self.projection_size}]"
            )
        return photo

    def initial_state(self, rows: int) -> tuple[np.ndarray, np.ndarray]:
        """h = c = 0: Keras carries this state unchanged through the tutorial's pre-padding."""
        zeros = np.zeros((rows, self.units), dtype=np.float32)
        return zeros, zeros.copy()

    def step(
        self, words: np.ndarray, h: np.ndarray, c: np.ndarray, photo: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Advance every row by one word: (log_probs [N, V], h_out, c_out).

        A graph passes the load-time check and can still misbehave later
        (float64 scores crashed beam search's top-k graph; a wider word axis
        after the first step indexed past the vocabulary), so every step's
        outputs are checked: attribute compares only, ~1-2 us against a 100-250 us step.
        """
        log_probs, h_out, c_out = self._run_step({"word": words, "h": h, "c": c, "photo": photo})
        if (
            log_probs.dtype != _FLOAT32
            or h_out.dtype != _FLOAT32
            or c_out.dtype != _FLOAT32
            or log_probs.shape != (words.shape[0], self.vocab_size)
            or h_out.shape != h.shape
            or c_out.shape != c.shape
        ):
            raise ModelError(self._bad_outputs(words.shape[0], log_probs, h_out, c_out))
        return log_probs, h_out, c_out

    def _bad_outputs(
        self, rows: int, log_probs: np.ndarray, h_out: np.ndarray, c_out: np.ndarray
    ) -> str:
        found = ", ".join(
            f"{name} {array.dtype}{list(array.shape)}"
            for name, array in (("log_probs", log_probs), ("h_out", h_out), ("c_out", c_out))
        )
        return (
            f"{self._step_path}: a step gave {found}; expected float32 log_probs "
            f"[{rows}, {self.vocab_size}] (the vocabulary has {self.vocab_size} words) and "
            f"h_out, c_out [{rows}, {self.units}]"
        )

    def check_vocabulary(self) -> None:
        """One dummy step, so a step graph and vocabulary.json that disagree fail at load, not mid-batch.

        `step` checks the outputs' dtypes and shapes, so a graph declaring
        float64 scores or the wrong number of words is refused here.
        """
        h, c = self.initial_state(1)
        self.step(
            np.zeros(1, dtype=np.int64), h, c, np.zeros((1, self.projection_size), dtype=np.float32)
        )


def step_file_for(manifest: Manifest, fast_decoder: bool) -> str:
    """The step graph a captioner runs: the exact one, or the optional fast one.

    One place for the check and its message, for every path that loads a
    model (the Captioner, and Ray's driver before it starts actors).
    """
    step_file = manifest.decoder.int8_step_file if fast_decoder else manifest.decoder.step_file
    if step_file is None:
        raise ModelError(
            f"{manifest.folder}: this model has no fast decoder step (manifest lists no "
            "decoder.int8_step_file; add one with `capgen convert quantize`)"
        )
    return step_file
