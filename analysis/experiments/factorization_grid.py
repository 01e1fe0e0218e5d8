"""Asymmetric factorization by grid size, trained (Inception-v3 paper, Szegedy et al. 2015, sec. 3.2).

The claim: factorizing n x n convolutions into 1 x n then n x 1 "does not work well on early layers, but it
gives very good results on medium grid-sizes (on m x m feature maps, where m ranges between 12 and 20)".

The ablation trains one network, the small Inception of Zhang et al. 2017 (``small_inception``), in variants that
differ only in where the factorization is applied: nowhere (the baseline), or in the Inception modules of one
stage at a time (``factorize_stages=(s,)``: its 3x3 branch becomes 1x3 then 3x1). At 32 px input the stages
see 32x32, 16x16 and 8x8 grids (:func:`inception_models.small_inception.stage_grid_sizes`), so the variants
are "factorized at 32 (early)", "at 16 (the paper's 12-20 range)" and "at 8 (late)". Every variant is trained
identically (same data, recipe, steps and seeds) on the embedded synthetic shapes, and the validation accuracy
at the end is compared over seeds.

:func:`verdict` reads the claim as: factorizing at the medium grid gives a higher accuracy than factorizing at
the early grid, and no lower than the unfactorized network; a difference counts only when it is larger than
the seed spread (max - min over seeds) of both groups compared.
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
from inception_models.small_inception import stage_grid_sizes

__all__ = [
    "CONFIGS",
    "RESULT_COLUMNS",
    "SUMMARY_COLUMNS",
    "make_points",
    "run_point",
    "run",
    "summarise",
    "verdict",
]

NAME = "factorization_grid"
PAPER_GRID_RANGE = (12, 20)  # Inception-v3 paper, sec. 3.2: "m ranges between 12 and 20"
BASELINE = "none"


CONFIGS: dict[str, dict[str, Any]] = {
    # 2 CPU cores: small_inception at a quarter width (105k parameters), 32 px, 4 variants x 3 seeds = 12 runs
    # of 200 SGD steps at batch 32 (1.6 epochs of 4,000 images). The learning rate was picked by measurement:
    # at width 0.25 and 150 steps, lr 0.01 reached 33% validation accuracy where 0.003, 0.005, 0.02, 0.05 and 0.2
    # reached 18%, 21%, 16%, 11% and 10% (chance 10%). Two worker processes of one thread each. Cost measured:
    # 349 CPU-seconds over the 12 runs (23-35 s each, one thread), i.e. about 3 minutes on 2 idle cores.
    "quick": dict(
        model="small_inception",
        width_mult=0.25,
        image_size=32,
        stages=(None, 0, 1, 2),
        seed=0,
        seeds=3,
        n_train=4000,
        n_val=1000,
        steps=200,
        batch_size=32,
        optimizer="sgd",
        lr=0.01,
        momentum=0.9,
        weight_decay=0.0,
        schedule="cosine",
        warmup_steps=10,
        log_every=20,
        eval_every=None,
        **CPU_QUICK,
    ),
    # A GPU: the full-width network (1.65M parameters) on the default 10,000 training images, 5 seeds, 20 epochs.
    # Not run in this session (no GPU); the learning rate is untested at this width.
    "full": dict(
        model="small_inception",
        width_mult=1.0,
        image_size=32,
        stages=(None, 0, 1, 2),
        seed=0,
        seeds=5,
        n_train=10_000,
        n_val=2_000,
        steps=1560,
        batch_size=128,
        optimizer="sgd",
        lr=0.05,
        momentum=0.9,
        weight_decay=5e-4,
        schedule="cosine",
        warmup_steps=50,
        log_every=20,
        eval_every=156,
        **GPU_FULL,
    ),
}

# One row per point and logged step (train) or evaluation (val).
RESULT_COLUMNS = ["variant", "factorize_stage", "grid", "seed", "params", "split", "step", "loss", "accuracy",
                  "n_val", "cpu_s", "wall_s"]
SUMMARY_COLUMNS = ["factorized_at", "grid", "params", "seeds", "acc_mean", "acc_std", "acc_min", "acc_max",
                   "val_loss_mean", "acc_vs_unfactorized"]
_NUMERIC = ["factorize_stage", "grid", "seed", "params", "step", "loss", "accuracy", "n_val", "cpu_s", "wall_s"]


# ======================================================================================= this experiment
def _grid_of(stage: int | None, image_size: int) -> int | None:
    return None if stage is None else stage_grid_sizes(image_size)[stage]


def _variant(stage: int | None, image_size: int) -> str:
    grid = _grid_of(stage, image_size)
    return BASELINE if grid is None else f"{grid}x{grid}"


def _check_config(config: Mapping[str, Any]) -> None:
    check_config(NAME, config, CONFIGS["quick"])
    stages = list(config["stages"])
    bad = [s for s in stages if s is not None and s not in (0, 1, 2)]
    if bad or not stages:
        raise ValueError(f"stages must list small_inception stages 0, 1, 2 or None (unfactorized), got {stages}")


def make_points(config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One point per (factorized stage, seed): the training seed is ``seed + i``; the data seed is ``seed``."""
    _check_config(config)
    points = []
    for stage in config["stages"]:
        for i in range(int(config["seeds"])):
            points.append({
                "experiment": NAME, "model": config["model"], "width_mult": config["width_mult"],
                "factorize_stage": stage, "image_size": config["image_size"], "seed": int(config["seed"]) + i,
                "data_seed": int(config["seed"]), "n_train": config["n_train"], "n_val": config["n_val"],
                "threads": config["threads"], **{k: config[k] for k in RECIPE_KEYS},
            })
    return points


def run_point(point: dict[str, Any]) -> pd.DataFrame:
    """Train one variant with one seed: :data:`RESULT_COLUMNS` rows (train log, then the final validation)."""
    stage = point["factorize_stage"]
    with threads(int(point["threads"])):
        outcome = train_point(point, point["model"], model_kwargs={
            "width_mult": point["width_mult"], "factorize_stages": () if stage is None else (int(stage),)})
    grid = _grid_of(stage, int(point["image_size"]))
    frame = outcome.curve(["split", "step", "loss", "accuracy"], params=outcome.params, n_val=int(point["n_val"]),
                          cpu_s=outcome.cpu_s, wall_s=outcome.wall_s, variant=_variant(stage, int(point["image_size"])),
                          factorize_stage=stage, grid=math.nan if grid is None else grid, seed=int(point["seed"]))
    return frame.reindex(columns=RESULT_COLUMNS)


def run(config: dict[str, Any], *, results_dir: str | Path | None = None, progress: bool = True) -> pd.DataFrame:
    """Train every (variant, seed) of ``config`` (resumable in ``results_dir``) and return the rows: columns
    ``point_id`` + :data:`RESULT_COLUMNS`, one row per point and logged step plus its final validation row."""
    return run_points(make_points(config), run_point, results_dir, workers=int(config["workers"]),
                      isolate=bool(config["isolate"]), progress=progress, desc=NAME,
                      columns=RESULT_COLUMNS, numeric=_NUMERIC)


def summarise(results: pd.DataFrame) -> pd.DataFrame:
    """One row per variant (:data:`SUMMARY_COLUMNS`): final validation accuracy over seeds (mean, std, min,
    max), mean validation loss and the mean accuracy minus the unfactorized network's."""
    final = final_evals(results)
    stats = seed_stats(final, ["variant"], "accuracy")
    extra = final.groupby("variant", sort=False).agg(grid=("grid", "first"), params=("params", "first"),
                                                    val_loss_mean=("loss", "mean")).reset_index()
    table = stats.merge(extra, on="variant")
    base = table.loc[table["variant"] == BASELINE, "mean"]
    table["acc_vs_unfactorized"] = table["mean"] - float(base.iloc[0]) if len(base) else math.nan
    # Baseline first, then from the early (large) grid to the late (small) one.
    table = table.assign(_key=table["grid"].fillna(math.inf)).sort_values("_key", ascending=False, kind="stable")
    table = table.rename(columns={"variant": "factorized_at", "mean": "acc_mean", "std": "acc_std",
                                  "min": "acc_min", "max": "acc_max"})
    table["params"] = table["params"].astype(int)
    table["grid"] = table["grid"].astype("Int64")  # blank for the unfactorized network
    return table.reindex(columns=SUMMARY_COLUMNS).reset_index(drop=True)


def verdict(summary: pd.DataFrame, final: pd.DataFrame, *, n_val: int, chance: float = CHANCE) -> str:
    """The claim at this scale, from the numbers: "shows: ...", "does not show: ..." or "inconclusive: ...".

    ``summary`` is :func:`summarise`'s table, ``final`` the final validation rows (``variant``, ``grid``,
    ``accuracy``; one per seed). Medium grid: the factorized grid in 12-20 nearest 16; early: the largest
    factorized grid above 20. Every difference is judged against the seed spread.
    """
    threshold = learned_threshold(n_val, chance)
    weak = summary.loc[summary["acc_mean"] <= threshold, "factorized_at"].tolist()
    if weak:
        return (f"inconclusive: {', '.join(map(str, weak))} did not learn beyond chance (mean accuracy <= "
                f"{threshold:.3f}: chance {chance:g} + 3 binomial s.e. on {n_val} images)")
    grids = summary.dropna(subset=["grid"])
    mid = grids[grids["grid"].between(*PAPER_GRID_RANGE)]
    early = grids[grids["grid"] > PAPER_GRID_RANGE[1]]
    if mid.empty or early.empty or not (summary["factorized_at"] == BASELINE).any():
        return ("inconclusive: the variants do not include the unfactorized network, a factorized grid in 12-20 and "
                "an earlier (larger) one")
    mid_name = mid.loc[(mid["grid"] - 16).abs().idxmin(), "factorized_at"]
    early_name = early.loc[early["grid"].idxmax(), "factorized_at"]
    acc = {name: final.loc[final["variant"] == name, "accuracy"] for name in (BASELINE, mid_name, early_name)}
    medium_vs_early = compare(acc[mid_name], acc[early_name])
    gain, spread = medium_vs_early.effect, medium_vs_early.spread
    unfactorized_vs_medium = compare(acc[BASELINE], acc[mid_name])
    cost, spread_base = unfactorized_vs_medium.effect, unfactorized_vs_medium.spread
    numbers = (f"accuracy factorized at {mid_name} {acc[mid_name].mean():.3f}, at {early_name} "
               f"{acc[early_name].mean():.3f}, unfactorized {acc[BASELINE].mean():.3f}; {mid_name} minus "
               f"{early_name} = {gain:+.3f} against a seed spread of {spread:.3f}")
    if abs(gain) <= spread:
        return f"inconclusive: spread over seeds larger than the effect ({numbers})"
    if gain < 0:
        return f"does not show: factorizing at the early grid beat the medium grid ({numbers})"
    if cost > spread_base:
        return (f"does not show: the medium grid beat the early one, but factorizing there cost {cost:.3f} against "
                f"the unfactorized network, more than the seed spread {spread_base:.3f} ({numbers})")
    return (f"shows: factorizing at the medium grid beat the early grid and cost no more than the seed spread "
            f"against the unfactorized network ({numbers}; unfactorized minus {mid_name} = {cost:+.3f}, spread "
            f"{spread_base:.3f})")
