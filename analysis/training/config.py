"""What a training run needs besides the model and the data: :class:`TrainConfig`, and the papers' recipes
(:data:`PRESETS`) it can start from.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

__all__ = ["AMP_MODES", "AUTO", "AUTO_FIELDS", "DEVICES", "OPTIMIZERS", "PRESETS", "SCHEDULES", "TrainConfig"]

OPTIMIZERS = ("sgd", "rmsprop", "adamw")
SCHEDULES = ("constant", "step", "cosine")
AUTO = "auto"
AMP_MODES = (None, "bf16", "fp16", AUTO)
DEVICES = ("auto", "cuda", "mps", "cpu")
# The fields that take "auto", resolved per device by TrainConfig.resolved: what a fast GPU run needs, off on the
# CPU (where bf16 autocast and channels_last are slower and nothing needs pinning).
AUTO_FIELDS = ("amp", "channels_last", "cudnn_benchmark", "pin_memory", "data_on_device")

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
    """Everything a training run needs besides the model and the data; fill it from code, a dict or CLI options.

    ``model``, ``model_kwargs`` and ``data`` are recorded only (in ``config.json``; ``model`` also names the
    progress bar): the caller builds the model and the data, the trainer takes them built.
    Give ``steps`` or ``epochs`` (``steps`` wins). ``batch_size`` is the global batch (split over DDP ranks);
    ``None`` takes a given DataLoader's batch size, else 32. ``lr_decay``/``lr_decay_epochs`` drive the
    ``"step"`` schedule (``lr * lr_decay ** (epochs_done // lr_decay_epochs)``). ``aux_weight`` multiplies the
    cross-entropy of every auxiliary head (a float, or one weight per head). ``rmsprop_*`` are the
    TensorFlow-style RMSProp's decay and epsilon (:class:`analysis.training.optim.RMSpropTF`). ``checkpoint_every`` (steps; a
    final checkpoint is always written when ``out_dir`` is set), ``eval_every`` (steps; also at the end) and
    ``log_every`` (steps) are cadences: the trainer reads the loss from the device only on a logged,
    checkpointed or evaluated step, so a NaN is caught there (and named by its step). ``progress=None`` shows
    tqdm only on a terminal.

    How fast it runs (none of these changes what is computed, except ``amp`` and ``compile`` in rounding):

    * ``amp`` (``"bf16"``, ``"fp16"`` with a grad scaler, or None), ``channels_last``, ``compile``
      (``torch.compile``), ``cudnn_benchmark`` (cuDNN picks the fastest kernels for the fixed shapes);
    * the input pipeline: a tensor data set (an ``(inputs, targets)`` pair or
      :class:`~analysis.data.tensors.ImageTensors`) is indexed where it lives; ``data_on_device`` moves it onto
      the GPU first (uint8 images are scaled there), otherwise batches are gathered into ``pin_memory`` and
      copied without blocking; other data sets load through ``num_workers`` worker processes;
    * under DDP: ``sync_bn`` (batch-norm statistics over the global batch, not each rank's share: the BN
      experiments then do not change with the number of GPUs; CUDA only).

    ``"auto"`` (the default of ``amp``, ``channels_last``, ``cudnn_benchmark``, ``pin_memory`` and
    ``data_on_device``) is decided per device by :meth:`resolved`: bf16 and channels_last on CUDA (bf16 where
    the GPU has it), off on the CPU and MPS. ``deterministic`` asks for bit-reproducible kernels: cuDNN's
    deterministic algorithms without benchmarking, ``torch.use_deterministic_algorithms`` and cuBLAS's fixed
    workspace (``CUBLAS_WORKSPACE_CONFIG``, which must be set before the process first uses cuBLAS: the
    trainer sets it when unset, a launcher should set it too). A resumed run equals the uninterrupted one bit for
    bit on the CPU always, and on a GPU with ``deterministic=True`` (same GPU model, driver and torch).
    """

    model: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    data: str | None = None
    steps: int | None = None
    epochs: float | None = None
    batch_size: int | None = None
    eval_batch_size: int | None = None
    num_workers: int = 0
    pin_memory: bool | str = AUTO
    data_on_device: bool | str = AUTO
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
    amp: str | None = AUTO
    channels_last: bool | str = AUTO
    compile: bool = False
    cudnn_benchmark: bool | str = AUTO
    deterministic: bool = False
    sync_bn: bool = False
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

    def resolved(self, device_type: str, *, bf16_supported: bool = True) -> "TrainConfig":
        """This config with every ``"auto"`` of :data:`AUTO_FIELDS` decided for a device of ``device_type``
        (``"cuda"``, ``"cpu"``, ``"mps"``): on CUDA bf16 autocast (None where the GPU has no bf16:
        ``bf16_supported``), channels_last, pinned memory, the data on the device and cuDNN benchmarking (off
        with ``deterministic``); on the CPU and MPS all off but the data "on the device" (it is where it is)."""
        cuda = device_type == "cuda"
        decided = {
            "amp": "bf16" if cuda and bf16_supported else None,
            "channels_last": cuda,
            "cudnn_benchmark": cuda and not self.deterministic,
            "pin_memory": cuda,
            "data_on_device": True,
        }
        return replace(self, **{name: decided[name] for name in AUTO_FIELDS if getattr(self, name) == AUTO})

    def validate(self) -> None:
        """Raise a ``ValueError`` naming the first bad field and the values it takes."""
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer={self.optimizer!r} is not supported; use one of {OPTIMIZERS}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule={self.schedule!r} is not supported; use one of {SCHEDULES}")
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp={self.amp!r} is not supported; use None, 'bf16', 'fp16' or 'auto'")
        for name in ("channels_last", "cudnn_benchmark", "pin_memory", "data_on_device"):
            if getattr(self, name) not in (True, False, AUTO):
                raise ValueError(f"{name}={getattr(self, name)!r} is not supported; use True, False or 'auto'")
        for name in ("compile", "deterministic", "sync_bn"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r} is not supported; use True or False")
        if self.deterministic and self.cudnn_benchmark is True:
            raise ValueError("deterministic=True with cudnn_benchmark=True: benchmarking picks kernels by timing, "
                             "which is not reproducible; leave cudnn_benchmark at 'auto' or False")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")
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
