"""Encoder kinds come from a registry; the demo's kind arrives through an entry point.

The converter must not import the demonstration model (convert -> models was a
circle); it finds `xception+colour` through the `capgen.encoders` entry point.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from capgen.convert.encoder_registry import (
    EncoderKindSpec,
    encoder_kind_names,
    get_encoder_kind,
    register_encoder_kind,
)
from capgen.runtime.errors import ConversionError, InputError

CONVERT_DIR = Path(__file__).resolve().parents[2] / "convert"


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_the_converter_imports_nothing_from_the_demo() -> None:
    offenders = {
        f"{path.name}: {name}"
        for path in sorted(CONVERT_DIR.glob("*.py"))
        for name in _imported_modules(path)
        if name == "capgen.models" or name.startswith(("capgen.models.", "models"))
    }
    assert not offenders


def test_the_demo_kind_loads_through_its_entry_point_without_tensorflow() -> None:
    code = (
        "import sys\n"
        "from capgen.convert.encoder_registry import get_encoder_kind\n"
        "spec = get_encoder_kind('xception+colour')\n"
        "print(spec.feature_size, spec.input_size, 'tensorflow' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == ["2475", "299", "False"]


def test_known_kinds_list_the_builtin_first() -> None:
    builtin = ("xception", "vgg16", "resnet50", "inceptionv3", "densenet201")
    assert encoder_kind_names()[:6] == (*builtin, "xception+colour")


def test_the_application_families_are_known_without_tensorflow() -> None:
    """Listing kinds (and sizing a mismatch's message) must not import the conversion stack."""
    code = (
        "import sys\n"
        "from capgen.convert.encoder_registry import get_encoder_kind\n"
        "for kind in ('vgg16', 'resnet50', 'inceptionv3', 'densenet201'):\n"
        "    spec = get_encoder_kind(kind)\n"
        "    print(spec.feature_size, spec.input_size, spec.preprocessing['resize_filter'])\n"
        "print('tensorflow' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == [
        *("4096", "224", "NEAREST", "2048", "224", "NEAREST"),
        *("2048", "299", "NEAREST", "1920", "224", "NEAREST"),
        "False",
    ]


def test_an_unknown_kind_is_a_one_line_input_error() -> None:
    with pytest.raises(InputError, match=r"unknown encoder 'resnet'; choose one of xception, "):
        get_encoder_kind("resnet")


def test_a_second_spec_under_a_taken_name_is_refused() -> None:
    spec = get_encoder_kind("xception")
    assert register_encoder_kind(spec) is spec
    impostor = EncoderKindSpec(name="xception", feature_size=1, build=print, recipe_version=1)
    with pytest.raises(ConversionError, match="registered twice"):
        register_encoder_kind(impostor)
