"""Initialisations the experiments share: paired arms start from the same weights, no-BN arms from data.

* :func:`share_weights` copies into one arm's freshly built network every parameter and buffer that the
  reference arm of the same seed has under the same name and shape, so that two arms of one seed differ only
  where their structure differs (the verdict protocol's paired seeds).
* :func:`he_init`: He (Kaiming) normal convolutions, the classic initialisation for ReLU networks.
* :func:`data_dependent_init` rescales every convolution so that its output channels start with zero mean and
  unit variance on a batch of training images (Kraehenbuehl et al. 2016; LSUV, Mishkin & Matas 2016): the
  initialisation under which a network without batch norm trains at all (measured in the smoothness study:
  Glorot and He initialisations left the no-BN small Inception at chance).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

__all__ = ["INITS", "share_weights", "he_init", "data_dependent_init", "initialise"]

INITS = ("default", "he", "data")


@torch.no_grad()
def share_weights(model: nn.Module, reference: nn.Module) -> list[str]:
    """Copy every tensor of ``reference``'s state dict into ``model`` where ``model`` has the same name and shape;
    return the names copied. Tensors only ``model`` has, or whose shape differs, keep their own initialisation."""
    mine = model.state_dict()
    shared = [name for name, tensor in reference.state_dict().items()
              if name in mine and mine[name].shape == tensor.shape and mine[name].dtype == tensor.dtype]
    theirs = reference.state_dict()
    for name in shared:
        mine[name].copy_(theirs[name])
    return shared


def he_init(model: nn.Module) -> nn.Module:
    """He (Kaiming) normal init for every conv (fan-in, ReLU gain) and zero conv biases; the classifier is kept.

    He, Zhang, Ren, Sun, "Delving Deep into Rectifiers", ICCV 2015: keeps the activation variance from layer to
    layer under ReLU, where Glorot's shrinks it (by about 0.8 per layer in the no-BN small Inception).
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model


@torch.no_grad()
def data_dependent_init(model: nn.Module, images: torch.Tensor, eps: float = 1e-5) -> nn.Module:
    """Rescale every conv so that its output channels have zero mean and unit variance on ``images``.

    In one forward pass, in network order, each conv's weight is divided by its per-channel standard deviation
    and its bias set so that the mean is zero, and the normalised output goes on to the next layer: a no-BN
    net starts with the activation statistics a BN net has at its first step. Convs without a bias are only
    rescaled. The model's train/eval mode is restored; nothing else (no BN buffer) is touched.
    """
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[0] < 2:
        raise ValueError("images must be a batch (N >= 2, C, H, W) of training images, got "
                         f"{getattr(images, 'shape', type(images).__name__)}")

    def normalise(module: nn.Conv2d, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
        mean = output.mean((0, 2, 3))
        std = output.std((0, 2, 3)) + eps
        module.weight.div_(std.view(-1, 1, 1, 1))
        if module.bias is not None:
            module.bias.sub_(mean).div_(std)
            return (output - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
        return output / std.view(1, -1, 1, 1)

    was_training = model.training
    hooks = [m.register_forward_hook(normalise) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        model.train()
        model(images)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return model


def initialise(model: nn.Module, init: str, images: Callable[[], torch.Tensor] | torch.Tensor | None = None
               ) -> nn.Module:
    """Apply the named initialisation: ``"default"`` leaves the builder's, ``"he"`` runs :func:`he_init`,
    ``"data"`` runs :func:`data_dependent_init` on ``images`` (a batch, or a function returning one)."""
    if init not in INITS:
        raise ValueError(f"init={init!r} is not known; use one of {INITS}")
    if init == "he":
        he_init(model)
    if init == "data":
        batch = images() if callable(images) else images
        if batch is None:
            raise ValueError("init='data' needs a batch of training images")
        data_dependent_init(model, batch)
    return model
