"""What every network of the zoo shares: input checks, ``forward_features`` / ``forward_head``, outputs."""

from __future__ import annotations

from typing import Mapping, NamedTuple

import torch
from torch import nn

from inception_models.layers import check_input

# torchvision's ``transform_input``: ImageNet channel means and standard deviations (RGB).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class InceptionOutputs(NamedTuple):
    """Training-mode output of a model with auxiliary heads: main logits, then one tensor per aux head.

    ``aux_logits`` is a tensor for a single head (Inception-v3) and a tuple ``(aux1, aux2)`` for GoogLeNet.
    """

    logits: torch.Tensor
    aux_logits: torch.Tensor | tuple[torch.Tensor, ...]


class InceptionNet(nn.Module):
    """Base of the zoo's classifiers, with timm's split ``forward_features`` -> ``forward_head``.

    Subclasses build ``self.global_pool``, ``self.dropout`` and ``self.fc``, and either list in
    ``feature_stages`` the names of the submodules that ``forward_features`` applies one after the other, or
    override ``forward_features`` (the feature map before global average pooling, where the Inception-v4
    paper saw units die). Models with auxiliary heads derive from :class:`InceptionNetWithAux`.
    """

    model_name: str = "inception"
    min_input_size: int = 1
    # The submodules from the input to the feature map, in forward order (the classifier head not included).
    feature_stages: tuple[str, ...] = ()

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
        """The feature map before global average pooling: ``feature_stages`` applied in order."""
        if not self.feature_stages:
            raise NotImplementedError(f"{type(self).__name__} must set feature_stages or override forward_features")
        for name in self.feature_stages:
            x = getattr(self, name)(x)
        return x

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


class InceptionNetWithAux(InceptionNet):
    """A classifier with auxiliary heads that run in training only (GoogLeNet sec. 5, Inception-v3 Fig. 8).

    ``aux_taps`` maps a feature stage to the name of the auxiliary head that reads its output. In training
    mode with ``aux_logits`` the forward returns ``InceptionOutputs(logits, aux_logits)``, ``aux_logits``
    being one tensor for a single head and a tuple for several; otherwise the logits alone, so that eval
    mode and fvcore see a plain classifier. ``transform_input`` re-maps ImageNet-normalised RGB inputs to the
    [-1, 1] scaling torchvision's pretrained weights were trained with (torchvision's ``transform_input``).
    """

    aux_taps: Mapping[str, str] = {}

    def __init__(
        self, *, num_classes: int, in_chans: int, min_input_size: int, aux_logits: bool, transform_input: bool
    ) -> None:
        if transform_input and in_chans != 3:
            raise ValueError(
                f"transform_input re-normalises 3 RGB channels but in_chans={in_chans}; use transform_input=False"
            )
        if aux_logits and num_classes == 0:
            raise ValueError("aux_logits=True needs classes (num_classes > 0); build with aux_logits=False")
        super().__init__(num_classes=num_classes, in_chans=in_chans, min_input_size=min_input_size)
        self.aux_logits = aux_logits
        self.transform_input = transform_input
        if transform_input:
            # x_c * std_c / 0.5 + (mean_c - 0.5) / 0.5: ImageNet normalisation undone, then scaled to [-1, 1]. The
            # constants are computed in double, as torchvision does (float32 constants moved the logits by
            # ~3e-5), and built once as buffers that move with the model (not in the state dict), rather than
            # copied from the host at every forward.
            scale = torch.tensor([s / 0.5 for s in IMAGENET_STD], dtype=torch.float64).view(1, 3, 1, 1)
            shift = torch.tensor([(m - 0.5) / 0.5 for m in IMAGENET_MEAN], dtype=torch.float64).view(1, 3, 1, 1)
            self.register_buffer("input_scale", scale.to(torch.get_default_dtype()), persistent=False)
            self.register_buffer("input_shift", shift.to(torch.get_default_dtype()), persistent=False)

    def _transform_input(self, x: torch.Tensor) -> torch.Tensor:
        if not self.transform_input:
            return x
        return x * self.input_scale.to(x.dtype) + self.input_shift.to(x.dtype)

    def _body(self, x: torch.Tensor, with_aux: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = self._transform_input(x)
        aux: list[torch.Tensor] = []
        for name in self.feature_stages:
            x = getattr(self, name)(x)
            if with_aux and name in self.aux_taps:
                aux.append(getattr(self, self.aux_taps[name])(x))
        return x, aux

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The feature map before global average pooling (the auxiliary heads do not run)."""
        return self._body(x, with_aux=False)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor | InceptionOutputs:  # type: ignore[override]
        self.check_input(x)
        with_aux = self.training and self.aux_logits
        features, aux = self._body(x, with_aux=with_aux)
        logits = self.forward_head(features)
        if with_aux:
            return InceptionOutputs(logits, aux[0] if len(aux) == 1 else tuple(aux))
        return logits


def make_head(num_features: int, num_classes: int, drop_rate: float) -> tuple[nn.Module, nn.Module, nn.Module]:
    """Global average pool, dropout and linear classifier (identity when ``num_classes == 0``)."""
    fc: nn.Module = nn.Linear(num_features, num_classes) if num_classes > 0 else nn.Identity()
    return nn.AdaptiveAvgPool2d(1), nn.Dropout(drop_rate), fc
