"""What the trained experiments share: where their points run (:data:`CPU_QUICK`, :data:`GPU_FULL`), the data,
parallel resumable points, one training run per point, steps to a target with the spread over seeds,
calibration (expected calibration error, reliability bins), logit gaps, and the verdict rule.

Used by every experiment that trains: factorization_grid, xception_vs_v3, dead_units, smoothness,
residual_speedup, bn_speedup, label_smoothing and aux_heads.

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

import contextlib
import math
import multiprocessing as mp
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from analysis.callbacks import Callback
from analysis.training.sweep import pending_points, point_id, read_results, run_sweep

__all__ = [
    "CHANCE",
    "SHOWS",
    "DOES_NOT_SHOW",
    "INCONCLUSIVE_SPREAD",
    "INCONCLUSIVE_ONE_SEED",
    "Comparison",
    "CPU_QUICK",
    "GPU_FULL",
    "check_config",
    "tensors",
    "threads",
    "CpuClock",
    "run_points",
    "RECIPE_KEYS",
    "TRAIN_KEYS",
    "TrainOutcome",
    "train_point",
    "learned_threshold",
    "auto_target",
    "finite_evals",
    "final_evals",
    "steps_to_target",
    "run_outcome",
    "censored_steps",
    "seed_stats",
    "compare",
    "expected_calibration_error",
    "reliability_bins",
    "logit_gaps",
    "verdict_word",
    "band_lines",
    "reliability_figure",
]

CLASSES = 10  # the synthetic shapes have ten balanced classes
CHANCE = 1.0 / CLASSES

SHOWS = "shows"
DOES_NOT_SHOW = "does not show"
INCONCLUSIVE_SPREAD = "inconclusive: spread over seeds larger than the effect"
INCONCLUSIVE_ONE_SEED = "inconclusive: one seed per arm, no spread to judge the effect against"

# Where a config's points run. "quick" on this 2-core CPU: two one-thread workers, each point in-process (a
# worker renders the data once for all its points). "full" on a GPU: one point at a time, each in a process of
# its own so a crash or an out-of-memory error costs one point.
CPU_QUICK: dict[str, Any] = dict(device="cpu", threads=1, workers=2, isolate=False)
GPU_FULL: dict[str, Any] = dict(device="auto", threads=0, workers=1, isolate=True)


def check_config(name: str, config: Mapping[str, Any], reference: Mapping[str, Any]) -> None:
    """Raise a ``ValueError`` naming the keys ``config`` lacks against ``reference`` (the experiment's quick
    config), or a seed count below one."""
    missing = sorted(set(reference) - set(config))
    if missing:
        raise ValueError(f"{name} config lacks {missing}; start from CONFIGS['quick'] or CONFIGS['full']")
    if "seeds" in reference and int(config["seeds"]) < 1:
        raise ValueError(f"seeds must be >= 1, got {config['seeds']}")


# ==================================================================================================== running
@lru_cache(maxsize=6)
def tensors(split: str, n: int, image_size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A synthetic shapes split as ``(images, labels)`` tensors, rendered once per process."""
    from analysis.data.synthetic import make_synthetic

    return make_synthetic(split, n, image_size, seed).tensors()


@contextlib.contextmanager
def threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch threads (0 keeps the current setting), restoring the setting after."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


class CpuClock(Callback):
    """A trainer callback adding ``cpu_s``, this process's CPU seconds since the start of training, to every
    logged training row: on a shared machine CPU time measures a run's cost where wall time measures the load."""

    def __init__(self, log_every: int) -> None:
        self.log_every = int(log_every)
        self._start = 0.0

    def on_train_start(self, trainer: Any) -> None:
        self._start = time.process_time()

    def on_step_end(self, trainer: Any, batch: Any, loss: Any) -> None:
        if trainer.step % self.log_every == 0 or trainer.step >= trainer.total_steps:
            trainer.log_metrics({"cpu_s": time.process_time() - self._start})


def _sweep_one(point: dict[str, Any], *, run_point: Callable[[dict], pd.DataFrame], path: str) -> None:
    run_sweep([point], run_point, path, isolate=False)


def run_points(points: Sequence[Mapping[str, Any]], run_point: Callable[[dict], pd.DataFrame],
               results_dir: str | Path | None, *, workers: int = 1, isolate: bool = False, progress: bool = True,
               desc: str = "points", columns: Sequence[str] | None = None, numeric: Sequence[str] = (),
               flags: Sequence[str] = ()) -> pd.DataFrame:
    """Run the unfinished ``points`` into ``results_dir/results.jsonl`` (a temporary folder when None) through
    :func:`analysis.training.sweep.run_sweep` and return the rows of ``points``, in the order of ``points``.

    ``workers`` > 1 runs that many points at once, each in a spawned worker process (``run_point`` must be a
    module-level function; a script calling this must guard its entry with ``if __name__ == "__main__":``).
    Appends are serialised by the sweep's file lock, so a killed run resumes with the finished points kept.

    ``columns`` gives the table ``point_id`` + those columns (in that order, missing ones blank); the
    ``numeric`` ones are made numbers (the JSON-lines file stores NaN as null) and the ``flags`` booleans.
    """
    from tqdm.auto import tqdm

    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    with contextlib.ExitStack() as stack:
        if results_dir is None:
            results_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix=f"{desc}-"))
        path = Path(results_dir) / "results.jsonl"
        pending = pending_points(points, path)
        bar = stack.enter_context(tqdm(total=len(pending), desc=desc, disable=not progress, unit="point"))
        if workers == 1 or len(pending) <= 1:
            for point in pending:
                run_sweep([point], run_point, path, isolate=isolate)
                bar.update(1)
        else:
            job = partial(_sweep_one, run_point=run_point, path=str(path))
            try:
                with ProcessPoolExecutor(min(workers, len(pending)), mp_context=mp.get_context("spawn")) as pool:
                    for future in as_completed([pool.submit(job, point) for point in pending]):
                        future.result()
                        bar.update(1)
            except BrokenProcessPool as err:
                raise RuntimeError(
                    f"a worker process of {desc} died ({err}); a script running experiments with workers > 1 must "
                    "guard its entry with `if __name__ == \"__main__\":`, or use workers=1. Finished points are "
                    "kept: run again to resume") from err
        table = read_results(path)
    if not table.empty:
        order = {point_id(p): i for i, p in enumerate(points)}
        table = table[table["point_id"].isin(order)]
        table = table.assign(_order=table["point_id"].map(order)).sort_values("_order", kind="stable")
        table = table.drop(columns="_order").reset_index(drop=True)
    if columns is None:
        return table
    table = table.reindex(columns=["point_id", *columns])
    for col in numeric:
        table[col] = pd.to_numeric(table[col], errors="coerce")
    for col in flags:
        table[col] = table[col].fillna(False).astype(bool)
    return table


# The recipe an SGD experiment's config hands every point (factorization_grid, xception_vs_v3).
RECIPE_KEYS = ("steps", "batch_size", "optimizer", "lr", "momentum", "weight_decay", "schedule", "warmup_steps",
               "log_every", "eval_every", "device")

# The point keys that are TrainConfig fields (missing ones take TrainConfig's defaults).
TRAIN_KEYS = ("steps", "batch_size", "optimizer", "lr", "momentum", "weight_decay", "rmsprop_decay", "rmsprop_eps",
              "schedule", "warmup_steps", "label_smoothing", "aux_weight", "grad_clip", "log_every", "eval_every",
              "device", "seed")


@dataclass
class TrainOutcome:
    """What :func:`train_point` gives back: the metrics log (train and val rows, a diverged run's up to the
    divergence), the trainer (for a final evaluation), and the divergence step (None if the run finished)."""

    history: pd.DataFrame
    trainer: Any
    diverged_step: int | None
    cpu_s: float
    wall_s: float

    @property
    def diverged(self) -> bool:
        return self.diverged_step is not None

    @property
    def params(self) -> int:
        """The trained network's parameter count."""
        return sum(p.numel() for p in self.trainer.model.parameters())

    def curve(self, columns: Sequence[str] = ("split", "step", "loss", "accuracy", "time", "cpu_s"),
              **constants: Any) -> pd.DataFrame:
        """The ``train`` and ``val`` rows of the log in ``columns``, with ``diverged`` and ``diverged_step`` and
        the ``constants`` (e.g. the point's arm and seed) on every row. A run that diverged at its first step
        logged nothing: it gets one ``train`` row at step 0, so the point still stands in the results."""
        frame = self.history[self.history["split"].isin(["train", "val"])].reindex(columns=list(columns))
        frame = frame.reset_index(drop=True)
        if frame.empty:
            frame = pd.DataFrame([{"split": "train", "step": 0}]).reindex(columns=list(columns))
        return frame.assign(**constants, diverged=self.diverged, diverged_step=self.diverged_step)


def train_point(point: Mapping[str, Any], model: torch.nn.Module | str, *,
                model_kwargs: Mapping[str, Any] | None = None, callbacks: Sequence[Any] = (),
                setup: Callable[[Any], None] | None = None) -> TrainOutcome:
    """Train ``model`` on the synthetic shapes as ``point`` says (``n_train``, ``n_val``, ``image_size``, an
    optional ``data_seed`` (default 0) and the :data:`TRAIN_KEYS`), logging ``cpu_s`` on the training rows.

    ``model`` is a built network, or a registry name built here as ``create_model(model, num_classes=10,
    **model_kwargs)`` right after seeding with the point's ``seed`` (so the seed decides the init). A
    NaN/inf loss (:class:`analysis.training.trainer.TrainingDiverged`) is a result: it ends the run and sets
    ``diverged_step``. ``setup(trainer)`` runs after the trainer is built and before training (e.g. to replace
    its criterion)."""
    from analysis.training.config import TrainConfig
    from analysis.training.trainer import Trainer, TrainingDiverged, seed_everything
    from inception_models import create_model

    data_seed = int(point.get("data_seed", 0))
    train = tensors("train", int(point["n_train"]), int(point["image_size"]), data_seed)
    val = tensors("val", int(point["n_val"]), int(point["image_size"]), data_seed)
    values = {k: point[k] for k in TRAIN_KEYS if k in point}
    if isinstance(values.get("aux_weight"), list):
        values["aux_weight"] = tuple(values["aux_weight"])
    if isinstance(model, str):
        name = model
        values["model_kwargs"] = {"num_classes": CLASSES, **(model_kwargs or {})}
    else:
        name = str(point.get("model", type(model).__name__))
    config = TrainConfig(model=name, progress=False, **values)
    if isinstance(model, str):
        seed_everything(config.seed)
        model = create_model(name, **config.model_kwargs)
    clock = CpuClock(config.log_every)
    trainer = Trainer(model, config, train, val, callbacks=[clock, *callbacks])
    if setup is not None:
        setup(trainer)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    diverged_step = None
    try:
        trainer.fit()
    except TrainingDiverged as err:
        diverged_step = int(err.step)
    history = pd.DataFrame(trainer.history)
    if "split" not in history:  # diverged at the first step: nothing was logged
        history = pd.DataFrame(columns=["split", "step", "loss", "accuracy", "time", "cpu_s"])
    return TrainOutcome(history, trainer, diverged_step, time.process_time() - cpu0, time.perf_counter() - wall0)


# ================================================================================================ measuring
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


# ============================================================================================== calibration
def _as_probs(probs: torch.Tensor | np.ndarray) -> np.ndarray:
    p = np.asarray(probs.detach().cpu() if isinstance(probs, torch.Tensor) else probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"probabilities must be (samples, classes), got shape {p.shape}")
    return p


def reliability_bins(probs: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray,
                     bins: int = 15) -> pd.DataFrame:
    """The reliability diagram's data (Guo et al. 2017): samples binned by confidence (the top softmax
    probability) into ``bins`` equal-width bins on [0, 1]; per bin ``lower``, ``upper``, ``count``, mean
    ``confidence`` and ``accuracy`` (NaN for an empty bin)."""
    p = _as_probs(probs)
    y = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels).astype(int)
    if len(y) != len(p):
        raise ValueError(f"{len(p)} probability rows but {len(y)} labels")
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Right-closed bins, (lo, hi], with the first one closed on the left too, as Guo et al.
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    rows = []
    for k in range(bins):
        mask = index == k
        n = int(mask.sum())
        rows.append({"bin": k, "lower": float(edges[k]), "upper": float(edges[k + 1]), "count": n,
                     "confidence": float(confidence[mask].mean()) if n else math.nan,
                     "accuracy": float(correct[mask].mean()) if n else math.nan})
    return pd.DataFrame(rows)


def expected_calibration_error(probs: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray,
                               bins: int = 15) -> float:
    """ECE (Naeini et al. 2015; Guo et al. 2017): sum over confidence bins of (bin size / N) x |accuracy -
    confidence|, with ``bins`` equal-width bins (15, as Guo et al.)."""
    table = reliability_bins(probs, labels, bins)
    filled = table[table["count"] > 0]
    total = float(filled["count"].sum())
    return float((filled["count"] / total * (filled["accuracy"] - filled["confidence"]).abs()).sum())


def logit_gaps(logits: torch.Tensor) -> dict[str, float]:
    """The Inception-v3 paper's argument for label smoothing (sec. 7): with one-hot targets the largest logit
    grows much larger than all the others. Means over samples of ``gap_to_mean`` (largest logit minus the mean
    of the other logits), ``gap_to_second`` (largest minus the second largest), and ``max_prob`` (the top
    softmax probability, the confidence)."""
    z = logits.detach().double()
    if z.dim() != 2 or z.shape[1] < 2:
        raise ValueError(f"logits must be (samples, classes >= 2), got shape {tuple(z.shape)}")
    top2 = z.topk(2, dim=1).values
    largest = top2[:, 0]
    others_mean = (z.sum(1) - largest) / (z.shape[1] - 1)
    return {"gap_to_mean": float((largest - others_mean).mean()),
            "gap_to_second": float((top2[:, 0] - top2[:, 1]).mean()),
            "max_prob": float(z.softmax(1).max(1).values.mean())}


# ================================================================================================== figures
def band_lines(frame: pd.DataFrame, *, x: str, y: str, hue: str, col: str | None = None, seed: str = "seed",
               title: str = "", xlabel: str | None = None, ylabel: str | None = None, logy: bool = False,
               per_seed: bool = False, hlines: Mapping[str, float] | None = None, sharey: bool = False) -> Any:
    """The mean over seeds of ``y`` against ``x``, one line per ``hue`` (one panel per ``col``), with the min-max
    band over seeds shaded: the spread the verdicts compare effects against. ``per_seed`` draws every seed's own
    line instead (for an ``x`` such as time, whose values differ between seeds); ``hlines`` adds labelled
    horizontal reference lines (e.g. a target accuracy); ``sharey`` one y scale for every panel. Renders only."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    import analysis.figures  # noqa: F401  (the project's Agg backend and theme)

    data = frame.dropna(subset=[x, y])
    facets = [None] if col is None else list(dict.fromkeys(data[col]))
    hues = list(dict.fromkeys(data[hue]))
    palette = dict(zip(hues, sns.color_palette(n_colors=max(len(hues), 1))))
    fig, axes = plt.subplots(1, len(facets), figsize=(5.5 * len(facets), 4), squeeze=False, sharey=sharey)
    for ax, facet in zip(axes[0], facets):
        part = data if facet is None else data[data[col] == facet]
        for key in hues:
            grp = part[part[hue] == key]
            if grp.empty:
                continue
            if per_seed and seed in grp:
                for i, (_, one) in enumerate(grp.groupby(seed, sort=True)):
                    one = one.sort_values(x)
                    ax.plot(one[x], one[y], color=palette[key], alpha=0.7, linewidth=1.2,
                            label=f"{key}" if i == 0 else None)
                continue
            stats = grp.groupby(x, sort=True)[y].agg(["mean", "min", "max"]).reset_index()
            seeds = grp[seed].nunique() if seed in grp else 1
            ax.plot(stats[x], stats["mean"], marker="o", markersize=3, color=palette[key], label=f"{key}")
            if seeds > 1:
                ax.fill_between(stats[x], stats["min"], stats["max"], color=palette[key], alpha=0.2, linewidth=0)
        for label, level in (hlines or {}).items():
            ax.axhline(level, color="grey", linestyle=":", linewidth=1)
            ax.annotate(label, (0.01, level), xycoords=("axes fraction", "data"), fontsize="x-small",
                        color="grey", va="bottom")
        if logy:
            ax.set_yscale("log")
        ax.set_title(title if facet is None else str(facet))
        ax.set_xlabel(xlabel or x)
        ax.set_ylabel(ylabel or y)
        ax.legend(title=hue, fontsize="small")
    if col is not None and title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def reliability_figure(bins: pd.DataFrame, *, hue: str, title: str = "Reliability diagram") -> Any:
    """Accuracy against confidence per bin, one line per ``hue`` (bins pooled over seeds by count), the
    diagonal of perfect calibration, and the share of samples per bin below. Renders only."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    import analysis.figures  # noqa: F401

    hues = list(dict.fromkeys(bins[hue]))
    palette = dict(zip(hues, sns.color_palette(n_colors=max(len(hues), 1))))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    width = float((bins["upper"] - bins["lower"]).iloc[0]) if len(bins) else 0.1
    offsets = np.linspace(-0.3, 0.3, max(len(hues), 1)) * width if len(hues) > 1 else [0.0]
    for offset, key in zip(offsets, hues):
        grp = bins[bins[hue] == key]
        pooled = grp.assign(hits=grp["accuracy"].fillna(0) * grp["count"],
                            conf=grp["confidence"].fillna(0) * grp["count"])
        pooled = pooled.groupby(["lower", "upper"], sort=True)[["count", "hits", "conf"]].sum().reset_index()
        filled = pooled[pooled["count"] > 0]
        top.plot(filled["conf"] / filled["count"], filled["hits"] / filled["count"], marker="o",
                 color=palette[key], label=f"{hue}={key}")
        centres = (pooled["lower"] + pooled["upper"]) / 2 + offset
        bottom.bar(centres, pooled["count"] / max(pooled["count"].sum(), 1), width=width / max(len(hues), 1),
                   color=palette[key], alpha=0.8)
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy in bin")
    top.set_title(title)
    top.legend(fontsize="small")
    bottom.set_xlabel("confidence (top softmax probability)")
    bottom.set_ylabel("share of samples")
    fig.tight_layout()
    return fig
