"""Inception-v3 (Szegedy, Vanhoucke, Ioffe, Shlens, Wojna, "Rethinking the Inception Architecture for Computer
Vision", CVPR 2016, arXiv 1512.00567).

The network of the paper's Table 1: a stem of plain convolutions down to 35x35, three Inception-A blocks
(Fig. 5: the 5x5 factorised into two 3x3), Reduction-A (Fig. 10: 35x35 -> 17x17), four Inception-B blocks
(Fig. 6 with n = 7: n x n factorised into 1 x n and n x 1), Reduction-B (17x17 -> 8x8), two Inception-C
blocks (Fig. 7: expanded filter banks of parallel 1x3 and 3x1), then global average pooling, dropout and the
classifier. The auxiliary classifier (Fig. 8) sits on the last 17x17 block.

Where the paper and the released model differ we follow the released model (torchvision ``inception_v3`` =
timm ``inception_v3``, the port of Google's TF checkpoint), so its weights load by order and compute the same
logits:

- the branch widths are the released ones (Table 1 gives only the grid and channels entering each stage);
- Inception-A keeps a real 1x1 -> 5x5 branch beside the factorised double-3x3 branch (Fig. 5 shows 1x1 -> 3x3);
- the average pools inside the blocks count the zero padding (``count_include_pad=True``, torchvision's
  ``F.avg_pool2d`` default), unlike Inception-v4's TF-style pools;
- Reduction-B (17x17 -> 8x8), which the paper does not draw (Fig. 10 is the 35x35 reduction, with 3x3
  convolutions only), has a 1x1 -> 1x7 -> 7x1 -> 3x3/2 branch;
- the stem is the release's (a 1x1 to 80 and a max pool where Table 1 lists 3x3 convolutions);
- BN eps is 1e-3 and every convolution is conv -> BN -> ReLU without bias (the paper's "BN-auxiliary"
  applies BN to the side head too).

The factorisation switches undo one factorisation each, so its cost can be measured
(:mod:`analysis.instruments.factorization`). They touch only the Inception-A/B/C blocks, the modules the paper's figures
factorise, as in ``inception_v4``: the stem and the reduction blocks (Reduction-B's 1x7/7x1 pair included,
which Fig. 10 does not have) keep their layers in every variant.

Inception-A/B/C and Reduction-A/B are the blocks Inception-v4 shares (:mod:`inception_models.blocks`), with
v3's widths and pools.

Reference: 23,834,568 parameters without the aux head, 27,161,264 with it (the head alone 3,326,696),
5.713 GMACs at 299x299 (torchvision 0.29.1 = timm 1.0.31, ``shared/REFERENCES.md``). The paper says "less
than 25 million parameters" and "5 billion multiply-adds".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from inception_models.base import InceptionNetWithAux, make_head
from inception_models.blocks import (
    BlockTable,
    InceptionA,
    InceptionB,
    InceptionC,
    ReductionA,
    ReductionB,
    build_stages,
    inception_stage_kwargs,
    max_pool_3x3_valid,
)
from inception_models.layers import TF_BN_EPS, ConvNormAct, NormKind, check_norm, scale_widths
from inception_models.registry import register_variant

__all__ = [
    "MIN_INPUT_SIZE",
    "MIN_INPUT_SIZE_AUX_TRAINING",
    "InceptionV3Stem",
    "InceptionA",
    "InceptionB",
    "InceptionC",
    "ReductionA",
    "ReductionB",
    "InceptionV3AuxClassifier",
    "INCEPTION_V3",
    "InceptionV3",
    "InceptionV3Spec",
    "inception_v3",
]

# The smallest input every 'valid' stride-2 stage can still reduce (found by trying every size, and equal to
# torchvision's ``min_size``): 75 -> 37 -> 35 -> 17 -> 15 -> 7 -> 3 (Reduction-A) -> 1 (Reduction-B).
# At 74 Reduction-B's 3x3/2 sees a 2x2 grid and torch fails.
MIN_INPUT_SIZE = 75
# The auxiliary classifier's 5x5/3 average pool and then its 'valid' 5x5 convolution need the full 17x17 grid,
# which only inputs of 299 and more give: in training with ``aux_logits=True`` the minimum is 299.
MIN_INPUT_SIZE_AUX_TRAINING = 299
# torchvision's blocks call F.avg_pool2d(x, 3, stride=1, padding=1), which divides by 9 at the border too.
COUNT_INCLUDE_PAD = True


class InceptionV3Stem(nn.Sequential):
    """The stem of Inception-v3 (Table 1, the rows above the 35x35 Inception blocks): 299x299x3 -> 35x35x192.

    conv 3x3/2 'valid', conv 3x3 'valid', conv 3x3 padded, max pool 3x3/2, conv 1x1, conv 3x3 'valid', max pool
    3x3/2, as released. ``widths`` are the five convolutions' outputs (32, 32, 64, 80, 192).
    """

    def __init__(self, in_chans: int, widths: tuple[int, int, int, int, int], **conv: object) -> None:
        super().__init__()
        c1a, c2a, c2b, c3b, c4a = widths
        self.conv1a = ConvNormAct(in_chans, c1a, 3, stride=2, **conv)
        self.conv2a = ConvNormAct(c1a, c2a, 3, **conv)
        self.conv2b = ConvNormAct(c2a, c2b, 3, padding=1, **conv)
        self.pool1 = max_pool_3x3_valid()
        self.conv3b = ConvNormAct(c2b, c3b, 1, **conv)
        self.conv4a = ConvNormAct(c3b, c4a, 3, **conv)
        self.pool2 = max_pool_3x3_valid()
        self.out_channels = c4a


class InceptionV3AuxClassifier(nn.Module):
    """The auxiliary classifier on the last 17x17 block (Fig. 8), with BN ("BN-auxiliary", sec. 7).

    avg pool 5x5/3 -> conv 1x1 -> conv 5x5 'valid' -> global average pool -> FC. It needs the full 17x17
    grid (:data:`MIN_INPUT_SIZE_AUX_TRAINING`). ``widths`` are the two convolutions' outputs (128, 768).
    """

    def __init__(self, in_channels: int, num_classes: int, widths: tuple[int, int], **conv: object) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(5, stride=3)
        self.conv0 = ConvNormAct(in_channels, widths[0], 1, **conv)
        self.conv1 = ConvNormAct(widths[0], widths[1], 5, **conv)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(self.conv0(self.pool(x)))
        return self.fc(torch.flatten(self.global_pool(x), 1))


# The released widths (torchvision/timm), the paper's Table 1 as a table of blocks:
# (stage, block, one width dict per block). The auxiliary classifier taps the output of AUX_TAP.
STEM_WIDTHS: tuple[int, int, int, int, int] = (32, 32, 64, 80, 192)
_A = dict(b1x1=64, b5x5=(48, 64), b3x3dbl=(64, 96, 96))
_B = [dict(b1x1=192, b7x7=(c7, c7, 192), b7x7dbl=(c7, c7, c7, c7, 192), pool_proj=192) for c7 in (128, 160, 160, 192)]
_C = dict(b1x1=320, b3x3=(384, 384), b3x3dbl=(448, 384, 384), pool_proj=192)
INCEPTION_V3_BODY: BlockTable = (
    ("inception_a", InceptionA, (dict(_A, pool_proj=32), dict(_A, pool_proj=64), dict(_A, pool_proj=64))),
    ("reduction_a", ReductionA, (dict(k=64, l=96, m=96, n=384),)),
    ("inception_b", InceptionB, tuple(_B)),
    ("reduction_b", ReductionB, (dict(b3x3=(192, 320), b7x7x3=(192, 192, 192, 192)),)),
    ("inception_c", InceptionC, (_C, _C)),
)
AUX_TAP = "inception_b"
AUX_WIDTHS: tuple[int, int] = (128, 768)


@dataclass(frozen=True)
class InceptionV3Spec:
    """The table Inception-v3 is built from: the stem's five convolution widths, the body (stage, block, one width
    dict per block), the auxiliary classifier's tap and its two convolution widths, and the pool convention."""

    stem_widths: tuple[int, int, int, int, int] = STEM_WIDTHS
    body: BlockTable = INCEPTION_V3_BODY
    aux_tap: str = AUX_TAP
    aux_widths: tuple[int, int] = AUX_WIDTHS
    count_include_pad: bool = COUNT_INCLUDE_PAD


INCEPTION_V3 = InceptionV3Spec()


class InceptionV3(InceptionNetWithAux):
    """Inception-v3 (Szegedy et al. 2015, Table 1): stem, 3 x A, Reduction-A, 4 x B, Reduction-B, 2 x C.

    Submodules are registered in the order of torchvision's (and timm's) ``inception_v3`` with the same shapes
    (the auxiliary classifier after the last Inception-B block, before Reduction-B), so their state dicts map
    onto this model by order (:mod:`inception_models.convert`). ``forward_features`` returns the 2048-channel
    map before the global pool (8x8 at 299). In training mode with ``aux_logits`` the forward returns
    ``InceptionOutputs(logits, aux_logits)``; then inputs must be at least 299x299.
    """

    model_name = "inception_v3"
    feature_stages = ("stem", *(stage for stage, _, _ in INCEPTION_V3_BODY))
    aux_taps = {AUX_TAP: "aux_head"}

    def __init__(
        self,
        spec: InceptionV3Spec = INCEPTION_V3,
        *,
        num_classes: int = 1000,
        in_chans: int = 3,
        aux_logits: bool = False,
        transform_input: bool = False,
        drop_rate: float = 0.5,
        norm: NormKind = "bn",
        width_mult: float = 1.0,
        factorize_a: bool = True,
        factorize_b: bool = True,
        factorize_c: bool = True,
        aux_norm: NormKind | None = None,
    ) -> None:
        super().__init__(
            num_classes=num_classes,
            in_chans=in_chans,
            min_input_size=MIN_INPUT_SIZE,
            aux_logits=aux_logits,
            transform_input=transform_input,
        )
        self.norm = check_norm(norm)
        conv = dict(norm=norm, eps=TF_BN_EPS)
        stage_kwargs = inception_stage_kwargs(
            factorize_a=factorize_a, factorize_b=factorize_b, factorize_c=factorize_c,
            count_include_pad=spec.count_include_pad,
        )

        self.stem = InceptionV3Stem(in_chans, scale_widths(spec.stem_widths, width_mult), **conv)  # type: ignore[arg-type]
        self.aux_head: InceptionV3AuxClassifier | None = None
        head_conv = conv if aux_norm is None else dict(conv, norm=check_norm(aux_norm, "aux_norm"))
        for stage, blocks, channels in build_stages(
            spec.body, self.stem.out_channels, width_mult=width_mult, stage_kwargs=stage_kwargs, **conv
        ):
            self.add_module(stage, blocks)
            if stage == spec.aux_tap and aux_logits:
                # Registered here, between the 17x17 blocks and Reduction-B, as torchvision does.
                aux_widths = scale_widths(spec.aux_widths, width_mult)
                self.aux_head = InceptionV3AuxClassifier(channels, num_classes, aux_widths, **head_conv)  # type: ignore[arg-type]
        self.num_features = channels
        self.global_pool, self.dropout, self.fc = make_head(channels, num_classes, drop_rate)
        self._init_weights()

    def _init_weights(self) -> None:
        if self.norm == "none":
            # Without BN nothing rescales the activations: torchvision's fixed std 0.1 would make them grow
            # by orders of magnitude over 90+ layers, so use He initialisation (fan-in, ReLU) instead.
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
            return
        # torchvision's inception_v3(init_weights=True): truncated normal std 0.1 for every conv and linear,
        # 0.01 for the aux head's 5x5 conv and 0.001 for its classifier; BN gamma 1, beta 0.
        special = {}
        if self.aux_head is not None:
            special = {self.aux_head.conv1.conv: 0.01, self.aux_head.fc: 0.001}
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, mean=0.0, std=special.get(m, 0.1), a=-2, b=2)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a ``ValueError`` naming the minimum size (75, or 299 when the aux head runs) or ``in_chans``."""
        super().check_input(x)
        if self.training and self.aux_head is not None:
            h, w = x.shape[-2:]
            if h < MIN_INPUT_SIZE_AUX_TRAINING or w < MIN_INPUT_SIZE_AUX_TRAINING:
                raise ValueError(
                    f"{self.model_name} with aux_logits=True needs inputs of at least {MIN_INPUT_SIZE_AUX_TRAINING}x"
                    f"{MIN_INPUT_SIZE_AUX_TRAINING} pixels in training (its auxiliary classifier needs the full "
                    f"17x17 grid), got {h}x{w}; resize the images, build with aux_logits=False, or call .eval()"
                )


inception_v3 = register_variant(
    InceptionV3,
    INCEPTION_V3,
    "inception_v3",
    """Inception-v3 (Szegedy et al. 2015), the released model: 23.8M parameters, 5.71 GMACs at 299.

    ``aux_logits=True`` adds the auxiliary classifier on the 17x17 grid (3.3M parameters; it runs only in
    training, and then needs 299x299 inputs). ``transform_input`` re-maps ImageNet-normalised RGB to the [-1, 1]
    scaling torchvision's pretrained weights expect. ``factorize_a=False`` makes Inception-A's double 3x3 one
    5x5; ``factorize_b=False`` makes Inception-B's 1x7/7x1 pairs 7x7; ``factorize_c=False`` makes each of
    Inception-C's parallel 1x3/3x1 pairs one 3x3 of their summed width. The stem and reduction blocks keep
    their layers. ``aux_norm`` sets the auxiliary classifier's normalisation apart from the body's: None follows
    ``norm`` (BN, the paper's "BN-auxiliary"), ``"none"`` gives its convolutions a bias and no BN.
    """,
    paper="Rethinking the Inception Architecture for Computer Vision (Szegedy et al.)",
    year=2015,
    input_size=299,
    min_input_size=MIN_INPUT_SIZE,
    reference_params=23_834_568,
    reference_gmacs=5.713,
    reference_source="torchvision 0.29.1 inception_v3(aux_logits=False) = timm 1.0.31 inception_v3, measured "
    "(27,161,264 with the aux head); shared/REFERENCES.md. The paper: 'less than 25 million parameters', "
    "'5 billion multiply-adds'.",
)
