"""The report's section on batch norm, loss-surface smoothness and internal covariate shift (Santurkar et al.
2018).

It runs :mod:`analysis.experiments.smoothness` (resumable, under the results root) and renders its tables,
figures and claims; every verdict comes from the experiment's :func:`~analysis.experiments.smoothness.claims`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from analysis.experiments.runner import RESULTS_ROOT, default_results_dir
from analysis.experiments.smoothness import (
    BASELINE,
    CONFIGS,
    LABELS,
    NAME,
    RATE_LABELS,
    TREATED,
    chance,
    claims,
    curves,
    run,
    summarise,
    summary_table,
    tuning_table,
)
from analysis.experiments.verdict import learnability_gate
from analysis.report.document import Figure, Section, Table
from analysis.report.figures import band_lines
from analysis.report.tables import Column

__all__ = ["section"]

NETWORK = "network"
STEP = "step (SGD updates)"

TUNING_COLUMNS = {
    "arm": Column("Network"),
    "lr": Column("Learning rate", digits=3),
    "final_val_accuracy": Column("Held-out accuracy (%)", digits=1, scale=100.0, best="max"),
    "diverged": Column("Diverged"),
    "chosen": Column("Chosen"),
}


def _summary_columns() -> dict[str, Column]:
    def spec(col: str, header: str, digits: int, scale: float = 1.0) -> Column:
        return Column(header, digits=digits, scale=scale, interval=(f"{col}_low", f"{col}_high"))

    return {
        "rate": Column("Rate"),
        "arm": Column("Network"),
        "lr": Column("lr", digits=3),
        "learned": Column("Passed gate"),
        "final_val_accuracy": spec("final_val_accuracy", "Val. accuracy (%)", 1, 100.0),
        "loss_range": spec("loss_range", "Loss variation (nats)", 3),
        "grad_pred_max": spec("grad_pred_max", "Gradient change", 2),
        "beta_eff": spec("beta_eff", "Effective beta", 1),
        "hessian_top": spec("hessian_top", "Top Hessian eigenvalue", 1),
        "ics_shift": spec("ics_shift", "ICS l2 shift", 3),
        "ics_cosine": spec("ics_cosine", "ICS cosine", 3),
    }


def _labelled(frame: pd.DataFrame, rates: Mapping[str, str]) -> pd.DataFrame:
    """Readable arm and rate-setting names (the panel titles and legends)."""
    return frame.assign(**{NETWORK: frame["arm"].map(lambda a: LABELS.get(a, a)),
                           "setting": frame["rate"].map(lambda r: rates.get(r, r))})


def _rate_titles(runs: pd.DataFrame) -> dict[str, str]:
    """Panel titles that carry the rates: ``shared rate (lr 0.1)``, ``own best rate (BN 0.3, no BN 0.1)``."""
    titles = {}
    for rate, grp in runs[runs["rate"] != "tune"].groupby("rate", sort=False):
        lrs = grp.groupby("arm", sort=False)["lr"].first()
        if lrs.nunique() == 1:
            titles[rate] = f"{RATE_LABELS.get(rate, rate)} (lr {lrs.iloc[0]:g})"
        else:
            titles[rate] = f"{RATE_LABELS.get(rate, rate)} (" + ", ".join(
                f"{LABELS.get(a, a)} {lr:g}" for a, lr in lrs.items()) + ")"
    return titles


def _panels(data: pd.DataFrame, y: str, title: str, ylabel: str, *, logy: bool = False,
            hlines: Mapping[str, float] | None = None) -> Any:
    return band_lines(data.dropna(subset=[y]), x="step", y=y, hue=NETWORK, col="setting", title=title,
                      xlabel=STEP, ylabel=ylabel, logy=logy, hlines=hlines, sharey=True, legend_once=True)


def _figures(frame: pd.DataFrame, runs: pd.DataFrame, config: Mapping[str, Any]) -> list[Figure]:
    titles = _rate_titles(runs)
    order = {"shared": 0, "own": 1}  # the paper's setting in the first panel
    data = _labelled(curves(frame), titles).sort_values("rate", key=lambda r: r.map(order), kind="stable")
    val = data[data["record"] == "val"]
    probe = data[data["record"] == "probe"]
    ics = data[data["record"] == "ics"]
    shared = probe[probe["rate"] == "shared"]
    shared_lr = float(config["shared_lr"])
    floor = chance(config)
    gate = learnability_gate(floor)
    # Heavy-ball SGD is stable on a quadratic while lambda_max < 2 (1 + momentum) / lr: 2/lr for plain SGD.
    factor = 2.0 * (1.0 + float(config["momentum"]))
    limit = factor / shared_lr
    edge = probe.assign(edge=probe["hessian_top"] * probe["lr"] / factor)
    rule = "2/lr" if factor == 2.0 else f"2(1 + {config['momentum']:g})/lr"
    spread = "mean over seeds, band: min to max over seeds"
    return [
        Figure("smoothness_accuracy",
               f"Validation accuracy along training ({spread}). Both networks must clear the gate ({gate:.0%}) "
               f"for a comparison to count; the dotted line is chance ({floor:.0%}).",
               lambda: _panels(val, "accuracy", "Validation accuracy", "validation accuracy (fraction)",
                               hlines={f"chance {floor:.0%}": floor, f"gate {gate:.0%}": gate})),
        Figure("smoothness_loss_variation",
               "Loss variation (Santurkar Fig. 4a): the range of L(w - eta g) over eta in [0.5, 4] x lr at each probed "
               f"step ({spread}; log scale). Lower is smoother: see whether the BN curve lies below the no-BN "
               "curve in each panel.",
               lambda: _panels(probe, "loss_range", "Loss variation along the gradient",
                               "range of L(w − ηg) over η (nats)", logy=True)),
        Figure("smoothness_grad_predictiveness",
               "Gradient predictiveness (Fig. 4b): the largest l2 norm of g - grad L(w - eta g) over eta at each "
               "probed step "
               f"({spread}; log scale). Lower means the gradient predicts the gradient a step away better.",
               lambda: _panels(probe, "grad_pred_max", "Gradient predictiveness",
                               "max ||g − ∇L(w − ηg)||₂ (gradient units)", logy=True)),
        Figure("smoothness_beta",
               "Effective beta-smoothness (Fig. 4c): the largest ratio over eta of the norms of g - grad L(w - eta g) "
               "and eta g at each probed step "
               f"({spread}; log scale). Lower is smoother; this ratio divides out the step length, so the two "
               "panels compare directly.",
               lambda: _panels(probe, "beta_eff", "Effective β-smoothness",
                               "max ||Δg|| / ||ηg|| (1/step length)", logy=True)),
        Figure("smoothness_hessian",
               f"Top Hessian eigenvalue lambda_max (power iteration on the step's minibatch, {config['eigen_iters']} "
               f"iterations; of largest magnitude, so negative where the curvature is) along training at the shared "
               f"rate ({spread}). The dotted line is {rule} = {limit:g}, "
               "where gradient descent with this rate and momentum stops being stable: a curve that rises to it and "
               "stays there is sharpness set by the step size (the edge of stability), not by the network.",
               lambda: _panels(shared, "hessian_top", "Top Hessian eigenvalue, shared rate", "λ_max of the loss",
                               hlines={f"{rule} = {limit:g} (edge of stability)": limit})),
        Figure("smoothness_hessian_edge",
               f"lambda_max / ({rule}) in both settings ({spread}): 1 (the dotted line) is the edge of stability "
               "for each network at its own rate, so the panels and networks compare on one scale.",
               lambda: _panels(edge, "edge", "Sharpness relative to the edge of stability", f"λ_max / ({rule})",
                               hlines={f"edge of stability (λ_max = {rule})": 1.0})),
        Figure("smoothness_ics_l2",
               "Internal covariate shift (Santurkar Def. 2.1, Fig. 5): the l2 norm of G - G', the change of a layer's "
               "gradient when the layers before it take their SGD step first, mean over the measured layers "
               f"({', '.join(config['ics_layers'])}; {spread}). The BN paper's premise predicts the BN curve "
               "below; Santurkar found it is not.",
               lambda: _panels(ics, "shift", "Internal covariate shift: ||G − G'||",
                               "||G − G'||₂ (gradient units)", logy=True)),
        Figure("smoothness_ics_cosine",
               "Internal covariate shift as the cosine of G and G' (1: the earlier layers' step leaves the layer's "
               "gradient "
               f"direction unchanged), mean over the measured layers ({spread}). Higher means less shift.",
               lambda: _panels(ics, "cosine", "Internal covariate shift: cos(G, G')", "cos(G, G')")),
    ]


def _rates_text(runs: pd.DataFrame, config: Mapping[str, Any]) -> str:
    tune = tuning_table(runs)
    if tune.empty:
        return f"one rate ({config['lrs'][0]:g}) for both, no tuning"
    chosen = tune[tune["chosen"]]
    rates = ", ".join(f"{LABELS.get(r.arm, r.arm)} {r.lr:g}" for r in chosen.itertuples())
    return (f"each network's own rate tuned over {', '.join(f'{lr:g}' for lr in config['lrs'])} (one run per rate "
            f"on the held-out split, the same budget for both): {rates}")


def section(mode: str, seed: int, results_root: str | Path = RESULTS_ROOT) -> Section:
    """The report's section: tuning, the per-arm summary with 95% intervals, Santurkar's Fig. 4 and 5 along
    training, the top Hessian eigenvalue against 2/lr, and the six claims."""
    config = {**CONFIGS[mode], "seed": seed}
    frame = run(config, results_dir=default_results_dir(NAME, mode, seed, results_root), progress=False)
    runs = summarise(frame)
    decided = claims(runs)
    summary = summary_table(runs)
    shown = summary.assign(arm=summary["arm"].map(lambda a: LABELS.get(a, a)),
                           rate=summary["rate"].map(lambda r: RATE_LABELS.get(r, r)))
    tune = tuning_table(runs)
    tables = []
    if not tune.empty:
        tables.append(Table("smoothness_tuning", "Learning-rate tuning: final accuracy on the held-out split per "
                            "network and rate (one run each, tuning seed)",
                            tune.assign(arm=tune["arm"].map(lambda a: LABELS.get(a, a))), columns=TUNING_COLUMNS,
                            notes=[f"{config['steps']} SGD steps (momentum {config['momentum']:g}) at a constant rate; the chosen rate is each "
                                   "network's best; a tie goes to the smaller rate"]))
    tables += [
        Table("smoothness_summary", "Santurkar's measures per network and rate setting: mean over seeds [95% t "
              "interval]; per run, the median over its probes", shown, columns=_summary_columns(),
              notes=[f"probes every {config['probe_every']} steps on the step's minibatch (batch "
                     f"{config['batch_size']}, BN in train mode) at {config['num_points']} step sizes eta in [0.5, 4] "
                     "x lr; loss variation: max - min of L(w - eta g); gradient change: the largest l2 norm of "
                     "g - grad L(w - eta g); effective beta: the largest ratio of that to the norm of eta g; top "
                     "Hessian eigenvalue: of largest magnitude, by "
                     f"{config['eigen_iters']} power iterations; ICS: Santurkar's Definition 2.1 (l2 norm of G - G' "
                     "and cosine of G and G'), mean over layers "
                     f"{', '.join(config['ics_layers'])}; passed gate: runs whose best validation accuracy reached "
                     f"{learnability_gate(chance(config)):.0%}"]),
        Table("smoothness_runs", "Every run: accuracy, gate and the median of each measure over its probes", runs,
              inline=False),
        Table("smoothness_probes", "Every probe of every seeded run", curves(frame).query("record == 'probe'")
              .drop(columns=["record", "accuracy", "shift", "cosine"]), inline=False),
    ]
    seeds = runs[runs["rate"] == "shared"]["seed"].nunique()
    bn_acc = summary[(summary["arm"] == TREATED) & (summary["rate"] == "shared")]["final_val_accuracy"]
    none_acc = summary[(summary["arm"] == BASELINE) & (summary["rate"] == "shared")]["final_val_accuracy"]
    text = (
        "Santurkar et al. 2018 argue that batch norm helps because it makes the loss landscape smoother (Fig. 4: "
        "the loss and the gradient change less along the gradient, the effective beta-smoothness is lower), not "
        "because it reduces internal covariate shift (ICS; their Fig. 5 finds BN does not reduce it). Here "
        f"({mode} tier): small Inception at width {config['width_mult']} with and without BN on "
        f"{config['n_train']:,} synthetic {config['image_size']} px images ('{config['difficulty']}' difficulty, "
        f"{int(1 / chance(config))} classes), SGD with momentum {config['momentum']:g} at a constant rate, batch "
        f"{config['batch_size']}, {config['steps']} steps, {seeds} paired seeds (the same data order; the no-BN "
        "network starts from the BN network's weights wherever they share a tensor, then the data-dependent "
        "initialisation normalises every conv on 256 training images). Rates: the shared rate "
        f"{config['shared_lr']:g} for both, and {_rates_text(runs, config)}. Final validation accuracy at the "
        f"shared rate: BN {bn_acc.iloc[0]:.1%}, no BN {none_acc.iloc[0]:.1%} (means over seeds). "
        "Each measure is one number per run (its median over probes); each claim is the paired difference over "
        "seeds, signed so that positive is Santurkar's direction, with its 95% t interval and the minimum "
        "detectable effect; a comparison with a run below the learnability gate is not tested. The two ICS "
        "claims are Santurkar's 'BN does not reduce ICS': supports means BN raises ICS, no effect detected "
        "means no change larger than the MDE (also consistent with the claim), contradicts means BN reduces "
        "ICS, the BN paper's premise. At the shared rate the step size also bounds the sharpness "
        "(lambda_max near 2(1 + momentum)/lr at the edge of stability), which is why each network is also "
        "compared at its own rate."
    )
    if mode == "quick":
        text += " The quick tier is a smoke test: its verdicts are not evidence."
    verdict = " ".join(f"{c.claim}: {c.verdict.describe(c.measure)}." for c in decided)
    return Section(title="Batch norm, loss-surface smoothness and internal covariate shift (Santurkar et al. 2018)",
                   text=text, tables=tables, figures=_figures(frame, runs, config), verdict=verdict,
                   claims=decided)
