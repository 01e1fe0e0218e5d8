"""One trainer for every experiment: any device, AMP, channels_last, ``torch.compile``, DDP under ``torchrun``,
auxiliary-loss weights, label smoothing, the papers' optimiser presets, resumable checkpoints and a metrics log.

>>> config = TrainConfig.preset("inception_v3", steps=200, out_dir="runs/v3")
>>> seed_everything(config.seed)                                 # the seed decides the initialisation too
>>> model = create_model("small_inception", num_classes=10)
>>> history = Trainer(model, config, train_set, val_set).fit()   # a tidy DataFrame, one row per logged step

The trainer takes a built model (ours, torchvision's, timm's or a user's) and seeds the global RNGs with
``config.seed`` (:func:`seed_everything`), so dropout masks follow from the seed whatever happened before.
Design decisions that make a killed run resumable bit for bit (on the CPU):

* The data order is a pure function of ``(seed, epoch)`` (:mod:`analysis.training.sampling`); the trainer
  builds its own loader around the map-style dataset for every epoch, so a resumed run skips the batches of
  the current epoch that were already consumed instead of replaying a sampler.
* A checkpoint holds the model, optimiser, grad scaler, scheduler, the step, the RNG states (torch, CUDA,
  numpy, python; one set per DDP rank) and the data position; it is written atomically after a step whose
  loss and parameters are finite, so a diverged state never overwrites the last good one
  (:mod:`analysis.training.checkpoint`).
* The metrics log (``metrics.jsonl``) is cut back to the checkpoint's step on resume, so the logged curve of
  a killed-and-resumed run is the curve of the uninterrupted run.
* Loaders get their own ``torch.Generator`` so that building one never draws from the global RNG that dropout
  uses; evaluation runs under ``torch.random.fork_rng``.

Under ``torchrun`` (``RANK``/``WORLD_SIZE`` in the environment) the trainer joins the process group itself
(gloo on the CPU, nccl on CUDA), wraps the model in ``DistributedDataParallel`` and gives each rank a
contiguous share of every global batch; ``batch_size`` is the global batch, so a run on N processes follows
the same loss curve as one process (up to float summation order, and exactly so only for models without
batch norm: BN statistics are per rank). Only rank 0 writes logs and checkpoints.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from analysis.io import atomic_write_text
from analysis.training.checkpoint import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    METRICS_FILE,
    jsonable,
    load_checkpoint,
    read_rows,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from analysis.training.config import TrainConfig
from analysis.training.loss import InceptionLoss, split_outputs
from analysis.training.optim import lr_schedule, make_optimizer
from analysis.training.sampling import DataSource, EvalShard, seed_for

__all__ = ["Trainer", "TrainingDiverged", "seed_everything"]

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss (or, at a checkpoint, a parameter) became NaN or infinite; ``step`` names the step."""

    def __init__(self, step: int, message: str, checkpoint: Path | None = None) -> None:
        super().__init__(message)
        self.step = step
        self.checkpoint = checkpoint


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's and torch's global RNGs (the trainer does at its start; call it before building a
    model so that the seed decides the initialisation too)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _resolve_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device='cuda' but no CUDA device is available; use device='auto' or 'cpu'")
        return torch.device("cuda", local_rank)
    if name == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device='mps' but MPS is not available; use device='auto' or 'cpu'")
    return torch.device(name)


class Trainer:
    """Train ``model``, a built network (the caller builds it, e.g. ``create_model(name, ...)`` after
    :func:`seed_everything`), with ``config``.

    ``train_data``/``val_data``: a map-style ``Dataset`` of ``(image, label)``, a ``DataLoader`` over one (its
    collate function, workers and batch size are kept, its sampler is replaced by the seeded order), or an
    ``(inputs, targets)`` tensor pair. ``callbacks`` follow :mod:`analysis.callbacks`.

    Attributes for callbacks: ``model`` (the bare module, never the DDP/compiled wrapper), ``optimizer``,
    ``criterion``, ``device``, ``step`` (finished steps; during ``on_after_backward`` the steps finished before
    this one), ``lr`` (the lr of the next optimiser step), ``epoch``, ``rank``, ``world_size``, ``history``.
    """

    def __init__(self, model: nn.Module, config: TrainConfig, train_data: Any, val_data: Any = None,
                 callbacks: Sequence[Any] = ()) -> None:
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
        config.validate()
        self.config = config
        self.callbacks = list(callbacks)
        self._owns_process_group = False
        self.rank, self.world_size, local_rank = self._join_process_group()
        self.device = _resolve_device(config.device, local_rank)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)

        self.train_source = DataSource.of(train_data, "train_data")
        self.val_source = None if val_data is None else DataSource.of(val_data, "val_data")
        self.batch_size = config.batch_size or self.train_source.batch_size or 32
        if self.batch_size % self.world_size:
            raise ValueError(f"batch_size {self.batch_size} (the global batch) is not divisible by the "
                             f"{self.world_size} processes; choose a multiple of {self.world_size}")
        self.num_samples = len(self.train_source.dataset)
        self.steps_per_epoch = self.num_samples // self.batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(f"the training set has {self.num_samples} samples, fewer than one batch of "
                             f"{self.batch_size}; lower batch_size")
        self.total_steps = (config.steps if config.steps is not None
                            else math.ceil(config.epochs * self.steps_per_epoch))

        seed_everything(config.seed)
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        self.memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        self.model = model.to(self.device, memory_format=self.memory_format)
        self.criterion = InceptionLoss(config.label_smoothing, config.aux_weight)
        self.optimizer = make_optimizer(self.model, config)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_schedule(config, self.steps_per_epoch, self.total_steps))
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, None: None}[config.amp]
        self.scaler = torch.amp.GradScaler(self.device.type) if config.amp == "fp16" else None
        self.forward_model: nn.Module = self.model
        if self.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.forward_model = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            # Independent dropout masks per rank; the weights were just broadcast from rank 0.
            torch.manual_seed(seed_for(config.seed, 1 + self.rank))
        if config.compile:
            self.forward_model = torch.compile(self.forward_model)

        self.out_dir = None if config.out_dir is None else Path(config.out_dir)
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self.stop_reason: str | None = None
        self._pending: dict[str, Any] = {}
        self._elapsed_before = 0.0
        self._last_checkpoint_step: int | None = None
        self._log_file = None

    # -------------------------------------------------------------------------------- public protocol
    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    @property
    def epoch(self) -> int:
        return self.step // self.steps_per_epoch

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def checkpoint_path(self) -> Path | None:
        return None if self.out_dir is None else self.out_dir / CHECKPOINT_FILE

    def log_metrics(self, values: dict[str, Any]) -> None:
        """Add values to the current step's metrics row (called by callbacks)."""
        self._pending.update({k: jsonable(v) for k, v in values.items()})

    def request_stop(self, reason: str) -> None:
        """Stop after the current step, writing a checkpoint (called by callbacks)."""
        self.stop_reason = str(reason)

    # -------------------------------------------------------------------------------------- training
    def fit(self) -> pd.DataFrame:
        """Train to ``total_steps`` (or an early stop) and return the metrics log as a DataFrame.

        Raises :class:`TrainingDiverged` at the first step with a NaN or infinite loss; the last good
        checkpoint stays on disk.
        """
        try:
            self._start_run()
        except BaseException:
            self._leave_process_group()
            raise
        self._t0 = time.perf_counter()
        bar = self._progress_bar()
        self.forward_model.train()
        try:
            for cb in self.callbacks:
                cb.on_train_start(self)
            while self.step < self.total_steps and self.stop_reason is None:
                for batch in self._epoch_loader(self.epoch, self.step % self.steps_per_epoch):
                    self._train_step(batch, bar)
                    if self.step >= self.total_steps or self.stop_reason is not None:
                        break
            finished = self.step >= self.total_steps  # not on an early stop, so a resumed log matches
            if self.val_source is not None and finished and self._last_eval_step != self.step:
                self._log_eval()
            if self.stop_reason is not None and self.is_main:
                log.info("training stopped at step %d: %s", self.step, self.stop_reason)
            if self._last_checkpoint_step != self.step:
                self._save_checkpoint()
        finally:
            try:
                for cb in self.callbacks:
                    cb.on_train_end(self)
                if self._pending:
                    self._write_row({"split": "end", "step": self.step, "epoch": self.step / self.steps_per_epoch,
                                     **self._pending})
                    self._pending = {}
            finally:
                bar.close()
                if self._log_file is not None:
                    self._log_file.close()
                    self._log_file = None
                self._leave_process_group()
        return pd.DataFrame(self.history)

    def _train_step(self, batch: Any, bar: Any) -> None:
        inputs, targets = self._to_device(batch)
        lr = self.lr
        with self._autocast():
            outputs = self.forward_model(inputs)
            loss = self.criterion(outputs, targets)
        logits, _ = split_outputs(outputs)
        correct = (logits.detach().argmax(1) == targets).sum()
        mean_loss, accuracy = self._reduce(loss.detach(), correct, targets.numel())
        if not math.isfinite(mean_loss):
            raise self._diverged(self.step + 1, f"the loss is {mean_loss}")

        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)  # callbacks and clipping see the true gradients
        else:
            loss.backward()
        detached = loss.detach()
        for cb in self.callbacks:
            cb.on_after_backward(self, (inputs, targets), detached)
        grad_norm = None
        if self.config.grad_clip is not None:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip))
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.step += 1

        for cb in self.callbacks:
            cb.on_step_end(self, (inputs, targets), detached)
        if self.world_size > 1:
            flag = torch.tensor([1.0 if self.stop_reason is not None else 0.0], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            if flag.item() and self.stop_reason is None:
                self.stop_reason = "stop requested on another rank"

        last = self.step >= self.total_steps or self.stop_reason is not None
        if self.step % self.config.log_every == 0 or self._pending or last:
            row = {"split": "train", "step": self.step, "epoch": self.step / self.steps_per_epoch,
                   "loss": mean_loss, "accuracy": accuracy, "lr": lr, "time": self._elapsed()}
            if grad_norm is not None:
                row["grad_norm"] = grad_norm
            if self.scaler is not None:
                row["loss_scale"] = float(self.scaler.get_scale())
            self._write_row({**row, **self._pending})
            self._pending = {}
            bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.3g}", refresh=False)
        bar.update(1)
        if self.val_source is not None and self.config.eval_every and self.step % self.config.eval_every == 0:
            self._log_eval()
        if self.config.checkpoint_every and self.step % self.config.checkpoint_every == 0:
            self._save_checkpoint()

    @torch.no_grad()
    def evaluate(self, data: Any = None) -> dict[str, float]:
        """Mean plain cross-entropy (no smoothing, main head only) and top-1 accuracy on ``data`` (or val_data).

        Runs in eval mode (BN running statistics, no dropout) and restores the train/eval mode and the RNG.
        Under DDP each rank evaluates a shard and the sums are reduced.
        """
        source = self.val_source if data is None else DataSource.of(data, "data")
        if source is None:
            raise ValueError("evaluate() needs data: pass it, or give val_data to the Trainer")
        was_training = self.forward_model.training
        batch_size = self.config.eval_batch_size or source.batch_size or self.batch_size
        loader = source.loader(
            dict(sampler=EvalShard(len(source.dataset), self.rank, self.world_size), batch_size=batch_size),
            seed_for(self.config.seed, 7, self.rank), self.config.num_workers)
        totals = torch.zeros(3, dtype=torch.float64, device=self.device)
        fork_devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=fork_devices):
            self.forward_model.eval()
            try:
                for batch in loader:
                    inputs, targets = self._to_device(batch)
                    with self._autocast():
                        logits, _ = split_outputs(self.forward_model(inputs))
                    totals[0] += F.cross_entropy(logits.float(), targets, reduction="sum").double()
                    totals[1] += (logits.argmax(1) == targets).sum()
                    totals[2] += targets.numel()
            finally:
                self.forward_model.train(was_training)
        if self.world_size > 1 and dist.is_initialized():  # after fit() left the group, a rank sees its shard
            dist.all_reduce(totals)
        n = max(float(totals[2]), 1.0)
        return {"loss": float(totals[0]) / n, "accuracy": float(totals[1]) / n, "samples": int(totals[2])}

    # ------------------------------------------------------------------------------------ internals
    def _join_process_group(self) -> tuple[int, int, int]:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return 0, 1, 0
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if not dist.is_initialized():
            use_cuda = self.config.device in ("auto", "cuda") and torch.cuda.is_available()
            if use_cuda:
                torch.cuda.set_device(local_rank)
            dist.init_process_group(backend="nccl" if use_cuda else "gloo")
            self._owns_process_group = True
        return dist.get_rank(), dist.get_world_size(), local_rank

    def _leave_process_group(self) -> None:
        if self._owns_process_group and dist.is_initialized():
            dist.destroy_process_group()
            self._owns_process_group = False

    def _autocast(self):
        if self.amp_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _to_device(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise TypeError(f"a batch must be (inputs, targets), got {type(batch).__name__}")
        inputs, targets = batch[0], batch[1]
        non_blocking = self.device.type == "cuda"
        inputs = inputs.to(self.device, non_blocking=non_blocking)
        if inputs.dim() == 4:
            inputs = inputs.contiguous(memory_format=self.memory_format)
        return inputs, targets.to(self.device, non_blocking=non_blocking)

    def _epoch_loader(self, epoch: int, start: int) -> DataLoader:
        return self.train_source.epoch_loader(self.batch_size, self.config.seed, epoch, start, rank=self.rank,
                                              world_size=self.world_size, num_workers=self.config.num_workers)

    def _reduce(self, loss: torch.Tensor, correct: torch.Tensor, count: int) -> tuple[float, float]:
        if self.world_size == 1:
            return float(loss), float(correct) / count
        stats = torch.stack([loss.float(), correct.float(), torch.tensor(float(count), device=loss.device)])
        dist.all_reduce(stats)
        return float(stats[0]) / self.world_size, float(stats[1]) / float(stats[2])

    def _elapsed(self) -> float:
        return self._elapsed_before + time.perf_counter() - self._t0

    def _progress_bar(self):
        from tqdm.auto import tqdm

        show = self.config.progress if self.config.progress is not None else sys.stderr.isatty()
        return tqdm(total=self.total_steps, initial=self.step, disable=not (show and self.is_main),
                    desc=self.config.model or type(self.model).__name__, unit="step", dynamic_ncols=True)

    def _log_eval(self) -> None:
        metrics = self.evaluate()
        self._last_eval_step = self.step
        self._write_row({"split": "val", "step": self.step, "epoch": self.step / self.steps_per_epoch,
                         "loss": metrics["loss"], "accuracy": metrics["accuracy"], "time": self._elapsed()})

    def _write_row(self, row: dict[str, Any]) -> None:
        self.history.append(row)
        if self._log_file is not None:
            self._log_file.write(json.dumps(row) + "\n")
            self._log_file.flush()

    def _diverged(self, step: int, what: str) -> TrainingDiverged:
        kept = (f"the last good checkpoint {self.checkpoint_path} (step {self._last_checkpoint_step}) is kept"
                if self._last_checkpoint_step is not None else "no checkpoint had been written")
        return TrainingDiverged(
            step, f"training diverged at step {step}: {what} (lr {self.lr:.4g}); {kept}. Lower lr, set grad_clip, "
                  "or use amp='bf16' rather than 'fp16', then resume.", self.checkpoint_path)

    # ------------------------------------------------------------------------- checkpoint and resume
    def _start_run(self) -> None:
        self._last_eval_step = -1
        if self.out_dir is None:
            return
        metrics_path = self.out_dir / METRICS_FILE
        state = None
        if self.config.resume and self.checkpoint_path.exists():
            state = load_checkpoint(self.checkpoint_path)
            self._restore(state)
        elif self.config.resume and self.is_main:
            log.info("resume=True but %s holds no checkpoint: starting afresh", self.out_dir)
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            kept = [r for r in read_rows(metrics_path) if r.get("step", 0) <= self.step] if state else []
            atomic_write_text(metrics_path, "".join(json.dumps(r) + "\n" for r in kept))
            self.history = kept
            atomic_write_text(self.out_dir / CONFIG_FILE, json.dumps(
                {**self.config.to_dict(), "world_size": self.world_size, "total_steps": self.total_steps,
                 "steps_per_epoch": self.steps_per_epoch}, indent=2, default=str) + "\n")
            self._log_file = metrics_path.open("a", encoding="utf-8")
        if state is not None:  # from the checkpoint, not the log, so every DDP rank agrees on the final eval
            self._last_eval_step = int(state.get("last_eval_step", -1))

    def _restore(self, state: dict[str, Any]) -> None:
        position = state["data"]
        for key, mine in (("seed", self.config.seed), ("batch_size", self.batch_size),
                          ("num_samples", self.num_samples)):
            if position[key] != mine:
                raise ValueError(f"cannot resume {self.checkpoint_path}: it was written with {key}={position[key]}, "
                                 f"this run has {key}={mine}; the data order would differ. Use the same value "
                                 "or a fresh out_dir")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self._elapsed_before = float(state.get("elapsed", 0.0))
        self._last_checkpoint_step = self.step
        rng = state["rng"]
        set_rng_state(rng[self.rank] if self.rank < len(rng) else rng[0], self.device)
        if self.is_main:
            log.info("resumed %s at step %d (epoch %d, batch %d)", self.checkpoint_path, self.step,
                     position["epoch"], position["batch"])

    def _save_checkpoint(self) -> None:
        if self.out_dir is None:
            return
        bad = [name for name, p in self.model.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            raise self._diverged(self.step, f"parameter {bad[0]} is not finite ({len(bad)} parameters are not)")
        rng = rng_state(self.device)
        if self.world_size > 1:
            gathered: list[Any] = [None] * self.world_size
            dist.all_gather_object(gathered, rng)
            rngs = gathered
        else:
            rngs = [rng]
        if self.is_main:
            state = {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "step": self.step,
                "rng": rngs,
                "data": {"epoch": self.epoch, "batch": self.step % self.steps_per_epoch, "seed": self.config.seed,
                         "batch_size": self.batch_size, "num_samples": self.num_samples,
                         "steps_per_epoch": self.steps_per_epoch},
                "elapsed": self._elapsed(),
                "last_eval_step": self._last_eval_step,
                "world_size": self.world_size,
                "config": self.config.to_dict(),
            }
            save_checkpoint(self.checkpoint_path, state)
        self._last_checkpoint_step = self.step
