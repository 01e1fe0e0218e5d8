"""The ``--data`` spec: one string names a data set, and :func:`build_dataset` builds its split.

Three sources:

- ``synthetic`` (alias ``shapes``): :class:`~analysis.data.synthetic.SyntheticShapes`, generated from a seed;
  ``synthetic:DIFFICULTY`` picks a harder or many-class variant (``synthetic:hard``, ``synthetic:k100``,
  ``synthetic:hues=5,noise_std=0.2``; :mod:`analysis.data.difficulty`);
- ``cifar10:PATH``: CIFAR-10 in its python pickle format as distributed (``cifar-10-batches-py``);
- ``imagefolder:PATH``: ``PATH/train/<class>/*.png`` and ``PATH/val/<class>/*.png`` with Inception-style
  preprocessing (:mod:`analysis.data.transforms`).

Every source gives tensors scaled to [-1, 1] (mean 0.5, std 0.5 per channel, the Inception convention) and
carries ``classes`` and ``num_classes``. The order in which samples are drawn is :mod:`analysis.training.sampling`'s.
"""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from analysis.data.cifar10 import load_cifar10
from analysis.data.imagefolder import load_image_folder
from analysis.data.synthetic import check_split, make_synthetic
from analysis.data.transforms import cifar_transform, inception_eval_transform, inception_train_transform

__all__ = ["DATA_SCHEMES", "build_dataset"]

DATA_SCHEMES = ("synthetic", "shapes", "cifar10", "imagefolder")


def build_dataset(
    spec: str,
    split: str = "train",
    image_size: int | None = None,
    *,
    n: int | None = None,
    seed: int = 0,
    augment: bool = True,
    store: str | Path | None = None,
) -> Dataset:
    """The data set named by a ``--data`` spec, for ``split`` ("train", "val" or "test"):

    - ``synthetic`` or ``shapes``: :func:`make_synthetic` (``n`` samples, default 10,000 / 2,000; ``image_size``
      default 32; ``seed``); never augmented. ``synthetic:DIFFICULTY`` sets its difficulty: a preset of
      :data:`~analysis.data.difficulty.DIFFICULTIES`, knobs, or both (``synthetic:k100,label_noise=0.1``).
      ``store``: a folder keeping the rendered pixels on disk, so a later run reads them instead of rendering.
    - ``cifar10:PATH``: :func:`load_cifar10`; "val" and "test" are CIFAR's test batch. Native 32 px, resized
      when ``image_size`` differs; ``augment`` adds random crop and flip to "train".
    - ``imagefolder:PATH``: :func:`load_image_folder` on ``PATH/<split>`` (``PATH/train``, ``PATH/val``); "train"
      gets :func:`inception_train_transform` (``augment=False``: the eval transform), the others
      :func:`inception_eval_transform`; ``image_size`` default 299.
    """
    check_split(split)
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"data spec must be a non-empty string such as 'synthetic' or 'cifar10:PATH', got {spec!r}")
    scheme, sep, path = spec.partition(":")
    scheme = scheme.strip().lower()
    if scheme not in DATA_SCHEMES:
        raise ValueError(
            f"unknown data spec {spec!r}; known: 'synthetic[:DIFFICULTY]' (alias 'shapes'), 'cifar10:PATH', "
            "'imagefolder:PATH'"
        )
    if scheme in ("synthetic", "shapes"):
        return make_synthetic(split, n, 32 if image_size is None else image_size, seed, difficulty=path, store=store)
    if not path:
        raise ValueError(f"data spec {spec!r} needs a folder: '{scheme}:PATH'")
    if scheme == "cifar10":
        return load_cifar10(path, train=split == "train", transform=cifar_transform(split, image_size, augment))
    size = 299 if image_size is None else image_size
    folder = Path(path).expanduser() / split
    if not folder.is_dir():
        raise FileNotFoundError(
            f"image folder {str(folder)!r} does not exist; imagefolder:PATH expects PATH/train/<class>/<image> and "
            f"PATH/val/<class>/<image> (one folder per split, one subfolder per class)"
        )
    train_like = split == "train" and augment
    transform = inception_train_transform(size) if train_like else inception_eval_transform(size)
    return load_image_folder(folder, transform)
