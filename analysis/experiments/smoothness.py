"""Batch norm and loss-surface smoothness (Santurkar, Tsipras, Ilyas, Madry, "How Does Batch Normalization Help
Optimization?", NeurIPS 2018, arXiv 1805.11604, sec. 3, Fig. 4).

The claim: with BN the loss landscape is smoother. Along the gradient the loss changes less (*loss variation*),
the gradient changes less (*gradient predictiveness*, ``||g - grad L(w - eta g)||``) and the effective
beta-smoothness (``max_eta ||g - grad L(w - eta g)|| / ||eta g||``) is lower, at every step of training.

The experiment trains the same network (:func:`inception_models.small_inception` at ``width_mult``) with
``norm="bn"``, ``norm="none"`` and optionally Santurkar's "noisy BN"
(:class:`~analysis.experiments.norm_variants.BatchNormNoise`), identically: plain SGD at one fixed learning rate,
same data order, same batch. Every ``probe_every`` steps :class:`analysis.instruments.line_search.LandscapeProbe`
runs the line search on the step's own minibatch at step sizes ``[1/2, 4] x lr`` (BN in train mode, the
trainer's gradient reused) and, every ``eigen_every`` steps, the top Hessian eigenvalue by power iteration.

A network stuck at chance has a flat landscape for the wrong reason, so the experiment first makes sure both
variants learn:

* **Initialisation of the no-BN net** (``none_init``): the model's own no-BN init is Glorot uniform (the
  paper's choice); at this scale it stayed at chance, as did He (Kaiming) init (the sweep re-checks both,
  ``init_check`` at ``init_check_lrs``, rows with ``compared=False``). ``"data"`` is a data-dependent init
  (:func:`~analysis.training.init.data_dependent_init`, after Kraehenbuehl et al., ICLR 2016, and
  LSUV, Mishkin & Matas, ICLR 2016): every conv's output channels are normalised to zero mean and unit variance
  on one batch of training images, so the no-BN net starts where the BN net starts and differs from it only during training.
* **Learning rate**: a short sweep (``lrs`` x variants, ``sweep_steps`` steps, no probes) picks the rate at
  which the worse of the two variants lowers its loss most below chance (``ln 10``), unless ``lr`` is given.
* **Learned**: a run learned when its mean training loss over the last quarter of its steps is at least
  ``min_gain`` nats below chance. A variant that did not learn makes the verdict "inconclusive".

Besides the paper's raw measures, the comparison is made scale-free (the loss range relative to the loss, the
gradient change relative to the gradient norm) and at matched training loss (probes of both variants whose
smoothed training loss lies in the range both runs visited), since a net at higher loss or with larger
gradients moves more along the same step.

``run(config) -> DataFrame`` gives one row per logged step, validation and probe (column ``record``) of every
run (column ``phase``: ``"sweep"`` or ``"probe"``); :func:`sweep_table`, :func:`summarise`, :func:`matched`,
:func:`comparison` reduce it and :func:`verdict` answers from those numbers.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from analysis.callbacks import Callback
from analysis.experiments.norm_variants import BatchNormNoise
from analysis.experiments.runner import CLASSES, CPU_QUICK, GPU_FULL, check_config, run_points, tensors, threads
from analysis.instruments.line_search import LandscapeProbe
from analysis.training.config import TrainConfig
from analysis.training.init import data_dependent_init, he_init
from analysis.training.trainer import Trainer, TrainingDiverged
from inception_models import create_model, model_info

__all__ = [
    "CONFIGS",
    "VARIANTS",
    "RUN_COLUMNS",
    "RAW_MEASURES",
    "SCALE_FREE_MEASURES",
    "sweep_points",
    "probe_points",
    "run_point",
    "probe_table",
    "run",
    "sweep_table",
    "choose_lr",
    "summarise",
    "matched",
    "comparison",
    "verdict",
]

NAME = "smoothness"
CHANCE_LOSS = math.log(CLASSES)  # cross-entropy of the uniform prediction on ten balanced classes

# variant -> (norm knob, noise after BN)
VARIANTS: dict[str, tuple[str, bool]] = {"bn": ("bn", False), "none": ("none", False), "noisy_bn": ("bn", True)}
INITS = ("glorot", "he", "data")
BASELINE, TREATED = "none", "bn"  # the verdict compares these two
_LABELS = {"bn": "BN", "noisy_bn": "noisy BN", "none": "no BN"}

# The paper's three measures (Fig. 4) and their scale-free forms; lower is smoother for all of them.
RAW_MEASURES = ("loss_range", "grad_pred_max", "beta_eff")
SCALE_FREE_MEASURES = ("loss_range_rel", "grad_pred_rel_max")
PROBE_MEASURES = RAW_MEASURES + SCALE_FREE_MEASURES

CONFIGS: dict[str, dict[str, Any]] = {
    # 2 CPU cores, minutes: a quarter-width net, batch 32, 256 training images, one seed. The no-BN net learns
    # this set only by memorising it: on 4,000 images it stayed at chance for 500 steps whatever the init.
    "quick": dict(
        model="small_inception",
        image_size=32,
        variants=("bn", "none"),
        width_mult=0.25,
        none_init="data",
        init_batch=256,
        n_train=256,
        n_val=500,
        batch_size=32,
        momentum=0.0,
        lrs=(0.01, 0.02, 0.05, 0.1),
        sweep_steps=60,
        init_check=("glorot", "he"),
        init_check_lrs=(0.05,),
        lr=None,
        steps=300,
        probe_every=20,
        num_points=4,
        eigen_every=100,
        eigen_iters=10,
        eval_every=100,
        noise_mean=0.5,
        noise_scale=1.5,
        noise_jitter=0.1,
        min_gain=0.1,
        margin=0.1,
        seed=0,
        seeds=1,
        **CPU_QUICK,
    ),
    # A GPU: half width, the paper's batch 128 and its 8 step sizes, three variants (noisy BN included), three
    # seeds, 3,000 steps on 10,000 images. Not run in this session (no GPU).
    "full": dict(
        model="small_inception",
        image_size=32,
        variants=("bn", "none", "noisy_bn"),
        width_mult=0.5,
        none_init="data",
        init_batch=512,
        n_train=10_000,
        n_val=2_000,
        batch_size=128,
        momentum=0.0,
        lrs=(0.01, 0.02, 0.05, 0.1, 0.2),
        sweep_steps=500,
        init_check=("glorot", "he"),
        init_check_lrs=(0.01, 0.02, 0.05, 0.1, 0.2),
        lr=None,
        steps=3_000,
        probe_every=20,
        num_points=8,
        eigen_every=200,
        eigen_iters=20,
        eval_every=250,
        noise_mean=0.5,
        noise_scale=1.5,
        noise_jitter=0.1,
        min_gain=0.1,
        margin=0.1,
        seed=0,
        seeds=3,
        **GPU_FULL,
    ),
}

RUN_COLUMNS = [
    "phase", "variant", "norm", "init", "compared", "lr", "seed", "record", "step", "loss", "accuracy", "loss_smooth",
    "grad_norm", "loss_min", "loss_max", "loss_range", "loss_range_rel", "grad_pred_min", "grad_pred_max",
    "grad_pred_rel_max", "beta_eff", "hessian_top", "diverged", "seconds",
]
_NUMERIC = [c for c in RUN_COLUMNS
            if c not in ("phase", "variant", "norm", "init", "compared", "record", "diverged")]
_POINT_KEYS = ("model", "image_size", "width_mult", "init_batch", "n_train", "n_val", "batch_size", "momentum", "noise_mean",
               "noise_scale", "noise_jitter", "device", "threads")
SWEEP_COLUMNS = ["variant", "init", "compared", "lr", "steps", "diverged", "loss_start", "loss_end", "gain",
                 "train_accuracy", "val_accuracy", "learned", "chosen"]
SUMMARY_COLUMNS = ["variant", "seed", "lr", "steps", "diverged", "loss_end", "gain", "learned", "train_accuracy",
                   "val_accuracy", "probes", *PROBE_MEASURES, "grad_norm", "hessian_top", "seconds"]
MATCHED_COLUMNS = ["seed", "variant", "loss_low", "loss_high", "probes", *PROBE_MEASURES]
COMPARISON_COLUMNS = ["measure", "kind", "ratio", "ratios", "call"]


# -------------------------------------------------------------------------------------------------- points
def _check_config(config: dict[str, Any]) -> None:
    check_config(NAME, config, CONFIGS["quick"])
    info = model_info(config["model"])  # an unknown model lists the known ones
    if not {"norm", "width_mult"} <= set(info.knobs):
        raise ValueError(f"{config['model']} has no norm/width_mult knobs, which the BN on/off comparison needs")
    if config["image_size"] < info.min_input_size:
        raise ValueError(f"{config['model']} needs image_size >= {info.min_input_size}, got {config['image_size']}")
    unknown = [v for v in config["variants"] if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; use {sorted(VARIANTS)}")
    if not {BASELINE, TREATED} <= set(config["variants"]):
        raise ValueError(f"variants must include {TREATED!r} and {BASELINE!r} (the comparison), got "
                         f"{tuple(config['variants'])}")
    for init in (config["none_init"], *config["init_check"]):
        if init not in INITS:
            raise ValueError(f"no-BN init {init!r} (none_init / init_check) is not supported; use one of {INITS}")
    if config["lr"] is None and not config["lrs"]:
        raise ValueError("give lr=<float> or a learning-rate sweep lrs=(...) to choose it from")
    if config["probe_every"] < 1 or config["probe_every"] > config["steps"]:
        raise ValueError(f"probe_every must be in [1, steps={config['steps']}], got {config['probe_every']}")
    if config["eigen_every"] is not None and config["eigen_every"] % config["probe_every"]:
        raise ValueError(f"eigen_every ({config['eigen_every']}) must be a multiple of probe_every "
                         f"({config['probe_every']}): the eigenvalue is taken at probed steps only")
    if (config["lrs"] or config["init_check_lrs"]) and config["sweep_steps"] < 4:
        raise ValueError(f"sweep_steps must be >= 4 to tell a falling loss, got {config['sweep_steps']}")


def _common(config: dict[str, Any]) -> dict[str, Any]:
    return {k: (list(config[k]) if isinstance(config[k], tuple) else config[k]) for k in _POINT_KEYS}


def _variant_keys(variant: str, config: dict[str, Any]) -> dict[str, Any]:
    norm, _noise = VARIANTS[variant]
    return {"variant": variant, "norm": norm, "init": config["none_init"] if norm == "none" else "default"}


def sweep_points(config: dict[str, Any]) -> list[dict[str, Any]]:
    """The learning-rate sweep: every variant at every ``lrs`` for ``sweep_steps`` steps, first seed, no probes;
    then the no-BN net with each ``init_check`` initialisation at each ``init_check_lrs`` (``compared=False``)."""
    _check_config(config)
    common = {**_common(config), "phase": "sweep", "seed": int(config["seed"]), "steps": int(config["sweep_steps"]),
              "probe_every": None, "num_points": None, "eigen_every": None, "eigen_iters": None, "eval_every": None}
    points = [{**common, **_variant_keys(v, config), "lr": float(lr), "compared": True}
              for lr in config["lrs"] for v in config["variants"]]
    checks = [init for init in config["init_check"] if init != config["none_init"]]
    points += [{**common, "variant": BASELINE, "norm": "none", "init": init, "lr": float(lr), "compared": False}
               for lr in config["init_check_lrs"] for init in checks]
    return points


def probe_points(config: dict[str, Any], lr: float) -> list[dict[str, Any]]:
    """The probed runs: every variant x seed at learning rate ``lr`` for ``steps`` steps."""
    _check_config(config)
    common = _common(config)
    return [{**common, **_variant_keys(v, config), "phase": "probe", "lr": float(lr),
             "seed": int(config["seed"]) + k, "steps": int(config["steps"]),
             "probe_every": int(config["probe_every"]), "num_points": int(config["num_points"]),
             "eigen_every": config["eigen_every"], "eigen_iters": int(config["eigen_iters"]),
             "eval_every": config["eval_every"]}
            for k in range(int(config["seeds"])) for v in config["variants"]]


def _build_model(point: dict[str, Any], train_images: torch.Tensor) -> nn.Module:
    torch.manual_seed(point["seed"])
    model = create_model(point["model"], num_classes=CLASSES, norm=point["norm"],
                         width_mult=point["width_mult"])
    if point["init"] == "he":
        he_init(model)
    elif point["init"] == "data":
        # The first init_batch images of a seeded shuffle, so the init depends on the seed like the weights do.
        order = torch.randperm(len(train_images), generator=torch.Generator().manual_seed(point["seed"]))
        data_dependent_init(model, train_images[order[:point["init_batch"]]])
    return model


def run_point(point: dict[str, Any]) -> pd.DataFrame:
    """Train one run and return its rows (:data:`RUN_COLUMNS`): one ``train`` row per step (the trainer's
    convention: ``step`` = updates done, ``loss`` = that step's minibatch loss before its update), ``val`` rows,
    and ``probe`` rows (``step`` = updates already applied to the probed weights)."""
    with threads(int(point["threads"])):
        train = tensors("train", point["n_train"], point["image_size"])
        val = tensors("val", point["n_val"], point["image_size"])
        model = _build_model(point, train[0])
        callbacks: list[Callback] = []
        probe = None
        if point["phase"] == "probe":
            probe = LandscapeProbe(every=point["probe_every"], num_points=point["num_points"],
                                   eigen_every=point["eigen_every"], eigen_iters=point["eigen_iters"])
            callbacks.append(probe)
        if VARIANTS[point["variant"]][1]:
            callbacks.append(BatchNormNoise(point["noise_mean"], point["noise_scale"], point["noise_jitter"],
                                            seed=point["seed"]))
        config = TrainConfig(steps=point["steps"], batch_size=point["batch_size"], optimizer="sgd", lr=point["lr"],
                             momentum=point["momentum"], seed=point["seed"], device=point["device"], log_every=1,
                             eval_every=point["eval_every"], progress=False)
        start = time.perf_counter()
        trainer = Trainer(model, config, train, val, callbacks=callbacks)
        diverged = False
        try:
            trainer.fit()
        except TrainingDiverged:  # a result: the rate is too high for this variant
            diverged = True
        history = pd.DataFrame(trainer.history, columns=["split", "step", "loss", "accuracy"])
        seconds = time.perf_counter() - start

    train_rows = history[history["split"] == "train"][["step", "loss", "accuracy"]].assign(record="train")
    val_rows = history[history["split"] == "val"][["step", "loss", "accuracy"]].assign(record="val")
    frames = [train_rows, val_rows]
    if probe is not None and probe.rows:
        probes = probe.to_frame().assign(record="probe")
        probes["loss_smooth"] = _smoothed_loss(train_rows, probes["step"], point["probe_every"])
        frames.append(probes)
    out = pd.concat(frames, ignore_index=True)
    for key in ("phase", "variant", "norm", "init", "lr", "seed"):
        out[key] = point[key]
    out["compared"] = bool(point.get("compared", True))
    out["diverged"] = diverged
    out["seconds"] = seconds
    return out.reindex(columns=RUN_COLUMNS)


def _smoothed_loss(train_rows: pd.DataFrame, steps: pd.Series, window: int) -> list[float]:
    """The mean training loss of the ``window`` steps around each probed step (the weights after ``s`` updates
    give the loss of trainer step ``s + 1``); a single minibatch's loss is too noisy to match runs on."""
    losses = train_rows.set_index("step")["loss"]
    half = max(1, window // 2)
    return [float(losses.loc[max(1, s + 1 - half):s + half].mean()) for s in steps.astype(int)]


# ---------------------------------------------------------------------------------------------------- run
def run(config: dict[str, Any], *, results_dir: str | Path | None = None, progress: bool = True) -> pd.DataFrame:
    """The sweep (unless ``lr`` is fixed and ``lrs`` empty), then the probed runs at the chosen ``lr``.

    One row per logged step, validation and probe of every run (:data:`RUN_COLUMNS`; ``phase`` tells sweep
    from probed runs). Resumable: each run is appended to ``results_dir/results.jsonl`` when it ends, and a
    rerun skips the finished ones.
    """
    _check_config(config)
    with contextlib.ExitStack() as stack:
        if results_dir is None:
            results_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="smoothness-"))
        collect = partial(run_points, run_point=run_point, results_dir=results_dir,
                          workers=int(config["workers"]), isolate=bool(config["isolate"]), progress=progress,
                          desc=NAME, columns=RUN_COLUMNS, numeric=_NUMERIC)
        points = sweep_points(config)
        sweep = collect(points) if points else None
        lr = config["lr"] if config["lr"] is not None else choose_lr(sweep_table(sweep, config["min_gain"]))
        probed = collect(probe_points(config, lr))
    frame = pd.concat([f for f in (sweep, probed) if f is not None], ignore_index=True).drop(columns="point_id")
    for col, missing in (("compared", True), ("diverged", False)):
        frame[col] = frame[col].map(lambda v, m=missing: m if pd.isna(v) else bool(v)).astype(bool)
    return frame.reset_index(drop=True)


# ------------------------------------------------------------------------------------------------ reduce
def _tail_mean(losses: pd.Series, fraction: float = 0.25) -> float:
    losses = losses.dropna()
    if losses.empty:
        return math.nan
    k = max(1, int(round(len(losses) * fraction)))
    return float(losses.iloc[-k:].mean())


def _run_end(rows: pd.DataFrame, min_gain: float) -> dict[str, Any]:
    train = rows[rows["record"] == "train"].sort_values("step")
    val = rows[rows["record"] == "val"].sort_values("step")
    diverged = bool(rows["diverged"].astype(bool).any()) if "diverged" in rows else False
    loss_end = math.nan if diverged else _tail_mean(train["loss"])
    gain = -math.inf if diverged else CHANCE_LOSS - loss_end
    return {"steps": int(train["step"].max()) if len(train) else 0, "diverged": diverged,
            "loss_start": float(train["loss"].iloc[:max(1, len(train) // 10)].mean()) if len(train) else math.nan,
            "loss_end": loss_end, "gain": gain, "learned": bool(gain >= min_gain),
            "train_accuracy": _tail_mean(train["accuracy"]),
            "val_accuracy": float(val["accuracy"].iloc[-1]) if len(val) else math.nan}


def sweep_table(frame: pd.DataFrame, min_gain: float = 0.1) -> pd.DataFrame:
    """The learning-rate sweep, one row per (variant, lr) (:data:`SWEEP_COLUMNS`): training loss over the first
    tenth and the last quarter of the steps, ``gain`` = ln 10 minus the latter, ``learned`` (gain >=
    ``min_gain``), accuracies, and ``chosen`` (the rate :func:`choose_lr` picks)."""
    sweep = frame[frame["phase"] == "sweep"] if "phase" in frame else frame
    sweep = sweep.assign(init=sweep["init"] if "init" in sweep else "default",
                         compared=sweep["compared"].astype(bool) if "compared" in sweep else True)
    rows = []
    for (variant, init, compared, lr), grp in sweep.groupby(["variant", "init", "compared", "lr"], sort=False):
        rows.append({"variant": variant, "init": init, "compared": bool(compared), "lr": float(lr),
                     **_run_end(grp, min_gain)})
    table = pd.DataFrame(rows).reindex(columns=SWEEP_COLUMNS)
    if not table.empty:
        table["chosen"] = table["compared"] & (table["lr"] == choose_lr(table))
    return table.sort_values(["compared", "lr", "variant", "init"], ascending=[False, True, True, True],
                             kind="stable").reset_index(drop=True)


def choose_lr(table: pd.DataFrame) -> float:
    """The swept rate at which the variant that gains least gains most (max over lr of min over variants of
    ``gain``); ties go to the smaller rate. Every compared variant counts (init-check rows do not)."""
    if table is None or table.empty:
        raise ValueError("choose_lr needs a sweep table with rows (variant, lr, gain); the sweep ran nothing")
    if "compared" in table:
        table = table[table["compared"].astype(bool)]
    worst = table.groupby("lr")["gain"].min()
    best = worst.max()
    return float(min(lr for lr, g in worst.items() if g == best))


def summarise(frame: pd.DataFrame, min_gain: float = 0.1) -> pd.DataFrame:
    """One row per probed run (:data:`SUMMARY_COLUMNS`): end-of-training loss, gain over chance, learned,
    accuracies, and the median over the run's probes of each measure, the gradient norm and the top Hessian
    eigenvalue."""
    probed = frame[frame["phase"] == "probe"] if "phase" in frame else frame
    rows = []
    for (variant, seed), grp in probed.groupby(["variant", "seed"], sort=False):
        probes = grp[grp["record"] == "probe"]
        end = _run_end(grp, min_gain)
        end.pop("loss_start")
        rows.append({"variant": variant, "seed": int(seed), "lr": float(grp["lr"].iloc[0]), **end,
                     "probes": len(probes),
                     **{m: float(probes[m].median()) for m in PROBE_MEASURES + ("grad_norm", "hessian_top")},
                     "seconds": float(grp["seconds"].iloc[0])})
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def matched(frame: pd.DataFrame, variants: Sequence[str] = (TREATED, BASELINE)) -> pd.DataFrame:
    """The measures at matched training loss (:data:`MATCHED_COLUMNS`): per seed, the smoothed-loss interval
    both variants' probes visited, ``[max of their minima, min of their maxima]``, and the median of each
    measure over each variant's probes inside it. An empty overlap gives NaN medians and 0 probes."""
    probes = frame[(frame["record"] == "probe") & frame["variant"].isin(variants)]
    if "phase" in probes:
        probes = probes[probes["phase"] == "probe"]
    rows = []
    for seed, grp in probes.groupby("seed", sort=True):
        ranges = grp.dropna(subset=["loss_smooth"]).groupby("variant")["loss_smooth"].agg(["min", "max"])
        if set(ranges.index) >= set(variants):
            low, high = float(ranges["min"].max()), float(ranges["max"].min())
        else:
            low, high = math.nan, math.nan
        for variant in variants:
            part = grp[(grp["variant"] == variant) & grp["loss_smooth"].between(low, high)] if low <= high else grp[:0]
            rows.append({"seed": int(seed), "variant": variant, "loss_low": low, "loss_high": high,
                         "probes": len(part), **{m: float(part[m].median()) if len(part) else math.nan
                                                 for m in PROBE_MEASURES}})
    return pd.DataFrame(rows, columns=MATCHED_COLUMNS)


def _call(ratios: list[float], margin: float, label: str = "BN") -> str:
    if not ratios or any(not math.isfinite(r) for r in ratios):
        return "n/a"
    if all(r > 1 + margin for r in ratios):
        return f"{label} smoother"
    if all(r < 1 / (1 + margin) for r in ratios):
        return f"{label} rougher"
    if all(1 / (1 + margin) <= r <= 1 + margin for r in ratios):
        return "no difference"
    return "seeds disagree"


def _ratios(table: pd.DataFrame, measure: str, baseline: str, treated: str) -> list[float]:
    by = table.pivot_table(index="seed", columns="variant", values=measure, aggfunc="first", dropna=False)
    if treated not in by or baseline not in by:
        return []
    return [float(n / b) if b > 0 else math.nan for n, b in zip(by[baseline], by[treated])]


def comparison(summary: pd.DataFrame, matched_table: pd.DataFrame | None = None, margin: float = 0.1, *,
               baseline: str = BASELINE, treated: str = TREATED) -> pd.DataFrame:
    """Per measure (:data:`COMPARISON_COLUMNS`): ``ratio`` = ``baseline`` / ``treated`` median (no-BN / BN by
    default; geometric mean over seeds; > 1 means the treated variant is smoother), the per-seed ``ratios``,
    and the ``call``: "BN smoother" ("noisy BN smoother" for ``treated="noisy_bn"``; every seed's ratio >
    1 + ``margin``), "BN rougher" (every one < 1 / (1 + margin)), "no difference" (all within), "seeds
    disagree", or "n/a" (missing). Kinds: ``raw`` (the paper's), ``scale-free``, ``matched loss`` (raw
    measures at matched training loss)."""
    groups = [("raw", summary, RAW_MEASURES), ("scale-free", summary, SCALE_FREE_MEASURES)]
    if matched_table is not None and not matched_table.empty:
        groups.append(("matched loss", matched_table, RAW_MEASURES))
    rows = []
    for kind, table, measures in groups:
        for measure in measures:
            ratios = _ratios(table, measure, baseline, treated)
            finite = [r for r in ratios if math.isfinite(r) and r > 0]
            geo = float(np.exp(np.mean(np.log(finite)))) if finite and len(finite) == len(ratios) else math.nan
            rows.append({"measure": measure, "kind": kind, "ratio": geo,
                         "ratios": ", ".join(f"{r:.3g}" for r in ratios),
                         "call": _call(ratios, margin, _LABELS.get(treated, treated))})
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS)


def verdict(summary: pd.DataFrame, matched_table: pd.DataFrame | None = None, *, margin: float = 0.1) -> str:
    """Does BN give the smoother landscape here? From a :func:`summarise` table (and :func:`matched`).

    "inconclusive" when the BN or no-BN run of any seed did not learn (a flat landscape at chance means
    nothing), when seeds disagree on a measure, or when the measures disagree with each other; "shows" when
    BN is smoother on every raw, scale-free and matched-loss measure; "does not show" when it is smoother on
    none. ``margin``: a ratio within ``[1/(1+margin), 1+margin]`` counts as no difference.
    """
    pair = summary[summary["variant"].isin((TREATED, BASELINE))]
    if set(pair["variant"]) != {TREATED, BASELINE}:
        raise ValueError(f"verdict needs summary rows for both {TREATED!r} and {BASELINE!r}, got "
                         f"{sorted(set(summary['variant']))}")
    stuck = pair[~pair["learned"].astype(bool)]
    if len(stuck):
        which = "; ".join(f"{r.variant} seed {r.seed}: " + ("diverged" if getattr(r, "diverged", False) else
                                                             f"end loss {r.loss_end:.3f} vs chance {CHANCE_LOSS:.3f}")
                          for r in stuck.itertuples())
        return (f"inconclusive: a variant did not learn ({which}); a network at chance has a flat landscape for "
                "the wrong reason")
    table = comparison(summary, matched_table, margin)
    table = table[table["call"] != "n/a"]
    seeds = pair["seed"].nunique()
    detail = "; ".join(f"{r.kind} {r.measure} x{r.ratio:.2f} ({r.call})" for r in table.itertuples())
    detail += f"; {seeds} seed{'s' if seeds > 1 else ', so no spread over seeds measured'}"
    calls = table["call"].tolist()
    smoother = calls.count("BN smoother")
    if smoother == len(calls):
        return f"shows: BN smoother on all {len(calls)} measures (no-BN / BN medians: {detail})"
    if "seeds disagree" in calls:
        return f"inconclusive: spread over seeds larger than the effect ({detail})"
    if smoother == 0:
        return f"does not show: BN smoother on none of {len(calls)} measures ({detail})"
    return f"inconclusive: the measures disagree, BN smoother on {smoother} of {len(calls)} ({detail})"


def probe_rows(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[(frame["phase"] == "probe") & (frame["record"] == "probe")]


PROBE_TABLE_COLUMNS = ["variant", "seed", "step", "loss", "loss_min", "loss_max", "grad_pred_min", "grad_pred_max",
                       "beta_eff", "grad_norm", "hessian_top"]


def probe_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per variant, seed and probed step of the compared runs (:data:`PROBE_TABLE_COLUMNS`): what
    ``inception-lab smoothness`` prints."""
    probes = probe_rows(frame)
    return probes[PROBE_TABLE_COLUMNS].sort_values(["variant", "seed", "step"]).reset_index(drop=True)
