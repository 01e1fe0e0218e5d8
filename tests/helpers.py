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


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def conv_bn(c_in: int, c_out: int, kh: int, kw: int) -> int:
    """Parameters of one conv (no bias) + BN (gamma, beta)."""
    return kh * kw * c_in * c_out + 2 * c_out


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
