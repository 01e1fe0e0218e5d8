"""Inception-ResNet-v1 and Inception-ResNet-v2, from "Inception-v4, Inception-ResNet and the Impact of
Residual Connections on Learning" (Szegedy, Ioffe, Vanhoucke, Alemi, 2016; arXiv 1602.07261).

Both networks are one table of blocks (:class:`InceptionResNetSpec`) read by one model class
(:class:`InceptionResNet`); v1 and v2 share every block and differ only in the widths of the table.

- ``inception_resnet_v2``: the released network (TF-slim checkpoint, timm, Cadene), 55,843,464 params;
  10 / 20 / 9 Inception-ResNet-A / B / C blocks, one final C block without ReLU, a 1x1 conv to 1536.
- ``inception_resnet_v2_paper``: the depth of the paper's Fig. 15, 5 / 10 / 5 blocks, no final block or conv.
- ``inception_resnet_v1``: as facenet (David Sandberg) builds it, 24,357,096 params with 1000 classes;
  5 / 10 / 5 blocks and one final C block without ReLU.
- ``inception_resnet_v1_paper``: Fig. 15, 5 / 10 / 5 blocks, no final block.

The residual block (Inception-ResNet-A/B/C) computes ``relu(x + scale * (W concat(branches(x)) + b))``: the
branches are conv-BN-ReLU, ``W`` is a 1x1 convolution **with bias and no BN** back to the width of the
residual stream, and ``scale`` is 0.17 / 0.10 / 0.20 on the 35x35 / 17x17 / 8x8 grids (section 3.3 of the
paper: scaling the residuals by 0.1 to 0.3 kept the last layer from dying). Every
stride-2 operation uses 'valid' padding, average pools exclude the padding (TF), and BN eps is 1e-3.

For the dead-unit experiment (section 3.3: with more than 1000 filters the last layer before the average
pooling "died"), use the ``*_paper`` variants: there that layer is the last Inception-ResNet-C's ReLU, and
``final_width`` sets the width of the whole 8x8 residual stream. In facenet's v1 it is a block without a
ReLU (it cannot output only zeros), in the released v2 a plain 1x1 conv-BN-ReLU. A cheap configuration:
``create_model("inception_resnet_v2_paper", block_counts=(1, 1, 1), width_mult=0.25, final_width=2048)``
with ``residual=False`` as the control; the 8x8 stage is 1x1 at 75-96 px, 3x3 at 139 px, 8x8 at 299 px.

Published single-crop ImageNet error (paper, Table 2): Inception-ResNet-v1 21.3 % top-1 / 5.5 % top-5,
Inception-ResNet-v2 19.9 % / 4.9 %.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Callable, Literal, Sequence

import torch
from torch import nn

from inception_models.base import InceptionNet, make_head
from inception_models.blocks import avg_pool_3x3, max_pool_3x3_valid
from inception_models.layers import TF_BN_EPS, ConvNormAct, NormKind, check_norm, residual_scales, scale_widths
from inception_models.registry import register_variant

__all__ = [
    "InceptionResNet",
    "InceptionResNetSpec",
    "InceptionResNetBlock",
    "InceptionResNetA",
    "InceptionResNetB",
    "InceptionResNetC",
    "InceptionResNetReductionA",
    "InceptionResNetReductionB",
    "Mixed5b",
    "StemV1",
    "StemV2",
    "inception_resnet_v1",
    "inception_resnet_v1_paper",
    "inception_resnet_v2",
    "inception_resnet_v2_paper",
]

PAPER = "Inception-v4, Inception-ResNet and the Impact of Residual Connections on Learning (Szegedy et al.)"

# 75 px is the smallest input whose 8x8 stage still has a 1x1 grid (75 -> 37 -> 35 -> 17 -> 15 -> 7 -> 3 -> 1).
MIN_INPUT_SIZE = 75

# Residual scales of the released networks for the 35x35, 17x17 and 8x8 stages.
RESIDUAL_SCALES = (0.17, 0.10, 0.20)

Kernel = int | tuple[int, int]
Widths = tuple[tuple[int, ...], ...]  # one tuple of conv widths per branch


def _same_padding(kernel: Kernel) -> int | tuple[int, int]:
    if isinstance(kernel, int):
        return kernel // 2
    return kernel[0] // 2, kernel[1] // 2


def _conv_branch(
    in_channels: int, widths: Sequence[int], kernels: Sequence[Kernel], *, norm: NormKind, reduce: bool = False
) -> nn.Sequential:
    """A chain of conv-BN-ReLU layers with 'same' padding; with ``reduce`` the last one is stride 2, 'valid'."""
    if len(widths) != len(kernels):
        raise ValueError(f"a branch with kernels {list(kernels)} needs {len(kernels)} widths, got {list(widths)}")
    layers, channels = [], in_channels
    for i, (width, kernel) in enumerate(zip(widths, kernels)):
        if reduce and i == len(widths) - 1:
            layers.append(ConvNormAct(channels, width, kernel, stride=2, padding=0, norm=norm))
        else:
            layers.append(ConvNormAct(channels, width, kernel, padding=_same_padding(kernel), norm=norm))
        channels = width
    return nn.Sequential(*layers)


def _check_widths(block: str, widths: Widths, kernels: tuple[tuple[Kernel, ...], ...]) -> None:
    shape = [len(k) for k in kernels]
    if len(widths) != len(kernels) or [len(w) for w in widths] != shape:
        raise ValueError(
            f"{block} takes one tuple of widths per branch, with {shape} convolutions per branch; got {widths}"
        )


# --------------------------------------------------------------------------------------------------------
# Residual blocks
# --------------------------------------------------------------------------------------------------------


class InceptionResNetBlock(nn.Module):
    """The residual Inception block that Inception-ResNet-A, -B and -C share (Figs. 10-13 and 16-19).

    Parallel conv-BN-ReLU branches are concatenated and a 1x1 convolution with bias and no BN (the paper's
    "1x1 Conv (linear)") maps them back to the ``in_channels`` of the residual stream. Then:

    - ``residual=True`` (the paper): ``out = act(x + scale * project(concat))``;
    - ``residual=False`` (the control without residual connections): ``out = act(project(concat))``: the
      same layers and parameters, the shortcut dropped and ``scale`` not applied (scaling before a ReLU
      would only rescale the output, compounding over the blocks), like an Inception-v4 block whose
      branches are merged by a linear 1x1 convolution followed by a ReLU.

    ``act`` is an ``nn.ReLU`` module (so forward hooks see the block's output activation) or, for the
    final block of the released networks (``activate=False``), an identity. ``out_norm=True`` adds a batch norm
    (``out_norm``) on the sum just before ``act``: the "extra batch-normalization" of section 3.3, one of the two
    remedies for dying wide layers that the paper says did not help; off by default (no module, no parameter).
    """

    kernels: tuple[tuple[Kernel, ...], ...] = ()
    paper_name = "Inception-ResNet block"

    def __init__(
        self,
        in_channels: int,
        widths: Widths,
        *,
        scale: float = 1.0,
        activate: bool = True,
        residual: bool = True,
        norm: NormKind = "bn",
        out_norm: bool = False,
    ) -> None:
        super().__init__()
        _check_widths(self.paper_name, widths, self.kernels)
        self.scale = float(scale)
        self.residual = residual
        self.branches = nn.ModuleList(
            _conv_branch(in_channels, w, k, norm=norm) for w, k in zip(widths, self.kernels)
        )
        self.project = nn.Conv2d(sum(w[-1] for w in widths), in_channels, kernel_size=1, bias=True)
        self.out_norm = nn.BatchNorm2d(in_channels, eps=TF_BN_EPS) if out_norm else None
        self.act = nn.ReLU() if activate else nn.Identity()
        self.out_channels = in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(torch.cat([branch(x) for branch in self.branches], 1))
        if self.residual:
            out = x + self.scale * out
        if self.out_norm is not None:
            out = self.out_norm(out)
        return self.act(out)

    def extra_repr(self) -> str:
        return f"scale={self.scale}, residual={self.residual}"


class InceptionResNetA(InceptionResNetBlock):
    """Inception-ResNet-A block on the 35x35 grid (Fig. 10 for v1, Fig. 16 for v2).

    ``widths = ((1x1,), (1x1, 3x3), (1x1, 3x3, 3x3))``: v1 ``((32,), (32, 32), (32, 32, 32))``,
    v2 ``((32,), (32, 32), (32, 48, 64))``.
    """

    kernels = ((1,), (1, 3), (1, 3, 3))
    paper_name = "Inception-ResNet-A"


class InceptionResNetB(InceptionResNetBlock):
    """Inception-ResNet-B block on the 17x17 grid (Fig. 11 for v1, Fig. 17 for v2).

    ``widths = ((1x1,), (1x1, 1x7, 7x1))``: v1 ``((128,), (128, 128, 128))``, v2 ``((192,), (128, 160, 192))``.
    """

    kernels = ((1,), (1, (1, 7), (7, 1)))
    paper_name = "Inception-ResNet-B"


class InceptionResNetC(InceptionResNetBlock):
    """Inception-ResNet-C block on the 8x8 grid (Fig. 13 for v1, Fig. 19 for v2).

    ``widths = ((1x1,), (1x1, 1x3, 3x1))``: v1 ``((192,), (192, 192, 192))``, v2 ``((192,), (192, 224, 256))``.
    """

    kernels = ((1,), (1, (1, 3), (3, 1)))
    paper_name = "Inception-ResNet-C"


# --------------------------------------------------------------------------------------------------------
# Reduction blocks and stems
# --------------------------------------------------------------------------------------------------------


class InceptionResNetReductionA(nn.Module):
    """Reduction-A, 35x35 -> 17x17 (Fig. 7), with the paper's Table 1 widths ``k, l, m, n``, as the
    Inception-ResNets register it (their own branch names and positional widths, so their state dicts keep their
    keys; :class:`inception_models.blocks.ReductionA` is the same block as Inception-v3 and v4 register it).

    Branches: 3x3/2 conv ``n``; 1x1 ``k`` -> 3x3 ``l`` -> 3x3/2 ``m``; 3x3/2 max-pool (all 'valid').
    Inception-ResNet-v1 uses ``(192, 192, 256, 384)``, Inception-ResNet-v2 ``(256, 256, 384, 384)``.
    """

    def __init__(
        self, in_channels: int, k: int, l: int, m: int, n: int, *, norm: NormKind = "bn"  # noqa: E741
    ) -> None:
        super().__init__()
        self.branch_3x3 = ConvNormAct(in_channels, n, 3, stride=2, padding=0, norm=norm)
        self.branch_3x3dbl = _conv_branch(in_channels, (k, l, m), (1, 3, 3), norm=norm, reduce=True)
        self.branch_pool = max_pool_3x3_valid()
        self.out_channels = n + m + in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch_3x3(x), self.branch_3x3dbl(x), self.branch_pool(x)], 1)


class InceptionResNetReductionB(nn.Module):
    """The Inception-ResNets' Reduction-B, 17x17 -> 8x8 (Fig. 12 for v1, Fig. 18 for v2): three conv branches
    beside the pool, where Inception-v4's (:class:`inception_models.blocks.ReductionB`) has two.

    ``widths = ((1x1, 3x3/2), (1x1, 3x3/2), (1x1, 3x3, 3x3/2))`` plus a 3x3/2 max-pool, all 'valid':
    v1 ``((256, 384), (256, 256), (256, 256, 256))``, v2 ``((256, 384), (256, 288), (256, 288, 320))``.
    """

    kernels = ((1, 3), (1, 3), (1, 3, 3))

    def __init__(self, in_channels: int, widths: Widths, *, norm: NormKind = "bn") -> None:
        super().__init__()
        _check_widths("Reduction-B", widths, self.kernels)
        self.branches = nn.ModuleList(
            _conv_branch(in_channels, w, k, norm=norm, reduce=True) for w, k in zip(widths, self.kernels)
        )
        self.branch_pool = max_pool_3x3_valid()
        self.out_channels = sum(w[-1] for w in widths) + in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([branch(x) for branch in self.branches] + [self.branch_pool(x)], 1)


class Mixed5b(nn.Module):
    """The pure Inception block that ends the released Inception-ResNet-v2 stem (TF-slim ``Mixed_5b``).

    Not in the paper, whose v2 stem is Fig. 3 (tensorflow/models#1553). ``widths = ((1x1,), (1x1, 5x5),
    (1x1, 3x3, 3x3), (pool 1x1,))``, released ``((96,), (48, 64), (64, 96, 96), (64,))``: 320 channels.
    The 3x3 average pool excludes the padding, as TF does.
    """

    kernels = ((1,), (1, 5), (1, 3, 3), (1,))

    def __init__(self, in_channels: int, widths: Widths, *, norm: NormKind = "bn") -> None:
        super().__init__()
        _check_widths("Mixed_5b", widths, self.kernels)
        convs = [_conv_branch(in_channels, w, k, norm=norm) for w, k in zip(widths[:3], self.kernels[:3])]
        pool = nn.Sequential(
            avg_pool_3x3(count_include_pad=False),
            ConvNormAct(in_channels, widths[3][0], 1, norm=norm),
        )
        self.branches = nn.ModuleList([*convs, pool])
        self.out_channels = sum(w[-1] for w in widths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([branch(x) for branch in self.branches], 1)


def _stem_trunk(in_chans: int, widths: Sequence[int], norm: NormKind) -> list[tuple[str, nn.Module]]:
    """The part both stems share: 299 -> 71x71 (Fig. 14 up to its 192-channel 3x3 conv)."""
    c1, c2, c3, c4, c5 = widths
    return [
        ("conv1a", ConvNormAct(in_chans, c1, 3, stride=2, padding=0, norm=norm)),
        ("conv2a", ConvNormAct(c1, c2, 3, padding=0, norm=norm)),
        ("conv2b", ConvNormAct(c2, c3, 3, padding=1, norm=norm)),
        ("pool3a", max_pool_3x3_valid()),
        ("conv3b", ConvNormAct(c3, c4, 1, norm=norm)),
        ("conv4a", ConvNormAct(c4, c5, 3, padding=0, norm=norm)),
    ]


class StemV1(nn.Sequential):
    """Inception-ResNet-v1 stem (Fig. 14): 299x299x3 -> 35x35x256.

    3x3/2 conv 32 V, 3x3 32 V, 3x3 64, 3x3/2 max-pool V, 1x1 80, 3x3 192 V, 3x3/2 256 V.
    ``widths`` are the six conv widths, ``(32, 32, 64, 80, 192, 256)`` in the paper.
    """

    def __init__(self, in_chans: int, widths: Sequence[int], *, norm: NormKind = "bn") -> None:
        if len(widths) != 6:
            raise ValueError(f"StemV1 takes the widths of its six convolutions, got {list(widths)}")
        layers = _stem_trunk(in_chans, widths[:5], norm)
        layers.append(("conv4b", ConvNormAct(widths[4], widths[5], 3, stride=2, padding=0, norm=norm)))
        super().__init__(OrderedDict(layers))
        self.out_channels = widths[5]


class StemV2(nn.Sequential):
    """The stem of the released Inception-ResNet-v2 (TF-slim, timm): 299x299x3 -> 35x35x320.

    Fig. 14's layers up to the 192-channel conv, a 3x3/2 max-pool, then :class:`Mixed5b`. The paper's
    Fig. 3 (the Inception-v4 stem, 384 channels) is not what was released (tensorflow/models#1553).
    """

    def __init__(self, in_chans: int, widths: Sequence[int], mixed_5b: Widths, *, norm: NormKind = "bn") -> None:
        if len(widths) != 5:
            raise ValueError(f"StemV2 takes the widths of its five plain convolutions, got {list(widths)}")
        layers = _stem_trunk(in_chans, widths, norm)
        layers.append(("pool5a", max_pool_3x3_valid()))
        mixed = Mixed5b(widths[4], mixed_5b, norm=norm)
        layers.append(("mixed5b", mixed))
        super().__init__(OrderedDict(layers))
        self.out_channels = mixed.out_channels


# --------------------------------------------------------------------------------------------------------
# The table and the model
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InceptionResNetSpec:
    """The table an Inception-ResNet variant is built from: one row per stage, widths as in the paper.

    ``block_counts`` counts the scaled blocks with a ReLU in the 35x35, 17x17 and 8x8 stages;
    ``final_block`` adds one more Inception-ResNet-C with scale 1.0 and no ReLU (the released networks);
    ``final_conv`` is the width of a closing 1x1 conv-BN-ReLU (released v2: 1536), or ``None``.
    """

    name: str
    stem: Literal["v1", "v2"]
    stem_widths: tuple[int, ...]
    mixed_5b: Widths | None
    block_a: Widths
    reduction_a: tuple[int, int, int, int]
    block_b: Widths
    reduction_b: Widths
    block_c: Widths
    block_counts: tuple[int, int, int]
    final_block: bool
    final_conv: int | None
    drop_rate: float


V2_RELEASED = InceptionResNetSpec(
    name="inception_resnet_v2",
    stem="v2",
    stem_widths=(32, 32, 64, 80, 192),
    mixed_5b=((96,), (48, 64), (64, 96, 96), (64,)),
    block_a=((32,), (32, 32), (32, 48, 64)),
    reduction_a=(256, 256, 384, 384),
    block_b=((192,), (128, 160, 192)),
    reduction_b=((256, 384), (256, 288), (256, 288, 320)),
    block_c=((192,), (192, 224, 256)),
    block_counts=(10, 20, 9),
    final_block=True,
    final_conv=1536,
    drop_rate=0.0,
)
V2_PAPER = replace(V2_RELEASED, name="inception_resnet_v2_paper", block_counts=(5, 10, 5), final_block=False,
                   final_conv=None, drop_rate=0.2)

V1_FACENET = InceptionResNetSpec(
    name="inception_resnet_v1",
    stem="v1",
    stem_widths=(32, 32, 64, 80, 192, 256),
    mixed_5b=None,
    block_a=((32,), (32, 32), (32, 32, 32)),
    reduction_a=(192, 192, 256, 384),
    block_b=((128,), (128, 128, 128)),
    reduction_b=((256, 384), (256, 256), (256, 256, 256)),
    block_c=((192,), (192, 192, 192)),
    block_counts=(5, 10, 5),
    final_block=True,
    final_conv=None,
    drop_rate=0.2,
)
V1_PAPER = replace(V1_FACENET, name="inception_resnet_v1_paper", final_block=False)


def _check_block_counts(block_counts: Sequence[int]) -> tuple[int, int, int]:
    try:
        counts = tuple(block_counts)
    except TypeError:
        counts = ()
    if len(counts) != 3 or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
        raise ValueError(
            "block_counts takes 3 non-negative ints, the numbers of Inception-ResNet-A, -B and -C blocks "
            f"(e.g. (1, 1, 1) for a quick model), got {block_counts!r}"
        )
    return counts  # type: ignore[return-value]


class InceptionResNet(InceptionNet):
    """Inception-ResNet (v1 or v2, released or paper depth) built from an :class:`InceptionResNetSpec`.

    Modules, in forward order (and in the order of the reference state dicts): ``stem``, ``stage_a``
    (Inception-ResNet-A x n), ``reduction_a``, ``stage_b``, ``reduction_b``, ``widen``, ``stage_c``,
    ``final_block``, ``final_conv``, then ``global_pool``, ``dropout``, ``fc``. ``widen``, ``final_block`` and
    ``final_conv`` are ``nn.Identity`` where a variant has none.

    ``final_width`` sets the number of channels of the layer before global average pooling (the
    ``num_features`` that :meth:`forward_features` returns): on a variant with a closing 1x1 conv (released
    v2) it is that conv's width; otherwise the whole 8x8 stage carries ``final_width`` channels (its
    residual stream, each Inception-ResNet-C's 1x1 projection included), reached from Reduction-B's
    output by ``widen``, a 1x1 conv-BN-ReLU that exists only when ``final_width`` differs from that output.

    ``prepool_bn=True`` gives the last Inception-ResNet-C, whose ReLU is the layer before the pool in the
    ``*_paper`` variants, an extra batch norm before that ReLU (section 3.3's "extra batch-normalization",
    ``2 * num_features`` parameters more); only those variants take it, since the released ones end in a
    block without ReLU (v1) or a conv-BN-ReLU (v2).
    """

    feature_stages = (
        "stem", "stage_a", "reduction_a", "stage_b", "reduction_b", "widen", "stage_c", "final_block", "final_conv"
    )

    def __init__(
        self,
        spec: InceptionResNetSpec,
        *,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float | None = None,
        norm: NormKind = "bn",
        width_mult: float = 1.0,
        residual_scale: float | Sequence[float] = RESIDUAL_SCALES,
        block_counts: Sequence[int] | None = None,
        residual: bool = True,
        final_width: int | None = None,
        prepool_bn: bool = False,
    ) -> None:
        super().__init__(num_classes=num_classes, in_chans=in_chans, min_input_size=MIN_INPUT_SIZE)
        check_norm(norm)
        self.model_name = spec.name
        drop_rate = spec.drop_rate if drop_rate is None else float(drop_rate)
        if not 0.0 <= drop_rate < 1.0:
            raise ValueError(f"drop_rate is a dropout probability in [0, 1), got {drop_rate}")
        if not isinstance(residual, bool):
            raise TypeError(f"residual takes True (the paper) or False (no shortcut), got {residual!r}")
        valid_width = isinstance(final_width, int) and not isinstance(final_width, bool) and final_width > 0
        if final_width is not None and not valid_width:
            raise ValueError(f"final_width is a positive number of channels or None, got {final_width!r}")
        counts = _check_block_counts(spec.block_counts if block_counts is None else block_counts)
        if not isinstance(prepool_bn, bool):
            raise TypeError(f"prepool_bn takes True (an extra BN before the last ReLU) or False, got {prepool_bn!r}")
        if prepool_bn and (spec.final_block or spec.final_conv is not None or counts[2] < 1):
            raise ValueError(f"prepool_bn needs a last Inception-ResNet-C whose ReLU feeds the pool, which {spec.name} "
                             f"with block_counts {counts} lacks; use inception_resnet_v1_paper or "
                             "inception_resnet_v2_paper with at least one C block")
        scales = residual_scales(residual_scale, 3)
        self.residual_scales = scales
        self.block_counts = counts
        self.residual = residual

        def w(widths):
            return scale_widths(widths, width_mult)

        if spec.stem == "v1":
            self.stem: nn.Module = StemV1(in_chans, w(spec.stem_widths), norm=norm)
        else:
            self.stem = StemV2(in_chans, w(spec.stem_widths), w(spec.mixed_5b), norm=norm)
        channels = self.stem.out_channels

        def stage(block: type[InceptionResNetBlock], widths: Widths, count: int, scale: float,
                  last_norm: bool = False) -> nn.Sequential:
            return nn.Sequential(*(
                block(channels, w(widths), scale=scale, residual=residual, norm=norm,
                      out_norm=last_norm and i == count - 1) for i in range(count)
            ))

        self.stage_a = stage(InceptionResNetA, spec.block_a, counts[0], scales[0])
        self.reduction_a = InceptionResNetReductionA(channels, *w(spec.reduction_a), norm=norm)
        channels = self.reduction_a.out_channels
        self.stage_b = stage(InceptionResNetB, spec.block_b, counts[1], scales[1])
        self.reduction_b = InceptionResNetReductionB(channels, w(spec.reduction_b), norm=norm)
        channels = self.reduction_b.out_channels

        self.widen: nn.Module = nn.Identity()
        closing_width = None if spec.final_conv is None else w(spec.final_conv)
        if spec.final_conv is not None and final_width is not None:
            closing_width = final_width
        elif final_width is not None and final_width != channels:
            self.widen = ConvNormAct(channels, final_width, 1, norm=norm)
            channels = final_width

        self.stage_c = stage(InceptionResNetC, spec.block_c, counts[2], scales[2], last_norm=prepool_bn)
        self.final_block: nn.Module = nn.Identity()
        if spec.final_block:
            self.final_block = InceptionResNetC(
                channels, w(spec.block_c), scale=1.0, activate=False, residual=residual, norm=norm
            )
        self.final_conv: nn.Module = nn.Identity()
        if closing_width is not None:
            self.final_conv = ConvNormAct(channels, closing_width, 1, norm=norm)
            channels = closing_width

        self.num_features = channels
        self.drop_rate = drop_rate
        self.global_pool, self.dropout, self.fc = make_head(channels, num_classes, drop_rate)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The feature map before global average pooling: ``(N, num_features, 8, 8)`` at 299x299."""
        self.check_input(x)
        return super().forward_features(x)


# --------------------------------------------------------------------------------------------------------
# Registered builders
# --------------------------------------------------------------------------------------------------------

_KNOBS_DOC = """
    Knobs: ``num_classes``; ``in_chans``; ``drop_rate`` (dropout before the classifier); ``norm`` ("bn" or
    "none": convs get a bias instead); ``width_mult`` (every conv width, stem included, scaled and rounded,
    so the residual streams scale too); ``residual_scale`` (one float for all three stages or one per stage;
    the final no-ReLU block keeps scale 1.0); ``block_counts`` (the A, B, C block counts, excluding the
    final block); ``residual`` (False: blocks compute ``relu(project(concat(branches)))``, no shortcut, no
    scale, same parameters, see :class:`InceptionResNetBlock`); ``final_width`` (channels of the layer
    before average pooling, see :class:`InceptionResNet`); ``prepool_bn`` (an extra BN before the last ReLU of the
    ``*_paper`` variants, section 3.3; default off). Inputs must be at least 75x75.
"""


def _register_variant(spec: InceptionResNetSpec, doc: str, **reference: object) -> Callable[..., InceptionResNet]:
    """Register the builder of one variant, named by its spec, with the knobs of :class:`InceptionResNet`."""
    return register_variant(InceptionResNet, spec, spec.name, doc + _KNOBS_DOC, paper=PAPER, year=2016,
                            input_size=299, min_input_size=MIN_INPUT_SIZE, **reference)


inception_resnet_v2 = _register_variant(
    V2_RELEASED,
    """Inception-ResNet-v2 as released (TF-slim checkpoint, timm/Cadene port): 55,843,464 params, 13.156 GMACs.

    Stem of Fig. 14 plus a max-pool and Mixed_5b (320 channels), 10 Inception-ResNet-A (Fig. 16, scale
    0.17), Reduction-A (Fig. 7, k,l,m,n = 256,256,384,384; 1088 channels), 20 Inception-ResNet-B (Fig. 17,
    0.10), Reduction-B (Fig. 18; 2080 channels), 9 Inception-ResNet-C (Fig. 19, 0.20) and one more with
    scale 1.0 and no ReLU, then a 1x1 conv-BN-ReLU to 1536. Module and parameter order equal timm's, so
    its state dict maps by order. The paper's figure differs (tensorflow/models#1553): see
    ``inception_resnet_v2_paper``. Dropout defaults to timm's 0.0.
    """,
    reference_params=55_843_464,
    reference_gmacs=13.156,
    reference_source="timm inception_resnet_v2 (= Cadene's port of the TF-slim release), measured with "
    "torch 2.14.1 / timm 1.0.31; shared/REFERENCES.md",
)

inception_resnet_v2_paper = _register_variant(
    V2_PAPER,
    """Inception-ResNet-v2 at the depth of the paper's Fig. 15: 5 / 10 / 5 blocks, 2080 features.

    The released network (``inception_resnet_v2``) doubles the blocks (10 / 20 / 10), adds a final
    no-ReLU block and a 1x1 conv to 1536, none of which Fig. 15 shows (tensorflow/models#1553; the
    maintainers answered that the release is what the authors intended). This variant follows the figure:
    5 A, 10 B and 5 C blocks, average pooling straight after the last Inception-ResNet-C, whose ReLU is
    then "the last layer before the average pooling" of section 3.3, and dropout 0.2 (keep 0.8, Fig. 15).
    The stem and block widths stay the released ones (320 / 1088 / 2080 channels): the paper's own
    numbers do not add up (after the Fig. 3 stem's 384 channels, Reduction-A yields 1152 channels where
    Fig. 17's 1x1 projects to 1154, and Reduction-B 2144 where Fig. 19's gives 2048), so only depth and
    head differ from the release.
    """,
)

inception_resnet_v1 = _register_variant(
    V1_FACENET,
    """Inception-ResNet-v1 as David Sandberg's facenet builds it: 24,357,096 params with 1000 classes.

    Stem of Fig. 14 (35x35x256), 5 Inception-ResNet-A (Fig. 10, scale 0.17), Reduction-A (Fig. 7,
    k,l,m,n = 192,192,256,384; 896 channels), 10 Inception-ResNet-B (Fig. 11, 0.10), Reduction-B (Fig. 12;
    1792 channels), 5 Inception-ResNet-C (Fig. 13, 0.20) and one more with scale 1.0 and no ReLU (facenet's
    ``block8(net, activation_fn=None)``), average pooling, dropout 0.2 (facenet's keep 0.8) and a
    1792 -> ``num_classes`` classifier where facenet has its 128-d bottleneck.
    """,
    reference_params=24_357_096,
    reference_gmacs=6.31,
    reference_source="facenet (David Sandberg) inception_resnet_v1 body, 22,564,096 params, plus a "
    "1792->1000 classifier; shared/REFERENCES.md",
)

inception_resnet_v1_paper = _register_variant(
    V1_PAPER,
    """Inception-ResNet-v1 as the paper's Fig. 15 draws it: facenet's network without the extra 8x8 block.

    5 / 10 / 5 blocks; average pooling follows the last scaled Inception-ResNet-C with its ReLU.
    """,
)
