"""Colour-preserving features appended to Xception's, computed inside the encoder graph.

ImageNet Xception's average-pooled features keep shape but lose colour (a
linear probe names the colour of a lone object about 60% of the time), and a
global colour histogram says which colours are present but not which shape
wears which colour. The tutorial decoder only sees one feature vector, so the
binding has to be in that vector already. We therefore describe the image
*per object colour*:

1. A soft mask per colour prototype (the scene colours in `palette.PALETTE`): a
   sigmoid of the RGB distance to the prototype on a half-resolution image,
   cleaned by a morphological opening so thin anti-aliasing / JPEG rings
   between a shape and its background do not become objects.
2. For each mask, translation-invariant shape descriptors:
   - area, perimeter (Sobel magnitude) and the isoperimetric ratio;
   - the orientation spectrum of the mask's edge normals, sum(|g| * u^k) for
     k = 2..10 (u the unit gradient as a complex number): a square's normals
     point 4 ways (k = 4 large and positive), a diamond's too but rotated by
     45 degrees (k = 4 negative), a triangle's 3 ways (k = 3), a star's 5 ways
     (k = 5, 10), a circle's every way (all small);
   - the Euler number of the binarised mask from 2x2 bit-quad counts, which
     for solid, non-touching shapes is the number of objects ("two circles");
   - centroid, spread and bounding-box extent (where, how big, how compact).
3. A 3x3 grid of each mask's coverage (which colour is where) and the
   background's brightness and texture.
4. A fitted shape head (a linear softmax over the descriptors, see
   models/shape_head.py, its constants in
   models/shape_head_params.py) and a one-hot of the object count, per colour.
5. The same per-colour descriptors (with a colour one-hot) re-ordered into
   left-to-right slots, and the number of colours present: captions name
   groups left to right, so the decoder finds "the next group" at a fixed place.

Only elementwise ops, convolutions, pooling and reductions are used, so
tf2onnx converts the function at opset 17. Its cost is the number of
full-image passes over the 149x149x6 masks (each a few hundred microseconds
and, with several threads, a thread-pool round trip), not its arithmetic, so
the Euler number and the orientation spectrum are written to need few of them
(recipe 2; recipe 1 computed the same values, to ~4e-7, in about 35 more).
Every value is scaled to roughly unit range by
construction, comparable to Xception's ReLU features, and every per-colour
descriptor is gated by the colour's presence so an absent colour gives zeros.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from capgen.models import shape_head_params
from capgen.models.colour_encoder import (
    GRID,
    HARMONICS,
    PER_COLOUR_SIZE,
    PROTOTYPES,
    SLOT_SIZE,
    SLOTS,
)

POOL = 2  # 299 -> 149: enough resolution for the smallest shapes, cheap
MASK_RADIUS = 0.2  # RGB distance (0..sqrt 3) at which a pixel is half in the mask
MASK_SOFTNESS = 0.025
MASK_FLOOR = 0.1
_PRESENCE, _CENTRE_X = 0, 7  # columns of the per-colour descriptor

_EPS = 1e-6


def _masks(rgb: tf.Tensor) -> tf.Tensor:
    """[N,H,W,3] in 0..1 -> [N,H,W,C] soft masks, one per prototype, after an opening."""
    prototypes = tf.constant(np.array(list(PROTOTYPES.values()), np.float32) / 255.0)  # [C,3]
    diff = rgb[:, :, :, None, :] - prototypes[None, None, None, :, :]  # [N,H,W,C,3]
    distance = tf.sqrt(tf.reduce_sum(diff * diff, axis=-1) + _EPS)
    soft = tf.sigmoid((MASK_RADIUS - distance) / MASK_SOFTNESS)
    # Far pixels (a gray background near no prototype) must add exactly nothing,
    # or thousands of tiny values sum to a phantom object.
    soft = tf.nn.relu(soft - MASK_FLOOR) / (1.0 - MASK_FLOOR)
    eroded = -tf.nn.max_pool2d(-soft, 3, 1, "SAME")
    return tf.nn.max_pool2d(eroded, 3, 1, "SAME")


def _depthwise(masks: tf.Tensor, kernel: np.ndarray, padding: str) -> tf.Tensor:
    channels = len(PROTOTYPES)
    filters = np.repeat(kernel.astype(np.float32)[:, :, None, None], channels, axis=2)
    return tf.nn.depthwise_conv2d(masks, tf.constant(filters), [1, 1, 1, 1], padding)


def _euler_number(binary: tf.Tensor) -> tf.Tensor:
    """8-connected Euler number per binarised mask from bit-quad counts (Gray 1971): [N,C].

    Gray's count is (n1 - n3 - 2 nD) / 4 over the 2x2 quads with one set
    pixel, three, or a diagonal pair. With s = the quad's set pixels and
    t = its main minus its anti-diagonal pixels (|t| = 2 only for a diagonal
    pair), a quad adds s(s-2)(s-4)/3 - t^2(t^2-1)/6 to 4 n_Euler: +1 for s=1,
    -1 for s=3, -2 for a diagonal pair, 0 otherwise. Every term is a small
    integer, so the sums are exact and equal to counting each code with an
    Equal and a Cast, in a dozen elementwise passes instead of about 30.
    """
    padded = tf.pad(binary, [[0, 0], [1, 1], [1, 1], [0, 0]])
    pixels = _depthwise(padded, np.array([[1.0, 1.0], [1.0, 1.0]]), "VALID")
    diagonal = _depthwise(padded, np.array([[1.0, -1.0], [-1.0, 1.0]]), "VALID")
    squared = diagonal * diagonal
    odd = tf.reduce_sum(pixels * (pixels - 2.0) * (pixels - 4.0), axis=[1, 2])
    pairs = tf.reduce_sum(squared * (squared - 1.0), axis=[1, 2])
    return (odd / 3.0 - pairs / 6.0) / 4.0


def _orientation_spectrum(gx: tf.Tensor, gy: tf.Tensor, magnitude: tf.Tensor) -> tf.Tensor:
    """sum(|g| u^k) / sum(|g|) for k in HARMONICS, as (real, imag) pairs: [N,C,2K].

    The recurrence runs on |g| u^k directly (starting from |g| u), so each
    harmonic is summed as it comes instead of being weighted by |g| first:
    two full-image passes fewer per harmonic, for a difference in the last
    bit of the products.
    """
    ux = gx / magnitude
    uy = gy / magnitude
    total = tf.reduce_sum(magnitude, axis=[1, 2]) + _EPS
    real, imag = magnitude * ux, magnitude * uy
    parts = []
    for k in range(2, max(HARMONICS) + 1):
        real, imag = real * ux - imag * uy, real * uy + imag * ux
        if k in HARMONICS:
            parts.append(tf.reduce_sum(real, axis=[1, 2]) / total)
            parts.append(tf.reduce_sum(imag, axis=[1, 2]) / total)
    return tf.stack(parts, axis=-1)


def _per_colour(masks: tf.Tensor) -> tf.Tensor:
    """Shape, count and placement descriptors per mask: [N, C, PER_COLOUR_SIZE]."""
    size = masks.shape[1]
    sobel = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 4.0
    gx = _depthwise(masks, sobel, "SAME")
    gy = _depthwise(masks, sobel.T, "SAME")
    magnitude = tf.sqrt(gx * gx + gy * gy + _EPS * _EPS)

    pixels = tf.reduce_sum(masks, axis=[1, 2])  # [N,C]
    binary = tf.cast(masks > 0.5, tf.float32)
    solid = tf.reduce_sum(binary, axis=[1, 2])
    presence = tf.clip_by_value(solid / 20.0, 0.0, 1.0)
    area = pixels / float(size * size)
    perimeter = tf.reduce_sum(magnitude, axis=[1, 2])
    isoperimetric = perimeter * perimeter / (4.0 * np.pi * pixels + 1.0)
    euler = _euler_number(binary)
    objects = tf.maximum(euler, 1.0)

    coords = tf.constant((np.arange(size, dtype=np.float32) + 0.5) / size)
    column_mass = tf.reduce_sum(masks, axis=1)  # [N,W,C]
    row_mass = tf.reduce_sum(masks, axis=2)  # [N,H,C]
    weight = pixels + _EPS
    cx = tf.einsum("nwc,w->nc", column_mass, coords) / weight
    cy = tf.einsum("nhc,h->nc", row_mass, coords) / weight
    sx = tf.sqrt(
        tf.maximum(tf.einsum("nwc,w->nc", column_mass, coords * coords) / weight - cx * cx, 0.0)
        + _EPS
    )
    sy = tf.sqrt(
        tf.maximum(tf.einsum("nhc,h->nc", row_mass, coords * coords) / weight - cy * cy, 0.0) + _EPS
    )
    box_w = tf.reduce_sum(tf.reduce_max(masks, axis=1), axis=1) / float(size)
    box_h = tf.reduce_sum(tf.reduce_max(masks, axis=2), axis=1) / float(size)
    extent = area / (box_w * box_h + _EPS)

    basic = tf.stack(
        [
            presence,
            5.0 * area,
            3.0 * tf.sqrt(area / objects),
            perimeter / float(size),
            isoperimetric / objects,
            extent,
            euler,
            cx,
            cy,
            4.0 * sx,
            4.0 * sy,
            2.0 * box_w,
            2.0 * box_h,
        ],
        axis=-1,
    )
    spectrum = 2.0 * _orientation_spectrum(gx, gy, magnitude)
    descriptors = tf.concat([basic, spectrum], axis=-1) * presence[:, :, None]
    counts = tf.nn.relu(1.0 - tf.abs(euler[:, :, None] - tf.constant([1.0, 2.0, 3.0])))
    named = tf.concat([2.0 * _shape_probabilities(descriptors), 2.0 * counts], axis=-1)
    return tf.concat([descriptors, named * presence[:, :, None]], axis=-1)


def _shape_probabilities(descriptors: tf.Tensor) -> tf.Tensor:
    """The fitted shape head (models/shape_head_params.py): softmax over SHAPES per colour, [N,C,S]."""
    mean = tf.constant(np.array(shape_head_params.MEAN, np.float32))
    scale = tf.constant(np.array(shape_head_params.SCALE, np.float32))
    weights = tf.constant(np.array(shape_head_params.WEIGHTS, np.float32))
    bias = tf.constant(np.array(shape_head_params.BIAS, np.float32))
    logits = tf.einsum("ncd,ds->ncs", (descriptors - mean) / scale, weights) + bias
    return tf.nn.softmax(logits, axis=-1)


def _grid_coverage(masks: tf.Tensor) -> tf.Tensor:
    """Mean mask value in each cell of a GRID x GRID layout: [N, C, GRID*GRID]."""
    size = masks.shape[1]
    cell = -(-size // GRID)
    padded = tf.pad(masks, [[0, 0], [0, cell * GRID - size], [0, cell * GRID - size], [0, 0]])
    pooled = tf.nn.avg_pool2d(padded, cell, cell, "VALID")  # [N,G,G,C]
    return 5.0 * tf.reshape(tf.transpose(pooled, [0, 3, 1, 2]), [-1, len(PROTOTYPES), GRID * GRID])


def _background(rgb: tf.Tensor, masks: tf.Tensor) -> tf.Tensor:
    """Brightness of the non-object pixels, and the image's brightness spread: [N, 3]."""
    luminance = tf.reduce_mean(rgb, axis=-1)
    free = 1.0 - tf.clip_by_value(tf.reduce_sum(masks, axis=-1), 0.0, 1.0)
    mean = tf.reduce_sum(free * luminance, axis=[1, 2]) / (tf.reduce_sum(free, axis=[1, 2]) + _EPS)
    overall = tf.reduce_mean(luminance, axis=[1, 2])
    spread = tf.sqrt(
        tf.reduce_mean(tf.square(luminance - overall[:, None, None]), axis=[1, 2]) + _EPS
    )
    return tf.stack([2.0 * mean, 2.0 * overall, 4.0 * spread], axis=-1)


def _slots(per_colour: tf.Tensor) -> tf.Tensor:
    """The colours again, ordered left to right: slot j = the j-th present colour by centroid x.

    Captions name groups left to right, so the decoder, which knows how many
    groups it has named, finds the next one's colour (one-hot) and shape
    descriptors at a fixed place instead of comparing centroids itself.
    Ranks use a steep sigmoid of centroid differences, so everything stays
    elementwise: [N, SLOTS * SLOT_SIZE].
    """
    colours = len(PROTOTYPES)
    presence = per_colour[:, :, _PRESENCE]
    centre_x = per_colour[:, :, _CENTRE_X]
    left_of = tf.sigmoid(
        (centre_x[:, :, None] - centre_x[:, None, :]) / 0.003
    )  # [N,C,C']: c' left of c
    others = tf.constant(1.0 - np.eye(colours, dtype=np.float32))
    rank = tf.reduce_sum(left_of * presence[:, None, :] * others[None], axis=2)  # [N,C]
    slots = tf.constant(np.arange(SLOTS, dtype=np.float32))
    membership = presence[:, :, None] * tf.nn.relu(
        1.0 - tf.abs(rank[:, :, None] - slots[None, None, :])
    )
    identity = tf.constant(2.0 * np.eye(colours, dtype=np.float32))
    content = tf.concat(
        [tf.tile(identity[None], [tf.shape(per_colour)[0], 1, 1]), per_colour], axis=-1
    )
    ordered = tf.einsum("ncs,ncd->nsd", membership, content)  # [N,SLOTS,SLOT_SIZE]
    return tf.reshape(ordered, [-1, SLOTS * SLOT_SIZE])


def colour_features(images_uint8: tf.Tensor) -> tf.Tensor:
    """[N,299,299,3] uint8 RGB -> float32 [N, COLOUR_FEATURE_SIZE]."""
    rgb = tf.cast(images_uint8, tf.float32) / 255.0
    rgb = tf.nn.avg_pool2d(rgb, POOL, POOL, "VALID")
    masks = _masks(rgb)
    batch = tf.shape(rgb)[0]
    descriptors = _per_colour(masks)
    per_colour = tf.concat([descriptors, _grid_coverage(masks)], axis=-1)
    flat = tf.reshape(per_colour, [batch, len(PROTOTYPES) * (PER_COLOUR_SIZE + GRID * GRID)])
    groups = tf.reduce_sum(descriptors[:, :, _PRESENCE], axis=1, keepdims=True)
    return tf.concat([flat, _slots(descriptors), _background(rgb, masks), groups], axis=-1)
