"""Residual connections speed up training (Szegedy, Ioffe, Vanhoucke, Alemi, "Inception-v4, Inception-ResNet and
the Impact of Residual Connections on Learning", 2016, sec. 5 and Figs. 21-26).

The claim: "training with residual connections accelerates the training of Inception networks significantly"
(abstract); Inception-ResNet-v1 against Inception-v3 and Inception-ResNet-v2 against Inception-v4, networks
of about the same cost, reach a given error in fewer epochs, and end at about the same accuracy (Figs. 21-26).

Arms, per variant (``v1``: Inception-ResNet-v1 blocks; ``v2``: Inception-ResNet-v2 blocks):

- ``residual``: the Inception-ResNet of the paper's Fig. 15 (``inception_resnet_v1_paper`` /
  ``inception_resnet_v2_paper``) at ``block_counts`` A/B/C blocks, residual scales 0.17/0.10/0.20;
- ``no_shortcut``: the same network with ``residual=False`` (every block computes ``relu(project(concat))``): the
  same layers, parameters and MACs, so the only difference is the shortcut: the exact same-cost control;
- ``inception``: the paper's non-residual counterpart (``inception_v3`` for v1, ``inception_v4`` for v2) at the
  same ``width_mult``; those builders have no depth knob, so this arm keeps its full depth and its own cost
  (the table reports both arms' MACs).

All arms train with the same budget (steps, batch, optimiser, learning rate, data) over several seeds. Measured:
training loss and accuracy and validation accuracy against steps, wall seconds and the process's CPU seconds
(one thread: CPU time is the cost on a shared machine); steps to a target validation accuracy with the spread
over seeds. A run that never reaches the target counts as the budget (a lower bound, which favours it).

``run(config) -> DataFrame`` gives one row per point and logged step (``split`` "train" or "val");
:func:`per_seed` one row per point; :func:`summarise` one row per arm; :func:`verdict` the one-line answer.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from analysis.experiments.runner import CPU_QUICK, GPU_FULL, check_config, run_points, threads, train_point
from analysis.experiments.spread_rule import (
    DOES_NOT_SHOW,
    SHOWS,
    auto_target,
    censored_steps,
    compare,
    finite_evals,
    learned_threshold,
    run_outcome,
)
from analysis.instruments.counting import count_model, create_model_for_counting, totals
from inception_models import create_model

__all__ = ["CONFIGS", "VARIANTS", "ARMS", "RESULT_COLUMNS", "PER_SEED_COLUMNS", "SUMMARY_COLUMNS", "make_points",
           "run_point", "run", "resolve_target", "per_seed", "summarise", "verdict"]

NAME = "residual_speedup"

# The paper's pairs of about equal cost (sec. 3): Inception-ResNet-v1 ~ Inception-v3, Inception-ResNet-v2 ~ v4.
VARIANTS: dict[str, dict[str, str]] = {
    "v1": {"residual": "inception_resnet_v1_paper", "inception": "inception_v3"},
    "v2": {"residual": "inception_resnet_v2_paper", "inception": "inception_v4"},
}
ARMS = ("residual", "no_shortcut", "inception")
ARM_LABELS = {"residual": "Inception-ResNet", "no_shortcut": "same, no shortcut", "inception": "Inception (paper pair)"}
# The x axes "against time" can take: the run's process CPU seconds (one-thread CPU runs on a shared machine:
# the cost, free of the load) or the trainer's wall seconds (GPU runs, where CPU time measures nothing).
TIME_AXES = {"cpu_s": "CPU seconds (the run's one-thread process)", "time": "wall seconds (trainer clock)"}

CONFIGS: dict[str, dict[str, Any]] = {
    # 2 CPU cores, minutes: v2 blocks only (not v1), one A/B/C block each, 1/8 width (165k parameters), 75 px
    # (the smallest input; 1x1 last grid), the residual net against the same net without shortcuts (identical
    # cost), 3 seeds = 6 runs of 600 SGD steps at one thread each, two workers. lr: at 0.01, 300 steps gave
    # residual 20% and no shortcut 12% validation accuracy; at 0.03, 400 steps gave 31% and 12%. Measured on the
    # shared machine: 262 CPU-s for the 6 runs (0.065 CPU-s per step, evaluations included), about 135 s on 2
    # idle cores. The paper's Inception-v4 arm is left out: without a depth knob it costs 4x per step here.
    "quick": dict(
        variants=("v2",),
        arms=("residual", "no_shortcut"),
        block_counts=(1, 1, 1),
        width_mult=0.125,
        image_size=75,
        drop_rate=0.0,
        seed=0,
        seeds=3,
        n_train=4000,
        n_val=500,
        steps=600,
        batch_size=32,
        optimizer="sgd",
        lr=0.03,
        momentum=0.9,
        weight_decay=0.0,
        schedule="constant",
        log_every=10,
        eval_every=50,
        target=None,
        target_fraction=0.9,
        count_macs=True,
        time_axis="cpu_s",
        **CPU_QUICK,
    ),
    # A GPU: both pairs with all three arms at the paper's depth (5/10/5 blocks), half width, 139 px, the
    # paper's RMSProp (decay 0.9, eps 1.0) at lr 0.045, 3 seeds, 5,000 steps. Not run in this session (no GPU).
    "full": dict(
        variants=("v1", "v2"),
        arms=ARMS,
        block_counts=(5, 10, 5),
        width_mult=0.5,
        image_size=139,
        drop_rate=0.2,
        seed=0,
        seeds=3,
        n_train=10_000,
        n_val=2_000,
        steps=5_000,
        batch_size=64,
        optimizer="rmsprop",
        lr=0.045,
        momentum=0.9,
        weight_decay=4e-5,
        schedule="constant",
        log_every=50,
        eval_every=250,
        target=None,
        target_fraction=0.9,
        count_macs=True,
        time_axis="time",
        **GPU_FULL,
    ),
}

RESULT_COLUMNS = ["variant", "arm", "model", "seed", "params", "gmacs", "split", "step", "loss", "accuracy",
                  "time", "cpu_s", "diverged", "diverged_step"]
_NUMERIC = ["seed", "params", "gmacs", "step", "loss", "accuracy", "time", "cpu_s", "diverged_step"]
PER_SEED_COLUMNS = ["variant", "arm", "seed", "params", "gmacs", "target", "budget", "steps_to_target", "reached",
                    "time_to_target", "final_val_accuracy", "best_val_accuracy", "final_train_loss",
                    "time_per_step", "diverged", "diverged_step"]
SUMMARY_COLUMNS = ["variant", "arm", "seeds", "reached", "steps_to_target_mean", "steps_to_target_min",
                   "steps_to_target_max", "time_to_target_mean", "final_val_accuracy_mean",
                   "final_val_accuracy_min", "final_val_accuracy_max", "final_train_loss_mean", "gmacs",
                   "params"]

_POINT_KEYS = ("block_counts", "width_mult", "image_size", "drop_rate", "n_train", "n_val", "steps", "batch_size",
               "optimizer", "lr", "momentum", "weight_decay", "schedule", "log_every", "eval_every", "count_macs",
               "device", "threads")


def _check_config(config: dict[str, Any]) -> None:
    check_config(NAME, config, CONFIGS["quick"])
    unknown = [v for v in config["variants"] if v not in VARIANTS]
    if unknown or not config["variants"]:
        raise ValueError(f"variants must be a non-empty subset of {sorted(VARIANTS)}, got {list(config['variants'])}")
    arms = list(config["arms"])
    if "residual" not in arms or len(arms) < 2 or any(a not in ARMS for a in arms):
        raise ValueError(f"arms must hold 'residual' and at least one of 'no_shortcut', 'inception', got {arms}")
    if config["image_size"] < 75:
        raise ValueError(f"image_size {config['image_size']} is below 75 px, the smallest input Inception-ResNet "
                         "and Inception-v3/v4 take; use 75 or more")
    if config["eval_every"] is None or config["eval_every"] % config["log_every"]:
        raise ValueError(f"eval_every ({config['eval_every']}) must be a multiple of log_every "
                         f"({config['log_every']}): steps to target are read off the validation curve")
    if config["target"] is not None and not 0.0 < float(config["target"]) < 1.0:
        raise ValueError(f"target must be an accuracy in (0, 1) or None (automatic), got {config['target']}")
    if config["time_axis"] not in TIME_AXES:
        raise ValueError(f"time_axis={config['time_axis']!r} is not supported; use one of {sorted(TIME_AXES)}")


def make_points(config: dict[str, Any]) -> list[dict[str, Any]]:
    """The sweep points: variant x arm x seed."""
    _check_config(config)
    common = {k: config[k] for k in _POINT_KEYS}
    common["block_counts"] = list(config["block_counts"])
    points = []
    for variant in config["variants"]:
        for arm in config["arms"]:
            model = VARIANTS[variant]["inception" if arm == "inception" else "residual"]
            for k in range(int(config["seeds"])):
                points.append({**common, "variant": variant, "arm": arm, "model": model,
                               "seed": int(config["seed"]) + k})
    return points


def _knobs(point: dict[str, Any]) -> dict[str, Any]:
    knobs: dict[str, Any] = dict(num_classes=10, width_mult=point["width_mult"], drop_rate=point["drop_rate"])
    if point["arm"] != "inception":
        knobs.update(block_counts=tuple(point["block_counts"]), residual=point["arm"] == "residual")
    return knobs


def _cost(point: dict[str, Any]) -> tuple[int, float]:
    model = create_model_for_counting(point["model"], **_knobs(point))
    counted = totals(count_model(model, input_size=int(point["image_size"])))
    return counted["params"], counted["macs"] / 1e9


def run_point(point: dict[str, Any]) -> pd.DataFrame:
    """Train one (variant, arm, seed); return its logged train and val rows (:data:`RESULT_COLUMNS`)."""
    with threads(int(point["threads"])):
        torch.manual_seed(point["seed"])
        model = create_model(point["model"], **_knobs(point))
        params = sum(p.numel() for p in model.parameters())
        gmacs = _cost(point)[1] if point["count_macs"] else math.nan
        outcome = train_point(point, model)
    frame = outcome.curve(params=params, gmacs=gmacs,
                          **{key: point[key] for key in ("variant", "arm", "model", "seed")})
    # A validation row takes the CPU time of the training row logged at the same step.
    cpu = frame[frame["split"] == "train"].set_index("step")["cpu_s"]
    is_val = frame["split"] == "val"
    frame.loc[is_val, "cpu_s"] = frame.loc[is_val, "step"].map(cpu).to_numpy()
    return frame.reindex(columns=RESULT_COLUMNS)


def run(config: dict[str, Any], *, results_dir: str | Path | None = None, progress: bool = True) -> pd.DataFrame:
    """Train every (variant, arm, seed) of ``config`` (resumable in ``results_dir``) and return ``point_id`` +
    :data:`RESULT_COLUMNS`, one row per point and logged step (train) or evaluation (val)."""
    return run_points(make_points(config), run_point, results_dir, workers=int(config["workers"]),
                      isolate=bool(config["isolate"]), progress=progress, desc=NAME,
                      columns=RESULT_COLUMNS, numeric=_NUMERIC, flags=["diverged"])


def resolve_target(results: pd.DataFrame, config: dict[str, Any]) -> float:
    """The target validation accuracy: ``config["target"]`` when given; otherwise ``target_fraction`` x the mean
    best validation accuracy of the weakest arm (the lowest such mean), but at least chance + 3 standard errors
    (:func:`analysis.experiments.spread_rule.auto_target`): every arm gets about there, so the question is who gets
    there first, the BN paper's way of asking."""
    if config["target"] is not None:
        return float(config["target"])
    val = finite_evals(results[results["split"] == "val"])
    if val.empty:
        return learned_threshold(int(config["n_val"]))
    best = val.groupby(["variant", "arm", "seed"], sort=False)["accuracy"].max().reset_index()
    weakest = best.groupby(["variant", "arm"], sort=False)["accuracy"].mean().idxmin()
    reference = best.set_index(["variant", "arm"]).loc[[weakest], "accuracy"]
    return auto_target(reference.tolist(), fraction=float(config["target_fraction"]),
                       n_val=int(config["n_val"]))


def per_seed(results: pd.DataFrame, target: float, budget: int, time_axis: str = "cpu_s") -> pd.DataFrame:
    """One row per (variant, arm, seed): steps to ``target`` validation accuracy (NaN and ``reached`` False if
    never within ``budget`` steps) and the time to it on ``time_axis`` (:data:`TIME_AXES`), final and best
    validation accuracy, last training loss, time per step, divergence."""
    rows = []
    for (variant, arm, seed), grp in results.groupby(["variant", "arm", "seed"], sort=False):
        outcome = run_outcome(grp, target)
        steps = outcome["steps_to_target"]
        val = finite_evals(grp[grp["split"] == "val"])
        time_at = val.loc[val["step"] == steps, time_axis] if not math.isnan(steps) else pd.Series(dtype=float)
        last = grp[grp["split"] == "train"].sort_values("step").dropna(subset=[time_axis]).tail(1)
        rows.append({
            "variant": variant, "arm": arm, "seed": int(seed), "params": grp["params"].iloc[0],
            "gmacs": grp["gmacs"].iloc[0], "target": target, "budget": int(budget), **outcome,
            "time_to_target": float(time_at.iloc[0]) if len(time_at) else math.nan,
            "time_per_step": float(last[time_axis].iloc[0] / last["step"].iloc[0]) if len(last) else math.nan,
            "diverged": bool(grp["diverged"].iloc[0]),
            "diverged_step": grp["diverged_step"].iloc[0],
        })
    return pd.DataFrame(rows, columns=PER_SEED_COLUMNS)


def summarise(seeds: pd.DataFrame) -> pd.DataFrame:
    """One row per (variant, arm) of a :func:`per_seed` table: how many seeds reached the target, steps to it
    (mean, min, max over the seeds that did), time to it (on the per-seed table's clock), final validation
    accuracy and training loss."""
    rows = []
    for (variant, arm), grp in seeds.groupby(["variant", "arm"], sort=False):
        hit = grp[grp["reached"]]
        rows.append({
            "variant": variant, "arm": arm, "seeds": len(grp), "reached": int(grp["reached"].sum()),
            "steps_to_target_mean": hit["steps_to_target"].mean(), "steps_to_target_min": hit["steps_to_target"].min(),
            "steps_to_target_max": hit["steps_to_target"].max(), "time_to_target_mean": hit["time_to_target"].mean(),
            "final_val_accuracy_mean": grp["final_val_accuracy"].mean(),
            "final_val_accuracy_min": grp["final_val_accuracy"].min(),
            "final_val_accuracy_max": grp["final_val_accuracy"].max(),
            "final_train_loss_mean": grp["final_train_loss"].mean(), "gmacs": grp["gmacs"].iloc[0],
            "params": grp["params"].iloc[0]})
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def verdict(seeds: pd.DataFrame, *, budget: int, n_val: int) -> str:
    """The answer from a :func:`per_seed` table: does the residual arm reach the target in fewer steps than the
    non-residual one? The headline compares against the paper's counterpart (``inception``) when it was run,
    else against ``no_shortcut``; with several variants it is "shows" only if every variant shows, else the first
    inconclusive reason, else "does not show". Every comparison of every variant follows, each with the final
    validation accuracy compared too (the same speed seen at a fixed budget). A run that never reached the target
    counts as ``budget`` steps. Residual nets that did not learn beyond chance make it inconclusive."""
    if seeds.empty:
        raise ValueError("verdict needs at least one per-seed row")
    threshold = learned_threshold(n_val)
    parts, words = [], []
    for variant, grp in seeds.groupby("variant", sort=False):
        res = grp[grp["arm"] == "residual"]
        others = [a for a in ("inception", "no_shortcut") if a in set(grp["arm"])]
        if res.empty or not others:
            parts.append(f"{variant}: lacks the residual arm or a non-residual one")
            words.append("inconclusive: the sweep lacks an arm")
            continue
        if not res["best_val_accuracy"].mean() > threshold:
            parts.append(f"{variant}: the residual net did not learn beyond chance (best validation accuracy "
                         f"{res['best_val_accuracy'].mean():.3f}, chance + 3 SE {threshold:.3f})")
            words.append("inconclusive: the networks did not learn beyond chance")
            continue
        if not grp["reached"].any():
            parts.append(f"{variant}: no run reached the target {grp['target'].iloc[0]:.3f} in {budget} steps")
            words.append("inconclusive: no run reached the target")
            continue
        for i, other in enumerate(others):
            arm = grp[grp["arm"] == other]
            cmp = compare([censored_steps(s, budget) for s in res["steps_to_target"]],
                          [censored_steps(s, budget) for s in arm["steps_to_target"]],
                          higher_is_better=False)
            final = compare(res["final_val_accuracy"], arm["final_val_accuracy"])
            reached = f"reached {int(res['reached'].sum())}/{len(res)} vs {int(arm['reached'].sum())}/{len(arm)}"
            parts.append(f"{variant} vs {ARM_LABELS[other]}: {cmp.word}: "
                         + cmp.describe("steps to target", fmt=".0f") + f", {reached}; higher accuracy at the end of "
                         f"the budget: {final.word}: " + final.describe("final validation accuracy"))
            if i == 0:
                words.append(cmp.word)
    head = words[0] if len(set(words)) == 1 else (
        SHOWS if all(w == SHOWS for w in words) else
        next((w for w in words if w.startswith("inconclusive")), DOES_NOT_SHOW))
    target = float(seeds["target"].iloc[0])
    return f"{head} (target validation accuracy {target:.3f}; " + "; ".join(parts) + ")"
