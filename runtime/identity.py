"""What a model says about itself beyond the contract's fields: is it capgen's demonstration?

The manifest decides, not the folder's location: `capgen setup` writes
`"demonstration": true` into the default model's manifest, and a user's own
model placed at `$CAPGEN_HOME/models/default` is not announced as the
synthetic-scenes demonstration. The key is kept by the manifest's parser as
an extra key, so older capgen versions read such folders unchanged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only for the annotation: `capgen --help` imports the note without the manifest
    from capgen.runtime.manifest import Manifest

DEMONSTRATION_KEY = "demonstration"
# What a front end (`capgen caption`, `capgen serve`) tells the user when the
# demonstration model runs; each adds its own prefix ("capgen: note: ").
DEMONSTRATION_NOTE = (
    "this is the demonstration model, trained on synthetic scenes "
    "(shapes and colours), not on photos. For photos use the default model (capgen caption IMAGE, "
    "built by capgen setup) or convert your own: capgen convert model model_9.h5 tokenizer.p -o mymodel/"
)


def is_demonstration(manifest: Manifest) -> bool:
    """Whether the manifest says this is capgen's demonstration model (`"demonstration": true`)."""
    return manifest.extra.get(DEMONSTRATION_KEY) is True
