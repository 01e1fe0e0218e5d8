"""What a training run needs besides the model and the data: :class:`TrainConfig`, and the papers' recipes
(:data:`PRESETS`) it can start from.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

__all__ = ["AMP_MODES", "DEVICES", "OPTIMIZERS", "PRESETS", "SCHEDULES", "TrainConfig"]

OPTIMIZERS = ("sgd", "rmsprop")
SCHEDULES = ("constant", "step", "cosine")
AMP_MODES = (None, "bf16", "fp16")
DEVICES = ("auto", "cuda", "mps", "cpu")

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
