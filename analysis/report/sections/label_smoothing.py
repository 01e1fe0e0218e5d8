"""The report's section on label smoothing (Inception-v3 paper, sec. 7).

It runs :mod:`analysis.experiments.label_smoothing` (resumable, under the results root) and renders its
verdicts, claims, tables and figures.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.experiments.calibration import smoothing_optimal_gap
from analysis.experiments.label_smoothing import (
    CONFIGS,
    NAME,
    PAPER_GAIN,
    claims,
    decide,
    per_run,
    run,
    summarise,
    verdict,
)
from analysis.experiments.runner import RESULTS_ROOT, default_results_dir, num_classes
from analysis.report.document import Figure, Section, Table
from analysis.report.figures import band_lines, reliability_figure
from analysis.report.tables import Column

__all__ = ["section"]

# The per-arm table as a reader sees it (the CSV keeps the raw frame): accuracies and ECE in %, logits in nats.
SUMMARY_COLUMNS = {
    "arm": Column("Targets"), "lr": Column("Tuned lr", digits=3), "learned": Column("Learned (runs)"),
    "val_accuracy": Column("Val. top-1 (%), mean ± sd", digits=1, scale=100, spread="val_accuracy_sd", best="max"),
    "val_nll": Column("Val. cross-entropy (nats)", digits=3, best="min"),
    "ece": Column("ECE (%)", digits=1, scale=100, best="min"),
    "confidence": Column("Mean confidence (%)", digits=1, scale=100),
    "overconfidence": Column("Confidence - accuracy (pp)", digits=1, scale=100),
    "gap_train": Column("Logit gap, train (nats)", digits=2), "gap_val": Column("Logit gap, val. (nats)", digits=2),
    "gap_optimum": Column("Optimal gap under eps (nats)", digits=2),
}
RUN_COLUMNS = {
    "stage": Column("Stage"), "arm": Column("Targets"), "seed": Column("Seed"), "lr": Column("lr", digits=3),
    "final_val_accuracy": Column("Val. top-1 (%)", digits=1, scale=100),
    "best_val_accuracy": Column("Best val. top-1 (%)", digits=1, scale=100),
    "val_nll": Column("Val. cross-entropy (nats)", digits=3), "ece": Column("ECE (%)", digits=1, scale=100),
    "overconfidence": Column("Confidence - accuracy (pp)", digits=1, scale=100),
    "gap_train": Column("Logit gap, train (nats)", digits=2), "learned": Column("Learned"),
    "cpu_s": Column("CPU (s)", digits=0),
}


def _labels(epsilon: float) -> dict[str, str]:
    return {"one_hot": "one-hot", "smoothed": f"smoothed, eps {epsilon:g}"}


def _seed_rows(results: pd.DataFrame, split: str, epsilon: float) -> pd.DataFrame:
    rows = results[(results["stage"] == "seed") & (results["split"] == split)]
    return rows.assign(arm=rows["arm"].map(_labels(epsilon)))


def _accuracy_figure(results: pd.DataFrame, classes: int, epsilon: float) -> Any:
    return band_lines(_seed_rows(results, "val", epsilon), x="step", y="accuracy", hue="arm",
                      title="Validation top-1 with and without label smoothing", xlabel="training step",
                      ylabel="validation top-1 (mean, min-max over seeds)", hlines={f"chance (1/{classes})": 1 / classes})


def _gap_figure(results: pd.DataFrame, classes: int, epsilon: float) -> Any:
    rows = _seed_rows(results, "train", epsilon).dropna(subset=["gap_train"])
    optimum = smoothing_optimal_gap(epsilon, classes)
    return band_lines(rows, x="step", y="gap_train", hue="arm",
                      title="The paper's mechanism: the correct logit's lead over the others", xlabel="training step",
                      ylabel="correct logit - mean of others (training images)",
                      hlines={f"optimum under eps {epsilon:g}: log(1 + K(1-eps)/eps) = {optimum:.2f}": optimum})


def _reliability(results: pd.DataFrame, epsilon: float) -> Any:
    return reliability_figure(_seed_rows(results, "reliability", epsilon), hue="arm",
                              title="Reliability diagram (validation images, seeds pooled)")


def section(mode: str, seed: int, results_root: str | Path = RESULTS_ROOT) -> Section:
    """The report's section: the verdicts and claims, the per-arm table, the per-run and curve tables (CSV), the
    accuracy and logit-gap curves, the reliability diagram."""
    config = {**CONFIGS[mode], "seed": seed}
    results = run(config, results_dir=default_results_dir(NAME, mode, seed, results_root), progress=False)
    runs = per_run(results)
    verdicts = decide(runs)
    classes = num_classes(config)
    eps = float(config["epsilon"])
    summary = summarise(runs, classes)
    rates = ", ".join(f"{arm} {lr:g}" for arm, lr in zip(summary["arm"], summary["lr"]))
    tuning = (f"each arm's learning rate tuned over {', '.join(f'{lr:g}' for lr in config['lrs'])} on the held-out "
              f"split (chosen: {rates})" if len(config["lrs"]) > 1 else f"one learning rate for both arms, "
              f"{config['lrs'][0]:g}")
    text = (
        f"Inception-v3 paper, sec. 7: label smoothing with eps = 0.1 (uniform prior) improved ImageNet top-1 by about "
        f"{100 * PAPER_GAIN:.1f}% absolute; the paper's argument is that one-hot targets drive the correct logit far "
        "above all others. Against smoothed targets q'(y) = 1 - eps + eps/K, q'(k) = eps/K, the cross-entropy is "
        "smallest where softmax equals q' (Gibbs' inequality), i.e. with the correct logit above every other by "
        f"log(q'(y)/q'(k)) = log(1 + K(1 - eps)/eps): {smoothing_optimal_gap(eps, classes):.2f} for K = {classes}, "
        f"eps = {eps:g}; with one-hot targets there is no finite optimum. With K = 10 classes eps/K would be 100x "
        f"ImageNet's, so the data here has K = {classes} (synthetic shapes, difficulty `{config['difficulty']}`). "
        f"Tier `{mode}`: {config['model']} (width_mult {config['width_mult']}) at {config['image_size']} px, "
        f"{config['n_train']:,} training images, {config['steps']} steps of {config['optimizer']} (batch "
        f"{config['batch_size']}, {config['schedule']} schedule, weight decay {config['weight_decay']:g}); {tuning}, "
        f"then {config['seeds']} paired seeds (same initial weights and data order in both arms). "
        f"Measured in eval mode on {config['n_val']:,} validation images: top-1, cross-entropy, ECE "
        f"({config['bins']} equal-width bins), mean confidence; the logit gap on {config['gap_images']:,} training "
        "images along training. Calibration is not the paper's claim. The training loss is against the smoothed "
        "targets, so it is higher with smoothing by construction: compare the validation columns."
    )
    labels = _labels(eps)
    # One-hot targets have no finite optimal gap: the cell stays empty (the note says why).
    shown = summary.assign(arm=summary["arm"].map(labels),
                           gap_optimum=summary["gap_optimum"].where(summary["gap_optimum"] < math.inf))
    return Section(
        title="Label smoothing (Inception-v3, sec. 7)",
        text=text,
        tables=[Table(NAME, f"Label smoothing on K = {classes} classes: validation measures per arm, means over "
                      f"{config['seeds']} paired seeds", shown,
                      ["logit gap: the correct logit minus the mean of the others (nats); its optimum under eps is "
                       "log(1 + K(1 - eps)/eps), none with one-hot targets; ECE with "
                       f"{config['bins']} equal-width bins; confidence: the mean top softmax probability; pp: "
                       "percentage points"], columns=SUMMARY_COLUMNS),
                Table(f"{NAME}_runs", "Label smoothing: every run (tuning on the held-out split, then the paired "
                      "seeds)", runs, inline=False, columns=RUN_COLUMNS),
                Table(f"{NAME}_curves", "Label smoothing: every logged row", results.drop(columns="point_id"),
                      inline=False)],
        figures=[Figure(f"{NAME}_accuracy", "Validation top-1 along training, per arm (mean over seeds, min-max band); "
                        "the dotted line is chance", lambda: _accuracy_figure(results, classes, eps)),
                 Figure(f"{NAME}_gap", "The correct logit's lead over the mean of the others on training images: "
                        "with smoothing it should level off near the dotted optimum, without it keep growing",
                        lambda: _gap_figure(results, classes, eps)),
                 Figure(f"{NAME}_reliability", "Reliability diagram: accuracy against confidence per arm; on the "
                        "diagonal a model is calibrated, below it over-confident", lambda: _reliability(results, eps))],
        verdict=verdict(verdicts, runs, classes=classes, epsilon=eps),
        claims=claims(verdicts, eps),
    )
