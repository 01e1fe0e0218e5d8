"""Steps per second of the whole trainer (data, forward, loss, backward, clipping, optimiser, logging), not of a
bare training step: what the trainer's own overhead costs on top of the model.

    python benchmarks/trainer_steps.py                                   # small_inception, 32 px, CPU, 1 thread
    python benchmarks/trainer_steps.py --optimizer rmsprop --grad-clip 2 --log-every 10
    python benchmarks/trainer_steps.py --device cuda --clock wall --model inception_v3 --image-size 299 --batch-size 64

The data is an ``(images, labels)`` tensor pair (as the experiments hand the trainer), the recipe the
Inception-v3 paper's RMSProp with clipping by default. ``--repeats`` fits run one after the other; the table
gives each fit's steps/s over its timed steps (the first ``--warmup`` steps of every fit are left out, as
they allocate) and the median.
"""

from __future__ import annotations

import argparse
import statistics
import time

import pandas as pd
import torch

from analysis.callbacks import Callback
from analysis.report.tables import render


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


class StepClock(Callback):
    """The clock's time at every finished step (synchronised on CUDA so that a step's time is its own)."""

    def __init__(self, clock: str) -> None:
        self.now = CLOCKS[clock]
        self.times: list[float] = []

    def on_step_end(self, trainer, batch, loss) -> None:
        if trainer.device.type == "cuda":
            torch.cuda.synchronize(trainer.device)
        self.times.append(self.now())


def one_fit(args: argparse.Namespace) -> float:
    """Steps/s of one fit over its steps after the warm-up."""
    from analysis.training.config import TrainConfig
    from analysis.training.trainer import Trainer, seed_everything
    from inception_models import create_model

    g = torch.Generator().manual_seed(0)
    n = args.batch_size * 8
    data = (torch.randn(n, 3, args.image_size, args.image_size, generator=g), torch.randint(0, 10, (n,), generator=g))
    seed_everything(0)
    model = create_model(args.model, num_classes=10)
    config = TrainConfig.preset("inception_v3", steps=args.steps, batch_size=args.batch_size, device=args.device,
                                log_every=args.log_every, progress=False, grad_clip=args.grad_clip,
                                label_smoothing=0.1, optimizer=args.optimizer)
    clock = StepClock(args.clock)
    Trainer(model, config, data, callbacks=[clock]).fit()
    timed = clock.times[args.warmup:]
    return (len(timed) - 1) / (timed[-1] - timed[0])


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="small_inception")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--optimizer", choices=("sgd", "rmsprop"), default="rmsprop")
    parser.add_argument("--grad-clip", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=tuple(CLOCKS), default="cpu",
                        help="the process's CPU seconds (default: a shared CPU; with --threads 1) or wall seconds")
    parser.add_argument("--format", default="table")
    args = parser.parse_args(argv)
    if args.clock == "cpu" and args.device != "cpu":
        raise SystemExit("error: --clock cpu times CPU seconds; use --clock wall on a GPU")
    if args.steps <= args.warmup + 1:
        raise SystemExit(f"error: --steps ({args.steps}) must exceed --warmup + 1 ({args.warmup + 1})")
    torch.set_num_threads(args.threads)
    rates = [one_fit(args) for _ in range(args.repeats)]
    table = pd.DataFrame([{"model": args.model, "device": args.device, "image_size": args.image_size,
                           "batch_size": args.batch_size, "optimizer": args.optimizer, "log_every": args.log_every,
                           "steps_per_s_median": statistics.median(rates), "steps_per_s_runs": rates}])
    notes = [f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.clock} clock; {args.steps} steps per fit, the first "
             f"{args.warmup} untimed; {args.repeats} fits"]
    print(render(table, args.format, title="Trainer steps per second", notes=notes), end="")
    return table


if __name__ == "__main__":
    main()
