"""TensorBoard logging for a training run: a trainer callback writing what the metrics log holds.

>>> trainer = Trainer(model, config, train, val, callbacks=[DeadUnitAlarm(every=50), TensorBoardLogger("runs/tb")])
>>> # tensorboard --logdir runs/tb

Every logged row of the trainer's metrics log becomes scalars at its step, ``<split>/<metric>``: ``train/loss``,
``train/accuracy``, ``train/lr``, ``train/grad_norm`` (the gradient's global L2 norm before the optimiser step:
the trainer's when it clips, else measured here, kept on the device and read on the logged steps only),
``val/loss``, ``val/accuracy``, and whatever other callbacks log. The dead-unit monitor's metrics
(:class:`analysis.instruments.dead_units.DeadUnitAlarm`: ``dead_fraction``, ``dormant_fraction``, ...) go under
the layer it watches, ``dead_units/<layer>/dead_fraction``. Only rank 0 writes; a resumed run purges the events
after its checkpoint's step, so the curves show the run once.

Needs the ``tensorboard`` package (``pip install 'inception-lab[tensorboard]'``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from analysis.callbacks import Callback

try:
    from torch.utils.tensorboard import SummaryWriter
except ImportError as err:  # torch's module imports tensorboard
    raise ImportError("TensorBoard logging needs tensorboard: pip install 'inception-lab[tensorboard]'") from err

__all__ = ["TensorBoardLogger"]

# Row keys that place a row rather than measure something.
_NOT_SCALARS = frozenset({"split", "step", "epoch", "time"})
# The metrics a dead-unit monitor logs.
_MONITOR_METRICS = frozenset({"dead_fraction", "dead_units", "dormant_fraction", "zero_fraction", "dead_alarm"})


def _dead_unit_monitors(trainer: Any) -> dict[str, str]:
    """``{metric prefix: watched layer}`` of the trainer's dead-unit monitors (callbacks with a ``layer`` and a
    ``prefix``, as :class:`~analysis.instruments.dead_units.DeadUnitAlarm` has)."""
    return {cb.prefix: cb.layer for cb in trainer.callbacks
            if isinstance(getattr(cb, "layer", None), str) and isinstance(getattr(cb, "prefix", None), str)}


class TensorBoardLogger(Callback):
    """Write the trainer's logged rows to TensorBoard event files in ``log_dir`` (see the module docstring)."""

    def __init__(self, log_dir: str | Path) -> None:
        self.log_dir = Path(log_dir)
        self.writer: SummaryWriter | None = None
        self._written = 0
        self._grad_norms: dict[int, torch.Tensor] = {}

    def on_train_start(self, trainer: Any) -> None:
        if not trainer.is_main:
            return
        # A resumed run starts after its checkpoint: events of a longer, killed run past that step are dropped.
        self.writer = SummaryWriter(str(self.log_dir), purge_step=trainer.step + 1 if trainer.step else None)
        self._written = len(trainer.history)  # rows of the run before the resume are in the earlier events

    def on_after_backward(self, trainer: Any, batch: Any, loss: torch.Tensor) -> None:
        if self.writer is None or trainer.config.grad_clip is not None:  # clipping logs the norm itself
            return
        grads = [p.grad.detach() for p in trainer.model.parameters() if p.grad is not None]
        if grads:  # kept on the device; read only for the steps that are logged
            step = trainer.step + 1  # trainer.step counts the steps finished before this one
            # A step's row is logged after its on_step_end, so this step's and the previous step's norms are kept.
            self._grad_norms = {s: n for s, n in self._grad_norms.items() if s >= step - 1}
            self._grad_norms[step] = torch.nn.utils.get_total_norm(grads)

    def on_step_end(self, trainer: Any, batch: Any, loss: torch.Tensor) -> None:
        self._flush_rows(trainer)

    def on_train_end(self, trainer: Any) -> None:
        if self.writer is None:
            return
        self._flush_rows(trainer)
        self.writer.close()
        self.writer = None

    def _flush_rows(self, trainer: Any) -> None:
        """Write the rows logged since the last call (a step's row is logged after its callbacks ran)."""
        if self.writer is None:
            return
        layers = _dead_unit_monitors(trainer)
        for row in trainer.history[self._written:]:
            step, split = int(row["step"]), str(row.get("split", "train"))
            if split == "train" and "grad_norm" not in row and step in self._grad_norms:
                row = {**row, "grad_norm": float(self._grad_norms.pop(step))}
            for key, value in row.items():
                if key in _NOT_SCALARS or isinstance(value, bool) or not isinstance(value, (int, float)):
                    continue
                if isinstance(value, float) and not math.isfinite(value):
                    continue
                self.writer.add_scalar(self._tag(split, key, layers), value, global_step=step)
        self._written = len(trainer.history)
        self.writer.flush()

    @staticmethod
    def _tag(split: str, key: str, layers: dict[str, str]) -> str:
        for prefix, layer in sorted(layers.items(), key=lambda item: -len(item[0])):
            if key.startswith(prefix) and key[len(prefix):] in _MONITOR_METRICS:
                return f"dead_units/{layer}/{key[len(prefix):]}"
        return f"{split}/{key}"
