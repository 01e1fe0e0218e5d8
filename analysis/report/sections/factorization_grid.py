"""The report's section on asymmetric factorisation by grid size (Inception-v3 paper, sec. 3.2).

It runs :mod:`analysis.experiments.factorization_grid` (resumable, under the results root) and renders its arms
(accuracy, the paired accuracy change from factorising, the params and MACs ratios), the tuning sweep, the
figures and the claims.
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
    LARGE,
    NAME,
    NO_LOSS_MARGIN,
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
from analysis.report.tables import Column
from inception_models.small_inception import stage_grid_sizes

__all__ = ["ARM_DISPLAY", "section"]

CHANCE = 0.1  # ten balanced classes (the default synthetic shapes)

# The arm table as the report shows it (the CSV keeps every column of :func:`arm_table` unscaled).
ARM_DISPLAY = {
    "arm": Column("Arm"),
    "image_size": Column("Input (px)"),
    "stage_shown": Column("Factorised stage"),
    "grid": Column("Grid side m"),
    "params": Column("Params (k)", digits=1, scale=1e-3),
    "params_ratio": Column("Params / unfact.", digits=3),
    "macs": Column("MACs (M)", digits=2, scale=1e-6),
    "macs_ratio": Column("MACs / unfact.", digits=3),
    "lr": Column("Chosen lr"),
    "learned": Column("Runs learned"),
    "acc_mean": Column("Val. acc. (%) ± sd", digits=1, scale=100, spread="acc_sd"),
    "cost": Column("Change vs unfact. (pp) [95% CI]", digits=1, scale=100, interval=("cost_low", "cost_high")),
    "cost_mde": Column("MDE (pp)", digits=1, scale=100),
}


def _arms_shown(arms: pd.DataFrame) -> pd.DataFrame:
    """The arm table with the factorised stage as words ("none" for the unfactorised nets)."""
    return arms.assign(stage_shown=arms["factorized_stage"].astype("string").fillna("none"))


def _tuning_shown(runs: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Column]]:
    """The learning-rate sweep, one row per arm: its held-out test accuracy at each rate and the rate it chose."""
    tune = runs[runs["stage"] == "tune"]
    if tune.empty:
        return pd.DataFrame(), {}
    table = tune.pivot_table(index="arm", columns="lr", values="final_val_accuracy", aggfunc="last", sort=False)
    rates = list(table.columns)
    table = table.rename(columns=lambda lr: f"acc_{lr:g}").reset_index()
    chosen = runs[runs["stage"] == "seed"].groupby("arm", sort=False)["lr"].first()
    table = table.assign(chosen=table["arm"].map(chosen))
    columns = {"arm": Column("Arm"),
               **{f"acc_{lr:g}": Column(f"Test acc. at lr {lr:g} (%)", digits=1, scale=100) for lr in rates},
               "chosen": Column("Chosen lr")}
    return table, columns


@styled
def _grid_figure(runs: pd.DataFrame, arms: pd.DataFrame, margin: float) -> Any:
    """Left: final validation accuracy of every arm (dots: seeds; bar: mean) with chance and the gate. Middle: the
    paired accuracy change from factorising against the grid of the factorised stage. Right: the factorised net's
    MACs and parameters as a fraction of the unfactorised net's, against the same grid."""
    seeds = runs[runs["stage"] == "seed"]
    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(16, 4.8), gridspec_kw={"width_ratios": [1, 1.2, 1]})
    order = list(arms["arm"])
    sizes = sorted(int(s) for s in arms["image_size"].unique())
    palette = dict(zip(sizes, sns.color_palette(n_colors=len(sizes))))
    for i, arm in enumerate(order):
        part = seeds[seeds["arm"] == arm]
        colour = palette[int(part["image_size"].iloc[0])]
        left.scatter(np.full(len(part), i), 100 * part["final_val_accuracy"], color=colour, s=16, alpha=0.6)
        left.hlines(100 * part["final_val_accuracy"].mean(), i - 0.3, i + 0.3, color=colour, linewidth=2.5)
    for level, label, style in ((CHANCE, "chance (10 classes)", ":"),
                                (learnability_gate(CHANCE), "learnability gate", "--")):
        left.axhline(100 * level, color="grey" if style == "--" else "black", linestyle=style, linewidth=1)
        left.annotate(label, (0.01, 100 * level), xycoords=("axes fraction", "data"), fontsize="x-small",
                      va="bottom")
    left.set_xticks(range(len(order)), order, rotation=30, ha="right")
    left.set_ylim(0, 100)
    left.set_ylabel("final validation accuracy (%)")
    left.set_title("every arm (dots: seeds; bar: mean)")

    factorised = arms.dropna(subset=["grid"])
    grids = sorted(int(g) for g in factorised["grid"].unique())
    middle.axhline(0, color="black", linewidth=1, label="unfactorised net (same input)")
    middle.axhline(-100 * margin, color="C3", linestyle="--", linewidth=1,
                   label=f"no-loss margin (-{100 * margin:g} pp, claim 2)")
    for edge in PAPER_GRID_RANGE:
        middle.axvline(edge, color="grey", linestyle=":", linewidth=1)
    middle.annotate("paper's m = 12-20", (PAPER_GRID_RANGE[0], 1.0), xycoords=("data", "axes fraction"),
                    xytext=(2, -2), textcoords="offset points", fontsize="x-small", va="top", color="grey")
    for size in sizes:
        mine = factorised[factorised["image_size"] == size]
        if mine.empty:
            continue
        jitter = 1.0 + 0.03 * (sizes.index(size) - (len(sizes) - 1) / 2)  # log axis: a multiplicative nudge
        x = mine["grid"].astype(float) * jitter
        low = (mine["cost"] - mine["cost_low"]).fillna(0)
        high = (mine["cost_high"] - mine["cost"]).fillna(0)
        middle.errorbar(x, 100 * mine["cost"], yerr=[100 * low, 100 * high], fmt="o", color=palette[size],
                        capsize=4, label=f"{size} px input: mean, 95% CI")
        for _, arm in mine.iterrows():
            middle.annotate(f"stage {arm['factorized_stage']}", (float(arm["grid"]) * jitter, 100 * arm["cost"]),
                            xytext=(6, 0), textcoords="offset points", fontsize="x-small", va="center")
    middle.set_ylabel("accuracy change from factorising (pp)")
    middle.set_title("accuracy: factorised - unfactorised, paired by seed")
    middle.legend(fontsize="x-small", loc="best")

    for size in sizes:
        mine = factorised[factorised["image_size"] == size]
        right.scatter(mine["grid"].astype(float), mine["macs_ratio"], color=palette[size], marker="o",
                      label=f"MACs, {size} px input")
        right.scatter(mine["grid"].astype(float), mine["params_ratio"], color=palette[size], marker="s",
                      facecolors="none", label=f"params, {size} px input")
    right.axhline(1.0, color="black", linewidth=1, label="unfactorised net")
    right.set_ylim(0, 1.1)
    right.set_ylabel("factorised / unfactorised")
    right.set_title("what factorising one stage saves")
    right.legend(fontsize="x-small", loc="lower right")
    for ax in (middle, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks(grids, [f"{g}x{g}" for g in grids])
        ax.set_xlim(min(grids) / 1.4, max(grids) * 1.4)  # room for the edge points and their labels
        ax.minorticks_off()
        ax.set_xlabel("grid of the factorised stage (m x m)")
    fig.tight_layout()
    return fig


def _loss_figure(results: pd.DataFrame) -> Any:
    train = results[(results["stage"] == "seed") & (results["split"] == "train")]
    train = train.assign(input=train["image_size"].map(lambda s: f"{int(s)} px input"))
    return band_lines(train, x="step", y="loss", hue="arm", col="input", xlabel="step",
                      ylabel="training loss (one batch)", sharey=True, hlines={"chance (ln 10)": math.log(10)})


def _text(config: dict[str, Any], mode: str, seed: int, arms: pd.DataFrame) -> str:
    sizes = sorted({int(s) for s, _ in config["factorized"]})
    grids = "; ".join(f"{s} px: {', '.join(f'{g}x{g}' for g in stage_grid_sizes(s))}" for s in sizes)
    rates = ", ".join(f"{lr:g}" for lr in config["lrs"])
    tuning = ("each arm trained once at every rate of the sweep (" + rates + ") on a tuning seed and was judged on "
              "a held-out test split; it then ran at its best rate (column Chosen lr)") if len(config["lrs"]) > 1 else \
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
        "with 80% power. Claim 2 ('very good results', i.e. no loss, at a medium grid) is a non-inferiority test "
        f"with a margin fixed before any run: a loss under {100 * NO_LOSS_MARGIN:g} percentage points counts as "
        "none, so it is supported only when the whole interval of the change lies above "
        f"-{100 * NO_LOSS_MARGIN:g} pp; an interval that straddles the margin is 'no effect detected', never "
        "support. Parameters and MACs: fvcore, one image at the arm's input size, shown as ratios to the "
        "unfactorised net at the same input. They are this net's: its 1 x n and n x 1 convs both have the "
        "branch's output width, so a branch saves 1 - 2/n of its weights only where its input and output widths "
        "agree (the same proviso as the 28% saving of a 5x5 replaced by two 3x3, which holds for equal widths). "
        + ("" if LARGE in {tuple(pair) for pair in config["factorized"]} else
           f"This tier runs no {LARGE[0]} px arms (they would more than double its cost), so claim 4, grid size "
           "against depth, is not tested here; the full tier decides it. ")
        + "Each claim's measure is signed so that positive is the paper's direction. The numbers of one seed differ "
        "between CPUs (other kernels, another trajectory); the verdicts rest on the paired intervals, not on one "
        "run. "
        f"{'This tier is a smoke test: its verdicts are not evidence.' if mode == 'quick' else ''}"
    ).strip()


def section(mode: str, seed: int, results_root: str | Path = RESULTS_ROOT) -> Section:
    """The report's section: every arm (accuracy, paired change, params and MACs ratios), the tuning sweep, the
    figures and the four claims."""
    config = {**CONFIGS[mode], "seed": seed}
    results = run(config, results_dir=default_results_dir(NAME, mode, seed, results_root), progress=False)
    runs = run_table(results)
    arms = arm_table(runs, costs(config))
    decided = claims(runs)
    notes = ["Change vs unfact.: the paired mean over seeds of (factorised - unfactorised) final validation accuracy "
             f"at the same input size, in percentage points (pp), with its 95% interval ({INTERVAL_METHOD}); "
             "negative: factorising lost accuracy. MDE: the smallest change the paired test detects with 80% power.",
             "Params, MACs: fvcore on one image at the arm's input size (one fused multiply-add = one MAC); the "
             "ratios divide by the unfactorised net at the same input size."]
    tables = [Table("factorization_grid", "Every arm of the factorisation study: final validation accuracy, the "
                    "paired accuracy change from factorising one stage, and what it saves in parameters and MACs",
                    _arms_shown(arms), notes, columns=ARM_DISPLAY)]
    tuning, tuning_columns = _tuning_shown(runs)
    if not tuning.empty:
        tables.append(Table("factorization_grid_tuning", "Learning-rate sweep of the factorisation study: each "
                            "arm's held-out test accuracy at every rate (tuning seed) and the rate it then ran at",
                            tuning, columns=tuning_columns))
    tables.append(Table("factorization_grid_runs", "Every run of the factorisation study (tuning and seeds)",
                        runs.drop(columns="point_id"), inline=False))
    measures = ("accuracy", f"accuracy (factorised + {100 * NO_LOSS_MARGIN:g} pp margin)", "accuracy",
                "accuracy change")
    return Section(
        title="Asymmetric factorisation by grid size, trained (Inception-v3, sec. 3.2)",
        text=_text(config, mode, seed, arms),
        tables=tables,
        figures=[Figure("factorization_grid_accuracy",
                        "Left: final validation accuracy of every arm (dots: seeds; dotted: chance; dashed: the "
                        "learnability gate). Middle: the accuracy change from factorising one stage against that "
                        "stage's grid (mean and 95% interval over paired seeds; 0 is the unfactorised net at the same "
                        "input; dashed: the no-loss margin of claim 2; dotted verticals: the paper's 12-20 range). "
                        "The paper expects points near 0 between the verticals and below the margin at large "
                        "grids. Right: the factorised net's MACs and parameters as a fraction of the unfactorised "
                        "net's: the saving depends on the stage's share of the net, not on a grid range.",
                        lambda: _grid_figure(runs, arms, NO_LOSS_MARGIN)),
                 Figure("factorization_grid_loss", "Training loss of every arm per input size, one batch every "
                        f"{config['log_every']} steps (line: mean over the paired seeds; band: seed min-max; "
                        "dotted: ln 10, the loss of a uniform guess).",
                        lambda: _loss_figure(results))],
        verdict=" ".join(f"({i}) {c.claim}: {c.verdict.describe(measure)}." for i, (c, measure) in
                         enumerate(zip(decided, measures), 1)),
        claims=decided,
    )
