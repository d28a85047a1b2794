"""The decoder's shapes and choices as plain types, free of onnx and TensorFlow.

Reading a Keras config (architecture.py) and assembling weights
(decoder_weights.py) need these types but not the graph builder, so they
live here rather than in step_graph.py, which imports onnx.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

RecurrentActivation = Literal["sigmoid", "hard_sigmoid_keras2", "hard_sigmoid_keras3"]
Merge = Literal["add", "concatenate"]
DenseActivation = Literal["relu", "linear", "tanh", "sigmoid"]


@dataclass(frozen=True)
class DecoderWeights:
    """The tutorial decoder's weights in Keras layout (kernels are [in, out]).

    LSTM gate order is Keras's: input, forget, cell, output.
    """

    photo_kernel: np.ndarray  # [F, P]
    photo_bias: np.ndarray  # [P]
    photo_activation: DenseActivation
    embedding: np.ndarray  # [V_in, E]
    lstm_kernel: np.ndarray  # [E, 4U]
    lstm_recurrent_kernel: np.ndarray  # [U, 4U]
    lstm_bias: np.ndarray  # [4U]
    recurrent_activation: RecurrentActivation
    merge: Merge
    photo_first: bool  # order of the merge's inputs (matters for concatenate)
    hidden_kernel: np.ndarray  # [P+U or U, D]
    hidden_bias: np.ndarray  # [D]
    hidden_activation: DenseActivation
    output_kernel: np.ndarray  # [D, V]
    output_bias: np.ndarray  # [V]

    @property
    def units(self) -> int:
        return int(self.lstm_recurrent_kernel.shape[0])

    @property
    def feature_size(self) -> int:
        return int(self.photo_kernel.shape[0])

    @property
    def projection_size(self) -> int:
        return int(self.photo_kernel.shape[1])

    @property
    def embedding_size(self) -> int:
        return int(self.embedding.shape[1])

    @property
    def vocab_size(self) -> int:
        return int(self.output_kernel.shape[1])
