"""Fixtures shared by the test modules."""

from __future__ import annotations

from typing import Iterator

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread for a module of small models: on a 2-core CI machine, OpenMP threads working on tiny
    tensors wait on each other, and one thread is several times faster. Restores the setting after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
