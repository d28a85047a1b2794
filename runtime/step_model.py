"""The decoder as a step model: photo projection once, then one word at a time.

`decoding.py` searches over this; it never sees ONNX. Keeping the interface
tiny (project, step) is what lets greedy and beam search share it, and lets
tests swap in hand-made step models with known answers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from capgen.runtime.errors import ModelError
from capgen.runtime.manifest import DecoderSpec
from capgen.runtime.session import OnnxSession


class StepModel:
    def __init__(
        self,
        projection_path: Path,
        step_path: Path,
        spec: DecoderSpec,
        vocab_size: int,
        threads: int | None = None,
    ) -> None:
        self.units = spec.units
        self.projection_size = spec.projection_size
        self.vocab_size = vocab_size
        self._projection = OnnxSession(projection_path, ["features"], ["photo"], threads=threads)
        self._step = OnnxSession(
            step_path, ["word", "h", "c", "photo"], ["log_probs", "h_out", "c_out"], threads
        )
        self._step_path = step_path
        self._run_step = self._step.run

    def project(self, features: np.ndarray) -> np.ndarray:
        (photo,) = self._projection.run({"features": features})
        if photo.shape != (features.shape[0], self.projection_size):
            raise ModelError(
                f"photo projection gave shape {photo.shape}, expected [N, {self.projection_size}]"
            )
        return photo

    def initial_state(self, rows: int) -> tuple[np.ndarray, np.ndarray]:
        """h = c = 0: Keras carries this state unchanged through the tutorial's pre-padding."""
        zeros = np.zeros((rows, self.units), dtype=np.float32)
        return zeros, zeros.copy()

    def step(
        self, words: np.ndarray, h: np.ndarray, c: np.ndarray, photo: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Advance every row by one word: (log_probs [N, V], h_out, c_out)."""
        log_probs, h_out, c_out = self._run_step({"word": words, "h": h, "c": c, "photo": photo})
        return log_probs, h_out, c_out

    def check_vocabulary(self) -> None:
        """One dummy step, so a step graph and vocabulary.json that disagree fail at load, not mid-batch."""
        h, c = self.initial_state(1)
        log_probs, _, _ = self.step(
            np.zeros(1, dtype=np.int64), h, c, np.zeros((1, self.projection_size), dtype=np.float32)
        )
        if log_probs.shape != (1, self.vocab_size):
            raise ModelError(
                f"{self._step_path}: scores {log_probs.shape[1]} words, vocabulary has {self.vocab_size}"
            )
