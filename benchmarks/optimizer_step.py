"""Time of one optimiser step over a model's parameters: the TensorFlow-style RMSProp of the Inception papers
(:class:`analysis.training.optim.RMSpropTF`) as a loop over tensors and with ``torch._foreach_*`` kernels,
beside PyTorch's own ``torch.optim.RMSprop`` (loop and ``foreach=True``), on the same gradients.

    python benchmarks/optimizer_step.py                                  # inception_v3's parameters on the CPU
    python benchmarks/optimizer_step.py --device cuda --steps 50

The variants run interleaved (each timed step rotates through all of them), so a busy machine slows them
alike; the table gives the median milliseconds per step (CUDA: synchronised before and after each step) and
the speed-up over RMSpropTF's loop. The loop and foreach RMSpropTF end with the same parameters (checked).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import pandas as pd
import torch

from analysis.report.tables import render
from analysis.training.optim import RMSpropTF

CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
OPTIMISERS: dict[str, Callable[[list[torch.Tensor]], torch.optim.Optimizer]] = {
    "RMSpropTF loop": lambda p: RMSpropTF(p, lr=0.045, weight_decay=4e-5, foreach=False),
    "RMSpropTF foreach": lambda p: RMSpropTF(p, lr=0.045, weight_decay=4e-5, foreach=True),
    "torch RMSprop loop": lambda p: torch.optim.RMSprop(p, lr=0.045, alpha=0.9, eps=1.0, momentum=0.9,
                                                        weight_decay=4e-5, foreach=False),
    "torch RMSprop foreach": lambda p: torch.optim.RMSprop(p, lr=0.045, alpha=0.9, eps=1.0, momentum=0.9,
                                                           weight_decay=4e-5, foreach=True),
}


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="inception_v3")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=15, help="timed steps per optimiser")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=tuple(CLOCKS), default=None, help="default: cpu on the CPU, wall on a GPU")
    parser.add_argument("--format", default="table")
    args = parser.parse_args(argv)
    from inception_models import create_model

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    clock = args.clock or ("cpu" if device.type == "cpu" else "wall")
    now = CLOCKS[clock]
    torch.manual_seed(0)
    start = [p.detach().to(device) for p in create_model(args.model, num_classes=1000).parameters()]
    g = torch.Generator().manual_seed(1)
    grads = [[torch.randn(p.shape, generator=g).to(device) for p in start] for _ in range(2)]
    params = {name: [p.clone().requires_grad_() for p in start] for name in OPTIMISERS}
    optimisers = {name: build(params[name]) for name, build in OPTIMISERS.items()}
    times: dict[str, list[float]] = {name: [] for name in OPTIMISERS}
    for step in range(args.warmup + args.steps):
        names = list(OPTIMISERS)
        for name in names[step % len(names):] + names[:step % len(names)]:
            for p, grad in zip(params[name], grads[step % 2]):
                p.grad = grad
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = now()
            optimisers[name].step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if step >= args.warmup:
                times[name].append(now() - t0)
    same = all(torch.equal(a, b) for a, b in zip(params["RMSpropTF loop"], params["RMSpropTF foreach"]))
    base = statistics.median(times["RMSpropTF loop"])
    table = pd.DataFrame([{"optimiser": name, "ms_per_step": 1e3 * statistics.median(t),
                           "speedup_over_loop": base / statistics.median(t)} for name, t in times.items()])
    notes = [f"{args.model}: {len(start)} tensors, {sum(p.numel() for p in start):,} parameters on {device}; torch "
             f"{torch.__version__}, {torch.get_num_threads()} thread(s); median of {args.steps} interleaved steps "
             f"after {args.warmup}, {clock} clock",
             f"RMSpropTF loop and foreach end with identical parameters: {same}",
             "torch RMSprop: PyTorch's formula (eps outside the square root, square average from zero), the same "
             "work per element; shown for the cost of its implementation, not its numbers"]
    print(render(table, args.format, title="One optimiser step", notes=notes), end="")
    return table


if __name__ == "__main__":
    main()
