"""The data order: a pure function of ``(seed, epoch)``, drawn by one sampler for the trainer and for any loader.

:func:`epoch_order` is the permutation of an epoch; :class:`EpochSampler` draws it from any position, so a
resumed run sees exactly the rest of the interrupted epoch, and under DDP gives each rank its contiguous share
of every global batch. :func:`make_loader` wraps it in a ``DataLoader`` for user code. The trainer reads its
data through a :class:`DataSource`: a data set held as whole tensors (:class:`TensorSource`) is gathered a
batch at a time by the same order, on the device that holds it; any other map-style data set
(:class:`LoaderSource`) through a loader built around the same sampler for every epoch, batch by whole global
batch. Both give the same batches, bit for bit.

Loaders get their own ``torch.Generator``, so building or iterating one never draws from the global RNG that
dropout uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, IterableDataset, Sampler, TensorDataset

from analysis.data.tensors import ImageTensors, decode

__all__ = ["DataSource", "EpochSampler", "EvalShard", "LoaderSource", "TensorSource", "epoch_order", "make_loader",
           "seed_for"]

Batch = tuple[torch.Tensor, torch.Tensor]


def seed_for(*parts: int) -> int:
    """A 32-bit seed that depends on ``parts`` only (numpy's ``SeedSequence``): one stream per (seed, rank, ...)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0])


def epoch_order(num_samples: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation of sample indices for ``epoch``: a pure function of ``(num_samples, seed, epoch)``."""
    return torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed_for(seed, epoch)))


class EpochSampler(Sampler[int]):
    """Sample indices in :func:`epoch_order` (or in order when ``shuffle`` is False), from position ``start``.

    Call ``set_epoch(epoch)`` before each epoch, as with ``DistributedSampler``: the order never depends on
    how many times the sampler was iterated, only on ``(seed, epoch)``, so a resumed run calls
    ``set_epoch(epoch, start=batches_done * batch_size)`` and sees exactly the rest of the interrupted epoch.

    Under DDP (``world_size`` > 1) give ``batch_size``, the global batch: global batch ``b`` is
    ``order[b*B:(b+1)*B]`` and rank ``rank`` draws its contiguous share of it, ``B / world_size`` indices;
    only whole global batches are drawn and ``start`` must be a multiple of ``B``.
    """

    def __init__(self, num_samples: int, *, shuffle: bool = True, seed: int = 0, epoch: int = 0, start: int = 0,
                 batch_size: int | None = None, rank: int = 0, world_size: int = 1) -> None:
        if num_samples < 0:
            raise ValueError(f"num_samples must be >= 0, got {num_samples}")
        if world_size > 1 and (batch_size is None or batch_size % world_size):
            raise ValueError(f"with world_size={world_size} give batch_size, the global batch, as a multiple of it; "
                             f"got {batch_size}")
        self.num_samples = num_samples
        self.shuffle = shuffle
        self.seed = seed
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.set_epoch(epoch, start)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch (and the number of its leading samples to skip) the next iteration replays."""
        if not 0 <= start <= self.num_samples:
            raise ValueError(f"start must be in [0, {self.num_samples}], got {start}")
        if self.world_size > 1 and start % self.batch_size:  # type: ignore[operator]
            raise ValueError(f"start must be a whole number of global batches of {self.batch_size}, got {start}")
        self.epoch = epoch
        self.start = start

    def _shares(self) -> range:
        """The global batches this rank draws a share of (DDP only)."""
        return range(self.start // self.batch_size, self.num_samples // self.batch_size)  # type: ignore[operator]

    def __len__(self) -> int:
        if self.world_size == 1:
            return self.num_samples - self.start
        return len(self._shares()) * (self.batch_size // self.world_size)  # type: ignore[operator]

    def __iter__(self) -> Iterator[int]:
        order = epoch_order(self.num_samples, self.seed, self.epoch) if self.shuffle else torch.arange(self.num_samples)
        if self.world_size == 1:
            return iter(order[self.start:].tolist())
        batch, local = self.batch_size, self.batch_size // self.world_size  # type: ignore[operator]
        offset = self.rank * local
        return iter(i for b in self._shares() for i in order[b * batch + offset:b * batch + offset + local].tolist())


class EvalShard(Sampler[int]):
    """Evaluation indices of one rank: every ``world_size``-th sample, in order."""

    def __init__(self, num_samples: int, rank: int, world_size: int) -> None:
        self.indices = list(range(rank, num_samples, world_size))

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    *,
    epoch: int = 0,
    num_workers: int = 0,
    drop_last: bool = False,
    pin_memory: bool = False,
) -> DataLoader:
    """A ``DataLoader`` whose order is a pure function of ``(seed, epoch)``: an :class:`EpochSampler` (reach it
    as ``loader.sampler`` and call ``set_epoch`` each epoch) and a generator seeded with ``seed`` (workers'
    seeds, hence any random augmentation in workers, follow from it). The trainer draws the same order."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    sampler = EpochSampler(len(dataset), shuffle=shuffle, seed=seed, epoch=epoch)  # type: ignore[arg-type]
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(int(seed)),
    )


class DataSource:
    """The trainer's view of a data set: how many samples, and its batches in the seeded order.

    :meth:`of` picks the source: :class:`TensorSource` for data held as whole tensors, :class:`LoaderSource`
    for any other map-style data set. ``epoch_batches`` yields the rest of an epoch from a global batch, this
    rank's share of each; ``eval_batches`` this rank's evaluation shard (:class:`EvalShard`), in order.
    """

    dataset: Dataset
    batch_size: int | None = None

    @staticmethod
    def of(data: Any, what: str) -> "DataSource":
        """``data``: an ``(inputs, targets)`` tensor pair, :class:`~analysis.data.tensors.ImageTensors`, a data set
        whose ``image_tensors()`` gives them (the synthetic shapes), a map-style ``Dataset``, or a ``DataLoader``
        over one (its collate function, workers and batch size are kept; its sampler is replaced by the seeded
        order)."""
        if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
            return TensorSource(data[0], data[1])
        held = data.image_tensors() if callable(getattr(data, "image_tensors", None)) else data
        if isinstance(held, ImageTensors):
            return TensorSource(held.images, held.labels)
        return LoaderSource.of(data, what)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]


def _epoch_indices(num_samples: int, batch_size: int, seed: int, epoch: int, start_batch: int, rank: int,
                   world_size: int, device: torch.device) -> Iterator[torch.Tensor]:
    """This rank's indices of every whole global batch of ``epoch`` from ``start_batch``: what
    :class:`EpochSampler` draws, a batch at a time, as tensors on ``device`` (the order is copied there once
    per epoch, without waiting for the device)."""
    order = epoch_order(num_samples, seed, epoch).to(device, non_blocking=True)
    local = batch_size // world_size
    for b in range(start_batch, num_samples // batch_size):
        first = b * batch_size + rank * local
        yield order[first:first + local]


class TensorSource(DataSource):
    """Data held as two whole tensors, ``inputs`` and ``targets`` (from :class:`~analysis.data.tensors.ImageTensors`,
    whose 8-bit images are scaled a batch at a time, or an ``(inputs, targets)`` pair), gathered a batch at a time
    by the seeded order on the device that holds them.

    :meth:`place` puts them where the trainer wants them: onto the GPU when ``on_device``, else in host memory
    (pinned with ``pin_memory``), each batch then gathered into pinned memory and copied without blocking. No
    worker process, no per-sample collation.
    """

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        if len(inputs) != len(targets):
            raise ValueError(f"inputs and targets differ in length: {len(inputs)} and {len(targets)}")
        self.inputs, self.targets = inputs, targets
        self.batch_size = None
        self.target = inputs.device
        self.pin = False

    @property
    def dataset(self) -> Dataset:  # type: ignore[override]
        """The samples as a map-style data set, as the model sees them: 8-bit images scaled per sample."""
        if self.inputs.dtype == torch.uint8:
            return ImageTensors(self.inputs, self.targets)
        return TensorDataset(self.inputs, self.targets)

    def __len__(self) -> int:
        return len(self.inputs)

    def place(self, device: torch.device, *, on_device: bool, pin_memory: bool) -> "TensorSource":
        self.target = device
        host = device.type != "cpu" and not on_device
        self.pin = host and pin_memory and device.type == "cuda"
        where = torch.device("cpu") if host else device
        self.inputs, self.targets = self.inputs.to(where), self.targets.to(where)
        if self.pin and not self.inputs.is_pinned():
            self.inputs, self.targets = self.inputs.pin_memory(), self.targets.pin_memory()
        return self

    def _gather(self, indices: torch.Tensor) -> Batch:
        if self.inputs.device == self.target:  # resident: gather where the data lives
            indices = indices.to(self.target, non_blocking=True)
            return decode(self.inputs.index_select(0, indices)), self.targets.index_select(0, indices)
        # Host-resident, bound for a GPU: gather into (pinned) host memory, copy without blocking, scale there.
        x = torch.empty((len(indices), *self.inputs.shape[1:]), dtype=self.inputs.dtype, pin_memory=self.pin)
        y = torch.empty((len(indices), *self.targets.shape[1:]), dtype=self.targets.dtype, pin_memory=self.pin)
        torch.index_select(self.inputs, 0, indices, out=x)
        torch.index_select(self.targets, 0, indices, out=y)
        return decode(x.to(self.target, non_blocking=self.pin)), y.to(self.target, non_blocking=self.pin)

    def epoch_batches(self, batch_size: int, seed: int, epoch: int, start_batch: int, *, rank: int = 0,
                      world_size: int = 1, num_workers: int = 0) -> Iterable[Batch]:
        for indices in _epoch_indices(len(self), batch_size, seed, epoch, start_batch, rank, world_size,
                                      self.inputs.device):
            yield self._gather(indices)

    def eval_batches(self, batch_size: int, *, rank: int = 0, world_size: int = 1, seed: int = 0,
                     num_workers: int = 0) -> Iterable[Batch]:
        shard = torch.arange(rank, len(self), world_size, device=self.inputs.device)
        for first in range(0, len(shard), batch_size):
            yield self._gather(shard[first:first + batch_size])


@dataclass
class LoaderSource(DataSource):
    """A map-style data set read through a ``DataLoader`` (its collate function, workers and pinning taken from
    a given loader, if one was given), built anew for every epoch around the seeded order."""

    dataset: Dataset
    batch_size: int | None
    collate_fn: Any = None
    num_workers: int = 0
    pin_memory: bool = False
    worker_init_fn: Any = None

    @classmethod
    def of(cls, data: Any, what: str) -> "LoaderSource":  # type: ignore[override]
        """``data``: a map-style ``Dataset`` or a ``DataLoader`` over one."""
        if isinstance(data, DataLoader):
            source = cls(data.dataset, data.batch_size, data.collate_fn, data.num_workers, data.pin_memory,
                         data.worker_init_fn)
        else:
            source = cls(data, None)
        ds = source.dataset
        if isinstance(ds, IterableDataset) or not (hasattr(ds, "__len__") and hasattr(ds, "__getitem__")):
            raise TypeError(
                f"{what} must be a map-style Dataset (with __len__ and __getitem__), a DataLoader over one, or an "
                f"(inputs, targets) tensor pair, got {type(ds).__name__}: the trainer draws the data order "
                "itself, as a function of (seed, epoch), so that a resumed run sees the same batches"
            )
        return source

    def place(self, device: torch.device, *, on_device: bool, pin_memory: bool) -> "LoaderSource":
        self.pin_memory = self.pin_memory or (pin_memory and device.type == "cuda")
        return self

    def epoch_batches(self, batch_size: int, seed: int, epoch: int, start_batch: int, *, rank: int = 0,
                      world_size: int = 1, num_workers: int = 0) -> DataLoader:
        """The rest of ``epoch`` from global batch ``start_batch``: this rank's share of every whole global batch
        of ``batch_size`` in :func:`epoch_order`."""
        sampler = EpochSampler(len(self.dataset), seed=seed, epoch=epoch, start=start_batch * batch_size,  # type: ignore[arg-type]
                               batch_size=batch_size, rank=rank, world_size=world_size)
        batches = BatchSampler(sampler, batch_size // world_size, drop_last=True)
        return self.loader(dict(batch_sampler=batches), seed_for(seed, epoch, 1 + rank), num_workers)

    def eval_batches(self, batch_size: int, *, rank: int = 0, world_size: int = 1, seed: int = 0,
                     num_workers: int = 0) -> DataLoader:
        return self.loader(dict(sampler=EvalShard(len(self.dataset), rank, world_size), batch_size=batch_size),  # type: ignore[arg-type]
                           seed_for(seed, 7, rank), num_workers)

    def loader(self, sampler_kw: dict[str, Any], generator_seed: int, num_workers: int) -> DataLoader:
        return DataLoader(self.dataset, collate_fn=self.collate_fn, num_workers=max(num_workers, self.num_workers),
                          pin_memory=self.pin_memory, worker_init_fn=self.worker_init_fn,
                          generator=torch.Generator().manual_seed(generator_seed), **sampler_kw)
