"""Batch normalization: the same accuracy in far fewer steps, and higher learning rates become usable (Ioffe &
Szegedy, "Batch Normalization: Accelerating Deep Network Training by Reducing Internal Covariate Shift", ICML
2015, sec. 4.2, Fig. 2 and Table 2).

The claims: BN-Inception at the baseline's learning rate ("BN-Baseline") reached the accuracy of Inception
without BN "in less than half the number of training steps"; with the learning rate multiplied by 5 ("BN-x5") it
needed 14 times fewer steps, and at 30x ("BN-x30") still about 11 times fewer, while without BN such rates are not
usable: "in traditional deep networks, too-high learning rate may result in the gradients that explode or
vanish, as well as getting stuck in poor local minima" (sec. 3.3).

The experiment trains one network with ``norm="bn"`` and with ``norm="none"`` (the same topology; without BN the
convolutions carry a bias) at ``base_lr`` x each of ``multipliers``, several seeds each, with identical budgets.
Steps to a target validation accuracy are read off the validation curve; the target is the BN paper's: what the
network without BN reaches at the base rate (``target_fraction`` x its mean best validation accuracy), but at
least chance + 3 standard errors, so that a baseline stuck at chance still gives a meaningful target. A run that
diverges (a NaN/inf loss: :class:`analysis.training.trainer.TrainingDiverged`) is recorded as such, not raised, and
like a run that never reached the target it counts as the whole budget (a lower bound).

``run(config) -> DataFrame`` gives one row per point and logged step (``split`` "train"/"val"); :func:`per_seed`
one row per point; :func:`summarise` one row per (norm, multiplier); :func:`verdict` the one-line answer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import torch

from analysis.training.init import he_init
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
from inception_models import create_model

__all__ = ["CONFIGS", "RESULT_COLUMNS", "PER_SEED_COLUMNS", "SUMMARY_COLUMNS", "make_points", "run_point", "run",
           "resolve_target", "per_seed", "summarise", "verdict"]

NAME = "bn_speedup"
NORMS = ("bn", "none")
NO_BN_INITS = ("default", "he")
PAPER_MULTIPLIERS = (1, 5, 30)  # BN-Baseline, BN-x5, BN-x30

CONFIGS: dict[str, dict[str, Any]] = {
    # 2 CPU cores, minutes: small_inception at a quarter width (105k parameters; of the models with a norm knob,
    # small_inception, googlenet and bn_inception, it is the one that learns these shapes on this budget: BN-
    # Inception at 32 px and GoogLeNet at 32/64 px stayed near chance for 200 steps), with and without BN, at 1x,
    # 5x and 30x the base rate, 2 seeds: 12 runs of 200 SGD steps (momentum 0.9, constant rate), two one-thread
    # workers. With BN, 200 steps reached 23% (lr 0.002), 43% (0.01) and 14-18% (0.05) validation accuracy;
    # without BN the network stayed at chance for 200-600 steps at every rate tried (0.002 to 0.03, Glorot and He
    # initialisation). The base rate 0.002 puts 5x at BN's best rate. Measured on the shared machine: 396 CPU-s
    # for the 12 runs (26-35 each), about 200 s on 2 idle cores.
    "quick": dict(
        model="small_inception",
        width_mult=0.25,
        image_size=32,
        norms=NORMS,
        base_lr=0.002,
        multipliers=PAPER_MULTIPLIERS,
        none_init="default",
        seed=0,
        seeds=2,
        n_train=4000,
        n_val=500,
        steps=200,
        batch_size=32,
        optimizer="sgd",
        momentum=0.9,
        weight_decay=0.0,
        schedule="constant",
        log_every=5,
        eval_every=25,
        target=None,
        target_fraction=0.9,
        **CPU_QUICK,
    ),
    # A GPU: BN-Inception itself with and without BN (the BN paper's pair: its "Inception" baseline is this
    # network without BN) at half width and 96 px, 3 seeds, 4,000 steps. Not run in this session (no GPU); the
    # base rate is the BN paper's 0.0015 x 10 for the smaller batch-independent problem, untested.
    "full": dict(
        model="bn_inception",
        width_mult=0.5,
        image_size=96,
        norms=NORMS,
        base_lr=0.005,
        multipliers=PAPER_MULTIPLIERS,
        none_init="default",
        seed=0,
        seeds=3,
        n_train=10_000,
        n_val=2_000,
        steps=4_000,
        batch_size=64,
        optimizer="sgd",
        momentum=0.9,
        weight_decay=4e-5,
        schedule="constant",
        log_every=50,
        eval_every=200,
        target=None,
        target_fraction=0.9,
        **GPU_FULL,
    ),
}

RESULT_COLUMNS = ["norm", "multiplier", "lr", "seed", "split", "step", "loss", "accuracy", "time", "cpu_s",
                  "diverged", "diverged_step"]
_NUMERIC = ["multiplier", "lr", "seed", "step", "loss", "accuracy", "time", "cpu_s", "diverged_step"]
PER_SEED_COLUMNS = ["norm", "multiplier", "lr", "seed", "target", "budget", "steps_to_target", "reached",
                    "final_val_accuracy", "best_val_accuracy", "final_train_loss", "diverged", "diverged_step"]
SUMMARY_COLUMNS = ["norm", "multiplier", "lr", "seeds", "reached", "diverged", "steps_to_target_mean",
                   "steps_to_target_min", "steps_to_target_max", "best_val_accuracy_mean",
                   "best_val_accuracy_min", "best_val_accuracy_max", "final_train_loss_mean"]

_POINT_KEYS = ("model", "width_mult", "image_size", "none_init", "n_train", "n_val", "steps", "batch_size",
               "optimizer", "momentum", "weight_decay", "schedule", "log_every", "eval_every", "device", "threads")


def _check_config(config: dict[str, Any]) -> None:
    check_config(NAME, config, CONFIGS["quick"])
    norms = list(config["norms"])
    if sorted(norms) != sorted(NORMS):
        raise ValueError(f"norms must be both of {list(NORMS)} (the claim compares them), got {norms}")
    multipliers = [float(m) for m in config["multipliers"]]
    if 1.0 not in multipliers or any(m <= 0 for m in multipliers):
        raise ValueError(f"multipliers must be positive and include 1 (the base rate), got {multipliers}")
    if config["none_init"] not in NO_BN_INITS:
        raise ValueError(f"none_init={config['none_init']!r} is not supported; use one of {list(NO_BN_INITS)}")
    if config["base_lr"] <= 0:
        raise ValueError(f"base_lr must be positive, got {config['base_lr']}")
    if config["eval_every"] is None or config["eval_every"] % config["log_every"]:
        raise ValueError(f"eval_every ({config['eval_every']}) must be a multiple of log_every "
                         f"({config['log_every']}): steps to target are read off the validation curve")
    if config["target"] is not None and not 0.0 < float(config["target"]) < 1.0:
        raise ValueError(f"target must be an accuracy in (0, 1) or None (automatic), got {config['target']}")


def make_points(config: dict[str, Any]) -> list[dict[str, Any]]:
    """The sweep points: norm x multiplier x seed (``lr`` = ``base_lr`` x multiplier)."""
    _check_config(config)
    common = {k: config[k] for k in _POINT_KEYS}
    return [{**common, "norm": norm, "multiplier": float(m), "lr": float(config["base_lr"]) * float(m),
             "seed": int(config["seed"]) + k}
            for norm in config["norms"] for m in config["multipliers"] for k in range(int(config["seeds"]))]


def run_point(point: dict[str, Any]) -> pd.DataFrame:
    """Train one (norm, multiplier, seed); return its logged train and val rows (:data:`RESULT_COLUMNS`)."""
    with threads(int(point["threads"])):
        torch.manual_seed(point["seed"])
        model = create_model(point["model"], num_classes=10, width_mult=point["width_mult"], norm=point["norm"])
        if point["norm"] == "none" and point["none_init"] == "he":
            he_init(model)  # He et al. 2015: keeps the activation variance without BN, where Glorot shrinks it
        outcome = train_point(point, model)
    frame = outcome.curve(**{key: point[key] for key in ("norm", "multiplier", "lr", "seed")})
    return frame.reindex(columns=RESULT_COLUMNS)


def run(config: dict[str, Any], *, results_dir: str | Path | None = None, progress: bool = True) -> pd.DataFrame:
    """Train every (norm, multiplier, seed) of ``config`` (resumable in ``results_dir``) and return ``point_id``
    + :data:`RESULT_COLUMNS`, one row per point and logged step (train) or evaluation (val)."""
    return run_points(make_points(config), run_point, results_dir, workers=int(config["workers"]),
                      isolate=bool(config["isolate"]), progress=progress, desc=NAME,
                      columns=RESULT_COLUMNS, numeric=_NUMERIC, flags=["diverged"])


def resolve_target(results: pd.DataFrame, config: dict[str, Any]) -> float:
    """``config["target"]`` when given; otherwise the BN paper's: ``target_fraction`` x the mean best validation
    accuracy of the network without BN at the base rate, at least chance + 3 standard errors."""
    if config["target"] is not None:
        return float(config["target"])
    base = finite_evals(
        results[(results["norm"] == "none") & (results["multiplier"] == 1.0) & (results["split"] == "val")])
    best = base.groupby("seed")["accuracy"].max().tolist() if len(base) else []
    return auto_target(best, fraction=float(config["target_fraction"]), n_val=int(config["n_val"]))


def per_seed(results: pd.DataFrame, target: float, budget: int) -> pd.DataFrame:
    """One row per (norm, multiplier, seed): steps to ``target`` validation accuracy (NaN and ``reached`` False
    if never, or if the run diverged first), final and best validation accuracy, last training loss, divergence."""
    rows = []
    for (norm, mult, seed), grp in results.groupby(["norm", "multiplier", "seed"], sort=False):
        rows.append({
            "norm": norm, "multiplier": float(mult), "lr": float(grp["lr"].iloc[0]), "seed": int(seed),
            "target": target, "budget": int(budget), **run_outcome(grp, target),
            "diverged": bool(grp["diverged"].iloc[0]), "diverged_step": grp["diverged_step"].iloc[0],
        })
    return pd.DataFrame(rows, columns=PER_SEED_COLUMNS)


def summarise(seeds: pd.DataFrame) -> pd.DataFrame:
    """One row per (norm, multiplier): seeds that reached the target and that diverged, steps to the target
    over the seeds that reached it (mean, min, max), best validation accuracy, last training loss."""
    rows = []
    for (norm, mult), grp in seeds.groupby(["norm", "multiplier"], sort=False):
        hit = grp[grp["reached"]]
        rows.append({
            "norm": norm, "multiplier": mult, "lr": grp["lr"].iloc[0], "seeds": len(grp),
            "reached": int(grp["reached"].sum()), "diverged": int(grp["diverged"].sum()),
            "steps_to_target_mean": hit["steps_to_target"].mean(), "steps_to_target_min": hit["steps_to_target"].min(),
            "steps_to_target_max": hit["steps_to_target"].max(),
            "best_val_accuracy_mean": grp["best_val_accuracy"].mean(),
            "best_val_accuracy_min": grp["best_val_accuracy"].min(),
            "best_val_accuracy_max": grp["best_val_accuracy"].max(),
            "final_train_loss_mean": grp["final_train_loss"].mean()})
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def _steps(frame: pd.DataFrame, budget: int) -> list[float]:
    # A diverged run never reached the target after its divergence: it counts as the budget, as a slow one.
    return [censored_steps(s, budget) for s in frame["steps_to_target"]]


def verdict(seeds: pd.DataFrame, *, budget: int, n_val: int) -> str:
    """The answer from a :func:`per_seed` table, two claims compared on censored steps to the target:

    - *fewer steps*: BN at the base rate reaches the target in fewer steps than no BN at the base rate;
    - *higher rates usable*: at every multiplier above 1, BN reaches it in fewer steps than no BN (a diverged or
      stuck run counts as the budget).

    The headline is "shows" when every comparison shows, "does not show" when any does not, otherwise the
    first inconclusive reason. BN at the base rate must learn beyond chance, and some BN run must reach the
    target, or the answer is inconclusive. How the higher rates compare with BN's base rate is reported too.
    """
    if seeds.empty:
        raise ValueError("verdict needs at least one per-seed row")
    threshold = learned_threshold(n_val)
    target = float(seeds["target"].iloc[0])
    bn, none = seeds[seeds["norm"] == "bn"], seeds[seeds["norm"] == "none"]
    bn1, none1 = bn[bn["multiplier"] == 1.0], none[none["multiplier"] == 1.0]
    if bn1.empty or none1.empty:
        return "inconclusive: the sweep lacks BN or no-BN runs at the base rate"
    if not bn1["best_val_accuracy"].mean() > threshold:
        return (f"inconclusive: the networks did not learn beyond chance (BN at the base rate: best validation "
                f"accuracy {bn1['best_val_accuracy'].mean():.3f}; chance + 3 SE {threshold:.3f})")
    if not bn["reached"].any():
        return f"inconclusive: no BN run reached the target validation accuracy {target:.3f} in {budget} steps"

    def arm_text(frame: pd.DataFrame) -> str:
        return (f"reached {int(frame['reached'].sum())}/{len(frame)}, diverged {int(frame['diverged'].sum())}/"
                f"{len(frame)}, best accuracy {frame['best_val_accuracy'].mean():.3f}")

    words, parts = [], []
    first = compare(_steps(bn1, budget), _steps(none1, budget), higher_is_better=False)
    words.append(first.word)
    parts.append(f"fewer steps at 1x: {first.word}: " + first.describe("steps to target BN vs no BN", fmt=".0f")
                 + f" (BN {arm_text(bn1)}; no BN {arm_text(none1)})")
    for mult in sorted(set(seeds["multiplier"]) - {1.0}):
        b, n = bn[bn["multiplier"] == mult], none[none["multiplier"] == mult]
        if b.empty or n.empty:
            continue
        cmp = compare(_steps(b, budget), _steps(n, budget), higher_is_better=False)
        words.append(cmp.word)
        vs_base = compare(_steps(b, budget), _steps(bn1, budget), higher_is_better=False)
        parts.append(f"{mult:g}x usable: {cmp.word}: " + cmp.describe("steps BN vs no BN", fmt=".0f")
                     + f" (BN {arm_text(b)}; no BN {arm_text(n)}); BN {mult:g}x faster than BN 1x: {vs_base.word} "
                     f"({vs_base.mean_a:.0f} vs {vs_base.mean_b:.0f} steps)")
    if all(w == SHOWS for w in words):
        head = SHOWS
    elif DOES_NOT_SHOW in words:
        head = DOES_NOT_SHOW
    else:
        head = next(w for w in words if w.startswith("inconclusive"))
    note = ""
    if not none["reached"].any():
        note = (f"; the network without BN never reached the target at any rate, so the step ratios are lower "
                f"bounds (budget {budget})")
    return f"{head} (target validation accuracy {target:.3f}; " + "; ".join(parts) + note + ")"
