"""How the trained experiments run: their points (one config dict each), in parallel workers, resumable, one
training run per point on the synthetic shapes, and where their results live.

* :data:`CPU_QUICK` and :data:`GPU_FULL`: where a config's points run;
* :func:`run_points`: the unfinished points into ``results_dir/results.jsonl`` through
  :func:`analysis.training.sweep.run_sweep`, one or several at a time; a killed run resumes;
* :func:`train_point`: one training run as a point says, with the model built here when it is a registry name;
* :func:`default_results_dir`: where an experiment's resumable results live, under a results root that
  defaults to ``runs/experiments`` in the current directory.

Used by every experiment that trains: factorization_grid, xception_vs_v3, dead_units, smoothness,
residual_speedup, bn_speedup, label_smoothing and aux_heads.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, fields
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import pandas as pd
import torch

from analysis.callbacks import Callback
from analysis.data.difficulty import parse_difficulty
from analysis.data.synthetic import SyntheticShapes
from analysis.data.tensors import ImageTensors, decode
from analysis.training.config import TrainConfig
from analysis.training.init import initialise, share_weights
from analysis.training.provenance import experiment_fingerprint
from analysis.training.sweep import default_launcher, point_id, points_to_run, read_results, run_sweep
from analysis.training.trainer import Trainer, TrainingDiverged, seed_everything
from inception_models import create_model

__all__ = [
    "CHANCE",
    "CLASSES",
    "CPU_QUICK",
    "DATA_CACHE_ENV",
    "GPU_FULL",
    "RECIPE_KEYS",
    "RESULTS_FILE",
    "RESULTS_ROOT",
    "SPEED",
    "TENSORBOARD_ENV",
    "TRAIN_KEYS",
    "CpuClock",
    "TrainOutcome",
    "build_arm_model",
    "check_config",
    "default_results_dir",
    "num_classes",
    "pixels",
    "point_code_fingerprint",
    "run_points",
    "tensors",
    "threads",
    "train_point",
]

CLASSES = 10  # the synthetic shapes have ten balanced classes
CHANCE = 1.0 / CLASSES

# The default root of the experiments' resumable results, relative to the current directory.
RESULTS_ROOT = Path("runs") / "experiments"
# The file in an experiment's results folder (default_results_dir) that holds one row per logged step of every point.
RESULTS_FILE = "results.jsonl"

# A folder in this environment variable (the command line's --tensorboard) gets each trained point's TensorBoard
# events, in a folder per point id; an environment variable reaches worker processes and cluster jobs.
TENSORBOARD_ENV = "INCEPTION_LAB_TENSORBOARD"

# Where a config's points run. "quick" on this 2-core CPU: two one-thread workers, each point in-process (a
# worker renders the data once for all its points). "full" on a GPU: one point at a time, each in a process of
# its own so a crash or an out-of-memory error costs one point.
#
# How fast a point trains: TrainConfig keys (:data:`TRAIN_KEYS`), so a point carrying them hands them to the
# trainer. "auto" is decided per device (TrainConfig.resolved): bf16 autocast, channels_last, cuDNN benchmarking and
# the 8-bit data resident on the GPU on CUDA (the full tier); all off on the CPU (quick and standard), whose results
# stay bit for bit what they were. compile pays minutes of compilation per point (worth it for long points only);
# the data are tensors on the device, so no loader workers. A point without these keys gets the same "auto" from
# TrainConfig's defaults.
SPEED: dict[str, Any] = dict(amp="auto", channels_last="auto", cudnn_benchmark="auto", data_on_device="auto",
                             compile=False, num_workers=0)
CPU_QUICK: dict[str, Any] = dict(device="cpu", threads=1, workers=2, isolate=False, **SPEED)
GPU_FULL: dict[str, Any] = dict(device="auto", threads=0, workers=1, isolate=True, **SPEED)


def check_config(name: str, config: Mapping[str, Any], reference: Mapping[str, Any]) -> None:
    """Raise a ``ValueError`` naming the keys ``config`` lacks against ``reference`` (the experiment's quick
    config), or a seed count below one."""
    missing = sorted(set(reference) - set(config))
    if missing:
        raise ValueError(f"{name} config lacks {missing}; start from CONFIGS['quick'] or CONFIGS['full']")
    if "seeds" in reference and int(config["seeds"]) < 1:
        raise ValueError(f"seeds must be >= 1, got {config['seeds']}")


def default_results_dir(name: str, mode: str, seed: int, root: str | Path = RESULTS_ROOT) -> Path:
    """Where an experiment's resumable results live: ``<root>/<name>/<mode>-seed<seed>`` (``root`` defaults to
    ``runs/experiments`` under the current directory)."""
    return Path(root) / name / f"{mode}-seed{seed}"


# ==================================================================================================== running
# A folder keeping the rendered synthetic sets on disk (8-bit pixels, :class:`analysis.data.synthetic.SyntheticShapes`'s
# ``store``), read by every process of a sweep instead of rendering again: isolated points (the full tier) render
# a set once, not once each. Where the data lives is no part of a point, so it is an environment setting.
DATA_CACHE_ENV = "INCEPTION_LAB_DATA_CACHE"


def pixels(split: str, n: int, image_size: int, seed: int = 0, difficulty: str = "default") -> ImageTensors:
    """A synthetic shapes split as 8-bit :class:`~analysis.data.tensors.ImageTensors`, rendered once per process (or
    once in all, read back from the folder :data:`DATA_CACHE_ENV` names): what the trainer moves onto a GPU whole
    and scales a batch at a time there."""
    return _pixels(str(split), int(n), int(image_size), int(seed), str(difficulty))


def tensors(split: str, n: int, image_size: int, seed: int = 0,
            difficulty: str = "default") -> tuple[torch.Tensor, torch.Tensor]:
    """A synthetic shapes split as float ``(images, labels)`` tensors in [-1, 1] (``difficulty``: a spec of
    :func:`analysis.data.difficulty.parse_difficulty`): :func:`pixels` scaled, the same numbers as
    ``make_synthetic(...).tensors()``."""
    return _tensors(str(split), int(n), int(image_size), int(seed), str(difficulty))


# Cached on every argument given in full, so ``tensors("val", n, s)`` and ``tensors("val", n, s, 0)`` share one entry.
@lru_cache(maxsize=6)
def _pixels(split: str, n: int, image_size: int, seed: int, difficulty: str) -> ImageTensors:
    store = os.environ.get(DATA_CACHE_ENV) or None
    held = SyntheticShapes(n, image_size, seed=seed, split=split, difficulty=difficulty, cache=True,
                           store=store).image_tensors()
    assert held is not None  # cache=True holds the pixels
    return held


@lru_cache(maxsize=6)
def _tensors(split: str, n: int, image_size: int, seed: int, difficulty: str) -> tuple[torch.Tensor, torch.Tensor]:
    held = _pixels(split, n, image_size, seed, difficulty)
    return decode(held.images), held.labels.clone()


def num_classes(point: Mapping[str, Any]) -> int:
    """The number of classes of a point's data (ten unless its ``difficulty`` adds hue bins)."""
    return parse_difficulty(point.get("difficulty", "default")).num_classes


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


def _sweep_one(point: dict[str, Any], *, run_point: Callable[[dict], pd.DataFrame], path: str,
               fingerprint: str | None = None, stale: str | None = None) -> None:
    run_sweep([point], run_point, path, isolate=False, fingerprint=fingerprint, stale=stale)  # type: ignore[arg-type]


def point_code_fingerprint(run_point: Callable[[dict], Any]) -> str | None:
    """The fingerprint of the code behind ``run_point``'s results: its module's
    (:func:`~analysis.training.provenance.experiment_fingerprint`) when it is one of this package's, else None
    (a script's or a test's point function is not fingerprinted unless its caller gives one)."""
    module = getattr(getattr(run_point, "func", run_point), "__module__", None)  # a partial: its function
    return experiment_fingerprint(module) if module and module.startswith("analysis.") else None


def run_points(points: Sequence[Mapping[str, Any]], run_point: Callable[[dict], pd.DataFrame],
               results_dir: str | Path | None, *, workers: int = 1, isolate: bool = False, progress: bool = True,
               desc: str = "points", columns: Sequence[str] | None = None, numeric: Sequence[str] = (),
               flags: Sequence[str] = (), fingerprint: str | None = None) -> pd.DataFrame:
    """Run the unfinished ``points`` into ``results_dir/results.jsonl`` (a temporary folder when None) through
    :func:`analysis.training.sweep.run_sweep` and return the rows of ``points``, in the order of ``points``.

    ``workers`` > 1 runs that many points at once, each in a spawned worker process (``run_point`` must be a
    module-level function; a script calling this must guard its entry with ``if __name__ == "__main__":``).
    Appends are serialised by the sweep's file lock, so a killed run resumes with the finished points kept.
    A launcher set by :func:`~analysis.training.sweep.sweep_defaults` (the command line's ``--launcher``) places
    the points instead of ``workers``. Results are fingerprinted with ``fingerprint``, by default
    :func:`point_code_fingerprint`; those of other code are refused, rerun or reused as the sweep defaults'
    ``stale`` says.

    ``columns`` gives the table ``point_id`` + those columns (in that order, missing ones blank); the
    ``numeric`` ones are made numbers (the JSON-lines file stores NaN as null) and the ``flags`` booleans.
    """
    from tqdm.auto import tqdm

    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    with contextlib.ExitStack() as stack:
        if results_dir is None:
            results_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix=f"{desc}-"))
        path = Path(results_dir) / RESULTS_FILE
        fingerprint = point_code_fingerprint(run_point) if fingerprint is None else fingerprint
        pending, stale = points_to_run(points, path, fingerprint)
        bar = stack.enter_context(tqdm(total=len(pending), desc=desc, disable=not progress, unit="point"))
        if default_launcher() is not None and pending:
            run_sweep(pending, run_point, path, fingerprint=fingerprint, stale=stale, on_done=lambda _: bar.update(1))
        elif workers == 1 or len(pending) <= 1:
            for point in pending:
                run_sweep([point], run_point, path, isolate=isolate, fingerprint=fingerprint, stale=stale)
                bar.update(1)
        else:
            job = partial(_sweep_one, run_point=run_point, path=str(path), fingerprint=fingerprint, stale=stale)
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


def _point_data(point: Mapping[str, Any]) -> tuple[int, str]:
    """A point's data seed and difficulty spec, the arguments :func:`tensors` takes after the size."""
    return int(point.get("data_seed", 0)), str(point.get("difficulty", "default"))


def build_arm_model(point: Mapping[str, Any], train_images: torch.Tensor | None = None) -> torch.nn.Module:
    """The network of a point's arm, initialised for its seed: ``create_model(point["model"], num_classes=K,
    **point["knobs"])`` right after seeding with ``point["seed"]``; then, with ``point["share"]`` (``{"model",
    "knobs"}`` of the arm it is paired with), every tensor that arm's network of the same seed has under the same
    name and shape is copied in (:func:`analysis.training.init.share_weights`), so two arms of one seed differ only
    where their structure does; then ``point["init"]`` (``"data"``: the data-dependent initialisation on the first
    256 ``train_images``)."""
    classes = num_classes(point)
    seed_everything(int(point["seed"]))
    model = create_model(str(point["model"]), num_classes=classes, **dict(point.get("knobs") or {}))
    share = point.get("share")
    if share:
        seed_everything(int(point["seed"]))
        reference = create_model(str(share["model"]), num_classes=classes, **dict(share.get("knobs") or {}))
        share_weights(model, reference)
    batch = None if train_images is None else train_images[:256]
    return initialise(model, str(point.get("init", "default")), batch)


# The recipe an SGD experiment's config hands every point (factorization_grid, xception_vs_v3).
RECIPE_KEYS = ("steps", "batch_size", "optimizer", "lr", "momentum", "weight_decay", "schedule", "warmup_steps",
               "log_every", "eval_every", "device")

# The point keys that set TrainConfig fields (missing ones take TrainConfig's defaults): TrainConfig's own fields,
# but for those a point does not decide (the model and how the run reports).
TRAIN_KEYS = tuple(f.name for f in fields(TrainConfig) if f.name not in ("model", "model_kwargs", "progress"))


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


def train_point(point: Mapping[str, Any], model: torch.nn.Module | str | None = None, *,
                model_kwargs: Mapping[str, Any] | None = None, callbacks: Sequence[Any] = (),
                setup: Callable[[Any], None] | None = None) -> TrainOutcome:
    """Train a network on the synthetic shapes as ``point`` says (``n_train``, ``n_val``, ``image_size``, optional
    ``data_seed`` (default 0), ``difficulty`` (default ``"default"``) and ``eval_split`` (``"val"``, or ``"test"``
    for the held-out split a learning-rate sweep is judged on), and the :data:`TRAIN_KEYS`), logging ``cpu_s`` on
    the training rows (and TensorBoard events when :data:`TENSORBOARD_ENV` names a folder).

    ``model`` is a built network; a registry name, built here as ``create_model(model, num_classes=K,
    **model_kwargs)`` right after seeding with the point's ``seed`` (so the seed decides the init); or None: the
    point's arm (:func:`build_arm_model`: ``model``, ``knobs``, ``share``, ``init``). A NaN/inf loss
    (:class:`analysis.training.trainer.TrainingDiverged`) is a result: it ends the run and sets ``diverged_step``.
    ``setup(trainer)`` runs after the trainer is built and before training (e.g. to replace its criterion)."""
    data = _point_data(point)
    # 8-bit pixels to the trainer (on a GPU: resident there, scaled per batch); the same numbers as float tensors.
    train = pixels("train", int(point["n_train"]), int(point["image_size"]), *data)
    val = pixels(point.get("eval_split", "val"), int(point["n_val"]), int(point["image_size"]), *data)
    values = {k: point[k] for k in TRAIN_KEYS if k in point}
    if isinstance(values.get("aux_weight"), list):
        values["aux_weight"] = tuple(values["aux_weight"])
    if model is None:
        name = str(point["model"])
        model = build_arm_model(point, tensors("train", int(point["n_train"]), int(point["image_size"]), *data)[0])
    elif isinstance(model, str):
        name = model
        values["model_kwargs"] = {"num_classes": num_classes(point), **(model_kwargs or {})}
    else:
        name = str(point.get("model", type(model).__name__))
    config = TrainConfig(model=name, progress=False, **values)
    if isinstance(model, str):
        seed_everything(config.seed)
        model = create_model(name, **config.model_kwargs)
    clock = CpuClock(config.log_every)
    if os.environ.get(TENSORBOARD_ENV):
        from analysis.training.tensorboard import TensorBoardLogger

        callbacks = [*callbacks, TensorBoardLogger(Path(os.environ[TENSORBOARD_ENV]) / point_id(point))]
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
