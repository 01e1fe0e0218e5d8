"""The report's section on auxiliary classifiers as regularisers (GoogLeNet; Inception-v3 paper, sec. 4).

It runs :mod:`analysis.experiments.aux_heads` (resumable, under the results root) and renders its verdicts,
claims, tables and figures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from analysis.experiments.aux_heads import ARM_LABELS, CONFIGS, NAME, claims, decide, per_run, run, summarise, verdict
from analysis.experiments.runner import RESULTS_ROOT, default_results_dir, num_classes
from analysis.report.document import Figure, Section, Table
from analysis.report.figures import band_lines
from analysis.report.tables import Column

__all__ = ["section"]

# The per-arm table as a reader sees it (the CSV keeps the raw frame): accuracies in %, gaps in percentage points.
SUMMARY_COLUMNS = {
    "arm": Column("Arm"), "lr": Column("Tuned lr", digits=3), "learned": Column("Learned (runs)"),
    "val_accuracy": Column("Val. accuracy (%), mean ± sd", digits=1, scale=100, spread="val_accuracy_sd",
                           best="max"),
    "train_accuracy": Column("Train accuracy, eval mode (%)", digits=1, scale=100),
    "generalisation_gap": Column("Train - val. (pp)", digits=1, scale=100, best="min"),
    "early_area": Column("Val. accuracy, first third (%)", digits=1, scale=100),
    "final_main_loss": Column("Main-head train loss (nats)", digits=3),
    "grad_norm_lower": Column("Gradient norm below first head", digits=3),
}
RUN_COLUMNS = {
    "stage": Column("Stage"), "arm": Column("Arm"), "seed": Column("Seed"), "lr": Column("lr", digits=3),
    "final_val_accuracy": Column("Val. accuracy (%)", digits=1, scale=100),
    "final_train_accuracy": Column("Train accuracy (%)", digits=1, scale=100),
    "generalisation_gap": Column("Train - val. (pp)", digits=1, scale=100),
    "early_area": Column("Val. accuracy, first third (%)", digits=1, scale=100),
    "grad_norm_lower": Column("Gradient norm below first head", digits=3), "learned": Column("Learned"),
    "cpu_s": Column("CPU (s)", digits=0),
}


def _seed_rows(results: pd.DataFrame) -> pd.DataFrame:
    rows = results[results["stage"] == "seed"]
    return rows.assign(arm=rows["arm"].map(ARM_LABELS))


def _accuracy_figure(results: pd.DataFrame, classes: int) -> Any:
    rows = _seed_rows(results)
    val = rows[rows["split"] == "val"].assign(series="validation images (eval mode)")
    train = rows[rows["split"] == "train"].assign(series="training batches (train mode)")
    return band_lines(pd.concat([train, val]), x="step", y="accuracy", hue="arm", col="series", sharey=True,
                      title="Main-head accuracy with and without auxiliary heads", xlabel="training step",
                      ylabel="accuracy (mean, min-max over seeds)", hlines={f"chance (1/{classes})": 1 / classes})


def _gradient_figure(results: pd.DataFrame) -> Any:
    rows = _seed_rows(results)
    return band_lines(rows[rows["split"] == "train"], x="step", y="grad_norm_lower", hue="arm", logy=True,
                      title="Gradient reaching the layers below the first aux head", xlabel="training step",
                      ylabel="gradient L2 norm (log scale)")


def section(mode: str, seed: int, results_root: str | Path = RESULTS_ROOT) -> Section:
    """The report's section: the verdicts and claims, the per-arm table, the per-run and curve tables (CSV), the
    accuracy curves and the gradient reaching the lower layers."""
    config = {**CONFIGS[mode], "seed": seed}
    results = run(config, results_dir=default_results_dir(NAME, mode, seed, results_root), progress=False)
    early = float(config["early_fraction"])
    runs = per_run(results, early)
    min_gap = float(config["min_gap"])
    verdicts = decide(runs, min_gap)
    summary = summarise(runs)
    rates = ", ".join(f"{ARM_LABELS[arm]} {lr:g}" for arm, lr in zip(summary["arm"], summary["lr"]))
    tuning = (f"each arm's rate tuned over {', '.join(f'{lr:g}' for lr in config['lrs'])} on the held-out split "
              f"(chosen: {rates})" if len(config["lrs"]) > 1 else f"one rate for every arm, {config['lrs'][0]:g}")
    text = (
        "GoogLeNet (sec. 5) added auxiliary classifiers to strengthen the gradient reaching the lower layers and as "
        "regularisers; the Inception-v3 paper (sec. 4) found they do not speed up early training but lift the final "
        "plateau, more so when the side head is batch-normalized (BN-auxiliary, +0.4% top-1 in Table 3). A "
        "regulariser needs a net that overfits, so this runs a small training set for many epochs: "
        f"{config['n_train']:,} training images, {config['steps']} steps of batch {config['batch_size']} "
        f"({config['steps'] * config['batch_size'] / config['n_train']:.0f} epochs). Tier `{mode}`: {config['model']} "
        f"(BN body, width_mult {config['width_mult']}, dropout {config['drop_rate']} before the main classifier, "
        f"`{config['init']}` initialisation) on {config['image_size']} px synthetic shapes (difficulty "
        f"`{config['difficulty']}`), arms {', '.join(ARM_LABELS[a] for a in config['arms'])}, aux loss weight "
        f"{config['aux_weight']}, {config['optimizer']} with a {config['schedule']} schedule; {tuning}, then "
        f"{config['seeds']} paired seeds (the arms with heads start from the no-heads arm's body and classifier). "
        "'No BN' heads have no normalisation (conv with bias); 'with BN' heads batch-normalise the hidden FC too. "
        f"Accuracy is the main head's in eval mode (heads are dropped at inference) on {config['n_val']:,} "
        f"validation images and on {config['train_eval_images']:,} training images; a regulariser claim is "
        f"`not tested` unless the no-heads net's train-minus-validation gap is at least {min_gap:g}."
    )
    shown = summary.assign(arm=summary["arm"].map(ARM_LABELS))
    return Section(
        title="Auxiliary classifiers (GoogLeNet; Inception-v3, sec. 4)",
        text=text,
        tables=[Table(NAME, f"Auxiliary heads: the main head's accuracy and generalisation gap per arm, means over "
                      f"{config['seeds']} paired seeds", shown,
                      ["accuracies in eval mode (heads dropped); 'first third': the mean validation accuracy over the "
                       f"first {early:.2g} of the steps (the v3 paper's early training); gradient norms: the L2 norm "
                       "of the gradient of the layers below the first head's tap, mean over the logged steps; pp: "
                       "percentage points"], columns=SUMMARY_COLUMNS),
                Table(f"{NAME}_runs", "Auxiliary heads: every run (tuning on the held-out split, then the paired "
                      "seeds)", runs, inline=False, columns=RUN_COLUMNS),
                Table(f"{NAME}_curves", "Auxiliary heads: every logged row", results.drop(columns="point_id"),
                      inline=False)],
        figures=[Figure(f"{NAME}_accuracy", "Main-head accuracy along training: the space between the training and "
                        "validation panels is the overfitting a regulariser could close (mean over seeds, min-max "
                        "band; dotted: chance)", lambda: _accuracy_figure(results, num_classes(config))),
                 Figure(f"{NAME}_gradients", "The L2 norm of the gradient of the layers below the first aux "
                        "head's tap, per training step (mean over seeds, min-max band; log scale): GoogLeNet added the "
                        "heads to raise it, so the lines with heads should sit above the one without", lambda: _gradient_figure(results))],
        verdict=verdict(verdicts, runs, min_gap=min_gap),
        claims=claims(verdicts),
    )
