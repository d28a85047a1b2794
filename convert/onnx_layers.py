"""What every encoder graph capgen writes itself shares: nodes, folded batch norms, the finish.

The Xception encoder (`capgen.convert.xception_onnx`) and the Keras
application encoders (`capgen.convert.application_onnx`) are written with
`onnx.helper`, without TensorFlow. Both fold a batch norm into the
convolution before it (inference mode: an affine map per output channel),
computed in float64 and rounded once to float32, so each is at least as close
to Keras as TensorFlow's own float32 batch norm.

Every graph ends the same way (`GraphWriter.finish`): opset 17, the
metadata props, `make_portable` (IR 8); `onnx.checker` passes it before it
is returned (`checked`) or written, atomically (`save_model`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

OPSET = 17


def batch_norm_affine(
    bn: Mapping[str, np.ndarray], epsilon: float
) -> tuple[np.ndarray, np.ndarray]:
    """(scale, shift) in float64 with bn(x) = x * scale + shift; no `gamma`: 1 (scale=False)."""
    gamma = bn["gamma"].astype(np.float64) if "gamma" in bn else 1.0
    scale = gamma / np.sqrt(bn["moving_variance"].astype(np.float64) + epsilon)
    shift = bn["beta"].astype(np.float64) - bn["moving_mean"].astype(np.float64) * scale
    return scale, shift


def fold_batch_norm(
    kernel: np.ndarray,
    bn: Mapping[str, np.ndarray],
    epsilon: float,
    bias: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """An ONNX Conv weight [out, in, kh, kw] and bias [out] equal to the Keras conv + batch norm.

    `kernel` is Keras's [kh, kw, in, out]; `bias` the convolution's own, if it
    has one. Computed in float64 and rounded once.
    """
    scale, shift = batch_norm_affine(bn, epsilon)
    if bias is not None:
        shift = shift + bias.astype(np.float64) * scale
    weight = kernel.astype(np.float64).transpose(3, 2, 0, 1) * scale[:, None, None, None]
    return weight.astype(np.float32), shift.astype(np.float32)


def conv_weight(kernel: np.ndarray) -> np.ndarray:
    """Keras's [kh, kw, in, out] kernel as ONNX's [out, in, kh, kw] (exact: a transpose)."""
    return np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))


class GraphWriter:
    """Writes nodes and initializers straight into one ModelProto; each node's output is named
    after the node.

    Initializers go into the model's graph where they will stay: built apart
    and copied in (`helper.make_graph`, then `make_model`), VGG16's 0.5 GB of
    weights were held three times, and copied for a second of CPU each time.
    """

    def __init__(self) -> None:
        from onnx import ModelProto, helper

        self._helper = helper
        self.model = ModelProto()
        self.nodes: list[Any] = []

    def constant(self, name: str, array: np.ndarray) -> str:
        """An initializer, as `numpy_helper.from_array` writes it (raw little-endian data)."""
        tensor = self.model.graph.initializer.add()
        tensor.dims.extend(array.shape)
        tensor.name = name
        tensor.data_type = self._helper.np_dtype_to_tensor_dtype(array.dtype)
        tensor.raw_data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        return name

    def node(self, op_type: str, inputs: list[str], name: str, **attributes: Any) -> str:
        self.nodes.append(self._helper.make_node(op_type, inputs, [name], name=name, **attributes))
        return name

    def conv(
        self,
        name: str,
        source: str,
        weight: np.ndarray,
        bias: np.ndarray | None = None,
        stride: int = 1,
        pads: tuple[int, int, int, int] = (0, 0, 0, 0),
        group: int = 1,
    ) -> str:
        """ONNX Conv; `pads` in ONNX's order (top, left, bottom, right)."""
        inputs = [source, self.constant(f"{name}.weight", weight)]
        if bias is not None:
            inputs.append(self.constant(f"{name}.bias", bias))
        kernel = list(weight.shape[2:])
        return self.node(
            "Conv", inputs, name, kernel_shape=kernel, strides=[stride, stride],
            pads=list(pads), dilations=[1, 1], group=group,
        )  # fmt: skip

    def finish(
        self,
        name: str,
        image_shape: list[int | str],
        features_shape: list[int | str],
        props: Mapping[str, str],
        producer: str,
    ) -> Any:
        """The model (not yet checked): uint8 `image` in, float32 `features` out, opset 17,
        `props` as metadata, portable (IR 8). What `helper.make_graph` and
        `make_model` would make of the same nodes and initializers."""
        import onnx
        from onnx import TensorProto

        from capgen.convert.portable import make_portable

        helper = self._helper
        model = self.model
        graph = model.graph
        graph.node.extend(self.nodes)
        graph.name = name
        graph.input.append(helper.make_tensor_value_info("image", TensorProto.UINT8, image_shape))
        graph.output.append(
            helper.make_tensor_value_info("features", TensorProto.FLOAT, features_shape)
        )
        model.ir_version = onnx.IR_VERSION
        model.opset_import.append(helper.make_opsetid("", OPSET))
        model.producer_name = producer
        helper.set_model_props(model, dict(props))
        make_portable(model, f"the {name} encoder graph")
        return model


def checked(model: Any) -> Any:
    """`model`, once `onnx.checker` passed it."""
    import onnx

    onnx.checker.check_model(model)
    return model


def save_model(model: Any, output_path: Path) -> Path:
    """Check `model` and write it to `output_path` atomically (serialized once for both).

    The file is created exclusively beside `output_path` and renamed into place.
    """
    import onnx

    from capgen.runtime.atomic_write import atomic_writer

    data = model.SerializeToString()
    onnx.checker.check_model(data)
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(output_path) as handle:
        handle.write(data)
    return output_path
