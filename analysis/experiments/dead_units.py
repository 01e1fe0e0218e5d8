"""Residual scaling and dying wide layers (Inception-v4 paper, Szegedy et al. 2017, sec. 3.3).

The claim: "if the number of filters exceeded 1000, the residual variants started to exhibit instabilities and
the network has just 'died' early in the training, meaning that the last layer before the average pooling
started to produce only zeros after a few tens of thousands of iterations". Lowering the learning rate or an
extra batch normalisation of this layer did not help; scaling the residuals by 0.1 to 0.3 before the addition
"seemed to stabilize the training".

The nets: Inception-ResNet (the paper's blocks, ``block_counts`` A/B/C blocks, a thin body of ``width_mult``)
whose 8x8 stage and pre-pool layer are ``W`` channels wide (the model's ``final_width``), every residual scaled by
``s``; the extra-BN remedy is the model's ``prepool_bn`` (a BN before the last ReLU). Each run is watched by
:class:`~analysis.instruments.dead_units.DeadUnitAlarm`: every ``monitor_every`` steps, the fraction of pre-pool
channels that were never > 0 over that window's training forwards (BN in train mode).

Three stages, all through :func:`analysis.experiments.arms.run_arms` (resumable):

1. **Phase sweep = tuning.** Every width x scale arm, and the extra-BN arm at the claims' width ``wide``, at every
   rate of ``lrs``, one tuning seed, judged on the held-out split. Each run gets an outcome (:data:`OUTCOMES`):
   diverged, died, unstable, did not learn, or trained. One seed: the phase figure describes, it does not decide.
2. **Tuned rates.** The wide unscaled and wide scaled arms at their own best rates over paired seeds: claim 1,
   the pre-pool dead fraction (does scaling keep the layer alive where each net trains best?).
3. **The strained rate** ``r*``: the smallest rate of the ladder at which the wide unscaled net did not train
   stably in the tuning sweep. There the wide unscaled, scaled and extra-BN arms run over the same seeds, and the
   lower-rate remedy is the wide unscaled net at the best rate below ``r*``: claims 2-4, "trained stably"
   (scaling against no remedy, against the extra BN, against the lower rate).

The "died" threshold comes from the narrow nets: the largest dead fraction any window of a narrow (smallest
width) tuning run that learned showed, but at least ``dead_floor``. A run *died* when its last window's dead
fraction exceeds it; it was *unstable* when a training-batch or validation loss exceeded ``spike_factor`` x ln K
(a spike or a validation blow-up) or it diverged; it *trained stably* when its final validation accuracy passed
the learnability gate and it neither died nor was unstable.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from analysis.experiments.arms import RUN_COLUMNS, Arm, choose_rates, run_arms, summarise_runs
from analysis.experiments.runner import (
    CPU_QUICK,
    GPU_FULL,
    check_config,
    num_classes,
    tensors,
    threads,
    train_point,
)
from analysis.experiments.verdict import NOT_TESTED, Claim, Verdict, compare_arms, learnability_gate
from analysis.instruments.dead_units import DeadUnitAlarm, find_dead_units

__all__ = [
    "CONFIGS",
    "MODELS",
    "OUTCOMES",
    "Plan",
    "RUN_EXTRA_COLUMNS",
    "arm_name",
    "claims",
    "conditions",
    "death_summary",
    "death_threshold",
    "make_arms",
    "plan",
    "run",
    "run_point",
    "stability_frontier",
    "summarise",
]

NAME = "dead_units"
PAPER = "Inception-v4 (Szegedy et al. 2017), sec. 3.3"

# The variants of the paper's Fig. 15 (average pooling straight after the last Inception-ResNet-C's ReLU).
MODELS = {"v1": "inception_resnet_v1_paper", "v2": "inception_resnet_v2_paper"}

# The paper saw the deaths only above this many filters.
PAPER_WIDTH_LIMIT = 1000

# A run's outcome, in the order of precedence (a run that diverged is not also counted as dead, ...).
DIVERGED, DIED, UNSTABLE, NOT_LEARNED, TRAINED = "diverged", "died", "unstable", "did not learn", "trained"
OUTCOMES = (DIVERGED, DIED, UNSTABLE, NOT_LEARNED, TRAINED)

# The values every point carries (besides its arm, stage, rate and seed).
_COMMON_KEYS = ("n_train", "n_val", "image_size", "difficulty", "steps", "batch_size", "optimizer", "momentum",
                "weight_decay", "schedule", "warmup_steps", "eval_every", "device", "threads", "monitor_every",
                "dormant_threshold")

CONFIGS: dict[str, dict[str, Any]] = {
    # A smoke test: two widths, unscaled and x0.1, the extra BN, two rates, two seeds, 60 steps on 640 images.
    # Measured: 18 runs, ~3.2 CPU-s of training each; ~105 CPU-s in all (worker processes, imports and data
    # included), so about 55 s wall on 2 idle cores. Its verdicts are not evidence (nothing learns in 60 steps).
    "quick": dict(
        variant="v2", widths=(256, 1024), wide=1024, scales=(1.0, 0.1), scaled=0.1,
        lrs=(0.01, 0.05), seed=0, seeds=2,
        block_counts=(1, 1, 1), width_mult=0.125, image_size=75, drop_rate=0.0, difficulty="default",
        n_train=640, n_val=128, steps=60, batch_size=32, optimizer="sgd", momentum=0.9, weight_decay=0.0,
        schedule="constant", warmup_steps=0, eval_every=20, monitor_every=10, dormant_threshold=0.1,
        dead_floor=0.05, spike_factor=3.0,
        **CPU_QUICK,
    ),
    # Decides the claims. Cost, measured with one thread per run (process CPU time, evaluations and the eval-mode
    # dead pass included): 23.5 CPU-s per 400-step run at 1,024 filters (26.8 for a worker's first run, imports
    # included; the width barely matters at the 1x1 last grid). The phase sweep is (3 widths x 3 scales + the
    # extra-BN arm) x 3 rates = 30 runs; the seeded stages are 4-6 distinct (arm, rate) conditions x 5 seeds =
    # 20-30 runs (the lower rate is usually the unscaled arm's tuned rate, run once). Typically 55 runs ~ 1,300
    # CPU-s ~ 11 min wall on 2 idle cores with two one-thread workers; at most 60 runs ~ 1,410 CPU-s ~ 12 min. Calibration (tuning seed, 400 steps, SGD
    # momentum 0.9, constant rate): at lr 0.01 the 1,024-wide unscaled net does not learn (0.14, max loss 5.1)
    # and scaled x0.1 it trains (0.76, no dead channel); an earlier session measured that the unscaled wide net
    # learns at 0.005 (0.67 at 1,024, 0.28 at 2,048) and scaled x0.1 at 0.02 (1,024: 0.41). So the ladder
    # 0.005-0.02 holds the edge, r* should fall at 0.01 for 1,024 filters (above the paper's 1,000; 2,048 is in
    # the phase sweep) with 0.005 as the lower rate. Deaths appeared only at 0.05, where no net learns within
    # this budget, so that rate is left out.
    "standard": dict(
        variant="v2", widths=(256, 1024, 2048), wide=1024, scales=(1.0, 0.3, 0.1), scaled=0.1,
        lrs=(0.005, 0.01, 0.02), seed=0, seeds=5,
        block_counts=(1, 1, 1), width_mult=0.125, image_size=75, drop_rate=0.0, difficulty="default",
        n_train=4000, n_val=500, steps=400, batch_size=32, optimizer="sgd", momentum=0.9, weight_decay=0.0,
        schedule="constant", warmup_steps=0, eval_every=50, monitor_every=25, dormant_threshold=0.1,
        dead_floor=0.05, spike_factor=3.0,
        **CPU_QUICK,
    ),
    # A GPU: the width ladder at the paper's depth (5/10/5 blocks) and width, 139 px (3x3 last grid), tens of
    # thousands of steps (the paper's deaths came after "a few tens of thousands of iterations"), the scales
    # 1.0 / 0.3 / 0.1 and a wider ladder of rates. 7 x 3 x 6 + 6 = 132 tuning runs, then up to 25 seeded runs. Not
    # run in this project yet.
    "full": dict(
        variant="v2", widths=(256, 512, 768, 1024, 1280, 1536, 2048), wide=1536, scales=(1.0, 0.3, 0.1), scaled=0.1,
        lrs=(0.0025, 0.005, 0.01, 0.02, 0.045, 0.1), seed=0, seeds=5,
        block_counts=(5, 10, 5), width_mult=1.0, image_size=139, drop_rate=0.2, difficulty="hard",
        n_train=50_000, n_val=2_000, steps=30_000, batch_size=64, optimizer="sgd", momentum=0.9, weight_decay=4e-5,
        schedule="constant", warmup_steps=0, eval_every=1_000, monitor_every=250, dormant_threshold=0.1,
        dead_floor=0.05, spike_factor=3.0,
        **GPU_FULL,
    ),
}

# Per run, besides :data:`analysis.experiments.arms.RUN_COLUMNS`.
RUN_EXTRA_COLUMNS = ["width", "scale", "prepool_bn", "final_dead_fraction", "max_dead_fraction",
                     "eval_dead_fraction", "first_dead_step", "accuracy_at_death", "max_loss", "spiked", "died",
                     "unstable", "trained", "outcome"]


# ================================================================================================ the arms
def arm_name(width: int, scale: float, prepool_bn: bool = False) -> str:
    """An arm's name: ``"W1024 x0.1"``, ``"W1024 x1 +BN"``."""
    return f"W{int(width)} x{float(scale):g}" + (" +BN" if prepool_bn else "")


def _check_config(config: Mapping[str, Any]) -> None:
    check_config(NAME, config, CONFIGS["quick"])
    if config["variant"] not in MODELS:
        raise ValueError(f"unknown variant {config['variant']!r}; use one of {sorted(MODELS)}")
    widths, scales = list(config["widths"]), [float(s) for s in config["scales"]]
    if len(widths) < 2 or config["wide"] not in widths or config["wide"] == min(widths):
        raise ValueError(f"widths {widths} need a narrow width below wide={config['wide']}, and wide among them")
    if 1.0 not in scales or float(config["scaled"]) not in scales or float(config["scaled"]) == 1.0:
        raise ValueError(f"scales {scales} need 1.0 (unscaled) and scaled={config['scaled']} (below 1)")
    if config["image_size"] < 75:
        raise ValueError(f"image_size {config['image_size']} is below 75 px, the smallest input Inception-ResNet "
                         "takes; use 75 (1x1 last grid), 139 (3x3) or 299 (8x8)")
    for key in ("monitor_every", "eval_every"):
        if not 1 <= int(config[key]) <= int(config["steps"]):
            raise ValueError(f"{key} must be in [1, steps={config['steps']}], got {config[key]}")
    if not 0.0 <= float(config["dead_floor"]) < 1.0 or float(config["spike_factor"]) <= 1.0:
        raise ValueError(f"dead_floor must be in [0, 1) and spike_factor > 1, got {config['dead_floor']} and "
                         f"{config['spike_factor']}")


def make_arms(config: Mapping[str, Any]) -> list[Arm]:
    """The phase sweep's arms: every width x scale, then the extra-BN arm (unscaled) at the wide width, which
    shares the wide unscaled arm's initial weights."""
    _check_config(config)
    base = dict(block_counts=list(config["block_counts"]), width_mult=float(config["width_mult"]),
                drop_rate=float(config["drop_rate"]))
    model = MODELS[config["variant"]]
    arms = [Arm(arm_name(w, s), model, {**base, "final_width": int(w), "residual_scale": float(s)})
            for w in config["widths"] for s in config["scales"]]
    wide = int(config["wide"])
    arms.append(Arm(arm_name(wide, 1.0, True), model,
                    {**base, "final_width": wide, "residual_scale": 1.0, "prepool_bn": True},
                    share_with=arm_name(wide, 1.0)))
    return arms


def _common(config: Mapping[str, Any]) -> dict[str, Any]:
    # The trainer logs a training row every monitored step, so each dead fraction lands on a row of its own.
    return {**{k: config[k] for k in _COMMON_KEYS}, "log_every": int(config["monitor_every"])}


# ================================================================================================= one run
def run_point(point: dict[str, Any]) -> pd.DataFrame:
    """Train one point (:func:`analysis.experiments.runner.train_point`) with the pre-pool layer watched, and
    return its training and validation rows: ``dead_fraction``, ``dead_units``, ``dormant_fraction`` and
    ``zero_fraction`` on the training rows of the monitored steps (train-mode BN, the window since the last
    report), and on every row ``channels`` and the end's ``eval_dead_fraction`` (eval-mode BN on the point's
    evaluation split; NaN for a run that diverged)."""
    with threads(int(point["threads"])):
        alarm = DeadUnitAlarm(every=int(point["monitor_every"]), dormant_threshold=float(point["dormant_threshold"]))
        outcome = train_point(point, callbacks=[alarm])
        eval_dead = math.nan
        if not outcome.diverged:
            images = tensors(point["eval_split"], int(point["n_val"]), int(point["image_size"]),
                             int(point.get("data_seed", 0)), str(point.get("difficulty", "default")))[0]
            batches = [images[i:i + 128] for i in range(0, len(images), 128)]
            frame = find_dead_units(outcome.trainer.model, batches, layers="prepool", mode="eval")
            eval_dead = float(frame["dead_fraction"].iloc[0])
    columns = ("split", "step", "loss", "accuracy", "cpu_s", "dead_fraction", "dead_units", "dormant_fraction",
               "zero_fraction")
    return outcome.curve(columns, channels=int(point["knobs"]["final_width"]), eval_dead_fraction=eval_dead)


# ================================================================================================== running
def run(config: dict[str, Any], *, results_dir: str | Path | None = None, progress: bool = True) -> pd.DataFrame:
    """Run the three stages (module docstring), resumable in ``results_dir``, and return every logged row: one
    row per run and logged step (``split`` train/val), with the point's fields (``stage``, ``arm``, ``lr``,
    ``seed``, ``knobs``, ...)."""
    arms = make_arms(config)
    by_name = {arm.name: arm for arm in arms}
    common = _common(config)
    wide, scaled = int(config["wide"]), float(config["scaled"])
    unscaled_arm, scaled_arm, bn_arm = arm_name(wide, 1.0), arm_name(wide, scaled), arm_name(wide, 1.0, True)
    kwargs = dict(progress=progress, desc=NAME)
    tuned, _ = run_arms(arms, config, common, run_point, results_dir, seeded=[unscaled_arm, scaled_arm], **kwargs)
    frames = [tuned]
    the_plan = plan(summarise(tuned, config), config)
    if the_plan.strained_rate is not None:
        strained = [by_name[unscaled_arm], by_name[scaled_arm], by_name[bn_arm]]
        frames.append(run_arms(strained, {**config, "lrs": [the_plan.strained_rate]}, common, run_point,
                               results_dir, **kwargs)[0])
    if the_plan.lower_rate is not None:
        frames.append(run_arms([by_name[unscaled_arm]], {**config, "lrs": [the_plan.lower_rate]}, common,
                               run_point, results_dir, **kwargs)[0])
    results = pd.concat(frames, ignore_index=True)
    # A point run by two stages (the scaled arm's tuned rate may be the strained rate) is kept once.
    return results.drop_duplicates(subset=["point_id", "split", "step"], keep="first").reset_index(drop=True)


# ================================================================================================= per run
def _knob(knobs: Any, key: str, default: Any) -> Any:
    if isinstance(knobs, str):  # the results file stores a point's dict fields as JSON text
        knobs = json.loads(knobs)
    return (knobs or {}).get(key, default)


def _curves(run: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One run's monitored dead fractions (``step``, ``dead``) and validation accuracies (``step``, ``accuracy``)."""
    train = run[run["split"] == "train"].sort_values("step")
    dead = pd.to_numeric(train["dead_fraction"], errors="coerce") if "dead_fraction" in train else math.nan
    monitored = train.assign(dead=dead).dropna(subset=["dead"])[["step", "dead"]]
    val = run[run["split"] == "val"].sort_values("step")
    return monitored, val.assign(accuracy=pd.to_numeric(val["accuracy"], errors="coerce"))[["step", "accuracy"]]


def summarise(results: pd.DataFrame, config: Mapping[str, Any], threshold: float | None = None) -> pd.DataFrame:
    """One row per run: :data:`analysis.experiments.arms.RUN_COLUMNS` (``learned``: the best validation accuracy
    passed the gate) + :data:`RUN_EXTRA_COLUMNS`. ``threshold`` is the "died" level (default
    :func:`death_threshold` of these runs): ``died`` (the last window's dead fraction above it), ``first_dead_step``
    and ``accuracy_at_death`` (the best validation accuracy up to the first window above it), ``spiked`` (a
    training-batch or validation loss above ``spike_factor`` x ln K), ``unstable`` (spiked or diverged), ``trained``
    (final validation accuracy at or above the gate, neither died nor unstable) and ``outcome`` (the first of
    :data:`OUTCOMES` that applies). The threshold and the spike level are in ``attrs``."""
    runs = summarise_runs(results)
    if runs.empty:
        return runs.reindex(columns=list(runs.columns) + RUN_EXTRA_COLUMNS)
    chance = 1.0 / num_classes(results.iloc[0])
    curves, extras = {}, []
    for pid, run in results.groupby("point_id", sort=False):
        first = run.iloc[0]
        dead, val = curves[pid] = _curves(run)
        losses = pd.to_numeric(run[run["split"].isin(["train", "val"])]["loss"], errors="coerce")
        finite = losses[losses.map(math.isfinite)]
        extras.append({
            "point_id": pid,
            "width": int(_knob(first["knobs"], "final_width", 0)),
            "scale": float(_knob(first["knobs"], "residual_scale", 1.0)),
            "prepool_bn": bool(_knob(first["knobs"], "prepool_bn", False)),
            "final_dead_fraction": float(dead["dead"].iloc[-1]) if len(dead) else math.nan,
            "max_dead_fraction": float(dead["dead"].max()) if len(dead) else math.nan,
            "eval_dead_fraction": float(pd.to_numeric(pd.Series([first.get("eval_dead_fraction")]),
                                                      errors="coerce").iloc[0]),
            "max_loss": float(finite.max()) if len(finite) else math.nan,
        })
    runs = runs.merge(pd.DataFrame(extras), on="point_id", how="left")
    level = death_threshold(runs, config) if threshold is None else float(threshold)
    spike = float(config["spike_factor"]) * math.log(1.0 / chance)
    rows = []
    for _, row in runs.iterrows():
        dead, val = curves[row["point_id"]]
        above = dead[dead["dead"] > level]["step"]
        first_dead = int(above.iloc[0]) if len(above) else None
        before = val[val["step"] <= first_dead]["accuracy"].dropna() if first_dead is not None else pd.Series()
        died = bool(row["final_dead_fraction"] > level)
        spiked = bool(row["max_loss"] > spike)
        unstable = bool(spiked or row["diverged"])
        trained = bool(not died and not unstable and row["final_val_accuracy"] >= row["gate"])
        outcome = (DIVERGED if row["diverged"] else DIED if died else UNSTABLE if spiked else
                   TRAINED if trained else NOT_LEARNED)
        at_death = float(before.max()) if len(before) else math.nan
        rows.append({"first_dead_step": first_dead, "accuracy_at_death": at_death,
                     "spiked": spiked, "died": died, "unstable": unstable, "trained": trained, "outcome": outcome})
    out = pd.concat([runs, pd.DataFrame(rows, index=runs.index)], axis=1)[RUN_COLUMNS + RUN_EXTRA_COLUMNS]
    out["first_dead_step"] = out["first_dead_step"].astype("Int64")
    out.attrs.update(death_threshold=level, spike_level=spike)
    return out


def death_threshold(runs: pd.DataFrame, config: Mapping[str, Any]) -> float:
    """The "died" level: the largest dead fraction any monitored window of a narrow-width (the smallest of
    ``widths``) tuning run that learned showed, the narrow nets being the ones the paper saw stay alive; at least
    ``dead_floor``, so that a handful of silent channels in a healthy net is not a death."""
    narrow = runs[(runs["stage"] == "tune") & (runs["width"] == min(config["widths"])) & runs["learned"]]
    observed = float(narrow["max_dead_fraction"].max()) if len(narrow) else math.nan
    floor = float(config["dead_floor"])
    return floor if math.isnan(observed) else max(floor, observed)


# ================================================================================================= the plan
@dataclass(frozen=True)
class Plan:
    """What the tuning sweep decides for the seeded stages: each arm's tuned rate, the strained rate ``r*`` (the
    smallest rate at which the wide unscaled net did not train stably; None if it trained at every rate), the
    lower rate (the wide unscaled net's best rate below ``r*``; None if there is none) and the death threshold."""

    rates: dict[str, float]
    strained_rate: float | None
    lower_rate: float | None
    threshold: float


def plan(runs: pd.DataFrame, config: Mapping[str, Any]) -> Plan:
    """The :class:`Plan` from a :func:`summarise` frame's tuning runs."""
    tune = runs[runs["stage"] == "tune"]
    rates = choose_rates(tune) if len(tune) else {}
    unscaled = tune[tune["arm"] == arm_name(config["wide"], 1.0)].sort_values("lr")
    failed = unscaled[~unscaled["trained"].astype(bool)]
    strained = float(failed["lr"].iloc[0]) if len(failed) else None
    lower = None
    if strained is not None:
        below = unscaled[unscaled["lr"] < strained]
        if len(below):
            lower = choose_rates(below)[arm_name(config["wide"], 1.0)]
    threshold = runs.attrs.get("death_threshold")
    return Plan(rates, strained, lower, float(death_threshold(runs, config) if threshold is None else threshold))


# ================================================================================================== tables
def stability_frontier(runs: pd.DataFrame) -> pd.DataFrame:
    """From the phase sweep (tuning runs): per arm, the largest rate of the ladder at which it trained stably
    (NaN: at none), the rates at which it died, and the first rate at which it was unstable or diverged."""
    rows = []
    for arm, part in runs[runs["stage"] == "tune"].groupby("arm", sort=False):
        part = part.sort_values("lr")
        trained = part[part["trained"]]["lr"]
        died = part[part["died"]]["lr"]
        shaky = part[part["unstable"]]["lr"]
        rows.append({"arm": arm, "width": int(part["width"].iloc[0]), "scale": float(part["scale"].iloc[0]),
                     "extra BN": bool(part["prepool_bn"].iloc[0]),
                     "largest stable lr": float(trained.max()) if len(trained) else math.nan,
                     "first unstable lr": float(shaky.min()) if len(shaky) else math.nan,
                     "died at lr": ", ".join(f"{lr:g}" for lr in died) or "-",
                     "best final accuracy": float(part["final_val_accuracy"].max())})
    return pd.DataFrame(rows)


def conditions(the_plan: Plan, config: Mapping[str, Any]) -> list[tuple[str, str, float]]:
    """The seeded ``(condition, arm, rate)`` triples: the wide unscaled and scaled arms at their tuned rates; the
    wide unscaled, scaled and extra-BN arms at the strained rate; the wide unscaled arm at the lower rate."""
    wide, scaled = int(config["wide"]), float(config["scaled"])
    unscaled, scaled_arm, bn = arm_name(wide, 1.0), arm_name(wide, scaled), arm_name(wide, 1.0, True)
    out = [("tuned rate", arm, the_plan.rates[arm]) for arm in (unscaled, scaled_arm) if arm in the_plan.rates]
    if the_plan.strained_rate is not None:
        out += [("strained rate", arm, the_plan.strained_rate) for arm in (unscaled, scaled_arm, bn)]
    if the_plan.lower_rate is not None:
        out.append(("lower rate", unscaled, the_plan.lower_rate))
    return out


def _seeded(runs: pd.DataFrame, arm: str, lr: float) -> pd.DataFrame:
    return runs[(runs["stage"] == "seed") & (runs["arm"] == arm) & (runs["lr"] == lr)]


def death_summary(runs: pd.DataFrame, the_plan: Plan, config: Mapping[str, Any]) -> pd.DataFrame:
    """The death-rate summary of the seeded runs: one row per :func:`conditions` triple, with counts over seeds
    (learned, trained stably, died, unstable, diverged), the mean final and largest dead fraction (train-mode
    windows), the mean eval-mode dead fraction, the mean final accuracy and the best accuracy reached before a
    death."""
    rows = []
    for condition, arm, lr in conditions(the_plan, config):
        part = _seeded(runs, arm, lr)
        n = len(part)
        if not n:
            continue

        def count(column: str) -> str:
            return f"{int(part[column].astype(bool).sum())}/{n}"

        rows.append({"condition": condition, "arm": arm, "lr": lr, "seeds": n, "learned": count("learned"),
                     "trained stably": count("trained"), "died": count("died"), "unstable": count("unstable"),
                     "diverged": count("diverged"), "final dead fraction": float(part["final_dead_fraction"].mean()),
                     "max dead fraction": float(part["max_dead_fraction"].max()),
                     "eval-mode dead fraction": float(part["eval_dead_fraction"].mean()),
                     "final val accuracy": float(part["final_val_accuracy"].mean()),
                     "accuracy at death": float(part["accuracy_at_death"].max())})
    return pd.DataFrame(rows)


# ================================================================================================== claims
def _stability_verdict(runs: pd.DataFrame, treatment: tuple[str, float], control: tuple[str, float],
                       capable: pd.DataFrame) -> Verdict:
    """Paired "trained stably" (1/0) of two (arm, rate) runs over the seeds.

    Failing to learn at the rate is part of the outcome measured, so the gate is applied one step earlier: the
    ``capable`` runs (the wide unscaled and scaled arms at their tuned rates) must all have learned, or a net
    that does not train at the strained rate says nothing about stability (the budget may be too short for
    any net), and the comparison is ``not tested``. ``arms_learned`` counts the compared runs whose best accuracy
    passed the gate."""
    parts = [_seeded(runs, arm, lr).assign(side=side) for side, (arm, lr) in (("treatment", treatment),
                                                                                ("control", control))]
    for part, (arm, lr) in zip(parts, (treatment, control)):
        if part.empty:
            return _not_tested(f"{arm} has no seeded run at lr {lr:g}")
    frame = pd.concat(parts, ignore_index=True).assign(stable=lambda f: f["trained"].astype(float))
    verdict = compare_arms(frame, arm="side", treatment="treatment", control="control", value="stable",
                           learned=None)
    paired = frame[frame["seed"].isin(set(parts[0]["seed"]) & set(parts[1]["seed"]))]
    learned = f"{int(paired['learned'].sum())}/{len(paired)}"
    failed = {f"{arm} at lr {lr:g}": sorted(int(s) for s in part[~part["learned"].astype(bool)]["seed"])
              for (arm, lr), part in capable.groupby(["arm", "lr"], sort=False)}
    failed = {name: seeds for name, seeds in failed.items() if seeds}
    if failed or capable.empty:
        names = "; ".join(f"{name} in seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"
                          for name, seeds in failed.items()) or "no tuned-rate runs"
        return Verdict(NOT_TESTED, verdict.effect, learned, f"at their tuned rates the wide nets did not all pass the "
                       f"learnability gate ({names}): a net that cannot learn in this budget says nothing about "
                       "stability at a higher rate")
    note = "failing to learn at the rate counts as not trained stably (the gate applies at the tuned rates)"
    return Verdict(verdict.word, verdict.effect, learned, f"{verdict.reason}; {note}" if verdict.reason else note)


def _not_tested(reason: str) -> Verdict:
    return Verdict(NOT_TESTED, None, "0/0", reason)


def claims(runs: pd.DataFrame, config: Mapping[str, Any], the_plan: Plan | None = None) -> list[Claim]:
    """The four claims from a :func:`summarise` frame: scaling keeps the wide layer alive at tuned rates (the dead
    fraction); at the strained rate, scaling lets the wide net train stably; and does so where an extra BN or a
    lower rate does not."""
    the_plan = the_plan or plan(runs, config)
    wide, scaled = int(config["wide"]), float(config["scaled"])
    unscaled, scaled_arm, bn = arm_name(wide, 1.0), arm_name(wide, scaled), arm_name(wide, 1.0, True)
    tuned = pd.concat([_seeded(runs, arm, the_plan.rates.get(arm, math.nan)) for arm in (unscaled, scaled_arm)])
    alive = (compare_arms(tuned, arm="arm", treatment=scaled_arm, control=unscaled, value="final_dead_fraction",
                          higher_is_better=False) if tuned["arm"].nunique() == 2
             else _not_tested("the tuned-rate runs are missing"))
    rates = (f"{unscaled} at lr {the_plan.rates.get(unscaled, math.nan):g}, {scaled_arm} at lr "
             f"{the_plan.rates.get(scaled_arm, math.nan):g}")
    r_star = the_plan.strained_rate
    if r_star is None:
        none = _not_tested(f"{unscaled} trained stably at every rate of the ladder, so no rate strained it")
        stable = with_bn = with_lower = none
    else:
        stable = _stability_verdict(runs, (scaled_arm, r_star), (unscaled, r_star), tuned)
        with_bn = _stability_verdict(runs, (scaled_arm, r_star), (bn, r_star), tuned)
        with_lower = (_stability_verdict(runs, (scaled_arm, r_star), (unscaled, the_plan.lower_rate), tuned)
                      if the_plan.lower_rate is not None
                      else _not_tested(f"no rate below {r_star:g} was in the ladder for {unscaled}"))
    at = f"lr r* = {r_star:g}" if r_star is not None else "the strained rate (none)"
    lower = f"{the_plan.lower_rate:g}" if the_plan.lower_rate is not None else "none"
    return [
        Claim("Residual scaling keeps wide layers alive", PAPER,
              "With more than 1000 filters the unscaled residual nets' last layer before the average pooling died "
              "(only zeros); scaling the residuals by 0.1-0.3 prevented it.", NAME,
              f"final dead fraction of the pre-pool layer, unscaled minus x{scaled:g}, {wide} filters, each at its "
              f"tuned rate ({rates})", alive),
        Claim("Residual scaling stabilises wide nets", PAPER,
              "Scaling down the residuals before the addition seemed to stabilise the training of wide nets.", NAME,
              f"trained stably (1/0: learned, no death, no loss spike), x{scaled:g} minus unscaled, {wide} filters, "
              f"both at {at} (the smallest rate at which the unscaled net did not train stably in tuning)", stable),
        Claim("An extra BN does not do what scaling does", PAPER,
              "Adding an extra batch normalisation to the layer before the pool did not prevent the death; scaling "
              "did.", NAME, f"trained stably, x{scaled:g} minus unscaled with an extra BN before the last ReLU, both "
              f"at {at}", with_bn),
        Claim("A lower rate does not do what scaling does", PAPER,
              "Lowering the learning rate did not prevent the death; scaling did.", NAME,
              f"trained stably, x{scaled:g} at {at} minus unscaled at the lower rate {lower} (its best below r*)",
              with_lower),
    ]
