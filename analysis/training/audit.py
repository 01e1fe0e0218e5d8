"""How often a training step waits for the device: a sync audit of the trainer, per step.

A GPU runs the work the host queues; whenever the host needs a value back (``loss.item()``, ``float(t)``,
``if t:``, a copy to the CPU), it waits until the GPU has finished everything queued before, and the GPU then
idles while the host queues the next step. The trainer reads the device only on logged, evaluated and
checkpointed steps; :func:`audit_steps` checks that, step by step.

* On CUDA, PyTorch itself reports every synchronising call (``torch.cuda.set_sync_debug_mode("warn")``);
* everywhere (the CPU included), :class:`HostReads` counts the calls that bring a tensor's value to the host.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Callable, Iterator

import torch

__all__ = ["HOST_READS", "HostReads", "audit_steps", "cuda_sync_warnings"]

# The Tensor methods that hand a value to the host (each waits for the device when the tensor is on a GPU).
HOST_READS = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__", "__index__")


class HostReads:
    """A context manager that counts calls of :data:`HOST_READS` on any tensor while it is open (``count``)."""

    def __init__(self) -> None:
        self.count = 0
        self._saved: dict[str, Any] = {}

    def __enter__(self) -> "HostReads":
        for name in HOST_READS:
            self._saved[name] = original = getattr(torch.Tensor, name)
            setattr(torch.Tensor, name, self._counted(original))
        return self

    def __exit__(self, *exc: Any) -> None:
        for name, original in self._saved.items():
            setattr(torch.Tensor, name, original)
        self._saved = {}

    def _counted(self, method: Callable[..., Any]) -> Callable[..., Any]:
        def counted(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return method(tensor, *args, **kwargs)

        return counted


class _CudaSyncWarnings:
    """``torch.cuda.set_sync_debug_mode("warn")`` while open, counting the warnings it raises (``count``)."""

    def __init__(self) -> None:
        self._caught: list[Any] = []

    @property
    def count(self) -> int:
        return sum("synchroniz" in str(w.message) for w in self._caught)

    def __enter__(self) -> "_CudaSyncWarnings":
        self._catch = warnings.catch_warnings(record=True)
        self._caught = self._catch.__enter__()
        warnings.simplefilter("always")
        self._mode = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode("warn")
        return self

    def __exit__(self, *exc: Any) -> None:
        torch.cuda.set_sync_debug_mode(self._mode)
        self._catch.__exit__(*exc)


def cuda_sync_warnings() -> _CudaSyncWarnings:
    """A context manager counting PyTorch's warnings about synchronising CUDA calls while it is open."""
    return _CudaSyncWarnings()


@contextlib.contextmanager
def audit_steps(trainer: Any) -> Iterator[dict[int, int]]:
    """Count, for every training step of ``trainer`` run inside the block, the waits for the device: from the
    end of the step before to the end of this one (so gathering the batch counts too). On CUDA the counter is
    PyTorch's sync warnings, elsewhere :class:`HostReads`. Yields ``{step: count}``, filled as steps finish.
    """
    counter: Any = cuda_sync_warnings() if trainer.device.type == "cuda" else HostReads()
    per_step: dict[int, int] = {}
    step_once = trainer._train_step

    with counter:
        mark = [counter.count]

        def counted(batch: Any, bar: Any) -> None:
            step_once(batch, bar)
            per_step[trainer.step] = counter.count - mark[0]
            mark[0] = counter.count

        trainer._train_step = counted
        try:
            yield per_step
        finally:
            del trainer._train_step  # the class's method again
