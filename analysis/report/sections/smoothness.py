"""The report's section on batch norm and loss-surface smoothness (Santurkar et al. 2018).

It runs :mod:`analysis.experiments.smoothness` (resumable, under the results root)
and renders its tables, figures and verdict.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from analysis.experiments.runner import RESULTS_ROOT, default_results_dir
from analysis.experiments.smoothness import (
    CONFIGS,
    NAME,
    RAW_MEASURES,
    SCALE_FREE_MEASURES,
    comparison,
    matched,
    probe_rows,
    run,
    summarise,
    sweep_table,
    verdict,
)
from analysis.report.document import Figure, Section, Table
from analysis.report.figures import lines

__all__ = ["section"]


def _band_frame(probes: pd.DataFrame, low: str, high: str) -> pd.DataFrame:
    """Per variant and step, the band over step sizes (and seeds): min of ``low``, max of ``high``."""
    return (probes.groupby(["variant", "step"], sort=False)
            .agg(low=(low, "min"), high=(high, "max")).reset_index().sort_values(["variant", "step"]))


def _training_figure(frame: pd.DataFrame, window: int) -> Any:
    probed = frame[frame["phase"] == "probe"]
    parts = []
    for variant, grp in probed.groupby("variant", sort=False):
        train = grp[grp["record"] == "train"].groupby("step")[["loss", "accuracy"]].mean()
        smooth = train.rolling(window, min_periods=1).mean()
        val = grp[grp["record"] == "val"].groupby("step")["accuracy"].mean()
        parts += [pd.DataFrame({"step": smooth.index, "value": smooth["loss"], "metric": "train loss",
                                "variant": variant}),
                  pd.DataFrame({"step": smooth.index, "value": smooth["accuracy"], "metric": "train accuracy",
                                "variant": variant}),
                  pd.DataFrame({"step": val.index, "value": val.values, "metric": "val accuracy",
                                "variant": variant})]
    data = pd.concat(parts, ignore_index=True)
    return lines(data, x="step", y="value", hue="variant", col="metric",
                 title=f"Training (mean of {window} steps)", ylabel="")


def _band_figure(frame: pd.DataFrame, low: str, high: str, title: str, ylabel: str) -> Any:
    return lines(_band_frame(probe_rows(frame), low, high), x="step", y="low", hue="variant",
                 band=("low", "high"), logy=True, title=title, xlabel="step (updates before the probe)",
                 ylabel=ylabel)


def _measure_figure(frame: pd.DataFrame, measures: Sequence[str], x: str, title: str, logy: bool = True) -> Any:
    probes = probe_rows(frame)
    long = probes.melt(id_vars=["variant", "seed", x], value_vars=list(measures), var_name="measure")
    long = long.dropna(subset=["value", x])
    long = long.groupby(["measure", "variant", x], sort=False, as_index=False)["value"].mean()
    return lines(long, x=x, y="value", hue="variant", col="measure" if len(measures) > 1 else None, logy=logy,
                 title=title, ylabel=measures[0] if len(measures) == 1 else "")


def _init_check_text(sweep: pd.DataFrame | None) -> str:
    """One sentence per checked no-BN initialisation: its best gain over chance in the sweep."""
    if sweep is None or sweep["compared"].all():
        return ""
    parts = []
    for init, grp in sweep[~sweep["compared"]].groupby("init", sort=False):
        best = grp.loc[grp["gain"].idxmax()]
        parts.append(f"'{init}' init {'learned' if grp['learned'].any() else 'did not learn'} in "
                     f"{int(best['steps'])} steps (best gain {best['gain']:.2f} nats at lr {best['lr']:g})")
    return "Checked in the sweep: the no-BN net with " + "; ".join(parts) + ". "


def section(mode: str, seed: int, results_root: str | Path = RESULTS_ROOT) -> Section:
    """The report's section: the lr sweep, the per-variant summary, the matched-loss and scale-free comparison,
    Santurkar Fig. 4-style figures, the top-eigenvalue trace and the verdict."""
    config = {**CONFIGS[mode], "seed": seed}
    frame = run(config, results_dir=default_results_dir(NAME, mode, seed, results_root), progress=False)
    summary = summarise(frame, config["min_gain"])
    match = matched(frame)
    compared = comparison(summary, match, config["margin"])
    answer = verdict(summary, match, margin=config["margin"])
    tables = []
    sweep = sweep_table(frame, config["min_gain"]) if (frame["phase"] == "sweep").any() else None
    if sweep is not None:
        tables.append(Table("smoothness_lr_sweep", "lr sweep: does each variant learn?", sweep,
                            notes=[f"{config['sweep_steps']} plain-SGD steps per cell, batch {config['batch_size']}; "
                                   f"loss_start: mean over the first tenth, loss_end: over the last quarter; "
                                   f"gain = ln 10 - loss_end; learned: gain >= {config['min_gain']}; chosen: the "
                                   "lr whose worse variant gains most; compared=False: the no-BN net with another "
                                   "initialisation, a check, not used to choose"]))
    lr = float(summary["lr"].iloc[0])
    tables += [
        Table("smoothness_summary", "Landscape measures per variant (median over the run's probes)", summary,
              notes=[f"lr {lr:g}, {config['steps']} steps, probes every {config['probe_every']} steps at "
                     f"{config['num_points']} step sizes in [0.5, 4] x lr on the step's own minibatch (BN in train "
                     "mode); loss_range = max - min of L(w - eta g) over the step sizes; grad_pred_max = max "
                     "||g - grad L(w - eta g)||; beta_eff = max of that / ||eta g||; *_rel: divided by L and ||g||; "
                     "hessian_top: power iteration, median over its probes"]),
        Table("smoothness_matched", "Measures at matched training loss", match,
              notes=["per seed, probes whose training loss (mean of the steps around the probe) lies in the "
                     "interval both variants visited; medians"]),
        Table("smoothness_comparison", "BN vs no BN: ratio of medians (no-BN / BN; > 1: BN smoother)", compared,
              notes=[f"call: every seed's ratio beyond 1 +- {config['margin']:g} in the same direction"]),
        Table("smoothness_probes", "Every probe", probe_rows(frame).dropna(axis=1, how="all"), inline=False),
    ]
    if "noisy_bn" in set(summary["variant"]):
        tables.insert(-1, Table("smoothness_noisy_bn", "Noisy BN vs no BN: ratio of medians (no-BN / noisy BN)",
                                comparison(summary, None, config["margin"], treated="noisy_bn"),
                                notes=["noisy BN: per-step random shift and scale after every BN layer (see "
                                       "BatchNormNoise); the paper found it as smooth as plain BN"]))
    window = config["probe_every"]
    figures = [
        Figure("smoothness_training", "Training loss, training accuracy and validation accuracy per variant",
               lambda: _training_figure(frame, window)),
        Figure("smoothness_loss_landscape", "Loss landscape (Santurkar Fig. 4a): range of L(w - eta g) over "
               "eta in [0.5, 4] x lr at each probed step (log scale)",
               lambda: _band_figure(frame, "loss_min", "loss_max", "Loss along the gradient", "loss")),
        Figure("smoothness_grad_predictiveness", "Gradient predictiveness (Fig. 4b): range of "
               "||g - grad L(w - eta g)|| over eta (log scale)",
               lambda: _band_figure(frame, "grad_pred_min", "grad_pred_max", "Gradient predictiveness",
                                    "l2 change of the gradient")),
        Figure("smoothness_beta", "Effective beta-smoothness (Fig. 4c) per probed step (log scale)",
               lambda: _measure_figure(frame, ["beta_eff"], "step", "Effective beta-smoothness")),
        Figure("smoothness_scale_free", "Scale-free measures: loss range / loss and gradient change / "
               "gradient norm (log scale)",
               lambda: _measure_figure(frame, list(SCALE_FREE_MEASURES), "step", "Scale-free")),
        Figure("smoothness_vs_loss", "The paper's measures against the training loss (matched-loss view)",
               lambda: _measure_figure(frame, list(RAW_MEASURES), "loss_smooth", "Against training loss")),
        Figure("smoothness_hessian", "Top Hessian eigenvalue (power iteration) over training",
               lambda: _measure_figure(frame, ["hessian_top"], "step", "Top Hessian eigenvalue", logy=False)),
    ]
    eigen = ", ".join(f"{r.variant} {r.hessian_top:.3g}" for r in summary.itertuples())
    learned = ", ".join(f"{r.variant} {'learned' if r.learned else 'did NOT learn'} (end loss {r.loss_end:.2f}, "
                        f"val acc {r.val_accuracy:.2f})" for r in summary.itertuples())
    text = (
        "Santurkar et al. 2018 (Fig. 4): with BN the loss changes less along the gradient, the gradient is more "
        "predictive and the effective beta-smoothness is lower. Here: small Inception (Zhang et al. 2017) at "
        f"width {config['width_mult']} on {config['n_train']} synthetic 32 px images, variants "
        f"{', '.join(config['variants'])}, trained identically with plain SGD (momentum {config['momentum']}) at "
        f"lr {lr:g}, batch {config['batch_size']}, {config['steps']} steps, {config['seeds']} seed(s). The no-BN "
        f"net uses the '{config['none_init']}' initialisation (data-dependent: every conv normalised on one batch "
        f"at the start). {_init_check_text(sweep)}{learned}. Compared raw, scale-free and at matched training "
        "loss. The top Hessian eigenvalue (largest in magnitude, so it can be negative; "
        f"{config['eigen_iters']} power iterations) is shown, not judged: median {eigen}."
    )
    return Section(title="Batch norm and loss-surface smoothness (Santurkar et al. 2018)", text=text,
                   tables=tables, figures=figures, verdict=answer)
