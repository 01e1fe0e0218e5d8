"""What the tests share: parameter counts, MAC counting, the reference-parity helpers, and a CLI runner.

The parity tests copy a torchvision/timm state dict onto our model by order and compare logits; for that to
catch a mis-ordered copy, the reference's BN layers first get real statistics and distinct affine values
(:func:`calibrate_bn`).
"""

from __future__ import annotations

import sys
from typing import Iterable, NamedTuple

import torch
from torch import nn


# GoogLeNet (Szegedy et al. 2014, arXiv 1409.4842), Table 1: (input channels, (#1x1, #3x3 reduce, #3x3,
# #5x5 reduce, #5x5, pool proj)) per Inception module, (3a) to (5b).
GOOGLENET_TABLE_1: tuple[tuple[int, tuple[int, int, int, int, int, int]], ...] = (
    (192, (64, 96, 128, 16, 32, 32)),
    (256, (128, 128, 192, 32, 96, 64)),
    (480, (192, 96, 208, 16, 48, 64)),
    (512, (160, 112, 224, 24, 64, 64)),
    (512, (128, 128, 256, 24, 64, 64)),
    (512, (112, 144, 288, 32, 64, 64)),
    (528, (256, 160, 320, 32, 128, 128)),
    (832, (256, 160, 320, 32, 128, 128)),
    (832, (384, 192, 384, 48, 128, 128)),
)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def conv_bn(c_in: int, c_out: int, kh: int, kw: int) -> int:
    """Parameters of one conv (no bias) + BN (gamma, beta)."""
    return kh * kw * c_in * c_out + 2 * c_out


def _scaled(width_mult: float):
    """The zoo's width rule (``inception_models.layers.scale_width``): round(c x width_mult), at least 1."""
    return lambda c: max(1, round(c * width_mult))


def small_inception_params(*, bn: bool = True, width_mult: float = 1.0, classes: int = 10,
                           factorize_stages: tuple[int, ...] = (), branch_kernel: int = 3) -> int:
    """small_inception (Zhang et al. 2017, Fig. 3) counted by hand: a k_h x k_w conv has k_h*k_w*c_in*c_out
    weights plus per output channel BN's gamma and beta (2) or a bias (1); the Inception modules' spatial branch
    is n x n (n = ``branch_kernel``), factorised 1 x n (c_in -> c) then n x 1 (c -> c)."""
    from inception_models.small_inception import SMALL_INCEPTION_STAGES

    per_channel = 2 if bn else 1

    def conv(k: int, c_in: int, c_out: int) -> int:
        return k * c_in * c_out + per_channel * c_out

    w = _scaled(width_mult)
    c_in = w(96)
    total = conv(9, 3, c_in)
    for stage, (modules, downsample) in enumerate(SMALL_INCEPTION_STAGES):
        for ch1, ch3 in modules:
            a, b = w(ch1), w(ch3)
            n = branch_kernel
            branch3 = conv(n, c_in, b) + conv(n, b, b) if stage in factorize_stages else conv(n * n, c_in, b)
            total += conv(1, c_in, a) + branch3
            c_in = a + b
        if downsample is not None:
            total += conv(9, c_in, w(downsample))
            c_in += w(downsample)
    return total + c_in * classes + classes


def inception_v3_params(*, width_mult: float = 1.0, classes: int = 1000) -> int:
    """Inception-v3 as released (torchvision/timm; the paper's Table 1 with the release's branch widths) counted
    by hand, every conv with BN: the stem, 3 x Inception-A (pool 32, 64, 64), Reduction-A, 4 x Inception-B
    (c7 = 128, 160, 160, 192), Reduction-B, 2 x Inception-C, the classifier. 23,834,568 at full width."""
    w = _scaled(width_mult)
    s1, s2, s3, s4, s5 = (w(c) for c in (32, 32, 64, 80, 192))
    total = conv_bn(3, s1, 3, 3) + conv_bn(s1, s2, 3, 3) + conv_bn(s2, s3, 3, 3) + conv_bn(s3, s4, 1, 1)
    total += conv_bn(s4, s5, 3, 3)
    c = s5
    for pool in (32, 64, 64):  # Inception-A: 1x1 64 | 1x1 48 -> 5x5 64 | 1x1 64 -> 3x3 96 -> 3x3 96 | pool -> 1x1
        b1, r5, b5, r3, d3, p = (w(x) for x in (64, 48, 64, 64, 96, pool))
        total += conv_bn(c, b1, 1, 1) + conv_bn(c, r5, 1, 1) + conv_bn(r5, b5, 5, 5) + conv_bn(c, r3, 1, 1)
        total += conv_bn(r3, d3, 3, 3) + conv_bn(d3, d3, 3, 3) + conv_bn(c, p, 1, 1)
        c = b1 + b5 + d3 + p
    b3, r, d = w(384), w(64), w(96)  # Reduction-A: 3x3/2 384 | 1x1 64 -> 3x3 96 -> 3x3/2 96 | max pool
    total += conv_bn(c, b3, 3, 3) + conv_bn(c, r, 1, 1) + conv_bn(r, d, 3, 3) + conv_bn(d, d, 3, 3)
    c += b3 + d
    for c7 in (128, 160, 160, 192):  # Inception-B: 1x1 | 1x1 -> 1x7 -> 7x1 | 1x1 -> 7x1 -> 1x7 -> 7x1 -> 1x7 | pool
        m, o = w(c7), w(192)
        total += conv_bn(c, o, 1, 1) + conv_bn(c, m, 1, 1) + conv_bn(m, m, 1, 7) + conv_bn(m, o, 7, 1)
        total += conv_bn(c, m, 1, 1) + 2 * conv_bn(m, m, 7, 1) + conv_bn(m, m, 1, 7) + conv_bn(m, o, 1, 7)
        total += conv_bn(c, o, 1, 1)
        c = 4 * o
    r, b3 = w(192), w(320)  # Reduction-B: 1x1 192 -> 3x3/2 320 | 1x1 192 -> 1x7 -> 7x1 -> 3x3/2 192 | max pool
    total += conv_bn(c, r, 1, 1) + conv_bn(r, b3, 3, 3) + conv_bn(c, r, 1, 1) + conv_bn(r, r, 1, 7)
    total += conv_bn(r, r, 7, 1) + conv_bn(r, r, 3, 3)
    c += b3 + r
    for _ in range(2):  # Inception-C: 1x1 320 | 1x1 384 -> (1x3, 3x1) | 1x1 448 -> 3x3 384 -> (1x3, 3x1) | pool
        b1, e, rd, p = w(320), w(384), w(448), w(192)
        total += conv_bn(c, b1, 1, 1) + conv_bn(c, e, 1, 1) + conv_bn(e, e, 1, 3) + conv_bn(e, e, 3, 1)
        total += conv_bn(c, rd, 1, 1) + conv_bn(rd, e, 3, 3) + conv_bn(e, e, 1, 3) + conv_bn(e, e, 3, 1)
        total += conv_bn(c, p, 1, 1)
        c = b1 + 4 * e + p
    return total + c * classes + classes


def xception_params(*, width_mult: float = 1.0, middle_blocks: int = 8, classes: int = 1000) -> int:
    """Xception (Chollet 2017, Fig. 5) counted by hand: a separable conv c_in -> c_out has 9*c_in depthwise and
    c_in*c_out pointwise weights, then BN (2*c_out); a shortcut is a 1x1 conv with BN. The entry flow's three
    blocks (128, 256, 728), ``middle_blocks`` blocks of three 728 -> 728, the exit block (728 -> 728 -> 1024),
    separable convs to 1536 and 2048, the classifier. 22,855,952 at full width (the paper's Table 3 model)."""
    w = _scaled(width_mult)

    def separable(c_in: int, c_out: int) -> int:
        return 9 * c_in + c_in * c_out + 2 * c_out

    c = w(64)
    total = conv_bn(3, w(32), 3, 3) + conv_bn(w(32), c, 3, 3)
    for out in (128, 256, 728):
        o = w(out)
        total += conv_bn(c, o, 1, 1) + separable(c, o) + separable(o, o)
        c = o
    total += middle_blocks * 3 * separable(c, c)
    o = w(1024)
    total += conv_bn(c, o, 1, 1) + separable(c, c) + separable(c, o)
    total += separable(o, w(1536)) + separable(w(1536), w(2048))
    return total + w(2048) * classes + classes


def calibrate_bn(model: nn.Module, x: torch.Tensor, seed: int = 0, *, whole_model: bool = False) -> nn.Module:
    """BN statistics of real activations and distinct affine parameters; returns the model in eval mode.

    Default-initialised BN (mean 0, var 1) lets the signal vanish, so logits would not depend on the input,
    and identical values would hide a mis-ordered copy. Only the BN layers run in train mode for the one
    calibration pass, so auxiliary heads and dropout stay out of it; ``whole_model=True`` runs the whole
    model in train mode instead, so that auxiliary heads get statistics too.
    """
    g = torch.Generator().manual_seed(seed)
    model.eval()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average: one pass stores the batch statistics
        m.train()
    if whole_model:
        model.train()
    with torch.no_grad():
        model(x)
        for m in bns:
            m.weight.copy_(1 + 0.2 * torch.randn(m.num_features, generator=g))
            m.bias.copy_(0.1 * torch.randn(m.num_features, generator=g))
            m.momentum = 0.1
    return model.eval()


def copy_by_order(target: nn.Module, source: nn.Module) -> nn.Module:
    """Load ``source``'s state dict values into ``target`` by position (the way reference weights map)."""
    target.load_state_dict(dict(zip(target.state_dict(), source.state_dict().values())), strict=True)
    return target


class Measured(NamedTuple):
    macs: int
    grids: dict[str, tuple[int, ...]]
    output: object


def macs_and_grids(
    model: nn.Module, x: torch.Tensor, names: Iterable[str] = (), *, exclude: Iterable[nn.Module] = ()
) -> Measured:
    """One forward without gradients: MACs of the conv and linear layers per image (the ``REFERENCES.md``
    convention), the output shape (batch dimension dropped) of each named submodule, and the model's output.

    Modules in ``exclude`` (an auxiliary head's) are not counted.
    """
    skipped = set(exclude)
    macs, grids = 0, {}

    def count(module: nn.Module, _inputs, output: torch.Tensor) -> None:
        nonlocal macs
        if module in skipped:
            return
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            macs += output[0].numel() * module.in_channels // module.groups * kh * kw
        else:
            macs += output[0].numel() * module.in_features

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    for name in names:
        hooks.append(model.get_submodule(name).register_forward_hook(
            lambda _m, _i, out, name=name: grids.__setitem__(name, tuple(out.shape[1:]))))
    try:
        with torch.no_grad():
            output = model(x)
    finally:
        for h in hooks:
            h.remove()
    return Measured(macs, grids, output)


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """``inception-lab ARGS`` through the console entry point in this process: (exit code, stdout, stderr)."""
    from analysis.cli import main

    monkeypatch.setattr(sys, "argv", ["inception-lab", *args])
    code = 0
    try:
        main()
    except SystemExit as exit_:
        code = exit_.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


def ramp_log(point_id: str, *, top: float, steps: int, eval_every: int, cpu_per_step: float = 0.1,
             chance: float = 0.1, **fields: object) -> "pd.DataFrame":
    """The training log of a made-up run, as an experiment's ``run`` returns it: validation accuracy rising in a
    straight line from ``chance`` at step 0 to ``top`` at ``steps``, evaluated every ``eval_every`` steps, with a
    training row (``cpu_s`` = ``cpu_per_step`` x step) at every evaluation; ``fields`` (stage, arm, seed, lr,
    steps, difficulty, ...) on every row. The area under its validation curve is ``(chance + top) / 2``."""
    import pandas as pd

    rows = []
    for step in range(eval_every, steps + 1, eval_every):
        accuracy = chance + (top - chance) * step / steps
        rows.append({"split": "train", "step": step, "loss": 2.0 - step / steps, "accuracy": accuracy,
                     "cpu_s": cpu_per_step * step})
        rows.append({"split": "val", "step": step, "loss": 1.0, "accuracy": accuracy, "cpu_s": cpu_per_step * step})
    return pd.DataFrame(rows).assign(point_id=point_id, steps=steps, diverged=False, diverged_step=None, **fields)
