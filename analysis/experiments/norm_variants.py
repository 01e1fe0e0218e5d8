"""What the batch-norm experiments vary besides the ``norm`` knob and the initialisation
(:mod:`analysis.training.init`): Santurkar et al.'s "noisy BatchNorm" (:class:`BatchNormNoise`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from analysis.callbacks import Callback

__all__ = ["BatchNormNoise"]


# ------------------------------------------------------------------------------------------------ noisy BN
def _mix(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0])


class BatchNormNoise(Callback):
    """Santurkar et al.'s "noisy BatchNorm" (sec. 2.1, Fig. 2): noise after every BN layer, redrawn every step.

    The paper perturbs "each activation for each sample in the batch using i.i.d. noise sampled from a non-zero
    mean and non-unit variance distribution", a distribution that changes at each step; it gives no formula, so
    this is our reading. At training step ``t``, for BN layer ``l`` and channel ``c``: a shift
    ``m ~ U(-noise_mean, noise_mean)`` and a scale ``s ~ U(1, noise_scale)``; then for sample ``i``::

        y[i, c] = (s + jitter * a[i, c]) * x[i, c] + (m + jitter * b[i, c]),   a, b ~ N(0, 1)

    All draws come from a private generator seeded by ``(seed, t, l)``, so within one step every forward
    (the trainer's and the landscape probe's) sees the same noise and the loss stays one function of the
    weights, and a rerun sees the same noise. Only modules in training mode are perturbed (not evaluation).
    The noise is drawn on the activations' device (on a GPU, the CUDA generator's numbers).
    """

    def __init__(self, noise_mean: float = 0.5, noise_scale: float = 1.5, jitter: float = 0.1, seed: int = 0) -> None:
        if noise_mean < 0 or noise_scale < 1 or jitter < 0:
            raise ValueError(f"need noise_mean >= 0, noise_scale >= 1, jitter >= 0; got {noise_mean}, "
                             f"{noise_scale}, {jitter}")
        self.noise_mean, self.noise_scale, self.jitter, self.seed = noise_mean, noise_scale, jitter, seed
        self.step = 0
        self._hooks: list[Any] = []

    def attach(self, model: nn.Module) -> "BatchNormNoise":
        """Hook every BN layer of ``model`` (idempotent); :meth:`detach` removes the hooks."""
        self.detach()
        layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not layers:
            raise ValueError(f"{type(model).__name__} has no BatchNorm layer to add noise to; use norm='bn'")
        for index, layer in enumerate(layers):
            self._hooks.append(layer.register_forward_hook(self._hook(index)))
        return self

    def detach(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    def _hook(self, index: int):
        def perturb(module: nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
            if not module.training:
                return output
            n, c = output.shape[:2]
            # Drawn where the activations are, from a generator of that device: no host-to-device copy per
            # layer per forward. (A CUDA generator draws other numbers than the CPU's from the same seed.)
            device = output.device
            g = torch.Generator(device=device).manual_seed(_mix(self.seed, self.step, index))
            shift = (torch.rand(c, generator=g, device=device) * 2 - 1) * self.noise_mean
            scale = 1 + torch.rand(c, generator=g, device=device) * (self.noise_scale - 1)
            a = torch.randn(n, c, generator=g, device=device) * self.jitter + scale
            b = torch.randn(n, c, generator=g, device=device) * self.jitter + shift
            view = (n, c) + (1,) * (output.dim() - 2)
            return output * a.to(output.dtype).view(view) + b.to(output.dtype).view(view)

        return perturb

    def on_train_start(self, trainer: Any) -> None:
        self.attach(trainer.model)
        self.step = int(trainer.step)

    def on_step_end(self, trainer: Any, batch: Any, loss: torch.Tensor) -> None:
        self.step = int(trainer.step)

    def on_train_end(self, trainer: Any) -> None:
        self.detach()
