"""The report's section on depthwise-separable convolutions and the mid activation (Xception paper).

It runs :mod:`analysis.experiments.xception_vs_v3` (resumable, under the results root) and renders its verdicts,
claims, tables and figures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import matplotlib.pyplot as plt
import pandas as pd

from analysis.experiments.runner import RESULTS_ROOT, default_results_dir, num_classes
from analysis.experiments.verdict import INTERVAL_METHOD, Verdict
from analysis.experiments.xception_vs_v3 import (
    ARM_LABELS,
    COMPARISONS,
    CONFIGS,
    NAME,
    claims,
    decide,
    per_run,
    run,
    summarise,
    verdict,
)
from analysis.report.document import Figure, Section, Table
from analysis.report.figures import band_lines, styled
from analysis.report.tables import Column

__all__ = ["section"]

COMPARISON_LABELS = {"xception_vs_v3": "Xception vs Inception-v3", "none_vs_relu": "no mid activation vs ReLU",
                     "none_vs_elu": "no mid activation vs ELU"}
SUMMARY_SPEC: dict[str, Column] = {
    "arm": Column("Arm"),
    "params": Column("Params"),
    "params_vs_v3": Column("Params vs v3 (%)", digits=1, scale=100),
    "lr": Column("Tuned lr"),
    "seeds": Column("Seeds"),
    "learned": Column("Passed gate"),
    "val_accuracy": Column("Val accuracy (%)", digits=1, scale=100, spread="val_accuracy_sd", best="max"),
    "curve_area": Column("Mean val accuracy along training (%)", digits=1, scale=100, best="max"),
    "cpu_s": Column("CPU s per run", digits=0),
}
VERDICT_SPEC: dict[str, Column] = {
    "comparison": Column("Comparison"),
    "effect": Column("Effect (points)", digits=1, scale=100, interval=("ci_low", "ci_high")),
    "mde": Column("MDE (points)", digits=1, scale=100),
    "seeds": Column("Paired seeds"),
    "arms_learned": Column("Runs past gate"),
    "verdict": Column("Verdict"),
    "reason": Column("Why"),
}


def _verdict_table(verdicts: Mapping[str, Verdict]) -> pd.DataFrame:
    rows = [{"comparison": COMPARISON_LABELS[key], **v.row(), "reason": v.reason} for key, v in verdicts.items()]
    return pd.DataFrame(rows, columns=["comparison", "effect", "ci_low", "ci_high", "mde", "seeds", "arms_learned",
                                       "verdict", "reason"])


def _accuracy_figure(results: pd.DataFrame, classes: int, gate: float) -> Any:
    rows = results[(results["stage"] == "seed") & (results["split"] == "val")]
    return band_lines(rows.assign(arm=rows["arm"].map(ARM_LABELS)), x="step", y="accuracy", hue="arm",
                      title="Validation accuracy along training", xlabel="training step",
                      ylabel="validation accuracy (mean, min-max over seeds)",
                      hlines={f"chance (1/{classes})": 1 / classes, f"learnability gate ({gate:.2f})": gate})


@styled
def _effects_figure(runs: pd.DataFrame, verdicts: Mapping[str, Verdict]) -> Any:
    """Per-seed paired differences (dots) and the mean with its 95% interval (bar) for each comparison."""
    seeds = runs[runs["stage"] == "seed"].set_index(["arm", "seed"])["final_val_accuracy"]
    fig, ax = plt.subplots(figsize=(7, 3.8))
    keys = list(verdicts)
    for i, key in enumerate(keys):
        treatment, control = COMPARISONS[key]
        diffs = (seeds[treatment] - seeds[control]).dropna() * 100
        ax.scatter([i] * len(diffs), diffs, color=f"C{i}", alpha=0.6, s=22, zorder=3)
        effect = verdicts[key].effect
        if effect is not None and effect.n >= 2:
            ax.errorbar([i + 0.15], [effect.effect * 100], yerr=[[(effect.effect - effect.ci_low) * 100],
                                                                   [(effect.ci_high - effect.effect) * 100]],
                        fmt="s", color="black", capsize=5, zorder=4)
        ax.annotate(verdicts[key].word, (i, 1.02), xycoords=("data", "axes fraction"), ha="center",
                    fontsize="small")
    ax.axhline(0.0, color="grey", linestyle=":", linewidth=1)
    ax.set_xticks(range(len(keys)), [COMPARISON_LABELS[k] for k in keys], fontsize="small")
    ax.set_xlim(-0.5, len(keys) - 0.5)
    ax.set_ylabel("final val accuracy difference\n(points; > 0: the paper's direction)")
    fig.tight_layout()
    return fig


def section(mode: str, seed: int, results_root: str | Path = RESULTS_ROOT) -> Section:
    """The report's section: the verdicts and claims, parameters and accuracy per arm, every run (CSV), the
    validation curves and the paired differences."""
    config = {**CONFIGS[mode], "seed": seed}
    results = run(config, results_dir=default_results_dir(NAME, mode, seed, results_root), progress=False)
    runs = per_run(results)
    tolerance = float(config["param_tolerance"])
    verdicts = decide(runs, tolerance)
    summary = summarise(runs)
    gate = float(runs["gate"].iloc[0])
    rates = ", ".join(f"{ARM_LABELS[a]} {lr:g}" for a, lr in zip(summary["arm"], summary["lr"]))
    tuned = (f"each arm's rate tuned over {', '.join(f'{lr:g}' for lr in config['lrs'])} on a held-out split with "
             f"the same budget (chosen: {rates})" if len(config["lrs"]) > 1 else
             f"one rate for every arm, {config['lrs'][0]:g}, without tuning in this tier")
    text = (
        "Xception paper (Chollet 2017): at the same parameter count as Inception-v3, Xception is more accurate "
        "(sec. 4.5: 'a more efficient use of model parameters'); and without a non-linearity between the depthwise "
        "and pointwise convolutions Xception converges faster and ends more accurate than with a ReLU or an ELU "
        f"there (sec. 4.7, Fig. 10). Tier `{mode}`: Inception-v3 at width_mult {config['v3_width']} (dropout off) "
        f"against Xception at width_mult {config['xception_width']} with {config['middle_blocks']} middle-flow "
        f"blocks, parameter counts matched within {tolerance:.0%} (table); Xception also with a ReLU and with an ELU "
        "between every depthwise and pointwise convolution, starting from the plain Xception's initial weights of "
        f"the same seed. {config['steps']} steps of {config['optimizer'].upper()} (momentum {config['momentum']:g}, "
        f"{config['schedule']} schedule, {config['warmup_steps']} warm-up steps), batch {config['batch_size']}, "
        f"{config['n_train']:,} synthetic training images at {config['image_size']} px (difficulty "
        f"`{config['difficulty']}`), {tuned}, then {config['seeds']} paired seeds "
        f"({seed}..{seed + int(config['seeds']) - 1}). Accuracy is top-1 on {config['n_val']:,} validation images; "
        f"every run must reach the learnability gate ({gate:.2f}, 3x chance) for its comparison to count. Effects "
        f"are paired differences ({INTERVAL_METHOD}), positive in the paper's direction. The models are small "
        "versions of the papers' networks on synthetic data: a verdict here says what holds at this scale."
    )
    shown_summary = summary.assign(arm=summary["arm"].map(ARM_LABELS))
    return Section(
        title="Depthwise-separable convolutions and the mid activation (Xception)",
        text=text,
        tables=[Table(NAME, "Xception vs Inception-v3 and the mid activation: parameters, tuned rate and accuracy "
                      "per arm (mean ± sd over the paired seeds)", shown_summary,
                      ["params at 10 classes, counted on the trained networks; 'Mean val accuracy along training': "
                       "the area under the validation curve over the run's steps, from chance at step 0 (Fig. 10's "
                       "'faster convergence')"], columns=SUMMARY_SPEC),
                Table(f"{NAME}_verdicts", "The paired comparisons: effect with its 95% interval, MDE and verdict",
                      _verdict_table(verdicts), columns=VERDICT_SPEC),
                Table(f"{NAME}_runs", "Xception vs Inception-v3: every run (tuning and seeds)", runs, inline=False)],
        figures=[Figure(f"{NAME}_accuracy", "Validation accuracy along training per arm (mean over seeds, min-max "
                        "band; dotted: chance and the learnability gate): an arm whose band stays near chance makes "
                        "its comparisons 'not tested'", lambda: _accuracy_figure(results, num_classes(config), gate)),
                 Figure(f"{NAME}_effects", "Paired differences in final validation accuracy, one dot per seed, with "
                        "the mean and its 95% interval: an interval clear of the dotted zero line above it supports "
                        "the paper", lambda: _effects_figure(runs, verdicts))],
        verdict=verdict(verdicts),
        claims=claims(verdicts),
    )
