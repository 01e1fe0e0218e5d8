"""Is the embedded synthetic data set learnable, and not trivially so?

    python benchmarks/learnability.py                 # 2 threads, 5 minutes of training, then the probes

Trains ``small_inception`` (BN, default knobs) on :func:`analysis.data.synthetic.make_synthetic` at 32x32 with a minimal
loop of its own (SGD, lr 0.05, momentum 0.9, Nesterov, weight decay 5e-4, batch 64, channels_last, linear
warm-up then cosine decay over 290 steps, no augmentation: 1.9 epochs of the 10,000 training images) and
evaluates top-1 on the validation split every ``--eval-every`` steps. The recipe was picked by measurement:
at batch 128 (145 steps in the same time) lr 0.1 was unstable (69% to 96% depending on the schedule length)
and lr 0.05 ended at 91% for seed 1, too close to the 90% the issue asks for; batch 64 ended at 93-95%. Training time is the
wall time of the training steps alone (evaluation excluded) and is reported beside the step count, since a
shared machine's step time says more about the machine than about the data. The run stops at ``--steps`` or
when the training time passes ``--time-limit``.

Sanity checks, which must stay far below the network: multinomial logistic regression on the raw pixels
(3,072 inputs) and on the per-channel image means and standard deviations (6 inputs), both fitted on the
training split with L-BFGS and weight decay picked on the validation split.
"""

from __future__ import annotations

import argparse
import math
import time

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from analysis.data.synthetic import make_synthetic
from analysis.training.sampling import make_loader
from analysis.report.tables import render
from inception_models import create_model

TARGET_ACCURACY = 0.90  # issue 5: small_inception reaches it within 5 minutes on 2 CPU cores


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 500) -> float:
    model.eval()
    correct = sum(int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum()) for i in range(0, len(x), batch))
    model.train()
    return correct / len(x)


def train_small_inception(args: argparse.Namespace) -> pd.DataFrame:
    train = make_synthetic("train", args.train_n, 32, seed=args.seed)
    val_x, val_y = make_synthetic("val", args.val_n, 32, seed=args.seed).tensors()
    torch.manual_seed(args.seed)
    model = create_model("small_inception", num_classes=10)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    warmup = max(1, args.steps // 20)

    def lr_at(step: int) -> float:
        if step < warmup:
            return args.lr * (step + 1) / warmup
        return 0.5 * args.lr * (1 + math.cos(math.pi * (step - warmup) / max(1, args.steps - warmup)))

    loader = make_loader(train, args.batch_size, shuffle=True, seed=args.seed, drop_last=True)
    rows, step, train_time, epoch = [], 0, 0.0, 0
    model.train()
    while step < args.steps and train_time < args.time_limit:
        loader.sampler.set_epoch(epoch)
        for x, y in loader:
            if args.channels_last:
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
            if step % args.eval_every == 0 or step == args.steps or train_time >= args.time_limit:
                acc = accuracy(model, val_x, val_y)
                rows.append({"step": step, "train_s": round(train_time, 1), "s_per_step": round(train_time / step, 2),
                             "loss": round(loss.item(), 4), "val_acc": round(acc, 4)})
                print(rows[-1], flush=True)
            if step >= args.steps or train_time >= args.time_limit:
                break
        epoch += 1
    return pd.DataFrame(rows)


def logistic_probe(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
                   decays: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1)) -> tuple[float, float]:
    """Best validation accuracy of an L2-regularised multinomial logistic regression, and its weight decay."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, val_x = (train_x - mean) / std, (val_x - mean) / std
    best = (0.0, decays[0])
    for decay in decays:
        linear = nn.Linear(train_x.shape[1], 10)
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


def probes(args: argparse.Namespace) -> pd.DataFrame:
    tx, ty = make_synthetic("train", args.train_n, 32, seed=args.seed).tensors()
    vx, vy = make_synthetic("val", args.val_n, 32, seed=args.seed).tensors()
    rows = []
    for name, f in (("raw pixels (3072)", lambda x: x.flatten(1)),
                    ("channel mean+std (6)", lambda x: torch.cat([x.mean((2, 3)), x.std((2, 3))], 1))):
        acc, decay = logistic_probe(f(tx), ty, f(vx), vy)
        rows.append({"probe": f"logistic regression on {name}", "val_acc": round(acc, 4), "weight_decay": decay})
        print(rows[-1], flush=True)
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=290)
    parser.add_argument("--time-limit", type=float, default=300.0, help="seconds of training (evaluation excluded)")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--train-n", type=int, default=10_000)
    parser.add_argument("--val-n", type=int, default=2_000)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--skip-probes", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not args.skip_train:
        curve = train_small_inception(args)
        print(render(curve, "markdown", title=f"small_inception on synthetic shapes, 32 px, batch {args.batch_size}"))
        hit = curve[curve["val_acc"] >= TARGET_ACCURACY]
        if len(hit):
            first = hit.iloc[0]
            print(f"reached {TARGET_ACCURACY:.0%} validation accuracy at step {first['step']} after "
                  f"{first['train_s']:.0f} s of training on {args.threads} thread(s); final {curve['val_acc'].iloc[-1]:.1%}")
        else:
            print(f"did NOT reach {TARGET_ACCURACY:.0%} validation accuracy (best {curve['val_acc'].max():.1%}) in "
                  f"{curve['train_s'].iloc[-1]:.0f} s")
    if not args.skip_probes:
        print(render(probes(args), "markdown", title="linear probes (sanity: must stay far below 90%)"))


if __name__ == "__main__":
    main()
