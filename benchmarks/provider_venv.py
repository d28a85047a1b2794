"""A venv where an execution-provider build of onnxruntime replaces `onnxruntime`: the README's recipe.

`onnxruntime-openvino` and `onnxruntime-gpu` install the same `onnxruntime`
module as `onnxruntime` under another distribution name, so pip cannot be
told that one satisfies capgen's `onnxruntime` requirement, and installing
both lets the last one overwrite the other's files. The recipe (README,
"Execution providers") therefore installs the provider build with capgen's
other runtime dependencies first, then capgen itself with `--no-deps`:

    pip install onnxruntime-openvino numpy>=1.26.4 pillow>=10.0 typer>=0.16 tqdm>=4.66
    pip install --no-deps capgen

`runtime_dependencies_besides_onnxruntime` reads that list from
pyproject.toml, so the recipe cannot drift from the real requirements (a
test compares the README's lines with it). `capgen bench` builds its OpenVINO
arm's venv this way, and so does the CI test of the OpenVINO provider.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = REPO_ROOT / "pyproject.toml"
CONSTRAINTS = REPO_ROOT / "constraints.txt"
OPENVINO_BUILD = "onnxruntime-openvino"
OPENVINO_PROVIDER = "OpenVINOExecutionProvider"
PIP = ("-m", "pip", "--disable-pip-version-check")


class ProviderVenvError(RuntimeError):
    """pip could not build the venv; the message ends with pip's own last lines."""


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[\s]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def runtime_dependencies_besides_onnxruntime(pyproject: Path = PYPROJECT) -> list[str]:
    """capgen's runtime requirements (pyproject.toml) other than onnxruntime, as written there."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    return [item for item in project["dependencies"] if _name(item) != "onnxruntime"]


def install_commands(
    build: str, capgen: str, constraints: Path | None = CONSTRAINTS, editable: bool = False
) -> list[list[str]]:
    """The recipe's two pip argument lists: the provider build and the other runtime
    dependencies, then capgen (`capgen` is a requirement, a path or a checkout) without its own."""
    pins = ["-c", str(constraints)] if constraints is not None else []
    target = ["-e", capgen] if editable else [capgen]
    return [
        ["install", "--quiet", *pins, build, *runtime_dependencies_besides_onnxruntime()],
        ["install", "--quiet", "--no-deps", *target],
    ]


def uv_beside(python: str = sys.executable) -> str | None:
    """The uv next to `python` (capgen's dev extra installs it), or None."""
    candidate = Path(python).with_name("uv")
    return str(candidate) if candidate.is_file() else None


def build_provider_venv(
    venv: Path,
    build: str,
    capgen: str,
    python: str = sys.executable,
    constraints: Path | None = CONSTRAINTS,
    editable: bool = False,
    uv: str | None = None,
) -> Path:
    """A venv at `venv` made by the recipe (reused when its capgen script exists); its python.

    `uv`: run the recipe's two installs with `uv pip` instead of pip (the same
    arguments, the same resolution): `capgen bench` does where the checkout's
    venv has uv, as the pip install of onnxruntime-openvino took most of a
    minute. The README's recipe, and its test, stay pip's.
    """
    interpreter = venv / "bin" / "python"
    if (venv / "bin" / "capgen").exists():
        return interpreter
    if uv is None:
        subprocess.run([python, "-m", "venv", str(venv)], check=True, capture_output=True)
    else:
        subprocess.run(
            [uv, "venv", "--quiet", "--python", python, str(venv)], check=True, capture_output=True
        )
    for arguments in install_commands(build, capgen, constraints, editable):
        command, rest = arguments[0], arguments[1:]
        installer = (
            [str(interpreter), *PIP, command]
            if uv is None
            else [uv, "pip", command, "--python", str(interpreter), "--compile-bytecode"]
        )
        done = subprocess.run([*installer, *rest], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
            tool = "pip" if uv is None else "uv pip"
            raise ProviderVenvError(f"{tool} {' '.join(arguments[:4])} … failed:\n{tail}")
    return interpreter


def index_problem(build: str, python: str = sys.executable) -> str | None:
    """Why the package index cannot serve `build` (pip's own line), or None when it can.

    Asks the index for the distribution's versions only (nothing is downloaded).
    """
    done = subprocess.run(
        [python, *PIP, "index", "versions", build],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    if done.returncode == 0:
        return None
    lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
    return lines[-1] if lines else f"pip index versions {build} exited {done.returncode}"


def openvino_bench_python(venv: Path, echo: Callable[[str], None] = print) -> Path | None:
    """`capgen bench`'s OpenVINO venv (built once at `venv`, capgen installed editable from
    this checkout so it never runs stale code); None, with the reason echoed, if pip cannot."""
    if not (venv / "bin" / "capgen").exists():
        problem = index_problem(OPENVINO_BUILD)
        if problem is not None:
            echo(f"  no OpenVINO arm: the package index cannot serve {OPENVINO_BUILD}: {problem}")
            return None
        echo(f"building the OpenVINO arm's venv ({OPENVINO_BUILD}): {venv}")
    try:
        return build_provider_venv(
            venv, OPENVINO_BUILD, str(REPO_ROOT), editable=True, uv=uv_beside()
        )
    except (ProviderVenvError, OSError, subprocess.CalledProcessError) as error:
        echo(f"  no OpenVINO arm: {error}")
        return None
