"""Dead and dormant units (Inception-v4 paper, Szegedy et al. 2017, sec. 3.3), measured on any ``nn.Module``.

The paper saw the residual variants with more than 1000 filters "die": after a few tens of thousands of
iterations the last layer before average pooling produced only zeros. On top of the
:class:`~analysis.instruments.activations.ActivationMonitor`:

* :func:`find_dead_units` runs batches through a model in a chosen BN mode and returns one row per layer with
  the dead count (**dead** = never > 0 at any position of any sample seen; keras-contrib, torchwatcher) and the
  **dormant** count (ReDo, Sokar et al. 2023: a channel whose mean ``|activation|``, divided by the mean of
  that over the layer's channels, is ``<= tau``). With ``tau = 0`` a ReLU channel is dormant iff it is dead.
  Its forwards in ``mode="train"`` update BN running statistics and draw dropout masks, so it runs under a
  :class:`~analysis.instruments.state.ModelStateGuard`: ``state_dict`` and the RNG are bit-identical afterwards.
* :class:`DeadUnitAlarm` watches the layer before global pooling during training and raises an alarm when
  it dies.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any, Iterable, Literal, Sequence

import pandas as pd
import torch
from torch import nn

from analysis.callbacks import Callback
from analysis.instruments.activations import ActivationMonitor, prepool_layer
from analysis.instruments.state import ModelStateGuard

__all__ = ["DeadUnitAlarm", "dead_channels", "find_dead_units"]

log = logging.getLogger(__name__)

BatchLike = Any  # a tensor, or a (inputs, targets, ...) tuple/list whose first item is the input tensor


def _batch_inputs(batch: BatchLike) -> torch.Tensor:
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    raise TypeError(f"each batch must be an input tensor or an (inputs, targets) pair, got {type(batch).__name__}")


def _model_device(model: nn.Module) -> torch.device:
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def _run_monitor(
    model: nn.Module,
    batches: Iterable[BatchLike],
    layers: Sequence[str] | str | None,
    mode: str,
    method: str,
    max_batches: int | None,
) -> ActivationMonitor:
    device = _model_device(model)
    seen = 0
    with ActivationMonitor(model, layers, method=method) as monitor, torch.no_grad():
        for batch in batches:
            if max_batches is not None and seen >= max_batches:
                break
            model(_batch_inputs(batch).to(device))
            seen += 1
    if seen == 0:
        raise ValueError("batches is empty: give at least one input tensor or (inputs, targets) pair")
    for name in monitor.missing():
        warnings.warn(f"layer {name!r} did not run in {mode} mode on these batches (an aux head in eval mode?); "
                      f"it has no row", stacklevel=3)
    return monitor


def find_dead_units(
    model: nn.Module,
    batches: Iterable[BatchLike],
    layers: Sequence[str] | str | None = None,
    mode: Literal["train", "eval"] = "eval",
    dormant_threshold: float = 0.0,
    *,
    method: str = "auto",
    max_batches: int | None = None,
) -> pd.DataFrame:
    """Dead and dormant channels per layer over ``batches`` (tensors or ``(inputs, targets)`` pairs).

    Dead: never > 0 at any position of any sample seen. Dormant (ReDo, Sokar et al. 2023): normalised mean
    ``|activation|`` <= ``dormant_threshold`` (tau; 0 makes dormant = dead for ReLUs; ReDo uses small positive
    values). ``mode`` is the BN mode of the forwards and changes the answer (running vs batch statistics):
    it is recorded in the ``mode`` column with ``samples`` and ``dormant_threshold``. The model's buffers,
    train/eval flags and RNG states are restored afterwards (:class:`~analysis.instruments.state.ModelStateGuard`).
    """
    if dormant_threshold < 0:
        raise ValueError(f"dormant_threshold (ReDo's tau) must be >= 0, got {dormant_threshold}")
    with ModelStateGuard(model, mode=mode):  # an unknown mode raises before anything runs
        monitor = _run_monitor(model, batches, layers, mode, method, max_batches)
    return monitor.to_frame(dormant_threshold)


def dead_channels(
    model: nn.Module,
    batches: Iterable[BatchLike],
    layers: Sequence[str] | str | None = None,
    mode: Literal["train", "eval"] = "eval",
    *,
    method: str = "auto",
    max_batches: int | None = None,
) -> dict[str, list[int]]:
    """The dead channels' indices per layer (same rules and state restoration as :func:`find_dead_units`)."""
    with ModelStateGuard(model, mode=mode):  # an unknown mode raises before anything runs
        monitor = _run_monitor(model, batches, layers, mode, method, max_batches)
    return monitor.dead_channels()


# ------------------------------------------------------------------------------------------ callback
class DeadUnitAlarm(Callback):
    """Watch the layer before global pooling during training; alarm when it dies (Inception-v4, sec. 3.3).

    Every ``every`` steps it logs, over the window of the training forwards since the last report,
    ``dead_fraction``, ``dead_units``, ``dormant_fraction`` and ``zero_fraction`` (prefixed by ``prefix``) with
    ``trainer.log_metrics``. When the dead fraction reaches ``threshold`` (1.0: "only zeros", the paper's
    symptom) it logs a warning naming the step and the metric ``dead_alarm = 1`` the first time, and with
    ``stop=True`` asks the trainer to stop. Only the first train-mode forward after each step is recorded, so
    the trainer's evaluation and other callbacks' extra forwards (e.g. the landscape probe) do not count.
    ``history`` / :meth:`to_frame` hold one row per report.
    """

    def __init__(
        self,
        layer: str | None = None,
        *,
        every: int = 100,
        threshold: float = 1.0,
        stop: bool = False,
        dormant_threshold: float = 0.0,
        prefix: str = "",
    ) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1 step, got {every}")
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold is a dead fraction in (0, 1], got {threshold}")
        self.layer = layer
        self.every = every
        self.threshold = threshold
        self.stop = stop
        self.dormant_threshold = dormant_threshold
        self.prefix = prefix
        self.monitor: ActivationMonitor | None = None
        self.alarm_step: int | None = None
        self.history: list[dict[str, Any]] = []
        self._handle: Any = None

    def on_train_start(self, trainer: Any) -> None:
        model = trainer.model
        self.layer = self.layer or prepool_layer(model)
        self.monitor = ActivationMonitor(model, [self.layer], modes=("train",))
        self._handle = model.register_forward_hook(self._after_forward, always_call=True)

    def _after_forward(self, module: nn.Module, args: Any, output: Any) -> None:
        if module.training and self.monitor is not None:
            self.monitor.enabled = False  # one training forward per step

    def on_step_end(self, trainer: Any, batch: Any, loss: torch.Tensor) -> None:
        if self.monitor is None:
            return
        self.monitor.enabled = True
        if trainer.step % self.every == 0:
            self._report(trainer)

    def _report(self, trainer: Any) -> None:
        assert self.monitor is not None
        frame = self.monitor.to_frame(self.dormant_threshold)
        self.monitor.reset()
        if frame.empty:
            return
        row = frame.iloc[0]
        p = self.prefix
        metrics = {f"{p}dead_fraction": float(row["dead_fraction"]), f"{p}dead_units": int(row["dead"]),
                   f"{p}dormant_fraction": float(row["dormant_fraction"]),
                   f"{p}zero_fraction": float(row["zero_fraction"])}
        dead = row["dead_fraction"] >= self.threshold
        if dead and self.alarm_step is None:
            self.alarm_step = int(trainer.step)
            metrics[f"{p}dead_alarm"] = 1
            message = (f"dead units: layer {self.layer!r} died by step {trainer.step}: {int(row['dead'])} of "
                       f"{int(row['channels'])} channels were never > 0 over the last {int(row['batches'])} "
                       f"training batches ({int(row['samples'])} samples)")
            log.warning(message)
            if self.stop:
                trainer.request_stop(message)
        trainer.log_metrics(metrics)
        self.history.append({"step": int(trainer.step), "layer": self.layer, "channels": int(row["channels"]),
                             "dead": int(row["dead"]), "dead_fraction": float(row["dead_fraction"]),
                             "dormant": int(row["dormant"]), "dormant_fraction": float(row["dormant_fraction"]),
                             "dormant_threshold": float(self.dormant_threshold),
                             "zero_fraction": float(row["zero_fraction"]), "samples": int(row["samples"]),
                             "mode": row["mode"], "alarm": bool(dead)})

    def on_train_end(self, trainer: Any) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        if self.monitor is not None:
            self.monitor.remove()

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.history)
