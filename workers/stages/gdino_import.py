"""Import GroundingDINO's model code without its plotting helpers (issue 13: worker start-up time).

``groundingdino/models/GroundingDINO/groundingdino.py`` does ``from groundingdino.util.visualizer
import COCOVisualizer`` and never uses it; that module imports matplotlib.pyplot, OpenCV and
pycocotools (~0.5 s on the CI box, before any model is built). While ``groundingdino.models`` is
first imported, a stand-in module answers that import with a deferred ``COCOVisualizer`` that imports
the real module when it is called; afterwards the stand-in is removed from ``sys.modules``, so any
later ``import groundingdino.util.visualizer`` gets the real module. The model code is untouched.
"""

from __future__ import annotations

import importlib
import sys
import threading
import types
from typing import Any

_VISUALIZER = "groundingdino.util.visualizer"
_lock = threading.Lock()


class _Deferred:
    """Stands for ``groundingdino.util.visualizer.<name>``; the real module is imported on first use."""

    def __init__(self, name: str) -> None:
        self._name = name

    def _real(self) -> Any:
        return getattr(importlib.import_module(_VISUALIZER), self._name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._real()(*args, **kwargs)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._real(), attr)


class _Standin(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _Deferred(name)


def import_gdino_models() -> types.ModuleType:
    """``import groundingdino.models`` (returned), without importing the unused visualizer."""
    with _lock:
        if "groundingdino.models" in sys.modules or _VISUALIZER in sys.modules:
            return importlib.import_module("groundingdino.models")
        standin = _Standin(_VISUALIZER)
        sys.modules[_VISUALIZER] = standin
        try:
            return importlib.import_module("groundingdino.models")
        finally:
            if sys.modules.get(_VISUALIZER) is standin:
                del sys.modules[_VISUALIZER]
            util = sys.modules.get("groundingdino.util")
            if util is not None and getattr(util, "visualizer", None) is standin:
                delattr(util, "visualizer")
