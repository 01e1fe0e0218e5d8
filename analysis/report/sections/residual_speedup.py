"""The report's section on residual connections speed up training (Inception-v4 paper).

It runs :mod:`analysis.experiments.residual_speedup` (resumable, under the results root)
and renders its tables, figures and verdict.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from analysis.experiments.residual_speedup import (
    ARM_LABELS,
    CONFIGS,
    NAME,
    TIME_AXES,
    VARIANTS,
    per_seed,
    resolve_target,
    run,
    summarise,
    verdict,
)
from analysis.experiments.runner import RESULTS_ROOT, default_results_dir
from analysis.report.document import Figure, Section, Table
from analysis.report.figures import band_lines

__all__ = ["section"]


def _label(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(arm=frame["arm"].map(ARM_LABELS), variant=frame["variant"].map(lambda v: f"{v} blocks"))


def _accuracy_by_step(results: pd.DataFrame, target: float) -> Any:
    val = _label(results[results["split"] == "val"])
    return band_lines(val, x="step", y="accuracy", hue="arm", col="variant", hlines={"target": target},
                      sharey=True, title="Validation accuracy",
                      ylabel="validation accuracy (mean, min-max over seeds)")


def _loss_by_step(results: pd.DataFrame) -> Any:
    train = _label(results[results["split"] == "train"])
    return band_lines(train, x="step", y="loss", hue="arm", col="variant",
                      title="Training loss", sharey=True,
                      ylabel="training loss (mean, min-max over seeds)")


def _by_time(results: pd.DataFrame, time_axis: str) -> Any:
    rows = _label(results[results["split"].isin(["train", "val"])])
    rows = rows.assign(series=rows["split"].map({"train": "training loss", "val": "validation accuracy"}),
                       value=rows["loss"].where(rows["split"] == "train", rows["accuracy"]),
                       arm=rows["arm"] + " (" + rows["variant"] + ")")
    label = TIME_AXES[time_axis]
    return band_lines(rows, x=time_axis, y="value", hue="arm", col="series", per_seed=True,
                      title=f"Against {label.split(' (')[0]}", xlabel=label, ylabel="value (one line per seed)")


def section(mode: str, seed: int, results_root: str | Path = RESULTS_ROOT) -> Section:
    """The report's section: per-arm and per-seed tables, curves against steps and CPU time, the verdict."""
    config = {**CONFIGS[mode], "seed": seed}
    results = run(config, results_dir=default_results_dir(NAME, mode, seed, results_root), progress=False)
    target = resolve_target(results, config)
    seeds = per_seed(results, target, int(config["steps"]), config["time_axis"])
    summary = summarise(seeds)
    answer = verdict(seeds, budget=int(config["steps"]), n_val=int(config["n_val"]))
    how_target = (f"fixed at {target:.3f}" if config["target"] is not None else
                  f"{config['target_fraction']:g} x the weakest arm's mean best validation accuracy, at least chance "
                  f"+ 3 SE: {target:.3f}")
    text = (
        "Inception-v4 paper: residual connections accelerate the training of Inception networks significantly "
        "(Inception-ResNet-v1 vs Inception-v3, Inception-ResNet-v2 vs Inception-v4, Figs. 21-26), at about the "
        f"same final accuracy. Here: {', '.join(config['variants'])} blocks, Inception-ResNet at "
        f"{tuple(config['block_counts'])} A/B/C blocks, width_mult {config['width_mult']}, {config['image_size']} px "
        f"synthetic shapes, arms {', '.join(ARM_LABELS[a] for a in config['arms'])}; identical budgets: "
        f"{config['steps']} steps of {config['optimizer']} (lr {config['lr']}, {config['schedule']}, batch "
        f"{config['batch_size']}, dropout {config['drop_rate']}), {config['seeds']} seeds. 'Same, no shortcut' is "
        "the same network with residual=False: identical layers, parameters and MACs. Target validation accuracy: "
        f"{how_target}; evaluated every {config['eval_every']} steps on {config['n_val']} images. A run that "
        "never reaches it counts as the whole budget (a lower bound). Time: the CPU seconds of each run's "
        "one-thread process in CPU runs (wall time on a shared machine measures the load; it is in the CSV as "
        "'time'), the trainer's wall clock in GPU runs."
    )
    if set(config["variants"]) != set(VARIANTS) or "inception" not in config["arms"]:
        text += (" Not run in this mode: " + ", ".join(
            [f"{v} blocks" for v in VARIANTS if v not in config["variants"]]
            + (["the paper's Inception-v3/v4 counterparts (their builders have no depth knob, so they cost several "
                "times more per step at this width)"] if "inception" not in config["arms"] else [])) + ".")
    return Section(
        title="Residual connections and training speed (Inception-v4 paper)",
        text=text,
        tables=[Table(NAME, "Residual vs non-residual: steps to the target and final accuracy per arm", summary,
                      [f"target validation accuracy {target:.3f}; steps_to_target over the seeds that reached it "
                       "('reached' of 'seeds'); time_to_target in " + TIME_AXES[config["time_axis"]]
                       + "; gmacs counted by fvcore at the training input"]),
                Table(f"{NAME}_seeds", "Residual vs non-residual: per seed", seeds),
                Table(f"{NAME}_curves", "Residual vs non-residual: every logged step",
                      results.drop(columns="point_id"), inline=False)],
        figures=[Figure(f"{NAME}_accuracy", "Validation accuracy against steps (mean, min-max band over seeds; dotted: "
                        "the target)", lambda: _accuracy_by_step(results, target)),
                 Figure(f"{NAME}_loss", "Training loss against steps (mean, min-max band over seeds)",
                        lambda: _loss_by_step(results)),
                 Figure(f"{NAME}_time", f"Training loss and validation accuracy against "
                        f"{TIME_AXES[config['time_axis']]}, one line per seed",
                        lambda: _by_time(results, config["time_axis"]))],
        verdict=answer,
    )
