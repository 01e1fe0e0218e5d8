"""Inception preprocessing: pixels scaled to [-1, 1] (mean 0.5, std 0.5 per channel, TF-slim's convention from
Inception-v3 on), the training crop-and-flip and the evaluation centre crop, and CIFAR-10's standard augmentation.
"""

from __future__ import annotations

from typing import Callable

import torch

__all__ = [
    "INCEPTION_MEAN",
    "INCEPTION_STD",
    "cifar_transform",
    "inception_eval_transform",
    "inception_train_transform",
    "normalise",
    "to_normalised_tensor",
]

# Inception preprocessing (TF-slim, Inception-v3 onwards): pixels in [0, 1] mapped to [-1, 1].
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)


def normalise(x: torch.Tensor) -> torch.Tensor:
    """A float image in [0, 1] scaled to [-1, 1]."""
    return (x - 0.5) / 0.5


def to_normalised_tensor() -> Callable:
    """ToTensor and the normalisation to [-1, 1]: the default transform of every file-based source."""
    from torchvision import transforms as T

    return T.Compose([T.ToTensor(), T.Normalize(INCEPTION_MEAN, INCEPTION_STD)])


def inception_train_transform(size: int) -> Callable:
    """Inception training preprocessing ("Going deeper", sec. 6, as TF-slim and torchvision do it): a random
    crop of 8%-100% of the area with aspect ratio 3/4-4/3 resized to ``size``, a horizontal flip, ToTensor and
    normalisation to [-1, 1] (mean 0.5, std 0.5)."""
    from torchvision import transforms as T

    return T.Compose([
        T.RandomResizedCrop(size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(INCEPTION_MEAN, INCEPTION_STD),
    ])


def inception_eval_transform(size: int, crop_fraction: float = 0.875) -> Callable:
    """Inception evaluation preprocessing: shorter side resized to ``round(size / 0.875)`` (342 for 299, 256
    for 224, as torchvision's Inception-v3 weights), the central ``size`` x ``size`` crop (87.5% of it),
    ToTensor and normalisation to [-1, 1]."""
    from torchvision import transforms as T

    if not 0 < crop_fraction <= 1:
        raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction}")
    return T.Compose([
        T.Resize(int(round(size / crop_fraction))),
        T.CenterCrop(size),
        T.ToTensor(),
        T.Normalize(INCEPTION_MEAN, INCEPTION_STD),
    ])


def cifar_transform(split: str, image_size: int | None, augment: bool) -> Callable:
    """CIFAR-10's transform for ``split``: resized when ``image_size`` is not 32, augmented on "train"."""
    from torchvision import transforms as T

    steps: list[Callable] = []
    if image_size is not None and image_size != 32:
        steps.append(T.Resize(image_size))
    size = 32 if image_size is None else image_size
    if augment and split == "train":
        # The standard CIFAR augmentation: pad by 1/8 of the side, random crop back, horizontal flip.
        steps += [T.RandomCrop(size, padding=size // 8), T.RandomHorizontalFlip()]
    return T.Compose([*steps, T.ToTensor(), T.Normalize(INCEPTION_MEAN, INCEPTION_STD)])
