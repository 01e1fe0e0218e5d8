"""The papers' optimisers and learning-rate schedules: TensorFlow's RMSProp (Inception-v3 and v4), SGD with
momentum (GoogLeNet), AdamW (Loshchilov & Hutter 2019: no paper of the family uses it, but it leaves the plateau
at chance reliably on the short CPU budgets of the trained experiments, where SGD escapes it in some seeds and not
others), and the step, cosine and constant schedules with a linear warm-up.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import torch
from torch import nn

from analysis.training.config import TrainConfig

__all__ = ["RMSpropTF", "lr_schedule", "make_optimizer"]


class RMSpropTF(torch.optim.Optimizer):
    """RMSProp as TensorFlow computes it: the optimiser of the Inception-v3 and v4 papers.

    It differs from ``torch.optim.RMSprop`` in three ways that matter with the papers' epsilon of 1.0: epsilon
    sits inside the square root, the mean-square accumulator starts at one (not zero), and the learning rate
    is applied inside the momentum buffer::

        ms  = decay * ms + (1 - decay) * g**2
        mom = momentum * mom + lr * g / sqrt(ms + eps)
        w   = w - mom

    ``foreach`` (the default where every parameter is on a GPU, as PyTorch's optimisers decide) updates all the
    tensors of a group with ``torch._foreach_*`` kernels, a handful of launches per step instead of about nine
    per tensor; ``foreach=False`` is the loop over tensors. Both compute the same numbers.
    """

    def __init__(self, params: Iterable[Any], lr: float = 0.045, decay: float = 0.9, eps: float = 1.0,
                 momentum: float = 0.9, weight_decay: float = 0.0, *, foreach: bool | None = None) -> None:
        if lr <= 0 or eps <= 0 or not 0 <= decay < 1 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"bad RMSpropTF settings lr={lr} decay={decay} eps={eps} momentum={momentum} "
                             f"weight_decay={weight_decay}")
        super().__init__(params, dict(lr=lr, decay=decay, eps=eps, momentum=momentum, weight_decay=weight_decay,
                                      foreach=foreach))

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            for param in params:
                state = self.state[param]
                if not state:
                    state["square_avg"] = torch.ones_like(param, memory_format=torch.preserve_format)
                    state["momentum_buffer"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            foreach = group.get("foreach")
            if foreach is None:
                foreach = all(p.is_cuda for p in params)
            (_foreach_step if foreach else _loop_step)(group, params, self.state)
        return loss


def _loop_step(group: dict[str, Any], params: list[torch.Tensor], state: Any) -> None:
    """One RMSpropTF update, tensor by tensor."""
    for param in params:
        grad = param.grad
        if group["weight_decay"]:
            grad = grad.add(param, alpha=group["weight_decay"])
        square_avg = state[param]["square_avg"]
        square_avg.mul_(group["decay"]).addcmul_(grad, grad, value=1 - group["decay"])
        update = grad / square_avg.add(group["eps"]).sqrt_()
        if group["momentum"] > 0:
            buf = state[param]["momentum_buffer"]
            buf.mul_(group["momentum"]).add_(update, alpha=group["lr"])
            param.sub_(buf)
        else:
            param.sub_(update, alpha=group["lr"])


def _foreach_step(group: dict[str, Any], params: list[torch.Tensor], state: Any) -> None:
    """The same update as :func:`_loop_step`, operation for operation, over all tensors at once (grouped by
    device and dtype, as the ``_foreach`` kernels need)."""
    from torch.optim.optimizer import Optimizer

    tensors = [[p for p in params], [p.grad for p in params], [state[p]["square_avg"] for p in params],
               [state[p]["momentum_buffer"] for p in params]]
    grouped = Optimizer._group_tensors_by_device_and_dtype(tensors)  # type: ignore[arg-type]
    for (device_params, grads, square_avgs, buffers), _ in grouped.values():
        if group["weight_decay"]:
            grads = torch._foreach_add(grads, device_params, alpha=group["weight_decay"])
        torch._foreach_mul_(square_avgs, group["decay"])
        torch._foreach_addcmul_(square_avgs, grads, grads, value=1 - group["decay"])
        denominators = torch._foreach_add(square_avgs, group["eps"])
        torch._foreach_sqrt_(denominators)
        updates = torch._foreach_div(grads, denominators)
        if group["momentum"] > 0:
            torch._foreach_mul_(buffers, group["momentum"])
            torch._foreach_add_(buffers, updates, alpha=group["lr"])
            torch._foreach_sub_(device_params, buffers)
        else:
            torch._foreach_sub_(device_params, updates, alpha=group["lr"])


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """The optimiser ``config`` names, over the model's parameters that require a gradient."""
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "rmsprop":
        return RMSpropTF(params, lr=config.lr, decay=config.rmsprop_decay, eps=config.rmsprop_eps,
                         momentum=config.momentum, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        # beta1 is the config's momentum, so one knob means "averaging of the gradient" for every optimiser.
        return torch.optim.AdamW(params, lr=config.lr, betas=(config.momentum, 0.999),
                                 weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                           nesterov=config.nesterov and config.momentum > 0, weight_decay=config.weight_decay)


def lr_schedule(config: TrainConfig, steps_per_epoch: int, total_steps: int) -> Callable[[int], float]:
    """The schedule as a pure function of the finished-step count (so LambdaLR's state is just a counter)."""
    period = max(1, round(config.lr_decay_epochs * steps_per_epoch))
    warmup = config.warmup_steps

    def factor(step: int) -> float:
        if config.schedule == "step":
            value = config.lr_decay ** (step // period)
        elif config.schedule == "cosine":
            value = 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / max(1, total_steps)))
        else:
            value = 1.0
        if warmup and step < warmup:
            value *= (step + 1) / warmup
        return value

    return factor
