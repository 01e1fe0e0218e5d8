"""The report's section on bN-Inception vs GoogLeNet: fewer steps, higher learning rates (BN paper).

It runs :mod:`analysis.experiments.bn_speedup` (resumable, under the results root)
and renders its tables, figures and verdict.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from analysis.experiments.bn_speedup import CONFIGS, NAME, per_seed, resolve_target, run, summarise, verdict
from analysis.experiments.runner import RESULTS_ROOT, default_results_dir
from analysis.report.document import Figure, Section, Table
from analysis.report.figures import band_lines

__all__ = ["section"]


def _labelled(results: pd.DataFrame) -> pd.DataFrame:
    return results.assign(arm=[f"{'BN' if n == 'bn' else 'no BN'} {m:g}x" for n, m in
                               zip(results["norm"], results["multiplier"])],
                          rate=[f"{m:g}x (lr {lr:g})" for m, lr in zip(results["multiplier"], results["lr"])])


def _accuracy_figure(results: pd.DataFrame, target: float) -> Any:
    val = _labelled(results[results["split"] == "val"])
    return band_lines(val, x="step", y="accuracy", hue="norm", col="rate", hlines={"target": target},
                      sharey=True, title="Validation accuracy",
                      ylabel="validation accuracy (mean, min-max over seeds)")


def _loss_figure(results: pd.DataFrame) -> Any:
    train = _labelled(results[results["split"] == "train"])
    return band_lines(train, x="step", y="loss", hue="norm", col="rate",
                      title="Training loss", sharey=True,
                      ylabel="training loss (mean, min-max over seeds)", logy=True)


def section(mode: str, seed: int, results_root: str | Path = RESULTS_ROOT) -> Section:
    """The report's section: steps to the target per (norm, rate), per-seed rows, curves, the verdict."""
    config = {**CONFIGS[mode], "seed": seed}
    results = run(config, results_dir=default_results_dir(NAME, mode, seed, results_root), progress=False)
    target = resolve_target(results, config)
    budget = int(config["steps"])
    seeds = per_seed(results, target, budget)
    summary = summarise(seeds)
    answer = verdict(seeds, budget=budget, n_val=int(config["n_val"]))
    how_target = (f"fixed at {target:.3f}" if config["target"] is not None else
                  f"{config['target_fraction']:g} x the mean best validation accuracy of the no-BN network at the "
                  f"base rate, at least chance + 3 SE: {target:.3f}")
    text = (
        "BN paper (sec. 4.2, Fig. 2, Table 2): BN-Inception reached the accuracy of Inception without BN in fewer "
        "than half the steps at the same rate, and 14x (BN-x5) and 11x (BN-x30) fewer at higher rates, which "
        f"without BN are not usable. Here: {config['model']} (width_mult {config['width_mult']}) with norm='bn' "
        f"and norm='none' (the same topology; no-BN init: {config['none_init']}) on {config['image_size']} px "
        f"synthetic shapes, {config['optimizer']} (momentum {config['momentum']}, {config['schedule']} rate) at "
        f"{config['base_lr']:g} x {', '.join(f'{m:g}' for m in config['multipliers'])}, {config['seeds']} seeds, "
        f"{budget} steps each. Target: {how_target}, evaluated every {config['eval_every']} steps on "
        f"{config['n_val']} images. Divergence (NaN loss) is a result: the run stops and counts as the budget, "
        "as does a run that never reaches the target (a lower bound on its true number of steps)."
    )
    return Section(
        title="BN-Inception vs Inception without BN: steps and learning rates (BN paper)",
        text=text,
        tables=[Table(NAME, "Steps to the target validation accuracy per (norm, rate)", summary,
                      [f"target {target:.3f}; steps over the seeds that reached it ('reached' of 'seeds'); "
                       f"budget {budget} steps"]),
                Table(f"{NAME}_seeds", "BN vs no BN: per seed", seeds),
                Table(f"{NAME}_curves", "BN vs no BN: every logged step", results.drop(columns="point_id"),
                      inline=False)],
        figures=[Figure(f"{NAME}_accuracy", "Validation accuracy against steps per rate (mean, min-max band over "
                        "seeds; dotted: the target)", lambda: _accuracy_figure(results, target)),
                 Figure(f"{NAME}_loss", "Training loss against steps per rate (log scale)",
                        lambda: _loss_figure(results))],
        verdict=answer,
    )
