"""The data order: a pure function of ``(seed, epoch)``, drawn by one sampler for the trainer and for any loader.

:func:`epoch_order` is the permutation of an epoch; :class:`EpochSampler` draws it from any position, so a
resumed run sees exactly the rest of the interrupted epoch, and under DDP gives each rank its contiguous share
of every global batch. :func:`make_loader` wraps it in a ``DataLoader`` for user code; the trainer builds its
own loader around the same sampler for every epoch (:class:`DataSource`), batch by whole global batch.

Loaders get their own ``torch.Generator``, so building or iterating one never draws from the global RNG that
dropout uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, IterableDataset, Sampler, TensorDataset

__all__ = ["DataSource", "EpochSampler", "EvalShard", "epoch_order", "make_loader", "seed_for"]


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


@dataclass
class DataSource:
    """The trainer's view of a data set: a map-style data set plus how to load it (taken from a given
    DataLoader, if one was given), and the loaders it draws in the seeded order."""

    dataset: Dataset
    batch_size: int | None
    collate_fn: Any = None
    num_workers: int = 0
    pin_memory: bool = False
    worker_init_fn: Any = None

    @classmethod
    def of(cls, data: Any, what: str) -> "DataSource":
        """``data``: a map-style ``Dataset``, a ``DataLoader`` over one, or an ``(inputs, targets)`` tensor pair."""
        if isinstance(data, DataLoader):
            source = cls(data.dataset, data.batch_size, data.collate_fn, data.num_workers, data.pin_memory,
                         data.worker_init_fn)
        elif isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
            source = cls(TensorDataset(data[0], data[1]), None)
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

    def epoch_loader(self, batch_size: int, seed: int, epoch: int, start_batch: int, *, rank: int = 0,
                     world_size: int = 1, num_workers: int = 0) -> DataLoader:
        """The rest of ``epoch`` from global batch ``start_batch``: this rank's share of every whole global batch
        of ``batch_size`` in :func:`epoch_order`."""
        sampler = EpochSampler(len(self.dataset), seed=seed, epoch=epoch, start=start_batch * batch_size,  # type: ignore[arg-type]
                               batch_size=batch_size, rank=rank, world_size=world_size)
        batches = BatchSampler(sampler, batch_size // world_size, drop_last=True)
        return self.loader(dict(batch_sampler=batches), seed_for(seed, epoch, 1 + rank), num_workers)

    def loader(self, sampler_kw: dict[str, Any], generator_seed: int, num_workers: int) -> DataLoader:
        return DataLoader(self.dataset, collate_fn=self.collate_fn, num_workers=max(num_workers, self.num_workers),
                          pin_memory=self.pin_memory, worker_init_fn=self.worker_init_fn,
                          generator=torch.Generator().manual_seed(generator_seed), **sampler_kw)
