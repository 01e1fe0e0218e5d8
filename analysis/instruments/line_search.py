"""Santurkar et al.'s line-search probe of loss-surface smoothness, once or along training.

* :func:`line_search_probe`: Santurkar, Tsipras, Ilyas, Madry, "How Does Batch Normalization Help
  Optimization?" (NeurIPS 2018, arXiv 1805.11604, sec. 3.2, Fig. 4). At weights ``w`` with minibatch loss
  ``L`` and gradient ``g``, for step sizes ``eta`` in ``H`` (the paper: ``[1/2, 4] x`` the training lr), on the
  same minibatch: the *loss variation* ``{L(w - eta g)}``, the *gradient predictiveness*
  ``{||g - grad L(w - eta g)||_2}`` and the *effective beta-smoothness*
  ``max_eta ||g - grad L(w - eta g)||_2 / ||eta g||_2``. An evaluation, not a training procedure: everything
  is restored afterwards.
* :class:`LandscapeProbe`: the line search (and optionally the top Hessian eigenvalue) as a trainer callback.

The conventions (criterion, ``bn_mode``, what is restored) are those of :mod:`analysis.instruments.landscape`.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from analysis.callbacks import Callback
from analysis.instruments.landscape import (
    Criterion,
    check_bn_mode,
    hessian_top_eigenvalue,
    l2_distance,
    l2_norm,
    loss_and_grad,
    measuring,
    trainable_parameters,
)

__all__ = ["ETA_RANGE", "LandscapeProbe", "default_etas", "line_search_probe"]

# Santurkar et al. 2018, sec. 3.2: step sizes from 1/2 to 4 times the training learning rate.
ETA_RANGE = (0.5, 4.0)


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
    check_bn_mode(bn_mode)
    params = trainable_parameters(model)
    if etas is None:
        etas = default_etas(lr, num_points, eta_range)
    etas = [float(e) for e in etas]
    if not etas or any(not math.isfinite(e) or e <= 0 for e in etas):
        raise ValueError(f"etas must be positive finite step sizes, got {etas}")

    with measuring(model, bn_mode, inputs, targets, parameters=params) as guard:
        if grad is None:
            guard.rewind_rng()
            loss_at_w, computed = loss_and_grad(model, criterion, inputs, targets, params)
            g = [torch.zeros_like(p) if c is None else c for p, c in zip(params, computed)]
        else:
            if loss is None:
                raise ValueError("with grad= given, also give loss=, the minibatch loss that produced the gradient "
                                 "(or leave grad=None to compute both here)")
            loss_at_w = float(loss.detach() if isinstance(loss, torch.Tensor) else loss)
            g = _given_gradient(grad, params)
        grad_norm = l2_norm(g)

        losses: list[float] = []
        grad_preds: list[float] = []
        for eta in etas:
            with torch.no_grad():
                for p, w, gi in zip(params, guard.saved_parameters, g):
                    p.copy_(w).add_(gi, alpha=-eta)
            guard.rewind_rng()
            value, grads_at = loss_and_grad(model, criterion, inputs, targets, params)
            losses.append(value)
            grad_preds.append(l2_distance(g, grads_at))
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
        check_bn_mode(bn_mode)
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
