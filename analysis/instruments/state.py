"""The one guard every instrument measures under: it saves a model's state and puts it back bit for bit.

An instrument runs forwards (and backwards) on a model it must leave as it found it: counting switches the
train/eval flags, the dead-unit monitor runs train-mode forwards that update BN running statistics, the
landscape probes move the weights and draw dropout masks. :class:`ModelStateGuard` saves, on entry,

* every submodule's train/eval flag;
* every buffer (BN running statistics, ``num_batches_tracked``);
* the ``parameters`` it is given (the landscape probes move them in place), and
* the torch CPU RNG state and the CUDA/MPS states of the devices the model (and ``devices``) live on,

and restores all of them on exit, whatever happened inside (the RNG only with ``rng=True``). ``mode`` puts the
whole model in train or eval mode once the state is saved (:func:`set_bn_mode`). ``.grad`` is never touched:
an instrument that needs gradients takes them from ``torch.autograd.grad``.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

__all__ = ["MODES", "ModelStateGuard", "set_bn_mode"]

MODES = ("train", "eval")


def set_bn_mode(model: nn.Module, mode: str) -> None:
    """Put the whole model in train or eval mode (BN batch vs running statistics; dropout on or off)."""
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not supported; use 'train' (BN batch statistics, dropout on) or "
                         f"'eval' (BN running statistics, dropout off)")
    model.train(mode == "train")


def _model_devices(model: nn.Module, *extra: torch.device) -> list[torch.device]:
    devices = {t.device for t in list(model.parameters()) + list(model.buffers())}
    devices.update(extra)
    return sorted(devices, key=str)


class ModelStateGuard:
    """Save a model's train/eval flags, buffers, the given ``parameters`` and the RNG states; restore them on exit.

    ``rng=False`` leaves the RNG as the block left it (the states are still saved, for :meth:`rewind_rng`).
    ``devices``: more devices whose RNG to save (e.g. those of the inputs). ``mode``: "train" or "eval", set on
    the whole model after saving. :attr:`saved_parameters` holds the saved copies of ``parameters``, in order,
    so a probe can move the weights to ``w + alpha d`` from the one saved ``w``.
    """

    def __init__(self, model: nn.Module, *, parameters: Sequence[torch.Tensor] = (), rng: bool = True,
                 devices: Sequence[torch.device] = (), mode: str | None = None) -> None:
        self.model = model
        self.parameters = list(parameters)
        self.rng = rng
        self.mode = mode
        self.devices = _model_devices(model, *devices)
        self.saved_parameters: list[torch.Tensor] = []

    def __enter__(self) -> "ModelStateGuard":
        self._modes = [(m, m.training) for m in self.model.modules()]
        self._buffers = [(b, b.detach().clone()) for b in self.model.buffers()]
        self.saved_parameters = [p.detach().clone() for p in self.parameters]
        self._cpu_rng = torch.get_rng_state()
        self._cuda_rng = {d.index if d.index is not None else torch.cuda.current_device(): None
                          for d in self.devices if d.type == "cuda"}
        for index in self._cuda_rng:
            self._cuda_rng[index] = torch.cuda.get_rng_state(index)
        self._mps_rng = (torch.mps.get_rng_state() if any(d.type == "mps" for d in self.devices) else None)
        if self.mode is not None:
            try:
                set_bn_mode(self.model, self.mode)
            except BaseException:
                self.__exit__(None, None, None)
                raise
        return self

    def rewind_rng(self) -> None:
        """Put the RNG back to the saved state, so several forwards draw the same dropout masks."""
        torch.set_rng_state(self._cpu_rng)
        for index, state in self._cuda_rng.items():
            torch.cuda.set_rng_state(state, index)
        if self._mps_rng is not None:
            torch.mps.set_rng_state(self._mps_rng)

    def __exit__(self, *exc: Any) -> None:
        with torch.no_grad():
            for param, saved in zip(self.parameters, self.saved_parameters):
                param.copy_(saved)
            for buffer, saved in self._buffers:
                if buffer.shape == saved.shape:  # a lazily shaped buffer that changed is left as it is
                    buffer.copy_(saved)
        for module, training in self._modes:
            module.training = training
        if self.rng:
            self.rewind_rng()
