"""Training-step time with and without the activation monitor (analysis.instruments.activations), in one run.

    python benchmarks/monitor_overhead.py                                     # our GoogLeNet, 96 px, CPU
    python benchmarks/monitor_overhead.py --model torchvision:inception_v3 --image-size 75
    python benchmarks/monitor_overhead.py --device cuda --batch-size 64 --image-size 224 --model inception_v3

One step is forward, cross-entropy, backward and an SGD step on a fixed random batch. Variants: no monitor;
the monitor on the pre-pool layer (``prepool_layer``: one forward pre-hook on the global pool); on every
activation (module hooks on every ``nn.ReLU``, or the dispatch interceptor for models without ReLU modules);
and, for comparison, every ReLU seen through the dispatch interceptor. The variants are interleaved: each of
``--repeats`` rounds times ``--steps`` steps of every variant in a rotated order, so drifts of a shared machine
hit all of them alike; the table gives the median step time over rounds and the ratio to no monitor. The
target is <= 5% overhead for the pre-pool monitor. BN running statistics change during the run (it trains);
that does not matter for timing.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from analysis.instruments.activations import ActivationMonitor, _accumulate, prepool_layer
from analysis.report.tables import render


def build(spec: str, num_classes: int) -> nn.Module:
    """``torchvision:<name>``, ``timm:<name>`` or a name of our registry."""
    source, _, name = spec.rpartition(":")
    if source == "torchvision":
        import torchvision

        kwargs = {"aux_logits": False, "init_weights": False} if name in ("googlenet", "inception_v3") else {}
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    if source == "timm":
        import timm

        return timm.create_model(name, pretrained=False, num_classes=num_classes)
    from inception_models import create_model

    return create_model(name, num_classes=num_classes)


def statistics_cost(monitor: ActivationMonitor, device: torch.device, repeats: int = 20) -> float:
    """Seconds the monitor's reductions take for one step: every watched layer's batch, rebuilt from its stats."""
    tensors = []
    for name, s in monitor.stats.items():
        positions = max(s.elements // max(s.samples, 1), 1)
        relu = ":relu" in name or not name.endswith(":input")
        x = torch.randn(s.samples // s.batches, s.channels, positions, device=device)
        tensors.append((name, x.relu_() if relu else x, relu))
    best = float("inf")
    for _ in range(3):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(repeats):
            for name, x, relu in tensors:
                _accumulate(None, x, "train", name, nonnegative=relu)
        sync(device)
        best = min(best, (time.perf_counter() - t0) / repeats)
    return best


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="googlenet", help="our registry name, torchvision:<name> or timm:<name>")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant per round")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved rounds")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads on the CPU")
    parser.add_argument("--format", default="table")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build(args.model, args.num_classes).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    y = torch.randint(0, args.num_classes, (args.batch_size,), device=device)

    def step() -> None:
        out = model(x)
        logits = out[0] if isinstance(out, tuple) else out
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    prepool = prepool_layer(model)
    variants: dict[str, Callable[[], ActivationMonitor | None]] = {
        "none": lambda: None,
        f"prepool ({prepool})": lambda: ActivationMonitor(model, [prepool]),
        "all activations": lambda: ActivationMonitor(model),
        "all ReLUs (dispatch)": lambda: ActivationMonitor(model, method="dispatch"),
    }
    layer_counts: dict[str, int] = {}
    stats_ms: dict[str, float] = {"none": 0.0}
    for _ in range(2):  # warm-up, and count the layers each variant watches
        for name, attach in variants.items():
            monitor = attach()
            step()
            if monitor is not None:
                layer_counts[name] = len(monitor.layers)
                stats_ms[name] = 1e3 * statistics_cost(monitor, device)
                monitor.remove()

    times: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(args.repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            monitor = variants[name]()
            sync(device)
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step()
            sync(device)
            times[name].append((time.perf_counter() - t0) / args.steps)
            if monitor is not None:
                monitor.remove()

    base = statistics.median(times["none"])
    rows = []
    for name in names:
        median = statistics.median(times[name])
        ratios = [t / b for t, b in zip(times[name], times["none"])]  # same round: paired
        rows.append({"variant": name, "layers": layer_counts.get(name, 0), "stats_ms": stats_ms[name],
                     "stats_share": stats_ms[name] / (1e3 * base), "ms_per_step": 1e3 * median,
                     "ratio": median / base, "paired_ratio_median": statistics.median(ratios),
                     "min_ms": 1e3 * min(times[name]), "max_ms": 1e3 * max(times[name])})
    table = pd.DataFrame(rows)
    notes = [f"model {args.model}, batch {args.batch_size}, {args.image_size} px, {device}, "
             f"{torch.get_num_threads()} threads; median of {args.repeats} interleaved rounds of {args.steps} steps",
             "ratio: median step time / median without monitor; paired_ratio_median: median over rounds of the "
             "per-round ratio", "stats_ms: the monitor's own reductions for one step's activations, timed in "
             "isolation on tensors of the watched shapes (no hook dispatch); stats_share: that / the step time "
             "without monitor: a low-noise floor of the overhead on a busy machine",
             "target: prepool ratio <= 1.05"]
    print(render(table, args.format, title="Activation monitor overhead per training step", notes=notes), end="")
    return table


if __name__ == "__main__":
    main()
