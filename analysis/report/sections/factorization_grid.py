"""The report's section on asymmetric factorisation by grid size (Inception-v3 paper, sec. 3.2).

It runs :mod:`analysis.experiments.factorization_grid` (resumable, under the results root) and renders its arms
(accuracy, the paired cost of factorising, params and MACs), the tuning sweep, the figures and the claims.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from analysis.experiments.factorization_grid import (
    CONFIGS,
    NAME,
    PAPER_GRID_RANGE,
    arm_table,
    claims,
    costs,
    run,
    run_table,
)
from analysis.experiments.runner import RESULTS_ROOT, default_results_dir
from analysis.experiments.verdict import INTERVAL_METHOD, learnability_gate
from analysis.report.document import Figure, Section, Table
from analysis.report.figures import band_lines, styled
from inception_models.small_inception import stage_grid_sizes

__all__ = ["section"]

CHANCE = 0.1  # ten balanced classes (the default synthetic shapes)


def _interval(low: float, high: float) -> str:
    return "" if math.isnan(low) else f"[{100 * low:+.1f}, {100 * high:+.1f}]"


def _arms_shown(arms: pd.DataFrame) -> pd.DataFrame:
    """The arm table with human headers and units (accuracies in %, costs in percentage points)."""
    return pd.DataFrame({
        "arm": arms["arm"],
        "input (px)": arms["image_size"],
        "factorised stage": arms["factorized_stage"].astype("string").fillna("none"),
        "grid": arms["grid"],
        "params": arms["params"].astype("Int64"),
        "MACs (M)": arms["macs"] / 1e6,
        "lr": arms["lr"],
        "runs learned": arms["learned"],
        "val. accuracy (%)": 100 * arms["acc_mean"],
        "sd over seeds (pp)": 100 * arms["acc_sd"],
        "cost vs unfactorised (pp)": 100 * arms["cost"],
        "95% CI (pp)": [_interval(lo, hi) for lo, hi in zip(arms["cost_low"], arms["cost_high"])],
        "MDE (pp)": 100 * arms["cost_mde"],
    })


def _tuning_shown(runs: pd.DataFrame) -> pd.DataFrame:
    """The learning-rate sweep: each arm's held-out test accuracy (%) at each rate, one row per arm."""
    tune = runs[runs["stage"] == "tune"]
    if tune.empty:
        return pd.DataFrame()
    table = tune.pivot_table(index="arm", columns="lr", values="final_val_accuracy", aggfunc="last", sort=False)
    table = (100 * table).rename(columns=lambda lr: f"test acc. at lr {lr:g} (%)").reset_index()
    chosen = runs[runs["stage"] == "seed"].groupby("arm", sort=False)["lr"].first()
    return table.assign(**{"chosen lr": table["arm"].map(chosen)})


@styled
def _grid_figure(runs: pd.DataFrame, arms: pd.DataFrame) -> Any:
    """Left: final validation accuracy of every arm (dots: seeds; bar: mean) with chance and the gate. Right: the
    paired cost of factorising against the grid of the factorised stage, by input size."""
    seeds = runs[runs["stage"] == "seed"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [1, 1.2]})
    order = list(arms["arm"])
    sizes = sorted(arms["image_size"].unique())
    palette = dict(zip(sizes, sns.color_palette(n_colors=len(sizes))))
    for i, arm in enumerate(order):
        part = seeds[seeds["arm"] == arm]
        colour = palette[int(part["image_size"].iloc[0])]
        left.scatter(np.full(len(part), i), 100 * part["final_val_accuracy"], color=colour, s=16, alpha=0.6)
        left.hlines(100 * part["final_val_accuracy"].mean(), i - 0.3, i + 0.3, color=colour, linewidth=2.5)
    left.axhline(100 * CHANCE, color="black", linestyle=":", linewidth=1)
    left.annotate("chance", (0.01, 100 * CHANCE), xycoords=("axes fraction", "data"), fontsize="x-small",
                  va="bottom")
    gate = learnability_gate(CHANCE)
    left.axhline(100 * gate, color="grey", linestyle="--", linewidth=1)
    left.annotate("learnability gate", (0.01, 100 * gate), xycoords=("axes fraction", "data"), fontsize="x-small",
                  color="grey", va="bottom")
    left.set_xticks(range(len(order)), order, rotation=30, ha="right")
    left.set_ylim(0, 100)
    left.set_ylabel("final validation accuracy (%)")
    left.set_title("every arm (dots: seeds; bar: mean)")

    right.axvspan(*PAPER_GRID_RANGE, color="C2", alpha=0.12, label="paper's medium grids (12-20)")
    right.axhline(0, color="black", linewidth=1, label="unfactorised net (same input)")
    factorised = arms.dropna(subset=["grid"])
    for size in sizes:
        mine = factorised[factorised["image_size"] == size]
        if mine.empty:
            continue
        jitter = 1.0 + 0.03 * (sizes.index(size) - (len(sizes) - 1) / 2)  # log axis: a multiplicative nudge
        x = mine["grid"].astype(float) * jitter
        right.errorbar(x, 100 * mine["cost"], yerr=[100 * (mine["cost"] - mine["cost_low"]),
                                                    100 * (mine["cost_high"] - mine["cost"])],
                       fmt="o", color=palette[size], capsize=4, label=f"{size} px input: mean, 95% CI")
        for _, arm in mine.iterrows():
            right.annotate(f"stage {arm['factorized_stage']}", (float(arm["grid"]) * jitter, 100 * arm["cost"]),
                           xytext=(6, 0), textcoords="offset points", fontsize="x-small", va="center")
    right.set_xscale("log", base=2)
    grids = sorted(int(g) for g in factorised["grid"].unique())
    right.set_xticks(grids, [f"{g}x{g}" for g in grids])
    right.minorticks_off()
    right.set_xlabel("grid of the factorised stage")
    right.set_ylabel("accuracy change from factorising (pp)")
    right.set_title("cost of factorising one stage, paired by seed")
    right.legend(fontsize="x-small", loc="best")
    fig.tight_layout()
    return fig


def _loss_figure(results: pd.DataFrame) -> Any:
    train = results[(results["stage"] == "seed") & (results["split"] == "train")]
    train = train.assign(input=train["image_size"].map(lambda s: f"{int(s)} px input"))
    return band_lines(train, x="step", y="loss", hue="arm", col="input", xlabel="step",
                      ylabel="training loss (one batch)", sharey=True)


def _text(config: dict[str, Any], mode: str, seed: int, arms: pd.DataFrame) -> str:
    sizes = sorted({int(s) for s, _ in config["factorized"]})
    grids = "; ".join(f"{s} px: {', '.join(f'{g}x{g}' for g in stage_grid_sizes(s))}" for s in sizes)
    rates = ", ".join(f"{lr:g}" for lr in config["lrs"])
    tuning = ("each arm trained once at every rate of the sweep (" + rates + ") on a tuning seed and was judged on "
              "a held-out test split; it then ran at its best rate (column lr)") if len(config["lrs"]) > 1 else \
        f"every arm at lr {rates} (one rate: no tuning)"
    n = config["branch_kernel"]
    return (
        "Inception-v3 paper, sec. 3.2: factorising n x n convolutions into 1 x n then n x 1 'does not work well on "
        "early layers, but it gives very good results on medium grid-sizes (on m x m feature maps, where m ranges "
        "between 12 and 20)'; the paper uses n = 7 at 17x17. Here: small_inception (Zhang et al. 2017) at width "
        f"{config['width_mult']:g} with its Inception modules' spatial branch widened to {n}x{n}, trained "
        f"unfactorised and with the branches of one stage at a time factorised to 1x{n} then {n}x1 (the other "
        "stages left alone). The input size sets each stage's grid (stage 0, 1, 2: " + grids + "), so the same "
        "stage at two input sizes separates grid size from depth. Every factorised arm is paired with the "
        "unfactorised net at its own input size: seed s gives both the same data order and the same initial "
        f"weights where their structure agrees. Tier `{mode}`: {config['steps']} steps of SGD (momentum "
        f"{config['momentum']:g}, {config['schedule']} schedule, {config['warmup_steps']} warm-up steps), batch "
        f"{config['batch_size']}, {config['n_train']:,} training images of the `{config['difficulty']}` synthetic "
        f"shapes; {tuning}; then {config['seeds']} paired seeds ({seed}..{seed + int(config['seeds']) - 1}). The "
        f"measure is top-1 accuracy on {config['n_val']:,} validation images after the last step; a run counts "
        f"only if it reached the learnability gate ({100 * learnability_gate(CHANCE):.0f}%, 3 x chance). Effects "
        f"and intervals: {INTERVAL_METHOD} on the per-seed differences; MDE: the smallest effect the test detects "
        "with 80% power. A 'no effect detected' is as strong as its MDE; the paper's 'very good results' at medium "
        "grids (no cost) is read off the cost column, not decided. Parameters and MACs: fvcore, one image at the "
        f"arm's input size. {'This tier is a smoke test: its verdicts are not evidence.' if mode == 'quick' else ''}"
    ).strip()


def section(mode: str, seed: int, results_root: str | Path = RESULTS_ROOT) -> Section:
    """The report's section: every arm (accuracy, paired cost, params, MACs), the tuning sweep, the figures and
    the three claims."""
    config = {**CONFIGS[mode], "seed": seed}
    results = run(config, results_dir=default_results_dir(NAME, mode, seed, results_root), progress=False)
    runs = run_table(results)
    arms = arm_table(runs, costs(config))
    decided = claims(runs)
    notes = ["cost: the paired mean over seeds of (factorised - unfactorised) final validation accuracy at the same "
             "input size, in percentage points (pp); negative: factorising lost accuracy",
             "params, MACs: fvcore on one image at the arm's input size (one fused multiply-add = one MAC)"]
    tables = [Table("factorization_grid", "Every arm: accuracy, the cost of factorising, params and MACs",
                    _arms_shown(arms), notes)]
    tuning = _tuning_shown(runs)
    if not tuning.empty:
        tables.append(Table("factorization_grid_tuning", "Learning-rate sweep (held-out test accuracy, tuning seed)",
                            tuning))
    tables.append(Table("factorization_grid_runs", "Every run (tuning and seeds)", runs.drop(columns="point_id"),
                        inline=False))
    return Section(
        title="Asymmetric factorisation by grid size, trained (Inception-v3, sec. 3.2)",
        text=_text(config, mode, seed, arms),
        tables=tables,
        figures=[Figure("factorization_grid_accuracy",
                        "Left: final validation accuracy of every arm (dots: seeds; dotted: chance; dashed: the "
                        "learnability gate). Right: the accuracy change from factorising one stage, against that "
                        "stage's grid (mean and 95% interval over paired seeds; 0 is the unfactorised net at the "
                        "same input). The paper expects the points inside the green band near 0 and the large "
                        "grids below them.", lambda: _grid_figure(runs, arms)),
                 Figure("factorization_grid_loss", "Training loss of every arm per input size, one batch every "
                        f"{config['log_every']} steps (line: mean over the paired seeds; band: seed min-max).",
                        lambda: _loss_figure(results))],
        verdict=" ".join(f"({i}) {c.claim}: {c.verdict.describe(measure)}." for i, (c, measure) in
                         enumerate(zip(decided, ("accuracy", "accuracy", "accuracy change")), 1)),
        claims=decided,
    )
