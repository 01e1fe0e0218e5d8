"""Depthwise-separable convolutions and the mid activation (Chollet, "Xception", CVPR 2017, arXiv 1610.02357).

Two claims of the Xception paper, trained side by side on the embedded synthetic shapes:

1. At a similar parameter count Xception beats Inception-v3 (sec. 4.5, Table 1 and 2: "the Xception architecture
   has the same number of parameters as Inception V3, [so] the performance gains are not due to increased
   capacity but rather to a more efficient use of model parameters").
2. A non-linearity between the depthwise and the pointwise convolution hurts (sec. 4.7, Fig. 10: "the absence
   of any non-linearity leads to both faster convergence and better final performance"; ReLU is worst).

Three networks, trained identically (same data, recipe, steps and seeds): ``inception_v3`` and ``xception``
at the same ``width_mult`` (which keeps them within 5% of each other's parameter count at every width: 346,830
vs 356,425 at 0.125, 21.8M vs 20.8M at 1.0 with 10 classes), and ``xception`` with ``mid_activation=True`` (a
ReLU between every depthwise and pointwise convolution; no extra parameters). The dropout of the released
Inception-v3 (0.5) is off in both, so the comparison is of the convolutional bodies alone. Each network keeps
its reference initialisation.

:func:`verdicts` answers each claim from the final validation accuracies: a difference counts only when it is
larger than the seed spread (max - min) of both groups; a network that did not learn beyond chance makes the
claim "inconclusive"; so does a parameter mismatch above ``param_tolerance``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from analysis.experiments.runner import (
    CHANCE,
    CPU_QUICK,
    GPU_FULL,
    RECIPE_KEYS,
    check_config,
    run_points,
    threads,
    train_point,
)
from analysis.experiments.spread_rule import compare, final_evals, learned_threshold, seed_stats

__all__ = [
    "CONFIGS",
    "RESULT_COLUMNS",
    "SUMMARY_COLUMNS",
    "make_points",
    "run_point",
    "run",
    "summarise",
    "verdicts",
    "verdict",
]

NAME = "xception_vs_v3"
V3, XCEPTION, MID_RELU = "inception_v3", "xception", "xception_mid_relu"

CONFIGS: dict[str, dict[str, Any]] = {
    # 2 CPU cores: the three networks at width 0.125 (347k / 356k parameters) on 75 px images (Inception-v3's
    # minimum input), 3 seeds = 9 runs of 200 SGD steps at batch 32. Measured at 250-300 steps (one thread):
    # xception reached 48% validation accuracy at lr 0.03 and 34% at lr 0.01 (RMSProp lr 1e-3, eps 1e-3: 41%);
    # inception_v3 stayed at 9-14% (chance 10%) at lr 0.003, 0.01, 0.03, with clipping at 0.03 and 0.1, with
    # that RMSProp, at 99 and 107 px, at width 0.25 and with He initialisation. It can overfit 64 images in 60
    # steps, so it trains: it needs more steps than this budget to generalise. lr 0.03, xception's best (the
    # mid-ReLU variant was not tuned separately). Cost measured: 322 CPU-seconds over the 9 runs (v3 27 s,
    # xception 39-41 s each, one thread), i.e. about 2.8 minutes on 2 idle cores with the two workers.
    "quick": dict(
        variants={
            V3: dict(model="inception_v3", width_mult=0.125, drop_rate=0.0),
            XCEPTION: dict(model="xception", width_mult=0.125, middle_blocks=8, mid_activation=False),
            MID_RELU: dict(model="xception", width_mult=0.125, middle_blocks=8, mid_activation=True),
        },
        image_size=75,
        seed=0,
        seeds=3,
        n_train=4000,
        n_val=500,
        steps=200,
        batch_size=32,
        optimizer="sgd",
        lr=0.03,
        momentum=0.9,
        weight_decay=0.0,
        schedule="cosine",
        warmup_steps=10,
        log_every=10,
        eval_every=50,
        param_tolerance=0.1,
        **CPU_QUICK,
    ),
    # A GPU: the full-width networks (21.8M / 20.8M parameters at 10 classes) at 150 px on 10,000 images, 3
    # seeds, 20 epochs. Not run in this session (no GPU); the learning rate is untested at this size.
    "full": dict(
        variants={
            V3: dict(model="inception_v3", width_mult=1.0, drop_rate=0.0),
            XCEPTION: dict(model="xception", width_mult=1.0, middle_blocks=8, mid_activation=False),
            MID_RELU: dict(model="xception", width_mult=1.0, middle_blocks=8, mid_activation=True),
        },
        image_size=150,
        seed=0,
        seeds=3,
        n_train=10_000,
        n_val=2_000,
        steps=3120,
        batch_size=64,
        optimizer="sgd",
        lr=0.03,
        momentum=0.9,
        weight_decay=1e-5,
        schedule="cosine",
        warmup_steps=100,
        log_every=20,
        eval_every=156,
        param_tolerance=0.1,
        **GPU_FULL,
    ),
}

RESULT_COLUMNS = ["variant", "model", "mid_activation", "seed", "params", "split", "step", "loss", "accuracy",
                  "n_val", "cpu_s", "wall_s"]
SUMMARY_COLUMNS = ["variant", "model", "mid_activation", "params", "params_vs_v3", "seeds", "acc_mean", "acc_std",
                   "acc_min", "acc_max", "val_loss_mean"]
_NUMERIC = ["seed", "params", "step", "loss", "accuracy", "n_val", "cpu_s", "wall_s"]
_MODEL_KNOBS = ("width_mult", "drop_rate", "middle_blocks", "mid_activation")


def _check_config(config: Mapping[str, Any]) -> None:
    check_config(NAME, config, CONFIGS["quick"])
    for label, spec in config["variants"].items():
        if "model" not in spec:
            raise ValueError(f"variant {label!r} names no model; give dict(model='xception', ...)")
        unknown = sorted(set(spec) - {"model", *_MODEL_KNOBS})
        if unknown:
            raise ValueError(f"variant {label!r} has unknown knob(s) {unknown}; known: {', '.join(_MODEL_KNOBS)}")


def make_points(config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One point per (variant, seed): the training seed is ``seed + i``; the data seed is ``seed``."""
    _check_config(config)
    points = []
    for label, spec in config["variants"].items():
        for i in range(int(config["seeds"])):
            points.append({
                "experiment": NAME, "variant": label, **dict(spec), "image_size": config["image_size"],
                "seed": int(config["seed"]) + i, "data_seed": int(config["seed"]), "n_train": config["n_train"],
                "n_val": config["n_val"], "threads": config["threads"], **{k: config[k] for k in RECIPE_KEYS},
            })
    return points


def run_point(point: dict[str, Any]) -> pd.DataFrame:
    """Train one network with one seed: :data:`RESULT_COLUMNS` rows (train log, validation every
    ``eval_every`` steps and at the end)."""
    knobs = {k: point[k] for k in _MODEL_KNOBS if k in point}
    with threads(int(point["threads"])):
        outcome = train_point(point, point["model"], model_kwargs=knobs)
    frame = outcome.curve(["split", "step", "loss", "accuracy"], params=outcome.params, n_val=int(point["n_val"]),
                          cpu_s=outcome.cpu_s, wall_s=outcome.wall_s, variant=point["variant"], model=point["model"],
                          mid_activation=bool(point.get("mid_activation", False)), seed=int(point["seed"]))
    return frame.reindex(columns=RESULT_COLUMNS)


def run(config: dict[str, Any], *, results_dir: str | Path | None = None, progress: bool = True) -> pd.DataFrame:
    """Train every (variant, seed) of ``config`` (resumable in ``results_dir``) and return the rows: columns
    ``point_id`` + :data:`RESULT_COLUMNS`."""
    return run_points(make_points(config), run_point, results_dir, workers=int(config["workers"]),
                      isolate=bool(config["isolate"]), progress=progress, desc=NAME,
                      columns=RESULT_COLUMNS, numeric=_NUMERIC, flags=["mid_activation"])


def summarise(results: pd.DataFrame) -> pd.DataFrame:
    """One row per variant (:data:`SUMMARY_COLUMNS`): parameters (and their relative difference to Inception-v3's)
    and final validation accuracy over seeds."""
    final = final_evals(results)
    stats = seed_stats(final, ["variant"], "accuracy")
    extra = final.groupby("variant", sort=False).agg(model=("model", "first"), mid_activation=("mid_activation", "first"),
                                                    params=("params", "first"), val_loss_mean=("loss", "mean"))
    table = stats.merge(extra.reset_index(), on="variant").rename(
        columns={"mean": "acc_mean", "std": "acc_std", "min": "acc_min", "max": "acc_max"})
    table["params"] = table["params"].astype(int)
    v3 = table.loc[table["variant"] == V3, "params"]
    table["params_vs_v3"] = table["params"] / float(v3.iloc[0]) - 1.0 if len(v3) else math.nan
    return table.reindex(columns=SUMMARY_COLUMNS)


def _judge(final: pd.DataFrame, summary: pd.DataFrame, better: str, worse: str, *, what: str, n_val: int,
           chance: float, param_tolerance: float | None, both_must_learn: bool) -> str:
    rows = summary.set_index("variant")
    absent = [v for v in (better, worse) if v not in rows.index]
    if absent:
        return f"inconclusive: {', '.join(absent)} not trained"
    if param_tolerance is not None:
        gap = abs(rows.loc[better, "params"] / rows.loc[worse, "params"] - 1.0)
        if gap > param_tolerance:
            return (f"inconclusive: parameter counts differ by {gap:.1%} ({rows.loc[better, 'params']:,} vs "
                    f"{rows.loc[worse, 'params']:,}), more than {param_tolerance:.0%}")
    threshold = learned_threshold(n_val, chance)
    weak = [v for v in (better, worse) if not rows.loc[v, "acc_mean"] > threshold]
    if len(weak) == 2 or (weak and both_must_learn):
        means = ", ".join(f"{rows.loc[v, 'acc_mean']:.3f}" for v in weak)
        learned = [v for v in (better, worse) if v not in weak]
        also = (f"; {learned[0]} reached {rows.loc[learned[0], 'acc_mean']:.3f}, so it trained faster here, but the "
                "claim is about accuracy once trained") if learned else ""
        return (f"inconclusive: {' and '.join(weak)} did not learn beyond chance (mean accuracy {means} <= "
                f"{threshold:.3f}: chance {chance:g} + 3 binomial s.e. on {n_val} images{also})")
    comparison = compare(final.loc[final["variant"] == better, "accuracy"],
                         final.loc[final["variant"] == worse, "accuracy"])
    effect, spread = comparison.effect, comparison.spread
    numbers = (f"{better} {rows.loc[better, 'acc_mean']:.3f} vs {worse} {rows.loc[worse, 'acc_mean']:.3f}, "
               f"difference {effect:+.3f} against a seed spread of {spread:.3f}")
    if weak:
        numbers += f"; {weak[0]} did not learn beyond chance ({threshold:.3f}) in this budget"
    if abs(effect) <= spread:
        return f"inconclusive: spread over seeds larger than the effect ({numbers})"
    if effect > 0:
        return f"shows: {what} ({numbers})"
    return f"does not show: the opposite held ({numbers})"


def verdicts(summary: pd.DataFrame, final: pd.DataFrame, *, n_val: int, chance: float = CHANCE,
             param_tolerance: float = 0.1) -> dict[str, str]:
    """Both claims at this scale, each "shows: ...", "does not show: ..." or "inconclusive: ...".

    ``summary`` is :func:`summarise`'s table, ``final`` the final validation rows (``variant``, ``accuracy``).
    Keys: ``"xception_vs_v3"`` (Xception more accurate than Inception-v3 at a parameter count within
    ``param_tolerance``) and ``"mid_activation"`` (Xception more accurate without the ReLU between depthwise
    and pointwise convolutions than with it).

    A network that did not learn beyond chance (:func:`~analysis.experiments.spread_rule.learned_threshold`) makes the first claim
    inconclusive:
    it is about accuracy at equal capacity once trained, and a slow start in a short budget says nothing about
    that. The second claim is also about speed (Fig. 10: "faster convergence and better final performance"),
    so there one network staying at chance while the other learns is a result; both at chance is not.
    """
    return {
        "xception_vs_v3": _judge(final, summary, XCEPTION, V3, what="Xception beat Inception-v3 at a similar "
                                 "parameter count", n_val=n_val, chance=chance, param_tolerance=param_tolerance,
                                 both_must_learn=True),
        "mid_activation": _judge(final, summary, XCEPTION, MID_RELU, what="the ReLU between depthwise and pointwise "
                                 "convolutions hurt", n_val=n_val, chance=chance, param_tolerance=None,
                                 both_must_learn=False),
    }


def verdict(summary: pd.DataFrame, final: pd.DataFrame, *, n_val: int, chance: float = CHANCE,
            param_tolerance: float = 0.1) -> str:
    """:func:`verdicts` as one line for the report."""
    answers = verdicts(summary, final, n_val=n_val, chance=chance, param_tolerance=param_tolerance)
    return (f"Xception vs Inception-v3 at similar parameters: {answers['xception_vs_v3']}. "
            f"Activation between depthwise and pointwise: {answers['mid_activation']}.")
