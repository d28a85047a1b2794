"""setuptools' build_py for capgen's wheel: what runs only from a checkout stays out of it.

The top-level folders are imported under `capgen` through package-dir, and the
editable install `make install` makes imports every module from the checkout.
The wheel is what `pip install` puts on a machine with no checkout, and some
code cannot run there: the benchmarks (they run the tutorial's own code on
../shared/data beside the checkout), the built-in models' training and
evaluation (the Flickr8k data set) and the two-node Ray test cluster (root and
network namespaces). pyproject.toml's [tool.capgen.wheel] `checkout-only` names
them, a package name standing for all of it; this command leaves them out of
the wheel. The editable install and the sdist (a checkout in a tarball) keep
everything, so `python -m capgen.models.train …` and `make bench` work there.

pyproject.toml's [tool.setuptools] `cmdclass` points setuptools here;
tests/test_packaging.py checks what the wheel (tests/capgen_wheel.py builds it) holds.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from setuptools.command.build_py import build_py

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def checkout_only(pyproject: Path = PYPROJECT) -> tuple[str, ...]:
    """The import names [tool.capgen.wheel] `checkout-only` lists (modules or whole packages)."""
    config = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    return tuple(config["tool"]["capgen"]["wheel"]["checkout-only"])


def is_checkout_only(module: str, names: tuple[str, ...]) -> bool:
    """Whether `module` is one of `names` or inside a package that is."""
    return any(module == name or module.startswith(name + ".") for name in names)


class BuildPy(build_py):
    """build_py that leaves the checkout-only modules out of the wheel (only the wheel)."""

    def initialize_options(self) -> None:
        super().initialize_options()
        self._listing_sources = False

    def get_source_files(self) -> list[str]:
        # The sdist asks for the sources through here: it carries every module.
        self._listing_sources = True
        try:
            return super().get_source_files()
        finally:
            self._listing_sources = False

    def find_package_modules(self, package: str, package_dir: str) -> list[tuple[str, str, str]]:
        modules = super().find_package_modules(package, package_dir)
        if self.editable_mode or self._listing_sources:
            return modules
        names = checkout_only()
        return [
            (package_, module, path)
            for package_, module, path in modules
            if not is_checkout_only(
                package_ if module == "__init__" else f"{package_}.{module}", names
            )
        ]
