"""The report's section on BN-Inception vs Inception without BN: fewer steps, higher learning rates (BN paper).

It runs :mod:`analysis.experiments.bn_speedup` (resumable, under the results root) and renders its tables, figures
and claims.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.experiments.bn_speedup import (
    CONFIGS,
    NAME,
    VARIANT_LABELS,
    base_rate,
    claims,
    comparisons,
    per_run,
    rate_table,
    run,
    stops_learning,
)
from analysis.experiments.runner import RESULTS_ROOT, default_results_dir, num_classes
from analysis.experiments.verdict import INTERVAL_METHOD
from analysis.report.document import Figure, Section, Table
from analysis.report.figures import band_lines
from analysis.report.tables import Column

__all__ = ["section"]


# The display specs of the inline tables: headers with units, one precision per column, mean ± sd over seeds.
ACCURACY = dict(digits=1, scale=100)
RATE_COLUMNS = {
    "variant": Column("Variant"), "multiplier": Column("Rate (x base)", digits=0), "lr": Column("Learning rate"),
    "own tuned rate": Column("Own tuned rate"), "learned": Column("Learned (runs)"),
    "diverged": Column("Diverged (runs)"),
    "curve area (mean val. accuracy)": Column("Curve area (%, mean ± sd)", spread="curve area sd", best="max",
                                              **ACCURACY),
    "final val. accuracy": Column("Final val. acc. (%, mean ± sd)", spread="final val. accuracy sd", **ACCURACY),
    "target reached": Column("Target reached"), "KM median steps to target": Column("KM median steps", digits=0),
}
COMPARISON_COLUMNS = {
    "comparison": Column("Comparison"), "BN side": Column("BN side (%)", **ACCURACY),
    "no-BN side": Column("No-BN side (%)", **ACCURACY),
    "effect": Column("Effect (pp) [95% CI]", interval=("ci_low", "ci_high"), **ACCURACY),
    "mde": Column("MDE (pp)", **ACCURACY), "seeds": Column("Seeds"), "arms_learned": Column("Runs learned"),
    "verdict": Column("Verdict"), "why": Column("Why"),
}
TUNING_COLUMNS = {
    "variant": Column("Variant"), "lr": Column("Learning rate"),
    "curve area (held-out split)": Column("Curve area, held-out (%)", **ACCURACY),
    "final accuracy (held-out split)": Column("Final acc., held-out (%)", **ACCURACY),
    "diverged": Column("Diverged"), "chosen": Column("Chosen"),
}


def _labelled(results: pd.DataFrame, base: float) -> pd.DataFrame:
    seeded = results[results["stage"] == "seed"]
    multiplier = (seeded["lr"] / base).round(6)
    return seeded.assign(variant=seeded["arm"].map(VARIANT_LABELS),
                         rate=[f"{m:g}x the base rate (lr {lr:g})" for m, lr in zip(multiplier, seeded["lr"])],
                         _m=multiplier).sort_values(["_m", "step"], kind="stable")


def _accuracy_figure(results: pd.DataFrame, base: float, chance: float, target: float) -> Any:
    val = _labelled(results[results["split"] == "val"], base)
    return band_lines(val, x="step", y="accuracy", hue="variant", col="rate", sharey=True,
                      hlines={"chance": chance, f"target {target:.2f}": target}, title="Validation accuracy",
                      xlabel="training step", ylabel="validation accuracy")


def _loss_figure(results: pd.DataFrame, base: float, classes: int) -> Any:
    # A linear axis: the losses span a narrow range (about 1.4-2.4 nats), where a log axis only distorts; ln K is
    # the loss of a uniform guess, the line a net that learns nothing sits on.
    train = _labelled(results[results["split"] == "train"], base)
    return band_lines(train, x="step", y="loss", hue="variant", col="rate", sharey=True,
                      hlines={f"chance: ln {classes} = {math.log(classes):.2f}": math.log(classes)},
                      title="Training loss", xlabel="training step",
                      ylabel="training loss (nats)")


def _tuning_table(runs: pd.DataFrame, chosen: dict[str, float]) -> pd.DataFrame:
    tune = runs[runs["stage"] == "tune"].sort_values(["arm", "lr"])
    return pd.DataFrame({
        "variant": tune["variant"], "lr": tune["lr"],
        "curve area (held-out split)": tune["curve_area"],
        "final accuracy (held-out split)": tune["final_val_accuracy"],
        "diverged": tune["diverged"], "chosen": [math.isclose(lr, chosen[a]) for a, lr in zip(tune["arm"], tune["lr"])],
    })


def _comparison_table(decided: list) -> pd.DataFrame:
    rows = []
    for _, description, verdict in decided:
        e = verdict.effect
        rows.append({"comparison": description, "BN side": e.treatment_mean if e else math.nan,
                     "no-BN side": e.control_mean if e else math.nan, **verdict.row(), "why": verdict.reason})
    return pd.DataFrame(rows)


def _stops(stops: dict[str, float], base: float) -> str:
    parts = []
    for variant, m in stops.items():
        parts.append(f"{variant} learns in every seed at every rate tried" if math.isinf(m) else
                     f"{variant} stops learning (some seed below the gate) at {m:g}x the base rate (lr {base * m:g})")
    return "; ".join(parts)


def section(mode: str, seed: int, results_root: str | Path = RESULTS_ROOT) -> Section:
    """The report's section: the tuning, the rates table with censored times to the target, the paired
    comparisons by curve area, the curves, and the claims."""
    config = {**CONFIGS[mode], "seed": seed}
    results = run(config, results_dir=default_results_dir(NAME, mode, seed, results_root), progress=False)
    runs = per_run(results, config)
    base = base_rate(results, config)
    chosen = dict(zip(runs.loc[runs["own_rate"], "arm"], runs.loc[runs["own_rate"], "lr"]))
    target = float(runs["target"].iloc[0])
    gate = float(runs["gate"].iloc[0])
    chance = 1.0 / num_classes(config)
    decided = comparisons(runs)
    decided_claims = claims(runs)
    tuned = (f"both variants trained once at each rate of {', '.join(f'{lr:g}' for lr in config['lrs'])} "
             f"(tuning seed, judged on a held-out split by {config['tune_metric'].replace('_', ' ')}); the no-BN "
             f"baseline chose {base:g}, the base rate, and BN chose {chosen.get('bn', base):g}"
             if len(config["lrs"]) > 1 else f"one rate, {base:g}, no tuning (the quick tier)")
    text = (
        "BN paper (sec. 4.2.1, Fig. 2, Table 2): BN-Inception at Inception's rate reached Inception's accuracy in "
        "fewer than half the steps; at 5x and 30x the rate in 14x and 11x fewer, rates at which a network without "
        f"BN does not train. Here ({mode} tier): {config['model']} at width {config['width_mult']:g} with "
        f"norm='bn' and norm='none' (the same topology; the no-BN net copies the BN net's initial weights of the "
        f"seed, then the data-dependent initialisation), on {config['image_size']} px synthetic shapes of "
        f"difficulty '{config['difficulty']}' ({config['n_train']} training and {config['n_val']} validation "
        f"images), {config['optimizer']} with momentum {config['momentum']:g} at a {config['schedule']} rate, batch "
        f"{config['batch_size']}, {config['steps']} steps, evaluated every {config['eval_every']} steps. Tuning: "
        f"{tuned}. Then {config['seeds']} paired seeds (same data order, same initial weights) of both variants at "
        f"{', '.join(f'{m:g}x' for m in config['multipliers'])} the base rate and at each variant's tuned rate. "
        f"Every comparison is by the area under the validation-accuracy curve (the mean accuracy over the run: "
        f"higher is faster, defined whether or not a run reached the target), {INTERVAL_METHOD} over the seeds; a "
        f"comparison whose runs did not all pass the learnability gate (best validation accuracy >= {gate:.2f}, "
        f"3x chance) is 'not tested'. Steps to the target (validation accuracy {target:.3f}, "
        f"{config['target_fraction']:g} x the baseline's mean best: the paper's 'accuracy of Inception') are "
        "given as reached in k/n seeds with the Kaplan-Meier median over seeds (inf: fewer than half got there), "
        f"never with the budget put in for a run that did not get there. Where each variant stops learning: "
        f"{_stops(stops_learning(runs), base)}.")
    verdict = "; ".join(f"{claim.claim}: {claim.verdict.describe('curve area')}" for claim in decided_claims)
    return Section(
        title="BN-Inception vs Inception without BN: steps and learning rates (BN paper)",
        text=text,
        tables=[
            Table(f"{NAME}_rates", "BN vs no BN per learning rate: learning, divergence, speed",
                  rate_table(runs),
                  [f"learned: runs whose best validation accuracy reached the gate {gate:.2f}; curve area: the mean "
                   f"validation accuracy over the {config['steps']} steps; target {target:.3f}; KM: Kaplan-Meier "
                   "median over seeds in steps (inf: fewer than half of the seeds reached it)"], columns=RATE_COLUMNS),
            Table(f"{NAME}_comparisons", "Paired comparisons by curve area (positive: the BN side is faster)",
                  _comparison_table(decided),
                  [f"{INTERVAL_METHOD} on the per-seed differences of the curve area; MDE: the smallest effect "
                   "detected with 80% power at this number of seeds; pp: percentage points"],
                  columns=COMPARISON_COLUMNS),
            *([Table(f"{NAME}_tuning", "Learning-rate tuning (one run per rate, held-out split)",
                     _tuning_table(runs, chosen), columns=TUNING_COLUMNS)] if len(config["lrs"]) > 1 else []),
            Table(f"{NAME}_runs", "BN vs no BN: one row per run", runs.drop(columns="point_id"), inline=False),
            Table(f"{NAME}_curves", "BN vs no BN: every logged step", results.drop(columns="point_id"),
                  inline=False),
        ],
        figures=[
            Figure(f"{NAME}_accuracy", "Validation accuracy against steps, one panel per rate: the BN net (at the "
                   "same rate) should rise earlier, and at 5x and 30x keep learning where the net without BN stalls "
                   "at chance or diverges (line: mean over seeds; band: min-max)",
                   lambda: _accuracy_figure(results, base, chance, target)),
            Figure(f"{NAME}_loss", "Training loss against steps, one panel per rate: the BN net's loss should fall "
                   "below the chance line (ln K, a uniform guess) sooner; a net that does not learn stays on it, and a "
                   "diverged run's curve ends where its loss became NaN (line: mean over seeds; band: min-max)",
                   lambda: _loss_figure(results, base, num_classes(config))),
        ],
        verdict=verdict,
        claims=decided_claims,
    )
