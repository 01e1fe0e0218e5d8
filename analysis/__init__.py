"""Instruments for the Inception zoo: counting, factorisation studies, dead units, loss-surface probes.

Every function takes a plain ``nn.Module`` (ours, torchvision's, timm's or a user's) and returns a tidy
``pandas.DataFrame``. Names are imported lazily so ``import analysis`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "render": "analysis.tables",
    "write_table": "analysis.tables",
    "Callback": "analysis.callbacks",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'analysis' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_EXPORTS))


__all__ = sorted(_EXPORTS)
