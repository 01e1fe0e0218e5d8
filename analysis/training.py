"""One trainer for every experiment: any device, AMP, channels_last, ``torch.compile``, DDP under ``torchrun``,
auxiliary-loss weights, label smoothing, the papers' optimiser presets, resumable checkpoints and a metrics log.

>>> config = TrainConfig.preset("inception_v3", model="small_inception", steps=200, out_dir="runs/v3")
>>> history = Trainer(None, config, train_set, val_set).fit()        # a tidy DataFrame, one row per logged step

Design decisions that make a killed run resumable bit for bit (on the CPU):

* The data order is a pure function of ``(seed, epoch)`` (:func:`epoch_order`); the trainer builds its own
  loader around the map-style dataset for every epoch, so a resumed run skips the batches of the current epoch
  that were already consumed instead of replaying a sampler.
* A checkpoint holds the model, optimiser, grad scaler, scheduler, the step, the RNG states (torch, CUDA,
  numpy, python; one set per DDP rank) and the data position; it is written atomically after a step whose
  loss and parameters are finite, so a diverged state never overwrites the last good one.
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
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler, TensorDataset

from analysis.data import epoch_order
from analysis.io import atomic_path, atomic_write_text

__all__ = [
    "TrainConfig",
    "Trainer",
    "TrainingDiverged",
    "InceptionLoss",
    "RMSpropTF",
    "PRESETS",
    "epoch_order",
    "split_outputs",
    "load_checkpoint",
    "read_metrics",
    "train_from_cli",
]

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
CHECKPOINT_FILE = "checkpoint.pt"
CONFIG_FILE = "config.json"

OPTIMIZERS = ("sgd", "rmsprop")
SCHEDULES = ("constant", "step", "cosine")
AMP_MODES = (None, "bf16", "fp16")
DEVICES = ("auto", "cuda", "mps", "cpu")


class TrainingDiverged(RuntimeError):
    """The loss (or, at a checkpoint, a parameter) became NaN or infinite; ``step`` names the step."""

    def __init__(self, step: int, message: str, checkpoint: Path | None = None) -> None:
        super().__init__(message)
        self.step = step
        self.checkpoint = checkpoint


# The papers' recipes. Values a paper does not state are marked and come from the reference training code.
PRESETS: dict[str, dict[str, Any]] = {
    # GoogLeNet (Szegedy et al. 2015, sec. 6): asynchronous SGD, momentum 0.9, "decreasing the learning rate
    # by 4% every 8 epochs", aux losses weighted 0.3. The base lr is not given in the paper (0.01 assumed).
    "googlenet": dict(optimizer="sgd", lr=0.01, momentum=0.9, schedule="step", lr_decay=0.96,
                      lr_decay_epochs=8.0, aux_weight=0.3),
    # Inception-v3 (Szegedy et al. 2016, sec. 8): RMSProp with decay 0.9 and epsilon 1.0, lr 0.045 decayed every
    # two epochs by 0.94, gradient clipping at 2.0, label smoothing 0.1 (sec. 7). Momentum 0.9, weight decay
    # 4e-5 and the aux weight 0.4 are TF-slim's train_image_classifier defaults (not stated in the paper).
    "inception_v3": dict(optimizer="rmsprop", lr=0.045, rmsprop_decay=0.9, rmsprop_eps=1.0, momentum=0.9,
                         weight_decay=4e-5, schedule="step", lr_decay=0.94, lr_decay_epochs=2.0,
                         label_smoothing=0.1, grad_clip=2.0, aux_weight=0.4),
    # Inception-v4 / Inception-ResNet (Szegedy et al. 2017, sec. 4): the same RMSProp schedule; no label
    # smoothing or clipping is mentioned.
    "inception_v4": dict(optimizer="rmsprop", lr=0.045, rmsprop_decay=0.9, rmsprop_eps=1.0, momentum=0.9,
                         weight_decay=4e-5, schedule="step", lr_decay=0.94, lr_decay_epochs=2.0),
}
PRESETS["rmsprop"] = PRESETS["inception_v4"]


@dataclass
class TrainConfig:
    """Everything a training run needs besides the data; fill it from code, a dict or CLI options.

    ``model`` is a registry name built with ``create_model(model, **model_kwargs)`` when no model instance is
    given to the :class:`Trainer`. ``data`` is recorded only (the trainer takes data sets or loaders).
    Give ``steps`` or ``epochs`` (``steps`` wins). ``batch_size`` is the global batch (split over DDP ranks);
    ``None`` takes a given DataLoader's batch size, else 32. ``lr_decay``/``lr_decay_epochs`` drive the
    ``"step"`` schedule (``lr * lr_decay ** (epochs_done // lr_decay_epochs)``). ``aux_weight`` multiplies the
    cross-entropy of every auxiliary head (a float, or one weight per head). ``rmsprop_*`` are the
    TensorFlow-style RMSProp's decay and epsilon (see :class:`RMSpropTF`). ``checkpoint_every`` (steps; a
    final checkpoint is always written when ``out_dir`` is set), ``eval_every`` (steps; also at the end) and
    ``log_every`` (steps) are cadences. ``progress=None`` shows tqdm only on a terminal.
    """

    model: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    data: str | None = None
    steps: int | None = None
    epochs: float | None = None
    batch_size: int | None = None
    eval_batch_size: int | None = None
    num_workers: int = 0
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    rmsprop_decay: float = 0.9
    rmsprop_eps: float = 1.0
    schedule: str = "constant"
    lr_decay: float = 0.94
    lr_decay_epochs: float = 2.0
    warmup_steps: int = 0
    label_smoothing: float = 0.0
    aux_weight: float | tuple[float, ...] = 0.3
    grad_clip: float | None = None
    device: str = "auto"
    amp: str | None = None
    channels_last: bool = False
    compile: bool = False
    seed: int = 0
    log_every: int = 10
    eval_every: int | None = None
    checkpoint_every: int | None = None
    out_dir: str | Path | None = None
    resume: bool = False
    progress: bool | None = None

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "TrainConfig":
        """The recipe of a paper (``"googlenet"``, ``"inception_v3"``, ``"inception_v4"``/``"rmsprop"``)."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; use one of {', '.join(sorted(PRESETS))}")
        return cls(**{**PRESETS[name], **overrides})

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """Build from a dict (a sweep point, parsed JSON); an unknown key raises a ``TypeError`` naming it."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise TypeError(f"unknown TrainConfig field(s) {unknown}; known: {', '.join(sorted(known))}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["out_dir"] = None if self.out_dir is None else str(self.out_dir)
        if isinstance(self.aux_weight, tuple):
            out["aux_weight"] = list(self.aux_weight)
        return out

    def validate(self) -> None:
        """Raise a ``ValueError`` naming the first bad field and the values it takes."""
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer={self.optimizer!r} is not supported; use one of {OPTIMIZERS}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule={self.schedule!r} is not supported; use one of {SCHEDULES}")
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp={self.amp!r} is not supported; use None, 'bf16' or 'fp16'")
        if self.device not in DEVICES and not str(self.device).startswith(("cuda:", "mps:")):
            raise ValueError(f"device={self.device!r} is not supported; use one of {DEVICES} or 'cuda:N'")
        if self.steps is None and self.epochs is None:
            raise ValueError("give the run's length: steps=N or epochs=E")
        if self.steps is not None and self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if self.epochs is not None and self.epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {self.epochs}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        for name in ("log_every", "eval_every", "checkpoint_every"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 (or None), got {value}")
        if self.lr_decay_epochs <= 0:
            raise ValueError(f"lr_decay_epochs must be positive, got {self.lr_decay_epochs}")
        if self.resume and self.out_dir is None:
            raise ValueError("resume=True needs out_dir, the folder holding the run's checkpoint")


# ----------------------------------------------------------------------------------------------- the loss
def split_outputs(outputs: Any) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Main logits and the list of auxiliary logits of any model's output.

    Accepts a tensor, our ``InceptionOutputs(logits, aux_logits)`` (``aux_logits`` a tensor or a tuple),
    torchvision's ``InceptionOutputs``/``GoogLeNetOutputs`` or any tuple whose first item is the main logits.
    """
    if isinstance(outputs, torch.Tensor):
        return outputs, []
    if isinstance(outputs, (tuple, list)) and outputs and isinstance(outputs[0], torch.Tensor):
        aux: list[torch.Tensor] = []
        stack = list(outputs[1:])
        while stack:
            item = stack.pop(0)
            if item is None:
                continue
            if isinstance(item, (tuple, list)):
                stack[:0] = list(item)
            elif isinstance(item, torch.Tensor):
                aux.append(item)
            else:
                raise TypeError(f"auxiliary output of type {type(item).__name__} is not a tensor")
        return outputs[0], aux
    raise TypeError(
        f"model output of type {type(outputs).__name__} is neither a tensor nor (logits, aux_logits); "
        "return logits, or InceptionOutputs(logits, aux_logits) in training mode"
    )


class InceptionLoss(nn.Module):
    """Cross-entropy of the main head plus ``aux_weight`` x cross-entropy of each auxiliary head.

    GoogLeNet weights its two auxiliary classifiers by 0.3 (sec. 5); Inception-v3 uses label smoothing 0.1
    (sec. 7, "label-smoothing regularization"), applied here to the auxiliary heads too, as TF-slim does.
    ``aux_weight`` is one weight for every head or one weight per head.
    """

    def __init__(self, label_smoothing: float = 0.0, aux_weight: float | Sequence[float] = 0.3) -> None:
        super().__init__()
        self.label_smoothing = float(label_smoothing)
        self.aux_weight = aux_weight if isinstance(aux_weight, (int, float)) else tuple(aux_weight)

    def _weights(self, n: int) -> Sequence[float]:
        if isinstance(self.aux_weight, tuple):
            if len(self.aux_weight) != n:
                raise ValueError(f"aux_weight has {len(self.aux_weight)} weights but the model has {n} aux heads")
            return self.aux_weight
        return [float(self.aux_weight)] * n

    def forward(self, outputs: Any, targets: torch.Tensor) -> torch.Tensor:
        logits, aux = split_outputs(outputs)
        loss = F.cross_entropy(logits.float(), targets, label_smoothing=self.label_smoothing)
        for weight, aux_logits in zip(self._weights(len(aux)), aux):
            loss = loss + weight * F.cross_entropy(aux_logits.float(), targets, label_smoothing=self.label_smoothing)
        return loss


# ------------------------------------------------------------------------------------------ the optimiser
class RMSpropTF(torch.optim.Optimizer):
    """RMSProp as TensorFlow computes it: the optimiser of the Inception-v3 and v4 papers.

    It differs from ``torch.optim.RMSprop`` in three ways that matter with the papers' epsilon of 1.0: epsilon
    sits inside the square root, the mean-square accumulator starts at one (not zero), and the learning rate
    is applied inside the momentum buffer::

        ms  = decay * ms + (1 - decay) * g**2
        mom = momentum * mom + lr * g / sqrt(ms + eps)
        w   = w - mom
    """

    def __init__(self, params: Iterable[Any], lr: float = 0.045, decay: float = 0.9, eps: float = 1.0,
                 momentum: float = 0.9, weight_decay: float = 0.0) -> None:
        if lr <= 0 or eps <= 0 or not 0 <= decay < 1 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"bad RMSpropTF settings lr={lr} decay={decay} eps={eps} momentum={momentum} "
                             f"weight_decay={weight_decay}")
        super().__init__(params, dict(lr=lr, decay=decay, eps=eps, momentum=momentum, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad
                if group["weight_decay"]:
                    grad = grad.add(param, alpha=group["weight_decay"])
                state = self.state[param]
                if not state:
                    state["square_avg"] = torch.ones_like(param, memory_format=torch.preserve_format)
                    state["momentum_buffer"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                square_avg = state["square_avg"]
                square_avg.mul_(group["decay"]).addcmul_(grad, grad, value=1 - group["decay"])
                update = grad / square_avg.add(group["eps"]).sqrt_()
                if group["momentum"] > 0:
                    buf = state["momentum_buffer"]
                    buf.mul_(group["momentum"]).add_(update, alpha=group["lr"])
                    param.sub_(buf)
                else:
                    param.sub_(update, alpha=group["lr"])
        return loss


def _lr_factor(config: TrainConfig, steps_per_epoch: int, total_steps: int):
    """The schedule as a pure function of the finished-step count (so LambdaLR's state is just a counter)."""
    period = max(1, round(config.lr_decay_epochs * steps_per_epoch))
    warmup = config.warmup_steps

    def factor(step: int) -> float:
        if config.schedule == "step":
            value = config.lr_decay ** (step // period)
        elif config.schedule == "cosine":
            value = 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / max(1, total_steps)))
        else:
            value = 1.0
        if warmup and step < warmup:
            value *= (step + 1) / warmup
        return value

    return factor


# ------------------------------------------------------------------------------------------- the data
def _seed_for(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0])


class _EpochBatches(Sampler[list[int]]):
    """One epoch's batches: global batch ``b`` is ``order[b*B:(b+1)*B]``; a rank takes its contiguous share."""

    def __init__(self, num_samples: int, batch_size: int, seed: int, epoch: int, *, rank: int = 0,
                 world_size: int = 1, start: int = 0) -> None:
        self.order = epoch_order(num_samples, seed, epoch)
        self.batch_size = batch_size
        self.local = batch_size // world_size
        self.rank = rank
        self.start = start
        self.num_batches = num_samples // batch_size

    def __len__(self) -> int:
        return self.num_batches - self.start

    def __iter__(self) -> Iterator[list[int]]:
        for b in range(self.start, self.num_batches):
            lo = b * self.batch_size + self.rank * self.local
            yield self.order[lo:lo + self.local].tolist()


class _Shard(Sampler[int]):
    """Evaluation indices of one rank: every ``world_size``-th sample, in order."""

    def __init__(self, num_samples: int, rank: int, world_size: int) -> None:
        self.indices = list(range(rank, num_samples, world_size))

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)


@dataclass
class _DataSource:
    """A map-style data set plus how to load it (taken from a given DataLoader, if one was given)."""

    dataset: Dataset
    batch_size: int | None
    collate_fn: Any = None
    num_workers: int = 0
    pin_memory: bool = False
    worker_init_fn: Any = None

    @classmethod
    def of(cls, data: Any, what: str) -> "_DataSource":
        if isinstance(data, DataLoader):
            source = cls(data.dataset, data.batch_size, data.collate_fn, data.num_workers, data.pin_memory,
                         data.worker_init_fn)
        elif isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
            source = cls(TensorDataset(data[0], data[1]), None)
        else:
            source = cls(data, None)
        ds = source.dataset
        if isinstance(ds, IterableDataset) or not (hasattr(ds, "__len__") and hasattr(ds, "__getitem__")):
            raise TypeError(
                f"{what} must be a map-style Dataset (with __len__ and __getitem__), a DataLoader over one, or an "
                f"(inputs, targets) tensor pair, got {type(ds).__name__}: the trainer draws the data order "
                "itself, as a function of (seed, epoch), so that a resumed run sees the same batches"
            )
        return source

    def loader(self, sampler_kw: dict[str, Any], generator_seed: int, num_workers: int) -> DataLoader:
        return DataLoader(self.dataset, collate_fn=self.collate_fn, num_workers=max(num_workers, self.num_workers),
                          pin_memory=self.pin_memory, worker_init_fn=self.worker_init_fn,
                          generator=torch.Generator().manual_seed(generator_seed), **sampler_kw)


# ------------------------------------------------------------------------------- checkpoints and logs
def _rng_state(device: torch.device) -> dict[str, Any]:
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])],
        "python": _to_lists(random.getstate()),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    if device.type == "mps":
        state["mps"] = torch.mps.get_rng_state()
    return state


def _to_lists(value: Any) -> Any:
    return [_to_lists(v) for v in value] if isinstance(value, (tuple, list)) else value


def _to_tuples(value: Any) -> Any:
    return tuple(_to_tuples(v) for v in value) if isinstance(value, (tuple, list)) else value


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(_to_tuples(state["python"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])
    if device.type == "mps" and "mps" in state:
        torch.mps.set_rng_state(state["mps"])


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a trainer checkpoint (``model``, ``optimizer``, ``scaler``, ``scheduler``, ``step``, ``rng``, ...).

    A missing file raises ``FileNotFoundError``; a truncated or corrupt one, or one without a ``model`` entry,
    a ``ValueError`` naming the path.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types for a bad file (zip, pickle, EOF errors): one clear error
        reason = (str(err).strip().splitlines() or [""])[0].split(". ")[0]
        raise ValueError(f"cannot read checkpoint {path} ({type(err).__name__}: {reason}); the file is truncated "
                         "or corrupt: delete it, or resume from an earlier copy") from err
    if not isinstance(state, dict) or "model" not in state:
        raise ValueError(f"{path} is not a trainer checkpoint (no 'model' entry); a plain state dict is read with "
                         "create_model(name, weights=PATH), or `--weights PATH` on the command line")
    return state


def read_metrics(path: str | Path) -> pd.DataFrame:
    """The metrics log of a run folder (or a ``metrics.jsonl`` file) as a DataFrame; a torn last line is skipped."""
    return pd.DataFrame(_read_rows(Path(path) / METRICS_FILE if Path(path).is_dir() else Path(path)))


def _read_rows(path: Path) -> list[dict[str, Any]]:
    rows = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line torn by a kill ends the log
    return rows


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


# ------------------------------------------------------------------------------------------ the trainer
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
    """Train ``model`` (or ``create_model(config.model, **config.model_kwargs)`` when ``model`` is None).

    ``train_data``/``val_data``: a map-style ``Dataset`` of ``(image, label)``, a ``DataLoader`` over one (its
    collate function, workers and batch size are kept, its sampler is replaced by the seeded order), or an
    ``(inputs, targets)`` tensor pair. ``callbacks`` follow :mod:`analysis.callbacks`.

    Attributes for callbacks: ``model`` (the bare module, never the DDP/compiled wrapper), ``optimizer``,
    ``criterion``, ``device``, ``step`` (finished steps; during ``on_after_backward`` the steps finished before
    this one), ``lr`` (the lr of the next optimiser step), ``epoch``, ``rank``, ``world_size``, ``history``.
    """

    def __init__(self, model: nn.Module | None, config: TrainConfig, train_data: Any, val_data: Any = None,
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

        self.train_source = _DataSource.of(train_data, "train_data")
        self.val_source = None if val_data is None else _DataSource.of(val_data, "val_data")
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

        self._seed_everything(config.seed)
        if model is None:
            if config.model is None:
                raise ValueError("give a model instance or TrainConfig.model, a registry name")
            from inception_models import create_model

            model = create_model(config.model, **config.model_kwargs)
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        self.memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        self.model = model.to(self.device, memory_format=self.memory_format)
        self.criterion = InceptionLoss(config.label_smoothing, config.aux_weight)
        self.optimizer = self._make_optimizer()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, _lr_factor(config, self.steps_per_epoch, self.total_steps))
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, None: None}[config.amp]
        self.scaler = torch.amp.GradScaler(self.device.type) if config.amp == "fp16" else None
        self.forward_model: nn.Module = self.model
        if self.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.forward_model = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            # Independent dropout masks per rank; the weights were just broadcast from rank 0.
            torch.manual_seed(_seed_for(config.seed, 1 + self.rank))
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
        self._pending.update({k: _jsonable(v) for k, v in values.items()})

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
        source = self.val_source if data is None else _DataSource.of(data, "data")
        if source is None:
            raise ValueError("evaluate() needs data: pass it, or give val_data to the Trainer")
        was_training = self.forward_model.training
        batch_size = self.config.eval_batch_size or source.batch_size or self.batch_size
        loader = source.loader(
            dict(sampler=_Shard(len(source.dataset), self.rank, self.world_size), batch_size=batch_size),
            _seed_for(self.config.seed, 7, self.rank), self.config.num_workers)
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

    @staticmethod
    def _seed_everything(seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)

    def _make_optimizer(self) -> torch.optim.Optimizer:
        c = self.config
        params = [p for p in self.model.parameters() if p.requires_grad]
        if c.optimizer == "rmsprop":
            return RMSpropTF(params, lr=c.lr, decay=c.rmsprop_decay, eps=c.rmsprop_eps, momentum=c.momentum,
                             weight_decay=c.weight_decay)
        return torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, nesterov=c.nesterov and c.momentum > 0,
                               weight_decay=c.weight_decay)

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
        sampler = _EpochBatches(self.num_samples, self.batch_size, self.config.seed, epoch, rank=self.rank,
                                world_size=self.world_size, start=start)
        return self.train_source.loader(dict(batch_sampler=sampler),
                                        _seed_for(self.config.seed, epoch, 1 + self.rank), self.config.num_workers)

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
            kept = [r for r in _read_rows(metrics_path) if r.get("step", 0) <= self.step] if state else []
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
        _set_rng_state(rng[self.rank] if self.rank < len(rng) else rng[0], self.device)
        if self.is_main:
            log.info("resumed %s at step %d (epoch %d, batch %d)", self.checkpoint_path, self.step,
                     position["epoch"], position["batch"])

    def _save_checkpoint(self) -> None:
        if self.out_dir is None:
            return
        bad = [name for name, p in self.model.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            raise self._diverged(self.step, f"parameter {bad[0]} is not finite ({len(bad)} parameters are not)")
        rng = _rng_state(self.device)
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
            with atomic_path(self.checkpoint_path) as tmp:
                torch.save(state, tmp)
        self._last_checkpoint_step = self.step


# --------------------------------------------------------------------------------------- the CLI entry
def train_from_cli(
    model: str,
    data: str = "synthetic",
    *,
    steps: int | None = None,
    epochs: float | None = None,
    out: str | Path | None = "runs/train",
    resume: bool = False,
    device: str = "auto",
    amp: str | None = None,
    compile: bool = False,
    channels_last: bool = False,
    batch_size: int | None = None,
    lr: float | None = None,
    optimizer: str | None = None,
    preset: str | None = None,
    image_size: int | None = None,
    n_train: int | None = None,
    n_val: int | None = None,
    data_seed: int = 0,
    seed: int = 0,
    log_every: int = 10,
    eval_every: int | None = None,
    checkpoint_every: int | None = None,
    label_smoothing: float | None = None,
    aux_weight: float | None = None,
    grad_clip: float | None = None,
    num_workers: int = 0,
    model_kwargs: dict[str, Any] | None = None,
    progress: bool | None = None,
) -> pd.DataFrame:
    """What ``inception-lab train MODEL --data DATA ...`` runs: build the data and the model, train, return the log.

    ``data`` is a spec for :func:`analysis.data.build_dataset` (``synthetic``/``shapes``, ``cifar10:PATH``,
    ``imagefolder:PATH``); its ``train`` and ``val`` splits are used, with ``n_train``/``n_val`` samples for the
    synthetic set and ``image_size`` pixels (default: the model's native input size from the registry). The
    model is ``create_model(model, num_classes=<the data's classes>, **model_kwargs)``. ``preset`` picks a
    paper's recipe (:data:`PRESETS`); options given explicitly (not None) override it. ``amp`` is None,
    ``"bf16"`` or ``"fp16"``. The metrics log (``metrics.jsonl``), ``config.json`` and ``checkpoint.pt`` go to
    ``out``; ``resume`` continues the run found there. Raises :class:`TrainingDiverged` on a NaN/inf loss.
    """
    from analysis.data import build_dataset
    from inception_models import model_info

    info = model_info(model)
    size = info.input_size if image_size is None else image_size
    train_set = build_dataset(data, "train", size, n=n_train, seed=data_seed)
    val_set = build_dataset(data, "val", size, n=n_val, seed=data_seed)
    knobs = dict(model_kwargs or {})
    num_classes = getattr(train_set, "num_classes", None)
    if num_classes is not None and "num_classes" in info.knobs:
        knobs.setdefault("num_classes", int(num_classes))
    overrides = {k: v for k, v in dict(optimizer=optimizer, lr=lr, batch_size=batch_size,
                                       label_smoothing=label_smoothing, aux_weight=aux_weight,
                                       grad_clip=grad_clip).items() if v is not None}
    common = dict(model=model, model_kwargs=knobs, data=data, steps=steps, epochs=epochs, out_dir=out,
                  resume=resume, device=device, amp=amp, compile=compile, channels_last=channels_last, seed=seed,
                  log_every=log_every, eval_every=eval_every, checkpoint_every=checkpoint_every,
                  num_workers=num_workers, progress=progress)
    config = (TrainConfig.preset(preset, **common, **overrides) if preset
              else TrainConfig(**common, **overrides))
    return Trainer(None, config, train_set, val_set).fit()
