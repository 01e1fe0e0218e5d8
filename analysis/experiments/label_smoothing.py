"""Label smoothing (Szegedy et al., "Rethinking the Inception Architecture for Computer Vision", 2016, sec. 7).

The claim: "label-smoothing regularization" (LSR) with the uniform prior, ``q'(k) = (1 - eps) [k = y] + eps / K``
and eps = 0.1, improved ImageNet top-1 and top-5 error by about 0.2% absolute. The paper's mechanism: with
one-hot targets the maximum likelihood drives "the logit corresponding to the ground-truth label to become much
larger than all other logits", which invites over-fitting and over-confidence; with smoothed targets the
cross-entropy has a finite optimum, the correct logit above every other by ``log(1 + K (1 - eps) / eps)``
(:func:`~analysis.experiments.calibration.smoothing_optimal_gap`). Calibration is not the paper's claim
(Mueller, Kornblith & Hinton 2019 and Guo et al. 2017 measured it); it is reported, expected calibration error
with 15 bins and a reliability diagram, because the mechanism predicts it.

Why many classes: eps / K is the mass each wrong class gets. With K = 10 it is 0.01, a hundred times ImageNet's
1e-4, and the optimum gap is 4.5 logits against ImageNet's 9.1; the standard tier uses the synthetic shapes with
K = 100 classes (``difficulty="k100"``: ten shapes x ten hue bins; eps / K = 1e-3, optimum gap 6.8).

Two arms, :class:`~analysis.experiments.arms.Arm` s of the same network that differ only by the trainer's
``label_smoothing``: ``one_hot`` (eps 0) and ``smoothed`` (eps = ``config["epsilon"]``). Same seed, same
initial weights and same data order (both arms build the network right after seeding with the seed). Where the
config lists several rates (the ``full`` tier), each arm's learning rate is tuned on the held-out split with the
same budget (:func:`~analysis.experiments.arms.run_arms`); the CPU tiers give both arms one rate, the budget going
to seeds. Then both run over paired seeds. Measured per run, in eval mode:

- the validation top-1 accuracy (the claim);
- ``gap_train``: the correct logit minus the mean of the others on ``gap_images`` training images, at every
  evaluation and at the end (the mechanism; :func:`~analysis.experiments.calibration.correct_logit_gap`), and
  ``gap_val`` on the validation images at the end;
- on the validation images at the end: plain cross-entropy, ECE, the mean top probability (confidence), the
  over-confidence (confidence minus accuracy) and the reliability bins.

``run(config) -> DataFrame``: every logged row (``split`` train/val), one ``final`` row per run and one
``reliability`` row per run and bin; :func:`per_run` one row per run; :func:`decide` the protocol's verdicts;
:func:`claims` the rows of ``claims.csv``; :func:`summarise` one row per arm.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from analysis.callbacks import Callback
from analysis.experiments.arms import Arm, run_arms, summarise_runs
from analysis.experiments.calibration import (
    correct_logit_gap,
    expected_calibration_error,
    reliability_bins,
    smoothing_optimal_gap,
)
from analysis.experiments.runner import CPU_QUICK, GPU_FULL, check_config, threads, train_point
from analysis.experiments.verdict import Claim, PairedEffect, Verdict, compare_arms, paired_effect
from analysis.instruments.state import ModelStateGuard
from analysis.training.loss import split_outputs

__all__ = ["CONFIGS", "ARMS", "PAPER_EPSILON", "PAPER_GAIN", "RESULT_COLUMNS", "PER_RUN_COLUMNS",
           "SUMMARY_COLUMNS", "LogitGapMonitor", "eval_logits", "make_arms", "run_point", "run", "per_run",
           "decide", "claims", "gap_to_optimum", "baseline_confidence", "summarise", "verdict"]

NAME = "label_smoothing"
PAPER = "Szegedy et al. 2016 (Inception-v3), sec. 7"
PAPER_EPSILON = 0.1
PAPER_GAIN = 0.002  # "about 0.2% absolute" on ImageNet top-1 (sec. 7)
ARMS = ("one_hot", "smoothed")

# What every tier shares: the data (100 classes), the paper's eps, and the learnability benchmark's recipe for
# small_inception on these shapes (SGD + Nesterov, weight decay 5e-4, linear warm-up over 5% then cosine).
_SHARED: dict[str, Any] = dict(model="small_inception", difficulty="k100", image_size=32, epsilon=PAPER_EPSILON,
                               seed=0, optimizer="sgd", momentum=0.9, nesterov=True, weight_decay=5e-4,
                               schedule="cosine", channels_last=True, bins=15)
CONFIGS: dict[str, dict[str, Any]] = {
    # A smoke test: 2 seeds x 2 arms of 150 steps at one rate (no tuning) on 4,000 training images. Measured: 115
    # CPU-s in all (94 in the four runs, 0.156 CPU-s per step with their evaluations; the rest imports and
    # rendering), about a minute on 2 idle cores. Accuracy stays near 12% (k100 needs 500+ steps): not evidence.
    "quick": dict(_SHARED, width_mult=0.25, seeds=2, lrs=(0.05,), n_train=4_000, n_val=1_000, steps=150,
                  batch_size=64, warmup_steps=8, log_every=25, eval_every=75, gap_images=500, **CPU_QUICK),
    # Decides the claims on 2 CPU cores within ~800 CPU-s: small_inception at a quarter width, 10,000 training
    # images, 450 steps of 64, 5 paired seeds x 2 arms = 10 runs at the learnability recipe's rate 0.05 for both
    # arms (the paper trained both alike; a second rate per arm would cost 4 runs more than the budget has).
    # Calibration (this config, seed 0, 500 steps; 192 CPU-s in all): one-hot 44.6% validation top-1 (chance 1%),
    # smoothed 36.6%, 84 CPU-s per run (0.168 per step with its evaluations); the one-hot baseline was
    # under-confident (mean confidence 25% against 45% accuracy, ECE 0.19): a longer run is what this budget cannot
    # buy. Estimate: 10 x 450 steps x 0.168 ~ 756 CPU-s plus ~25 for imports and rendering: ~780 CPU-s, ~6.5 min
    # on 2 idle cores.
    "standard": dict(_SHARED, width_mult=0.25, seeds=5, lrs=(0.05,), n_train=10_000, n_val=2_000, steps=450,
                     batch_size=64, warmup_steps=23, log_every=50, eval_every=150, gap_images=1_000, **CPU_QUICK),
    # A GPU: the full-width network on 50,000 training images for 40 epochs, three rates per arm, 10 paired seeds
    # (an MDE near the paper's 0.2% needs many seeds and a large validation set). Not run here.
    "full": dict(_SHARED, width_mult=1.0, seeds=10, lrs=(0.025, 0.05, 0.1), n_train=50_000, n_val=10_000,
                 steps=15_600, batch_size=128, warmup_steps=780, log_every=100, eval_every=1_560, gap_images=5_000,
                 **GPU_FULL),
}

# What every point of the experiment shares (the arms add their model, knobs and label_smoothing; tuning the lr).
_COMMON_KEYS = ("difficulty", "image_size", "n_train", "n_val", "steps", "batch_size", "optimizer", "momentum",
                "nesterov", "weight_decay", "schedule", "warmup_steps", "channels_last", "log_every", "eval_every",
                "gap_images", "bins", "device", "threads")
# The rows run_point returns: the training log (``gap_train`` on the rows of evaluation steps), a ``final`` row
# (``accuracy``/``loss``: validation top-1 and plain cross-entropy) and ``reliability`` rows (one per bin).
RESULT_COLUMNS = ["split", "step", "loss", "accuracy", "cpu_s", "time", "gap_train", "gap_val", "ece", "confidence",
                  "bin", "lower", "upper", "count", "diverged", "diverged_step"]
PER_RUN_COLUMNS = ["stage", "arm", "epsilon", "seed", "lr", "steps", "final_val_accuracy", "best_val_accuracy",
                   "val_nll", "ece", "confidence", "overconfidence", "gap_train", "gap_val", "final_train_loss",
                   "curve_area", "diverged", "learned", "gate", "cpu_s"]
SUMMARY_COLUMNS = ["arm", "epsilon", "lr", "seeds", "learned", "val_accuracy", "val_accuracy_sd", "val_nll", "ece",
                   "confidence", "overconfidence", "gap_train", "gap_val", "gap_optimum"]


def _check_config(config: Mapping[str, Any]) -> None:
    check_config(NAME, config, CONFIGS["quick"])
    eps = config["epsilon"]
    if not (isinstance(eps, (int, float)) and 0.0 < float(eps) < 1.0):
        raise ValueError(f"epsilon must be in (0, 1) (the smoothed arm's; the other arm is one-hot), got {eps!r}")
    if int(config["gap_images"]) < 1 or int(config["bins"]) < 1:
        raise ValueError(f"gap_images and bins must be >= 1, got {config['gap_images']} and {config['bins']}")


def make_arms(config: Mapping[str, Any]) -> list[Arm]:
    """The two arms: the same network with one-hot targets and with targets smoothed by ``epsilon``."""
    knobs = {"width_mult": config["width_mult"]}
    return [Arm("one_hot", config["model"], knobs, recipe={"label_smoothing": 0.0}),
            Arm("smoothed", config["model"], knobs, recipe={"label_smoothing": float(config["epsilon"])})]


# ------------------------------------------------------------------------------------------------ measuring
@torch.no_grad()
def eval_logits(trainer: Any, dataset: Dataset, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """The main head's logits (float, on the CPU) and the labels of ``dataset``, in eval mode; the model's
    modes, buffers and the RNG are left as they were (the paired arms' training streams stay aligned)."""
    model = trainer.model
    logits, labels = [], []
    with ModelStateGuard(model, mode="eval"):
        for images, targets in DataLoader(dataset, batch_size=batch_size):
            out, _ = split_outputs(model(images.to(trainer.device, memory_format=trainer.memory_format)))
            logits.append(out.float().cpu())
            labels.append(targets)
    return torch.cat(logits), torch.cat(labels)


class LogitGapMonitor(Callback):
    """A trainer callback: at every ``every``-th step and the last, the correct-logit gap
    (:func:`~analysis.experiments.calibration.correct_logit_gap`) on the first ``images`` training images in eval
    mode, logged as ``gap_train`` on that step's training row; :attr:`last` holds the latest value."""

    def __init__(self, images: int, every: int) -> None:
        self.images = int(images)
        self.every = int(every)
        self.data: Dataset | None = None
        self.last = math.nan

    def on_train_start(self, trainer: Any) -> None:
        dataset = trainer.train_source.dataset
        self.data = Subset(dataset, range(min(self.images, len(dataset))))

    def on_step_end(self, trainer: Any, batch: Any, loss: Any) -> None:
        if trainer.step % self.every == 0 or trainer.step >= trainer.total_steps:
            self.last = correct_logit_gap(*eval_logits(trainer, self.data))
            trainer.log_metrics({"gap_train": self.last})


def run_point(point: dict[str, Any]) -> pd.DataFrame:
    """Train one arm at one rate and seed; return :data:`RESULT_COLUMNS` (the point's fields are added by the
    sweep)."""
    with threads(int(point["threads"])):
        monitor = LogitGapMonitor(int(point["gap_images"]), int(point["eval_every"]))
        outcome = train_point(point, callbacks=[monitor])
        parts = [outcome.curve(["split", "step", "loss", "accuracy", "time", "cpu_s", "gap_train"])]
        if not outcome.diverged:
            trainer = outcome.trainer
            logits, labels = eval_logits(trainer, trainer.val_source.dataset)
            probs = logits.softmax(1)
            parts.append(pd.DataFrame([{
                "split": "final", "step": trainer.step,
                "loss": float(torch.nn.functional.cross_entropy(logits, labels)),
                "accuracy": float((logits.argmax(1) == labels).float().mean()),
                "gap_train": monitor.last, "gap_val": correct_logit_gap(logits, labels),
                "ece": expected_calibration_error(probs, labels, int(point["bins"])),
                "confidence": float(probs.max(1).values.mean())}]))
            parts.append(reliability_bins(probs, labels, int(point["bins"])).assign(split="reliability"))
    frame = pd.concat(parts, ignore_index=True)
    return frame.assign(diverged=outcome.diverged, diverged_step=outcome.diverged_step).reindex(columns=RESULT_COLUMNS)


def _common(config: Mapping[str, Any]) -> dict[str, Any]:
    return {k: config[k] for k in _COMMON_KEYS}


def run(config: dict[str, Any], *, results_dir: str | Path | None = None, progress: bool = True) -> pd.DataFrame:
    """Tune each arm's rate, then train both arms over the paired seeds (resumable in ``results_dir``); every
    row of every run (:data:`RESULT_COLUMNS` plus the point's fields: ``stage``, ``arm``, ``seed``, ``lr``,
    ``label_smoothing``, ...)."""
    _check_config(config)
    results, _ = run_arms(make_arms(config), config, _common(config), run_point, results_dir, progress=progress,
                          desc=NAME)
    return results


# ------------------------------------------------------------------------------------------------ analysis
def per_run(results: pd.DataFrame) -> pd.DataFrame:
    """One row per run (:data:`PER_RUN_COLUMNS`): :func:`~analysis.experiments.arms.summarise_runs`' columns and the
    end-of-training measures (NaN for a run that diverged)."""
    runs = summarise_runs(results)
    final = results[results["split"] == "final"].set_index("point_id")
    first = results.drop_duplicates("point_id").set_index("point_id")
    runs["epsilon"] = runs["point_id"].map(first["label_smoothing"]).astype(float)
    for column, source in (("val_nll", "loss"), ("ece", "ece"), ("confidence", "confidence"),
                           ("gap_train", "gap_train"), ("gap_val", "gap_val")):
        runs[column] = pd.to_numeric(runs["point_id"].map(final[source]), errors="coerce")
    runs["overconfidence"] = runs["confidence"] - runs["final_val_accuracy"]
    return runs.reindex(columns=PER_RUN_COLUMNS)


def _seeds(runs: pd.DataFrame) -> pd.DataFrame:
    return runs[runs["stage"] == "seed"]


def decide(runs: pd.DataFrame) -> dict[str, Verdict]:
    """The protocol's verdicts from :func:`per_run`'s seed runs, each signed so that positive is the paper's
    direction: ``accuracy`` (validation top-1, smoothed minus one-hot), ``gap`` (the correct-logit gap on the
    training images, one-hot minus smoothed: smoothing keeps it smaller) and ``calibration`` (ECE, one-hot minus
    smoothed; not the paper's claim)."""
    seeds = _seeds(runs)
    pair = dict(arm="arm", treatment="smoothed", control="one_hot")
    return {"accuracy": compare_arms(seeds, value="final_val_accuracy", **pair),
            "gap": compare_arms(seeds, value="gap_train", higher_is_better=False, **pair),
            "calibration": compare_arms(seeds, value="ece", higher_is_better=False, **pair)}


def claims(verdicts: Mapping[str, Verdict], epsilon: float = PAPER_EPSILON) -> list[Claim]:
    """The two rows of ``claims.csv``: the accuracy claim and the paper's mechanism."""
    return [
        Claim("label smoothing raises accuracy", PAPER,
              f"Label-smoothing regularization (eps = {epsilon:g}, uniform prior) improves top-1 accuracy "
              f"(about +{100 * PAPER_GAIN:.1f}% absolute on ImageNet).", NAME,
              f"validation top-1 accuracy, eps {epsilon:g} minus one-hot", verdicts["accuracy"]),
        Claim("label smoothing bounds the correct logit's lead", PAPER,
              "With one-hot targets the correct logit grows much larger than all others; smoothing keeps it from "
              "doing so.", NAME,
              "correct logit minus the mean of the others on training images (logits), one-hot minus smoothed",
              verdicts["gap"]),
    ]


def gap_to_optimum(runs: pd.DataFrame, classes: int) -> PairedEffect:
    """The smoothed arm's correct-logit gap on the training images minus its optimum under smoothing,
    ``log(1 + K(1 - eps)/eps)``, over the seeds, with the t interval (negative: the lead has not yet grown to the
    optimum; near zero: training has reached the finite optimum the smoothed loss has)."""
    smoothed = _seeds(runs)
    smoothed = smoothed[(smoothed["arm"] == "smoothed") & ~smoothed["diverged"].astype(bool)]
    gaps = smoothed["gap_train"].to_numpy(float)
    optimum = smoothing_optimal_gap(float(smoothed["epsilon"].iloc[0]), classes) if len(smoothed) else math.nan
    return paired_effect(gaps, [optimum] * len(gaps))


def baseline_confidence(runs: pd.DataFrame) -> PairedEffect:
    """The one-hot arm's over-confidence over the seeds: its mean top probability minus its accuracy on the
    validation images, with the paired t interval (positive: over-confident, negative: under-confident)."""
    base = _seeds(runs)
    base = base[(base["arm"] == "one_hot") & ~base["diverged"].astype(bool)]
    return paired_effect(base["confidence"].to_numpy(float), base["final_val_accuracy"].to_numpy(float))


def summarise(runs: pd.DataFrame, classes: int) -> pd.DataFrame:
    """One row per arm of the seed runs (:data:`SUMMARY_COLUMNS`): its tuned rate, the runs that passed the gate,
    means over seeds (and the accuracy's standard deviation), and the smoothing optimum of the gap for ``classes``
    classes (``inf`` one-hot)."""
    rows = []
    for arm, grp in _seeds(runs).groupby("arm", sort=False):
        eps = float(grp["epsilon"].iloc[0])
        rows.append({"arm": arm, "epsilon": eps, "lr": float(grp["lr"].iloc[0]), "seeds": len(grp),
                     "learned": f"{int(grp['learned'].sum())}/{len(grp)}",
                     "val_accuracy": grp["final_val_accuracy"].mean(),
                     "val_accuracy_sd": grp["final_val_accuracy"].std(ddof=1),
                     **{c: grp[c].mean() for c in ("val_nll", "ece", "confidence", "overconfidence", "gap_train",
                                                   "gap_val")},
                     "gap_optimum": smoothing_optimal_gap(eps, classes)})
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def verdict(verdicts: Mapping[str, Verdict], runs: pd.DataFrame, *, classes: int,
            epsilon: float = PAPER_EPSILON) -> str:
    """The section's verdict line: each verdict with its effect, interval and MDE, the accuracy MDE beside the
    paper's gain, the gaps against the smoothing optimum, and the one-hot baseline's over-confidence."""
    acc, gap, ece = verdicts["accuracy"], verdicts["gap"], verdicts["calibration"]
    optimum = smoothing_optimal_gap(epsilon, classes)
    parts = [f"accuracy: {acc.describe('validation top-1, smoothed vs one-hot')}"]
    if acc.effect is not None and math.isfinite(acc.effect.mde):
        parts.append(f"the smallest accuracy effect this design detects (MDE) is {100 * acc.effect.mde:.2f}% against "
                     f"the paper's +{100 * PAPER_GAIN:.1f}%"
                     + (": an effect of the paper's size would go undetected here" if acc.effect.mde > PAPER_GAIN
                        else ""))
    parts.append(f"mechanism: {gap.describe('correct-logit gap on training images, smoothed vs one-hot', fmt='.2f')}"
                 f"; the optimum under eps {epsilon:g} with K = {classes} is log(1 + K(1 - eps)/eps) = {optimum:.2f}")
    base = _seeds(runs)
    if (base["arm"] == "smoothed").any() and base["gap_train"].notna().any():
        to_opt = gap_to_optimum(runs, classes)
        parts.append(f"the smoothed arm's gap minus that optimum: {to_opt.effect:+.2f} [{to_opt.ci_low:+.2f}, "
                     f"{to_opt.ci_high:+.2f}] over {to_opt.n} seeds")
    parts.append(f"calibration (not the paper's claim): {ece.describe('ECE, smoothed vs one-hot')}")
    if (base["arm"] == "one_hot").any() and base["confidence"].notna().any():
        over = baseline_confidence(runs)
        parts.append(f"the one-hot baseline's confidence minus accuracy: {over.effect:+.3f} [{over.ci_low:+.3f}, "
                     f"{over.ci_high:+.3f}] over {over.n} seeds")
    return "; ".join(parts)
