"""The object colours the default model knows, shared by the scene generator and the encoder.

The colour features (capgen.models.colour_features) build one mask per colour
here, and the synthetic scenes (capgen.models.scenes) paint their objects with these
same values, so the two can never drift apart. Kept free of TensorFlow so the
generator stays light.
"""

from __future__ import annotations

# Saturated, far apart in RGB, none of them a background colour (white, black, gray).
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (40, 165, 55),
    "blue": (40, 75, 215),
    "yellow": (240, 215, 35),
    "purple": (135, 50, 175),
    "orange": (245, 135, 25),
}
