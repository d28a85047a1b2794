"""Precision modes: which encoder graph runs, on which engine, and `auto`'s stored decision.

The encoder is most of a caption's time, and how fast it runs depends on the
CPU and on what is installed (engines.py). Users pick a mode, not an engine:

- `fp32`: the FP32 graph on onnxruntime, exact (what capgen always did; the default);
- `bf16`: the FP32 graph on OpenVINO computing in bf16 (features within
  cosine ~0.9997; refused without OpenVINO or a CPU with bf16);
- `int8`: the model's INT8 (QDQ) graph on onnxruntime, the numbers
  `capgen convert quantize` evaluated (the same as `--int8`). OpenVINO also
  runs QDQ graphs, faster, but not always faithfully: on the demonstration
  model's INT8 encoder (uint8 activations, per-channel weights) its features
  had cosine 0.63-0.86 with fp32's where onnxruntime's had 0.995 (measured,
  OpenVINO 2026.4.1). So INT8 on OpenVINO is only a `capgen tune` candidate,
  which `auto` takes only if its captions agree with fp32's;
- `auto`: the fastest mode whose greedy captions equal fp32's on at least
  97% of a bench set, as measured once on this machine by `capgen tune`
  (tuning.py). The decision is stored in the cache and keyed on the model's
  files, the CPU and the engines' versions, so a new model, a new machine or
  an upgraded engine means no decision; with none, `auto` is fp32 and says so.

A decision is speed advice, but it changes which numbers a caption comes
from, so it is used only when it is exactly what `capgen tune` wrote for this
key: a regular file of this user's (or root's) in a folder only they can
change, read without following links, sealed with the sha256 of its content,
with this very key, and consistent (its mode is the fastest of the recorded
candidates that reached the threshold). Anything else is ignored, with the
reason in `-v`, and `auto` runs fp32.

`Captioner(int8=True)` (and `--int8`) keeps its old meaning: the INT8 graph
on onnxruntime.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cache
from typing import Any

from capgen.runtime.engines import (
    BF16,
    BF16_UNSUPPORTED,
    F32,
    ONNXRUNTIME,
    OPENVINO,
    bf16_supported,
    engine_version,
    openvino_version,
    require_openvino,
)
from capgen.runtime.errors import CapgenError, InputError, ModelError
from capgen.runtime.manifest import Manifest

FP32, BF16_MODE, INT8, AUTO = "fp32", "bf16", "int8", "auto"
PRECISIONS = (FP32, BF16_MODE, INT8, AUTO)
MODES = (FP32, BF16_MODE, INT8)  # what can actually run; auto resolves to one of them
DEFAULT_PRECISION = FP32
# auto takes a mode only if its greedy captions equal fp32's on at least this share of the bench.
AGREEMENT_THRESHOLD = 0.97
DECISIONS_FOLDER = "precision"
# Bump when what a decision means changes (the threshold, the candidates, how they are measured).
DECISION_FORMAT = "1"
_MAX_DECISION_BYTES = 1 << 16
_READ = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def check_precision(precision: object) -> str:
    """`precision` if it is one of PRECISIONS, else a one-line InputError listing them."""
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


@dataclass(frozen=True)
class EncoderPlan:
    """What runs the encoder: the mode, its engine and graph file, and why (for -v and /v1/model)."""

    requested: str  # fp32, bf16, int8 or auto, as asked
    mode: str  # fp32, bf16 or int8: what runs
    engine: str  # onnxruntime or openvino
    file: str  # the manifest's encoder file this mode reads
    inference_precision: str = F32  # OpenVINO's hint; f32 on onnxruntime (it has no other)
    note: str = ""  # auto only: where the mode came from

    def describe(self) -> str:
        """One phrase: 'precision bf16: encoder.onnx on openvino 2026.4.1 (bf16)' and auto's note."""
        version = engine_version(self.engine) or "?"
        computed = f" ({self.inference_precision})" if self.engine == OPENVINO else ""
        text = f"precision {self.mode}: {self.file} on {self.engine} {version}{computed}"
        if self.requested == AUTO:
            text = f"precision auto → {self.mode}: {self.file} on {self.engine} {version}{computed}"
        return f"{text}; {self.note}" if self.note else text

    def summary(self) -> dict[str, Any]:
        """The plan as JSON fields (the service's /v1/model)."""
        return {
            "requested": self.requested,
            "mode": self.mode,
            "engine": self.engine,
            "engine_version": engine_version(self.engine),
            "inference_precision": self.inference_precision,
            "encoder_file": self.file,
            "note": self.note,
        }


def _int8_file(manifest: Manifest) -> str:
    file = manifest.encoder.int8_file
    if file is None:
        raise ModelError(
            f"{manifest.folder}: this model has no INT8 encoder (manifest lists no encoder.int8_file); "
            f"add one with `capgen convert quantize {manifest.folder}` (needs pip install 'capgen[convert]')"
        )
    return file


def mode_plan(manifest: Manifest, mode: str, engine: str | None = None) -> EncoderPlan:
    """The plan for one runnable mode; `engine` None: the mode's own (bf16: OpenVINO, else onnxruntime).

    Raises InputError (one line) when the mode cannot run here: bf16 without
    OpenVINO or without a bf16 CPU; ModelError when the model lacks its graph.
    """
    if mode == FP32:
        if engine not in (None, ONNXRUNTIME):
            raise InputError(f"precision fp32 runs on onnxruntime, not {engine}")
        return EncoderPlan(FP32, FP32, ONNXRUNTIME, manifest.encoder.file)
    if mode == BF16_MODE:
        if engine not in (None, OPENVINO):
            raise InputError(f"precision bf16 runs on openvino, not {engine}")
        require_openvino("precision bf16")
        if not bf16_supported():
            raise InputError(BF16_UNSUPPORTED)
        return EncoderPlan(BF16_MODE, BF16_MODE, OPENVINO, manifest.encoder.file, BF16)
    if mode == INT8:
        file = _int8_file(manifest)
        engine = engine or ONNXRUNTIME  # OpenVINO only when a tuned decision vouches for it
        if engine == OPENVINO:
            require_openvino("precision int8 on openvino")
        elif engine != ONNXRUNTIME:
            raise InputError(f"unknown engine {engine!r} (engines: {ONNXRUNTIME}, {OPENVINO})")
        # f32 for what is not quantized: the INT8 graph's own numbers, like onnxruntime's.
        return EncoderPlan(INT8, INT8, engine, file, F32)
    raise InputError(f"precision must be one of {', '.join(MODES)}, got {mode!r}")


def plan_encoder(
    manifest: Manifest,
    precision: str | None,
    int8: bool = False,
    providers: Sequence[str] | None = None,
) -> EncoderPlan:
    """What `Captioner(precision=..., int8=..., providers=...)` runs its encoder with.

    None and no int8: fp32 (today's default). `int8=True` alone: the INT8
    graph on onnxruntime, as it always meant (and as precision "int8" does).
    Execution providers other than the CPU are onnxruntime's: with them, auto
    is fp32 (a decision is measured on the CPU).
    """
    from capgen.runtime.session import DEFAULT_PROVIDERS

    on_cpu = providers is None or tuple(providers) == DEFAULT_PROVIDERS
    if precision is None:
        if int8:
            return mode_plan(manifest, INT8, ONNXRUNTIME)
        return mode_plan(manifest, FP32)
    check_precision(precision)
    if int8 and precision != INT8:
        raise InputError(f"int8=True (--int8) and precision {precision} disagree; give one of them")
    if precision == AUTO:
        return _auto_plan(manifest, on_cpu)
    return mode_plan(manifest, precision)


def _auto_plan(manifest: Manifest, on_cpu: bool) -> EncoderPlan:
    def fp32(note: str) -> EncoderPlan:
        return replace(mode_plan(manifest, FP32), requested=AUTO, note=note)

    if not on_cpu:
        return fp32("execution providers given: auto's decisions are measured on the CPU")
    decision, reason = load_decision(manifest)
    if decision is None:
        return fp32(reason)
    try:
        plan = mode_plan(manifest, decision.mode, decision.engine)
    except CapgenError as exc:
        return fp32(f"the stored decision ({decision.mode}) cannot run here: {exc}")
    return replace(plan, requested=AUTO, note=decision.describe())


# ---- stored decisions ------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """auto's choice for one model on one machine, as `capgen tune` measured it."""

    mode: str
    engine: str
    images: int
    created: str
    candidates: Mapping[str, Mapping[str, Any]]  # "mode/engine" -> ms_per_image, agreement, …

    def describe(self) -> str:
        chosen = self.candidates[candidate_name(self.mode, self.engine)]
        return (
            f"tuned {self.created}: {chosen['agreement']:.0%} of {self.images} greedy captions "
            f"equal fp32's"
        )


def candidate_name(mode: str, engine: str) -> str:
    return f"{mode}/{engine}"


@cache
def _cpu_identity() -> tuple[str, str]:
    """(the CPU's model name, a digest of its feature flags): what makes one engine faster here."""
    name, flags = platform.processor() or platform.machine(), ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and name in ("", platform.machine()):
                    name = value.strip()
                elif key.strip() in ("flags", "Features") and not flags:
                    flags = value.strip()
    except OSError:
        pass
    return name, hashlib.sha256(flags.encode()).hexdigest()[:16]


def decision_key(manifest: Manifest) -> dict[str, Any]:
    """What a decision is valid for: the model's files, this CPU, the engines' versions.

    Every file a caption depends on counts (a new decoder changes which
    feature differences flip a word), by the sha256 the manifest vouches for.
    """
    enc, dec = manifest.encoder, manifest.decoder
    names = [enc.file, enc.int8_file, dec.projection_file, dec.step_file, manifest.vocabulary.file]
    files = {name: manifest.files[name].sha256 for name in names if name and name in manifest.files}
    cpu, flags = _cpu_identity()
    return {
        "format": DECISION_FORMAT,
        "files": files,
        "cpu": cpu,
        "cpu_flags": flags,
        "cpus": os.cpu_count() or 1,
        "onnxruntime": engine_version(ONNXRUNTIME),
        "openvino": openvino_version() or "none",
    }


def _canonical(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, ensure_ascii=True, separators=(",", ":")).encode()


def decision_name(key: Mapping[str, Any]) -> str:
    """The decision's file name in $CAPGEN_HOME/precision: a digest of its key."""
    return hashlib.sha256(_canonical(key)).hexdigest()[:32] + ".json"


def decision_bytes(key: Mapping[str, Any], body: Mapping[str, Any]) -> bytes:
    """The sealed file `capgen tune` writes: body, key and the sha256 of both."""
    content = {**body, "key": dict(key)}
    sealed = {**content, "seal": hashlib.sha256(_canonical(content)).hexdigest()}
    return json.dumps(sealed, indent=2, sort_keys=True).encode() + b"\n"


def choose(candidates: Mapping[str, Mapping[str, Any]]) -> str:
    """The fastest candidate whose agreement reached the threshold (fp32's always does)."""
    passing = [
        name
        for name, result in candidates.items()
        if result.get("error") is None and float(result["agreement"]) >= AGREEMENT_THRESHOLD
    ]
    if not passing:
        raise ModelError("no precision mode reached the agreement threshold, not even fp32")
    return min(passing, key=lambda name: float(candidates[name]["ms_per_image"]))


def _parse_decision(data: bytes, key: Mapping[str, Any]) -> Decision | str:
    """The decision in `data` for `key`, or why it does not count."""
    try:
        sealed = json.loads(data)
        if not isinstance(sealed, dict):
            return "the stored decision is not a JSON object: ignored"
        content = {name: value for name, value in sealed.items() if name != "seal"}
        if sealed.get("seal") != hashlib.sha256(_canonical(content)).hexdigest():
            return "the stored decision does not match its seal (edited or damaged): ignored"
        if content.get("key") != dict(key):
            return "the stored decision was made for other files, another CPU or other engines: ignored"
        candidates = content["candidates"]
        mode, engine = content["mode"], content["engine"]
        for result in candidates.values():
            if result.get("error") is None:
                float(result["agreement"]), float(result["ms_per_image"])
        if mode not in MODES or engine not in (ONNXRUNTIME, OPENVINO):
            return "the stored decision names an unknown mode or engine: ignored"
        if choose(candidates) != candidate_name(mode, engine):
            return "the stored decision's mode is not the fastest that agreed with fp32: ignored"
        images = content["images"]
        if not isinstance(images, int) or images < 1:
            return "the stored decision has no bench size: ignored"
        return Decision(mode, engine, images, str(content["created"]), candidates)
    except (ValueError, TypeError, KeyError, AttributeError, CapgenError):
        return "the stored decision cannot be read as one: ignored"


def load_decision(manifest: Manifest) -> tuple[Decision | None, str]:
    """auto's stored decision for this model on this machine, or None and why there is none."""
    from capgen.runtime.home import (
        UntrustedCacheFolder,
        cache_enabled,
        open_cache_folder,
        trusted_entry,
    )

    none = "no stored decision for this model on this machine (run `capgen tune`)"
    if not cache_enabled():
        return None, "the cache is off (CAPGEN_NO_CACHE), so no stored decision"
    key = decision_key(manifest)
    try:
        folder = open_cache_folder(DECISIONS_FOLDER, create=False)
    except FileNotFoundError:
        return None, none
    except (OSError, UntrustedCacheFolder) as exc:
        return None, f"the decisions folder cannot be trusted or read ({exc})"
    try:
        try:
            descriptor = os.open(decision_name(key), _READ | _NOFOLLOW, dir_fd=folder)
        except FileNotFoundError:
            return None, none
        except OSError:
            return None, "the stored decision cannot be opened (a link?): ignored"
        try:
            status = os.fstat(descriptor)
            if not trusted_entry(status) or not stat.S_ISREG(status.st_mode):
                return None, "the stored decision is not this user's file: ignored"
            if status.st_size > _MAX_DECISION_BYTES:
                return None, "the stored decision is too large to be one: ignored"
            data = os.read(descriptor, _MAX_DECISION_BYTES + 1)
        finally:
            os.close(descriptor)
    except OSError:
        return None, "the stored decision cannot be read: ignored"
    finally:
        os.close(folder)
    parsed = _parse_decision(data, key)
    if isinstance(parsed, str):
        return None, parsed
    return parsed, ""


def store_decision(manifest: Manifest, body: Mapping[str, Any]) -> str:
    """Write `body` (mode, engine, images, created, candidates) as this model's decision here.

    Atomically, through the decisions folder's descriptor (home.open_cache_folder):
    a link planted in the cache cannot redirect the write. Returns the file's path.
    Raises InputError when the cache is off or cannot be written.
    """
    from capgen.runtime.atomic_write import write_bytes_at
    from capgen.runtime.home import (
        ENTRY_MODE,
        UntrustedCacheFolder,
        cache_enabled,
        capgen_home,
        open_cache_folder,
    )

    where = capgen_home() / DECISIONS_FOLDER
    if not cache_enabled():
        raise InputError(
            "capgen tune stores its decision in the cache, which CAPGEN_NO_CACHE turns off"
        )
    key = decision_key(manifest)
    name = decision_name(key)
    try:
        folder = open_cache_folder(DECISIONS_FOLDER, create=True)
    except (OSError, UntrustedCacheFolder) as exc:
        raise InputError(f"cannot store the decision in {where} ({exc})") from None
    try:
        write_bytes_at(folder, name, decision_bytes(key, body), ENTRY_MODE)
    except OSError as exc:
        raise InputError(f"cannot store the decision in {where} ({exc.strerror or exc})") from None
    finally:
        with contextlib.suppress(OSError):
            os.close(folder)
    return str(where / name)


def describe_precisions(manifest: Manifest) -> list[str]:
    """`capgen info`'s lines: which modes run here and on what, and what auto would pick."""
    lines = []
    for mode in MODES:
        try:
            plan = mode_plan(manifest, mode)
            computed = f" ({plan.inference_precision})" if plan.engine == OPENVINO else ""
            lines.append(
                f"{mode}: {plan.file} on {plan.engine} {engine_version(plan.engine)}{computed}"
            )
        except CapgenError as exc:
            lines.append(f"{mode}: unavailable ({exc})")
    auto = _auto_plan(manifest, on_cpu=True)
    lines.append(f"auto: {auto.mode} on {auto.engine}" + (f" ({auto.note})" if auto.note else ""))
    return lines
