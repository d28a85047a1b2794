"""Run code in a child interpreter where TensorFlow & co. cannot be imported.

What "setup needs no TensorFlow" means, checked for real: `None` in
sys.modules makes importlib.util.find_spec answer "not installed", and a
meta-path finder refuses any submodule import that might get past it; the
prelude checks both before the code runs.
"""

from __future__ import annotations

TENSORFLOW_STACK = ("tensorflow", "keras", "tf_keras", "tf2onnx")

_PRELUDE = """
import importlib.abc, importlib.util, sys
BLOCKED = {blocked!r}

class _Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ImportError(f"{{name}} is blocked in this test")
        return None

sys.meta_path.insert(0, _Blocked())
for _name in BLOCKED:
    sys.modules[_name] = None
for _name in BLOCKED:
    assert importlib.util.find_spec(_name) is None, _name
    try:
        __import__(_name)
    except ImportError:
        pass
    else:
        raise SystemExit(f"{{_name}} could be imported")
"""


def blocking_prelude(blocked: tuple[str, ...] = TENSORFLOW_STACK) -> str:
    """Python source to run first in the child (`python -c PRELUDE + CODE`)."""
    return _PRELUDE.format(blocked=blocked)
