"""The report's counting sections: the zoo against its references and its papers, and where each model's cost
sits by output stride.

They run no experiment, so they are the same in every tier and take no results root.
"""

from __future__ import annotations

import math
import re
from functools import lru_cache
from pathlib import Path

import pandas as pd

from analysis.instruments.counting import MAC_CONVENTION, count_model, create_model_for_counting, summarize, table_notes
from analysis.instruments.zoo import published_errors, zoo_table
from analysis.report.document import Figure, Section, Table, Tier
from analysis.report.figures import bar_params_macs, stacked_shares
from analysis.report.tables import Column
from inception_models import list_models, model_info

__all__ = ["blocks_section", "cost_by_grid_section", "zoo_section"]

ZOO_COLUMNS = {
    "model": Column("Model"),
    "input": Column("Input (px)"),
    "params": Column("Params (M)", digits=3, scale=1e-6),
    "params_with_aux": Column("With aux heads (M)", digits=3, scale=1e-6),
    "ref_params": Column("Reference port (M)", digits=3, scale=1e-6),
    "params_delta": Column("Ours - port"),
    "published_params": Column("Paper: params"),
    "conv_fc_gmacs": Column("GMACs (conv + FC)", digits=3),
    "published_gmacs": Column("Paper: multiply-adds"),
    "top1_err": Column("Paper: top-1 err. (%)", digits=1),
    "top5_err": Column("Paper: top-5 err. (%)", digits=1),
}
VARIANT_COLUMNS = {"model": Column("Model"), "variant": Column("What the builder makes"),
                   "published_source": Column("Paper's figures from")}
V3_NOTE = (
    "Inception-v3 measures 5.71 GMACs (conv + FC; 5.73 with BN, as timm lists it) at 299 px against the paper's "
    "\"5 billion multiply-adds\": the abstract's figure is rounded and its breakdown is not given, so the 14% "
    "cannot be assigned to a layer; the network measured here is the released one (TF-slim, ported by "
    "torchvision and timm, equal to both to the parameter), not necessarily the one the abstract counted.")


@lru_cache(maxsize=None)
def _counts(name: str) -> pd.DataFrame:
    size = model_info(name).input_size
    return count_model(create_model_for_counting(name), input_size=size)


def _printed_number(text: object, unit: str) -> float:
    """The number in a paper's printed figure ("about 6.8 M", "5 G", "22,855,952") in base units; NaN for
    text without one ("about Inception-v4's")."""
    if not isinstance(text, str):
        return math.nan
    exact = re.fullmatch(r"\d{1,3}(?:,\d{3})+", text.strip())  # an exact count, "22,855,952"
    if exact:
        return float(text.replace(",", ""))
    match = re.search(r"(\d+(?:\.\d+)?)\s*(M|G)\b", text)  # "about 6.8 M", "5 G"; not "Inception-v3's"
    if not match or match.group(2) != unit:
        return math.nan
    return float(match.group(1)) * (1e6 if unit == "M" else 1.0)


def zoo_section(mode: Tier, seed: int, results_root: Path | None = None) -> Section:
    """Every model's parameters and MACs at its native input beside its reference port and its paper."""
    table = zoo_table(with_macs=True).merge(published_errors(), on="model", how="left")
    figure_data = table.assign(
        gmacs=table["conv_fc_gmacs"],
        published_params_value=[_printed_number(t, "M") for t in table["published_params"]],
        published_gmacs_value=[_printed_number(t, "G") for t in table["published_gmacs"]])
    return Section(
        title="The zoo against its references",
        text=("Every registered model with default knobs and its aux heads off, counted at its native input: "
              "parameters, and MACs with fvcore (conv + FC, the convention of the papers and timm). Three kinds of "
              "figure are kept apart: ours; the **reference port** (the released network as torchvision, timm or "
              "the authors' port builds it, counted with those libraries: ours equals it to the parameter); and "
              "what each **paper prints**, as printed. The `_paper` variants rebuild a paper's own figure where it "
              "differs from the released network (second table). " + V3_NOTE),
        tables=[Table("zoo", "Model zoo: our counts beside the reference ports and the papers' printed figures "
                             "(aux heads off; with them in their own column)", table, columns=ZOO_COLUMNS,
                      notes=[MAC_CONVENTION, "Ours - port: our parameter count minus the port's (small_inception: "
                                             "the paper drops BN's scale, 1,712 parameters)."]),
                Table("zoo_variants", "What each builder makes, against the released network of its family",
                      table, columns=VARIANT_COLUMNS),
                Table("zoo_sources", "Where each reference figure comes from", table, inline=False)],
        figures=[Figure("zoo_params_macs",
                        "Parameters and GMACs per model (bars: ours; black ticks: the reference port; open "
                        "circles: a paper's printed figure where it prints a number): ours and the ports agree "
                        "to the parameter; GoogLeNet's and Inception-v3's papers round",
                        lambda: bar_params_macs(figure_data))],
    )


def _output_stride(grid: str, input_size: int) -> str:
    """``"1/8"`` for a 28x28 output of a 224 input: the stage a grid belongs to, comparable across inputs; a
    1x1 output (the classifier after global pooling) is the ``"head"``."""
    side = int(grid.split("x")[0])
    if side == 1 and input_size > 1:
        return "head (1x1)"
    return f"1/{2 ** max(0, round(math.log2(input_size / side)))}"


def cost_by_grid_section(mode: Tier, seed: int, results_root: Path | None = None) -> Section:
    """Where each model spends its MACs: per output grid (the table) and per output stride (the figure)."""
    frames = []
    for name in list_models():
        per_grid = summarize(_counts(name), by="grid")
        frames.append(per_grid.assign(model=name)[["model", "grid", "params", "macs", "gmacs"]])
    by_grid = pd.concat(frames, ignore_index=True)
    spatial = by_grid[by_grid["grid"].str.contains("x", regex=False)].copy()
    spatial["stride"] = [_output_stride(g, model_info(m).input_size) for m, g in zip(spatial["model"],
                                                                                      spatial["grid"])]
    strides = sorted(spatial["stride"].unique(), key=lambda s: int(s.split("/")[1]) if "/" in s else math.inf)
    pivot = spatial.pivot_table(index="model", columns="stride", values="gmacs", aggfunc="sum", fill_value=0.0)
    pivot = pivot[strides].reset_index()
    pivot["total"] = pivot[strides].sum(axis=1)
    columns = {"model": Column("Model"), **{s: Column(f"{s} (GMACs)" if "/" in s else "Head (GMACs)", digits=3)
                                           for s in strides}, "total": Column("Total (GMACs)", digits=3)}
    notes = table_notes(_counts("inception_v3"))[:1] + [
        "Grid = the module's own output height x width at the model's native input; uncounted ops (pooling, "
        "residual adds, activations) are listed per model by `inception-lab summary MODEL`."]
    return Section(
        title="Where the cost sits: MACs per grid size",
        text=("The Inception-v3 paper moves computation to the 17x17 and 8x8 grids and factorises there. The "
              "table and the figure group each module's output grid by its output stride (the grid as a fraction "
              "of the input side: 1/8 is 28x28 at 224 px and 35x35-37x37 at 299 px), so models with different "
              "inputs line up; the long form per grid is in the CSV."),
        tables=[Table("gmacs_by_grid", "GMACs by output stride at each model's native input (1/8: 28x28 at "
                      "224 px, 35x35-37x37 at 299 px)", pivot, notes=notes, columns=columns),
                Table("cost_by_grid", "Parameters and MACs per output grid of every model (long form)", by_grid,
                      inline=False, columns=COST_BY_GRID_COLUMNS)],
        figures=[Figure("gmacs_by_grid",
                        "Share of each model's MACs by output stride (native input): the Inception-v3 family "
                        "spends most at 1/8 and 1/16 (35x35 and 17x17 at 299 px), GoogLeNet at 1/8 to 1/16",
                        lambda: stacked_shares(spatial, index="model", columns="stride", value="macs",
                                               order=strides, xlabel="share of the model's MACs (%)",
                                               legend="output stride"))],
    )


BLOCK_COLUMNS = {"block": Column("Block"), "params": Column("Params"), "macs": Column("MACs"),
                 "gmacs": Column("GMACs", digits=3)}
COST_BY_GRID_COLUMNS = {"model": Column("Model"), "grid": Column("Output grid"),
                        "params": Column("Params (M)", digits=3, scale=1e-6), "macs": Column("MACs"),
                        "gmacs": Column("GMACs", digits=3)}


def blocks_section(mode: Tier, seed: int, results_root: Path | None = None) -> Section:
    """An appendix: every zoo model's parameters and MACs per block (``inception-lab summary MODEL --by
    block``), one table per model, linked from the index and set in the PDF's appendix."""
    tables = []
    for name in list_models():
        per_block = summarize(_counts(name), by="block", with_total=True)
        size = model_info(name).input_size
        tables.append(Table(f"blocks_{name}", f"{name}: parameters and MACs per block at {size}x{size} (fvcore)",
                            per_block, inline=False, notes=[MAC_CONVENTION], columns=BLOCK_COLUMNS))
    return Section(
        title="Appendix: every model block by block",
        text=("Parameters and MACs of every block of every zoo model at its native input (aux heads off), as "
              "`inception-lab summary MODEL --by block` prints them; the last row of each table is the total."),
        tables=tables)
