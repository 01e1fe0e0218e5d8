"""Building blocks shared by every model of the zoo.

One conv-norm-act helper (:class:`ConvNormAct`), the factorised convolutions the Inception papers
study, and the small helpers every block needs (width scaling, norm selection, input checks).
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
from torch import nn

NormKind = Literal["bn", "none"]
NORM_KINDS: tuple[str, ...] = ("bn", "none")

# TF-derived ports (torchvision, timm) use BN eps 1e-3; the Caffe BN-Inception and legacy Xception use 1e-5.
TF_BN_EPS = 1e-3
CAFFE_BN_EPS = 1e-5


def check_norm(norm: str, knob: str = "norm") -> str:
    """Validate a normalisation knob's value (``knob`` names it in the error) and return it."""
    if norm not in NORM_KINDS:
        raise ValueError(f"{knob}={norm!r} is not supported; use one of {list(NORM_KINDS)}")
    return norm


def scale_width(channels: int, width_mult: float) -> int:
    """Branch width scaled by ``width_mult`` and rounded to an int (at least 1)."""
    if width_mult <= 0:
        raise ValueError(f"width_mult must be positive, got {width_mult}")
    return max(1, int(round(channels * width_mult)))


def scale_widths(widths: int | Sequence, width_mult: float) -> int | tuple:
    """:func:`scale_width` applied to every width of an int or a (nested) tuple of ints, keeping the shape."""
    if isinstance(widths, int):
        return scale_width(widths, width_mult)
    return tuple(scale_widths(w, width_mult) for w in widths)


class ConvNormAct(nn.Sequential):
    """Convolution, then batch norm (or nothing), then ReLU (or nothing).

    The parameter layout (``conv.weight`` [, ``conv.bias``], ``bn.weight``, ``bn.bias``) matches
    torchvision's and timm's ``BasicConv2d`` so reference state dicts map one to one.
    With ``norm="none"`` the convolution carries a bias unless ``bias`` says otherwise.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        *,
        norm: NormKind = "bn",
        act: bool = True,
        bias: bool | None = None,
        eps: float = TF_BN_EPS,
        groups: int = 1,
    ) -> None:
        super().__init__()
        check_norm(norm)
        if bias is None:
            bias = norm == "none"
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias, groups=groups
        )
        self.bn = nn.BatchNorm2d(out_channels, eps=eps) if norm == "bn" else nn.Identity()
        self.act = nn.ReLU(inplace=True) if act else nn.Identity()

    @property
    def out_channels(self) -> int:
        return self.conv.out_channels


def _pair(k: int | tuple[int, int]) -> tuple[int, int]:
    return (k, k) if isinstance(k, int) else tuple(k)  # type: ignore[return-value]


def conv_nxn(
    in_channels: int,
    mid_channels: int,
    out_channels: int,
    n: int,
    *,
    factorize: bool = True,
    order: Literal["1xn_first", "nx1_first"] = "1xn_first",
    **conv_kwargs,
) -> nn.Sequential:
    """An n x n convolution, or its asymmetric factorisation 1 x n then n x 1 (Inception-v3, Fig. 6).

    Factorised, it costs ``n * (C_in * C_mid + C_mid * C_out)`` weights instead of ``n^2 * C_in * C_out``:
    with equal widths the ratio is 2/n. Unfactorised, it is one ``n x n`` conv straight to ``out_channels``
    (``mid_channels`` is then unused). Padding keeps the grid size.
    """
    if not factorize:
        return nn.Sequential(ConvNormAct(in_channels, out_channels, n, padding=n // 2, **conv_kwargs))
    first, second = ((1, n), (n, 1)) if order == "1xn_first" else ((n, 1), (1, n))
    return nn.Sequential(
        ConvNormAct(in_channels, mid_channels, first, padding=(first[0] // 2, first[1] // 2), **conv_kwargs),
        ConvNormAct(mid_channels, out_channels, second, padding=(second[0] // 2, second[1] // 2), **conv_kwargs),
    )


def conv_stacked(
    in_channels: int,
    widths: Sequence[int],
    kernel_size: int = 3,
    *,
    strides: Sequence[int] | None = None,
    paddings: Sequence[int] | None = None,
    **conv_kwargs,
) -> nn.Sequential:
    """A stack of k x k ConvNormAct layers, e.g. two 3x3 replacing one 5x5 (Inception-v3, Fig. 5)."""
    strides = list(strides) if strides is not None else [1] * len(widths)
    paddings = list(paddings) if paddings is not None else [kernel_size // 2] * len(widths)
    layers, c = [], in_channels
    for w, s, p in zip(widths, strides, paddings):
        layers.append(ConvNormAct(c, w, kernel_size, stride=s, padding=p, **conv_kwargs))
        c = w
    return nn.Sequential(*layers)


def residual_scales(residual_scale: float | Sequence[float], stages: int) -> tuple[float, ...]:
    """Expand a ``residual_scale`` knob (one float, or one per stage) to one value per stage."""
    if isinstance(residual_scale, (int, float)):
        return (float(residual_scale),) * stages
    scales = tuple(float(s) for s in residual_scale)
    if len(scales) != stages:
        raise ValueError(f"residual_scale needs 1 or {stages} values (one per stage), got {len(scales)}")
    return scales


def init_he_fan_out(model: nn.Module, *, linear_std: float | None = None) -> None:
    """The reference ports' initialisation of BN-Inception and Xception: He normal (fan-out) weights and zero
    biases for every convolution, batch norm at identity, and, with ``linear_std``, normal(0, ``linear_std``)
    weights and zero biases for linear layers (otherwise they keep PyTorch's default)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and linear_std is not None:
            nn.init.normal_(m.weight, std=linear_std)
            nn.init.zeros_(m.bias)


def check_input(x: torch.Tensor, *, in_chans: int, min_size: int, model_name: str) -> None:
    """Raise a clear ``ValueError`` when ``x`` cannot go through the model (rank, channels, size)."""
    if x.dim() != 4:
        raise ValueError(f"{model_name} expects a 4-D batch (N, C, H, W), got a tensor of shape {tuple(x.shape)}")
    c, h, w = x.shape[1], x.shape[2], x.shape[3]
    if c != in_chans:
        raise ValueError(
            f"{model_name} was built with in_chans={in_chans} but got an input with {c} channels; "
            f"build it with create_model(..., in_chans={c}) or convert the input"
        )
    if h < min_size or w < min_size:
        raise ValueError(
            f"{model_name} needs inputs of at least {min_size}x{min_size} pixels, got {h}x{w}; "
            f"resize the images to {min_size} or more"
        )
