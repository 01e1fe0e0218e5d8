"""A labelled image set held as two whole tensors, read a batch of indices at a time wherever it lives.

:class:`ImageTensors` keeps images as 8-bit pixels (a quarter of float32's bytes, so a set four times larger
fits on a GPU) and scales a batch to [-1, 1] only when it is read, on the device that holds it: the trainer
moves the whole set onto the GPU once and then gathers each batch there by the epoch's order, instead of
loading, collating and copying it sample by sample. A float set is kept and read as it is.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch.utils.data import Dataset

from analysis.data.transforms import normalise

__all__ = ["ImageTensors", "decode"]


def decode(raw: torch.Tensor) -> torch.Tensor:
    """8-bit pixels to floats in [-1, 1] (``normalise(raw / 255)``, the Inception scaling), on ``raw``'s device;
    a float batch is returned as it is. The same operations as the per-sample path, so the same numbers."""
    if raw.dtype == torch.uint8:
        return normalise(raw.float() / 255.0)
    return raw


class ImageTensors(Dataset):
    """``images`` (N, C, H, W), uint8 pixels or floats, and integer ``labels`` (N,), as one map-style data set.

    ``dataset[i]`` is ``(image, label)`` like any data set's, the image scaled (:func:`decode`); the trainer
    instead takes the two tensors whole, moves them to the GPU once and gathers and scales each batch there.
    ``to(device)`` moves the set. ``classes`` names the labels.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: Sequence[str] | None = None) -> None:
        if not isinstance(images, torch.Tensor) or images.dim() != 4:
            raise ValueError(f"images must be a (N, C, H, W) tensor, got {getattr(images, 'shape', type(images))}")
        if images.dtype != torch.uint8 and not images.is_floating_point():
            raise ValueError(f"images must be uint8 pixels or floats, got {images.dtype}")
        labels = torch.as_tensor(labels)
        if labels.shape != (len(images),):
            raise ValueError(f"labels must be one per image, shape ({len(images)},), got {tuple(labels.shape)}")
        self.images = images
        self.labels = labels.long()
        self.classes = list(classes) if classes is not None else None
        self.num_classes = len(self.classes) if self.classes is not None else None

    def __len__(self) -> int:
        return len(self.images)

    @property
    def device(self) -> torch.device:
        return self.images.device

    @property
    def nbytes(self) -> int:
        """Bytes the images and labels take."""
        return self.images.nbytes + self.labels.nbytes

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} is out of range for {len(self)} samples")
        return decode(self.images[index]), int(self.labels[index])

    def to(self, device: torch.device | str) -> "ImageTensors":
        """The same set on ``device`` (itself when it is there already)."""
        images, labels = self.images.to(device), self.labels.to(device)
        if images is self.images and labels is self.labels:
            return self
        return ImageTensors(images, labels, self.classes)

    def __repr__(self) -> str:
        return (f"ImageTensors({len(self)} x {tuple(self.images.shape[1:])} {str(self.images.dtype).split('.')[-1]}, "
                f"{self.num_classes or 'unnamed'} classes, on {self.device})")
