"""The Inception loss: cross-entropy of the main head plus weighted cross-entropies of the auxiliary heads, on
the output of any model (ours, torchvision's, timm's).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["InceptionLoss", "split_outputs"]


def split_outputs(outputs: Any) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Main logits and the list of auxiliary logits of any model's output.

    Accepts a tensor, our ``InceptionOutputs(logits, aux_logits)`` (``aux_logits`` a tensor or a tuple),
    torchvision's ``InceptionOutputs``/``GoogLeNetOutputs`` or any tuple whose first item is the main logits.
    """
    if isinstance(outputs, torch.Tensor):
        return outputs, []
    if isinstance(outputs, (tuple, list)) and outputs and isinstance(outputs[0], torch.Tensor):
        aux: list[torch.Tensor] = []
        stack = list(outputs[1:])
        while stack:
            item = stack.pop(0)
            if item is None:
                continue
            if isinstance(item, (tuple, list)):
                stack[:0] = list(item)
            elif isinstance(item, torch.Tensor):
                aux.append(item)
            else:
                raise TypeError(f"auxiliary output of type {type(item).__name__} is not a tensor")
        return outputs[0], aux
    raise TypeError(
        f"model output of type {type(outputs).__name__} is neither a tensor nor (logits, aux_logits); "
        "return logits, or InceptionOutputs(logits, aux_logits) in training mode"
    )


class InceptionLoss(nn.Module):
    """Cross-entropy of the main head plus ``aux_weight`` x cross-entropy of each auxiliary head.

    GoogLeNet weights its two auxiliary classifiers by 0.3 (sec. 5); Inception-v3 uses label smoothing 0.1
    (sec. 7, "label-smoothing regularization"), applied here to the auxiliary heads too, as TF-slim does.
    ``aux_weight`` is one weight for every head or one weight per head.
    """

    def __init__(self, label_smoothing: float = 0.0, aux_weight: float | Sequence[float] = 0.3) -> None:
        super().__init__()
        self.label_smoothing = float(label_smoothing)
        self.aux_weight = aux_weight if isinstance(aux_weight, (int, float)) else tuple(aux_weight)

    def _weights(self, n: int) -> Sequence[float]:
        if isinstance(self.aux_weight, tuple):
            if len(self.aux_weight) != n:
                raise ValueError(f"aux_weight has {len(self.aux_weight)} weights but the model has {n} aux heads")
            return self.aux_weight
        return [float(self.aux_weight)] * n

    def forward(self, outputs: Any, targets: torch.Tensor) -> torch.Tensor:
        logits, aux = split_outputs(outputs)
        loss = F.cross_entropy(logits.float(), targets, label_smoothing=self.label_smoothing)
        for weight, aux_logits in zip(self._weights(len(aux)), aux):
            loss = loss + weight * F.cross_entropy(aux_logits.float(), targets, label_smoothing=self.label_smoothing)
        return loss
