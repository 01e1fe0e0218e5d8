"""The report's section on residual scaling and the >1000-filter instability (Inception-v4 paper, sec. 3.3).

It runs :mod:`analysis.experiments.dead_units` (resumable, under the results root)
and renders its tables, figures and verdict.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.experiments.dead_units import CONFIGS, NAME, run, summarise, verdict
from analysis.experiments.runner import CHANCE, RESULTS_ROOT, default_results_dir
from analysis.report.document import Figure, Section, Table
from analysis.report.figures import heatmap, lines

__all__ = ["section"]


def _curve_figure(curves: pd.DataFrame, variant: str) -> Any:
    part = curves[curves["variant"] == variant].drop(columns="scale").rename(columns={"scale_label": "scale"})
    # The mean over seeds: one value per step, so seaborn draws no bootstrapped (random) band.
    part = part.groupby(["width", "scale", "lr", "step"], sort=False, as_index=False)["dead_fraction"].mean()
    style = "lr" if part["lr"].nunique() > 1 else None
    return lines(part, x="step", y="dead_fraction", hue="scale", style=style, col="width",
                 title=f"Pre-pool dead fraction, Inception-ResNet-{variant}",
                 ylabel="dead fraction (train-mode window)")


def _phase_figure(summary: pd.DataFrame, variant: str) -> Any:
    part = summary[summary["variant"] == variant].copy()
    # A diverged run has no end state: it is left blank (NaN) in the map and named in the table.
    part["final dead fraction"] = part["final_dead_fraction"].where(~part["diverged"])
    part["lr / scale"] = [f"lr {lr:g} / {s}" for lr, s in zip(part["lr"], part["scale_label"])]
    return heatmap(part, index="lr / scale", columns="width", values="final dead fraction",
                   title=f"Dead at the end, Inception-ResNet-{variant} (blank: diverged)", cmap="rocket_r",
                   vmin=0.0, vmax=1.0)


def section(mode: str, seed: int, results_root: str | Path = RESULTS_ROOT) -> Section:
    """The report's section: the per-point table, dead fraction over steps, the phase diagram and the verdict."""
    config = {**CONFIGS[mode], "seed": seed}
    curves = run(config, results_dir=default_results_dir(NAME, mode, seed, results_root), progress=False)
    summary = summarise(curves, config["dead_level"])
    answer = verdict(summary)
    best = float(summary["val_accuracy"].max()) if summary["val_accuracy"].notna().any() else math.nan
    samples = int(curves["window_samples"].dropna().max()) if curves["window_samples"].notna().any() else 0
    grid = {75: "1x1"}.get(config["image_size"], f"{config['image_size']} px input")
    text = (
        "Inception-v4 paper, sec. 3.3: with more than 1000 filters the residual variants 'died' (the last layer "
        "before average pooling produced only zeros); scaling the residuals by 0.1-0.3 prevented it. Here: "
        f"Inception-ResNet ({', '.join(config['variants'])} blocks, {tuple(config['block_counts'])} A/B/C blocks, "
        f"width_mult {config['width_mult']}) with its whole last stage widened to each width, trained "
        f"{config['steps']} steps ({config['optimizer']}, batch {config['batch_size']}) on the synthetic shapes "
        f"at {config['image_size']} px (last grid {grid}), every residual scaled by the same factor; the control "
        f"drops the shortcuts. Dead = never > 0 at any position of any sample in a window of "
        f"{config['monitor_every']} training steps ({samples} samples, BN in train mode); the eval column uses BN "
        f"running statistics on {config['n_val']} validation images. A point 'died' when its last window's dead "
        f"fraction is >= {config['dead_level']}. Diverged runs (NaN loss) are results, blank in the map. "
        f"Best validation accuracy over the points: {best:.2f} (chance {CHANCE:.2f})."
    )
    if not best > 2 * CHANCE:
        text += (" No point learned the task beyond chance, so this run shows whether the layer dies early under a "
                 "high learning rate, not whether a net that learns dies later, as the paper's did after tens of "
                 "thousands of iterations.")
    figures = []
    for variant in config["variants"]:
        figures.append(Figure(f"dead_units_curves_{variant}", f"Dead fraction of the pre-pool layer over training, "
                              f"Inception-ResNet-{variant} (hue: residual scale; columns: width)",
                              lambda v=variant: _curve_figure(curves, v)))
        figures.append(Figure(f"dead_units_phase_{variant}", f"Phase diagram: final dead fraction by width x "
                              f"(lr, scale), Inception-ResNet-{variant}", lambda v=variant: _phase_figure(summary, v)))
    notes = [f"dead threshold: never > 0 over a window of {config['monitor_every']} steps x {config['batch_size']} "
             f"samples (train-mode BN); died = final dead fraction >= {config['dead_level']}; dormant tau "
             f"{config['dormant_threshold']} is in the CSV of the curves",
             "eval_dead_fraction: eval-mode BN on the validation set; blank for diverged runs"]
    return Section(
        title="Residual scaling and dying wide layers (Inception-v4, sec. 3.3)",
        text=text,
        tables=[Table("dead_units", "Dead pre-pool units at the end of training, per point", summary, notes),
                Table("dead_units_curves", "Dead fraction per monitored step", curves.drop(columns="point_id"),
                      inline=False)],
        figures=figures,
        verdict=answer,
    )
