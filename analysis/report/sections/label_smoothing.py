"""The report's section on label smoothing (Inception-v3 paper, sec. 7).

It runs :mod:`analysis.experiments.label_smoothing` (resumable, under the results root)
and renders its tables, figures and verdict.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from analysis.experiments.label_smoothing import CONFIGS, NAME, per_seed, run, summarise, verdict
from analysis.experiments.runner import RESULTS_ROOT, default_results_dir
from analysis.report.document import Figure, Section, Table
from analysis.report.figures import band_lines, reliability_figure

__all__ = ["section"]


def _curves_figure(results: pd.DataFrame) -> Any:
    curve = results[results["split"].isin(["train", "val"])].copy()
    curve["series"] = curve["split"].map({"train": "training loss (smoothed targets)", "val": "validation accuracy"})
    curve["epsilon"] = curve["epsilon"].map(lambda e: f"{e:g}")
    loss = curve[curve["split"] == "train"].assign(value=lambda f: f["loss"])
    acc = curve[curve["split"] == "val"].assign(value=lambda f: f["accuracy"])
    return band_lines(pd.concat([loss, acc]), x="step", y="value", hue="epsilon", col="series",
                      title="With and without label smoothing", ylabel="value (mean, min-max over seeds)")


def _reliability(results: pd.DataFrame) -> Any:
    bins = results[results["split"] == "reliability"].copy()
    bins["epsilon"] = bins["epsilon"].map(lambda e: f"{e:g}")
    return reliability_figure(bins, hue="epsilon", title="Reliability diagram (validation, pooled seeds)")


def section(mode: str, seed: int, results_root: str | Path = RESULTS_ROOT) -> Section:
    """The report's section: the per-epsilon table, the per-seed table, curves, the reliability diagram."""
    config = {**CONFIGS[mode], "seed": seed}
    results = run(config, results_dir=default_results_dir(NAME, mode, seed, results_root), progress=False)
    final = per_seed(results)
    summary = summarise(results)
    answer = verdict(final, n_val=int(config["n_val"]))
    text = (
        "Inception-v3 paper, sec. 7: label smoothing with epsilon 0.1 (uniform prior) improved ImageNet error by "
        "about 0.2% absolute; its argument is that one-hot targets drive the largest logit far above all others. "
        f"Here: {config['model']} (width_mult {config['width_mult']}) on the synthetic shapes at "
        f"{config['image_size']} px, {config['steps']} steps of {config['optimizer']} (lr {config['lr']}, "
        f"{config['schedule']}, batch {config['batch_size']}) with epsilon "
        f"{', '.join(f'{e:g}' for e in config['epsilons'])}, "
        f"{config['seeds']} seeds each, everything else identical. Measured on {config['n_val']} validation images "
        f"in eval mode: accuracy, plain cross-entropy, ECE ({config['bins']} equal-width confidence bins), the mean "
        "gap between the largest logit and the mean of the others (and the second largest), the mean top "
        "probability. The training loss is against the smoothed targets, so it is higher with smoothing by "
        "construction; compare the validation columns. Calibration is not the paper's claim."
    )
    return Section(
        title="Label smoothing (Inception-v3, sec. 7)",
        text=text,
        tables=[Table(NAME, "Label smoothing: validation measures per epsilon (means over seeds)", summary,
                      [f"accuracy_min/max: the spread over seeds; ECE with {config['bins']} bins; gaps in logit "
                       "units"]),
                Table(f"{NAME}_seeds", "Label smoothing: per seed", final),
                Table(f"{NAME}_curves", "Label smoothing: every logged step and bin",
                      results.drop(columns="point_id"), inline=False)],
        figures=[Figure(f"{NAME}_curves", "Training loss and validation accuracy (mean over seeds, min-max band)",
                        lambda: _curves_figure(results)),
                 Figure(f"{NAME}_reliability", "Reliability diagram: accuracy against confidence, per epsilon",
                        lambda: _reliability(results))],
        verdict=answer,
    )
