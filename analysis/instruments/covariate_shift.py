"""Internal covariate shift as Santurkar et al. measure it, once or along training.

Santurkar, Tsipras, Ilyas, Madry, "How Does Batch Normalization Help Optimization?" (NeurIPS 2018, arXiv
1805.11604), sec. 2.2, Definition 2.1 and Fig. 5. The BN paper (Ioffe & Szegedy 2015) rests on the premise that
batch norm helps by reducing *internal covariate shift*, the change of a layer's input distribution when the
layers before it are updated. Santurkar et al. measure it from the optimisation's point of view: at step ``t``,
for layer ``i`` with weights ``W_i``, on one minibatch,

* ``G = grad_{W_i} L(W_1, ..., W_k)``, the gradient of the loss with respect to layer ``i``'s weights before the
  step, and
* ``G' = grad_{W_i} L(W_1 + dW_1, ..., W_{i-1} + dW_{i-1}, W_i, ..., W_k)``, the same gradient after layers
  ``1 .. i-1`` have taken their step ``dW`` (layers ``i ..`` unchanged, the same minibatch),

and report ``||G - G'||_2`` and ``cos(G, G')``: how much the update of the earlier layers changes the problem
layer ``i`` is solving. They found that BN does not reduce it (and can raise it).

* :func:`internal_covariate_shift`: the measurement at the model's current weights, one row per layer;
* :func:`sgd_rule` and :func:`optimizer_rule`: the step ``dW`` a measurement takes, plain SGD's or the one any
  ``torch.optim`` optimiser would take next (its state, momentum buffers included);
* :func:`model_layers`: the ordered layers the network is cut into;
* :class:`CovariateShiftProbe`: the measurement as a trainer callback, every ``every`` steps.

The conventions (criterion, ``bn_mode``, what is restored) are those of :mod:`analysis.instruments.landscape`:
the model's parameters, buffers, flags and RNG state are bit-identical afterwards, and ``.grad`` is untouched.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Callable, Literal, Sequence

import pandas as pd
import torch
from torch import nn

from analysis.callbacks import Callback
from analysis.instruments.landscape import (
    Criterion,
    check_bn_mode,
    l2_distance,
    l2_norm,
    loss_and_grad,
    measuring,
)

__all__ = [
    "ICS_COLUMNS",
    "CovariateShiftProbe",
    "StepRule",
    "internal_covariate_shift",
    "model_layers",
    "optimizer_rule",
    "sgd_rule",
]

# ``rule(parameters, gradients) -> updates``: the change a step makes to each parameter (new minus old weights).
StepRule = Callable[[Sequence[nn.Parameter], Sequence[torch.Tensor]], list[torch.Tensor]]

ICS_COLUMNS = ["layer", "depth", "params", "loss", "grad_norm", "grad_norm_after", "shift", "shift_rel", "cosine",
               "upstream_update", "bn_mode"]


# ------------------------------------------------------------------------------------------- step rules
def sgd_rule(lr: float, weight_decay: float = 0.0) -> StepRule:
    """Plain SGD's step: ``dW = -lr (G + weight_decay W)``."""
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr}")

    def rule(params: Sequence[nn.Parameter], grads: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [-lr * (g + weight_decay * p.detach()) for p, g in zip(params, grads)]

    return rule


def optimizer_rule(optimizer: torch.optim.Optimizer) -> StepRule:
    """The step ``optimizer`` would take next with the given gradients, from its current state (momentum
    buffers, Adam's moments, the current learning rate).

    The step is taken and undone: the parameters, their ``.grad`` and the optimiser's state are as before.
    Parameters of the optimiser that are not given keep no gradient during the step, so it leaves them alone."""

    def rule(params: Sequence[nn.Parameter], grads: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        given = {id(p) for p in params}
        owned = [p for group in optimizer.param_groups for p in group["params"]]
        missing = len(given - {id(p) for p in owned})
        if missing:
            raise ValueError(f"{missing} of the parameters to step are not in the optimiser's param_groups: "
                             "build the rule from the optimiser that trains this model")
        others = [p for p in owned if id(p) not in given]
        state = copy.deepcopy(optimizer.state_dict())
        before = [p.detach().clone() for p in params]
        grads_before = [p.grad for p in params]
        other_grads = [p.grad for p in others]
        try:
            for p in others:
                p.grad = None
            for p, g in zip(params, grads):
                p.grad = g.detach().clone()
            with torch.no_grad():
                optimizer.step()
            return [p.detach() - w for p, w in zip(params, before)]
        finally:
            with torch.no_grad():
                for p, w in zip(params, before):
                    p.copy_(w)
            for p, g in zip(params, grads_before):
                p.grad = g
            for p, g in zip(others, other_grads):
                p.grad = g
            optimizer.load_state_dict(state)

    return rule


# ----------------------------------------------------------------------------------------------- layers
def model_layers(model: nn.Module, names: Sequence[str] | None = None) -> list[tuple[str, list[nn.Parameter]]]:
    """The network cut into ordered layers: ``(name, trainable parameters)`` per named submodule, in the order
    given (the order of the forward pass: Definition 2.1's "layers 1 .. i-1" are those listed before layer i).

    ``None``: the model's top-level children that hold trainable parameters, in registration order (the forward
    order of a sequential network). Two layers may not share a parameter (one inside the other); a parameter in
    no layer is never stepped."""
    modules = dict(model.named_modules())
    if names is None:
        chosen = [(n, m) for n, m in model.named_children() if any(p.requires_grad for p in m.parameters())]
    else:
        unknown = [n for n in names if n not in modules or not n]
        if unknown:
            raise ValueError(f"layer(s) {unknown} are not submodules of {type(model).__name__}; e.g. "
                             f"{', '.join(n for n, _ in list(model.named_children())[:4])}")
        chosen = [(n, modules[n]) for n in names]
    layers, seen = [], {}
    for name, module in chosen:
        params = [p for p in module.parameters() if p.requires_grad]
        if not params:
            raise ValueError(f"layer {name!r} has no trainable parameter to measure")
        for p in params:
            if id(p) in seen:
                raise ValueError(f"layers {seen[id(p)]!r} and {name!r} share parameters (one contains the other); "
                                 "list disjoint layers")
            seen[id(p)] = name
        layers.append((name, params))
    if not layers:
        raise ValueError(f"{type(model).__name__} has no layer with trainable parameters")
    return layers


# ---------------------------------------------------------------------------------------- measurement
def _cosine(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    na, nb = l2_norm(a), l2_norm(b)
    if na == 0.0 or nb == 0.0:
        return math.nan
    return float(sum((x.double() * y.double()).sum() for x, y in zip(a, b))) / (na * nb)


def _full(params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor | None]) -> list[torch.Tensor]:
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def internal_covariate_shift(
    model: nn.Module,
    criterion: Criterion,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    rule: StepRule,
    *,
    layers: Sequence[str] | None = None,
    measure: Sequence[str] | None = None,
    bn_mode: Literal["train", "eval"] = "train",
) -> pd.DataFrame:
    """Santurkar et al.'s internal covariate shift (Definition 2.1) of each layer at the model's current weights.

    ``rule(parameters, gradients) -> updates`` is the step (:func:`sgd_rule`, :func:`optimizer_rule`), applied to
    the gradient ``G`` of the loss on this minibatch; ``layers`` cut the network (:func:`model_layers`);
    ``measure`` names the layers to report (default: all). For layer ``i``, ``G'`` is the gradient with respect to
    its parameters after every earlier layer has taken its step, on the same minibatch (the same dropout masks:
    every forward starts from the same RNG state). Cost: one forward+backward for ``G`` and one per measured
    layer.

    One row per measured layer, in network order (:data:`ICS_COLUMNS`): ``layer``, ``depth`` (its index in ``layers``), ``params``
    (its parameter count), ``loss`` (at the current weights), ``grad_norm`` ``||G||``, ``grad_norm_after``
    ``||G'||``, ``shift`` ``||G - G'||_2`` (the paper's measure), ``shift_rel`` (``shift / ||G||``), ``cosine``
    ``cos(G, G')`` (NaN when either is zero), ``upstream_update`` (the l2 norm of the earlier layers' step),
    ``bn_mode``. The first layer has nothing before it: its shift is 0 and its cosine 1.
    """
    check_bn_mode(bn_mode)
    cut = model_layers(model, layers)
    names = [name for name, _ in cut]
    wanted = list(names) if measure is None else list(measure)
    unknown = [n for n in wanted if n not in names]
    if unknown:
        raise ValueError(f"measure names layer(s) {unknown} that are not among the layers {names}")
    params = [p for _, group in cut for p in group]
    with measuring(model, bn_mode, inputs, targets, parameters=params) as guard:
        guard.rewind_rng()
        loss, grads = loss_and_grad(model, criterion, inputs, targets, params)
        grads = _full(params, grads)
        updates = list(rule(params, grads))
        if len(updates) != len(params) or any(u.shape != p.shape for u, p in zip(updates, params)):
            raise ValueError(f"the step rule must return one update per parameter ({len(params)}, same shapes), "
                             f"got {len(updates)}")
        rows, start, upstream = [], 0, 0.0
        for depth, (name, group) in enumerate(cut):
            end = start + len(group)
            if name in wanted:
                guard.rewind_rng()
                _, after = loss_and_grad(model, criterion, inputs, targets, group)
                before, after = grads[start:end], _full(group, after)
                shift, norm = l2_distance(before, after), l2_norm(before)
                rows.append({"layer": name, "depth": depth, "params": sum(p.numel() for p in group), "loss": loss,
                             "grad_norm": norm, "grad_norm_after": l2_norm(after), "shift": shift,
                             "shift_rel": shift / norm if norm > 0 else math.nan, "cosine": _cosine(before, after),
                             "upstream_update": math.sqrt(upstream), "bn_mode": bn_mode})
            # Definition 2.1: the layers after this one are measured with this layer's step taken.
            with torch.no_grad():
                for p, u in zip(group, updates[start:end]):
                    p.add_(u)
            upstream += l2_norm(updates[start:end]) ** 2
            start = end
    return pd.DataFrame(rows, columns=ICS_COLUMNS)


# ---------------------------------------------------------------------------------------------- callback
class CovariateShiftProbe(Callback):
    """:func:`internal_covariate_shift` every ``every`` steps of training, in ``on_after_backward`` (the
    optimiser has not stepped), on the step's own minibatch, with the step the trainer's optimiser is about to
    take (:func:`optimizer_rule`) unless ``rule`` is given. Rows gather in :meth:`to_frame` with ``step``, the
    number of updates already applied to the measured weights."""

    def __init__(self, every: int = 10, *, layers: Sequence[str] | None = None, measure: Sequence[str] | None = None,
                 rule: StepRule | None = None, bn_mode: Literal["train", "eval"] = "train") -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1 step, got {every}")
        check_bn_mode(bn_mode)
        self.every, self.layers, self.measure, self.rule, self.bn_mode = every, layers, measure, rule, bn_mode
        self.frames: list[pd.DataFrame] = []

    def on_after_backward(self, trainer: Any, batch: tuple[torch.Tensor, torch.Tensor], loss: torch.Tensor) -> None:
        step = int(trainer.step)
        if step % self.every:
            return
        inputs, targets = batch
        rule = self.rule if self.rule is not None else optimizer_rule(trainer.optimizer)
        frame = internal_covariate_shift(trainer.model, trainer.criterion, inputs, targets, rule, layers=self.layers,
                                         measure=self.measure, bn_mode=self.bn_mode)
        self.frames.append(frame.assign(step=step))

    def to_frame(self) -> pd.DataFrame:
        """One row per probed step and measured layer: ``step`` and :data:`ICS_COLUMNS`."""
        if not self.frames:
            return pd.DataFrame(columns=["step", *ICS_COLUMNS])
        frame = pd.concat(self.frames, ignore_index=True)
        return frame[["step", *ICS_COLUMNS]]
