"""The small Inception of Zhang et al. 2017 ("Understanding deep learning requires rethinking generalization",
ICLR 2017, arXiv 1611.03530, appendix A, Fig. 3): the CIFAR-scale Inception of the "random labels" study.

Three kinds of module (Fig. 3, left):

- Conv module: conv, batch norm, ReLU (our :class:`~inception_models.layers.ConvNormAct`);
- Inception module: a 1x1 conv branch and a 3x3 conv branch, concatenated (no reductions, no pool branch);
- Downsample module: a 3x3 stride-2 conv and a 3x3 stride-2 max pool, concatenated.

The network (Fig. 3, right), with the grid each stage sees at 32x32 input::

    conv 3x3, 96                                  stem       32x32
    Inception(32, 32), Inception(32, 48)          stage0     32x32
    Downsample(80)                                downsample0 -> 16x16
    Inception(112, 48), Inception(96, 64),
    Inception(80, 80), Inception(48, 96)          stage1     16x16
    Downsample(96)                                downsample1 -> 8x8
    Inception(176, 160), Inception(176, 160)      stage2     8x8
    global average pool, FC

Decisions the figure leaves open:

- Padding is "same" everywhere, as in the authors' TensorFlow code: 3x3 convs pad 1, and the stride-2 conv and
  max pool of a Downsample module pad 1, so a grid of n becomes ceil(n/2): 32 -> 16 -> 8 here, and 28 -> 14 ->
  7 on the 28x28 centre crops the paper trained on, where its "mean pooling 7x7" is global. We pool adaptively,
  so any size works: with every op padded, the network runs down to a 1x1 input (checked for every size from
  1 to 64), so ``MIN_INPUT_SIZE`` is 1; below 4 pixels the last stage sees a 1x1 grid and its 3x3 convs see
  mostly padding, which is legal but not a meaningful image model.
- Batch norm eps is 1e-3 (TensorFlow's default, which the authors used); convs carry no bias under BN.

Parameter count at 10 classes: 1,651,114 with ``norm="bn"``. The paper's Table 1 says 1,649,402: the
difference, 1,712, is exactly the number of BN channels (96 + 64 + 80 + 80 + 160 + 160 + 160 + 144 + 96 + 336 +
336), i.e. the paper counts BN without a learned scale (TensorFlow's ``batch_norm`` default ``scale=False``),
keeping only the shift. With ``norm="none"`` each conv has a bias instead (one value per channel, where BN
has two) and the count is exactly the paper's 1,649,402.

The factorisation knob ``factorize_stages`` serves the ablation of the Inception-v3 claim (Szegedy et al.
2015, sec. 3.2) that 1 x n / n x 1 factorisation "does not work well on early layers, but gives very good
results on medium grid-sizes (m x m feature maps, where m ranges between 12 and 20)": the Inception modules
of the named stages (0 = early, 1 = middle, 2 = late; 32, 16 and 8 pixels at 32x32 input, see
:func:`stage_grid_sizes` for other input sizes) have their n x n branch replaced by a 1 x n then an n x 1 conv,
each with the branch's output width (so the pair costs ``n * c_out * (c_in + c_out)`` weights instead of
``n^2 * c_in * c_out``; for c_in = c_out, 2/n of the n x n, the saving the paper quotes). Factorising one stage
at a time, e.g. ``factorize_stages=(1,)``, applies it at one grid size at a time. Downsample modules and the
stem are never factorised. ``branch_kernel`` sets n (odd, default 3, the paper's Fig. 3): the Inception-v3
paper factorises n = 7 at 17x17 (at n = 3 the factorisation saves only a third), so the trained ablation uses
``branch_kernel=5`` or 7. The default builds Zhang et al.'s network exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

from inception_models.base import InceptionNet, make_head
from inception_models.layers import TF_BN_EPS, ConvNormAct, NormKind, check_norm, conv_nxn, scale_width
from inception_models.registry import register_variant

__all__ = [
    "MIN_INPUT_SIZE",
    "PAPER_PARAMS",
    "SMALL_INCEPTION",
    "SMALL_INCEPTION_STAGES",
    "SmallInceptionModule",
    "DownsampleModule",
    "SmallInception",
    "SmallInceptionSpec",
    "small_inception",
    "stage_grid_sizes",
]

# Every conv and pool pads, so every input size from 1 up runs (found by trying sizes 1..64).
MIN_INPUT_SIZE = 1
# Zhang et al. 2017, Table 1 ("Inception", CIFAR10): its count drops BN's scale, see the module docstring.
PAPER_PARAMS = 1_649_402
STEM_WIDTH = 96
# Fig. 3: per stage, the (#1x1, #3x3) widths of its Inception modules, then the 3x3/2 conv width of the
# Downsample module that ends the stage (None: the last stage ends in the global pool).
SMALL_INCEPTION_STAGES: tuple[tuple[tuple[tuple[int, int], ...], int | None], ...] = (
    (((32, 32), (32, 48)), 80),
    (((112, 48), (96, 64), (80, 80), (48, 96)), 96),
    (((176, 160), (176, 160)), None),
)
NUM_STAGES = len(SMALL_INCEPTION_STAGES)


@dataclass(frozen=True)
class SmallInceptionSpec:
    """The table the small Inception is built from (Fig. 3): the stem's width, then per stage the (#1x1, #3x3)
    widths of its Inception modules and the width of the Downsample module that ends it (None for the last)."""

    stem_width: int = STEM_WIDTH
    stages: tuple[tuple[tuple[tuple[int, int], ...], int | None], ...] = SMALL_INCEPTION_STAGES


SMALL_INCEPTION = SmallInceptionSpec()


def stage_grid_sizes(image_size: int) -> tuple[int, ...]:
    """The grid each stage's Inception modules see for a square ``image_size`` input: (32, 16, 8) at 32.

    Each Downsample module maps n to ceil(n / 2) (3x3, stride 2, pad 1), so (28, 14, 7) at 28 and (299, 150, 75)
    at 299: an experiment that factorises "at grid size m" picks the stage whose size is nearest to m.
    """
    if image_size < MIN_INPUT_SIZE:
        raise ValueError(f"image_size must be >= {MIN_INPUT_SIZE}, got {image_size}")
    sizes, n = [], image_size
    for _ in range(NUM_STAGES):
        sizes.append(n)
        n = (n + 1) // 2
    return tuple(sizes)


class SmallInceptionModule(nn.Module):
    """Inception module of Zhang et al. (Fig. 3): 1x1 conv | 3x3 conv, concatenated on channels.

    ``kernel`` (odd, default 3, the paper's) sets the spatial branch's n x n; the branch keeps the name
    ``branch3x3`` whatever n is, so state dicts do not depend on it. With ``factorize`` the branch is a 1 x n
    conv then an n x 1 conv (Inception-v3, Fig. 6), both ``ch3x3`` wide.
    """

    def __init__(self, in_channels: int, ch1x1: int, ch3x3: int, *, kernel: int = 3, factorize: bool = False,
                 **conv: object) -> None:
        super().__init__()
        self.branch1x1 = ConvNormAct(in_channels, ch1x1, 1, **conv)
        self.branch3x3 = conv_nxn(in_channels, ch3x3, ch3x3, kernel, factorize=factorize, **conv)
        self.kernel = kernel
        self.factorized = factorize
        self.out_channels = ch1x1 + ch3x3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((self.branch1x1(x), self.branch3x3(x)), 1)


class DownsampleModule(nn.Module):
    """Downsample module of Zhang et al. (Fig. 3): 3x3 stride-2 conv | 3x3 stride-2 max pool, concatenated.

    Both pad 1 ("same"), so a grid of n becomes ceil(n / 2). Output channels: ``ch3x3 + in_channels``.
    """

    def __init__(self, in_channels: int, ch3x3: int, **conv: object) -> None:
        super().__init__()
        self.branch3x3 = ConvNormAct(in_channels, ch3x3, 3, stride=2, padding=1, **conv)
        self.branch_pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.out_channels = ch3x3 + in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((self.branch3x3(x), self.branch_pool(x)), 1)


def _check_stages(factorize_stages: Iterable[int]) -> frozenset[int]:
    if isinstance(factorize_stages, (int, bool, str)):
        raise TypeError(
            f"factorize_stages must be a tuple of stage indices, e.g. (1,), got {factorize_stages!r}"
        )
    stages = frozenset(factorize_stages)
    bad = sorted(s for s in stages if not isinstance(s, int) or isinstance(s, bool) or not 0 <= s < NUM_STAGES)
    if bad:
        raise ValueError(
            f"factorize_stages names unknown stage(s) {bad}; the stages are 0 (early, 32x32 at 32 px input), "
            f"1 (middle, 16x16) and 2 (late, 8x8)"
        )
    return stages


def _check_kernel(branch_kernel: int) -> int:
    if not isinstance(branch_kernel, int) or isinstance(branch_kernel, bool) or branch_kernel < 3 \
            or branch_kernel % 2 == 0:
        raise ValueError(f"branch_kernel must be an odd int >= 3 (3, 5, 7: 'same' padding keeps the grid), "
                         f"got {branch_kernel!r}")
    return branch_kernel


class SmallInception(InceptionNet):
    """The small Inception of Zhang et al. 2017 (appendix A, Fig. 3): stem, three stages of Inception modules
    separated by two Downsample modules, global average pool, FC.

    Submodules: ``stem``, ``stage0``, ``downsample0``, ``stage1``, ``downsample1``, ``stage2`` (each stage an
    ``nn.Sequential`` of :class:`SmallInceptionModule`), then ``global_pool``, ``dropout``, ``fc``.
    ``forward_features`` returns the 336-channel map of the last stage (8x8 at 32).
    """

    model_name = "small_inception"
    feature_stages = ("stem", "stage0", "downsample0", "stage1", "downsample1", "stage2")

    def __init__(
        self,
        spec: SmallInceptionSpec = SMALL_INCEPTION,
        *,
        num_classes: int = 10,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        norm: NormKind = "bn",
        width_mult: float = 1.0,
        factorize_stages: tuple[int, ...] = (),
        branch_kernel: int = 3,
    ) -> None:
        super().__init__(num_classes=num_classes, in_chans=in_chans, min_input_size=MIN_INPUT_SIZE)
        self.norm = check_norm(norm)
        self.factorize_stages = tuple(sorted(_check_stages(factorize_stages)))
        self.branch_kernel = _check_kernel(branch_kernel)
        conv = dict(norm=norm, eps=TF_BN_EPS)

        self.stem = ConvNormAct(in_chans, scale_width(spec.stem_width, width_mult), 3, padding=1, **conv)
        channels = self.stem.out_channels
        for stage, (modules, downsample) in enumerate(spec.stages):
            blocks = []
            for ch1x1, ch3x3 in modules:
                blocks.append(
                    SmallInceptionModule(
                        channels,
                        scale_width(ch1x1, width_mult),
                        scale_width(ch3x3, width_mult),
                        kernel=self.branch_kernel,
                        factorize=stage in self.factorize_stages,
                        **conv,
                    )
                )
                channels = blocks[-1].out_channels
            self.add_module(f"stage{stage}", nn.Sequential(*blocks))
            if downsample is not None:
                block = DownsampleModule(channels, scale_width(downsample, width_mult), **conv)
                self.add_module(f"downsample{stage}", block)
                channels = block.out_channels
        self.num_features = channels
        self.global_pool, self.dropout, self.fc = make_head(channels, num_classes, drop_rate)
        self._init_weights()

    def _init_weights(self) -> None:
        if self.norm == "bn":
            return  # PyTorch's default initialisation, which trains well under BN.
        # Without BN: Glorot (xavier) uniform weights and zero biases (Glorot & Bengio 2010), the initialisation
        # this project uses for no-BN baselines after Santurkar et al. 2018 (not checked against their text: they
        # released no code). It shrinks ReLU activations layer by layer: at quarter width and batch 32 the
        # no-BN net stayed at chance under SGD (lr 0.01-0.4) in our measurements, so the smoothness
        # experiment re-initialises it from data (analysis.training.init.data_dependent_init).
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)


small_inception = register_variant(
    SmallInception,
    SMALL_INCEPTION,
    "small_inception",
    """Small Inception (Zhang et al. 2017, Fig. 3), the CIFAR-scale Inception: 1.65M parameters at 10 classes.

    ``norm="none"`` drops BN (convs get biases, Glorot-uniform init as in Santurkar et al. 2018).
    ``factorize_stages`` lists the stages (0 early, 1 middle, 2 late: 32, 16, 8 px grids at 32x32 input) whose
    Inception modules use 1 x n then n x 1 in place of n x n; ``branch_kernel`` is n (odd, default 3 as in the
    paper; 5 or 7 for the factorisation ablation).
    """,
    paper="Understanding deep learning requires rethinking generalization (Zhang et al.)",
    year=2017,
    input_size=32,
    min_input_size=MIN_INPUT_SIZE,
    reference_params=PAPER_PARAMS,
    reference_source="Zhang et al. 2017, Table 1 (Inception, 10 classes): 1,649,402, counting BN without its "
    "scale; ours with BN is 1,651,114 = 1,649,402 + 1,712 BN scales; norm='none' (conv biases) gives exactly "
    "1,649,402.",
)
