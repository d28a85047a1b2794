"""Upper bounds on what a caller or a model file may ask for, and the check for counts.

Each bound turns a request that would hang or exhaust memory (a beam of a
million, a caption of 10**9 words) into a one-line error up front; decoding,
the manifest reader and the converter all enforce the same numbers.
"""

from __future__ import annotations

import numbers

# Most words generated after the start token. The tutorial's max_length is 32-40;
# a model that never says `end` decodes this many steps.
MAX_CAPTION_LENGTH = 1000
# Each step holds beam_size rows of V log-probabilities per image (V = 7,577 for
# the tutorial); beams beyond ~10 stop helping.
MAX_BEAM_SIZE = 100
# Most bytes one encoded image may take, from a file, bytes or a stream (stdin):
# a stream is read in chunks and refused as soon as it passes this, instead of
# being buffered whole first (`capgen caption - < /dev/zero`). An 89 Mpx photo
# (the pixel limit) is a few tens of MB as JPEG or PNG; only an uncompressed
# 16-bit TIFF of that size needs more.
MAX_IMAGE_BYTES = 256 << 20
# Longest side an image may have, whatever its pixel count (JPEG's own limit).
# Resizing n pixels down to a few hundred needs filter coefficients in
# proportion to n: a 1 x 30,000,000 PNG (29 kB, under the pixel limit) took
# 1.1 GB to resize. With every side bounded, that memory is bounded too.
MAX_IMAGE_SIDE = 65_535
# Bounds on what a manifest says sizes work: max_length 10**9 (or an encoder
# input of 10**5 x 10**5 pixels) would hang or exhaust memory on the first
# image instead of failing at load. The tutorial's values are 32-40 and 299.
MAX_INPUT_SIDE = 4096
# The same for the sizes that shape the decoder's state and the features
# (tutorial: 256 units, 256 projection, 2048 features, 7,577 words); a manifest
# saying 10**9 units would otherwise allocate gigabytes before any graph ran.
MAX_UNITS = 1 << 14
MAX_FEATURE_SIZE = 1 << 16
MAX_VOCABULARY_SIZE = 1 << 21


def is_count(value: object) -> bool:
    """An integer (numpy's too), but not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
