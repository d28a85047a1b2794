"""Files a converted model folder gains after conversion, recorded in its manifest.

`capgen convert quantize` adds an INT8 encoder, `add_fast_decoder` a fast
step, and older folders can be given word gates: each is written into the
folder first, then named here with its sha256 and size, the manifest
replaced atomically (so a crash leaves the old, valid one).
"""

from __future__ import annotations

import dataclasses
from enum import Enum
from pathlib import Path

from capgen.runtime.integrity import check_file_name
from capgen.runtime.manifest import Manifest, file_record, load_manifest, write_manifest


class OptionalFile(Enum):
    """Files a converted folder can gain later, and the manifest field that names each."""

    INT8_ENCODER = "encoder.int8_file"
    FAST_STEP = "decoder.int8_step_file"
    WORD_GATES = "decoder.word_gates_file"


def with_optional_file(
    manifest: Manifest, role: OptionalFile, name: str, onnxruntime: str | None = None
) -> Manifest:
    """`manifest` naming `name` (already in the folder) as its INT8 encoder, fast step or word gates."""
    check_file_name(name)
    files = {**manifest.files, name: file_record(manifest.path(name), onnxruntime)}
    if role is OptionalFile.INT8_ENCODER:
        encoder = dataclasses.replace(manifest.encoder, int8_file=name)
        return dataclasses.replace(manifest, encoder=encoder, files=files)
    if role is OptionalFile.WORD_GATES:
        decoder = dataclasses.replace(manifest.decoder, word_gates_file=name)
    else:
        decoder = dataclasses.replace(manifest.decoder, int8_step_file=name)
    return dataclasses.replace(manifest, decoder=decoder, files=files)


def add_optional_file(
    folder: Path, role: OptionalFile, name: str, onnxruntime: str | None = None
) -> Manifest:
    """Record the folder's file `name` as its INT8 encoder, fast step or word gates (sha256, size)."""
    manifest = with_optional_file(load_manifest(folder), role, name, onnxruntime)
    write_manifest(manifest)
    return manifest
