"""CIFAR-10 (Krizhevsky 2009) read from the python pickles as distributed (``cifar-10-batches-py``), never
downloaded; the pickles may hold numpy arrays only, so a stray file cannot run code.
"""

from __future__ import annotations

import importlib
import pickle
from pathlib import Path
from typing import Any, Callable

import numpy as np
from torch.utils.data import Dataset

from analysis.data.transforms import to_normalised_tensor

__all__ = ["CIFAR10Folder", "load_cifar10"]

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILES = ("test_batch",)
CIFAR10_META_FILE = "batches.meta"
_CIFAR10_LAYOUT = (
    f"expected CIFAR-10's python version as distributed: a folder '{CIFAR10_FOLDER}' (give it or its parent) "
    f"holding {', '.join(CIFAR10_TRAIN_FILES)}, {CIFAR10_TEST_FILES[0]} and {CIFAR10_META_FILE}"
)
# What the CIFAR pickles may reference: numpy arrays and nothing else, so a stray file cannot run code.
_PICKLE_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
}


class _ArraysOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _PICKLE_ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a CIFAR batch holds only numpy arrays")
        if module.startswith("numpy.core"):
            module = "numpy._core" + module[len("numpy.core"):]
        return getattr(importlib.import_module(module), name)


def _unpickle(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            obj = _ArraysOnlyUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as err:
        raise ValueError(f"{path} is not a CIFAR-10 python pickle ({err}); {_CIFAR10_LAYOUT}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a dict; {_CIFAR10_LAYOUT}")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _cifar_root(root: str | Path) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"CIFAR-10 folder {str(root)!r} does not exist; {_CIFAR10_LAYOUT}")
    if (root / CIFAR10_FOLDER).is_dir():
        root = root / CIFAR10_FOLDER
    return root


class CIFAR10Folder(Dataset):
    """CIFAR-10 (Krizhevsky 2009) read from the python pickles as distributed, never downloaded.

    ``data`` is uint8 (N, 32, 32, 3); ``targets`` the labels; ``classes`` the names from ``batches.meta``.
    ``transform`` takes a PIL image (as torchvision's transforms expect); ``None`` means ToTensor and the
    Inception normalisation to [-1, 1].
    """

    def __init__(self, root: str | Path, train: bool = True, transform: Callable | None = None) -> None:
        self.root = _cifar_root(root)
        self.train = train
        files = CIFAR10_TRAIN_FILES if train else CIFAR10_TEST_FILES
        missing = [f for f in (*files, CIFAR10_META_FILE) if not (self.root / f).is_file()]
        if missing:
            raise FileNotFoundError(f"CIFAR-10 folder {str(self.root)!r} lacks {', '.join(missing)}; {_CIFAR10_LAYOUT}")
        meta = _unpickle(self.root / CIFAR10_META_FILE)
        names = meta.get("label_names")
        if not isinstance(names, list) or not names:
            raise ValueError(f"{self.root / CIFAR10_META_FILE} has no 'label_names' list; {_CIFAR10_LAYOUT}")
        self.classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
        arrays, targets = [], []
        for name in files:
            batch = _unpickle(self.root / name)
            data, labels = batch.get("data"), batch.get("labels")
            if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels is None:
                shape = getattr(data, "shape", None)
                raise ValueError(
                    f"{self.root / name} must hold 'data' (uint8, N x 3072) and 'labels' (N ints), got data of shape "
                    f"{shape} and labels {'missing' if labels is None else 'present'}; {_CIFAR10_LAYOUT}"
                )
            labels = [int(y) for y in labels]
            if len(labels) != data.shape[0]:
                raise ValueError(f"{self.root / name} has {data.shape[0]} images but {len(labels)} labels")
            bad = [y for y in labels if not 0 <= y < len(self.classes)]
            if bad:
                raise ValueError(f"{self.root / name} has labels outside [0, {len(self.classes)}): {sorted(set(bad))}")
            arrays.append(data.astype(np.uint8, copy=False).reshape(-1, 3, 32, 32))
            targets.extend(labels)
        self.data = np.ascontiguousarray(np.concatenate(arrays).transpose(0, 2, 3, 1))
        self.targets = targets
        self.transform = transform if transform is not None else to_normalised_tensor()

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        from PIL import Image

        image = Image.fromarray(self.data[index])
        return self.transform(image), self.targets[index]

    def __repr__(self) -> str:
        return f"CIFAR10Folder(root={str(self.root)!r}, train={self.train}, n={len(self)})"


def load_cifar10(root: str | Path, train: bool = True, transform: Callable | None = None) -> CIFAR10Folder:
    """CIFAR-10's train (50,000 images, ``data_batch_1..5``) or test split (10,000, ``test_batch``) from
    ``root`` (``cifar-10-batches-py`` or its parent). A missing folder or file raises ``FileNotFoundError``, a
    malformed one ``ValueError``, both naming the path and the expected layout."""
    return CIFAR10Folder(root, train=train, transform=transform)
