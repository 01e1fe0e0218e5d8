"""Loss-surface measurements on any ``nn.Module``: Hessian curvature and filter-normalised loss slices, and the
helpers every loss-surface probe shares (Santurkar et al.'s line search, :mod:`analysis.instruments.line_search`,
builds on them).

* :func:`hvp`, :func:`hessian_top_eigenvalue` (power iteration on Hessian-vector products, as PyHessian)
  and :func:`hessian_trace` (Hutchinson's estimator with Rademacher vectors).
* :func:`loss_slice_1d` / :func:`loss_slice_2d`: the loss along filter-normalised random directions (Li, Xu,
  Taylor, Studer, Goldstein, "Visualizing the Loss Landscape of Neural Nets", NeurIPS 2018).

Conventions shared by every loss-surface probe
----------------------------------------------
* ``criterion(model(inputs), targets) -> scalar loss``; the trainer's criterion (aux heads included) fits.
* ``bn_mode`` ("train": BN batch statistics and dropout on; "eval": running statistics, dropout off) puts the
  whole model in that mode for the measurement; every result records it. In "train" mode each evaluation of
  one measurement starts from the same RNG state, so dropout draws the same masks at every point and the
  loss is one deterministic function of the weights.
* Only parameters with ``requires_grad`` are moved and differentiated, in ``model.parameters()`` order.
* Afterwards parameters, buffers (BN running statistics), ``.grad``, train/eval flags and the torch CPU/CUDA
  RNG states are bit-identical to before (:class:`~analysis.instruments.state.ModelStateGuard`); no optimiser
  is touched. Parameters are moved in place from one saved copy (the only extra parameter-sized memory
  besides the directions the method needs).
* Gradients come from ``torch.autograd.grad``, which never writes ``.grad``.
* Evaluations run in full precision outside any autocast region.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Literal, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from analysis.instruments.state import ModelStateGuard

__all__ = [
    "Criterion",
    "filter_normalized_direction",
    "hessian_top_eigenvalue",
    "hessian_trace",
    "hvp",
    "loss_slice_1d",
    "loss_slice_2d",
]

Criterion = Callable[[Any, torch.Tensor], torch.Tensor]
HvpMethod = Literal["autograd", "func"]


# ------------------------------------------------------------------------------------------- helpers
def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters a probe moves and differentiates: those with ``requires_grad``, in model order."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{type(model).__name__} has no parameter with requires_grad=True to probe")
    return params


def measuring(model: nn.Module, bn_mode: str, *tensors: Any,
              parameters: Sequence[torch.Tensor] = ()) -> ModelStateGuard:
    """The state guard of one measurement: flags, buffers, ``parameters`` and the RNG (of the model's devices and
    those of ``tensors``) saved, the whole model put in ``bn_mode``; everything restored on exit."""
    devices = [t.device for t in tensors if isinstance(t, torch.Tensor)]
    return ModelStateGuard(model, parameters=parameters, devices=devices, mode=bn_mode)


def scalar_loss(model: nn.Module, criterion: Criterion, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``criterion(model(inputs), targets)``, checked to be one number."""
    loss = criterion(model(inputs), targets)
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise ValueError("criterion(model(inputs), targets) must return a scalar tensor (use reduction='mean'); "
                         f"got {type(loss).__name__} with shape {getattr(loss, 'shape', None)}")
    return loss.reshape(())


def loss_and_grad(model: nn.Module, criterion: Criterion, inputs: torch.Tensor, targets: torch.Tensor,
                  params: Sequence[torch.Tensor]) -> tuple[float, list[torch.Tensor | None]]:
    """The minibatch loss and its gradient with respect to ``params`` (``None`` where a parameter is unused)."""
    loss = scalar_loss(model, criterion, inputs, targets)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return float(loss.detach()), list(grads)


def l2_norm(tensors: Iterable[torch.Tensor | None]) -> float:
    """The l2 norm of a list of tensors taken as one vector (``None`` counts as zero), in float64."""
    total = 0.0
    for t in tensors:
        if t is not None:
            total += float(t.detach().double().pow(2).sum())
    return math.sqrt(total)


def l2_distance(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor | None]) -> float:
    """``||a - b||`` over lists of tensors taken as one vector (``None`` in ``b`` counts as zero), in float64."""
    total = 0.0
    for x, y in zip(a, b):
        d = x if y is None else x - y
        total += float(d.double().pow(2).sum())
    return math.sqrt(total)


def _dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    return float(sum((x.double() * y.double()).sum() for x, y in zip(a, b)))


def check_bn_mode(bn_mode: str) -> None:
    """Raise a ``ValueError`` naming the two BN modes a probe takes."""
    if bn_mode not in ("train", "eval"):
        raise ValueError(f"bn_mode={bn_mode!r} is not supported; use 'train' (BN batch statistics) or 'eval' "
                         f"(BN running statistics)")


# ------------------------------------------------------------------------------------------ Hessian
class _HessianOperator:
    """``v -> H v`` at the current weights for one minibatch, inside a :func:`measuring` block.

    ``"autograd"``: one forward and a gradient graph (``create_graph=True``) built once, then one backward
    through it per product (double backward). ``"func"``: forward-over-reverse ``torch.func.jvp`` of
    ``torch.func.grad`` through ``functional_call``, one forward+backward per product; running statistics
    are not updated (BN in train mode normalises by batch statistics either way).
    """

    def __init__(self, model: nn.Module, criterion: Criterion, inputs: torch.Tensor, targets: torch.Tensor,
                 params: Sequence[nn.Parameter], guard: ModelStateGuard, method: HvpMethod) -> None:
        if method not in ("autograd", "func"):
            raise ValueError(f"method={method!r} is not supported; use 'autograd' (double backward) or 'func'")
        self.model, self.criterion, self.inputs, self.targets = model, criterion, inputs, targets
        self.params, self.guard, self.method = list(params), guard, method
        guard.rewind_rng()
        if method == "autograd":
            loss = scalar_loss(model, criterion, inputs, targets)
            grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
            self.loss = float(loss.detach())
            self._grads = list(grads)
        else:
            with torch.no_grad():
                self.loss = float(scalar_loss(model, criterion, inputs, targets))

    def __call__(self, vector: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if self.method == "autograd":
            live = [(g, v) for g, v in zip(self._grads, vector) if g is not None and g.requires_grad]
            if not live:
                return [torch.zeros_like(p) for p in self.params]
            products = torch.autograd.grad([g for g, _ in live], self.params,
                                           grad_outputs=[v for _, v in live], retain_graph=True, allow_unused=True)
            return [torch.zeros_like(p) if h is None else h.detach() for p, h in zip(self.params, products)]
        return self._func_product(vector)

    def _func_product(self, vector: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        from torch.func import functional_call, grad, jvp

        names = [n for n, p in self.model.named_parameters() if p.requires_grad]

        def loss_of(flat: tuple[torch.Tensor, ...]) -> torch.Tensor:
            outputs = functional_call(self.model, dict(zip(names, flat)), (self.inputs,), strict=False)
            return self.criterion(outputs, self.targets).reshape(())

        # A grad transform may not mutate captured tensors, and BN in train mode updates its running statistics
        # (which do not change its output): switch that bookkeeping off for the product, then back on.
        tracking = [m for m in self.model.modules()
                    if isinstance(m, nn.modules.batchnorm._NormBase) and m.training and m.track_running_stats]
        self.guard.rewind_rng()
        try:
            for m in tracking:
                m.track_running_stats = False
            primals = tuple(p.detach() for p in self.params)
            _, product = jvp(grad(loss_of), (primals,), (tuple(v.detach() for v in vector),))
        finally:
            for m in tracking:
                m.track_running_stats = True
        return [h.detach() for h in product]


def hvp(
    model: nn.Module,
    criterion: Criterion,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    vector: Sequence[torch.Tensor],
    bn_mode: Literal["train", "eval"] = "train",
    *,
    method: HvpMethod = "autograd",
) -> list[torch.Tensor]:
    """The Hessian-vector product ``H v`` of the minibatch loss, one tensor per trainable parameter."""
    check_bn_mode(bn_mode)
    params = trainable_parameters(model)
    vector = list(vector)
    if len(vector) != len(params) or any(v.shape != p.shape for v, p in zip(vector, params)):
        raise ValueError(f"vector must hold one tensor per trainable parameter ({len(params)}, same shapes)")
    with measuring(model, bn_mode, inputs, targets) as guard:
        return _HessianOperator(model, criterion, inputs, targets, params, guard, method)(vector)


def _random_vector(params: Sequence[torch.Tensor], generator: torch.Generator, kind: str) -> list[torch.Tensor]:
    out = []
    for p in params:
        if kind == "rademacher":
            v = torch.randint(0, 2, p.shape, generator=generator, dtype=torch.int8).to(p.dtype) * 2 - 1
        else:
            v = torch.randn(p.shape, generator=generator, dtype=torch.float64).to(p.dtype)
        out.append(v.to(p.device))
    return out


def hessian_top_eigenvalue(
    model: nn.Module,
    criterion: Criterion,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    iters: int = 100,
    tol: float = 1e-3,
    bn_mode: Literal["train", "eval"] = "train",
    *,
    seed: int = 0,
    method: HvpMethod = "autograd",
) -> dict[str, Any]:
    """The Hessian's eigenvalue of largest magnitude by power iteration on Hessian-vector products.

    Stops when the Rayleigh quotient changes by less than ``tol`` relative to its value, or after ``iters``
    products. The start vector is Gaussian from a private generator seeded with ``seed`` (the global RNG is
    not drawn). Returns ``eigenvalue, iterations, converged, tol, loss, bn_mode, method``.
    """
    check_bn_mode(bn_mode)
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    params = trainable_parameters(model)
    generator = torch.Generator().manual_seed(seed)
    with measuring(model, bn_mode, inputs, targets) as guard:
        operator = _HessianOperator(model, criterion, inputs, targets, params, guard, method)
        v = _random_vector(params, generator, "gaussian")
        norm = l2_norm(v)
        v = [x / norm for x in v]
        eigenvalue, converged, done = float("nan"), False, 0
        for done in range(1, iters + 1):
            hv = operator(v)
            new = _dot(v, hv)
            hv_norm = l2_norm(hv)
            if not math.isnan(eigenvalue) and abs(new - eigenvalue) <= tol * max(abs(eigenvalue), 1e-12):
                eigenvalue, converged = new, True
                break
            eigenvalue = new
            if hv_norm == 0.0:
                converged = True  # H v = 0: v is in the null space and every eigenvalue seen is 0
                break
            v = [x / hv_norm for x in hv]
        loss = operator.loss
    return {"eigenvalue": eigenvalue, "iterations": done, "converged": converged, "tol": float(tol),
            "loss": loss, "bn_mode": bn_mode, "method": method}


def hessian_trace(
    model: nn.Module,
    criterion: Criterion,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    samples: int = 100,
    bn_mode: Literal["train", "eval"] = "train",
    *,
    seed: int = 0,
    method: HvpMethod = "autograd",
) -> dict[str, Any]:
    """Hutchinson's estimate of the Hessian trace: the mean of ``v^T H v`` over Rademacher vectors ``v``.

    Returns ``trace`` (the mean), ``trace_se`` (its standard error, std / sqrt(samples)), ``samples``,
    ``loss``, ``bn_mode``, ``method``. The vectors come from a private generator seeded with ``seed``.
    """
    check_bn_mode(bn_mode)
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    params = trainable_parameters(model)
    generator = torch.Generator().manual_seed(seed)
    values = []
    with measuring(model, bn_mode, inputs, targets) as guard:
        operator = _HessianOperator(model, criterion, inputs, targets, params, guard, method)
        for _ in range(samples):
            v = _random_vector(params, generator, "rademacher")
            values.append(_dot(v, operator(v)))
        loss = operator.loss
    se = float(np.std(values, ddof=1) / math.sqrt(samples)) if samples > 1 else float("nan")
    return {"trace": float(np.mean(values)), "trace_se": se, "samples": samples, "loss": loss,
            "bn_mode": bn_mode, "method": method}


# --------------------------------------------------------------------------------------- loss slices
def filter_normalized_direction(model: nn.Module, seed: int = 0, *, ignore_biasbn: bool = True,
                                generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """A Gaussian direction with each filter rescaled to the norm of the same filter of the weights.

    Li et al. 2018, sec. 4: for every filter ``d_{i,j} <- d_{i,j} / ||d_{i,j}|| * ||theta_{i,j}||`` (a filter
    is one output unit: a slice along dim 0 of a conv or linear weight). Parameters with one dimension or
    fewer (biases, BN weights and biases) get a zero direction, as their ``ignore='biasbn'`` option (the
    setting of their figures); with ``ignore_biasbn=False`` they get a copy of the parameter, their other
    option. Buffers (BN running statistics) are never moved. Drawn on the CPU in float64 from a private
    generator, so the direction does not depend on the device or touch the global RNG.
    """
    generator = generator or torch.Generator().manual_seed(seed)
    direction = []
    for p in trainable_parameters(model):
        w = p.detach()
        if w.dim() <= 1:
            direction.append(torch.zeros_like(w) if ignore_biasbn else w.clone())
            continue
        d = torch.randn(w.shape, generator=generator, dtype=torch.float64)
        w64 = w.double().cpu()
        d_norm = d.flatten(1).norm(dim=1)
        w_norm = w64.flatten(1).norm(dim=1)
        scale = (w_norm / d_norm.clamp_min(1e-30)).view(-1, *([1] * (w.dim() - 1)))
        direction.append((d * scale).to(device=w.device, dtype=w.dtype))
    return direction


def _as_batches(data: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        return [(data[0], data[1])]
    batches = []
    for batch in data:
        if not (isinstance(batch, (tuple, list)) and len(batch) >= 2 and isinstance(batch[0], torch.Tensor)):
            raise TypeError("data must be an (inputs, targets) pair or an iterable of such pairs, got a batch of "
                            f"type {type(batch).__name__}")
        batches.append((batch[0], batch[1]))
    if not batches:
        raise ValueError("data holds no batches")
    return batches


def _mean_loss(model: nn.Module, criterion: Criterion, batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
               device: torch.device, guard: ModelStateGuard) -> float:
    """Sample-weighted mean of the minibatch losses (criterion with reduction='mean'), RNG rewound."""
    guard.rewind_rng()
    total, count = 0.0, 0
    for x, y in batches:
        n = int(x.shape[0])
        total += float(scalar_loss(model, criterion, x.to(device), y.to(device))) * n
        count += n
    return total / count


def _alphas(steps: int, span: float) -> list[float]:
    """``steps`` points over ``[-span, span]``; with ``steps`` odd the middle one is exactly 0.0."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if span <= 0:
        raise ValueError(f"span must be positive, got {span}")
    if steps == 1:
        return [0.0]
    half = (steps - 1) / 2
    return [span * (i - half) / half for i in range(steps)]


def _slice(model: nn.Module, criterion: Criterion, data: Any, directions: Sequence[Sequence[torch.Tensor]],
           grid: Sequence[tuple[float, ...]], bn_mode: str) -> list[float]:
    check_bn_mode(bn_mode)
    params = trainable_parameters(model)
    batches = _as_batches(data)
    device = params[0].device
    losses = []
    with measuring(model, bn_mode, *batches[0], parameters=params) as guard, torch.no_grad():
        for coords in grid:
            for i, (p, w) in enumerate(zip(params, guard.saved_parameters)):
                p.copy_(w)
                for c, d in zip(coords, directions):
                    if c != 0.0:
                        p.add_(d[i], alpha=c)
            losses.append(_mean_loss(model, criterion, batches, device, guard))
    return losses


def loss_slice_1d(
    model: nn.Module,
    criterion: Criterion,
    data: Any,
    steps: int = 21,
    span: float = 1.0,
    seed: int = 0,
    bn_mode: Literal["train", "eval"] = "train",
    *,
    direction: Sequence[torch.Tensor] | None = None,
    ignore_biasbn: bool = True,
) -> pd.DataFrame:
    """The loss at ``w + alpha d`` for ``steps`` values of alpha over ``[-span, span]`` (Li et al. 2018).

    ``data``: one ``(inputs, targets)`` pair or an iterable of pairs (a list or a re-iterable loader; each
    point runs over all of it, the loss is the sample-weighted mean). ``d`` is
    :func:`filter_normalized_direction` (seeded) unless ``direction`` is given. Columns: ``alpha, loss,
    bn_mode, seed, samples``. At ``alpha = 0`` the weights are exactly ``w``.
    """
    direction = list(direction) if direction is not None else filter_normalized_direction(
        model, seed, ignore_biasbn=ignore_biasbn)
    alphas = _alphas(steps, span)
    losses = _slice(model, criterion, data, [direction], [(a,) for a in alphas], bn_mode)
    samples = sum(int(x.shape[0]) for x, _ in _as_batches(data))
    return pd.DataFrame({"alpha": alphas, "loss": losses, "bn_mode": bn_mode, "seed": seed, "samples": samples})


def loss_slice_2d(
    model: nn.Module,
    criterion: Criterion,
    data: Any,
    steps: int = 11,
    span: float = 1.0,
    seed: int = 0,
    bn_mode: Literal["train", "eval"] = "train",
    *,
    directions: tuple[Sequence[torch.Tensor], Sequence[torch.Tensor]] | None = None,
    ignore_biasbn: bool = True,
) -> pd.DataFrame:
    """The loss at ``w + alpha d1 + beta d2`` on a ``steps x steps`` grid over ``[-span, span]^2``.

    ``d1`` and ``d2`` are drawn one after the other from one generator seeded with ``seed``, so ``d1`` is
    the direction of :func:`loss_slice_1d` with the same seed. Columns: ``alpha, beta, loss, bn_mode, seed,
    samples`` (one row per grid point).
    """
    if directions is None:
        generator = torch.Generator().manual_seed(seed)
        directions = (filter_normalized_direction(model, ignore_biasbn=ignore_biasbn, generator=generator),
                      filter_normalized_direction(model, ignore_biasbn=ignore_biasbn, generator=generator))
    alphas = _alphas(steps, span)
    grid = [(a, b) for a in alphas for b in alphas]
    losses = _slice(model, criterion, data, [list(directions[0]), list(directions[1])], grid, bn_mode)
    samples = sum(int(x.shape[0]) for x, _ in _as_batches(data))
    return pd.DataFrame({"alpha": [a for a, _ in grid], "beta": [b for _, b in grid], "loss": losses,
                         "bn_mode": bn_mode, "seed": seed, "samples": samples})
