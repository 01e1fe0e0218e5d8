"""What every network of the zoo shares: input checks, ``forward_features`` / ``forward_head``, outputs."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from inception_models.layers import check_input


class InceptionOutputs(NamedTuple):
    """Training-mode output of a model with auxiliary heads: main logits, then one tensor per aux head.

    ``aux_logits`` is a tensor for a single head (Inception-v3) and a tuple ``(aux1, aux2)`` for GoogLeNet.
    """

    logits: torch.Tensor
    aux_logits: torch.Tensor | tuple[torch.Tensor, ...]


class InceptionNet(nn.Module):
    """Base of the zoo's classifiers, with timm's split ``forward_features`` -> ``forward_head``.

    Subclasses build ``self.global_pool``, ``self.dropout`` and ``self.fc`` and implement
    ``forward_features`` (the feature map before global average pooling, where the Inception-v4 paper
    saw units die). Models with auxiliary heads override :meth:`forward`.
    """

    model_name: str = "inception"
    min_input_size: int = 1

    def __init__(self, *, num_classes: int, in_chans: int, min_input_size: int) -> None:
        super().__init__()
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0 (0 drops the classifier), got {num_classes}")
        if in_chans < 1:
            raise ValueError(f"in_chans must be >= 1, got {in_chans}")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.min_input_size = min_input_size

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a ``ValueError`` naming the minimum size or ``in_chans`` when ``x`` does not fit."""
        check_input(x, in_chans=self.in_chans, min_size=self.min_input_size, model_name=self.model_name)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global average pooling, dropout and the classifier; ``pre_logits`` stops before the classifier."""
        x = torch.flatten(self.global_pool(x), 1)
        x = self.dropout(x)
        return x if pre_logits else self.fc(x)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.forward_head(self.forward_features(x))


def make_head(num_features: int, num_classes: int, drop_rate: float) -> tuple[nn.Module, nn.Module, nn.Module]:
    """Global average pool, dropout and linear classifier (identity when ``num_classes == 0``)."""
    fc: nn.Module = nn.Linear(num_features, num_classes) if num_classes > 0 else nn.Identity()
    return nn.AdaptiveAvgPool2d(1), nn.Dropout(drop_rate), fc
