"""The report's section on residual scaling and dying wide layers (Inception-v4 paper, sec. 3.3).

It runs :mod:`analysis.experiments.dead_units` (resumable, under the results root) and renders its claims, the
death-rate summary, the stability frontier of the phase sweep, the phase figure and the seeded curves; the
per-run and per-step tables go to CSV.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from analysis.experiments.dead_units import (
    CONFIGS,
    NAME,
    OUTCOMES,
    Plan,
    claims,
    conditions,
    death_summary,
    plan,
    run,
    stability_frontier,
    summarise,
)
from analysis.experiments.runner import RESULTS_ROOT, default_results_dir, num_classes
from analysis.experiments.verdict import learnability_gate
from analysis.report.document import Figure, Section, Table
from analysis.report.figures import band_lines, category_grid
from analysis.report.tables import Column

__all__ = ["section"]

# The per-run columns the CSV keeps, in order.
RUN_TABLE_COLUMNS = ["stage", "arm", "width", "scale", "prepool_bn", "lr", "seed", "steps", "outcome",
                     "final_val_accuracy", "best_val_accuracy", "learned", "trained", "final_dead_fraction",
                     "max_dead_fraction", "eval_dead_fraction", "first_dead_step", "accuracy_at_death", "max_loss",
                     "spiked", "died", "unstable", "diverged", "diverged_step", "final_val_loss", "cpu_s"]


# How the two inline tables read (headers with units, one precision per column).
SUMMARY_COLUMNS = {
    "condition": Column("Condition"), "arm": Column("Arm (width, scale)"), "lr": Column("Rate", digits=3),
    "seeds": Column("Seeds"), "learned": Column("Learned"), "trained stably": Column("Trained stably"),
    "died": Column("Died"), "unstable": Column("Unstable"), "diverged": Column("Diverged"),
    "final dead fraction": Column("Final dead (%)", digits=1, scale=100, best="min"),
    "max dead fraction": Column("Peak dead (%)", digits=1, scale=100),
    "eval-mode dead fraction": Column("Eval-mode dead (%)", digits=1, scale=100),
    "final val accuracy": Column("Final val. acc. (%)", digits=1, scale=100, best="max"),
    "accuracy at death": Column("Acc. at death (%)", digits=1, scale=100),
}
FRONTIER_COLUMNS = {
    "arm": Column("Arm"), "width": Column("Pre-pool width (ch.)"), "scale": Column("Residual scale", digits=1),
    "extra BN": Column("Extra BN"), "largest stable lr": Column("Largest stable rate", digits=3),
    "first unstable lr": Column("First unstable rate", digits=3), "died at lr": Column("Died at rate(s)"),
    "best final accuracy": Column("Best final val. acc. (%)", digits=1, scale=100, best="max"),
}


def _facet(row: pd.Series) -> str:
    return f"scale {row['scale']:g}" + (" + extra BN" if row["prepool_bn"] else "")


def _phase_figure(runs: pd.DataFrame) -> Any:
    tune = runs[runs["stage"] == "tune"].copy()
    tune["panel"] = tune.apply(_facet, axis=1)
    tune["final accuracy"] = tune["final_val_accuracy"].map(lambda a: "-" if math.isnan(a) else f"{a:.2f}")
    return category_grid(tune, x="width", y="lr", category="outcome", categories=OUTCOMES, col="panel",
                         label="final accuracy", title="Phase sweep (tuning seed, held-out split)",
                         xlabel="pre-pool width (channels)", ylabel="learning rate")


def _seeded_curves(results: pd.DataFrame, the_plan: Plan, config: Mapping[str, Any], split: str,
                   value: str) -> pd.DataFrame:
    parts = []
    for condition, arm, lr in conditions(the_plan, config):
        rows = results[(results["stage"] == "seed") & (results["arm"] == arm) & (results["lr"] == lr)
                       & (results["split"] == split)]
        parts.append(rows.assign(condition=condition, run=f"{arm}, lr {lr:g}"))
    frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["step", value, "run"])
    frame[value] = pd.to_numeric(frame[value], errors="coerce")
    return frame


def _text(config: Mapping[str, Any], runs: pd.DataFrame, the_plan: Plan, claim_rows: list) -> str:
    tune = runs[runs["stage"] == "tune"]
    died = tune[tune["died"]]
    died_learned = died[died["accuracy_at_death"] >= died["gate"]]
    classes = num_classes(config)
    gate = learnability_gate(1.0 / classes)
    window = int(config["monitor_every"]) * int(config["batch_size"])
    rates = ", ".join(f"{arm} {lr:g}" for arm, lr in the_plan.rates.items())
    r_star = "none" if the_plan.strained_rate is None else f"{the_plan.strained_rate:g}"
    lower = "none" if the_plan.lower_rate is None else f"{the_plan.lower_rate:g}"
    died_at = ", ".join(sorted({f"{lr:g}" for lr in died["lr"]})) or "no rate"
    regime = (f"In the phase sweep {len(died)} of {len(tune)} runs died (at lr {died_at}); "
              f"{len(died_learned)} of them had learned first (validation accuracy >= the gate before the "
              "layer died). ")
    if len(died) == 0:
        regime = "No run of the phase sweep died. "
    if len(died_learned) == 0:
        regime += ("So this tier does not reach the paper's regime (a net that learns and then dies after tens of "
                   "thousands of steps); what it can show is a width-dependent instability: whether the largest "
                   "rate at which a net trains stably falls as the pre-pool layer widens (the frontier table). ")
    lines = [
        "Inception-v4 paper, sec. 3.3: with more than 1000 filters the residual variants 'died' (the last layer "
        "before average pooling produced only zeros after a few tens of thousands of iterations); a lower learning "
        "rate or an extra batch norm did not help; scaling the residuals by 0.1-0.3 did.",
        "",
        f"Tier `{config.get('tier', '')}`: Inception-ResNet-{config['variant']} blocks "
        f"({tuple(config['block_counts'])} A/B/C blocks, width_mult {config['width_mult']}), the 8x8 stage and "
        f"the pre-pool layer widened to each width, every residual scaled by the same factor, "
        f"{config['image_size']} px (last grid 1x1 at 75 px), {config['steps']} steps of {config['optimizer']} "
        f"(momentum {config['momentum']}, constant rate, batch {config['batch_size']}) on {config['n_train']} "
        f"synthetic images (difficulty `{config['difficulty']}`). Phase sweep = tuning: widths "
        f"{', '.join(map(str, config['widths']))} x scales {', '.join(f'{s:g}' for s in config['scales'])} "
        f"(+ an extra BN before the last ReLU at {config['wide']}) x rates "
        f"{', '.join(f'{lr:g}' for lr in config['lrs'])}, one tuning seed on the held-out split; then "
        f"{config['seeds']} paired seeds (same data order and initial weights) on the validation split. Tuned "
        f"rates: {rates}. Strained rate r* (the smallest at which the {config['wide']}-wide unscaled net did not "
        f"train stably in tuning): {r_star}; its lower rate: {lower}.",
        "",
        f"Dead = never > 0 over a window of {config['monitor_every']} training steps ({window} samples, BN in "
        f"train mode; the eval-mode column uses BN running statistics on {config['n_val']} images). A run died "
        f"when its last window's dead fraction exceeds {the_plan.threshold:.3f}: the largest any window of a "
        f"narrow ({min(config['widths'])}-wide) tuning run that learned showed, floored at {config['dead_floor']}. "
        f"Unstable: a training-batch or validation loss above {runs.attrs.get('spike_level', math.nan):.2f} "
        f"({config['spike_factor']:g} x ln {classes}), or a NaN loss. Trained stably: final validation accuracy >= "
        f"{gate:.2f} (the gate, 3 x chance), no death, no instability. " + regime +
        f"This tier trains {config['steps']} steps per run, two orders of magnitude short of the paper's 'few tens "
        "of thousands of iterations' (the `full` tier's 30,000 steps on a GPU is the paper's regime). Per-run "
        "numbers move in the second digit between CPUs (different kernels change the trajectory); the verdicts "
        "rest on paired seeds and counts, which a re-run elsewhere should reproduce.",
        "",
    ]
    lines += [f"- **{c.claim}** ({c.measure}): "
              f"{c.verdict.describe('trained stably' if 'stably' in c.measure else 'dead fraction')}"
              for c in claim_rows]
    return "\n".join(lines)


def section(mode: str, seed: int, results_root: str | Path = RESULTS_ROOT) -> Section:
    """The report's section: the four claims, the death-rate summary, the stability frontier, the phase figure and
    the seeded curves (dead fraction and validation accuracy)."""
    config = {**CONFIGS[mode], "seed": seed}
    results = run(config, results_dir=default_results_dir(NAME, mode, seed, results_root), progress=False)
    runs = summarise(results, config)
    the_plan = plan(runs, config)
    claim_rows = claims(runs, config, the_plan)
    summary = death_summary(runs, the_plan, config)
    frontier = stability_frontier(runs)
    per_run = runs.reindex(columns=RUN_TABLE_COLUMNS)
    steps = results[results["split"].isin(["train", "val"])].reindex(
        columns=["stage", "arm", "lr", "seed", "split", "step", "loss", "accuracy", "dead_fraction", "dead_units",
                 "dormant_fraction", "zero_fraction", "eval_dead_fraction", "cpu_s"])
    threshold = the_plan.threshold
    chance = 1.0 / num_classes(config)
    gate = learnability_gate(chance)
    dead = _seeded_curves(results, the_plan, config, "train", "dead_fraction").dropna(subset=["dead_fraction"])
    accuracy = _seeded_curves(results, the_plan, config, "val", "accuracy")
    figures = [
        Figure("dead_units_phase", "Phase diagram of the tuning sweep (one seed, held-out split): each cell is a run "
               "(pre-pool width x learning rate, one panel per residual scale and the extra-BN arm), coloured by its "
               "outcome and labelled with its final accuracy. See where the trained cells end as the "
               "width grows, and where scaling moves that edge.", lambda: _phase_figure(runs)),
        Figure("dead_units_dead_fraction", f"Pre-pool dead fraction over training (train-mode windows), mean over "
               f"{config['seeds']} seeds with the min-max band, per seeded condition; the dotted line is the 'died' "
               f"threshold {threshold:.3f}. A line that ends above it is a layer that died; where the unscaled wide "
               "net's line rises and the scaled one stays flat, scaling kept the layer alive.",
               lambda: band_lines(dead, x="step", y="dead_fraction", hue="run", col="condition",
                                  title="Dead fraction of the pre-pool layer", xlabel="training step",
                                  ylabel="dead fraction", hlines={"died threshold": threshold}, sharey=True)),
        Figure("dead_units_accuracy", f"Validation accuracy over training, mean over {config['seeds']} seeds with the "
               f"min-max band, per seeded condition; dotted lines: chance ({chance:.2f}) and the learnability gate "
               f"({gate:.2f}). Read with the dead-fraction figure: a net that passed the gate and then fell back "
               "learned before it died; one that never passed it failed to learn at that rate.",
               lambda: band_lines(accuracy, x="step", y="accuracy", hue="run", col="condition",
                                  title="Validation accuracy", xlabel="training step", ylabel="validation accuracy",
                                  hlines={"chance": chance, "gate": gate}, sharey=True)),
    ]
    notes = [f"died: last window's dead fraction > {threshold:.3f}; windows of {config['monitor_every']} steps x "
             f"{config['batch_size']} samples, BN in train mode; eval-mode: BN running statistics on "
             f"{config['n_val']} validation images", "counts are runs out of seeds; accuracy at death: the best "
             "validation accuracy before the first window above the threshold (blank: no death)"]
    return Section(
        title="Residual scaling and dying wide layers (Inception-v4, sec. 3.3)",
        text=_text({**config, "tier": mode}, runs, the_plan, claim_rows),
        tables=[Table("dead_units_summary", "Death rates over the seeded runs, per condition and arm", summary, notes,
                      columns=SUMMARY_COLUMNS),
                Table("dead_units_frontier", "Stability frontier of the phase sweep: the largest rate of the ladder "
                      "at which each arm trained stably (one tuning seed)", frontier,
                      ["largest stable lr blank: the arm trained stably at no rate of the ladder"],
                      columns=FRONTIER_COLUMNS),
                Table("dead_units_runs", "Every run (tuning and seeded)", per_run, inline=False),
                Table("dead_units_curves", "Every logged step of every run", steps, inline=False)],
        figures=figures,
        verdict="; ".join(f"{c.claim}: {c.verdict.word}" for c in claim_rows),
        claims=claim_rows,
    )
