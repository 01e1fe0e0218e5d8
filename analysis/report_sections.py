"""The sections of ``inception-lab report``, in order: the zoo, where the cost sits, the factorization
studies, then one section per experiment (:mod:`analysis.experiments`).

Each builder takes ``(mode, seed)`` and returns a :class:`analysis.report.Section`; it computes through the
public analysis functions only and leaves rendering to the report.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable

import matplotlib.pyplot as plt
import pandas as pd

from analysis.instruments.counting import MAC_CONVENTION, count_model, create_model_for_counting, summarize, table_notes
from analysis.experiments import EXPERIMENTS, load_experiment
from analysis.instruments.factorization import factorization_study, undo_factorization_table
from analysis.figures import bar_params_macs, lines, stacked_by_grid
from analysis.report import Figure, Mode, Section, Table
from analysis.instruments.zoo import published_errors, zoo_table
from inception_models import list_models, model_info

# The paper's "sweet spot" for 1 x n / n x 1 factorisation (Inception-v3, sec. 3.2): m x m grids, 12 <= m <= 20.
SWEET_SPOT = (12, 20)
FACTORIZATION_CHANNELS = 192


@lru_cache(maxsize=None)
def _counts(name: str) -> pd.DataFrame:
    size = model_info(name).input_size
    return count_model(create_model_for_counting(name), input_size=size)


def zoo_section(mode: Mode, seed: int) -> Section:
    """Every model's parameters and MACs at its native input beside the published figures."""
    table = zoo_table(with_macs=True).merge(published_errors(), on="model", how="left")
    shown = table.drop(columns=["paper", "reference", "error_source"])
    return Section(
        title="The zoo against its references",
        text=("Every registered model with default knobs, counted with fvcore at its native input. `ref_params` "
              "and `ref_gmacs` are the reference ports' and papers' figures (sources in the CSV); `params_delta` "
              "is ours minus the reference. `gmacs` is fvcore's total (batch norm included); `conv_fc_gmacs` counts "
              "only convolutions and the classifier, the convention of the papers and timm. `top1_err`/`top5_err` "
              "are the papers' single-crop ImageNet errors, quoted (not reproduced here)."),
        tables=[Table("zoo", "Model zoo: counted vs published", shown,
                      notes=[MAC_CONVENTION, "Aux heads off (the builders' default), also in the paper variants. "
                                             "Sources: zoo_sources.csv, column reference."]),
                Table("zoo_sources", "Where each reference figure comes from", table, inline=False)],
        figures=[Figure("zoo_params_macs", "Parameters and GMACs per model; black ticks: published figures",
                        lambda: bar_params_macs(table.assign(gmacs=table["conv_fc_gmacs"])))],
    )


def cost_by_grid_section(mode: Mode, seed: int) -> Section:
    """Where each model spends its MACs and parameters: per output grid size."""
    frames = []
    for name in list_models():
        per_grid = summarize(_counts(name), by="grid")
        frames.append(per_grid.assign(model=name)[["model", "grid", "params", "macs", "gmacs"]])
    by_grid = pd.concat(frames, ignore_index=True)
    spatial = by_grid[by_grid["grid"].str.contains("x", regex=False)]
    pivot = spatial.pivot_table(index="model", columns="grid", values="gmacs", aggfunc="sum", fill_value=0.0)
    pivot = pivot[sorted(pivot.columns, key=lambda g: int(g.split("x")[0]), reverse=True)].round(3).reset_index()
    notes = table_notes(_counts("inception_v3"))[:1] + [
        "Grid = the module's own output height x width at the model's native input; uncounted ops (pooling, "
        "residual adds, activations) are listed per model by `inception-lab summary MODEL`."]
    return Section(
        title="Where the cost sits: MACs per grid size",
        text=("The Inception-v3 paper moves computation to the 17x17 and 8x8 grids and factorises there. "
              "GMACs per output grid size, per model (native input, fvcore)."),
        tables=[Table("gmacs_by_grid", "GMACs by output grid size", pivot, notes=notes),
                Table("cost_by_grid", "Parameters and MACs by grid (long form)", by_grid, inline=False)],
        figures=[Figure("gmacs_by_grid", "How each model's GMACs split over output grid sizes",
                        lambda: stacked_by_grid(spatial, title="GMACs per output grid (native input)"))],
    )


def _saved_by_grid_figure(study: pd.DataFrame) -> plt.Figure:
    factorized = study[study["form"] == "factorized"].assign(
        factorisation=lambda d: d["scheme"].where(d["scheme"] == "5x5->2x3x3", "n=" + d["n"].astype(str) + ": nxn->1xn+nx1"),
        mmacs_saved=lambda d: d["macs_saved"] / 1e6)
    fig = lines(factorized, x="grid", y="mmacs_saved", hue="factorisation", logy=True,
                title=f"MMACs saved by factorising one conv ({FACTORIZATION_CHANNELS} channels)",
                xlabel="grid size m (m x m)", ylabel="MMACs saved (log)")
    for ax in fig.axes:
        ax.axvspan(*SWEET_SPOT, color="grey", alpha=0.15, label="paper's 12-20 range")
    return fig


def factorization_section(mode: Mode, seed: int) -> Section:
    """5x5 vs two 3x3 and n x n vs 1 x n + n x 1, measured per grid; whole models with factorisation undone."""
    study = factorization_study(range(8, 36), FACTORIZATION_CHANNELS)
    if not study["exact"].all():
        raise RuntimeError("a measured factorisation cost differs from its closed form; see factorization_all.csv")
    at_17 = study[(study["grid"] == 17)][["scheme", "n", "form", "layers", "receptive_field", "params", "macs",
                                          "ratio", "closed_form_ratio", "exact"]]
    undo = undo_factorization_table()
    return Section(
        title="Factorization: what each form costs",
        text=("Each form is built as real modules and counted with fvcore, then checked against the closed form "
              "(5x5 -> two 3x3 keeps 18/25 = 72% of the cost; n x n -> 1 x n then n x 1 keeps 2/n), at every grid "
              f"size from 8 to 35 with {FACTORIZATION_CHANNELS} channels in and out. Every measured figure equals "
              "its closed form. The ratio is the same at every grid size, since a convolution does its weights' "
              "worth of MACs at each output position; only the absolute saving grows with the grid (figure). The "
              "paper's preference for 12-20 grids is about accuracy, which the factorization_grid experiment tests."),
        tables=[Table("factorization_17x17", "One conv and its factorised form at a 17x17 grid", at_17,
                      notes=[MAC_CONVENTION]),
                Table("factorization_all", "Every scheme at every grid size 8-35", study, inline=False),
                Table("undo_factorization", "Whole models with their factorisations undone",
                      undo.drop(columns=["variant"]), notes=[MAC_CONVENTION] + [
                          f"{r.model} {r.knobs}: {r.variant}" for r in undo.itertuples()])],
        figures=[Figure("factorization_saving_by_grid",
                        "MACs saved by factorising one convolution, by grid size (shaded: the paper's 12-20)",
                        lambda: _saved_by_grid_figure(study))],
    )


def _experiment_section(name: str) -> Callable[[Mode, int], Section]:
    def build(mode: Mode, seed: int) -> Section:
        return load_experiment(name).section(mode, seed)

    build.__name__ = f"{name}_section"
    return build


SECTIONS: list[tuple[str, Callable[[Mode, int], Section]]] = [
    ("zoo", zoo_section),
    ("cost_by_grid", cost_by_grid_section),
    ("factorization", factorization_section),
    *((name, _experiment_section(name)) for name in EXPERIMENTS),
]

# What a default quick report runs, within its 10-minute budget on 2 CPU cores: the counting and the three
# main experiments. The claims of issue 9 (residual speed-up, label smoothing, aux heads, Xception, BN
# speed-up) take minutes each even in their quick configs: `inception-lab report --all` adds them.
QUICK_SECTIONS: tuple[str, ...] = ("zoo", "cost_by_grid", "factorization", "factorization_grid", "dead_units",
                                   "smoothness")
