"""Loss-surface probes: the Santurkar et al. line search, Hessian curvature and filter-normalised slices.

* :func:`line_search_probe`: Santurkar, Tsipras, Ilyas, Madry, "How Does Batch Normalization Help
  Optimization?" (NeurIPS 2018, arXiv 1805.11604, sec. 3.2, Fig. 4). At weights ``w`` with minibatch loss
  ``L`` and gradient ``g``, for step sizes ``eta`` in ``H`` (the paper: ``[1/2, 4] x`` the training lr), on the
  same minibatch: the *loss variation* ``{L(w - eta g)}``, the *gradient predictiveness*
  ``{||g - grad L(w - eta g)||_2}`` and the *effective beta-smoothness*
  ``max_eta ||g - grad L(w - eta g)||_2 / ||eta g||_2``. An evaluation, not a training procedure: everything
  is restored afterwards.
* :func:`hvp`, :func:`hessian_top_eigenvalue` (power iteration on Hessian-vector products, as PyHessian)
  and :func:`hessian_trace` (Hutchinson's estimator with Rademacher vectors).
* :func:`loss_slice_1d` / :func:`loss_slice_2d`: the loss along filter-normalised random directions (Li, Xu,
  Taylor, Studer, Goldstein, "Visualizing the Loss Landscape of Neural Nets", NeurIPS 2018).
* :class:`LandscapeProbe`: the line search (and optionally the top eigenvalue) as a trainer callback.

Conventions shared by every function here
-----------------------------------------
* ``criterion(model(inputs), targets) -> scalar loss``; the trainer's criterion (aux heads included) fits.
* ``bn_mode`` ("train": BN batch statistics and dropout on; "eval": running statistics, dropout off) puts the
  whole model in that mode for the measurement; every result records it. In "train" mode each evaluation of
  one measurement starts from the same RNG state, so dropout draws the same masks at every point and the
  loss is one deterministic function of the weights.
* Only parameters with ``requires_grad`` are moved and differentiated, in ``model.parameters()`` order.
* Afterwards parameters, buffers (BN running statistics), ``.grad``, train/eval flags and the torch CPU/CUDA
  RNG states are bit-identical to before; no optimiser is touched. Parameters are moved in place from one
  saved copy (the only extra parameter-sized memory besides the directions the method needs).
* Gradients come from ``torch.autograd.grad``, which never writes ``.grad``.
* Evaluations run in full precision outside any autocast region.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, Literal, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from analysis.activations import ModelStateGuard, set_bn_mode
from analysis.callbacks import Callback

__all__ = [
    "ETA_RANGE",
    "LandscapeProbe",
    "default_etas",
    "filter_normalized_direction",
    "hessian_top_eigenvalue",
    "hessian_trace",
    "hvp",
    "line_search_probe",
    "loss_slice_1d",
    "loss_slice_2d",
]

# Santurkar et al. 2018, sec. 3.2: step sizes from 1/2 to 4 times the training learning rate.
ETA_RANGE = (0.5, 4.0)
Criterion = Callable[[Any, torch.Tensor], torch.Tensor]
HvpMethod = Literal["autograd", "func"]


# ------------------------------------------------------------------------------------------- helpers
def _trainable(model: nn.Module) -> list[nn.Parameter]:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{type(model).__name__} has no parameter with requires_grad=True to probe")
    return params


def _input_devices(*tensors: Any) -> list[torch.device]:
    return [t.device for t in tensors if isinstance(t, torch.Tensor)]


@contextmanager
def _measuring(model: nn.Module, bn_mode: str, *tensors: Any) -> Iterator[ModelStateGuard]:
    """Save flags, buffers and RNG; set the BN mode; restore everything on exit."""
    with ModelStateGuard(model, devices=_input_devices(*tensors)) as guard:
        set_bn_mode(model, bn_mode)
        yield guard


@contextmanager
def _parameters_restored(params: Sequence[torch.Tensor]) -> Iterator[list[torch.Tensor]]:
    """Keep one copy of the parameters; copy it back (bit-exact) on exit."""
    saved = [p.detach().clone() for p in params]
    try:
        yield saved
    finally:
        with torch.no_grad():
            for p, w in zip(params, saved):
                p.copy_(w)


def _loss(model: nn.Module, criterion: Criterion, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    loss = criterion(model(inputs), targets)
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise ValueError("criterion(model(inputs), targets) must return a scalar tensor (use reduction='mean'); "
                         f"got {type(loss).__name__} with shape {getattr(loss, 'shape', None)}")
    return loss.reshape(())


def _loss_and_grad(model: nn.Module, criterion: Criterion, inputs: torch.Tensor, targets: torch.Tensor,
                   params: Sequence[torch.Tensor]) -> tuple[float, list[torch.Tensor | None]]:
    loss = _loss(model, criterion, inputs, targets)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return float(loss.detach()), list(grads)


def _norm(tensors: Iterable[torch.Tensor | None]) -> float:
    total = 0.0
    for t in tensors:
        if t is not None:
            total += float(t.detach().double().pow(2).sum())
    return math.sqrt(total)


def _diff_norm(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor | None]) -> float:
    total = 0.0
    for x, y in zip(a, b):
        d = x if y is None else x - y
        total += float(d.double().pow(2).sum())
    return math.sqrt(total)


def _dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    return float(sum((x.double() * y.double()).sum() for x, y in zip(a, b)))


def _check_mode(bn_mode: str) -> None:
    if bn_mode not in ("train", "eval"):
        raise ValueError(f"bn_mode={bn_mode!r} is not supported; use 'train' (BN batch statistics) or 'eval' "
                         f"(BN running statistics)")


def default_etas(lr: float, num_points: int = 8, eta_range: tuple[float, float] = ETA_RANGE) -> list[float]:
    """``num_points`` step sizes spaced geometrically over ``eta_range x lr`` (both ends included).

    Geometric spacing gives each factor of two the same number of points (the paper gives only the range).
    """
    if lr <= 0:
        raise ValueError(f"lr must be positive, got {lr}")
    if num_points < 1:
        raise ValueError(f"num_points must be >= 1, got {num_points}")
    low, high = eta_range
    if not 0 < low <= high:
        raise ValueError(f"eta_range must be 0 < low <= high, got {eta_range}")
    if num_points == 1:
        return [float(high * lr)]
    return [float(f * lr) for f in np.geomspace(low, high, num_points)]


# ---------------------------------------------------------------------------------- the line search
def line_search_probe(
    model: nn.Module,
    criterion: Criterion,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    lr: float,
    etas: Sequence[float] | None = None,
    num_points: int = 8,
    bn_mode: Literal["train", "eval"] = "train",
    grad: bool | Sequence[torch.Tensor] | None = None,
    *,
    loss: float | torch.Tensor | None = None,
    eta_range: tuple[float, float] = ETA_RANGE,
) -> dict[str, Any]:
    """Santurkar et al.'s loss variation, gradient predictiveness and effective beta-smoothness at ``w``.

    ``etas``: the step sizes (default :func:`default_etas`: ``num_points`` geometric points over
    ``[0.5, 4] x lr``). ``grad``: ``None`` computes ``L`` and ``g`` here (one extra forward+backward);
    ``True`` takes ``g`` from the parameters' ``.grad`` (``None`` counts as zero) and then ``loss`` (the
    minibatch loss that produced it) must be given; a sequence gives ``g`` per trainable parameter. A given
    ``g`` must come from the same model mode and minibatch (and, with dropout, the masks differ).
    Cost: exactly ``len(etas)`` forward+backward passes, plus one when ``grad`` is None.

    Returns a flat dict: ``bn_mode, lr, num_points, loss`` (L at w), ``grad_norm`` (||g||),
    ``loss_min, loss_max`` (over ``{L(w - eta g)}``, **excluding** L itself, as the paper's band of the
    losses along the step; compare with ``loss``), ``loss_range`` (max - min), ``loss_range_rel``
    (range / L), ``grad_pred_min, grad_pred_max`` (``||g - grad L(w - eta g)||``), ``grad_pred_rel_max``
    (max / ||g||), ``beta_eff`` (max over eta of ``||g - grad L(w - eta g)|| / (eta ||g||)``; NaN when g = 0),
    and the per-eta lists ``etas, losses, grad_preds``.
    """
    _check_mode(bn_mode)
    params = _trainable(model)
    if etas is None:
        etas = default_etas(lr, num_points, eta_range)
    etas = [float(e) for e in etas]
    if not etas or any(not math.isfinite(e) or e <= 0 for e in etas):
        raise ValueError(f"etas must be positive finite step sizes, got {etas}")

    with _measuring(model, bn_mode, inputs, targets) as guard:
        if grad is None:
            guard.rewind_rng()
            loss_at_w, computed = _loss_and_grad(model, criterion, inputs, targets, params)
            g = [torch.zeros_like(p) if c is None else c for p, c in zip(params, computed)]
        else:
            if loss is None:
                raise ValueError("with grad= given, also give loss=, the minibatch loss that produced the gradient "
                                 "(or leave grad=None to compute both here)")
            loss_at_w = float(loss.detach() if isinstance(loss, torch.Tensor) else loss)
            g = _given_gradient(grad, params)
        grad_norm = _norm(g)

        losses: list[float] = []
        grad_preds: list[float] = []
        with _parameters_restored(params) as saved:
            for eta in etas:
                with torch.no_grad():
                    for p, w, gi in zip(params, saved, g):
                        p.copy_(w).add_(gi, alpha=-eta)
                guard.rewind_rng()
                value, grads_at = _loss_and_grad(model, criterion, inputs, targets, params)
                losses.append(value)
                grad_preds.append(_diff_norm(g, grads_at))
                del grads_at

    betas = [gp / (eta * grad_norm) if grad_norm > 0 else float("nan") for gp, eta in zip(grad_preds, etas)]
    loss_min, loss_max = min(losses), max(losses)
    return {
        "bn_mode": bn_mode,
        "lr": float(lr),
        "num_points": len(etas),
        "loss": loss_at_w,
        "grad_norm": grad_norm,
        "loss_min": loss_min,
        "loss_max": loss_max,
        "loss_range": loss_max - loss_min,
        "loss_range_rel": (loss_max - loss_min) / loss_at_w if loss_at_w != 0 else float("nan"),
        "grad_pred_min": min(grad_preds),
        "grad_pred_max": max(grad_preds),
        "grad_pred_rel_max": max(grad_preds) / grad_norm if grad_norm > 0 else float("nan"),
        "beta_eff": max(betas) if grad_norm > 0 else float("nan"),
        "etas": etas,
        "losses": losses,
        "grad_preds": grad_preds,
    }


def _given_gradient(grad: bool | Sequence[torch.Tensor], params: Sequence[nn.Parameter]) -> list[torch.Tensor]:
    if grad is True:
        return [torch.zeros_like(p) if p.grad is None else p.grad.detach() for p in params]
    if grad is False:
        raise ValueError("grad=False is ambiguous: use grad=None to compute the gradient here, grad=True for .grad")
    grads = list(grad)
    if len(grads) != len(params) or any(g.shape != p.shape for g, p in zip(grads, params)):
        raise ValueError(f"grad must hold one tensor per trainable parameter ({len(params)}, same shapes, "
                         f"model.parameters() order); got {len(grads)}")
    return [g.detach() for g in grads]


# ------------------------------------------------------------------------------------------ Hessian
class _HessianOperator:
    """``v -> H v`` at the current weights for one minibatch, inside a :func:`_measuring` block.

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
            loss = _loss(model, criterion, inputs, targets)
            grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
            self.loss = float(loss.detach())
            self._grads = list(grads)
        else:
            with torch.no_grad():
                self.loss = float(_loss(model, criterion, inputs, targets))

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
    _check_mode(bn_mode)
    params = _trainable(model)
    vector = list(vector)
    if len(vector) != len(params) or any(v.shape != p.shape for v, p in zip(vector, params)):
        raise ValueError(f"vector must hold one tensor per trainable parameter ({len(params)}, same shapes)")
    with _measuring(model, bn_mode, inputs, targets) as guard:
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
    _check_mode(bn_mode)
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    params = _trainable(model)
    generator = torch.Generator().manual_seed(seed)
    with _measuring(model, bn_mode, inputs, targets) as guard:
        operator = _HessianOperator(model, criterion, inputs, targets, params, guard, method)
        v = _random_vector(params, generator, "gaussian")
        norm = _norm(v)
        v = [x / norm for x in v]
        eigenvalue, converged, done = float("nan"), False, 0
        for done in range(1, iters + 1):
            hv = operator(v)
            new = _dot(v, hv)
            hv_norm = _norm(hv)
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
    _check_mode(bn_mode)
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    params = _trainable(model)
    generator = torch.Generator().manual_seed(seed)
    values = []
    with _measuring(model, bn_mode, inputs, targets) as guard:
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
    for p in _trainable(model):
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
        total += float(_loss(model, criterion, x.to(device), y.to(device))) * n
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
    _check_mode(bn_mode)
    params = _trainable(model)
    batches = _as_batches(data)
    device = params[0].device
    losses = []
    with _measuring(model, bn_mode, *batches[0]) as guard, torch.no_grad():
        with _parameters_restored(params) as saved:
            for coords in grid:
                for i, (p, w) in enumerate(zip(params, saved)):
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


# ------------------------------------------------------------------------------------------ callback
_LOGGED = ("loss_min", "loss_max", "grad_pred_min", "grad_pred_max", "beta_eff")


class LandscapeProbe(Callback):
    """Santurkar et al.'s line search every ``every`` steps of training, in ``on_after_backward``.

    At that point ``.grad`` holds the step's gradient and the optimiser has not stepped; the probe logs
    ``loss_min, loss_max, grad_pred_min, grad_pred_max, beta_eff`` with ``trainer.log_metrics`` and keeps a
    row per probe in ``rows`` (:meth:`to_frame`). ``step`` in a row is the number of updates already applied
    to the probed weights (the trainer's metrics row it lands in is that of the update being taken, step + 1).

    With ``reuse_grad`` (default) and ``bn_mode="train"`` the trainer's gradient and loss are reused (K
    passes per probe); the probe recomputes them itself (K + 1 passes) in eval mode, under DDP (the
    trainer's gradient is averaged over ranks, the probe's is not) and under AMP (the trainer's forward ran in
    reduced precision). With active dropout a reused gradient came from other masks than the probe's.
    ``eigen_every``: also the top Hessian eigenvalue (``hessian_top``) every that many steps.
    """

    def __init__(
        self,
        every: int = 10,
        *,
        num_points: int = 8,
        eta_range: tuple[float, float] = ETA_RANGE,
        etas: Sequence[float] | None = None,
        bn_mode: Literal["train", "eval"] = "train",
        reuse_grad: bool = True,
        eigen_every: int | None = None,
        eigen_iters: int = 20,
        eigen_tol: float = 1e-3,
    ) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1 step, got {every}")
        if eigen_every is not None and eigen_every < 1:
            raise ValueError(f"eigen_every must be >= 1 step or None, got {eigen_every}")
        _check_mode(bn_mode)
        self.every = every
        self.num_points = num_points
        self.eta_range = eta_range
        self.etas = etas
        self.bn_mode = bn_mode
        self.reuse_grad = reuse_grad
        self.eigen_every = eigen_every
        self.eigen_iters = eigen_iters
        self.eigen_tol = eigen_tol
        self.rows: list[dict[str, Any]] = []
        self.curves: list[dict[str, Any]] = []

    def _can_reuse(self, trainer: Any) -> bool:
        config = getattr(trainer, "config", None)
        return (self.reuse_grad and self.bn_mode == "train" and getattr(trainer, "world_size", 1) == 1
                and getattr(config, "amp", None) is None)

    def on_after_backward(self, trainer: Any, batch: tuple[torch.Tensor, torch.Tensor], loss: torch.Tensor) -> None:
        step = int(trainer.step)
        if step % self.every:
            return
        inputs, targets = batch
        model, criterion = trainer.model, trainer.criterion
        reuse = self._can_reuse(trainer)
        result = line_search_probe(model, criterion, inputs, targets, trainer.lr, etas=self.etas,
                                   num_points=self.num_points, bn_mode=self.bn_mode,
                                   grad=True if reuse else None, loss=loss if reuse else None,
                                   eta_range=self.eta_range)
        metrics = {k: result[k] for k in _LOGGED}
        row: dict[str, Any] = {"step": step, **{k: v for k, v in result.items() if not isinstance(v, list)}}
        row["grad_source"] = "trainer" if reuse else "probe"
        if self.eigen_every is not None and step % self.eigen_every == 0:
            eig = hessian_top_eigenvalue(model, criterion, inputs, targets, iters=self.eigen_iters,
                                         tol=self.eigen_tol, bn_mode=self.bn_mode)
            metrics["hessian_top"] = row["hessian_top"] = eig["eigenvalue"]
            row["hessian_iterations"] = eig["iterations"]
        trainer.log_metrics(metrics)
        self.rows.append(row)
        self.curves.extend({"step": step, "eta": e, "loss": v, "grad_pred": gp, "bn_mode": self.bn_mode}
                           for e, v, gp in zip(result["etas"], result["losses"], result["grad_preds"]))

    def to_frame(self, long: bool = False) -> pd.DataFrame:
        """One row per probe; ``long=True``: one row per (probe, eta) with ``step, eta, loss, grad_pred``."""
        if long:
            return pd.DataFrame(self.curves, columns=["step", "eta", "loss", "grad_pred", "bn_mode"])
        return pd.DataFrame(self.rows)
