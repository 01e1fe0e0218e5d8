"""The Inception blocks that Inception-v3 and Inception-v4 share, and the table reader that builds their stages.

Szegedy et al. drew these modules twice: in "Rethinking the Inception Architecture for Computer Vision"
(Inception-v3, 2015, arXiv 1512.00567) and again, with other widths, in "Inception-v4, Inception-ResNet and the
Impact of Residual Connections on Learning" (2016, arXiv 1602.07261). One class per module, named as the v4 paper
names it, with its widths as arguments:

- :class:`InceptionA`: Inception-A (v4 Fig. 4; v3's Fig. 5 module as released, with a 1x1 -> 5x5 branch);
- :class:`InceptionB`: Inception-B (v4 Fig. 5; v3 Fig. 6 with n = 7);
- :class:`InceptionC`: Inception-C (v3 Fig. 7; v4 Fig. 6, which factorises one more 3x3);
- :class:`ReductionA`: Reduction-A (v4 Fig. 7; v3's 35x35 -> 17x17 grid reduction, Fig. 10 as released);
- :class:`ReductionB`: Reduction-B (v4 Fig. 8; v3's 17x17 -> 8x8 grid reduction as released);
- :class:`ExpandedFilterBank`: the parallel 1x3 | 3x1 of Inception-C (v3 Fig. 7; v4 Fig. 6).

Beyond their widths, the two released models differ in their average pools (``count_include_pad``:
torchvision's v3 counts the zero padding, TF's v4 does not), which every block with a pool takes as an
argument, in Inception-A's second branch (v3's release: 1x1 -> 5x5) and in Inception-C's second bank branch
(v4: 3x1 -> 1x3 in place of v3's 3x3), which the widths given select. The stems and v3's auxiliary
classifier are each model's own.
"""

from __future__ import annotations

from typing import Callable, Iterator, Mapping

import torch
from torch import nn

from inception_models.layers import ConvNormAct, conv_nxn, conv_stacked, scale_widths

__all__ = [
    "BlockTable",
    "ExpandedFilterBank",
    "InceptionA",
    "InceptionB",
    "InceptionC",
    "ReductionA",
    "ReductionB",
    "avg_pool_3x3",
    "build_stages",
    "inception_stage_kwargs",
    "max_pool_3x3_valid",
]

# (stage name, block, one width dict per block of the stage), in forward order.
BlockTable = tuple[tuple[str, Callable[..., nn.Module], tuple[Mapping[str, int | tuple[int, ...]], ...]], ...]


def avg_pool_3x3(*, count_include_pad: bool) -> nn.AvgPool2d:
    """The 3x3/1 padded average pool of a block's pool branch.

    torchvision's Inception-v3 calls ``F.avg_pool2d(x, 3, stride=1, padding=1)``, which divides by 9 at the
    border too (``count_include_pad=True``); TF's 'SAME' pool (Inception-v4, Inception-ResNet) divides by the
    number of real pixels (``False``). The weights of each release expect its own.
    """
    return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=count_include_pad)


def max_pool_3x3_valid() -> nn.MaxPool2d:
    """The 3x3/2 'valid' max pool of the stems and grid reductions."""
    return nn.MaxPool2d(3, stride=2)


class ExpandedFilterBank(nn.Module):
    """Parallel 1x3 and 3x1 convolutions, concatenated (Inception-v3 Fig. 7, used by Inception-C).

    Unfactorised (``factorize=False``) the pair becomes one 3x3 convolution with both outputs' width.
    """

    def __init__(self, in_channels: int, out_each: int, *, factorize: bool = True, **conv: object) -> None:
        super().__init__()
        self.factorize = factorize
        if factorize:
            self.conv_1x3 = ConvNormAct(in_channels, out_each, (1, 3), padding=(0, 1), **conv)
            self.conv_3x1 = ConvNormAct(in_channels, out_each, (3, 1), padding=(1, 0), **conv)
        else:
            self.conv_3x3 = ConvNormAct(in_channels, 2 * out_each, 3, padding=1, **conv)
        self.out_channels = 2 * out_each

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.factorize:
            return torch.cat((self.conv_1x3(x), self.conv_3x1(x)), 1)
        return self.conv_3x3(x)


class InceptionA(nn.Module):
    """Inception-A block on the 35x35 grid (Inception-v4 Fig. 4; Inception-v3 Fig. 5).

    1x1 | 1x1 -> 3x3 (``b3x3``, v4) or 1x1 -> 5x5 (``b5x5``: v3's release keeps a real 5x5 where Fig. 5
    shows 1x1 -> 3x3) | 1x1 -> 3x3 -> 3x3 | avg pool -> 1x1. ``factorize=False`` undoes the factorisation
    of the 5x5 convolution into two 3x3 (Inception-v3, Fig. 5): the double-3x3 branch becomes 1x1 -> one 5x5
    (``b3x3dbl[0]`` -> ``b3x3dbl[2]``), the module of v3's Fig. 4.
    """

    def __init__(
        self,
        in_channels: int,
        *,
        b1x1: int,
        b3x3: tuple[int, int] | None = None,
        b5x5: tuple[int, int] | None = None,
        b3x3dbl: tuple[int, int, int],
        pool_proj: int,
        count_include_pad: bool,
        factorize: bool = True,
        **conv: object,
    ) -> None:
        super().__init__()
        if b3x3 is not None and b5x5 is None:
            single, kernel = b3x3, 3
        elif b5x5 is not None and b3x3 is None:
            single, kernel = b5x5, 5
        else:
            raise ValueError("Inception-A takes the widths of one 1x1 -> k x k branch: b3x3 (v4) or b5x5 (v3)")
        self.branch0 = ConvNormAct(in_channels, b1x1, 1, **conv)
        self.branch1 = nn.Sequential(
            ConvNormAct(in_channels, single[0], 1, **conv),
            ConvNormAct(single[0], single[1], kernel, padding=kernel // 2, **conv),
        )
        if factorize:
            double: list[nn.Module] = list(conv_stacked(b3x3dbl[0], b3x3dbl[1:], 3, **conv))
        else:
            double = [ConvNormAct(b3x3dbl[0], b3x3dbl[2], 5, padding=2, **conv)]
        self.branch2 = nn.Sequential(ConvNormAct(in_channels, b3x3dbl[0], 1, **conv), *double)
        self.branch3 = nn.Sequential(
            avg_pool_3x3(count_include_pad=count_include_pad), ConvNormAct(in_channels, pool_proj, 1, **conv)
        )
        self.out_channels = b1x1 + single[1] + b3x3dbl[2] + pool_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)), 1)


class InceptionB(nn.Module):
    """Inception-B block on the 17x17 grid (Inception-v4 Fig. 5; Inception-v3 Fig. 6 with n = 7).

    1x1 | 1x1 -> 1x7 -> 7x1 | 1x1 -> 7x1 -> 1x7 -> 7x1 -> 1x7 | avg pool -> 1x1. ``factorize=False`` turns every
    1x7/7x1 pair back into one 7x7 convolution (from the pair's input width straight to its output width), the
    "undo" of Inception-v3's asymmetric factorisation (Fig. 6).
    """

    def __init__(
        self,
        in_channels: int,
        *,
        b1x1: int,
        b7x7: tuple[int, int, int],
        b7x7dbl: tuple[int, int, int, int, int],
        pool_proj: int,
        count_include_pad: bool,
        factorize: bool = True,
        **conv: object,
    ) -> None:
        super().__init__()
        self.branch0 = ConvNormAct(in_channels, b1x1, 1, **conv)
        self.branch1 = nn.Sequential(
            ConvNormAct(in_channels, b7x7[0], 1, **conv),
            *conv_nxn(b7x7[0], b7x7[1], b7x7[2], 7, factorize=factorize, order="1xn_first", **conv),
        )
        self.branch2 = nn.Sequential(
            ConvNormAct(in_channels, b7x7dbl[0], 1, **conv),
            *conv_nxn(b7x7dbl[0], b7x7dbl[1], b7x7dbl[2], 7, factorize=factorize, order="nx1_first", **conv),
            *conv_nxn(b7x7dbl[2], b7x7dbl[3], b7x7dbl[4], 7, factorize=factorize, order="nx1_first", **conv),
        )
        self.branch3 = nn.Sequential(
            avg_pool_3x3(count_include_pad=count_include_pad), ConvNormAct(in_channels, pool_proj, 1, **conv)
        )
        self.out_channels = b1x1 + b7x7[2] + b7x7dbl[4] + pool_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)), 1)


class InceptionC(nn.Module):
    """Inception-C block on the 8x8 grid, with expanded filter bank outputs (Inception-v3 Fig. 7; Inception-v4
    Fig. 6).

    1x1 | 1x1 -> (1x3 || 3x1) | 1x1 -> 3x3 -> (1x3 || 3x1) | avg pool -> 1x1, where ``||`` is a concat of
    parallel convolutions. ``b3x3dbl`` gives the second bank's branch: ``(1x1, 3x3, bank)`` as in v3's Fig. 7,
    or ``(1x1, 3x1, 1x3, bank)`` where Inception-v4 (Fig. 6) factorises that 3x3 too (the released weights
    put the 3x1 first, Fig. 6 draws the 1x3 first). ``factorize=False`` turns each 1x3/3x1 pair into one 3x3:
    v4's sequential pair (384 -> 448 -> 512) becomes a 3x3 from 384 to 512, and each parallel split becomes
    one 3x3 with the summed width, so the block's output width stays the same.
    """

    def __init__(
        self,
        in_channels: int,
        *,
        b1x1: int,
        b3x3: tuple[int, int],
        b3x3dbl: tuple[int, int, int] | tuple[int, int, int, int],
        pool_proj: int,
        count_include_pad: bool,
        factorize: bool = True,
        **conv: object,
    ) -> None:
        super().__init__()
        if len(b3x3dbl) not in (3, 4):
            raise ValueError(
                f"Inception-C's b3x3dbl is (1x1, 3x3, bank) or (1x1, 3x1, 1x3, bank) widths, got {b3x3dbl}"
            )
        self.branch0 = ConvNormAct(in_channels, b1x1, 1, **conv)
        self.branch1 = nn.Sequential(
            ConvNormAct(in_channels, b3x3[0], 1, **conv),
            ExpandedFilterBank(b3x3[0], b3x3[1], factorize=factorize, **conv),
        )
        # Built in forward order: without a re-initialisation (Inception-v4) the seeded weights depend on it.
        reduce = ConvNormAct(in_channels, b3x3dbl[0], 1, **conv)
        if len(b3x3dbl) == 3:
            middle: list[nn.Module] = [ConvNormAct(b3x3dbl[0], b3x3dbl[1], 3, padding=1, **conv)]
        else:
            middle = list(conv_nxn(*b3x3dbl[:3], 3, factorize=factorize, order="nx1_first", **conv))
        bank = ExpandedFilterBank(b3x3dbl[-2], b3x3dbl[-1], factorize=factorize, **conv)
        self.branch2 = nn.Sequential(reduce, *middle, bank)
        self.branch3 = nn.Sequential(
            avg_pool_3x3(count_include_pad=count_include_pad), ConvNormAct(in_channels, pool_proj, 1, **conv)
        )
        self.out_channels = b1x1 + 2 * b3x3[1] + 2 * b3x3dbl[-1] + pool_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)), 1)


class ReductionA(nn.Module):
    """Reduction-A block, 35x35 -> 17x17 (Inception-v4 Fig. 7; Inception-v3's grid reduction, Fig. 10).

    3x3/2 ``n`` | 1x1 ``k`` -> 3x3 ``l`` -> 3x3/2 ``m`` | 3x3/2 max pool, all 'valid'. The v4 paper's Table 1
    gives k, l, m, n = 192, 224, 256, 384 for Inception-v4; Inception-v3's release uses 64, 96, 96, 384.
    """

    def __init__(self, in_channels: int, *, k: int, l: int, m: int, n: int, **conv: object) -> None:  # noqa: E741
        super().__init__()
        self.branch0 = ConvNormAct(in_channels, n, 3, stride=2, **conv)
        self.branch1 = nn.Sequential(
            ConvNormAct(in_channels, k, 1, **conv),
            ConvNormAct(k, l, 3, padding=1, **conv),
            ConvNormAct(l, m, 3, stride=2, **conv),
        )
        self.branch2 = max_pool_3x3_valid()
        self.out_channels = n + m + in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((self.branch0(x), self.branch1(x), self.branch2(x)), 1)


class ReductionB(nn.Module):
    """Reduction-B block, 17x17 -> 8x8 (Inception-v4 Fig. 8; Inception-v3's second grid reduction).

    1x1 -> 3x3/2 | 1x1 -> 1x7 -> 7x1 -> 3x3/2 | 3x3/2 max pool, all 'valid'. The v3 paper does not draw it
    (its Fig. 10 is the 35x35 reduction, with 3x3 convolutions only); its release has this 1x7/7x1 branch.
    """

    def __init__(
        self, in_channels: int, *, b3x3: tuple[int, int], b7x7x3: tuple[int, int, int, int], **conv: object
    ) -> None:
        super().__init__()
        self.branch0 = nn.Sequential(
            ConvNormAct(in_channels, b3x3[0], 1, **conv),
            ConvNormAct(b3x3[0], b3x3[1], 3, stride=2, **conv),
        )
        self.branch1 = nn.Sequential(
            ConvNormAct(in_channels, b7x7x3[0], 1, **conv),
            *conv_nxn(b7x7x3[0], b7x7x3[1], b7x7x3[2], 7, order="1xn_first", **conv),
            ConvNormAct(b7x7x3[2], b7x7x3[3], 3, stride=2, **conv),
        )
        self.branch2 = max_pool_3x3_valid()
        self.out_channels = b3x3[1] + b7x7x3[3] + in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((self.branch0(x), self.branch1(x), self.branch2(x)), 1)


def inception_stage_kwargs(
    *, factorize_a: bool, factorize_b: bool, factorize_c: bool, count_include_pad: bool
) -> dict[str, dict[str, bool]]:
    """The ``stage_kwargs`` of the Inception-A/B/C stages (``inception_a``, ``inception_b``, ``inception_c``):
    each stage's factorisation switch and the release's average pool convention (see :func:`avg_pool_3x3`)."""
    switches = {"inception_a": factorize_a, "inception_b": factorize_b, "inception_c": factorize_c}
    return {stage: dict(factorize=f, count_include_pad=count_include_pad) for stage, f in switches.items()}


def build_stages(
    table: BlockTable,
    in_channels: int,
    *,
    width_mult: float,
    stage_kwargs: Mapping[str, Mapping[str, object]],
    **conv: object,
) -> Iterator[tuple[str, nn.Sequential, int]]:
    """Build the stages of a table of blocks one at a time: ``(stage name, its blocks, output channels)``.

    Each block gets the previous block's output width, its own widths scaled by ``width_mult``, the
    ``stage_kwargs`` of its stage (the factorisation switch, the pool convention) and ``conv``. A generator,
    so that a model can register a module between two stages (Inception-v3's auxiliary head) in the
    reference order.
    """
    channels = in_channels
    for stage, block, table_widths in table:
        blocks = []
        for widths in table_widths:
            kwargs = {name: scale_widths(w, width_mult) for name, w in widths.items()}
            blocks.append(block(channels, **kwargs, **stage_kwargs.get(stage, {}), **conv))
            channels = blocks[-1].out_channels
        yield stage, nn.Sequential(*blocks), channels
