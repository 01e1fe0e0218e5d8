"""BN-Inception (Ioffe & Szegedy, "Batch Normalization: Accelerating Deep Network Training by Reducing Internal
Covariate Shift", ICML 2015, arXiv 1502.03167), the network of the paper's Fig. 5 (appendix table).

It is GoogLeNet with batch norm after every convolution, the 5x5 convolutions replaced by two stacked 3x3,
no LRN, no dropout by default (sec. 4.2.1, "Remove Dropout"), and two stride-2 Inception modules, (3c) and
(4e), that reduce the grid with strided 3x3 convolutions beside a max pool whose output passes through.

We follow the released Caffe model as ported by Cadene's ``pretrainedmodels`` (``bninception``), so that its
weights load by order: every convolution keeps its bias and is followed by BN with eps 1e-5; conv, then BN,
then ReLU; branches in the order 1x1, 3x3 reduce, 3x3, double 3x3 reduce, double 3x3 (two), pool projection.
The port's inputs are BGR in [0, 255] minus the per-channel mean (104, 117, 128), not ImageNet-normalised RGB.

The paper's table is inconsistent: its branch widths concatenate to 608 channels at (4c) and (4d) and, with
the pass-through of (4e), to 1056 after (4e), while its output column says 576 and 1024. The port follows the
branch widths (608, 1056); ``paper_table_widths=True`` follows the output column instead (see
:func:`bn_inception`). The paper's 13.6M parameters are reproduced by no implementation; the port has
11,295,240 parameters and 2.033 GMACs at 224 (``shared/REFERENCES.md``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from inception_models.base import InceptionNet, make_head
from inception_models.layers import CAFFE_BN_EPS, ConvNormAct, NormKind, check_norm, init_he_fan_out, scale_width
from inception_models.registry import register_variant

__all__ = ["BN_INCEPTION", "BNInceptionModule", "BNInceptionReduction", "BNInception", "BNInceptionSpec", "bn_inception"]

# Found by trying every size from 1 to 259 (all sizes from the minimum up work): at 6 the stem's second
# 3x3/2 max pool sees a 1x1 grid and torch fails. (Without the odd-grid padding of the stride-2 modules,
# see BNInceptionReduction, many larger sizes would fail too.)
MIN_INPUT_SIZE = 7

# Fig. 5 of the paper, one row per module. Inception modules: #1x1, #3x3 reduce, #3x3, double #3x3 reduce,
# double #3x3, pool ("avg" or "max"), pool proj. Stride-2 modules ((3c), (4e)): #3x3 reduce, #3x3,
# double #3x3 reduce, double #3x3; their max pool passes its input through.
BN_INCEPTION_BODY: tuple[tuple[str, tuple[int | str, ...]], ...] = (
    ("inception3a", (64, 64, 64, 64, 96, "avg", 32)),
    ("inception3b", (64, 64, 96, 64, 96, "avg", 64)),
    ("inception3c", (128, 160, 64, 96)),
    ("inception4a", (224, 64, 96, 96, 128, "avg", 128)),
    ("inception4b", (192, 96, 128, 96, 128, "avg", 128)),
    ("inception4c", (160, 128, 160, 128, 160, "avg", 128)),
    ("inception4d", (96, 128, 192, 160, 192, "avg", 128)),
    ("inception4e", (128, 192, 192, 256)),
    ("inception5a", (352, 192, 320, 160, 224, "avg", 128)),
    ("inception5b", (352, 192, 320, 192, 224, "max", 128)),
)
# The stem (Fig. 5): conv 7x7/2 (64), then the 3x3 conv (192) with its 1x1 reduce (64).
STEM_WIDTHS = (64, 64, 192)
# paper_table_widths=True: the pool projections of (4c) and (4d) shrink from 128 to 96, so that both modules
# output the 576 channels of the table's output column, and (4e) then outputs 576 + 192 + 256 = 1024.
PAPER_TABLE_POOL_PROJ = {"inception4c": 96, "inception4d": 96}


@dataclass(frozen=True)
class BNInceptionSpec:
    """The table BN-Inception is built from (Fig. 5): the stem's widths, the body (one row per module), and the
    pool projections that ``paper_table_widths=True`` puts in place of the body's."""

    stem_widths: tuple[int, int, int] = STEM_WIDTHS
    body: tuple[tuple[str, tuple[int | str, ...]], ...] = BN_INCEPTION_BODY
    paper_table_pool_proj: Mapping[str, int] = field(default_factory=lambda: dict(PAPER_TABLE_POOL_PROJ))


BN_INCEPTION = BNInceptionSpec()


def _max_pool_3x3(stride: int) -> nn.MaxPool2d:
    # Caffe rounds pooled sizes up (ceil_mode); the 3x3/1 pool of a branch pads by one.
    return nn.MaxPool2d(3, stride=stride, padding=1 if stride == 1 else 0, ceil_mode=True)


class BNInceptionModule(nn.Module):
    """Inception module of BN-Inception (Fig. 5): 1x1 | 1x1 -> 3x3 | 1x1 -> 3x3 -> 3x3 | pool -> 1x1.

    The paper's 5x5 branch is two stacked 3x3 convolutions ("double #3x3"). ``pool`` is "avg" (3x3/1,
    padding counted as in Caffe) or "max" (3x3/1, module (5b)).
    """

    def __init__(
        self,
        in_channels: int,
        ch1x1: int,
        ch3x3red: int,
        ch3x3: int,
        ch3x3dblred: int,
        ch3x3dbl: int,
        pool: str,
        pool_proj: int,
        **conv: object,
    ) -> None:
        super().__init__()
        self.branch1x1 = ConvNormAct(in_channels, ch1x1, 1, **conv)
        self.branch3x3 = nn.Sequential(
            ConvNormAct(in_channels, ch3x3red, 1, **conv),
            ConvNormAct(ch3x3red, ch3x3, 3, padding=1, **conv),
        )
        self.branch3x3dbl = nn.Sequential(
            ConvNormAct(in_channels, ch3x3dblred, 1, **conv),
            ConvNormAct(ch3x3dblred, ch3x3dbl, 3, padding=1, **conv),
            ConvNormAct(ch3x3dbl, ch3x3dbl, 3, padding=1, **conv),
        )
        if pool == "avg":
            pooling: nn.Module = nn.AvgPool2d(3, stride=1, padding=1, ceil_mode=True, count_include_pad=True)
        elif pool == "max":
            pooling = _max_pool_3x3(stride=1)
        else:
            raise ValueError(f"pool={pool!r} is not supported; use 'avg' or 'max'")
        self.branch_pool = nn.Sequential(pooling, ConvNormAct(in_channels, pool_proj, 1, **conv))
        self.out_channels = ch1x1 + ch3x3 + ch3x3dbl + pool_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((self.branch1x1(x), self.branch3x3(x), self.branch3x3dbl(x), self.branch_pool(x)), 1)


@torch.fx.wrap  # one call in a torch.fx graph: the grid's parity is decided when the graph runs, not traced
def _pad_odd_grid(x: torch.Tensor) -> torch.Tensor:
    """``x`` with one row / column of -inf at the bottom / right where its grid is odd (see
    :class:`BNInceptionReduction`)."""
    h, w = x.shape[-2:]
    return F.pad(x, (0, w % 2, 0, h % 2), value=float("-inf")) if h % 2 or w % 2 else x


class BNInceptionReduction(nn.Module):
    """Stride-2 Inception module of BN-Inception ((3c) and (4e) in Fig. 5): the grid is halved.

    1x1 -> 3x3/2 | 1x1 -> 3x3 -> 3x3/2 | 3x3/2 max pool, passed through (no projection). On an odd grid
    Caffe's ceil-mode pool yields one row and column fewer than the padded stride-2 convolutions, so the
    released model cannot run there; we pad the pool's input at the bottom/right with one row of -inf,
    which makes the sizes agree and leaves even grids (every grid at 224) exactly as in Caffe.
    """

    def __init__(
        self, in_channels: int, ch3x3red: int, ch3x3: int, ch3x3dblred: int, ch3x3dbl: int, **conv: object
    ) -> None:
        super().__init__()
        self.branch3x3 = nn.Sequential(
            ConvNormAct(in_channels, ch3x3red, 1, **conv),
            ConvNormAct(ch3x3red, ch3x3, 3, stride=2, padding=1, **conv),
        )
        self.branch3x3dbl = nn.Sequential(
            ConvNormAct(in_channels, ch3x3dblred, 1, **conv),
            ConvNormAct(ch3x3dblred, ch3x3dbl, 3, padding=1, **conv),
            ConvNormAct(ch3x3dbl, ch3x3dbl, 3, stride=2, padding=1, **conv),
        )
        self.branch_pool = _max_pool_3x3(stride=2)
        self.out_channels = ch3x3 + ch3x3dbl + in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((self.branch3x3(x), self.branch3x3dbl(x), self.branch_pool(_pad_odd_grid(x))), 1)


class BNInception(InceptionNet):
    """BN-Inception (Ioffe & Szegedy 2015, Fig. 5): stem, Inception (3a)-(5b) with two stride-2 modules, pool, FC.

    Parameters and buffers are registered in the order of the Caffe port (Cadene's ``bninception``): stem
    convs, the ten modules branch by branch, then the classifier. ``forward_features`` returns the
    1024-channel map before the global pool (7x7 at 224).
    """

    model_name = "bn_inception"
    # The stem (Fig. 5's rows above (3a)), then the ten Inception modules.
    feature_stages = ("conv1", "maxpool1", "conv2", "conv3", "maxpool2", *(name for name, _ in BN_INCEPTION_BODY))

    def __init__(
        self,
        spec: BNInceptionSpec = BN_INCEPTION,
        *,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        norm: NormKind = "bn",
        width_mult: float = 1.0,
        paper_table_widths: bool = False,
    ) -> None:
        super().__init__(num_classes=num_classes, in_chans=in_chans, min_input_size=MIN_INPUT_SIZE)
        # The Caffe port keeps each conv's bias although BN follows (BN's beta makes it redundant).
        conv = dict(norm=check_norm(norm), bias=True, eps=CAFFE_BN_EPS)
        c1, c2, c3 = (scale_width(c, width_mult) for c in spec.stem_widths)
        self.conv1 = ConvNormAct(in_chans, c1, 7, stride=2, padding=3, **conv)
        self.maxpool1 = _max_pool_3x3(stride=2)
        self.conv2 = ConvNormAct(c1, c2, 1, **conv)
        self.conv3 = ConvNormAct(c2, c3, 3, padding=1, **conv)
        self.maxpool2 = _max_pool_3x3(stride=2)

        channels = c3
        for name, row in spec.body:
            widths = [w if isinstance(w, str) else scale_width(w, width_mult) for w in row]
            block: BNInceptionModule | BNInceptionReduction
            if len(row) == 4:
                block = BNInceptionReduction(channels, *widths, **conv)  # type: ignore[arg-type]
            else:
                if paper_table_widths and name in spec.paper_table_pool_proj:
                    widths[-1] = scale_width(spec.paper_table_pool_proj[name], width_mult)
                block = BNInceptionModule(channels, *widths, **conv)  # type: ignore[arg-type]
            self.add_module(name, block)
            channels = block.out_channels
        self.num_features = channels
        self.global_pool, self.dropout, self.fc = make_head(channels, num_classes, drop_rate)
        init_he_fan_out(self, linear_std=0.01)


bn_inception = register_variant(
    BNInception,
    BN_INCEPTION,
    "bn_inception",
    """BN-Inception (Ioffe & Szegedy 2015) as the Caffe port builds it: 11.3M parameters, 2.03 GMACs at 224.

    ``paper_table_widths=True`` follows the output column of the paper's table instead of its branch widths:
    the pool projections of (4c) and (4d) become 96 (not 128), so both output 576 channels (not 608), (4e)
    outputs 1024 (not 1056) and (5a)'s 1x1 convolutions take 1024 channels. The paper does not say which
    width is wrong; shrinking the pool projection is our choice, the one-number change per module that makes
    the table consistent. It removes 90,304 parameters (11,204,936 then); no released weights fit it.
    ``drop_rate`` defaults to 0, as the paper removes dropout (sec. 4.2.1) and the port has none.
    """,
    paper="Batch Normalization: Accelerating Deep Network Training by Reducing Internal Covariate Shift "
    "(Ioffe & Szegedy)",
    year=2015,
    input_size=224,
    min_input_size=MIN_INPUT_SIZE,
    reference_params=11_295_240,
    reference_gmacs=2.033,
    reference_source="Cadene's pretrainedmodels bninception (Caffe port: conv bias + BN eps 1e-5), "
    "shared/REFERENCES.md; the paper's own 13.6M is reproduced by no implementation",
)
