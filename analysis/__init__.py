"""Instruments for the Inception zoo: counting, factorisation studies, dead units, loss-surface probes.

Every function takes a plain ``nn.Module`` (ours, torchvision's, timm's or a user's) and returns a tidy
``pandas.DataFrame``. Names are imported lazily so ``import analysis`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "render": "analysis.report.tables",
    "write_table": "analysis.report.tables",
    "Callback": "analysis.callbacks",
    "count_model": "analysis.instruments.counting",
    "summarize": "analysis.instruments.counting",
    "totals": "analysis.instruments.counting",
    "uncounted_ops": "analysis.instruments.counting",
    "table_notes": "analysis.instruments.counting",
    "MAC_CONVENTION": "analysis.instruments.counting",
    "factorization_study": "analysis.instruments.factorization",
    "undo_factorization_table": "analysis.instruments.factorization",
    "factorized_ratio": "analysis.instruments.factorization",
    "receptive_field": "analysis.instruments.factorization",
    "make_synthetic": "analysis.data.synthetic",
    "Difficulty": "analysis.data.difficulty",
    "DIFFICULTIES": "analysis.data.difficulty",
    "build_dataset": "analysis.data.spec",
    "make_loader": "analysis.training.sampling",
    "load_cifar10": "analysis.data.cifar10",
    "load_image_folder": "analysis.data.imagefolder",
    "Trainer": "analysis.training.trainer",
    "TrainConfig": "analysis.training.config",
    "TrainingDiverged": "analysis.training.trainer",
    "read_metrics": "analysis.training.checkpoint",
    "load_checkpoint": "analysis.training.checkpoint",
    "run_sweep": "analysis.training.sweep",
    "read_results": "analysis.training.sweep",
    "pending_points": "analysis.training.sweep",
    "ActivationMonitor": "analysis.instruments.activations",
    "find_dead_units": "analysis.instruments.dead_units",
    "dead_channels": "analysis.instruments.dead_units",
    "prepool_layer": "analysis.instruments.activations",
    "DeadUnitAlarm": "analysis.instruments.dead_units",
    "line_search_probe": "analysis.instruments.line_search",
    "hessian_top_eigenvalue": "analysis.instruments.landscape",
    "hessian_trace": "analysis.instruments.landscape",
    "hvp": "analysis.instruments.landscape",
    "loss_slice_1d": "analysis.instruments.landscape",
    "loss_slice_2d": "analysis.instruments.landscape",
    "filter_normalized_direction": "analysis.instruments.landscape",
    "LandscapeProbe": "analysis.instruments.line_search",
    "internal_covariate_shift": "analysis.instruments.covariate_shift",
    "CovariateShiftProbe": "analysis.instruments.covariate_shift",
    "load_budgets": "analysis.instruments.budgets",
    "check_budget": "analysis.instruments.budgets",
    "check_budgets": "analysis.instruments.budgets",
    "BudgetFileError": "analysis.instruments.budgets",
    "zoo_table": "analysis.instruments.zoo",
    "build_report": "analysis.report.build",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'analysis' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_EXPORTS))


__all__ = sorted(_EXPORTS)
