"""The report's counting sections: the zoo against its references, and where each model's cost sits by grid size.

They run no experiment, so they are the same in every mode and take no results root.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pandas as pd

from analysis.instruments.counting import MAC_CONVENTION, count_model, create_model_for_counting, summarize, table_notes
from analysis.instruments.zoo import published_errors, zoo_table
from analysis.report.document import Figure, Section, Table, Tier
from analysis.report.figures import bar_params_macs, stacked_by_grid
from inception_models import list_models, model_info

__all__ = ["cost_by_grid_section", "zoo_section"]


@lru_cache(maxsize=None)
def _counts(name: str) -> pd.DataFrame:
    size = model_info(name).input_size
    return count_model(create_model_for_counting(name), input_size=size)


def zoo_section(mode: Tier, seed: int, results_root: Path | None = None) -> Section:
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


def cost_by_grid_section(mode: Tier, seed: int, results_root: Path | None = None) -> Section:
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
