"""Image pixels -> feature vectors, through the model's encoder graph."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from capgen.runtime.engines import F32, ONNXRUNTIME, OPENVINO, OpenVinoSession
from capgen.runtime.errors import ModelError
from capgen.runtime.manifest import EncoderSpec
from capgen.runtime.session import DEFAULT_PROVIDERS, OnnxSession


class Encoder:
    """uint8 [N, H, W, 3] -> float32 [N, F]; the Xception scaling lives inside the graph."""

    def __init__(
        self,
        path: Path,
        spec: EncoderSpec,
        threads: int | None = None,
        sha256: str | None = None,
        providers: Sequence[str] = DEFAULT_PROVIDERS,
        engine: str = ONNXRUNTIME,
        inference_precision: str = F32,
    ) -> None:
        """`sha256`: the verified file's checksum, which keys its cached optimised graph.

        `engine`: "onnxruntime" (exact FP32, `providers` apply) or "openvino"
        (engines.py: faster on CPUs with bf16 or VNNI; `inference_precision` "f32" or
        "bf16"); it needs `sha256`, as it hashes the bytes it reads.
        """
        self.spec = spec
        self.engine = engine
        self._session: OnnxSession | OpenVinoSession
        if engine == OPENVINO:
            if sha256 is None:
                raise ModelError(f"{path}: OpenVINO reads only files with a known sha256")
            self._session = OpenVinoSession(
                path,
                sha256,
                inputs=["image"],
                outputs=["features"],
                inference_precision=inference_precision,
                threads=threads,
            )
            return
        self._session = OnnxSession(
            path,
            inputs=["image"],
            outputs=["features"],
            threads=threads,
            cache_key=sha256,
            providers=providers,
            memory_pattern=False,  # ~40 MB less peak at the same speed (session.SessionSettings)
        )

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        (features,) = self._session.run({"image": pixels})
        if features.shape != (pixels.shape[0], self.spec.feature_size):
            raise ModelError(
                f"{self._session.path}: produced features of shape {features.shape}, "
                f"manifest says [N, {self.spec.feature_size}]"
            )
        return features
