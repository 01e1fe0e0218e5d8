"""Inception-v4 (Szegedy, Ioffe, Vanhoucke, Alemi, "Inception-v4, Inception-ResNet and the Impact of Residual
Connections on Learning", 2016, arXiv 1602.07261).

The network is the paper's Fig. 9: the stem of Fig. 3, four Inception-A blocks (Fig. 4), Reduction-A (Fig. 7,
k, l, m, n = 192, 224, 256, 384), seven Inception-B blocks (Fig. 5), Reduction-B (Fig. 8) and three
Inception-C blocks (Fig. 6). Where the figures and the released weights disagree we follow the released
model (timm ``inception_v4`` = Cadene's port of the TF-slim checkpoint), so its weights load by order:

- every stride-2 convolution and pooling is 'valid' (unpadded), as the figures' "V" marks;
- average pools inside blocks exclude the padding (``count_include_pad=False``), as TF does;
- BN eps is 1e-3; the stem's 7-tap pair is 1x7 then 7x1 (Fig. 3 draws 7x1 first), Inception-C's second
  branch is 3x1 (448) then 1x3 (512) (Fig. 6 draws 1x3 first), as in the released weights.

Inception-A/B/C, Reduction-A/B and the expanded filter bank are the blocks Inception-v3 shares
(:mod:`inception_models.blocks`), with v4's widths and TF's pools; the stem is v4's own.

Reference: 42,679,816 parameters and 12.254 GMACs at 299x299 (timm 1.0.31, ``../shared/REFERENCES.md``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import torch
from torch import nn

from inception_models.base import InceptionNet, make_head
from inception_models.blocks import (
    BlockTable,
    ExpandedFilterBank,
    InceptionA,
    InceptionB,
    InceptionC,
    ReductionA,
    ReductionB,
    build_stages,
    inception_stage_kwargs,
    max_pool_3x3_valid,
)
from inception_models.layers import TF_BN_EPS, ConvNormAct, NormKind, check_norm, conv_nxn, scale_widths
from inception_models.registry import register_variant

__all__ = [
    "InceptionV4Stem",
    "ExpandedFilterBank",
    "InceptionA",
    "ReductionA",
    "InceptionB",
    "ReductionB",
    "InceptionC",
    "INCEPTION_V4",
    "InceptionV4",
    "InceptionV4Spec",
    "inception_v4",
]

# The smallest input every 'valid' stride-2 stage can still reduce: 75 -> 37 -> 35 -> 17 -> 15 -> 7 -> 3 -> 1.
MIN_INPUT_SIZE = 75
# TF's 'SAME' average pools divide by the number of real pixels: counting the zero padding would not match.
COUNT_INCLUDE_PAD = False


class StridedConvPool(nn.Module):
    """A filter concat of a 3x3/2 'valid' convolution and a 3x3/2 max pool (Fig. 3, first and last splits).

    ``pool_first`` orders the concatenation as the released weights do (pool first after the 147x147 grid,
    conv first after the 71x71 grid).
    """

    def __init__(self, in_channels: int, conv_channels: int, *, pool_first: bool, **conv: object) -> None:
        super().__init__()
        self.pool_first = pool_first
        self.pool = max_pool_3x3_valid()
        self.conv = ConvNormAct(in_channels, conv_channels, 3, stride=2, **conv)
        self.out_channels = in_channels + conv_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled, convolved = self.pool(x), self.conv(x)
        return torch.cat((pooled, convolved) if self.pool_first else (convolved, pooled), 1)


class StemTwoTowers(nn.Module):
    """The middle split of the stem (Fig. 3): 1x1 -> 3x3 'valid', beside 1x1 -> 1x7 -> 7x1 -> 3x3 'valid'."""

    def __init__(
        self, in_channels: int, short: tuple[int, int], long: tuple[int, int, int, int], **conv: object
    ) -> None:
        super().__init__()
        self.branch0 = nn.Sequential(
            ConvNormAct(in_channels, short[0], 1, **conv),
            ConvNormAct(short[0], short[1], 3, **conv),
        )
        self.branch1 = nn.Sequential(
            ConvNormAct(in_channels, long[0], 1, **conv),
            *conv_nxn(long[0], long[1], long[2], 7, order="1xn_first", **conv),
            ConvNormAct(long[2], long[3], 3, **conv),
        )
        self.out_channels = short[1] + long[3]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((self.branch0(x), self.branch1(x)), 1)


class InceptionV4Stem(nn.Sequential):
    """The stem of Inception-v4 (Fig. 3): 299x299x3 -> 35x35x384 with three filter concats."""

    def __init__(
        self,
        in_chans: int,
        *,
        widths: dict[str, tuple[int, ...]],
        **conv: object,
    ) -> None:
        super().__init__()
        c1a, c2a, c2b = widths["convs"]
        self.conv1a = ConvNormAct(in_chans, c1a, 3, stride=2, **conv)
        self.conv2a = ConvNormAct(c1a, c2a, 3, **conv)
        self.conv2b = ConvNormAct(c2a, c2b, 3, padding=1, **conv)
        self.mixed_3a = StridedConvPool(c2b, widths["mixed_3a"][0], pool_first=True, **conv)
        self.mixed_4a = StemTwoTowers(
            self.mixed_3a.out_channels, widths["mixed_4a_short"], widths["mixed_4a_long"], **conv
        )
        self.mixed_5a = StridedConvPool(self.mixed_4a.out_channels, widths["mixed_5a"][0], pool_first=False, **conv)
        self.out_channels = self.mixed_5a.out_channels


# The stem's widths (Fig. 3) and the body as a table: (stage name, block, one width dict per block). Fig. 9 and
# Table 1.
STEM_WIDTHS: dict[str, tuple[int, ...]] = {
    "convs": (32, 32, 64),
    "mixed_3a": (96,),
    "mixed_4a_short": (64, 96),
    "mixed_4a_long": (64, 64, 64, 96),
    "mixed_5a": (192,),
}
INCEPTION_V4_BODY: BlockTable = (
    ("inception_a", InceptionA, 4 * (dict(b1x1=96, b3x3=(64, 96), b3x3dbl=(64, 96, 96), pool_proj=96),)),
    ("reduction_a", ReductionA, (dict(k=192, l=224, m=256, n=384),)),
    ("inception_b", InceptionB,
     7 * (dict(b1x1=384, b7x7=(192, 224, 256), b7x7dbl=(192, 192, 224, 224, 256), pool_proj=128),)),
    ("reduction_b", ReductionB, (dict(b3x3=(192, 192), b7x7x3=(256, 256, 320, 320)),)),
    ("inception_c", InceptionC,
     3 * (dict(b1x1=256, b3x3=(384, 256), b3x3dbl=(384, 448, 512, 256), pool_proj=256),)),
)


@dataclass(frozen=True)
class InceptionV4Spec:
    """The table Inception-v4 is built from: the stem's widths (Fig. 3), the body (stage, block, one width dict per
    block; Fig. 9 and Table 1) and the pool convention."""

    stem_widths: Mapping[str, tuple[int, ...]] = field(default_factory=lambda: dict(STEM_WIDTHS))
    body: BlockTable = INCEPTION_V4_BODY
    count_include_pad: bool = COUNT_INCLUDE_PAD


INCEPTION_V4 = InceptionV4Spec()


class InceptionV4(InceptionNet):
    """Inception-v4 (Szegedy et al. 2016, Fig. 9): stem, 4 x A, Reduction-A, 7 x B, Reduction-B, 3 x C.

    Submodules are registered in the order of timm's ``inception_v4`` with the same shapes, so its state
    dict maps onto this model by order (:mod:`inception_models.convert`). ``forward_features`` returns the
    8x8x1536 map (at 299x299) before the global average pool.
    """

    model_name = "inception_v4"
    feature_stages = ("stem", *(stage for stage, _, _ in INCEPTION_V4_BODY))

    def __init__(
        self,
        spec: InceptionV4Spec = INCEPTION_V4,
        *,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        norm: NormKind = "bn",
        width_mult: float = 1.0,
        factorize_a: bool = True,
        factorize_b: bool = True,
        factorize_c: bool = True,
    ) -> None:
        super().__init__(num_classes=num_classes, in_chans=in_chans, min_input_size=MIN_INPUT_SIZE)
        conv = dict(norm=check_norm(norm), eps=TF_BN_EPS)
        stage_kwargs = inception_stage_kwargs(
            factorize_a=factorize_a, factorize_b=factorize_b, factorize_c=factorize_c,
            count_include_pad=spec.count_include_pad,
        )
        stem_widths = {k: scale_widths(v, width_mult) for k, v in spec.stem_widths.items()}
        self.stem = InceptionV4Stem(in_chans, widths=stem_widths, **conv)  # type: ignore[arg-type]
        channels = self.stem.out_channels
        for stage, blocks, channels in build_stages(
            spec.body, channels, width_mult=width_mult, stage_kwargs=stage_kwargs, **conv
        ):
            self.add_module(stage, blocks)
        self.num_features = channels
        self.global_pool, self.dropout, self.fc = make_head(channels, num_classes, drop_rate)


inception_v4 = register_variant(
    InceptionV4,
    INCEPTION_V4,
    "inception_v4",
    """Inception-v4 (Szegedy et al. 2016), the released model: 42.7M parameters, 12.25 GMACs at 299.

    ``factorize_a=False`` makes Inception-A's two stacked 3x3 one 5x5; ``factorize_b=False`` makes
    Inception-B's 1x7/7x1 pairs 7x7; ``factorize_c=False`` makes Inception-C's 1x3/3x1 pairs 3x3. The
    switches touch only the Inception-A/B/C blocks: the stem and the reduction blocks keep their layers.
    """,
    paper="Inception-v4, Inception-ResNet and the Impact of Residual Connections on Learning (Szegedy et al.)",
    year=2016,
    input_size=299,
    min_input_size=MIN_INPUT_SIZE,
    reference_params=42_679_816,
    reference_gmacs=12.254,
    reference_source="timm 1.0.31 inception_v4 (= Cadene's port of the TF-slim weights), measured; "
    "shared/REFERENCES.md. The paper gives no parameter count.",
)
