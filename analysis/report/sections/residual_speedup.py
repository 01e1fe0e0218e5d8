"""The report's section on residual connections and training speed (Inception-v4 paper).

It runs :mod:`analysis.experiments.residual_speedup` (resumable, under the results root) and renders its tables,
figures and claims.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.experiments.residual_speedup import (
    CONFIGS,
    NAME,
    PAIRS,
    arm_table,
    claims,
    comparisons,
    per_run,
    run,
)
from analysis.experiments.runner import RESULTS_ROOT, default_results_dir
from analysis.experiments.verdict import INTERVAL_METHOD
from analysis.report.document import Figure, Section, Table
from analysis.report.figures import band_lines
from analysis.report.tables import Column

__all__ = ["section"]

KIND_LABELS = {"residual": "Inception-ResNet (residual)", "inception": "Inception-v3/v4 (paper's pair)",
               "no_shortcut": "Inception-ResNet, no shortcut"}

# The display specs of the inline tables: headers with units, one precision per column, mean ± sd over seeds.
ACCURACY = dict(digits=1, scale=100)
ARM_COLUMNS = {
    "pair": Column("Pair"), "arm": Column("Arm"), "params": Column("Params (k)", digits=0, scale=1e-3),
    "GMACs": Column("MMACs", digits=1, scale=1e3), "CPU s per step": Column("CPU s / step", digits=3),
    "lr": Column("Learning rate"), "learned": Column("Learned (runs)"),
    "curve area (mean val. accuracy)": Column("Curve area vs steps (%, mean ± sd)", spread="curve area sd",
                                              **ACCURACY),
    "final val. accuracy": Column("Final val. acc. (%, mean ± sd)", spread="final val. accuracy sd", **ACCURACY),
    "target": Column("Target (%)", **ACCURACY), "target reached": Column("Target reached"),
    "KM median steps": Column("KM median steps", digits=0), "KM median CPU s": Column("KM median CPU s", digits=0),
}
COMPARISON_COLUMNS = {
    "residual net": Column("Residual net"), "against": Column("Against"),
    "curve area against": Column("Curve area against"), "residual": Column("Residual (%)", **ACCURACY),
    "non-residual": Column("Non-residual (%)", **ACCURACY),
    "effect": Column("Effect (pp) [95% CI]", interval=("ci_low", "ci_high"), **ACCURACY),
    "mde": Column("MDE (pp)", **ACCURACY), "seeds": Column("Seeds"), "arms_learned": Column("Runs learned"),
    "verdict": Column("Verdict"), "why": Column("Why"),
}
TUNING_COLUMNS = {
    "arm": Column("Arm"), "lr": Column("Learning rate"),
    "curve area (held-out split)": Column("Curve area, held-out (%)", **ACCURACY),
    "final accuracy (held-out split)": Column("Final acc., held-out (%)", **ACCURACY),
    "diverged": Column("Diverged"), "chosen": Column("Chosen"),
}


def _labelled(results: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    seeded = runs[runs["stage"] == "seed"].set_index("point_id")
    rows = results[results["point_id"].isin(seeded.index)]
    pair = rows["point_id"].map(seeded["pair"])
    return rows.assign(kind=rows["point_id"].map(seeded["kind"]).map(KIND_LABELS),
                       pair=pair.map(lambda p: f"{PAIRS[p]['residual_label']} vs {PAIRS[p]['inception_label']}"))


def _accuracy_figure(results: pd.DataFrame, runs: pd.DataFrame, x: str, xlabel: str) -> Any:
    val = _labelled(results[results["split"] == "val"], runs)
    chance = float(runs["chance"].iloc[0])
    return band_lines(val, x=x, y="accuracy", hue="kind", col="pair", sharey=True, per_seed=x != "step",
                      hlines={"chance": chance}, title=f"Validation accuracy against {xlabel.split(' (')[0]}",
                      xlabel=xlabel, ylabel="validation accuracy")


def _loss_figure(results: pd.DataFrame, runs: pd.DataFrame) -> Any:
    train = _labelled(results[results["split"] == "train"], runs)
    classes = round(1.0 / float(runs["chance"].iloc[0]))
    return band_lines(train, x="step", y="loss", hue="kind", col="pair", sharey=True,
                      hlines={f"chance: ln {classes} = {math.log(classes):.2f}": math.log(classes)},
                      title="Training loss", xlabel="training step",
                      ylabel="training loss (nats)")


def _tuning_table(runs: pd.DataFrame) -> pd.DataFrame:
    tune = runs[runs["stage"] == "tune"].sort_values(["arm", "lr"])
    chosen = runs[runs["stage"] == "seed"].groupby("arm")["lr"].first()
    return pd.DataFrame({
        "arm": tune["label"], "lr": tune["lr"], "curve area (held-out split)": tune["curve_area"],
        "final accuracy (held-out split)": tune["final_val_accuracy"], "diverged": tune["diverged"],
        "chosen": [math.isclose(lr, chosen.get(arm, math.nan)) for arm, lr in zip(tune["arm"], tune["lr"])],
    })


def _comparison_table(decided: list) -> pd.DataFrame:
    rows = []
    for pair, other, axis, verdict in decided:
        e = verdict.effect
        rows.append({"residual net": PAIRS[pair]["residual_label"], "against": other, "curve area against": axis,
                     "residual": e.treatment_mean if e else math.nan, "non-residual": e.control_mean if e else math.nan,
                     **verdict.row(), "why": verdict.reason})
    return pd.DataFrame(rows)


def section(mode: str, seed: int, results_root: str | Path = RESULTS_ROOT) -> Section:
    """The report's section: the arms with their cost, the paired comparisons by curve area against steps and CPU
    seconds, the tuning, the curves, and the claims."""
    config = {**CONFIGS[mode], "seed": seed}
    results = run(config, results_dir=default_results_dir(NAME, mode, seed, results_root), progress=False)
    runs = per_run(results, config)
    decided = comparisons(runs, results)
    decided_claims = claims(runs, results)
    gate = float(runs["gate"].iloc[0])
    depth = ("the paper's depth (5, 10 and 5 Inception-ResNet-A, -B and -C blocks)" if config["block_counts"] is None
             else f"{tuple(config['block_counts'])} Inception-ResNet-A/B/C blocks")
    others = [KIND_LABELS[k] for k in config["kinds"] if k != "residual"]
    pairs = (", ".join(PAIRS[p]["residual_label"] for p in config["pairs"]) + " against " + " and ".join(others))
    if "inception" not in config["kinds"]:
        pairs += (" only: the same layers, parameters and MACs without the shortcut, the exact same-cost control. "
                  "The paper's pairs (Inception-ResNet-v1 vs Inception-v3, -v2 vs -v4) are in the full tier: at this "
                  "width and input Inception-v3 stayed at chance for 600 steps (calibration at rates 0.03 and 0.1), "
                  "and Inception-v4 is not matched in cost (1.5x the MACs of Inception-ResNet-v2)")
    tuned = (f"every arm trained once at each rate of {', '.join(f'{lr:g}' for lr in config['lrs'])} (tuning seed, "
             f"judged on a held-out split by {config['tune_metric'].replace('_', ' ')}; the chosen rate is in the "
             "tables)" if len(config["lrs"]) > 1 else f"one rate, {config['lrs'][0]:g}, no tuning (the quick tier)")
    text = (
        "Inception-v4 paper (sec. 5, Figs. 21-26): residual connections accelerate the training of Inception "
        "networks significantly; Inception-ResNet-v1 against Inception-v3 and Inception-ResNet-v2 against "
        f"Inception-v4, networks of about the same cost. Here ({mode} tier): {pairs}; the residual nets at {depth}, "
        f"every net at width {config['width_mult']:g} (parameters and MACs, counted by fvcore at the training input, "
        f"are in the table) on {config['image_size']} px synthetic shapes of difficulty '{config['difficulty']}' "
        f"({config['n_train']} training and {config['n_val']} validation images), {config['optimizer']} with "
        f"momentum {config['momentum']:g} at a {config['schedule']} rate, batch {config['batch_size']}, dropout "
        f"{config['drop_rate']:g}, {config['steps']} steps, evaluated every {config['eval_every']} steps. Tuning: "
        f"{tuned}. Then {config['seeds']} paired seeds (same data order; the non-residual net copies the residual "
        "net's initial weights wherever name and shape match). One censoring-free measure decides: the area under "
        "the validation-accuracy curve (the mean accuracy over the run; higher is faster), against steps (the "
        "paper's axis; the claim) and against the run's CPU seconds up to the time the costlier arm of the seed "
        f"needs for the whole budget (one-thread processes: the cost, whatever the load), {INTERVAL_METHOD}. A "
        f"comparison whose runs did not all pass the learnability gate (best validation accuracy >= {gate:.2f}) is "
        "'not tested'. Steps and CPU seconds to the target (each pair's: "
        f"{config['target_fraction']:g} x the lower of its arms' mean best validation accuracy) are given as "
        "reached in k/n seeds with the Kaplan-Meier median (inf: fewer than half got there), never with the budget "
        "put in for a run that did not get there.")
    verdict = "; ".join(f"{claim.claim}: {claim.verdict.describe('curve area')}" for claim in decided_claims)
    return Section(
        title="Residual connections and training speed (Inception-v4 paper)",
        text=text,
        tables=[
            Table(NAME, "Residual vs non-residual arms: cost, learning and speed", arm_table(runs),
                  [f"learned: runs whose best validation accuracy reached the gate {gate:.2f}; curve area: the mean "
                   f"validation accuracy over the {config['steps']} steps; KM: Kaplan-Meier median over seeds (inf: "
                   "fewer than half of the seeds reached the target); CPU s per step: one thread, evaluations "
                   "included; MMACs: fvcore, one image at the training input"], columns=ARM_COLUMNS),
            Table(f"{NAME}_comparisons", "Paired comparisons by curve area (positive: the residual net is faster)",
                  _comparison_table(decided),
                  [f"{INTERVAL_METHOD} on the per-seed differences; MDE: the smallest effect detected with 80% "
                   "power at this number of seeds; against CPU seconds: up to the CPU time in which the costlier "
                   "arm of the seed does the whole budget; pp: percentage points"], columns=COMPARISON_COLUMNS),
            *([Table(f"{NAME}_tuning", "Learning-rate tuning (one run per rate, held-out split)",
                     _tuning_table(runs), columns=TUNING_COLUMNS)] if len(config["lrs"]) > 1 else []),
            Table(f"{NAME}_runs", "Residual vs non-residual: one row per run", runs.drop(columns="point_id"),
                  inline=False),
            Table(f"{NAME}_curves", "Residual vs non-residual: every logged step", results.drop(columns="point_id"),
                  inline=False),
        ],
        figures=[
            Figure(f"{NAME}_accuracy", "Validation accuracy against training steps, one panel per pair: the "
                   "residual net should rise earlier and end about level (line: mean over seeds; band: min-max)",
                   lambda: _accuracy_figure(results, runs, "step", "training step")),
            Figure(f"{NAME}_time", "Validation accuracy against the run's CPU seconds, one line per seed: the "
                   "same race paid for in compute, where the cheaper net per step gets further in the same time",
                   lambda: _accuracy_figure(results, runs, "cpu_s", "CPU seconds (the run's one-thread process)")),
            Figure(f"{NAME}_loss", "Training loss against steps, one panel per pair: the residual net's loss should "
                   "leave the chance line (ln K, a uniform guess) sooner and fall faster (mean over seeds, band: "
                   "min-max)",
                   lambda: _loss_figure(results, runs)),
        ],
        verdict=verdict,
        claims=decided_claims,
    )
