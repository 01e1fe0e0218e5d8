"""The report's section on auxiliary classifiers as regularisers (GoogLeNet; Inception-v3 paper, sec. 4).

It runs :mod:`analysis.experiments.aux_heads` (resumable, under the results root)
and renders its tables, figures and verdict.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from analysis.experiments.aux_heads import ARM_LABELS, CONFIGS, NAME, per_seed, run, summarise, verdict
from analysis.experiments.runner import RESULTS_ROOT, default_results_dir
from analysis.report.document import Figure, Section, Table
from analysis.report.figures import band_lines

__all__ = ["section"]


def _labelled(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(arm=frame["arm"].map(ARM_LABELS))


def _curves_figure(results: pd.DataFrame) -> Any:
    train = results[results["split"] == "train"].assign(series="main-head training loss",
                                                        value=lambda f: f["main_loss"])
    val = results[results["split"] == "val"].assign(series="validation accuracy", value=lambda f: f["accuracy"])
    return band_lines(_labelled(pd.concat([train, val])), x="step", y="value", hue="arm", col="series",
                      title="With and without auxiliary heads", ylabel="value (mean, min-max over seeds)")


def _gradient_figure(results: pd.DataFrame) -> Any:
    train = results[results["split"] == "train"]
    long = pd.concat([train.assign(layers="below the first head", value=train["grad_norm_lower"]),
                      train.assign(layers="first convolution", value=train["grad_norm_first"])])
    return band_lines(_labelled(long), x="step", y="value", hue="arm", col="layers", logy=True,
                      title="Gradient norm reaching the lower layers",
                      ylabel="L2 norm of the gradient (mean, min-max over seeds)")


def section(mode: str, seed: int, results_root: str | Path = RESULTS_ROOT) -> Section:
    """The report's section: per-arm and per-seed tables, training curves, gradient norms, the verdict."""
    config = {**CONFIGS[mode], "seed": seed}
    results = run(config, results_dir=default_results_dir(NAME, mode, seed, results_root), progress=False)
    seeds = per_seed(results, float(config["early_fraction"]))
    summary = summarise(seeds)
    answer = verdict(seeds, n_val=int(config["n_val"]))
    text = (
        "GoogLeNet (sec. 5) added auxiliary classifiers to strengthen the gradient reaching the lower layers and as "
        "regularisers; the Inception-v3 paper (sec. 4) found they do not speed up early training but raise the "
        "final plateau, more so when the side head is batch-normalized. Here: "
        f"{config['model']} (BN body, width_mult {config['width_mult']}, dropout {config['drop_rate']} before the "
        f"main classifier, initialisation: {config['init']}) on {config['image_size']} px synthetic "
        f"shapes, arms {', '.join(ARM_LABELS[a] for a in config['arms'])}, aux loss weight {config['aux_weight']}, "
        f"{config['steps']} steps of {config['optimizer']} (lr {config['lr']}, batch {config['batch_size']}), "
        f"{config['seeds']} seeds. The heads' normalisation is set after building (no builder knob for it): "
        "'no BN' strips BN from the head convs (bias instead), 'with BN' adds BN to the hidden FC too (the v3 "
        "paper's BN-auxiliary). Accuracy is the main head's, in eval mode (heads are dropped at inference); the "
        f"'early' column is the first evaluation at or after {config['early_fraction']:g} of the run; the train "
        f"accuracy is on {config['n_val']} training images in eval mode. At this budget training is early by any "
        "measure: the v3 paper saw the heads' benefit only near the end of training."
    )
    return Section(
        title="Auxiliary classifiers (GoogLeNet; Inception-v3, sec. 4)",
        text=text,
        tables=[Table(NAME, "Auxiliary heads: accuracy, generalisation gap and lower-layer gradient norm per arm",
                      summary, ["means over seeds; gradient norms are means over the logged steps"]),
                Table(f"{NAME}_seeds", "Auxiliary heads: per seed", seeds),
                Table(f"{NAME}_curves", "Auxiliary heads: every logged step", results.drop(columns="point_id"),
                      inline=False)],
        figures=[Figure(f"{NAME}_curves", "Main-head training loss and validation accuracy (mean, min-max band "
                        "over seeds)", lambda: _curves_figure(results)),
                 Figure(f"{NAME}_gradients", "Gradient norm below the first aux head and at the first conv "
                        "(log scale)", lambda: _gradient_figure(results))],
        verdict=answer,
    )
