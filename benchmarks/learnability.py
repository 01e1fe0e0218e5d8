"""Is the embedded synthetic data set learnable, and not trivially so? At each difficulty?

    python benchmarks/learnability.py                          # 2 threads, 5 minutes of training, then the probes
    python benchmarks/learnability.py --difficulty k100 --width-mult 0.5 --steps 300 --threads 1
    python benchmarks/learnability.py --ladder --threads 1     # every preset x width 0.25, 0.5: a table

Trains ``small_inception`` (BN, default knobs, ``num_classes`` from the data) on
:func:`analysis.data.synthetic.make_synthetic` at 32x32 with a minimal loop of its own (SGD, lr 0.05, momentum 0.9,
Nesterov, weight decay 5e-4, batch 64, channels_last, linear warm-up over 5% of the steps then cosine decay, no
augmentation; 10,000 training images) and evaluates top-1 on 2,000 validation images every ``--eval-every``
steps. The recipe was picked by measurement on the default data: at batch 128 (145 steps in the same time) lr
0.1 was unstable (69% to 96% depending on the schedule length) and lr 0.05 ended at 91% for seed 1, too close
to the 90% the issue asks for; batch 64 ended at 93-95%. Training time is the wall time of the training steps
alone (evaluation excluded) and is reported beside the step count, since a shared machine's step time says
more about the machine than about the data. A single run stops at ``--steps`` or when the training time passes
``--time-limit``.

``--ladder`` runs every difficulty of ``--difficulties`` (default: all presets of
:data:`analysis.data.difficulty.DIFFICULTIES`) at every ``--widths`` x ``--steps-list`` (each its own cosine schedule, no time
limit) and prints one table: final validation accuracy against chance (1/K), the probes below, the seconds
of each run (wall time of the training steps, of the whole run with its evaluation, and the process's CPU
time, which a busy shared machine inflates least), and whether the difficulty meets the goal of issue 16
(see :func:`goal`).

Sanity checks, which must stay far below the network: multinomial logistic regression on the raw pixels
(3,072 inputs) and on the per-channel image means and standard deviations (6 inputs), both fitted on the
first ``--probe-n`` training images with L-BFGS and weight decay picked on the validation split. With hue
classes the colour probe can read the hue bin, so its ceiling is a tenth (the hue tells one class in ten
apart); a network at that level has learned colour and no shape.

Measured (seed 0, one thread per run on 2 shared cores; CPU seconds of the run, evaluation included; the probes
on 4,000 images):

    difficulty  K    width 0.25 x 300 steps   width 0.5 x 300 steps   longer, width 0.25          probes px / colour
    default     10   93.9% (92.4% rerun) 47 s   97.4% 114 s                                        12.9% / 12.6%
    hard        10   79.2% (seed 1: 80.3%) 46 s 89.9% 111 s             600 steps 94.3% 85 s        12.3% / 12.0%
    harder      10   36.2% 45 s                 80.2% 109 s             600 steps 87.2% 88 s        12.6% / 11.5%
    k10         10   97.6% 45 s                 99.2% 112 s                                        12.2% / 12.2%
    k20         20   77.1% (87.6% twice) 45 s   96.0% 110 s                                        17.1% / 12.7%
    k50         50   41.6% (40.1%) 44 s         61.2% 111 s             600 steps 68.1% 89 s        14.4% / 11.9%
    k100        100  18.8% (19.5%) 46 s         24.8% 114 s             600: 51.3% 85 s, 800: 73.7%  10.9% / 8.2%
                                                                        117 s, 1000: 92.8% 137 s

In 70-90%: hard (0.25 x 300, 0.5 x 300), harder (0.5 x 300, 0.25 x 600), k20 (0.25 x 300, unsteady), k100
(0.25 x 800). K >= 100 learns far above chance (1%) and above both probes from 300 steps on. The same seed
does not always give the same accuracy here (k20: 87.6% in two runs, 77.1% in a third that ran the probes
first; in-process repeats matched bit for bit), so compare difficulties over seeds, not single runs.
"""

from __future__ import annotations

import argparse
import math
import time

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from analysis.data.difficulty import DIFFICULTIES
from analysis.data.synthetic import SyntheticShapes, make_synthetic
from analysis.report.tables import render
from analysis.training.sampling import make_loader
from inception_models import create_model

TARGET_ACCURACY = 0.90  # issue 5: small_inception reaches it within 5 minutes on 2 CPU cores
# Issue 16: a level is useful to compare arms when the reference net ends at 70-90% (room both ways); with
# K >= 100 classes it must at least learn clearly (3x chance) and beat the colour probe (more than hue alone).
GOAL_RANGE = (0.70, 0.90)
GOAL_TIMES_CHANCE = 3.0


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 500) -> float:
    model.eval()
    correct = sum(int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum()) for i in range(0, len(x), batch))
    model.train()
    return correct / len(x)


def train_small_inception(train: SyntheticShapes, val_x: torch.Tensor, val_y: torch.Tensor, *, width_mult: float,
                          steps: int, lr: float, batch_size: int, seed: int, channels_last: bool, eval_every: int,
                          time_limit: float = math.inf) -> pd.DataFrame:
    """The validation curve of one run: a row per evaluation (step, training seconds, loss, accuracy)."""
    torch.manual_seed(seed)
    model = create_model("small_inception", num_classes=train.num_classes, width_mult=width_mult)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    warmup = max(1, steps // 20)

    def lr_at(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        return 0.5 * lr * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    loader = make_loader(train, batch_size, shuffle=True, seed=seed, drop_last=True)
    rows, step, train_time, epoch = [], 0, 0.0, 0
    model.train()
    while step < steps and train_time < time_limit:
        loader.sampler.set_epoch(epoch)
        for x, y in loader:
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            t0 = time.perf_counter()
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            train_time += time.perf_counter() - t0
            step += 1
            if step % eval_every == 0 or step == steps or train_time >= time_limit:
                acc = accuracy(model, val_x, val_y)
                rows.append({"step": step, "train_s": round(train_time, 1), "s_per_step": round(train_time / step, 3),
                             "loss": round(loss.item(), 4), "val_acc": round(acc, 4)})
                print(rows[-1], flush=True)
            if step >= steps or train_time >= time_limit:
                break
        epoch += 1
    return pd.DataFrame(rows)


def logistic_probe(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
                   num_classes: int, decays: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1)) -> tuple[float, float]:
    """Best validation accuracy of an L2-regularised multinomial logistic regression, and its weight decay."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, val_x = (train_x - mean) / std, (val_x - mean) / std
    best = (0.0, decays[0])
    for decay in decays:
        linear = nn.Linear(train_x.shape[1], num_classes)
        opt = torch.optim.LBFGS(linear.parameters(), lr=1, max_iter=200, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = F.cross_entropy(linear(train_x), train_y) + decay * linear.weight.pow(2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            acc = float((linear(val_x).argmax(1) == val_y).float().mean())
        best = max(best, (acc, decay))
    return best


PROBE_FEATURES = {
    "raw pixels (3072)": lambda x: x.flatten(1),
    "channel mean+std (6)": lambda x: torch.cat([x.mean((2, 3)), x.std((2, 3))], 1),
}


def probes(train: SyntheticShapes, val_x: torch.Tensor, val_y: torch.Tensor, probe_n: int) -> pd.DataFrame:
    tx, ty = train.images(range(min(probe_n, len(train)))), train.labels[:probe_n]
    rows = []
    for name, features in PROBE_FEATURES.items():
        acc, decay = logistic_probe(features(tx), ty, features(val_x), val_y, train.num_classes)
        rows.append({"probe": f"logistic regression on {name}", "val_acc": round(acc, 4), "weight_decay": decay})
        print(rows[-1], flush=True)
    return pd.DataFrame(rows)


def goal(val_acc: float, num_classes: int, colour_probe: float) -> str:
    """Which goal of issue 16 a final accuracy meets: "70%-90%", ">=3x chance" (K >= 100 only, and above the
    colour probe), or "-"."""
    lo, hi = GOAL_RANGE
    if lo <= val_acc <= hi:
        return f"{lo:.0%}-{hi:.0%}"
    above_colour = math.isnan(colour_probe) or val_acc > colour_probe  # NaN: the probes were skipped
    if num_classes >= 100 and val_acc >= GOAL_TIMES_CHANCE / num_classes and above_colour:
        return f">={GOAL_TIMES_CHANCE:g}x chance"
    return "-"


def data(args: argparse.Namespace, difficulty: str) -> tuple[SyntheticShapes, torch.Tensor, torch.Tensor]:
    t0 = time.perf_counter()
    train = make_synthetic("train", args.train_n, 32, seed=args.seed, difficulty=difficulty)
    val_x, val_y = make_synthetic("val", args.val_n, 32, seed=args.seed, difficulty=difficulty).tensors()
    print(f"{difficulty}: {train.num_classes} classes, rendered in {time.perf_counter() - t0:.1f} s", flush=True)
    return train, val_x, val_y


def ladder(args: argparse.Namespace) -> pd.DataFrame:
    """One row per difficulty x width x steps: the final validation accuracy, the probes, the seconds."""
    rows = []
    for difficulty in args.difficulties or list(DIFFICULTIES):
        train, val_x, val_y = data(args, difficulty)
        probe = probes(train, val_x, val_y, args.probe_n)["val_acc"].tolist() if args.probe_n else [math.nan] * 2
        for width in args.widths:
            for steps in args.steps_list:
                t0, cpu0 = time.perf_counter(), time.process_time()
                curve = train_small_inception(train, val_x, val_y, width_mult=width, steps=steps, lr=args.lr,
                                              batch_size=args.batch_size, seed=args.seed,
                                              channels_last=args.channels_last, eval_every=steps)
                final = float(curve["val_acc"].iloc[-1])
                rows.append({"difficulty": difficulty, "classes": train.num_classes, "width_mult": width,
                             "steps": steps, "val_acc": final, "chance": round(1 / train.num_classes, 4),
                             "pixel_probe": probe[0], "colour_probe": probe[1],
                             "train_s": float(curve["train_s"].iloc[-1]),
                             "run_s": round(time.perf_counter() - t0, 1),
                             "cpu_s": round(time.process_time() - cpu0, 1),
                             "goal": goal(final, train.num_classes, probe[1])})
                print(rows[-1], flush=True)
    return pd.DataFrame(rows)


def single(args: argparse.Namespace) -> None:
    train, val_x, val_y = data(args, args.difficulty)
    if not args.skip_train:
        curve = train_small_inception(train, val_x, val_y, width_mult=args.width_mult, steps=args.steps, lr=args.lr,
                                      batch_size=args.batch_size, seed=args.seed, channels_last=args.channels_last,
                                      eval_every=args.eval_every, time_limit=args.time_limit)
        print(render(curve, "markdown", title=f"small_inception (width {args.width_mult}) on synthetic:"
                                              f"{args.difficulty}, 32 px, batch {args.batch_size}"))
        hit = curve[curve["val_acc"] >= TARGET_ACCURACY]
        if len(hit):
            first = hit.iloc[0]
            print(f"reached {TARGET_ACCURACY:.0%} validation accuracy at step {first['step']} after "
                  f"{first['train_s']:.0f} s of training on {args.threads} thread(s); "
                  f"final {curve['val_acc'].iloc[-1]:.1%}")
        else:
            print(f"did NOT reach {TARGET_ACCURACY:.0%} validation accuracy (best {curve['val_acc'].max():.1%}) in "
                  f"{curve['train_s'].iloc[-1]:.0f} s")
    if not args.skip_probes:
        print(render(probes(train, val_x, val_y, args.probe_n), "markdown",
                     title="linear probes (sanity: must stay far below the network)"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--difficulty", default="default", help="a preset or spec (analysis.data.difficulty.parse_difficulty)")
    parser.add_argument("--width-mult", type=float, default=1.0)
    parser.add_argument("--steps", type=int, default=290)
    parser.add_argument("--time-limit", type=float, default=300.0, help="seconds of training (evaluation excluded)")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--train-n", type=int, default=10_000)
    parser.add_argument("--val-n", type=int, default=2_000)
    parser.add_argument("--probe-n", type=int, default=4_000, help="training images for the probes (0: no probes)")
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--skip-probes", action="store_true")
    parser.add_argument("--ladder", action="store_true", help="every difficulty x width x steps, one table")
    parser.add_argument("--difficulties", nargs="+", help="the ladder's difficulties (default: every preset)")
    parser.add_argument("--widths", nargs="+", type=float, default=[0.25, 0.5], help="the ladder's width_mult values")
    parser.add_argument("--steps-list", nargs="+", type=int, default=[300], help="the ladder's step counts")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.ladder:
        table = ladder(args)
        print(render(table, "markdown", title=f"small_inception on the synthetic difficulties, 32 px, batch "
                                              f"{args.batch_size}, lr {args.lr}, seed {args.seed}, "
                                              f"{args.threads} thread(s)"))
    else:
        single(args)


if __name__ == "__main__":
    main()
