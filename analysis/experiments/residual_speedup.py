"""Residual connections speed up training (Szegedy, Ioffe, Vanhoucke, Alemi, "Inception-v4, Inception-ResNet and
the Impact of Residual Connections on Learning", AAAI 2017, sec. 5 and Figs. 21-26).

The claim: "training with residual connections accelerates the training of Inception networks significantly"
(abstract): Inception-ResNet-v1 against Inception-v3, and Inception-ResNet-v2 against Inception-v4, networks
of about the same cost (sec. 3), reach a given error in fewer epochs and end at about the same accuracy.

The design (issue 17.3), under the verdict protocol (:mod:`analysis.experiments.verdict`). Per pair
(:data:`PAIRS`: ``v1`` and ``v2``), the arms (:data:`ARM_KINDS`):

- ``residual``: the Inception-ResNet of the paper's Fig. 15 (``inception_resnet_v1_paper`` /
  ``inception_resnet_v2_paper``), at the paper's depth (5 Inception-ResNet-A, 10 -B, 5 -C blocks) unless
  ``block_counts`` says otherwise: deep enough that shortcuts can matter;
- ``inception``: the paper's non-residual counterpart (``inception_v3`` for v1, ``inception_v4`` for v2) at the
  same width: Inception-v3/v4 blocks of about the same cost (at width 1/8 and 75 px: v1 0.0037 GMACs and 335k
  parameters vs v3 0.0034 GMACs and 347k; v2 0.0047 and 463k vs v4 0.0070 and 652k); the parameters and MACs,
  counted by fvcore, stand beside every result;
- ``no_shortcut`` (optional): the Inception-ResNet with ``residual=False``, the same layers, parameters and MACs
  without the shortcut, the exact same-cost control.

Every arm gets the same tuning budget (``lrs``, judged on a held-out split by the area under the validation
curve: a speed claim), then ``seeds`` paired seeds at its rate (same data order; the arms copy the residual net's
initial weights wherever name and shape match). Speed is measured two ways, both free of censoring: the area
under the validation-accuracy curve against **steps** (the paper's axis, the claim's measure) and against the
run's **CPU seconds** (the cost; one-thread processes, so the load of a shared machine does not enter), up to the
CPU time in which the costlier arm of the seed does the whole budget. The steps and the CPU seconds to the target
accuracy are given as "reached in k/n seeds" with the Kaplan-Meier median, never with the budget put in.

``run(config) -> DataFrame`` gives every logged row of every run; :func:`per_run` one row per run;
:func:`arm_table` one row per arm; :func:`comparisons` the verdicts; :func:`claims` the rows of ``claims.csv``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.experiments.arms import Arm, run_arms, summarise_runs
from analysis.experiments.runner import CPU_QUICK, GPU_FULL, check_config, num_classes, threads, train_point
from analysis.experiments.verdict import (
    NOT_TESTED,
    Claim,
    Verdict,
    compare_arms,
    curve_area,
    km_median,
    reached,
    steps_to_target,
)
from analysis.instruments.counting import count_model, create_model_for_counting, totals

__all__ = ["CONFIGS", "NAME", "PAIRS", "ARM_KINDS", "PAPER", "RUN_FIELDS", "arm_name", "arm_label", "make_arms",
           "run_point", "run", "per_run", "arm_table", "comparisons", "claims"]

NAME = "residual_speedup"
PAPER = "Szegedy et al. 2017 (Inception-v4 paper), sec. 5, Figs. 21-26"
# The paper's pairs of about equal cost (sec. 3): Inception-ResNet-v1 ~ Inception-v3, Inception-ResNet-v2 ~ v4.
PAIRS: dict[str, dict[str, str]] = {
    "v1": {"residual": "inception_resnet_v1_paper", "inception": "inception_v3",
           "residual_label": "Inception-ResNet-v1", "inception_label": "Inception-v3"},
    "v2": {"residual": "inception_resnet_v2_paper", "inception": "inception_v4",
           "residual_label": "Inception-ResNet-v2", "inception_label": "Inception-v4"},
}
ARM_KINDS = ("residual", "inception", "no_shortcut")
RUN_FIELDS = ("stage", "arm", "seed", "lr", "steps", "difficulty")

_RECIPE = dict(pairs=("v1", "v2"), kinds=("residual", "inception"), block_counts=None, width_mult=0.125,
               image_size=75, drop_rate=0.0, n_train=4000, optimizer="sgd", momentum=0.9, weight_decay=0.0,
               schedule="constant", warmup_steps=0, batch_size=32, tune_metric="curve_area", target_fraction=0.9,
               count_macs=True, seed=0)

CONFIGS: dict[str, dict[str, Any]] = {
    # A smoke test (its verdicts are not evidence): the standard tier's nets, one rate (no tuning), 2 seeds of 60
    # steps: 4 runs at ~0.07 CPU s per step plus ~5 s of data, counting and init each: ~40 CPU s.
    "quick": dict(
        _RECIPE,
        pairs=("v2",),
        kinds=("residual", "no_shortcut"),
        block_counts=(2, 2, 2),
        difficulty="default",
        lrs=(0.03,),
        seeds=2,
        n_train=500,
        n_val=200,
        steps=60,
        log_every=10,
        eval_every=20,
        **CPU_QUICK,
    ),
    # Decides the claim on 2 CPU cores: Inception-ResNet-v2 blocks, two of each stage (A, B, C: more than one, so
    # shortcuts can matter), against the same net without its shortcuts (the exact same-cost control), width 1/8,
    # 75 px. The paper's pairs do not fit: Inception-v3 at this width stayed at chance for 600 steps at 0.03 and
    # 0.1 (calibration, one seed each), Inception-ResNet-v1 at the paper's depth reached 19%; Inception-v4 costs
    # 1.5x Inception-ResNet-v2. Calibration of this config (one seed at 0.03, loaded shared machine): the residual
    # net 45% at step 400, 55% at 600 (best 80%), the no-shortcut net at chance throughout; 0.065 CPU s per step
    # with evaluations for both. 3 rates of tuning per arm, 5 paired seeds of 600 steps. Cost: 16 runs x (600 x
    # 0.065 + ~8 s of data, counting and init) ~= 750 CPU s, ~6 min on 2 idle cores.
    "standard": dict(
        _RECIPE,
        pairs=("v2",),
        kinds=("residual", "no_shortcut"),
        block_counts=(2, 2, 2),
        difficulty="default",
        lrs=(0.01, 0.03, 0.1),
        seeds=5,
        n_train=2000,
        n_val=400,
        steps=600,
        log_every=10,
        eval_every=50,
        **CPU_QUICK,
    ),
    # A GPU: both pairs with the same-cost no-shortcut control too, half width, 139 px, the paper's RMSProp
    # (decay 0.9, eps 1.0), 10 seeds, 5,000 steps. Not run in this session (no GPU).
    "full": dict(
        _RECIPE,
        kinds=ARM_KINDS,
        width_mult=0.5,
        image_size=139,
        drop_rate=0.2,
        difficulty="harder",
        lrs=(0.01, 0.02, 0.045, 0.1),
        seeds=10,
        n_train=20_000,
        n_val=2_000,
        steps=5_000,
        batch_size=64,
        optimizer="rmsprop",
        weight_decay=4e-5,
        log_every=50,
        eval_every=250,
        **GPU_FULL,
    ),
}

_COMMON_KEYS = ("n_train", "n_val", "image_size", "difficulty", "steps", "batch_size", "optimizer", "momentum",
                "weight_decay", "schedule", "warmup_steps", "log_every", "eval_every", "count_macs", "device",
                "threads")


def _check_config(config: dict[str, Any]) -> None:
    check_config(NAME, config, CONFIGS["quick"])
    pairs, kinds = list(config["pairs"]), list(config["kinds"])
    if not pairs or any(p not in PAIRS for p in pairs):
        raise ValueError(f"pairs must be a non-empty subset of {sorted(PAIRS)}, got {pairs}")
    if "residual" not in kinds or len(kinds) < 2 or any(k not in ARM_KINDS for k in kinds):
        raise ValueError(f"kinds must hold 'residual' and at least one of 'inception', 'no_shortcut', got {kinds}")
    if config["image_size"] < 75:
        raise ValueError(f"image_size {config['image_size']} is below 75 px, the smallest input Inception-ResNet "
                         "and Inception-v3/v4 take; use 75 or more")
    if not config["eval_every"] or config["eval_every"] > config["steps"] or config["eval_every"] % config["log_every"]:
        raise ValueError(f"eval_every ({config['eval_every']}) must be a multiple of log_every ({config['log_every']}) "
                         f"within the budget ({config['steps']} steps): speed is read off the validation curve, and "
                         "an evaluation takes the CPU time of the training row logged at its step")
    if not 0.0 < float(config["target_fraction"]) <= 1.0:
        raise ValueError(f"target_fraction must be in (0, 1], got {config['target_fraction']}")


def arm_name(pair: str, kind: str) -> str:
    """The arm's name in the results: ``"<pair>_<kind>"``, e.g. ``"v1_inception"``."""
    return f"{pair}_{kind}"


def arm_label(name: str) -> str:
    """The arm's name for people: "Inception-ResNet-v1", "Inception-v3", "Inception-ResNet-v1, no shortcut"."""
    pair, kind = name.split("_", 1)
    if kind == "no_shortcut":
        return f"{PAIRS[pair]['residual_label']}, no shortcut"
    return PAIRS[pair][f"{kind}_label"]


def make_arms(config: dict[str, Any]) -> list[Arm]:
    """Per pair, the residual net and the non-residual arms of ``kinds``, sharing the residual net's initial
    weights of each seed wherever name and shape match (all of them for ``no_shortcut``)."""
    arms = []
    for pair in config["pairs"]:
        common = {"width_mult": config["width_mult"], "drop_rate": config["drop_rate"]}
        depth = {} if config["block_counts"] is None else {"block_counts": list(config["block_counts"])}
        residual = arm_name(pair, "residual")
        for kind in config["kinds"]:
            if kind == "residual":
                arms.append(Arm(residual, PAIRS[pair]["residual"], {**common, **depth}))
            elif kind == "no_shortcut":
                arms.append(Arm(arm_name(pair, kind), PAIRS[pair]["residual"], {**common, **depth, "residual": False},
                                share_with=residual))
            else:
                arms.append(Arm(arm_name(pair, kind), PAIRS[pair]["inception"], common, share_with=residual))
    return arms


def _gmacs(point: dict[str, Any]) -> float:
    model = create_model_for_counting(point["model"], num_classes=num_classes(point), **point["knobs"])
    return totals(count_model(model, input_size=int(point["image_size"])))["macs"] / 1e9


def run_point(point: dict[str, Any]) -> pd.DataFrame:
    """Train one point (an arm at a rate and seed); its logged train and val rows with :data:`RUN_FIELDS`, the
    network's ``params`` and ``gmacs`` (fvcore, at the training input), and on every val row the CPU seconds of
    the training row logged at the same step (the run's CPU time when it was evaluated)."""
    with threads(int(point["threads"])):
        outcome = train_point(point)
        gmacs = _gmacs(point) if point["count_macs"] else math.nan
    frame = outcome.curve(params=outcome.params, gmacs=gmacs, **{key: point[key] for key in RUN_FIELDS})
    cpu = frame[frame["split"] == "train"].drop_duplicates("step", keep="last").set_index("step")["cpu_s"]
    is_val = frame["split"] == "val"
    frame.loc[is_val, "cpu_s"] = frame.loc[is_val, "step"].map(cpu).to_numpy()
    return frame


def run(config: dict[str, Any], *, results_dir: str | Path | None = None, progress: bool = True) -> pd.DataFrame:
    """Tune every arm, then train the paired seeds (resumable in ``results_dir``): every logged row (``split``
    train/val) of every run, with ``point_id``, its point's :data:`RUN_FIELDS`, ``params`` and ``gmacs``."""
    _check_config(config)
    common = {key: config[key] for key in _COMMON_KEYS}
    results, _ = run_arms(make_arms(config), config, common, run_point, results_dir, progress=progress, desc=NAME)
    return results


def _finite_val(results: pd.DataFrame) -> dict[str, pd.DataFrame]:
    val = results[results["split"] == "val"]
    val = val[np.isfinite(pd.to_numeric(val["loss"], errors="coerce").to_numpy(float))]
    return dict(tuple(val.groupby("point_id", sort=False)))


def per_run(results: pd.DataFrame, config: dict[str, Any]) -> pd.DataFrame:
    """One row per run (:func:`analysis.experiments.arms.summarise_runs`) plus ``pair``, ``kind``, ``label``,
    ``chance`` (the accuracy of a guess), ``params``, ``gmacs``, ``cpu_per_step`` (CPU seconds per training step,
    evaluations included), the pair's ``target`` (``target_fraction`` x the lower of its arms' mean best validation
    accuracy, at least the gate), and the ``steps_to_target`` and ``cpu_to_target`` (NaN: not reached within the budget; censored)."""
    runs = summarise_runs(results)
    first = results.drop_duplicates("point_id").set_index("point_id")
    runs["pair"] = runs["arm"].str.split("_", n=1).str[0]
    runs["kind"] = runs["arm"].str.split("_", n=1).str[1]
    runs["label"] = runs["arm"].map(arm_label)
    runs["chance"] = [1.0 / num_classes(first.loc[pid]) for pid in runs["point_id"]]
    runs["params"] = runs["point_id"].map(first["params"]).astype(float)
    runs["gmacs"] = runs["point_id"].map(first["gmacs"]).astype(float)
    last_train = results[results["split"] == "train"].sort_values("step").groupby("point_id").tail(1)
    per_step = (last_train.set_index("point_id")["cpu_s"] / last_train.set_index("point_id")["step"].clip(lower=1))
    runs["cpu_per_step"] = runs["point_id"].map(per_step)
    seeded = runs[runs["stage"] == "seed"]
    best = seeded.groupby(["pair", "arm"])["best_val_accuracy"].mean().groupby("pair").min()
    runs["target"] = [max(gate, float(config["target_fraction"]) * best.get(pair, math.nan))
                      if pair in best else gate for pair, gate in zip(runs["pair"], runs["gate"])]
    curves = _finite_val(results)
    for column, axis in (("steps_to_target", "step"), ("cpu_to_target", "cpu_s")):
        runs[column] = [steps_to_target(curves[pid], target, step=axis) if pid in curves else math.nan
                        for pid, target in zip(runs["point_id"], runs["target"])]
    return runs


def arm_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per arm of the seed runs: its cost (parameters, GMACs, CPU seconds per step), tuned rate, the runs
    that passed the gate, mean curve area and final validation accuracy (with their standard deviations over
    seeds), and the time to the pair's target with
    censoring ("reached in k/n seeds"; Kaplan-Meier medians in steps and CPU seconds, inf: fewer than half)."""
    rows = []
    for arm, cell in runs[runs["stage"] == "seed"].groupby("arm", sort=False):
        budget = float(cell["steps"].iloc[0])
        rows.append({
            "pair": cell["pair"].iloc[0], "arm": cell["label"].iloc[0], "params": int(cell["params"].iloc[0]),
            "GMACs": cell["gmacs"].iloc[0], "CPU s per step": cell["cpu_per_step"].mean(), "lr": cell["lr"].iloc[0],
            "learned": f"{int(cell['learned'].sum())}/{len(cell)}",
            "curve area (mean val. accuracy)": cell["curve_area"].mean(), "curve area sd": cell["curve_area"].std(),
            "final val. accuracy": cell["final_val_accuracy"].mean(),
            "final val. accuracy sd": cell["final_val_accuracy"].std(), "target": cell["target"].iloc[0],
            "target reached": reached(cell["steps_to_target"]),
            "KM median steps": km_median(cell["steps_to_target"], budget),
            "KM median CPU s": km_median(cell["cpu_to_target"], budget * float(cell["cpu_per_step"].max())),
        })
    return pd.DataFrame(rows)


def _cpu_area(runs: pd.DataFrame, results: pd.DataFrame) -> pd.Series:
    """Per run of a two-arm frame, the mean validation accuracy over CPU seconds ``[0, T]``, ``T`` the CPU time in
    which the costlier arm of the same seed does the whole budget (CPU seconds per step x steps): the cheaper
    arm's curve is held at its final accuracy after its last step, a diverged run's at chance."""
    curves = _finite_val(results)
    cost = runs["cpu_per_step"] * runs["steps"]
    horizon = cost.groupby(runs["seed"]).transform("max")
    areas = []
    for (pid, row), budget in zip(runs.iterrows(), horizon):
        chance = float(row["chance"])
        curve = curves.get(row["point_id"], pd.DataFrame({"cpu_s": [], "accuracy": []}))[["cpu_s", "accuracy"]]
        if row["diverged"]:
            curve = pd.concat([curve, pd.DataFrame({"cpu_s": [row["cpu_per_step"] * row["steps"]],
                                                    "accuracy": [chance]})], ignore_index=True)
        areas.append(curve_area(curve, float(budget), step="cpu_s", start_value=chance))
    return pd.Series(areas, index=runs.index)


def comparisons(runs: pd.DataFrame, results: pd.DataFrame) -> list[tuple[str, str, str, Verdict]]:
    """Every paired comparison, ``(pair, other arm's label, axis, verdict)``: per pair, the residual net against
    each non-residual arm by the curve area against steps (the claim's measure) and against CPU seconds.
    Positive: the residual net is faster."""
    seeded = runs[runs["stage"] == "seed"]
    out = []
    for pair in dict.fromkeys(seeded["pair"]):
        residual = seeded[seeded["arm"] == arm_name(pair, "residual")]
        for kind in ("inception", "no_shortcut"):
            other = seeded[seeded["arm"] == arm_name(pair, kind)]
            if other.empty:
                continue
            if residual.empty:
                out.append((pair, arm_label(arm_name(pair, kind)), "steps",
                            Verdict(NOT_TESTED, None, "0/0", "the residual arm has no seed runs")))
                continue
            both = pd.concat([residual, other])
            both = both.assign(cpu_area=_cpu_area(both, results))
            for axis, value in (("steps", "curve_area"), ("CPU seconds", "cpu_area")):
                verdict = compare_arms(both, arm="label", treatment=residual["label"].iloc[0],
                                       control=other["label"].iloc[0], value=value)
                out.append((pair, other["label"].iloc[0], axis, verdict))
    return out


def claims(runs: pd.DataFrame, results: pd.DataFrame) -> list[Claim]:
    """The rows of ``claims.csv``: per pair and non-residual arm, "residual connections speed up training" by
    the curve area against steps (the paper's axis); the CPU-time comparison is in the section's table."""
    out = []
    for pair, other, axis, verdict in comparisons(runs, results):
        if axis != "steps":
            continue
        residual = PAIRS[pair]["residual_label"]
        shortcut_only = other.endswith("no shortcut")
        statement = ("Training with residual connections accelerates the training of Inception networks "
                     f"significantly: {residual} reaches a given accuracy in fewer steps than "
                     + ("the same network without its shortcuts (same layers and cost)." if shortcut_only else
                        f"{other}, a network of about the same cost."))
        out.append(Claim(f"Residual connections speed up training ({residual} vs {other})", PAPER, statement, NAME,
                         "mean validation accuracy over the run (area under the curve against steps), residual minus "
                         "non-residual", verdict))
    return out
