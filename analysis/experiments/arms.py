"""Paired arms: how a trained comparison is run so that the verdict protocol (:mod:`analysis.experiments.verdict`)
can judge it.

An experiment names its :class:`Arm` s (a network, its knobs, what of the recipe it changes, its initialisation,
and the arm whose initial weights it shares) and a config; :func:`run_arms` then runs two stages through the
resumable runner (:func:`analysis.experiments.runner.run_points`):

1. **Tuning** (only when the config lists more than one learning rate in ``lrs``): every arm trains once at each
   rate, with the tuning seed (``tune_seed``, never one of the comparison's seeds), and is judged on the
   held-out ``test`` split, never on the validation split the comparison reports. Each arm gets the same budget
   (the same rates and steps); its rate is the one with the best ``tune_metric`` (final validation accuracy by
   default; ``curve_area`` for claims about speed). The chosen rates are part of the results.
2. **Seeds**: every arm trains at its rate for each seed ``seed .. seed + seeds - 1``. Seed ``s`` gives every arm
   the same data order and, where arms share structure, the same initial weights (``share_with``), so the
   per-seed differences are paired.

Each run is summarised by :func:`summarise_runs`: its final and best validation accuracy, the area under its
validation-accuracy curve (a censoring-free measure of speed), its final losses, whether it diverged, and
whether it passed the learnability gate (its best validation accuracy reached
:func:`~analysis.experiments.verdict.learnability_gate` for the data's number of classes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pandas as pd

from analysis.experiments.runner import num_classes, run_points
from analysis.experiments.verdict import curve_area, learnability_gate

__all__ = [
    "Arm",
    "RUN_COLUMNS",
    "TUNE_METRICS",
    "choose_rates",
    "run_arms",
    "summarise_runs",
]

TUNE_METRICS = ("final_val_accuracy", "curve_area")
# One row per run in :func:`summarise_runs`.
RUN_COLUMNS = ["point_id", "stage", "arm", "seed", "lr", "steps", "final_val_accuracy", "best_val_accuracy",
               "final_val_loss", "final_train_loss", "curve_area", "diverged", "diverged_step", "learned", "gate",
               "cpu_s"]


@dataclass(frozen=True)
class Arm:
    """One arm of a paired comparison.

    ``model`` and ``knobs`` build its network (``create_model(model, num_classes=K, **knobs)``); ``recipe``
    overrides the config's training recipe for this arm only (e.g. ``label_smoothing``, ``aux_weight``; never the
    learning rate, which tuning decides); ``init`` is ``"default"`` or ``"data"`` (the data-dependent
    initialisation that lets a network without batch norm train); ``share_with`` names the arm whose initial
    weights of the same seed this arm copies wherever name and shape match."""

    name: str
    model: str
    knobs: Mapping[str, Any] = field(default_factory=dict)
    recipe: Mapping[str, Any] = field(default_factory=dict)
    init: str = "default"
    share_with: str | None = None

    def fields(self, arms: Mapping[str, "Arm"]) -> dict[str, Any]:
        """What a point holds of its arm (``share`` is the paired arm's network, for its initial weights)."""
        if "lr" in self.recipe:
            raise ValueError(f"arm {self.name!r} sets lr in its recipe: the tuning stage decides each arm's rate")
        out: dict[str, Any] = {"arm": self.name, "model": self.model, "knobs": dict(self.knobs),
                               "init": self.init, **dict(self.recipe)}
        if self.share_with is not None:
            if self.share_with not in arms:
                raise ValueError(f"arm {self.name!r} shares weights with unknown arm {self.share_with!r}")
            other = arms[self.share_with]
            out["share"] = {"model": other.model, "knobs": dict(other.knobs)}
        return out


def _check(arms: Sequence[Arm], config: Mapping[str, Any]) -> dict[str, Arm]:
    by_name = {arm.name: arm for arm in arms}
    if len(by_name) != len(arms):
        raise ValueError(f"arm names must be distinct, got {[arm.name for arm in arms]}")
    lrs = list(config["lrs"])
    if not lrs or any(not (isinstance(lr, (int, float)) and lr > 0) for lr in lrs):
        raise ValueError(f"lrs must list positive learning rates, got {config['lrs']!r}")
    if int(config["seeds"]) < 1:
        raise ValueError(f"seeds must be >= 1, got {config['seeds']}")
    metric = config.get("tune_metric", "final_val_accuracy")
    if metric not in TUNE_METRICS:
        raise ValueError(f"tune_metric={metric!r} is not known; use one of {TUNE_METRICS}")
    return by_name


def _tune_seed(config: Mapping[str, Any]) -> int:
    # Far from every comparison seed, so tuning never sees a run the verdict compares.
    return int(config.get("tune_seed", 10_000 + int(config["seed"])))


def summarise_runs(results: pd.DataFrame, *, budget_key: str = "steps") -> pd.DataFrame:
    """One row per run (``point_id``) of a results frame whose rows are training-log rows (``split`` train/val,
    ``step``, ``loss``, ``accuracy``, ``cpu_s``) carrying the point's fields (``stage``, ``arm``, ``seed``, ``lr``,
    ``steps``, ``difficulty``, ``diverged``, ``diverged_step``): columns :data:`RUN_COLUMNS`.

    ``curve_area`` is the mean validation accuracy over the run's steps (:func:`~analysis.experiments.verdict.
    curve_area`, starting from chance at step 0); a diverged run is at chance from its divergence on, and its
    final accuracy is chance (its NaN weights put every image in class 0). ``learned``: the best finite validation
    accuracy reached the learnability gate."""
    rows = []
    for pid, run in results.groupby("point_id", sort=False):
        first = run.iloc[0]
        chance = 1.0 / num_classes(first)
        gate = learnability_gate(chance)
        val = run[run["split"] == "val"].sort_values("step")
        # astype(bool): an empty mask (a run that diverged before its first evaluation) must select rows, not columns
        finite = val[pd.to_numeric(val["loss"], errors="coerce").map(math.isfinite).astype(bool)]
        train = run[run["split"] == "train"].sort_values("step")
        budget = float(first[budget_key])
        diverged = bool(first.get("diverged", False))
        best = float(finite["accuracy"].max()) if len(finite) else math.nan
        # A diverged network (NaN weights) predicts class 0 for every image: chance on the balanced split.
        final = chance if diverged else (float(val["accuracy"].iloc[-1]) if len(val) else math.nan)
        rows.append({
            "point_id": pid, "stage": first.get("stage", "seed"), "arm": first["arm"], "seed": int(first["seed"]),
            "lr": float(first["lr"]), "steps": int(budget), "final_val_accuracy": final, "best_val_accuracy": best,
            "final_val_loss": math.inf if diverged else (float(val["loss"].iloc[-1]) if len(val) else math.nan),
            "final_train_loss": float(train["loss"].iloc[-1]) if len(train) else math.nan,
            "curve_area": _area(finite, budget, chance, first.get("diverged_step") if diverged else None),
            "diverged": diverged,
            "diverged_step": first.get("diverged_step"),
            "learned": bool(best >= gate) if not math.isnan(best) else False,
            "gate": gate,
            "cpu_s": float(pd.to_numeric(train.get("cpu_s"), errors="coerce").max()) if "cpu_s" in train else math.nan,
        })
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


def _area(val: pd.DataFrame, budget: float, chance: float, diverged_step: Any) -> float:
    """The area under the finite validation curve; a diverged run is at chance from its divergence on."""
    if budget <= 0:
        return math.nan
    if diverged_step is not None and not pd.isna(diverged_step):
        val = pd.concat([val[val["step"] < float(diverged_step)],
                         pd.DataFrame({"step": [float(diverged_step)], "accuracy": [chance]})], ignore_index=True)
    return curve_area(val, budget, start_value=chance)


def choose_rates(tuning: pd.DataFrame, metric: str = "final_val_accuracy") -> dict[str, float]:
    """Each arm's learning rate: the one whose tuning run scored best on ``metric`` (a diverged or NaN run scores
    lowest; a tie goes to the smaller rate, the safer one)."""
    rates = {}
    for arm, runs in tuning.groupby("arm", sort=False):
        score = pd.to_numeric(runs[metric], errors="coerce").fillna(-math.inf)
        best = runs.assign(_score=score).sort_values(["_score", "lr"], ascending=[False, True]).iloc[0]
        rates[str(arm)] = float(best["lr"])
    return rates


def run_arms(arms: Sequence[Arm], config: Mapping[str, Any], common: Mapping[str, Any],
             run_point: Callable[[dict], pd.DataFrame], results_dir: str | Path | None, *, progress: bool = True,
             desc: str = "runs", seeded: Sequence[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Tune, then run the seeds (module docstring). ``common`` holds what every point of the experiment shares
    (data, recipe, device, threads); ``run_point(point)`` trains one point and returns its training-log rows
    with the point's fields on them. ``seeded`` names the arms that go on to the seeds (default: every arm; the
    others are only tuned, e.g. the cells of a phase diagram). Returns ``(results, runs)``: every logged row of
    both stages, and one row per run (:func:`summarise_runs`) with the stage (``"tune"`` or ``"seed"``)."""
    by_name = _check(arms, config)
    unknown = sorted(set(seeded or ()) - set(by_name))
    if unknown:
        raise ValueError(f"seeded names unknown arm(s) {unknown}; arms: {sorted(by_name)}")
    lrs = [float(lr) for lr in config["lrs"]]
    workers = dict(workers=int(config.get("workers", 1)), isolate=bool(config.get("isolate", False)))
    frames = []
    if len(lrs) > 1:
        tune = [{**common, **arm.fields(by_name), "stage": "tune", "eval_split": "test", "lr": lr,
                 "seed": _tune_seed(config)} for arm in arms for lr in lrs]
        tuned = run_points(tune, run_point, results_dir, progress=progress, desc=f"{desc}: tuning", **workers)
        frames.append(tuned)
        rates = choose_rates(summarise_runs(tuned), config.get("tune_metric", "final_val_accuracy"))
    else:
        rates = {arm.name: lrs[0] for arm in arms}
    first = int(config["seed"])
    seed_points = [{**common, **arm.fields(by_name), "stage": "seed", "eval_split": "val", "lr": rates[arm.name],
                    "seed": first + k} for k in range(int(config["seeds"])) for arm in arms
                   if seeded is None or arm.name in seeded]
    frames.append(run_points(seed_points, run_point, results_dir, progress=progress, desc=desc, **workers))
    results = pd.concat(frames, ignore_index=True)
    return results, summarise_runs(results)
