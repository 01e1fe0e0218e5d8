"""The factorisation studies of Inception-v3 (Szegedy et al. 2016, "Rethinking the Inception Architecture",
sec. 3), measured on real modules with fvcore (:func:`analysis.instruments.counting.count_model`) and checked against
the closed form.

Schemes (:data:`SCHEMES`), each replacing a convolution by a cheaper stack with the same receptive field:

- ``"5x5->2x3x3"`` (sec. 3.1, Fig. 1 and 5): one 5x5 convolution vs two stacked 3x3. At equal widths
  (C -> C -> C) it costs (9 + 9) / 25 = 18/25 = 0.72 of the 5x5 (the paper's "28% relative gain").
- ``"nxn->1xn+nx1"`` (sec. 3.2, Fig. 3 and 6): an n x n convolution vs 1 x n then n x 1. At equal widths it
  costs 2n / n^2 = 2/n: 2/3 for n = 3 (the paper's "33% cheaper"), 2/5 for n = 5, 2/7 for n = 7.

Convention, exactly: every convolution maps C channels to C (the factorised stack's middle width is C too),
stride 1, 'same' padding (the grid is kept), no bias and no norm (``ConvNormAct(norm="none", bias=False)``),
a ReLU after each convolution as in the paper (fvcore counts ReLU as 0). So ``params`` are the convolution
weights only, and ``macs`` (fvcore's count: one multiply-add = 1) are ``weights x grid^2``; both equal the
closed form :func:`conv_params` / :func:`conv_macs` exactly, and the two forms of a scheme have the same
receptive field (measured, not assumed: :func:`receptive_field`).

The cost ratio does not depend on the grid: both forms do their weights' worth of MACs at every output
position. The paper's finding that asymmetric factorisation "gives very good results on medium grid-sizes
(on m x m feature maps, where m ranges between 12 and 20)" and "does not work well on early layers" is about
accuracy, not cost; the grid only scales the absolute MACs saved (``macs_saved`` grows as grid^2).
"""

from __future__ import annotations

import copy
from fractions import Fraction
from typing import Iterable, Sequence

import pandas as pd
import torch
from torch import nn

from analysis.instruments.counting import count_model, create_model_for_counting, totals
from inception_models.layers import ConvNormAct, conv_nxn, conv_stacked

__all__ = [
    "SCHEMES",
    "conv_params",
    "conv_macs",
    "factorized_ratio",
    "scheme_convs",
    "build_scheme",
    "receptive_field",
    "factorization_study",
    "unequal_widths_saving",
    "undo_factorization_table",
]

SCHEMES: tuple[str, ...] = ("5x5->2x3x3", "nxn->1xn+nx1")
FORMS: tuple[str, ...] = ("full", "factorized")


# ---------------------------------------------------------------------------------------------- closed form

def conv_params(c_in: int, c_out: int, kh: int, kw: int, *, groups: int = 1, bias: bool = False) -> int:
    """Weights of a ``kh x kw`` convolution from ``c_in`` to ``c_out`` channels (plus ``c_out`` with a bias)."""
    if c_in % groups or c_out % groups:
        raise ValueError(f"groups={groups} must divide c_in={c_in} and c_out={c_out}")
    return c_out * (c_in // groups) * kh * kw + (c_out if bias else 0)


def conv_macs(c_in: int, c_out: int, kh: int, kw: int, h_out: int, w_out: int, *, groups: int = 1,
              batch_size: int = 1) -> int:
    """Multiply-adds of that convolution on an ``h_out x w_out`` output grid, as fvcore counts them
    (every output position does all the kernel's weights, padding included; the bias add is not counted)."""
    return conv_params(c_in, c_out, kh, kw, groups=groups) * h_out * w_out * batch_size


def _check_scheme(scheme: str, n: int | None) -> int:
    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}; use one of {', '.join(map(repr, SCHEMES))}")
    if scheme == "5x5->2x3x3":
        if n not in (None, 5):
            raise ValueError(f"scheme '5x5->2x3x3' is about a 5x5 kernel; pass n=5 or n=None, got n={n}")
        return 5
    if isinstance(n, bool) or not isinstance(n, int) or n < 2 or n % 2 == 0:
        raise ValueError(f"scheme 'nxn->1xn+nx1' needs an odd kernel size n >= 3 (so 'same' padding keeps the "
                         f"grid), got n={n!r}")
    return n


def factorized_ratio(scheme: str, n: int | None = None) -> Fraction:
    """Cost of the factorised form over the full one at equal widths, exactly: 18/25 or 2/n.

    The same for parameters and MACs, and for every grid size. ``float(factorized_ratio("5x5->2x3x3"))`` is 0.72.
    """
    n = _check_scheme(scheme, n)
    if scheme == "5x5->2x3x3":
        return Fraction(3 * 3 + 3 * 3, 5 * 5)
    return Fraction(1 * n + n * 1, n * n)


def scheme_convs(scheme: str, n: int | None, channels: int, form: str) -> list[tuple[int, int, int, int]]:
    """The ``(c_in, c_out, kh, kw)`` of each convolution of one form of a scheme, in order."""
    n = _check_scheme(scheme, n)
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    c = channels
    if scheme == "5x5->2x3x3":
        return [(c, c, 5, 5)] if form == "full" else [(c, c, 3, 3), (c, c, 3, 3)]
    return [(c, c, n, n)] if form == "full" else [(c, c, 1, n), (c, c, n, 1)]


def _layers_label(convs: Sequence[tuple[int, int, int, int]]) -> str:
    return " -> ".join(f"{kh}x{kw}" for _, _, kh, kw in convs)


# ------------------------------------------------------------------------------------------- the real modules

def build_scheme(scheme: str, n: int | None, channels: int, form: str) -> nn.Sequential:
    """One form of a scheme as zoo layers (``inception_models.layers``): conv -> ReLU, no norm, no bias."""
    n = _check_scheme(scheme, n)
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    if channels < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")
    conv = dict(norm="none", bias=False)
    if scheme == "5x5->2x3x3":
        if form == "full":
            return nn.Sequential(ConvNormAct(channels, channels, 5, padding=2, **conv))
        return conv_stacked(channels, [channels, channels], 3, **conv)
    return conv_nxn(channels, channels, channels, n, factorize=form == "factorized", **conv)


def receptive_field(module: nn.Module, in_channels: int, size: int = 33) -> tuple[int, int]:
    """Measured receptive field (height, width) of the centre output pixel of ``module``.

    A copy with every weight set to 1 runs on a ones input, so every path is positive (ReLUs pass it) and
    the input pixels with a non-zero gradient are exactly the receptive field. ``size`` must exceed it.
    """
    probe = copy.deepcopy(module).float().eval()
    with torch.no_grad():
        for p in probe.parameters():
            p.fill_(1.0)
    x = torch.ones(1, in_channels, size, size, requires_grad=True)
    y = probe(x)
    y[..., y.shape[-2] // 2, y.shape[-1] // 2].sum().backward()
    support = x.grad.abs().sum(dim=(0, 1)) > 0  # type: ignore[union-attr]
    rows = torch.nonzero(support.any(dim=1)).flatten()
    cols = torch.nonzero(support.any(dim=0)).flatten()
    if rows.numel() == 0 or rows[0] == 0 or cols[0] == 0 or rows[-1] == size - 1 or cols[-1] == size - 1:
        raise ValueError(f"the receptive field reaches the border of a {size}x{size} probe; pass a larger size")
    return int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)


def factorization_study(
    grids: Iterable[int] = range(8, 36),
    channels: int = 192,
    ns: Sequence[int] = (3, 5, 7),
    *,
    schemes: Sequence[str] = SCHEMES,
) -> pd.DataFrame:
    """Measured vs closed-form cost of each factorisation, per grid size (Inception-v3, sec. 3).

    One row per scheme, kernel size ``n``, grid and form (``"5x5->2x3x3"`` once, with n = 5;
    ``"nxn->1xn+nx1"`` for each n in ``ns``). Columns: ``scheme``, ``n``, ``grid``, ``channels``, ``form``
    (``"full"``/``"factorized"``), ``layers``, ``params`` and ``macs`` (fvcore, via ``count_model``),
    ``closed_form_params``, ``closed_form_macs``, ``receptive_field`` (measured, e.g. ``"5x5"``), ``ratio``
    (MACs over the full form's; parameters give the same), ``closed_form_ratio`` (18/25 or 2/n; 1 for the
    full form), ``macs_saved`` (full minus this form), ``gmacs`` and ``exact`` (measured == closed form,
    counts and ratio compared as exact fractions).

    The ratio is the same at every grid: a convolution does its weights' worth of MACs at each output
    position, for both forms. The paper's preference for asymmetric factorisation on 12-20 grids is about
    accuracy; here the grid shows only how many MACs are saved in absolute terms.
    """
    grids = [int(g) for g in grids]
    if not grids or min(grids) < 1:
        raise ValueError(f"grids must be positive grid sizes, e.g. range(8, 36); got {grids}")
    if channels < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")
    cases: list[tuple[str, int]] = []
    for scheme in schemes:
        kernels = [5] if scheme == "5x5->2x3x3" else list(ns)
        cases += [(scheme, _check_scheme(scheme, n)) for n in kernels]
    rows = []
    for scheme, n in cases:
        closed_ratio = factorized_ratio(scheme, n)
        modules = {form: build_scheme(scheme, n, channels, form) for form in FORMS}
        fields = {form: receptive_field(build_scheme(scheme, n, 1, form), 1, size=4 * n + 1) for form in FORMS}
        for grid in grids:
            measured = {form: totals(count_model(modules[form], (channels, grid, grid))) for form in FORMS}
            full_macs = measured["full"]["macs"]
            for form in FORMS:
                convs = scheme_convs(scheme, n, channels, form)
                cf_params = sum(conv_params(*c) for c in convs)
                cf_macs = sum(conv_macs(*c, grid, grid) for c in convs)
                params, macs = measured[form]["params"], measured[form]["macs"]
                cf_ratio = closed_ratio if form == "factorized" else Fraction(1)
                rh, rw = fields[form]
                rows.append({
                    "scheme": scheme, "n": n, "grid": grid, "channels": channels, "form": form,
                    "layers": _layers_label(convs), "params": params, "macs": macs,
                    "closed_form_params": cf_params, "closed_form_macs": cf_macs,
                    "receptive_field": f"{rh}x{rw}",
                    "ratio": macs / full_macs, "params_ratio": params / measured["full"]["params"],
                    "closed_form_ratio": float(cf_ratio), "macs_saved": full_macs - macs, "gmacs": macs / 1e9,
                    "exact": bool(params == cf_params and macs == cf_macs and Fraction(macs, full_macs) == cf_ratio),
                })
    df = pd.DataFrame(rows)
    for col in ("n", "grid", "channels", "params", "macs", "closed_form_params", "closed_form_macs", "macs_saved"):
        df[col] = df[col].astype("int64")
    return df


def unequal_widths_saving(c_in: int = 64, c_mid: int = 96, c_out: int = 96, grid: int = 35) -> dict[str, float]:
    """5x5 -> two 3x3 at unequal widths: a 5x5 ``c_in -> c_out`` against 3x3 ``c_in -> c_mid`` then 3x3
    ``c_mid -> c_out``, counted with fvcore at ``grid`` (default: Inception-v3's Inception-A branch,
    64 -> 96 -> 96 on the 35x35 grid, Fig. 5). The paper's 28% saving holds at equal widths only; widening the
    middle of the stack spends part of it. Returns ``macs_5x5``, ``macs_two_3x3`` and ``saving`` (1 - ratio)."""
    conv = dict(norm="none", bias=False)
    shape = (c_in, grid, grid)
    full = totals(count_model(nn.Sequential(ConvNormAct(c_in, c_out, 5, padding=2, **conv)), shape))["macs"]
    stacked = totals(count_model(conv_stacked(c_in, [c_mid, c_out], 3, **conv), shape))["macs"]
    return {"macs_5x5": full, "macs_two_3x3": stacked, "saving": 1 - stacked / full}


# ------------------------------------------------------------------------------- whole models, factorisation undone

# (group, model, knobs, what the row is). The first row of a group is its baseline.
UNDO_VARIANTS: tuple[tuple[str, str, dict[str, object], str], ...] = (
    ("inception_v3", "inception_v3", {}, "as released: every Inception-A/B/C factorisation on"),
    ("inception_v3", "inception_v3", {"factorize_a": False},
     "Inception-A: double 3x3 -> one 5x5 (Fig. 5 -> Fig. 4)"),
    ("inception_v3", "inception_v3", {"factorize_b": False}, "Inception-B: 1x7 + 7x1 pairs -> 7x7 (Fig. 6)"),
    ("inception_v3", "inception_v3", {"factorize_c": False},
     "Inception-C: parallel 1x3 || 3x1 -> one 3x3 of their summed width (Fig. 7)"),
    ("inception_v3", "inception_v3", {"factorize_a": False, "factorize_b": False, "factorize_c": False},
     "all three undone"),
    ("googlenet", "googlenet", {}, "torchvision's GoogLeNet: its '5x5' branch is a 3x3 (pytorch/vision#906)"),
    ("googlenet", "googlenet", {"branch5x5_kernel": 5}, "the paper's real 5x5 branch"),
    ("googlenet", "bn_inception", {},
     "BN-Inception: 5x5 -> two 3x3, plus its other changes (a third 28x28 module, stride-2 modules 3c and 4e "
     "instead of max-pool layers, average pooling in some pool branches, other widths)"),
)


def undo_factorization_table(input_size: int = 299, googlenet_input_size: int = 224) -> pd.DataFrame:
    """Whole models with their factorisations undone, against the model as released.

    Inception-v3 with ``factorize_a`` / ``factorize_b`` / ``factorize_c`` off one at a time and all off, at
    ``input_size``; GoogLeNet as torchvision builds it (3x3 in the "5x5" branch), with the paper's real 5x5,
    and BN-Inception (the 5x5 replaced by two 3x3), at ``googlenet_input_size``. Columns: ``group``,
    ``model``, ``knobs``, ``variant``, ``input``, ``params``, ``macs`` (fvcore), ``conv_linear_macs``,
    ``gmacs``, and against the group's first row (its baseline): ``params_delta``, ``params_delta_pct``,
    ``macs_delta``, ``macs_delta_pct``. Aux heads are off (the builders' default).
    """
    rows = []
    baselines: dict[str, dict[str, int]] = {}
    for group, name, knobs, variant in UNDO_VARIANTS:
        size = input_size if group == "inception_v3" else googlenet_input_size
        counts = totals(count_model(create_model_for_counting(name, **knobs), (3, size, size)))
        base = baselines.setdefault(group, counts)
        rows.append({
            "group": group, "model": name,
            "knobs": ", ".join(f"{k}={v}" for k, v in knobs.items()) or "(defaults)",
            "variant": variant, "input": size,
            "params": counts["params"], "macs": counts["macs"], "conv_linear_macs": counts["conv_linear_macs"],
            "gmacs": counts["macs"] / 1e9,
            "params_delta": counts["params"] - base["params"],
            "params_delta_pct": 100.0 * (counts["params"] - base["params"]) / base["params"],
            "macs_delta": counts["macs"] - base["macs"],
            "macs_delta_pct": 100.0 * (counts["macs"] - base["macs"]) / base["macs"],
        })
    df = pd.DataFrame(rows)
    for col in ("input", "params", "macs", "conv_linear_macs", "params_delta", "macs_delta"):
        df[col] = df[col].astype("int64")
    return df
