"""The report's section on asymmetric factorization by grid size (Inception-v3 paper, sec. 3.2).

It runs :mod:`analysis.experiments.factorization_grid` (resumable, under the results root)
and renders its tables, figures and verdict.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd

from analysis.experiments.factorization_grid import BASELINE, CONFIGS, NAME, PAPER_GRID_RANGE, run, summarise, verdict
from analysis.experiments.runner import RESULTS_ROOT, default_results_dir
from analysis.experiments.spread_rule import final_evals
from analysis.report.document import Figure, Section, Table
from analysis.report.figures import styled
from inception_models.small_inception import stage_grid_sizes

__all__ = ["section"]


@styled
def _accuracy_figure(summary: pd.DataFrame, final: pd.DataFrame) -> Any:
    fig, ax = plt.subplots(figsize=(6, 4))
    base = summary[summary["factorized_at"] == BASELINE]
    if len(base):
        row = base.iloc[0]
        ax.axhspan(row["acc_min"], row["acc_max"], color="grey", alpha=0.25, label="unfactorized (seed min-max)")
        ax.axhline(row["acc_mean"], color="grey", lw=1.5, label="unfactorized (mean)")
    grids = summary.dropna(subset=["grid"]).sort_values("grid")
    seeds = final.dropna(subset=["grid"])
    ax.scatter(seeds["grid"], seeds["accuracy"], s=18, color="C0", alpha=0.6, label="one seed")
    ax.errorbar(grids["grid"], grids["acc_mean"],
                yerr=[grids["acc_mean"] - grids["acc_min"], grids["acc_max"] - grids["acc_mean"]],
                fmt="o-", color="C1", capsize=4, label="factorized: mean, seed min-max")
    ax.axvspan(*PAPER_GRID_RANGE, color="C2", alpha=0.08, label="paper's 12-20 range")
    ax.set_xscale("log", base=2)
    ax.set_xticks(grids["grid"].tolist(), [f"{int(g)}x{int(g)}" for g in grids["grid"]])
    ax.set_xlabel("grid size where the 3x3 branches are factorized into 1x3 + 3x1")
    ax.set_ylabel("final validation accuracy")
    ax.set_title("small_inception: accuracy vs the factorized grid")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.tight_layout()
    return fig


@styled
def _loss_figure(results: pd.DataFrame) -> Any:
    train = results[results["split"] == "train"]
    curves = train.groupby(["variant", "step"], sort=False)["loss"].agg(["mean", "min", "max"]).reset_index()
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (variant, grp) in enumerate(curves.groupby("variant", sort=False)):
        label = "unfactorized" if variant == BASELINE else f"factorized at {variant}"
        ax.plot(grp["step"], grp["mean"], color=f"C{i}", label=label)
        ax.fill_between(grp["step"], grp["min"], grp["max"], color=f"C{i}", alpha=0.15)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (one batch; mean, seed min-max)")
    ax.set_title("small_inception: training loss")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def section(mode: str, seed: int, results_root: str | Path = RESULTS_ROOT) -> Section:
    """The report's section: accuracy per factorized grid (table and figure), loss curves and the verdict."""
    config = {**CONFIGS[mode], "seed": seed}
    results = run(config, results_dir=default_results_dir(NAME, mode, seed, results_root), progress=False)
    summary = summarise(results)
    final = final_evals(results)
    answer = verdict(summary, final, n_val=int(config["n_val"]))
    grids = stage_grid_sizes(int(config["image_size"]))
    text = (
        "Inception-v3 paper, sec. 3.2: factorizing n x n convolutions into 1 x n then n x 1 'does not work well on "
        "early layers, but it gives very good results on medium grid-sizes (m x m, m between 12 and 20)'. Here: "
        f"small_inception (Zhang et al. 2017) at width_mult {config['width_mult']}, {config['image_size']} px input "
        f"(stage grids {', '.join(f'{g}x{g}' for g in grids)}), with the 3x3 branch of every Inception module of "
        "one stage replaced by 1x3 then 3x1 (both as wide as the 3x3), or nowhere. Every variant is trained "
        f"identically: {config['steps']} steps of {config['optimizer'].upper()} (lr {config['lr']:g}, momentum "
        f"{config['momentum']:g}, {config['schedule']} schedule, {config['warmup_steps']} warm-up steps), batch "
        f"{config['batch_size']}, {config['n_train']} synthetic training images, seeds "
        f"{seed}..{seed + int(config['seeds']) - 1}; accuracy is top-1 on {config['n_val']} validation images at "
        "the end. A difference counts only when larger than the seed spread (max - min) of the groups compared."
    )
    notes = ["acc_*: final validation top-1 over seeds (std: sample std); acc_vs_unfactorized: mean minus the "
             "unfactorized network's mean",
             "params: factorization changes the count (1x3 + 3x1 at the 3x3's width: 3*c_out*(c_in+c_out) weights "
             "instead of 9*c_in*c_out)"]
    per_seed = final.reindex(columns=["variant", "grid", "seed", "params", "loss", "accuracy"]).rename(
        columns={"variant": "factorized_at", "loss": "val_loss", "accuracy": "val_accuracy"})
    per_seed = per_seed.astype({"grid": "Int64", "seed": int, "params": int})
    return Section(
        title="Asymmetric factorization by grid size, trained (Inception-v3, sec. 3.2)",
        text=text,
        tables=[Table("factorization_grid", "Final validation accuracy by factorized grid (seed statistics)",
                      summary, notes),
                Table("factorization_grid_seeds", "Final validation accuracy per seed", per_seed.reset_index(drop=True),
                      inline=False)],
        figures=[Figure("factorization_grid_accuracy", "Final validation accuracy vs the grid size at which the 3x3 "
                        "convolutions are factorized (dots: seeds; bars: seed min-max; grey: unfactorized)",
                        lambda: _accuracy_figure(summary, final)),
                 Figure("factorization_grid_loss", "Training loss per variant (mean over seeds, band: seed min-max)",
                        lambda: _loss_figure(results))],
        verdict=answer,
    )
