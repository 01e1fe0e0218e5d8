"""Where a training run executes: its device and process group, and the process-wide backend settings.

* :func:`placement`: the device and the process-group backend (gloo, NCCL, or none) for ``config.device`` in a
  single process or under ``torchrun``;
* :func:`join_process_group`: join that group (unless the caller did), left at exit if nobody closes it;
* :func:`with_sync_bn`: batch norm over the global batch under DDP;
* :func:`set_backend_flags` / :func:`restore_backend_flags`: cuDNN benchmarking and determinism, process-wide
  settings a trainer sets for its run and puts back when it closes.

The trainer (:mod:`analysis.training.trainer`) uses these; they hold no training logic.
"""

from __future__ import annotations

import atexit
import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from analysis.training.config import TrainConfig

__all__ = ["join_process_group", "placement", "restore_backend_flags", "set_backend_flags", "with_sync_bn"]


def placement(device: str, *, world_size: int, local_rank: int, cuda_available: bool,
              mps_available: bool) -> tuple[torch.device, str | None]:
    """Where this process trains, and the process-group backend to join (None for a single process).

    A single process takes ``device`` as given (``"auto"``: CUDA, else MPS, else the CPU). Under ``torchrun``
    (``world_size`` > 1) each process drives its local rank's GPU over NCCL: ``"auto"`` with CUDA, ``"cuda"``
    and ``"cuda:N"`` alike (every process is given the same ``N``, so the local rank, not ``N``, picks the
    GPU); without CUDA, or with ``"cpu"``, the processes run on the CPU over gloo. MPS has no DDP backend.
    """
    wants_cuda = device == "cuda" or device.startswith("cuda:")
    if wants_cuda and not cuda_available:
        raise ValueError(f"device={device!r} but no CUDA device is available; use device='auto' or 'cpu'")
    if (device == "mps" or device.startswith("mps:")) and not mps_available:
        raise ValueError(f"device={device!r} but MPS is not available; use device='auto' or 'cpu'")
    if world_size > 1:
        if device == "mps" or device.startswith("mps:"):
            raise ValueError("DDP does not run on MPS (no process-group backend); use device='cpu' under torchrun")
        if wants_cuda or (device == "auto" and cuda_available):
            return torch.device("cuda", local_rank), "nccl"
        return torch.device("cpu"), "gloo"
    if device == "auto":
        if cuda_available:
            return torch.device("cuda", 0), None
        return torch.device("mps" if mps_available else "cpu"), None
    if device == "cuda":
        return torch.device("cuda", 0), None
    return torch.device(device), None


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def with_sync_bn(model: nn.Module, *, world_size: int, device: torch.device) -> nn.Module:
    """``model`` with its batch-norm layers made ``SyncBatchNorm`` under DDP, so their statistics cover the global
    batch rather than each rank's share (the BN experiments then do not change with the number of GPUs). The
    state dict keeps its keys and values. One process has nothing to synchronise: the model is returned as is."""
    if world_size == 1:
        return model
    if device.type != "cuda":
        raise ValueError("sync_bn=True needs CUDA under DDP (PyTorch's SyncBatchNorm has no CPU kernel); "
                         "set sync_bn=False on the CPU")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


# Whether this process joined a process group through join_process_group and registered its exit hook.
_OWNED_GROUP = False


def _destroy_owned_group() -> None:
    """At exit: leave a process group a trainer joined and nobody closed (NCCL warns otherwise)."""
    global _OWNED_GROUP
    if _OWNED_GROUP and dist.is_initialized():
        dist.destroy_process_group()
    # Whether this process joined a process group through join_process_group and registered its exit hook.
_OWNED_GROUP = False


def join_process_group(device: str) -> tuple[int, int, torch.device, bool]:
    """``(rank, world size, device, joined)``: under ``torchrun`` (``WORLD_SIZE``, ``LOCAL_RANK`` in the environment)
    join the group :func:`placement` names unless the caller already did (``joined`` says whether this call did),
    first making the local rank's GPU current on CUDA; a single process joins nothing."""
    global _OWNED_GROUP
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    target, backend = placement(device, world_size=world, local_rank=local_rank,
                                cuda_available=torch.cuda.is_available(), mps_available=_mps_available())
    if backend is None:
        return 0, 1, target, False
    joined = False
    if not dist.is_initialized():
        if target.type == "cuda":
            torch.cuda.set_device(target)
        dist.init_process_group(backend=backend)
        joined = True
        if not _OWNED_GROUP:
            atexit.register(_destroy_owned_group)
        _OWNED_GROUP = True
    return dist.get_rank(), dist.get_world_size(), target, joined


def set_backend_flags(config: TrainConfig) -> dict[str, Any]:
    """Apply ``cudnn_benchmark`` and ``deterministic`` (process-wide settings) and return what they replaced.

    Determinism: cuDNN's deterministic algorithms without benchmarking, ``torch.use_deterministic_algorithms``
    (an op without a deterministic kernel then raises instead of silently varying) and cuBLAS's fixed
    workspace, ``CUBLAS_WORKSPACE_CONFIG=:4096:8``, set here when unset (it takes effect only if cuBLAS was
    not used yet in the process: a launcher should set it in the environment). The zoo's global average pool,
    ``AdaptiveAvgPool2d(1)``, runs as a mean over H and W (PyTorch's own fast path for a 1 x 1 output), whose
    backward is deterministic; the CUDA kernel of other output sizes is not.
    """
    saved = {"benchmark": torch.backends.cudnn.benchmark, "cudnn_deterministic": torch.backends.cudnn.deterministic,
             "algorithms": torch.are_deterministic_algorithms_enabled(),
             "algorithms_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
             "cublas": os.environ.get("CUBLAS_WORKSPACE_CONFIG")}
    torch.backends.cudnn.benchmark = bool(config.cudnn_benchmark) and not config.deterministic
    if config.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True)
    return saved


def restore_backend_flags(saved: dict[str, Any]) -> None:
    """Put back the settings :func:`set_backend_flags` returned (the trainer does when it closes)."""
    torch.backends.cudnn.benchmark = saved["benchmark"]
    torch.backends.cudnn.deterministic = saved["cudnn_deterministic"]
    torch.use_deterministic_algorithms(saved["algorithms"], warn_only=saved["algorithms_warn_only"])
    if saved["cublas"] is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    else:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = saved["cublas"]
