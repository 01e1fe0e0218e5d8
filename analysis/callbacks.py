"""The trainer's callback protocol: how instruments (activation monitor, landscape probe) observe a run.

The trainer calls, in order, for each optimisation step::

    on_train_start(trainer)                      # once, after the model and optimiser are ready
    on_after_backward(trainer, batch, loss)      # gradients are in .grad; the optimiser has not stepped
    on_step_end(trainer, batch, loss)            # after optimiser.step(); trainer.step is the finished step
    on_train_end(trainer)                        # once, also after an early stop

``batch`` is ``(inputs, targets)`` on the trainer's device; ``loss`` is the detached scalar loss.
A callback adds values to the step's metrics row with ``trainer.log_metrics({...})`` and stops the run with
``trainer.request_stop(reason)``. The trainer exposes ``model``, ``optimizer``, ``criterion``
(``criterion(outputs, targets) -> loss``, aux heads included), ``device``, ``step`` and ``lr``.
"""

from __future__ import annotations

from typing import Any

import torch


class Callback:
    """Base class: every hook is a no-op, so a callback overrides only what it needs."""

    def on_train_start(self, trainer: Any) -> None:
        pass

    def on_after_backward(self, trainer: Any, batch: tuple[torch.Tensor, torch.Tensor], loss: torch.Tensor) -> None:
        pass

    def on_step_end(self, trainer: Any, batch: tuple[torch.Tensor, torch.Tensor], loss: torch.Tensor) -> None:
        pass

    def on_train_end(self, trainer: Any) -> None:
        pass
