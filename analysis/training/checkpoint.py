"""What a run leaves in its folder, and how it is read back: the checkpoint (model, optimiser, scheduler, grad
scaler, step, data position and the RNG states of every rank), ``config.json`` and the metrics log.

Every file is written atomically (a temp file, then a rename), so a killed run leaves the last good checkpoint.
The metrics log (``metrics.jsonl``) is one JSON row per logged step; a line torn by a kill ends it.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from analysis.io import atomic_path

__all__ = ["CHECKPOINT_FILE", "CONFIG_FILE", "METRICS_FILE", "jsonable", "load_checkpoint", "read_metrics",
           "read_rows", "rng_state", "save_checkpoint", "set_rng_state"]

METRICS_FILE = "metrics.jsonl"
CHECKPOINT_FILE = "checkpoint.pt"
CONFIG_FILE = "config.json"


def rng_state(device: torch.device) -> dict[str, Any]:
    """The RNG states a run draws from: torch (and CUDA or MPS on those devices), numpy and python."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])],
        "python": _to_lists(random.getstate()),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    if device.type == "mps":
        state["mps"] = torch.mps.get_rng_state()
    return state


def _to_lists(value: Any) -> Any:
    return [_to_lists(v) for v in value] if isinstance(value, (tuple, list)) else value


def _to_tuples(value: Any) -> Any:
    return tuple(_to_tuples(v) for v in value) if isinstance(value, (tuple, list)) else value


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Restore the states :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(_to_tuples(state["python"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])
    if device.type == "mps" and "mps" in state:
        torch.mps.set_rng_state(state["mps"])


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a trainer checkpoint (``model``, ``optimizer``, ``scaler``, ``scheduler``, ``step``, ``rng``, ...).

    A missing file raises ``FileNotFoundError``; a truncated or corrupt one, or one without a ``model`` entry,
    a ``ValueError`` naming the path.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types for a bad file (zip, pickle, EOF errors): one clear error
        reason = (str(err).strip().splitlines() or [""])[0].split(". ")[0]
        raise ValueError(f"cannot read checkpoint {path} ({type(err).__name__}: {reason}); the file is truncated "
                         "or corrupt: delete it, or resume from an earlier copy") from err
    if not isinstance(state, dict) or "model" not in state:
        raise ValueError(f"{path} is not a trainer checkpoint (no 'model' entry); a plain state dict is read with "
                         "create_model(name, weights=PATH), or `--weights PATH` on the command line")
    return state


def read_metrics(path: str | Path) -> pd.DataFrame:
    """The metrics log of a run folder (or a ``metrics.jsonl`` file) as a DataFrame; a torn last line is skipped."""
    return pd.DataFrame(read_rows(Path(path) / METRICS_FILE if Path(path).is_dir() else Path(path)))


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a metrics log, up to a line torn by a kill."""
    rows = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line torn by a kill ends the log
    return rows


def jsonable(value: Any) -> Any:
    """A metric value as JSON stores it: one-element tensors and numpy scalars as numbers."""
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write a trainer checkpoint atomically: a reader sees the old file or the new one, never half of one."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
