"""The seed-spread rule that the trained experiments used before the paired-seed protocol (:mod:`analysis.
experiments.verdict`): kept only while experiments move to the protocol, then removed. New code must not use it.

**The verdict rule** (:func:`compare`). For a claim "arm A beats arm B on a measure" with one value per seed in
each arm: the *effect* is the difference of the seed means, signed so that a positive effect is the claimed
direction; the *spread* is the largest range (max - min) over seeds within either arm. Then

- ``"shows"``: effect > spread and effect >= ``min_effect`` (a floor below which a difference does not matter);
- ``"does not show"``: effect < -spread (the opposite holds), or spread < effect < ``min_effect`` (too small), or
  no difference at all (effect and spread both zero, e.g. both arms stuck at the budget in every seed);
- ``"inconclusive: spread over seeds larger than the effect"``: |effect| <= spread;
- ``"inconclusive: one seed per arm, no spread to judge the effect against"`` with a single seed.

An experiment puts a learnability gate in front (:func:`learned_threshold`): a claim about training speed or
accuracy is only judged on networks that learned beyond chance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd

from analysis.experiments.runner import CHANCE

__all__ = [
    "DOES_NOT_SHOW",
    "INCONCLUSIVE_ONE_SEED",
    "INCONCLUSIVE_SPREAD",
    "SHOWS",
    "Comparison",
    "auto_target",
    "censored_steps",
    "compare",
    "final_evals",
    "finite_evals",
    "learned_threshold",
    "run_outcome",
    "seed_stats",
    "steps_to_target",
    "verdict_word",
]

SHOWS = "shows"
DOES_NOT_SHOW = "does not show"
INCONCLUSIVE_SPREAD = "inconclusive: spread over seeds larger than the effect"
INCONCLUSIVE_ONE_SEED = "inconclusive: one seed per arm, no spread to judge the effect against"


def learned_threshold(n_val: int, chance: float = CHANCE) -> float:
    """The accuracy a run must exceed to count as having learned: chance plus three binomial standard errors
    on ``n_val`` validation images (0.167 for 500 images at chance 0.1)."""
    if n_val < 1:
        raise ValueError(f"n_val must be >= 1, got {n_val}")
    return chance + 3.0 * math.sqrt(chance * (1.0 - chance) / n_val)


def auto_target(reference_best: Sequence[float], *, fraction: float, n_val: int) -> float:
    """A target validation accuracy read off a reference arm, as the BN paper does ("the accuracy Inception
    reached"): ``fraction`` x the mean over seeds of the reference arm's best validation accuracy, but at least
    :func:`learned_threshold` (so a target is never chance)."""
    values = [float(v) for v in reference_best if v is not None and not math.isnan(float(v))]
    floor = learned_threshold(n_val)
    return max(floor, fraction * float(np.mean(values))) if values else floor


def finite_evals(val: pd.DataFrame) -> pd.DataFrame:
    """The validation rows whose loss is finite: a network with NaN weights still gets an "accuracy" (argmax of
    NaN logits picks class 0), which must not count as reaching a target."""
    loss = pd.to_numeric(val["loss"], errors="coerce")
    return val[np.isfinite(loss.to_numpy(dtype=float))]


def final_evals(results: pd.DataFrame) -> pd.DataFrame:
    """The last validation row of every point (``point_id``) of a results table."""
    val = results[results["split"] == "val"]
    return val.sort_values("step", kind="stable").groupby("point_id", sort=False).tail(1)


def steps_to_target(curve: pd.DataFrame, target: float, *, step: str = "step", value: str = "accuracy") -> float:
    """The first ``step`` of ``curve`` at which ``value`` >= ``target``; NaN if it never gets there."""
    if curve.empty:
        return math.nan
    ordered = curve.sort_values(step, kind="stable")
    hit = ordered.loc[pd.to_numeric(ordered[value], errors="coerce") >= target, step]
    return float(hit.iloc[0]) if len(hit) else math.nan


def run_outcome(rows: pd.DataFrame, target: float) -> dict[str, Any]:
    """What one run's logged ``rows`` (``split`` train/val, ``step``, ``loss``, ``accuracy``) say at the end:
    ``steps_to_target`` (the first evaluation at or above ``target``, among finite ones; NaN if none) and
    ``reached``, ``final_val_accuracy``, ``best_val_accuracy`` and ``final_train_loss``."""
    val = finite_evals(rows[rows["split"] == "val"]).sort_values("step")
    train_loss = rows.loc[rows["split"] == "train"].sort_values("step")["loss"].dropna()
    steps = steps_to_target(val, target)
    return {"steps_to_target": steps, "reached": not math.isnan(steps),
            "final_val_accuracy": float(val["accuracy"].iloc[-1]) if len(val) else math.nan,
            "best_val_accuracy": float(val["accuracy"].max()) if len(val) else math.nan,
            "final_train_loss": float(train_loss.iloc[-1]) if len(train_loss) else math.nan}


def censored_steps(steps: float, budget: float) -> float:
    """``steps``, or ``budget`` when the run never reached the target (NaN): a lower bound on the true number,
    the value that enters the mean when an arm is compared (it favours the arm that did not get there)."""
    return float(budget) if steps is None or (isinstance(steps, float) and math.isnan(steps)) else float(steps)


def seed_stats(frame: pd.DataFrame, by: Sequence[str], value: str) -> pd.DataFrame:
    """Per group ``by`` (in order of appearance): ``seeds`` (values present), ``mean``, ``std`` (sample; 0 for one
    seed), ``min`` and ``max`` of ``value`` over seeds."""
    grouped = frame.groupby(list(by), sort=False, dropna=False)[value]
    out = grouped.agg(seeds="count", mean="mean", std="std", min="min", max="max").reset_index()
    out["std"] = out["std"].fillna(0.0)
    return out


def verdict_word(effect: float, spread: float, *, min_effect: float = 0.0, seeds: int = 2) -> str:
    """The verdict of the rule in the module docstring for a signed ``effect`` (positive: the claimed
    direction) and a ``spread`` over seeds, given the fewest ``seeds`` of either arm."""
    if math.isnan(effect):
        raise ValueError("the effect is NaN: an arm has no values to compare")
    if seeds < 2:
        return INCONCLUSIVE_ONE_SEED
    if effect == 0.0 and spread == 0.0:  # identical in every seed (e.g. both arms stuck at the budget)
        return DOES_NOT_SHOW
    if abs(effect) <= spread:
        return INCONCLUSIVE_SPREAD
    if effect > 0 and effect >= min_effect:
        return SHOWS
    return DOES_NOT_SHOW


@dataclass(frozen=True)
class Comparison:
    """Arm A against arm B on one measure (see :func:`compare`)."""

    mean_a: float
    mean_b: float
    effect: float  # signed: positive is the claimed direction
    spread: float  # the largest range over seeds within either arm
    seeds: int  # the fewest seeds of either arm
    word: str  # shows / does not show / inconclusive: ...

    def describe(self, what: str, unit: str = "", fmt: str = ".3f") -> str:
        """``what: A vs B (effect +x, seed spread y)``, for a verdict line."""
        return (f"{what} {self.mean_a:{fmt}}{unit} vs {self.mean_b:{fmt}}{unit} (effect {self.effect:+{fmt}}{unit}, "
                f"seed spread {self.spread:{fmt}}{unit}, {self.seeds} seed{'s' if self.seeds != 1 else ''})")


def compare(a: Sequence[float], b: Sequence[float], *, higher_is_better: bool = True,
            min_effect: float = 0.0) -> Comparison:
    """Is arm ``a`` better than arm ``b``? ``a`` and ``b`` hold one value per seed; the claim is that ``a`` is
    higher (or lower, with ``higher_is_better=False``) by at least ``min_effect``. NaN values are dropped."""
    av = np.asarray([float(v) for v in a], dtype=float)
    bv = np.asarray([float(v) for v in b], dtype=float)
    av, bv = av[~np.isnan(av)], bv[~np.isnan(bv)]
    if not len(av) or not len(bv):
        raise ValueError(f"compare needs at least one value in each arm, got {len(av)} and {len(bv)}")
    mean_a, mean_b = float(av.mean()), float(bv.mean())
    effect = (mean_a - mean_b) if higher_is_better else (mean_b - mean_a)
    spread = max(float(np.ptp(av)), float(np.ptp(bv)))
    seeds = int(min(len(av), len(bv)))
    return Comparison(mean_a, mean_b, effect, spread, seeds,
                      verdict_word(effect, spread, min_effect=min_effect, seeds=seeds))
