"""Experiments: the papers' claims as measurements, each one module with the same shape.

Every experiment module ``analysis.experiments.<name>`` offers

- ``CONFIGS: dict[str, dict]`` with at least ``"quick"`` (2 CPU cores, minutes) and ``"full"`` (a GPU);
- ``run(config: dict, *, results_dir: str | Path | None = None, progress: bool = True) -> pandas.DataFrame``:
  the tidy results (one row per sweep point and logged step, or per point), resumable through
  :func:`analysis.training.sweep.run_sweep` when ``results_dir`` is given (a re-run skips finished points);
- the reductions of that frame (``summarise``, ...) and ``verdict``, the answer computed from them.

The report renders each one (:mod:`analysis.report.sections`): it calls ``run(CONFIGS[mode] | {"seed": seed},
results_dir=default_results_dir(name, mode, seed, results_root))`` and draws tables and figures from the frames.

What they share is in :mod:`~analysis.experiments.runner` (points, workers, resumability, one training run
per point), :mod:`~analysis.experiments.verdict` (the paired-seed protocol), :mod:`~analysis.experiments.calibration`
and :mod:`~analysis.experiments.norm_variants` (what the batch-norm experiments vary).

:data:`EXPERIMENTS` lists them by name for the CLI (``inception-lab experiment NAME --config quick``).
"""

from __future__ import annotations

import importlib
from types import ModuleType

EXPERIMENTS: dict[str, str] = {
    "dead_units": "Residual scaling and the >1000-filter instability (Inception-v4 paper, sec. 3.3)",
    "smoothness": "Batch norm and loss-surface smoothness (Santurkar et al. 2018)",
    "factorization_grid": "Asymmetric factorization by grid size (Inception-v3 paper, sec. 3.2)",
    "residual_speedup": "Residual connections speed up training (Inception-v4 paper)",
    "label_smoothing": "Label smoothing (Inception-v3 paper, sec. 7)",
    "aux_heads": "Auxiliary classifiers as regularisers (GoogLeNet; Inception-v3 paper, sec. 4)",
    "xception_vs_v3": "Depthwise-separable convolutions and the mid activation (Xception paper)",
    "bn_speedup": "BN-Inception vs GoogLeNet: fewer steps, higher learning rates (BN paper)",
}

def load_experiment(name: str) -> ModuleType:
    """The experiment module ``name``; an unknown name raises a ``ValueError`` listing the known ones."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; known experiments: {', '.join(EXPERIMENTS)}")
    return importlib.import_module(f"analysis.experiments.{name}")


def resolve_config(module: ModuleType, config: str | dict, **overrides: object) -> dict:
    """A named config of ``module`` (``"quick"``, ``"full"``, ...) or a dict, with ``overrides`` applied;
    an unknown name or override key raises a ``ValueError`` naming it and the known ones."""
    configs: dict[str, dict] = module.CONFIGS
    if isinstance(config, str):
        if config not in configs:
            raise ValueError(f"unknown config {config!r}; known configs: {', '.join(configs)}")
        config = configs[config]
    merged = dict(config)
    unknown = sorted(set(overrides) - set(merged))
    if unknown:
        raise ValueError(f"unknown config key(s) {unknown}; known keys: {', '.join(sorted(merged))}")
    merged.update(overrides)
    return merged
