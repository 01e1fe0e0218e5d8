"""Auxiliary classifiers (Szegedy et al., "Going deeper with convolutions", 2015, sec. 5; Szegedy et al.,
"Rethinking the Inception Architecture for Computer Vision", 2016, sec. 4).

The claims. GoogLeNet added two auxiliary classifiers on intermediate layers "to increase the gradient signal
that gets propagated back, and provide additional regularization"; their losses are weighted by 0.3 and the
heads are dropped at inference. The Inception-v3 paper revised this: auxiliary classifiers "did not result in
improved convergence early in the training: the training progression of network with and without side head
looks virtually identical before both models reach high accuracy. Near the end of training, the network with
the auxiliary branches starts to overtake the accuracy of the network without any auxiliary branch and reaches
a slightly higher plateau"; they "act as regularizer", "supported by the fact that the main classifier of the
network performs better if the side branch is batch-normalized or has a dropout layer" (sec. 4 and 7).

Arms (the body is the same in all of them, with BN):

- ``no_heads``: ``aux_logits=False``;
- ``heads``: ``aux_logits=True`` with the heads' batch norm removed (conv with bias, no BN), dropout kept;
- ``heads_bn``: ``aux_logits=True`` with batch norm on every layer of the heads, the fully connected one too
  (the Inception-v3 paper's "BN-auxiliary": "the fully connected layer of the auxiliary classifier is also
  batch-normalized, not just the convolutions").

The arms differ by the builders' ``aux_logits`` and ``aux_norm`` knobs alone (``aux_norm`` sets the heads'
normalisation apart from the body's).

Measured: the main head's training loss (the trainer's loss adds 0.3 x each head's), training and validation
accuracy of the main head against steps, the final validation accuracy and the train-minus-validation gap, and
the gradient norm reaching the lower layers (every parameter below the first auxiliary head's tap; and the first
convolution alone) at every logged step.

``run(config) -> DataFrame`` gives one row per point and logged step (``split`` "train"/"val") plus one ``final``
row per point; :func:`per_seed` one row per point; :func:`summarise` one row per arm; :func:`verdict` the answer.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import torch
from torch import nn

from analysis.callbacks import Callback
from analysis.experiments.runner import CPU_QUICK, GPU_FULL, check_config, run_points, tensors, threads, train_point
from analysis.experiments.spread_rule import (
    DOES_NOT_SHOW,
    INCONCLUSIVE_ONE_SEED,
    SHOWS,
    compare,
    finite_evals,
    learned_threshold,
)
from analysis.training.loss import split_outputs
from inception_models import create_model

__all__ = ["CONFIGS", "ARMS", "LOWER_LAYERS", "RESULT_COLUMNS", "PER_SEED_COLUMNS", "SUMMARY_COLUMNS",
           "aux_heads_of", "MainHeadLoss", "GradientReach", "make_points", "run_point", "run",
           "per_seed", "summarise", "verdict"]

NAME = "aux_heads"
ARMS = ("no_heads", "heads", "heads_bn")
ARM_LABELS = {"no_heads": "no aux heads", "heads": "aux heads, no BN", "heads_bn": "aux heads with BN"}
HEAD_NORM = {"heads": "none", "heads_bn": "bn"}

# The layers below the first auxiliary head's tap: the gradient GoogLeNet's heads were meant to strengthen.
LOWER_LAYERS: dict[str, tuple[str, ...]] = {
    "googlenet": ("conv1", "conv2", "conv3", "inception3a", "inception3b", "inception4a"),
    "googlenet_paper": ("conv1", "conv2", "conv3", "inception3a", "inception3b", "inception4a"),
    "inception_v3": ("stem", "inception_a", "reduction_a", "inception_b"),
}
FIRST_LAYER = {"googlenet": "conv1", "googlenet_paper": "conv1", "inception_v3": "stem"}
# "model": the builder's own initialisation (torchvision's truncated normal for GoogLeNet and Inception-v3);
# "pytorch": PyTorch's default for every conv and linear layer (reset_parameters), BN untouched.
INITS = ("model", "pytorch")

CONFIGS: dict[str, dict[str, Any]] = {
    # 2 CPU cores, minutes: torchvision's GoogLeNet topology (BN body) at a quarter width on 64 px shapes (the
    # heads tap 4x4 grids), three arms x 2 seeds = 6 runs of 400 steps, two one-thread workers. Measured single-
    # threaded on the shared machine: 0.14 CPU-s per step with heads. GoogLeNet learns these shapes slowly at this
    # size: with torchvision's initialisation (truncated normal, std 0.01) it stayed at chance for 200-300 steps
    # at SGD lr 0.001-0.01 and RMSProp lr 1e-3; with PyTorch's default initialisation and no dropout, SGD lr 0.02
    # reached 16% / 19% / 22% validation accuracy at 300 / 400 / 500 steps (no heads).
    "quick": dict(
        model="googlenet",
        width_mult=0.25,
        image_size=64,
        init="pytorch",
        drop_rate=0.0,
        arms=ARMS,
        aux_weight=0.3,
        seed=0,
        seeds=2,
        n_train=4000,
        n_val=500,
        steps=400,
        batch_size=32,
        optimizer="sgd",
        lr=0.02,
        momentum=0.9,
        rmsprop_decay=0.9,
        rmsprop_eps=1.0,
        weight_decay=0.0,
        schedule="constant",
        log_every=10,
        eval_every=50,
        early_fraction=0.34,
        **CPU_QUICK,
    ),
    "full": dict(
        model="inception_v3",
        width_mult=0.5,
        image_size=299,
        init="model",
        drop_rate=0.2,
        arms=ARMS,
        aux_weight=0.4,
        seed=0,
        seeds=3,
        n_train=10_000,
        n_val=2_000,
        steps=6_000,
        batch_size=64,
        optimizer="rmsprop",
        lr=0.045,
        momentum=0.9,
        rmsprop_decay=0.9,
        rmsprop_eps=1.0,
        weight_decay=4e-5,
        schedule="constant",
        log_every=50,
        eval_every=250,
        early_fraction=0.34,
        **GPU_FULL,
    ),
}

RESULT_COLUMNS = ["arm", "seed", "split", "step", "loss", "main_loss", "accuracy", "grad_norm_lower",
                  "grad_norm_first", "time", "cpu_s", "train_accuracy", "diverged", "diverged_step"]
_NUMERIC = ["seed", "step", "loss", "main_loss", "accuracy", "grad_norm_lower", "grad_norm_first", "time", "cpu_s",
            "train_accuracy", "diverged_step"]
PER_SEED_COLUMNS = ["arm", "seed", "early_step", "early_val_accuracy", "final_val_accuracy", "final_train_accuracy",
                    "generalisation_gap", "final_main_loss", "grad_norm_lower", "grad_norm_first", "diverged"]
SUMMARY_COLUMNS = ["arm", "seeds", "early_val_accuracy_mean", "final_val_accuracy_mean", "final_val_accuracy_min",
                   "final_val_accuracy_max", "final_train_accuracy_mean", "generalisation_gap_mean",
                   "final_main_loss_mean", "grad_norm_lower_mean", "grad_norm_first_mean"]

_POINT_KEYS = ("model", "width_mult", "image_size", "init", "drop_rate", "aux_weight", "n_train", "n_val", "steps",
               "batch_size", "optimizer", "lr", "momentum", "rmsprop_decay", "rmsprop_eps", "weight_decay", "schedule",
               "log_every", "eval_every", "device", "threads")


# ------------------------------------------------------------------------------------------------ the heads
def aux_heads_of(model: nn.Module) -> list[nn.Module]:
    """The auxiliary classifiers of one of our models (GoogLeNet's ``aux1``/``aux2``, Inception-v3's
    ``aux_head``), in order; empty when it was built without them."""
    return [head for name in ("aux1", "aux2", "aux_head") if (head := getattr(model, name, None)) is not None]


class MainHeadLoss(nn.Module):
    """The trainer's criterion, unchanged, that also keeps the main head's plain cross-entropy of the last call
    (``last_main``): with aux heads on, the trainer's loss is main + weight x each head's."""

    def __init__(self, criterion: nn.Module) -> None:
        super().__init__()
        self.criterion = criterion
        self.last_main = math.nan

    def forward(self, outputs: Any, targets: torch.Tensor) -> torch.Tensor:
        logits, _ = split_outputs(outputs)
        self.last_main = float(nn.functional.cross_entropy(logits.detach().float(), targets))
        return self.criterion(outputs, targets)


class GradientReach(Callback):
    """A trainer callback: at every logged step, the L2 norm of the gradient of the parameters of ``lower``
    (module names: the layers below the first head's tap) and of ``first`` (the first conv), and the main
    head's loss from a :class:`MainHeadLoss` criterion."""

    def __init__(self, model: nn.Module, lower: Sequence[str], first: str, log_every: int) -> None:
        self.lower = [p for name in lower for p in getattr(model, name).parameters()]
        self.first = list(getattr(model, first).parameters())
        self.log_every = int(log_every)

    @staticmethod
    def _norm(params: list[torch.Tensor]) -> float:
        grads = [p.grad.detach().float().norm() for p in params if p.grad is not None]
        return float(torch.stack(grads).norm()) if grads else math.nan

    def on_after_backward(self, trainer: Any, batch: Any, loss: Any) -> None:
        step = trainer.step + 1  # the step whose row this is
        if step % self.log_every == 0 or step >= trainer.total_steps:
            criterion = trainer.criterion
            trainer.log_metrics({"grad_norm_lower": self._norm(self.lower), "grad_norm_first": self._norm(self.first),
                                 "main_loss": getattr(criterion, "last_main", math.nan)})


# ------------------------------------------------------------------------------------------------- running
def _check_config(config: dict[str, Any]) -> None:
    check_config(NAME, config, CONFIGS["quick"])
    if config["model"] not in LOWER_LAYERS:
        raise ValueError(f"model {config['model']!r} has no auxiliary heads here; use one of {sorted(LOWER_LAYERS)}")
    arms = list(config["arms"])
    if "no_heads" not in arms or len(arms) < 2 or any(a not in ARMS for a in arms):
        raise ValueError(f"arms must hold 'no_heads' and at least one of 'heads', 'heads_bn', got {arms}")
    if config["init"] not in INITS:
        raise ValueError(f"init={config['init']!r} is not supported; use one of {list(INITS)}")
    if not 0.0 < float(config["early_fraction"]) <= 1.0:
        raise ValueError(f"early_fraction must be in (0, 1], got {config['early_fraction']}")


def make_points(config: dict[str, Any]) -> list[dict[str, Any]]:
    """The sweep points: arm x seed."""
    _check_config(config)
    common = {k: config[k] for k in _POINT_KEYS}
    return [{**common, "arm": arm, "seed": int(config["seed"]) + k}
            for arm in config["arms"] for k in range(int(config["seeds"]))]


def build_model(point: dict[str, Any]) -> nn.Module:
    """The point's network: the body with BN, aux heads per the arm, the configured dropout and initialisation
    (the heads are edited before the initialisation, so every arm's layers start the same way)."""
    heads = point["arm"] != "no_heads"
    knobs = {"aux_norm": HEAD_NORM[point["arm"]]} if heads else {}
    model = create_model(point["model"], num_classes=10, width_mult=point["width_mult"], aux_logits=heads,
                         drop_rate=point["drop_rate"], **knobs)
    if point["init"] == "pytorch":
        # Body and main classifier first, from the seed, then the heads: every arm of a seed starts from the
        # same body, so the arms differ by their heads alone.
        torch.manual_seed(point["seed"])
        in_heads = {id(m) for head in aux_heads_of(model) for m in head.modules()}
        layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        for module in [m for m in layers if id(m) not in in_heads] + [m for m in layers if id(m) in in_heads]:
            module.reset_parameters()
    return model


@torch.no_grad()
def _accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, device: Any) -> float:
    was_training = model.training
    model.eval()
    try:
        correct = sum(int((model(images[i:i + 256].to(device)).argmax(1).cpu() == labels[i:i + 256]).sum())
                      for i in range(0, len(images), 256))
    finally:
        model.train(was_training)
    return correct / max(len(labels), 1)


def run_point(point: dict[str, Any]) -> pd.DataFrame:
    """Train one (arm, seed); return its logged rows and a ``final`` row (:data:`RESULT_COLUMNS`)."""
    with threads(int(point["threads"])):
        torch.manual_seed(point["seed"])
        model = build_model(point)
        reach = GradientReach(model, LOWER_LAYERS[point["model"]], FIRST_LAYER[point["model"]], point["log_every"])

        def wrap_criterion(trainer: Any) -> None:
            trainer.criterion = MainHeadLoss(trainer.criterion)

        outcome = train_point(point, model, callbacks=[reach], setup=wrap_criterion)
        final: dict[str, Any] = {"split": "final", "step": outcome.trainer.step}
        if not outcome.diverged:
            # Accuracy on as many training images as the validation set has, in eval mode: the train-val gap.
            images, labels = tensors("train", int(point["n_train"]), int(point["image_size"]))
            n = int(point["n_val"])
            final["train_accuracy"] = _accuracy(outcome.trainer.model, images[:n], labels[:n], outcome.trainer.device)
            final["accuracy"] = outcome.trainer.evaluate()["accuracy"]
    frame = outcome.curve(["split", "step", "loss", "main_loss", "accuracy", "grad_norm_lower", "grad_norm_first",
                           "time", "cpu_s"])
    frame = pd.concat([frame, pd.DataFrame([final])], ignore_index=True)
    frame = frame.assign(arm=point["arm"], seed=point["seed"], diverged=outcome.diverged,
                         diverged_step=outcome.diverged_step)
    return frame.reindex(columns=RESULT_COLUMNS)


def run(config: dict[str, Any], *, results_dir: str | Path | None = None, progress: bool = True) -> pd.DataFrame:
    """Train every (arm, seed) of ``config`` (resumable in ``results_dir``) and return ``point_id`` +
    :data:`RESULT_COLUMNS`: one row per point and logged step (train) or evaluation (val), one ``final`` row
    per point (main-head validation and training accuracy in eval mode)."""
    return run_points(make_points(config), run_point, results_dir, workers=int(config["workers"]),
                      isolate=bool(config["isolate"]), progress=progress, desc=NAME,
                      columns=RESULT_COLUMNS, numeric=_NUMERIC, flags=["diverged"])


# ----------------------------------------------------------------------------------------------- analysis
def per_seed(results: pd.DataFrame, early_fraction: float) -> pd.DataFrame:
    """One row per (arm, seed): validation accuracy at the first evaluation at or after ``early_fraction`` of the
    run (early training), the final validation and training accuracy and their gap, the last main-head training
    loss, and the mean gradient norms over the logged steps."""
    rows = []
    for (arm, seed), grp in results.groupby(["arm", "seed"], sort=False):
        val = finite_evals(grp[grp["split"] == "val"]).sort_values("step")
        train = grp[grp["split"] == "train"].sort_values("step")
        final = grp[grp["split"] == "final"]
        total = float(final["step"].iloc[0]) if len(final) else float(grp["step"].max())
        early = val[val["step"] >= early_fraction * total]
        final_val = float(final["accuracy"].iloc[0]) if len(final) else math.nan
        final_train = float(final["train_accuracy"].iloc[0]) if len(final) else math.nan
        rows.append({
            "arm": arm, "seed": int(seed),
            "early_step": float(early["step"].iloc[0]) if len(early) else math.nan,
            "early_val_accuracy": float(early["accuracy"].iloc[0]) if len(early) else math.nan,
            "final_val_accuracy": final_val, "final_train_accuracy": final_train,
            "generalisation_gap": final_train - final_val,
            "final_main_loss": float(train["main_loss"].dropna().iloc[-1]) if train["main_loss"].notna().any()
            else math.nan,
            "grad_norm_lower": float(train["grad_norm_lower"].mean()),
            "grad_norm_first": float(train["grad_norm_first"].mean()),
            "diverged": bool(grp["diverged"].iloc[0]),
        })
    return pd.DataFrame(rows, columns=PER_SEED_COLUMNS)


def summarise(seeds: pd.DataFrame) -> pd.DataFrame:
    """One row per arm: means over seeds (and the final validation accuracy's min and max)."""
    rows = []
    for arm, grp in seeds.groupby("arm", sort=False):
        rows.append({"arm": arm, "seeds": len(grp), "early_val_accuracy_mean": grp["early_val_accuracy"].mean(),
                     "final_val_accuracy_mean": grp["final_val_accuracy"].mean(),
                     "final_val_accuracy_min": grp["final_val_accuracy"].min(),
                     "final_val_accuracy_max": grp["final_val_accuracy"].max(),
                     "final_train_accuracy_mean": grp["final_train_accuracy"].mean(),
                     "generalisation_gap_mean": grp["generalisation_gap"].mean(),
                     "final_main_loss_mean": grp["final_main_loss"].mean(),
                     "grad_norm_lower_mean": grp["grad_norm_lower"].mean(),
                     "grad_norm_first_mean": grp["grad_norm_first"].mean()})
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def verdict(seeds: pd.DataFrame, *, n_val: int, underfit_gap: float = 0.05) -> str:
    """The answer from a :func:`per_seed` table. Headline: do auxiliary heads act as regularisers, i.e. is the
    main head's final validation accuracy higher with heads (``heads``) than without? Then, each with its own
    word: do heads with BN beat heads without (the Inception-v3 paper's support for the regulariser reading);
    is there no early speed-up (heads' early validation accuracy not above the no-heads arm's beyond the seed
    spread: the v3 paper's "virtually identical" early progression); and the gradient norm reaching the lower
    layers with and without heads (GoogLeNet's motivation). When no run's train-minus-validation accuracy gap
    exceeds ``underfit_gap`` the line says so: a regulariser cannot show on nets that underfit. Arms that did not
    learn beyond chance make it inconclusive; diverged runs are left out."""
    if seeds.empty:
        raise ValueError("verdict needs at least one per-seed row")
    ok = seeds[~seeds["diverged"].astype(bool)]
    none = ok[ok["arm"] == "no_heads"]
    heads_arm = "heads" if (ok["arm"] == "heads").any() else "heads_bn"
    heads = ok[ok["arm"] == heads_arm]
    if none.empty or heads.empty:
        return "inconclusive: the sweep lacks a finished run with and without aux heads"
    threshold = learned_threshold(n_val)
    worst = min(none["final_val_accuracy"].mean(), heads["final_val_accuracy"].mean())
    if not worst > threshold:
        return (f"inconclusive: the networks did not learn beyond chance (final validation accuracy "
                f"{none['final_val_accuracy'].mean():.3f} without, {heads['final_val_accuracy'].mean():.3f} with "
                f"heads; chance + 3 SE = {threshold:.3f})")
    label = ARM_LABELS[heads_arm]
    main = compare(heads["final_val_accuracy"], none["final_val_accuracy"])
    parts = [f"{main.word}: " + main.describe(f"final validation accuracy with {label} vs without heads")]
    bn = ok[ok["arm"] == "heads_bn"]
    if heads_arm == "heads" and not bn.empty:
        with_bn = compare(bn["final_val_accuracy"], heads["final_val_accuracy"])
        parts.append(f"BN in the heads helps: {with_bn.word}: "
                     + with_bn.describe("final validation accuracy heads with BN vs without"))
    early = compare(heads["early_val_accuracy"], none["early_val_accuracy"])
    if early.word == SHOWS:
        no_speedup = f"{DOES_NOT_SHOW} (heads ahead early beyond the seed spread)"
    elif early.seeds < 2:
        no_speedup = INCONCLUSIVE_ONE_SEED
    else:
        no_speedup = f"{SHOWS} (heads not ahead early beyond the seed spread)"
    parts.append(f"no early speed-up (v3 paper): {no_speedup}: "
                 + early.describe(f"validation accuracy at step {heads['early_step'].min():.0f}, heads vs none"))
    gap = ok["generalisation_gap"].abs().max()
    if gap <= underfit_gap:
        parts.append(f"note: every net underfits (train minus validation accuracy at most {gap:.3f}), so a "
                     "regulariser has nothing to act on here; an accuracy gain at this budget is an optimisation "
                     "effect")
    ratio = heads["grad_norm_lower"].mean() / none["grad_norm_lower"].mean()
    parts.append(f"gradient norm below the first head: {heads['grad_norm_lower'].mean():.3g} with heads vs "
                 f"{none['grad_norm_lower'].mean():.3g} without (x{ratio:.2f}; first conv x"
                 f"{heads['grad_norm_first'].mean() / none['grad_norm_first'].mean():.2f})")
    return "; ".join(parts)
