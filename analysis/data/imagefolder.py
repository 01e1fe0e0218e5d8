"""ImageFolder trees (``ROOT/<class>/<image>``), read with torchvision's ``ImageFolder``, with ``num_classes``."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from torch.utils.data import Dataset

from analysis.data.transforms import to_normalised_tensor

__all__ = ["load_image_folder"]

_IMAGEFOLDER_LAYOUT = "expected an ImageFolder tree: ROOT/<class name>/<image file> (png, jpg, ...), one folder per class"


def _imagefolder_class() -> type:
    from torchvision.datasets import ImageFolder

    class _ImageFolder(ImageFolder):
        @property
        def num_classes(self) -> int:
            return len(self.classes)

    return _ImageFolder


def load_image_folder(root: str | Path, transform: Callable | None = None) -> Dataset:
    """An ImageFolder tree (``root/<class>/<image>``, torchvision's ``ImageFolder`` underneath) with
    ``num_classes``. ``transform`` takes a PIL image; ``None`` means ToTensor and the normalisation to [-1, 1]
    (then every image must have the same size to be batched)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {str(root)!r} does not exist; {_IMAGEFOLDER_LAYOUT}")
    try:
        return _imagefolder_class()(str(root), transform=transform if transform is not None else to_normalised_tensor())
    except FileNotFoundError as err:
        raise FileNotFoundError(f"image folder {str(root)!r} has no usable images ({err}); {_IMAGEFOLDER_LAYOUT}") from None
