"""One trainer for every experiment: any device, AMP, channels_last, ``torch.compile``, DDP under ``torchrun``,
auxiliary-loss weights, label smoothing, the papers' optimiser presets, resumable checkpoints and a metrics log.

>>> config = TrainConfig.preset("inception_v3", steps=200, out_dir="runs/v3")
>>> seed_everything(config.seed)                                 # the seed decides the initialisation too
>>> model = create_model("small_inception", num_classes=10)
>>> history = Trainer(model, config, train_set, val_set).fit()   # a tidy DataFrame, one row per logged step

The trainer takes a built model (ours, torchvision's, timm's or a user's) and seeds the global RNGs with
``config.seed`` (:func:`seed_everything`), so dropout masks follow from the seed whatever happened before.
Design decisions that make a killed run resumable bit for bit (on the CPU; on a GPU with
``deterministic=True``):

* The data order is a pure function of ``(seed, epoch)`` (:mod:`analysis.training.sampling`); the trainer
  gathers each batch by it (from tensors where they live, or through a loader built for every epoch), so a
  resumed run skips the batches of the current epoch that were already consumed instead of replaying a sampler.
* A checkpoint holds the model, optimiser, grad scaler, scheduler, the step, the RNG states (torch, CUDA,
  numpy, python; one set per DDP rank) and the data position; it is written atomically after a step whose
  losses since the last read and parameters are finite, so a diverged state never overwrites the last good
  one (:mod:`analysis.training.checkpoint`).
* The metrics log (``metrics.jsonl``) is cut back to the checkpoint's step on resume, so the logged curve of
  a killed-and-resumed run is the curve of the uninterrupted run.
* Loaders get their own ``torch.Generator`` so that building one never draws from the global RNG that dropout
  uses; evaluation runs under ``torch.random.fork_rng``.

The GPU is never waited for between logged steps: the loss and accuracy of every step stay on the device
and are read (and checked for NaN, naming the first bad step) only when a row is logged, a checkpoint written
or the model evaluated; the gradient norm is read then too. A diverged run is therefore caught at the next
such step, having trained on a few steps past its first NaN; its last good checkpoint is kept.

Under ``torchrun`` (``RANK``/``WORLD_SIZE`` in the environment) the trainer joins the process group itself
(gloo on the CPU, NCCL and the local rank's GPU on CUDA: :func:`analysis.training.placement.placement`), wraps the model in
``DistributedDataParallel`` (BN layers made ``SyncBatchNorm`` with ``sync_bn``) and gives each rank a
contiguous share of every global batch; ``batch_size`` is the global batch, so a run on N processes follows
the same loss curve as one process (up to float summation order, and exactly so only for models without
batch norm or with ``sync_bn``: BN statistics are otherwise per rank). Only rank 0 writes logs and
checkpoints. The trainer keeps the process group until :meth:`Trainer.close` (or the end of the process), so
an ``evaluate()`` after ``fit()`` still reduces over every rank's shard.
"""

from __future__ import annotations

import json
import logging
import math
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
from analysis.training.placement import join_process_group, restore_backend_flags, set_backend_flags, with_sync_bn
from analysis.training.sampling import DataSource, seed_for

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


class _Window:
    """The losses and correct counts of the steps since the last read, kept on the device: one host read per
    logged step instead of one per step (a read waits for the GPU to finish everything queued)."""

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.losses: list[torch.Tensor] = []
        self.correct: list[torch.Tensor] = []
        self.counts: list[int] = []

    def add(self, step: int, loss: torch.Tensor, correct: torch.Tensor, count: int) -> None:
        self.steps.append(step)
        self.losses.append(loss.float())
        self.correct.append(correct.float())
        self.counts.append(count)

    def __len__(self) -> int:
        return len(self.steps)

    def clear(self) -> None:
        self.__init__()  # type: ignore[misc]


class Trainer:
    """Train ``model``, a built network (the caller builds it, e.g. ``create_model(name, ...)`` after
    :func:`seed_everything`), with ``config``.

    ``train_data``/``val_data``: an ``(inputs, targets)`` tensor pair or
    :class:`~analysis.data.tensors.ImageTensors` (gathered a batch at a time where they live, on the GPU with
    ``data_on_device``), a map-style ``Dataset``, or a ``DataLoader`` over one (its collate function, workers and
    batch size are kept, its sampler is replaced by the seeded order). ``callbacks`` follow
    :mod:`analysis.callbacks`. Use the trainer as a context manager, or call :meth:`close`, to leave a process
    group it joined and restore the backend flags it set.

    Attributes for callbacks: ``model`` (the bare module, never the DDP/compiled wrapper), ``optimizer``,
    ``criterion``, ``device``, ``step`` (finished steps; during ``on_after_backward`` the steps finished before
    this one), ``lr`` (the lr of the next optimiser step), ``epoch``, ``rank``, ``world_size``, ``history``,
    ``config`` (its ``"auto"`` values decided for the device).
    """

    def __init__(self, model: nn.Module, config: TrainConfig, train_data: Any, val_data: Any = None,
                 callbacks: Sequence[Any] = ()) -> None:
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
        config.validate()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        self.callbacks = list(callbacks)
        self._owns_process_group = False
        self._saved_flags: dict[str, Any] | None = None
        self.rank, self.world_size, self.device = self._join_process_group(config.device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        bf16 = self.device.type != "cuda" or torch.cuda.is_bf16_supported()
        self.config = config.resolved(self.device.type, bf16_supported=bf16)
        self._saved_flags = set_backend_flags(self.config)
        try:
            self._build(model, train_data, val_data)
        except BaseException:
            self.close()
            raise

    def _build(self, model: nn.Module, train_data: Any, val_data: Any) -> None:
        config = self.config
        self.train_source = self._source(train_data, "train_data")
        self.val_source = None if val_data is None else self._source(val_data, "val_data")
        self.batch_size = config.batch_size or self.train_source.batch_size or 32
        if self.batch_size % self.world_size:
            raise ValueError(f"batch_size {self.batch_size} (the global batch) is not divisible by the "
                             f"{self.world_size} processes; choose a multiple of {self.world_size}")
        self.num_samples = len(self.train_source)
        self.steps_per_epoch = self.num_samples // self.batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(f"the training set has {self.num_samples} samples, fewer than one batch of "
                             f"{self.batch_size}; lower batch_size")
        self.total_steps = (config.steps if config.steps is not None
                            else math.ceil(config.epochs * self.steps_per_epoch))

        seed_everything(config.seed)
        if config.sync_bn:
            model = with_sync_bn(model, world_size=self.world_size, device=self.device)
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
        self._stop_requested: str | None = None
        self._pending: dict[str, Any] = {}
        self._window = _Window()
        self._last_stats = (math.nan, math.nan)
        self._since_row: list[Any] = [0.0, 0, 0.0, 0]  # loss sum, steps, correct, samples since the last row
        self._grad_norm: torch.Tensor | None = None
        self._elapsed_before = 0.0
        self._last_checkpoint_step: int | None = None
        self._log_file = None

    def _source(self, data: Any, what: str) -> DataSource:
        return DataSource.of(data, what).place(self.device, on_device=bool(self.config.data_on_device),
                                               pin_memory=bool(self.config.pin_memory))

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
        """Add values to the current step's metrics row (called by callbacks). A tensor is read when the row is
        written. Under DDP the row waits for the next logged step (every rank writes its rows in step)."""
        self._pending.update(values)

    def request_stop(self, reason: str) -> None:
        """Stop after the current step, writing a checkpoint (called by callbacks). Under DDP the ranks agree
        on a stop at the next logged or checkpointed step, and stop there together."""
        self._stop_requested = str(reason)
        if self.world_size == 1:
            self.stop_reason = self._stop_requested

    def close(self) -> None:
        """Leave the process group this trainer joined and restore the backend flags it set (cuDNN,
        determinism). The trainer still trains and evaluates in one process afterwards, not across ranks."""
        if self._owns_process_group and dist.is_initialized():
            dist.destroy_process_group()
        self._owns_process_group = False
        if self._saved_flags is not None:
            restore_backend_flags(self._saved_flags)
            self._saved_flags = None

    def __enter__(self) -> "Trainer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -------------------------------------------------------------------------------------- training
    def fit(self) -> pd.DataFrame:
        """Train to ``total_steps`` (or an early stop) and return the metrics log as a DataFrame.

        Raises :class:`TrainingDiverged` naming the first step with a NaN or infinite loss (found at the next
        logged, checkpointed or evaluated step); the last good checkpoint stays on disk.
        """
        self._start_run()
        self._t0 = time.perf_counter()
        bar = self._progress_bar()
        self.forward_model.train()
        try:
            for cb in self.callbacks:
                cb.on_train_start(self)
            while self.step < self.total_steps and self.stop_reason is None:
                for batch in self.train_source.epoch_batches(
                        self.batch_size, self.config.seed, self.epoch, self.step % self.steps_per_epoch,
                        rank=self.rank, world_size=self.world_size, num_workers=self.config.num_workers):
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
        return pd.DataFrame(self.history)

    def _train_step(self, batch: Any, bar: Any) -> None:
        inputs, targets = self._to_device(batch)
        lr = self.lr
        with self._autocast():
            outputs = self.forward_model(inputs)
            loss = self.criterion(outputs, targets)
        logits, _ = split_outputs(outputs)
        detached = loss.detach()
        self._window.add(self.step + 1, detached, (logits.detach().argmax(1) == targets).sum(), targets.numel())

        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)  # callbacks and clipping see the true gradients
        else:
            loss.backward()
        for cb in self.callbacks:
            cb.on_after_backward(self, (inputs, targets), detached)
        if self.config.grad_clip is not None:
            self._grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)  # (reads the scaler's inf check from the GPU: fp16 costs a sync)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        for cb in self.callbacks:
            cb.on_step_end(self, (inputs, targets), detached)

        cfg = self.config
        eval_now = self.val_source is not None and bool(cfg.eval_every) and self.step % cfg.eval_every == 0
        checkpoint_now = bool(cfg.checkpoint_every) and self.step % cfg.checkpoint_every == 0
        log_now = self.step % cfg.log_every == 0 or self.step >= self.total_steps
        if self.world_size == 1:  # a callback's metrics or a stop get their row at once
            log_now = log_now or bool(self._pending) or self.stop_reason is not None
        if log_now or eval_now or checkpoint_now:  # under DDP a pure function of the step: every rank reads here
            self._read_window()
            if log_now or self.stop_reason is not None or self._pending:
                self._log_train(lr, bar)
        bar.update(1)
        if eval_now:
            self._log_eval()
        if checkpoint_now:
            self._save_checkpoint()

    def _read_window(self) -> None:
        """Read the losses and correct counts of the steps since the last read from the device (one wait for
        the GPU), reduced over the ranks together with their stop requests; raise :class:`TrainingDiverged`
        naming the first step whose loss is not finite."""
        window = self._window
        if not window:
            return
        k = len(window)
        parts = [torch.stack(window.losses), torch.stack(window.correct)]
        if self.world_size > 1:
            parts.append(torch.tensor([1.0 if self._stop_requested else 0.0], device=parts[0].device))
        packed = torch.cat(parts)
        if self.world_size > 1:
            dist.all_reduce(packed)
        values = packed.tolist()
        loss_values = [v / self.world_size for v in values[:k]]
        correct_values = values[k:2 * k]
        if self.world_size > 1 and values[-1] > 0 and self.stop_reason is None:
            self.stop_reason = self._stop_requested or "stop requested on another rank"
        counts = [count * self.world_size for count in window.counts]
        steps = list(window.steps)
        window.clear()
        for step, value in zip(steps, loss_values):
            if not math.isfinite(value):
                raise self._diverged(step, f"the loss is {value}")
        self._last_stats = (loss_values[-1], correct_values[-1] / counts[-1])
        since = self._since_row
        since[0] += sum(loss_values)
        since[1] += len(loss_values)
        since[2] += sum(correct_values)
        since[3] += sum(counts)

    def _log_train(self, lr: float, bar: Any) -> None:
        """The training row of this step: its loss and accuracy, their means over the steps since the last
        training row (``loss_mean``, ``accuracy_mean``), the lr, the gradient norm and the callbacks' metrics."""
        loss, accuracy = self._last_stats
        loss_sum, steps, correct, samples = self._since_row
        row: dict[str, Any] = {"split": "train", "step": self.step, "epoch": self.step / self.steps_per_epoch,
                               "loss": loss, "accuracy": accuracy, "loss_mean": loss_sum / max(steps, 1),
                               "accuracy_mean": correct / max(samples, 1), "lr": lr, "time": self._elapsed()}
        self._since_row = [0.0, 0, 0.0, 0]
        if self._grad_norm is not None:
            row["grad_norm"] = self._grad_norm
        if self.scaler is not None:
            row["loss_scale"] = self.scaler.get_scale()
        self._write_row({**row, **self._pending})
        self._pending = {}
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.3g}", refresh=False)

    @torch.no_grad()
    def evaluate(self, data: Any = None) -> dict[str, float]:
        """Mean plain cross-entropy (no smoothing, main head only) and top-1 accuracy on ``data`` (or val_data).

        Runs in eval mode (BN running statistics, no dropout) and restores the train/eval mode and the RNG.
        Under DDP each rank evaluates a shard and the sums are reduced; after :meth:`close` (no process group)
        each rank evaluates the whole set.
        """
        source = self.val_source if data is None else self._source(data, "data")
        if source is None:
            raise ValueError("evaluate() needs data: pass it, or give val_data to the Trainer")
        sharded = self.world_size > 1 and dist.is_initialized()
        rank, world = (self.rank, self.world_size) if sharded else (0, 1)
        was_training = self.forward_model.training
        batch_size = self.config.eval_batch_size or source.batch_size or self.batch_size
        totals = torch.zeros(3, dtype=torch.float64, device=self.device)
        fork_devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=fork_devices):
            self.forward_model.eval()
            try:
                for batch in source.eval_batches(batch_size, rank=rank, world_size=world, seed=self.config.seed,
                                                 num_workers=self.config.num_workers):
                    inputs, targets = self._to_device(batch)
                    with self._autocast():
                        logits, _ = split_outputs(self.forward_model(inputs))
                    totals[0] += F.cross_entropy(logits.float(), targets, reduction="sum").double()
                    totals[1] += (logits.argmax(1) == targets).sum()
                    totals[2] += targets.numel()
            finally:
                self.forward_model.train(was_training)
        if sharded:
            dist.all_reduce(totals)
        loss_sum, correct, samples = totals.tolist()
        n = max(samples, 1.0)
        return {"loss": loss_sum / n, "accuracy": correct / n, "samples": int(samples)}

    # ------------------------------------------------------------------------------------ internals
    def _join_process_group(self, device: str) -> tuple[int, int, torch.device]:
        """(rank, world size, device): :func:`~analysis.training.placement.join_process_group`; a group joined here
        is this trainer's to leave in :meth:`close`."""
        rank, world, target, joined = join_process_group(device)
        self._owns_process_group = self._owns_process_group or joined
        return rank, world, target

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

    def _elapsed(self) -> float:
        return self._elapsed_before + time.perf_counter() - self._t0

    def _progress_bar(self):
        from tqdm.auto import tqdm

        show = self.config.progress if self.config.progress is not None else sys.stderr.isatty()
        return tqdm(total=self.total_steps, initial=self.step, disable=not (show and self.is_main),
                    desc=self.config.model or type(self.model).__name__, unit="step", dynamic_ncols=True)

    def _log_eval(self) -> None:
        self._read_window()  # a NaN before the evaluation is named by its step, not by the evaluation
        metrics = self.evaluate()
        self._last_eval_step = self.step
        self._write_row({"split": "val", "step": self.step, "epoch": self.step / self.steps_per_epoch,
                         "loss": metrics["loss"], "accuracy": metrics["accuracy"], "time": self._elapsed()})

    def _write_row(self, row: dict[str, Any]) -> None:
        row = {k: jsonable(v) for k, v in row.items()}
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
    def _checkpoint_to_resume(self) -> bool:
        """Whether to resume: rank 0's answer, which every rank gets; a rank that cannot see the checkpoint
        rank 0 found (no shared file system) makes every rank raise the same error."""
        if not self.config.resume or self.checkpoint_path is None:
            return False
        here = self.checkpoint_path.exists()
        if self.world_size == 1 or not dist.is_initialized():
            return here
        answer = [here]
        dist.broadcast_object_list(answer, src=0)
        missing = torch.tensor([1.0 if answer[0] and not here else 0.0], device=self.device)
        dist.all_reduce(missing)
        if float(missing) > 0:
            raise FileNotFoundError(
                f"rank 0 found {self.checkpoint_path} to resume from but {int(float(missing))} rank(s) cannot see "
                "it: give out_dir on a file system every node shares")
        return bool(answer[0])

    def _start_run(self) -> None:
        self._last_eval_step = -1
        if self.out_dir is None:
            return
        metrics_path = self.out_dir / METRICS_FILE
        state = None
        if self._checkpoint_to_resume():
            state = load_checkpoint(self.checkpoint_path)  # type: ignore[arg-type]
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
        self._read_window()  # the losses since the last read are finite, or this raises naming the step
        params = list(self.model.named_parameters())
        finite = torch.stack([torch.isfinite(p).all() for _, p in params]).tolist() if params else []
        bad = [name for (name, _), ok in zip(params, finite) if not ok]
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
