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


def is_count(value: object) -> bool:
    """An integer (numpy's too), but not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
