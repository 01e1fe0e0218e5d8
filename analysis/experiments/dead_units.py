"""Residual scaling and the >1000-filter instability (Inception-v4 paper, Szegedy et al. 2017, sec. 3.3).

The claim: "if the number of filters exceeded 1000, the residual variants started to exhibit instabilities and
the network has just 'died' early in the training, meaning that the last layer before the average pooling
started to produce only zeros after a few tens of thousands of iterations". Lowering the learning rate or an
extra BN did not help; scaling the residuals down by 0.1 to 0.3 before the addition did.

The experiment trains Inception-ResNet (v1 and/or v2 blocks, at reduced depth and input) whose whole 8x8 stage
is widened to ``width`` channels (the model's ``final_width`` knob), with every residual scaled by ``scale``
(the same factor on all three stages), over a grid of widths x scales x learning rates, plus the control:
the same widths with the shortcuts removed (``residual=False``, an Inception-v4-like net with the same layers).
During training :class:`analysis.instruments.dead_units.DeadUnitAlarm` records, every ``monitor_every`` steps, the dead
fraction of the layer before global average pooling over the training forwards of that window (BN in train
mode; **dead** = never > 0 at any position of any sample of the window). At the end the same layer is also
measured once on the validation set with BN in eval mode (running statistics). A run whose loss turns NaN/inf
(:class:`analysis.training.trainer.TrainingDiverged`) is a result: it is recorded as diverged, its curve up to there
kept.

``run(config) -> DataFrame`` gives one row per point and monitored step; :func:`summarise` one row per point;
:func:`verdict` the honest one-line answer computed from that table.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from analysis.experiments.runner import CPU_QUICK, GPU_FULL, check_config, run_points, tensors, threads
from analysis.instruments.dead_units import DeadUnitAlarm, find_dead_units
from analysis.training.config import TrainConfig
from analysis.training.trainer import Trainer, TrainingDiverged
from inception_models import create_model

__all__ = [
    "CONFIGS",
    "CURVE_COLUMNS",
    "SUMMARY_COLUMNS",
    "MODELS",
    "make_points",
    "run_point",
    "run",
    "summarise",
    "verdict",
]

NAME = "dead_units"

# The variants of the paper's Fig. 15 (average pooling straight after the last Inception-ResNet-C's ReLU).
MODELS = {"v1": "inception_resnet_v1_paper", "v2": "inception_resnet_v2_paper"}
NO_RESIDUAL = "no residual"

# The paper saw trouble only above this many filters in the last stage.
PAPER_WIDTH_LIMIT = 1000

CONFIGS: dict[str, dict[str, Any]] = {
    # 2 CPU cores, minutes: v1 and v2 blocks, one narrow and one wide last stage, unscaled vs two of the paper's
    # scales, the paper's RMSProp at its learning rate (0.045) and at one high enough to strain it (0.1), the
    # no-shortcut control at both widths, two seeds. At 75 px the 8x8 stage is a 1x1 grid, so "dead" means: zero
    # for every sample of the window. 64 runs of 60 steps, about 4 CPU-seconds each (two one-thread workers).
    "quick": dict(
        variants=("v1", "v2"),
        widths=(256, 1536),
        scales=(1.0, 0.3, 0.1),
        lrs=(0.045, 0.1),
        control=True,
        seed=0,
        seeds=2,
        block_counts=(1, 1, 1),
        width_mult=0.125,
        image_size=75,
        drop_rate=0.0,
        steps=60,
        batch_size=32,
        n_train=640,
        n_val=256,
        optimizer="rmsprop",
        momentum=0.9,
        weight_decay=0.0,
        monitor_every=5,
        dormant_threshold=0.1,
        dead_level=0.5,
        **CPU_QUICK,
    ),
    # A GPU: the whole grid at the paper's depth (5/10/5 blocks), half width, 139 px (3x3 last grid),
    # 10k steps of the paper's RMSProp at its lr 0.045 and above. 2 x 3 x 5 x (4 + 1) = 150 runs, each in its own
    # process (each renders its data again, ~1 GiB of float images). Not run in this session (no GPU).
    "full": dict(
        variants=("v1", "v2"),
        widths=(256, 512, 1024, 1536, 2048),
        scales=(1.0, 0.3, 0.2, 0.1),
        lrs=(0.045, 0.1, 0.2),
        control=True,
        seed=0,
        seeds=1,
        block_counts=(5, 10, 5),
        width_mult=0.5,
        image_size=139,
        drop_rate=0.2,
        steps=10_000,
        batch_size=64,
        n_train=5_000,
        n_val=1_000,
        optimizer="rmsprop",
        momentum=0.9,
        weight_decay=4e-5,
        monitor_every=100,
        dormant_threshold=0.1,
        dead_level=0.5,
        **GPU_FULL,
    ),
}

# Per monitored step.
CURVE_COLUMNS = ["variant", "width", "residual", "scale", "scale_label", "lr", "seed", "step", "dead_fraction",
                 "dead_units", "channels", "dormant_fraction", "zero_fraction", "train_loss", "window_samples"]
# Per point (repeated on every row of the point in ``run``'s frame).
POINT_COLUMNS = ["final_step", "diverged", "diverged_step", "val_loss", "val_accuracy", "eval_dead_fraction",
                 "eval_samples", "seconds"]
_NUMERIC_COLUMNS = ["width", "scale", "lr", "seed", "step", "dead_fraction", "dead_units", "channels",
                    "dormant_fraction", "zero_fraction", "train_loss", "window_samples", "final_step", "diverged_step",
                    "val_loss", "val_accuracy", "eval_dead_fraction", "eval_samples", "seconds"]
SUMMARY_COLUMNS = ["variant", "width", "scale_label", "lr", "seed", "steps_run", "final_dead_fraction",
                   "max_dead_fraction", "first_dead_step", "eval_dead_fraction", "final_train_loss", "val_loss",
                   "val_accuracy", "diverged", "diverged_step", "died"]

_POINT_KEYS = ("model", "variant", "width", "residual", "scale", "lr", "seed", "block_counts", "width_mult",
               "image_size", "drop_rate", "steps", "batch_size", "n_train", "n_val", "optimizer", "momentum",
               "weight_decay", "monitor_every", "dormant_threshold", "device", "threads")


def _check_config(config: dict[str, Any]) -> None:
    check_config(NAME, config, CONFIGS["quick"])
    unknown = [v for v in config["variants"] if v not in MODELS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; use {sorted(MODELS)}")
    if not config["widths"] or not config["lrs"] or not (config["scales"] or config["control"]):
        raise ValueError("give at least one width, one learning rate and one scale (or control=True)")
    if config["image_size"] < 75:
        raise ValueError(f"image_size {config['image_size']} is below 75 px, the smallest input Inception-ResNet "
                         "takes; use 75 (1x1 last grid), 139 (3x3) or 299 (8x8)")
    if config["monitor_every"] < 1 or config["monitor_every"] > config["steps"]:
        raise ValueError(f"monitor_every must be in [1, steps={config['steps']}], got {config['monitor_every']}")


def make_points(config: dict[str, Any]) -> list[dict[str, Any]]:
    """The sweep points: variant x lr x width x (each scale, then the no-residual control) x seed."""
    _check_config(config)
    common = {k: config[k] for k in _POINT_KEYS if k in config}
    common["block_counts"] = list(config["block_counts"])
    points = []
    for variant in config["variants"]:
        for lr in config["lrs"]:
            for width in config["widths"]:
                arms = [(True, float(s)) for s in config["scales"]] + ([(False, None)] if config["control"] else [])
                for residual, scale in arms:
                    for k in range(int(config["seeds"])):
                        points.append({**common, "model": MODELS[variant], "variant": variant, "width": int(width),
                                       "residual": residual, "scale": scale, "lr": float(lr),
                                       "seed": int(config["seed"]) + k})
    return points


def _scale_label(residual: bool, scale: float | None) -> str:
    return f"{scale:g}" if residual else NO_RESIDUAL


def run_point(point: dict[str, Any]) -> pd.DataFrame:
    """Train one point and return its curve (one row per monitored step, :data:`CURVE_COLUMNS` +
    :data:`POINT_COLUMNS`). A diverged run keeps its curve up to the last report and sets ``diverged``."""
    with threads(int(point["threads"])):
        train = tensors("train", point["n_train"], point["image_size"])
        val = tensors("val", point["n_val"], point["image_size"])
        torch.manual_seed(point["seed"])  # the trainer reseeds too; this makes the model's init depend on it
        model = create_model(
            point["model"], num_classes=10, block_counts=tuple(point["block_counts"]),
            width_mult=point["width_mult"], final_width=point["width"], residual=point["residual"],
            residual_scale=1.0 if point["scale"] is None else point["scale"], drop_rate=point["drop_rate"])
        # RMSProp's decay and epsilon are TrainConfig's defaults, the papers' 0.9 and 1.0.
        config = TrainConfig(model=point["model"], steps=point["steps"], batch_size=point["batch_size"],
                             optimizer=point["optimizer"], lr=point["lr"], momentum=point["momentum"],
                             weight_decay=point["weight_decay"], seed=point["seed"], device=point["device"],
                             log_every=point["monitor_every"], progress=False)
        alarm = DeadUnitAlarm(every=point["monitor_every"], dormant_threshold=point["dormant_threshold"])
        trainer = Trainer(model, config, train, val, callbacks=[alarm])
        start = time.perf_counter()
        diverged_step = None
        try:
            trainer.fit()
        except TrainingDiverged as err:
            diverged_step = err.step
        ends = {"diverged": diverged_step is not None, "diverged_step": diverged_step, "final_step": trainer.step,
                "val_loss": math.nan, "val_accuracy": math.nan, "eval_dead_fraction": math.nan, "eval_samples": 0}
        if diverged_step is None:
            metrics = trainer.evaluate()
            ends.update(val_loss=metrics["loss"], val_accuracy=metrics["accuracy"])
            images = val[0]
            batches = [images[i:i + 64].to(trainer.device) for i in range(0, len(images), 64)]
            frame = find_dead_units(trainer.model, batches, layers="prepool", mode="eval")
            ends.update(eval_dead_fraction=float(frame["dead_fraction"].iloc[0]),
                        eval_samples=int(frame["samples"].iloc[0]))
        ends["seconds"] = time.perf_counter() - start
    losses = {int(r["step"]): r["loss"] for r in trainer.history if r.get("split") == "train"}
    curve = alarm.to_frame()
    if curve.empty:
        curve = pd.DataFrame(columns=["step", "dead", "dead_fraction", "channels", "dormant_fraction",
                                      "zero_fraction", "samples"])
    curve = curve.rename(columns={"dead": "dead_units", "samples": "window_samples"})
    curve["train_loss"] = [losses.get(int(s), math.nan) for s in curve["step"]]
    for key in ("variant", "width", "residual", "scale", "lr", "seed"):
        curve[key] = point[key]
    curve["scale_label"] = _scale_label(point["residual"], point["scale"])
    for key, value in ends.items():
        curve[key] = value
    if curve.empty:  # diverged before the first report: one row so the point is still in the table
        curve = pd.DataFrame([{**{k: point[k] for k in ("variant", "width", "residual", "scale", "lr", "seed")},
                               "scale_label": _scale_label(point["residual"], point["scale"]), "step": 0, **ends}])
    return curve.reindex(columns=CURVE_COLUMNS + POINT_COLUMNS)


def run(config: dict[str, Any], *, results_dir: str | Path | None = None, progress: bool = True) -> pd.DataFrame:
    """Run every point of ``config`` (resumable in ``results_dir``) and return the curves: one row per point and
    monitored step, columns ``point_id`` + :data:`CURVE_COLUMNS` + :data:`POINT_COLUMNS`."""
    return run_points(make_points(config), run_point, results_dir, workers=int(config["workers"]),
                      isolate=bool(config["isolate"]), progress=progress, desc=NAME,
                      columns=CURVE_COLUMNS + POINT_COLUMNS, numeric=_NUMERIC_COLUMNS, flags=["diverged"])


def summarise(curves: pd.DataFrame, dead_level: float = 0.5) -> pd.DataFrame:
    """One row per point (:data:`SUMMARY_COLUMNS`): the dead fraction of the last monitored window and its
    maximum, the first step at which it reached ``dead_level``, the eval-mode dead fraction on the validation
    set, losses and accuracy, divergence, and ``died`` (final dead fraction >= ``dead_level``)."""
    rows = []
    keys = ["variant", "width", "scale_label", "lr", "seed"]
    for _, grp in curves.groupby(keys, sort=False):
        grp = grp.sort_values("step")
        last = grp.iloc[-1]
        dead = grp["dead_fraction"].astype(float)
        reached = grp.loc[dead >= dead_level, "step"]
        final_dead = float(dead.iloc[-1]) if dead.notna().any() else math.nan
        rows.append({
            **{k: last[k] for k in keys},
            "steps_run": int(last["final_step"]),
            "final_dead_fraction": final_dead,
            "max_dead_fraction": float(dead.max()) if dead.notna().any() else math.nan,
            "first_dead_step": int(reached.iloc[0]) if len(reached) else None,
            "eval_dead_fraction": float(last["eval_dead_fraction"]),
            "final_train_loss": float(grp["train_loss"].dropna().iloc[-1]) if grp["train_loss"].notna().any()
            else math.nan,
            "val_loss": float(last["val_loss"]),
            "val_accuracy": float(last["val_accuracy"]),
            "diverged": bool(last["diverged"]),
            "diverged_step": None if pd.isna(last["diverged_step"]) else int(last["diverged_step"]),
            "died": bool(final_dead >= dead_level) if not math.isnan(final_dead) else False,
        })
    out = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    for col in ("first_dead_step", "diverged_step"):
        out[col] = out[col].astype("Int64")
    return out


def _rate(frame: pd.DataFrame) -> float:
    return float(frame["died"].mean()) if len(frame) else math.nan


def _mean_dead(frame: pd.DataFrame) -> float:
    return float(frame["final_dead_fraction"].mean()) if len(frame) else math.nan


def _arms(summary: pd.DataFrame, wide_above: int, small_scales: float) -> tuple[pd.DataFrame, ...]:
    """The points the claim compares: wide unscaled, wide scaled (<= ``small_scales``), wide no-residual
    control, narrow unscaled."""
    residual = summary["scale_label"] != NO_RESIDUAL
    scale = pd.to_numeric(summary["scale_label"].where(residual), errors="coerce")
    wide = summary["width"] > wide_above
    return (summary[residual & wide & (scale == 1.0)], summary[residual & wide & (scale <= small_scales)],
            summary[~residual & wide], summary[residual & ~wide & (scale == 1.0)])


def _judge(summary: pd.DataFrame, wide_above: int, small_scales: float) -> tuple[str, str]:
    """The rule of :func:`verdict` on the points of one learning rate: ``(word, rates)``; the word is "" when
    no wide residual point died at that rate (nothing to judge there)."""
    unscaled, scaled, control, narrow = _arms(summary, wide_above, small_scales)
    r_unscaled, r_scaled, r_control = _rate(unscaled), _rate(scaled), _rate(control)
    rates = (f"death rate of wide unscaled {r_unscaled:.2f}, wide scaled (<= {small_scales}) {r_scaled:.2f}, "
             f"wide no-residual {r_control:.2f}, narrow unscaled {_rate(narrow):.2f}; mean final dead fraction "
             f"{_mean_dead(unscaled):.2f}, {_mean_dead(scaled):.2f}, {_mean_dead(control):.2f}, "
             f"{_mean_dead(narrow):.2f}")
    if not r_unscaled > 0 and not r_scaled > 0:
        return "", rates
    several_seeds = summary.groupby(["variant", "width", "scale_label", "lr"]).size().max() > 1
    if several_seeds and 0 < r_unscaled < 1 and 0 < r_scaled < 1 and r_unscaled - r_scaled < 0.5:
        return INCONCLUSIVE_SPREAD, rates
    control_ok = control.empty or r_control < r_unscaled
    if r_unscaled > 0 and r_scaled < r_unscaled and control_ok:
        return "shows", rates
    return DOES_NOT_FOLLOW, rates


INCONCLUSIVE_SPREAD = "inconclusive: spread over seeds larger than the effect"
DOES_NOT_FOLLOW = "does not show: deaths do not follow the claimed pattern"


def verdict(summary: pd.DataFrame, *, wide_above: int = PAPER_WIDTH_LIMIT, small_scales: float = 0.3) -> str:
    """The answer from a :func:`summarise` table: does the pre-pool layer of wide (> ``wide_above`` filters)
    residual nets die with unscaled residuals (scale 1.0), and do scales <= ``small_scales`` prevent it?

    Judged at each learning rate apart (pooling rates would mix a rate at which nothing dies into the death
    rates). At a rate, "shows" needs: some wide unscaled point died; wide scaled points died less often; the
    wide no-residual control died less often than wide unscaled. With more than one seed per cell, rates
    strictly between 0 and 1 on both sides with a gap under 0.5 make it "inconclusive". A rate at which no wide
    residual point died says nothing either way. The headline is "does not show" if any rate does not,
    "inconclusive" if any rate is, "shows" otherwise; nothing dead anywhere is "does not show" (the run may be
    too short for death to appear at all, which the verdict says).
    """
    if summary.empty:
        raise ValueError("verdict needs at least one summarised point")
    unscaled, scaled, _, _ = _arms(summary, wide_above, small_scales)
    died = int(summary["died"].sum())
    diverged = int(summary["diverged"].sum())
    steps = int(summary["steps_run"].max())
    max_dead = float(summary["final_dead_fraction"].max()) if summary["final_dead_fraction"].notna().any() else 0.0
    notes = f"{died} of {len(summary)} points died, {diverged} diverged, within {steps} steps"
    if unscaled.empty or scaled.empty:
        return (f"inconclusive: the sweep lacks wide (> {wide_above} filters) points with scale 1.0 and with "
                f"scale <= {small_scales}; {notes}")
    if died == 0:
        return (f"does not show at this scale: no pre-pool layer died (largest final dead fraction "
                f"{max_dead:.2f}; {notes}); the run is too short or too small for the paper's symptom to appear")
    lrs = sorted(summary["lr"].unique())
    judged = {lr: _judge(summary[summary["lr"] == lr], wide_above, small_scales) for lr in lrs}
    if len(lrs) == 1:
        word, rates = judged[lrs[0]]
        return f"{word or DOES_NOT_FOLLOW}: {rates}; {notes}"
    words = [word for word, _ in judged.values() if word]
    head = (DOES_NOT_FOLLOW if DOES_NOT_FOLLOW in words or not words else
            INCONCLUSIVE_SPREAD if INCONCLUSIVE_SPREAD in words else "shows")
    parts = [f"lr {lr:g}: {word.split(':')[0] if word else 'no wide residual point died'} ({rates})"
             for lr, (word, rates) in judged.items()]
    quiet = [f"{lr:g}" for lr, (word, _) in judged.items() if not word]
    if quiet and words:
        parts.append(f"at lr {', '.join(quiet)} nothing wide died, so lowering the rate prevented death here "
                     "(the paper: it did not)")
    return f"{head}: " + "; ".join(parts) + f"; {notes}"
