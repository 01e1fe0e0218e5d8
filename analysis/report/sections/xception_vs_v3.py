"""The report's section on depthwise-separable convolutions and the mid activation (Xception paper).

It runs :mod:`analysis.experiments.xception_vs_v3` (resumable, under the results root)
and renders its tables, figures and verdict.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd

from analysis.experiments.runner import CHANCE, RESULTS_ROOT, default_results_dir
from analysis.experiments.spread_rule import final_evals
from analysis.experiments.xception_vs_v3 import CONFIGS, NAME, run, summarise, verdict
from analysis.report.document import Figure, Section, Table
from analysis.report.figures import styled

__all__ = ["section"]


@styled
def _curves_figure(results: pd.DataFrame) -> Any:
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    panels = [("train", "loss", "training loss (one batch)"), ("train", "accuracy", "training accuracy (one batch)"),
              ("val", "accuracy", "validation accuracy")]
    for ax, (split, value, label) in zip(axes, panels):
        part = results[results["split"] == split]
        curves = part.groupby(["variant", "step"], sort=False)[value].agg(["mean", "min", "max"]).reset_index()
        for i, (variant, grp) in enumerate(curves.groupby("variant", sort=False)):
            ax.plot(grp["step"], grp["mean"], color=f"C{i}", marker="o" if split == "val" else None, ms=4,
                    label=variant)
            ax.fill_between(grp["step"], grp["min"], grp["max"], color=f"C{i}", alpha=0.15)
        if value == "accuracy":
            ax.axhline(CHANCE, color="grey", lw=1, ls="--", label="chance")
        ax.set_xlabel("step")
        ax.set_ylabel(value)
        ax.set_title(f"{label}\n(mean, band: seed min-max)", fontsize=10)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


@styled
def _final_figure(summary: pd.DataFrame, final: pd.DataFrame) -> Any:
    fig, ax = plt.subplots(figsize=(6, 4))
    labels = summary["variant"].tolist()
    for i, row in summary.reset_index(drop=True).iterrows():
        seeds = final.loc[final["variant"] == row["variant"], "accuracy"]
        ax.scatter([i] * len(seeds), seeds, color=f"C{i}", s=20, alpha=0.7)
        ax.errorbar([i], [row["acc_mean"]], yerr=[[row["acc_mean"] - row["acc_min"]], [row["acc_max"] - row["acc_mean"]]],
                    fmt="s", color="black", capsize=5)
    ax.axhline(CHANCE, color="grey", lw=1, ls="--", label="chance")
    ax.set_xticks(range(len(labels)), [f"{v}\n{p / 1e3:.0f}k params" for v, p in zip(labels, summary["params"])])
    ax.set_ylabel("final validation accuracy")
    ax.set_title("Final accuracy (dots: seeds; bars: mean, seed min-max)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def section(mode: str, seed: int, results_root: str | Path = RESULTS_ROOT) -> Section:
    """The report's section: parameters and final accuracy per network, training curves and both verdicts."""
    config = {**CONFIGS[mode], "seed": seed}
    results = run(config, results_dir=default_results_dir(NAME, mode, seed, results_root), progress=False)
    summary = summarise(results)
    final = final_evals(results)
    answer = verdict(summary, final, n_val=int(config["n_val"]), param_tolerance=float(config["param_tolerance"]))
    widths = sorted({spec.get("width_mult", 1.0) for spec in config["variants"].values()})
    text = (
        "Xception paper (Chollet 2017): at the same parameter count as Inception-v3, Xception is more accurate "
        "(sec. 4.5: 'a more efficient use of model parameters'); and a non-linearity between the depthwise and "
        "pointwise convolutions hurts (sec. 4.7, Fig. 10). Here: inception_v3, xception and xception with a ReLU "
        f"between depthwise and pointwise (mid_activation) at width_mult {', '.join(map(str, widths))}, dropout "
        f"off, trained identically: {config['steps']} steps of {config['optimizer'].upper()} (lr {config['lr']:g}, "
        f"momentum {config['momentum']:g}, {config['schedule']} schedule, {config['warmup_steps']} warm-up steps), "
        f"batch {config['batch_size']}, {config['n_train']} synthetic training images at {config['image_size']} px, "
        f"seeds {seed}..{seed + int(config['seeds']) - 1}. Accuracy is top-1 on {config['n_val']} validation "
        "images. A difference counts only when larger than the seed spread (max - min) of both groups; parameter "
        f"counts must match within {float(config['param_tolerance']):.0%}. The learning rate is the best of those "
        "tried for xception without the mid activation; the other two networks were trained with it as they are."
    )
    notes = ["acc_*: final validation top-1 over seeds (std: sample std); params at 10 classes; params_vs_v3: "
             "params / Inception-v3's - 1",
             "every network keeps its reference initialisation (Inception-v3: truncated normal std 0.1; "
             "Xception: He fan-out)"]
    per_seed = final.reindex(columns=["variant", "seed", "params", "loss", "accuracy"]).rename(
        columns={"loss": "val_loss", "accuracy": "val_accuracy"}).reset_index(drop=True)
    return Section(
        title="Depthwise-separable convolutions and the mid activation (Xception)",
        text=text,
        tables=[Table("xception_vs_v3", "Parameters and final validation accuracy (seed statistics)", summary, notes),
                Table("xception_vs_v3_seeds", "Final validation accuracy per seed", per_seed, inline=False)],
        figures=[Figure("xception_vs_v3_curves", "Training loss, training accuracy and validation accuracy vs step "
                        "(mean over seeds, band: seed min-max)", lambda: _curves_figure(results)),
                 Figure("xception_vs_v3_final", "Final validation accuracy per network and seed",
                        lambda: _final_figure(summary, final))],
        verdict=answer,
    )
