"""Xception (Chollet, "Xception: Deep Learning with Depthwise Separable Convolutions", CVPR 2017, arXiv 1610.02357).

The "extreme Inception": every Inception module becomes a depthwise-separable convolution (a 3x3 depthwise
convolution, then a 1x1 pointwise one), stacked in 14 residual modules (Fig. 5):

- entry flow: two plain 3x3 convolutions (32, 64), then three blocks (128, 256, 728) that halve the grid
  with a 3x3/2 max pool, beside a strided 1x1 projection shortcut;
- middle flow: eight identical blocks of three ReLU -> SeparableConv 728 -> BN, identity shortcut;
- exit flow: one reducing block (728, 1024), then SeparableConv 1536 and 2048, each with BN and ReLU.

It follows the released Keras model as ported by Cadene (timm ``legacy_xception``), which is the paper's
Table 3 model: 22,855,952 parameters, 8.357 GMACs at 299x299, BN eps 1e-5 (PyTorch's default, kept by the
port), no padding in the two stem convolutions, and padded 3x3/2 max pools in the blocks.

The paper's ablation (Sec. 4.7, Fig. 10): a non-linearity between the depthwise and the pointwise
convolution makes things worse, ReLU most of all; ``mid_activation=True`` puts that ReLU back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import torch
from torch import nn

from inception_models.base import InceptionNet, make_head
from inception_models.layers import CAFFE_BN_EPS, ConvNormAct, NormKind, check_norm, init_he_fan_out, scale_width
from inception_models.registry import register_variant

__all__ = ["XCEPTION", "MID_ACTIVATIONS", "mid_activation_layer", "SeparableConv2d", "SeparableConvNorm",
           "XceptionBlock", "Xception", "XceptionSpec", "xception"]

# What goes between the depthwise and the pointwise convolution (Fig. 10): False/"none", True/"relu", "elu".
MidActivation = Union[bool, str]
MID_ACTIVATIONS = ("none", "relu", "elu")


def mid_activation_layer(kind: MidActivation) -> nn.Module:
    """The module for ``mid_activation`` (no parameters in any case): Identity, ReLU or ELU (alpha 1)."""
    name = ("relu" if kind else "none") if isinstance(kind, bool) else kind
    if name not in MID_ACTIVATIONS:
        raise ValueError(f"mid_activation must be True, False or one of {MID_ACTIVATIONS}, got {kind!r}")
    if name == "relu":
        return nn.ReLU(inplace=True)
    return nn.ELU(inplace=True) if name == "elu" else nn.Identity()


# 7 -> 3 (3x3/2 'valid') -> 1 (3x3 'valid'); every later layer is padded and works on a 1x1 grid.
MIN_INPUT_SIZE = 7
XCEPTION_BN_EPS = CAFFE_BN_EPS


class SeparableConv2d(nn.Module):
    """Depthwise-separable convolution (Xception paper, Sec. 2): a per-channel k x k convolution, then 1x1.

    ``mid_activation`` inserts a non-linearity between the two (the paper's Fig. 10 ablation; off in Xception):
    ``True`` or ``"relu"`` a ReLU, ``"elu"`` an ELU, ``False`` or ``"none"`` nothing.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        padding: int = 1,
        mid_activation: MidActivation = False,
        bias: bool = False,
    ) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(
            in_channels, in_channels, kernel_size, padding=padding, groups=in_channels, bias=False
        )
        self.mid_act = mid_activation_layer(mid_activation)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.mid_act(self.depthwise(x)))


class SeparableConvNorm(nn.Sequential):
    """[ReLU ->] SeparableConv -> BN [-> ReLU]: the unit of Xception's blocks (pre-activation, as Fig. 5 draws
    them) and of the exit flow's last two layers (post-activation).

    With ``norm="none"`` the pointwise convolution carries the bias the BN would have provided.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        pre_act: bool = False,
        post_act: bool = False,
        norm: NormKind = "bn",
        mid_activation: MidActivation = False,
        pre_act_inplace: bool = True,
    ) -> None:
        super().__init__()
        self.pre_act = nn.ReLU(inplace=pre_act_inplace) if pre_act else nn.Identity()
        self.conv = SeparableConv2d(in_channels, out_channels, mid_activation=mid_activation, bias=norm == "none")
        self.bn = nn.BatchNorm2d(out_channels, eps=XCEPTION_BN_EPS) if norm == "bn" else nn.Identity()
        self.post_act = nn.ReLU(inplace=True) if post_act else nn.Identity()


class XceptionBlock(nn.Module):
    """A residual Xception module (Fig. 5): ``reps`` x (ReLU, SeparableConv, BN), a 3x3 max pool when it
    reduces the grid, plus a shortcut (a strided 1x1 convolution with BN when the shape changes).

    ``grow_first`` widens in the first separable convolution (entry flow) or the last (exit flow).
    ``start_with_relu=False`` for the first block, which follows the stem's ReLU.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        reps: int,
        stride: int = 1,
        start_with_relu: bool = True,
        grow_first: bool = True,
        norm: NormKind = "bn",
        mid_activation: MidActivation = False,
    ) -> None:
        super().__init__()
        if out_channels != in_channels or stride != 1:
            self.skip: nn.Module = ConvNormAct(
                in_channels, out_channels, 1, stride=stride, act=False, norm=norm, eps=XCEPTION_BN_EPS
            )
        else:
            self.skip = nn.Identity()
        units: list[nn.Module] = []
        for i in range(reps):
            if grow_first:
                unit_in, unit_out = (in_channels if i == 0 else out_channels), out_channels
            else:
                unit_in, unit_out = in_channels, (in_channels if i < reps - 1 else out_channels)
            units.append(
                SeparableConvNorm(
                    unit_in,
                    unit_out,
                    pre_act=start_with_relu or i > 0,
                    norm=norm,
                    mid_activation=mid_activation,
                    # The block's input is still needed by the shortcut, so its first ReLU must not overwrite it.
                    pre_act_inplace=i > 0,
                )
            )
        if stride != 1:
            units.append(nn.MaxPool2d(3, stride, padding=1))
        self.rep = nn.Sequential(*units)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rep(x) + self.skip(x)


# The three flows as tables of (out_channels, reps, stride, grow_first), Fig. 5.
ENTRY_STEM = (32, 64)
ENTRY_BLOCKS = ((128, 2, 2, True), (256, 2, 2, True), (728, 2, 2, True))
MIDDLE_BLOCK = (728, 3, 1, True)
EXIT_BLOCK = (1024, 2, 2, False)
EXIT_CONVS = (1536, 2048)


@dataclass(frozen=True)
class XceptionSpec:
    """The three flows of Xception (Fig. 5): the entry stem's two conv widths, then blocks as
    (out_channels, reps, stride, grow_first): the entry flow's, the one middle-flow block repeated
    ``middle_blocks`` times, the exit block, and the exit flow's two separable convolutions."""

    entry_stem: tuple[int, int] = ENTRY_STEM
    entry_blocks: tuple[tuple[int, int, int, bool], ...] = ENTRY_BLOCKS
    middle_block: tuple[int, int, int, bool] = MIDDLE_BLOCK
    exit_block: tuple[int, int, int, bool] = EXIT_BLOCK
    exit_convs: tuple[int, ...] = EXIT_CONVS


XCEPTION = XceptionSpec()


class Xception(InceptionNet):
    """Xception (Chollet 2017, Fig. 5): entry flow, ``middle_blocks`` middle-flow blocks, exit flow.

    Submodules are registered in the order of timm's ``legacy_xception`` with the same shapes (the
    shortcut before the residual branch, as there), so its state dict maps onto this model by order.
    ``forward_features`` returns the 10x10x2048 map (at 299x299) before the global average pool.
    """

    model_name = "xception"
    feature_stages = ("stem", "entry_flow", "middle_flow", "exit_flow")

    def __init__(
        self,
        spec: XceptionSpec = XCEPTION,
        *,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        norm: NormKind = "bn",
        width_mult: float = 1.0,
        mid_activation: MidActivation = False,
        middle_blocks: int = 8,
    ) -> None:
        super().__init__(num_classes=num_classes, in_chans=in_chans, min_input_size=MIN_INPUT_SIZE)
        check_norm(norm)
        if middle_blocks < 0:
            raise ValueError(f"middle_blocks must be >= 0 (the paper uses 8), got {middle_blocks}")
        width = lambda c: scale_width(c, width_mult)  # noqa: E731
        block = dict(norm=norm, mid_activation=mid_activation)

        stem_1, stem_2 = (width(c) for c in spec.entry_stem)
        self.stem = nn.Sequential(
            ConvNormAct(in_chans, stem_1, 3, stride=2, norm=norm, eps=XCEPTION_BN_EPS),
            ConvNormAct(stem_1, stem_2, 3, norm=norm, eps=XCEPTION_BN_EPS),
        )
        channels = stem_2
        entry = []
        for i, (out, reps, stride, grow_first) in enumerate(spec.entry_blocks):
            entry.append(
                XceptionBlock(channels, width(out), reps=reps, stride=stride, start_with_relu=i > 0,
                              grow_first=grow_first, **block)
            )
            channels = width(out)
        self.entry_flow = nn.Sequential(*entry)

        out, reps, stride, grow_first = spec.middle_block
        self.middle_flow = nn.Sequential(
            *(XceptionBlock(channels, width(out), reps=reps, stride=stride, grow_first=grow_first, **block)
              for _ in range(middle_blocks))
        )
        if middle_blocks:
            channels = width(out)

        out, reps, stride, grow_first = spec.exit_block
        exit_layers: list[nn.Module] = [
            XceptionBlock(channels, width(out), reps=reps, stride=stride, grow_first=grow_first, **block)
        ]
        channels = width(out)
        for out in spec.exit_convs:
            exit_layers.append(SeparableConvNorm(channels, width(out), post_act=True, **block))
            channels = width(out)
        self.exit_flow = nn.Sequential(*exit_layers)

        self.num_features = channels
        self.global_pool, self.dropout, self.fc = make_head(channels, num_classes, drop_rate)
        init_he_fan_out(self)  # as the reference port; the classifier keeps PyTorch's default


xception = register_variant(
    Xception,
    XCEPTION,
    "xception",
    """Xception (Chollet 2017): 22.9M parameters, 8.36 GMACs at 299, 36 convolution layers in 14 modules.

    ``mid_activation=True`` (or ``"relu"``) adds a ReLU between every depthwise and pointwise convolution,
    ``"elu"`` an ELU (no parameters; both worse in the paper's Fig. 10); ``middle_blocks`` sets the depth of the middle flow (8 in the paper).
    """,
    paper="Xception: Deep Learning with Depthwise Separable Convolutions (Chollet)",
    year=2017,
    input_size=299,
    min_input_size=MIN_INPUT_SIZE,
    reference_params=22_855_952,
    reference_gmacs=8.357,
    reference_source="timm 1.0.31 legacy_xception (= Cadene's port of the Keras weights = the paper's Table 3 "
    "model), measured; shared/REFERENCES.md",
)
