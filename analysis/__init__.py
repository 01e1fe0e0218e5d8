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
    "count_model": "analysis.counting",
    "summarize": "analysis.counting",
    "totals": "analysis.counting",
    "uncounted_ops": "analysis.counting",
    "table_notes": "analysis.counting",
    "MAC_CONVENTION": "analysis.counting",
    "factorization_study": "analysis.factorization",
    "undo_factorization_table": "analysis.factorization",
    "factorized_ratio": "analysis.factorization",
    "receptive_field": "analysis.factorization",
    "make_synthetic": "analysis.data",
    "build_dataset": "analysis.data",
    "make_loader": "analysis.data",
    "load_cifar10": "analysis.data",
    "load_image_folder": "analysis.data",
    "Trainer": "analysis.training",
    "TrainConfig": "analysis.training",
    "TrainingDiverged": "analysis.training",
    "read_metrics": "analysis.training",
    "load_checkpoint": "analysis.training",
    "run_sweep": "analysis.sweep",
    "read_results": "analysis.sweep",
    "pending_points": "analysis.sweep",
    "ActivationMonitor": "analysis.activations",
    "find_dead_units": "analysis.activations",
    "dead_channels": "analysis.activations",
    "prepool_layer": "analysis.activations",
    "DeadUnitAlarm": "analysis.activations",
    "line_search_probe": "analysis.landscape",
    "hessian_top_eigenvalue": "analysis.landscape",
    "hessian_trace": "analysis.landscape",
    "hvp": "analysis.landscape",
    "loss_slice_1d": "analysis.landscape",
    "loss_slice_2d": "analysis.landscape",
    "filter_normalized_direction": "analysis.landscape",
    "LandscapeProbe": "analysis.landscape",
    "load_budgets": "analysis.budgets",
    "check_budget": "analysis.budgets",
    "check_budgets": "analysis.budgets",
    "BudgetFileError": "analysis.budgets",
    "zoo_table": "analysis.zoo",
    "build_report": "analysis.report",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'analysis' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_EXPORTS))


__all__ = sorted(_EXPORTS)
