"""Calibration measures for the label-smoothing claim: expected calibration error, the reliability diagram's
bins (Guo et al. 2017) and the logit gaps the Inception-v3 paper argues with (sec. 7).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

__all__ = ["expected_calibration_error", "logit_gaps", "reliability_bins"]


def _as_probs(probs: torch.Tensor | np.ndarray) -> np.ndarray:
    p = np.asarray(probs.detach().cpu() if isinstance(probs, torch.Tensor) else probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"probabilities must be (samples, classes), got shape {p.shape}")
    return p


def reliability_bins(probs: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray,
                     bins: int = 15) -> pd.DataFrame:
    """The reliability diagram's data (Guo et al. 2017): samples binned by confidence (the top softmax
    probability) into ``bins`` equal-width bins on [0, 1]; per bin ``lower``, ``upper``, ``count``, mean
    ``confidence`` and ``accuracy`` (NaN for an empty bin)."""
    p = _as_probs(probs)
    y = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels).astype(int)
    if len(y) != len(p):
        raise ValueError(f"{len(p)} probability rows but {len(y)} labels")
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Right-closed bins, (lo, hi], with the first one closed on the left too, as Guo et al.
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    rows = []
    for k in range(bins):
        mask = index == k
        n = int(mask.sum())
        rows.append({"bin": k, "lower": float(edges[k]), "upper": float(edges[k + 1]), "count": n,
                     "confidence": float(confidence[mask].mean()) if n else math.nan,
                     "accuracy": float(correct[mask].mean()) if n else math.nan})
    return pd.DataFrame(rows)


def expected_calibration_error(probs: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray,
                               bins: int = 15) -> float:
    """ECE (Naeini et al. 2015; Guo et al. 2017): sum over confidence bins of (bin size / N) x |accuracy -
    confidence|, with ``bins`` equal-width bins (15, as Guo et al.)."""
    table = reliability_bins(probs, labels, bins)
    filled = table[table["count"] > 0]
    total = float(filled["count"].sum())
    return float((filled["count"] / total * (filled["accuracy"] - filled["confidence"]).abs()).sum())


def logit_gaps(logits: torch.Tensor) -> dict[str, float]:
    """The Inception-v3 paper's argument for label smoothing (sec. 7): with one-hot targets the largest logit
    grows much larger than all the others. Means over samples of ``gap_to_mean`` (largest logit minus the mean
    of the other logits), ``gap_to_second`` (largest minus the second largest), and ``max_prob`` (the top
    softmax probability, the confidence)."""
    z = logits.detach().double()
    if z.dim() != 2 or z.shape[1] < 2:
        raise ValueError(f"logits must be (samples, classes >= 2), got shape {tuple(z.shape)}")
    top2 = z.topk(2, dim=1).values
    largest = top2[:, 0]
    others_mean = (z.sum(1) - largest) / (z.shape[1] - 1)
    return {"gap_to_mean": float((largest - others_mean).mean()),
            "gap_to_second": float((top2[:, 0] - top2[:, 1]).mean()),
            "max_prob": float(z.softmax(1).max(1).values.mean())}
