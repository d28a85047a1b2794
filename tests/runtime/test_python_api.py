"""The Python API is discoverable: `dir(capgen)`, typed decoding keywords, `capgen.list_models()`.

`import capgen` imports its public names lazily (cold start), which used to hide
them: `dir(capgen)` showed only `typing` leftovers, `Captioner.caption`'s
`**overrides` hid `beam_size` and the rest from IDEs, and the installed models
were listed only by the `capgen models` command.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import shutil
import subprocess
import sys
import typing
from pathlib import Path

import numpy as np
import pytest
from tiny_model import TinyModel

import capgen
from capgen.runtime.captioner import Captioner
from capgen.runtime.decoding import DecodingOptions, DecodingResult
from capgen.runtime.errors import CapgenError, InputError
from capgen.runtime.installed import InstalledModel

PUBLIC = {
    "Captioner",
    "DecodingOptions",
    "DecodingResult",
    "CapgenError",
    "InputError",
    "ImageError",
    "ModelError",
    "TokenizerError",
    "ConversionError",
    "InstalledModel",
    "list_models",
    "__version__",
}
DECODING_KEYWORDS = {
    "beam_size": int | None,
    "max_length": int | None,
    "length_penalty": float | None,
    "n_best": int | None,
}


def test_dir_lists_the_public_names_and_each_resolves() -> None:
    listed = dir(capgen)
    assert set(listed) >= PUBLIC, sorted(PUBLIC - set(listed))
    assert set(capgen.__all__) == set(listed)
    assert "TYPE_CHECKING" not in listed and "annotations" not in listed
    for name in capgen.__all__:
        assert getattr(capgen, name) is not None, name
    assert capgen.Captioner is Captioner
    assert capgen.DecodingOptions is DecodingOptions and capgen.DecodingResult is DecodingResult
    for name in capgen.__all__:
        value = getattr(capgen, name)
        if name.endswith("Error"):
            assert issubclass(value, CapgenError), name
    assert isinstance(capgen.__version__, str) and capgen.__version__[0].isdigit()
    with pytest.raises(AttributeError, match="no attribute 'Captionr'"):
        capgen.Captionr  # noqa: B018


def test_star_import_brings_the_public_names() -> None:
    scope: dict[str, object] = {}
    exec("from capgen import *", scope)
    assert set(scope) >= PUBLIC


def test_import_capgen_and_listing_models_stay_lazy(tmp_path: Path) -> None:
    """Neither `import capgen`, `dir(capgen)` nor `list_models()` imports onnxruntime or numpy."""
    code = (
        "import sys, capgen; dir(capgen); capgen.list_models(); "
        "print(sorted(m for m in ('onnxruntime', 'numpy', 'PIL', 'typer', 'tensorflow') "
        "if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"CAPGEN_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout


@pytest.mark.parametrize("method", ["caption", "caption_batch", "iter_captions"])
def test_decoding_options_are_typed_keyword_parameters(method: str) -> None:
    function = getattr(Captioner, method)
    parameters = inspect.signature(function).parameters
    hints = typing.get_type_hints(function)
    for name, annotation in DECODING_KEYWORDS.items():
        assert parameters[name].kind is inspect.Parameter.KEYWORD_ONLY, (method, name)
        assert parameters[name].default is None, (method, name)
        assert hints[name] == annotation, (method, name, hints[name])
    assert "options" in parameters  # a whole DecodingOptions still works


def _image() -> np.ndarray:
    return np.random.default_rng(5).integers(0, 255, (40, 48, 3), dtype=np.uint8)


def test_keywords_equal_the_options_object(tiny_captioner: Captioner) -> None:
    image = _image()
    by_keyword = tiny_captioner.caption(image, beam_size=3, n_best=2, max_length=4)
    by_options = tiny_captioner.caption(
        image, options=DecodingOptions(beam_size=3, n_best=2, max_length=4)
    )
    assert by_keyword.tokens == by_options.tokens and by_keyword.text == by_options.text
    assert len(by_keyword.tokens) <= 4
    assert len(by_keyword.alternatives) == 1  # n_best=2 took effect
    # A keyword overrides that field of `options` only; None keeps what `options` says.
    mixed = tiny_captioner.caption(
        image, options=DecodingOptions(beam_size=3, max_length=4), n_best=2, beam_size=None
    )
    assert mixed.tokens == by_options.tokens and len(mixed.alternatives) == 1
    batch = tiny_captioner.caption_batch([image, image], beam_size=3, n_best=2, max_length=4)
    assert [result.tokens for result in batch] == [by_options.tokens] * 2  # type: ignore[union-attr]
    ((_, streamed),) = list(
        tiny_captioner.iter_captions([image], beam_size=3, n_best=2, max_length=4)
    )
    assert isinstance(streamed, DecodingResult) and streamed.tokens == by_options.tokens


@pytest.mark.parametrize("method", ["caption", "caption_batch", "iter_captions"])
def test_an_unknown_keyword_is_a_one_line_input_error(
    tiny_captioner: Captioner, method: str
) -> None:
    image = _image()
    call = {
        "caption": lambda **kw: tiny_captioner.caption(image, **kw),
        "caption_batch": lambda **kw: tiny_captioner.caption_batch([image], **kw),
        "iter_captions": lambda **kw: list(tiny_captioner.iter_captions([image], **kw)),
    }[method]
    with pytest.raises(InputError) as raised:
        call(beam=2)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("unknown decoding option 'beam'") and "beam_size" in message


@pytest.mark.parametrize(
    ("keywords", "message"),
    [
        ({"beam_size": 0}, "beam_size must be an integer from 1 to"),
        ({"beam_size": 2.5}, "beam_size must be an integer from 1 to"),
        ({"max_length": -1}, "max_length must be an integer from 1 to"),
        ({"n_best": 4}, "n_best must be between 1 and beam_size (3), got 4"),
        ({"length_penalty": float("nan")}, "length_penalty must be a non-negative number"),
    ],
)
def test_bad_values_keep_their_messages(
    tiny_captioner: Captioner, keywords: dict[str, object], message: str
) -> None:
    with pytest.raises(InputError) as raised:
        tiny_captioner.caption(_image(), **keywords)  # type: ignore[arg-type]
    assert str(raised.value).startswith(message) and "\n" not in str(raised.value)


def test_list_models_returns_the_installed_models(
    tiny_model: TinyModel,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("CAPGEN_HOME", str(home))
    assert capgen.list_models() == []  # no models folder at all: empty, not an error
    shutil.copytree(tiny_model.folder, home / "models" / "tiny")
    broken = home / "models" / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text("{not json")
    (home / "models" / "notes").mkdir()  # no manifest: not a model

    models = capgen.list_models()

    assert [model.name for model in models] == ["broken", "tiny"]
    assert all(isinstance(model, InstalledModel) for model in models)
    broken_model, tiny = models
    assert broken_model.problem is not None and broken_model.vocabulary is None
    manifest = json.loads((tiny_model.folder / "manifest.json").read_text())
    assert tiny.problem is None
    assert tiny.folder == home / "models" / "tiny"
    assert tiny.vocabulary == manifest["vocabulary"]["size"]
    assert tiny.encoder_kind == manifest["encoder"]["kind"]
    assert tiny.int8 is True and tiny.size_bytes > 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        tiny.name = "other"  # type: ignore[misc]
    assert capsys.readouterr() == ("", "")  # the library never prints
    # The name it gives is what Captioner takes.
    assert Captioner(tiny.name).manifest.folder == tiny.folder
