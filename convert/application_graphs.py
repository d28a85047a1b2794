"""VGG16, ResNet50, InceptionV3 and DenseNet201 as `LayerGraph`s, mirroring `keras.applications`.

Each function follows its Keras source (keras/src/applications/*.py, Keras
3.15) layer for layer: the same names (None where the source leaves a layer
unnamed), the same inputs in the same order (Keras's weights order depends on
it, see `capgen.convert.layer_graph`), ZeroPadding2D where the source pads,
`same` or `valid` padding, and each family's batch-norm epsilon (ResNet50 and
DenseNet 1.001e-5, InceptionV3 Keras's default 1e-3 with `scale=False`).

Each returns the graph and the index of its feature layer, with the cut the
tutorials use: VGG16's full model (its classifier top included, since its
weights file holds it) cut at `fc2`; the others without top, average-pooled.
"""

from __future__ import annotations

from collections.abc import Callable

from capgen.convert.layer_graph import LayerGraph

RESNET_EPSILON = 1.001e-5
DENSENET_EPSILON = 1.001e-5
INCEPTION_EPSILON = 1e-3  # keras.layers.BatchNormalization's default


def vgg16() -> tuple[LayerGraph, int]:
    """VGG16 with its top (`include_top=True`); the features are `fc2`'s (4096, after ReLU)."""
    graph = LayerGraph(224)
    x = graph.input
    for block, (filters, convolutions) in enumerate(
        ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3)), start=1
    ):
        for index in range(1, convolutions + 1):
            x = graph.conv(
                x, filters, 3, padding="same", activation="relu", name=f"block{block}_conv{index}"
            )
        x = graph.max_pool(x, 2, 2, name=f"block{block}_pool")
    x = graph.flatten(x, name="flatten")
    x = graph.dense(x, 4096, "relu", name="fc1")
    features = graph.dense(x, 4096, "relu", name="fc2")
    graph.dense(features, 1000, "softmax", name="predictions")
    return graph, features


def _resnet_block(
    graph: LayerGraph, x: int, filters: int, stride: int, conv_shortcut: bool, name: str
) -> int:
    """keras.src.applications.resnet.residual_block_v1 (kernel 3)."""
    if conv_shortcut:
        shortcut = graph.conv(x, 4 * filters, 1, stride=stride, name=f"{name}_0_conv")
        shortcut = graph.bn(shortcut, RESNET_EPSILON, name=f"{name}_0_bn")
    else:
        shortcut = x
    x = graph.conv(x, filters, 1, stride=stride, name=f"{name}_1_conv")
    x = graph.bn(x, RESNET_EPSILON, name=f"{name}_1_bn")
    x = graph.relu(x, name=f"{name}_1_relu")
    x = graph.conv(x, filters, 3, padding="same", name=f"{name}_2_conv")
    x = graph.bn(x, RESNET_EPSILON, name=f"{name}_2_bn")
    x = graph.relu(x, name=f"{name}_2_relu")
    x = graph.conv(x, 4 * filters, 1, name=f"{name}_3_conv")
    x = graph.bn(x, RESNET_EPSILON, name=f"{name}_3_bn")
    x = graph.add([shortcut, x], name=f"{name}_add")
    return graph.relu(x, name=f"{name}_out")


def resnet50() -> tuple[LayerGraph, int]:
    """ResNet50 (v1, convolutions with bias), no top, average-pooled: 2048 features."""
    graph = LayerGraph(224)
    x = graph.zero_pad(graph.input, 3, name="conv1_pad")
    x = graph.conv(x, 64, 7, stride=2, name="conv1_conv")
    x = graph.bn(x, RESNET_EPSILON, name="conv1_bn")
    x = graph.relu(x, name="conv1_relu")
    x = graph.zero_pad(x, 1, name="pool1_pad")
    x = graph.max_pool(x, 3, 2, name="pool1_pool")
    for stage, (filters, blocks, stride) in enumerate(
        ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)), start=2
    ):
        x = _resnet_block(graph, x, filters, stride, True, f"conv{stage}_block1")
        for block in range(2, blocks + 1):
            x = _resnet_block(graph, x, filters, 1, False, f"conv{stage}_block{block}")
    return graph, graph.global_avg_pool(x, name="avg_pool")


def _dense_block(graph: LayerGraph, x: int, blocks: int, name: str) -> int:
    """keras.src.applications.densenet.dense_block: pre-activation BN -> ReLU -> Conv, concat."""
    for index in range(1, blocks + 1):
        prefix = f"{name}_block{index}"
        branch = graph.bn(x, DENSENET_EPSILON, name=f"{prefix}_0_bn")
        branch = graph.relu(branch, name=f"{prefix}_0_relu")
        branch = graph.conv(branch, 128, 1, bias=False, name=f"{prefix}_1_conv")
        branch = graph.bn(branch, DENSENET_EPSILON, name=f"{prefix}_1_bn")
        branch = graph.relu(branch, name=f"{prefix}_1_relu")
        branch = graph.conv(branch, 32, 3, padding="same", bias=False, name=f"{prefix}_2_conv")
        x = graph.concat([x, branch], name=f"{prefix}_concat")
    return x


def _transition(graph: LayerGraph, x: int, name: str) -> int:
    x = graph.bn(x, DENSENET_EPSILON, name=f"{name}_bn")
    x = graph.relu(x, name=f"{name}_relu")
    x = graph.conv(x, graph.layers[x].channels // 2, 1, bias=False, name=f"{name}_conv")
    return graph.avg_pool(x, 2, 2, name=f"{name}_pool")


def densenet201() -> tuple[LayerGraph, int]:
    """DenseNet201, no top, average-pooled: 1920 features."""
    graph = LayerGraph(224)
    x = graph.zero_pad(graph.input, 3)
    x = graph.conv(x, 64, 7, stride=2, bias=False, name="conv1_conv")
    x = graph.bn(x, DENSENET_EPSILON, name="conv1_bn")
    x = graph.relu(x, name="conv1_relu")
    x = graph.zero_pad(x, 1)
    x = graph.max_pool(x, 3, 2, name="pool1")
    for stage, blocks in enumerate((6, 12, 48, 32), start=2):
        x = _dense_block(graph, x, blocks, f"conv{stage}")
        if stage < 5:
            x = _transition(graph, x, f"pool{stage}")
    x = graph.bn(x, DENSENET_EPSILON, name="bn")
    x = graph.relu(x, name="relu")
    return graph, graph.global_avg_pool(x, name="avg_pool")


def _conv_bn(
    graph: LayerGraph,
    x: int,
    filters: int,
    rows: int,
    cols: int,
    stride: int = 1,
    padding: str = "same",
) -> int:
    """keras.src.applications.inception_v3.conv2d_bn with no name: Conv, BN(scale=False), ReLU."""
    x = graph.conv(x, filters, (rows, cols), stride=stride, padding=padding, bias=False)
    x = graph.bn(x, INCEPTION_EPSILON, scale=False)
    return graph.relu(x)


def _pool_branch(graph: LayerGraph, x: int, filters: int) -> int:
    return _conv_bn(graph, graph.avg_pool(x, 3, 1, padding="same"), filters, 1, 1)


def _inception_a(graph: LayerGraph, x: int, pool_filters: int, name: str) -> int:
    branch1x1 = _conv_bn(graph, x, 64, 1, 1)
    branch5x5 = _conv_bn(graph, _conv_bn(graph, x, 48, 1, 1), 64, 5, 5)
    branch3x3dbl = _conv_bn(graph, x, 64, 1, 1)
    branch3x3dbl = _conv_bn(graph, _conv_bn(graph, branch3x3dbl, 96, 3, 3), 96, 3, 3)
    branch_pool = _pool_branch(graph, x, pool_filters)
    return graph.concat([branch1x1, branch5x5, branch3x3dbl, branch_pool], name=name)


def _inception_c(graph: LayerGraph, x: int, filters: int, name: str) -> int:
    """The 17x17 blocks (mixed4 to mixed7): factorised 7x7 convolutions."""
    branch1x1 = _conv_bn(graph, x, 192, 1, 1)
    branch7x7 = _conv_bn(graph, x, filters, 1, 1)
    branch7x7 = _conv_bn(graph, branch7x7, filters, 1, 7)
    branch7x7 = _conv_bn(graph, branch7x7, 192, 7, 1)
    branch7x7dbl = _conv_bn(graph, x, filters, 1, 1)
    for rows, cols in ((7, 1), (1, 7), (7, 1)):
        branch7x7dbl = _conv_bn(graph, branch7x7dbl, filters, rows, cols)
    branch7x7dbl = _conv_bn(graph, branch7x7dbl, 192, 1, 7)
    branch_pool = _pool_branch(graph, x, 192)
    return graph.concat([branch1x1, branch7x7, branch7x7dbl, branch_pool], name=name)


def _inception_e(graph: LayerGraph, x: int, index: int) -> int:
    """The 8x8 blocks (mixed9, mixed10): split 1x3 / 3x1 branches."""
    branch1x1 = _conv_bn(graph, x, 320, 1, 1)
    branch3x3 = _conv_bn(graph, x, 384, 1, 1)
    branch3x3 = graph.concat(
        [_conv_bn(graph, branch3x3, 384, 1, 3), _conv_bn(graph, branch3x3, 384, 3, 1)],
        name=f"mixed9_{index}",
    )
    branch3x3dbl = _conv_bn(graph, _conv_bn(graph, x, 448, 1, 1), 384, 3, 3)
    branch3x3dbl = graph.concat(
        [_conv_bn(graph, branch3x3dbl, 384, 1, 3), _conv_bn(graph, branch3x3dbl, 384, 3, 1)]
    )
    branch_pool = _pool_branch(graph, x, 192)
    return graph.concat([branch1x1, branch3x3, branch3x3dbl, branch_pool], name=f"mixed{9 + index}")


def inceptionv3() -> tuple[LayerGraph, int]:
    """InceptionV3, no top, average-pooled: 2048 features."""
    graph = LayerGraph(299)
    x = _conv_bn(graph, graph.input, 32, 3, 3, stride=2, padding="valid")
    x = _conv_bn(graph, x, 32, 3, 3, padding="valid")
    x = _conv_bn(graph, x, 64, 3, 3)
    x = graph.max_pool(x, 3, 2)
    x = _conv_bn(graph, x, 80, 1, 1, padding="valid")
    x = _conv_bn(graph, x, 192, 3, 3, padding="valid")
    x = graph.max_pool(x, 3, 2)
    for index, pool_filters in enumerate((32, 64, 64)):
        x = _inception_a(graph, x, pool_filters, f"mixed{index}")

    branch3x3 = _conv_bn(graph, x, 384, 3, 3, stride=2, padding="valid")
    branch3x3dbl = _conv_bn(graph, _conv_bn(graph, x, 64, 1, 1), 96, 3, 3)
    branch3x3dbl = _conv_bn(graph, branch3x3dbl, 96, 3, 3, stride=2, padding="valid")
    branch_pool = graph.max_pool(x, 3, 2)
    x = graph.concat([branch3x3, branch3x3dbl, branch_pool], name="mixed3")

    for index, filters in enumerate((128, 160, 160, 192), start=4):
        x = _inception_c(graph, x, filters, f"mixed{index}")

    branch3x3 = _conv_bn(graph, _conv_bn(graph, x, 192, 1, 1), 320, 3, 3, 2, "valid")
    branch7x7x3 = _conv_bn(graph, x, 192, 1, 1)
    branch7x7x3 = _conv_bn(graph, branch7x7x3, 192, 1, 7)
    branch7x7x3 = _conv_bn(graph, branch7x7x3, 192, 7, 1)
    branch7x7x3 = _conv_bn(graph, branch7x7x3, 192, 3, 3, 2, "valid")
    branch_pool = graph.max_pool(x, 3, 2)
    x = graph.concat([branch3x3, branch7x7x3, branch_pool], name="mixed8")

    for index in range(2):
        x = _inception_e(graph, x, index)
    return graph, graph.global_avg_pool(x)


ARCHITECTURES: dict[str, Callable[[], tuple[LayerGraph, int]]] = {
    "vgg16": vgg16,
    "resnet50": resnet50,
    "inceptionv3": inceptionv3,
    "densenet201": densenet201,
}
