"""The report's section on the Inception papers' design rules, counted: GoogLeNet's 1x1 reductions, Inception-v3's
efficient grid-size reduction, and the representation's size along every zoo model (Inception-v3, sec. 2).

It runs no experiment, so it is the same in every tier and takes no results root.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from analysis.instruments.counting import MAC_CONVENTION
from analysis.instruments.design_principles import (grid_reduction_table, one_by_one_reduction_table,
                                                    representation_summary)
from analysis.report.document import Figure, Section, Table, Tier
from analysis.report.figures import styled
from analysis.report.tables import Column

__all__ = ["section"]

REDUCTION_COLUMNS = {
    "module": Column("Module"), "grid": Column("Grid"), "in_channels": Column("In"),
    "out_channels": Column("Out"), "naive_out_channels": Column("Out, naive"),
    "params": Column("Params (K)", digits=0, scale=1e-3), "naive_params": Column("Params, naive (K)", digits=0, scale=1e-3),
    "macs": Column("MMACs", digits=1, scale=1e-6), "naive_macs": Column("MMACs, naive", digits=1, scale=1e-6),
    "macs_ratio": Column("Naive / reduced", digits=2),
}
GRID_COLUMNS = {
    "form": Column("Form"), "params": Column("Params (K)", digits=0, scale=1e-3),
    "macs": Column("MMACs", digits=1, scale=1e-6), "cost_vs_parallel": Column("Cost / parallel", digits=2, best="min"),
    "output": Column("Output (C x H x W)"), "bottleneck": Column("Fewest values on the way (K)", digits=1, scale=1e-3),
    "bottleneck_vs_output": Column("Bottleneck / output", digits=2, best="max"),
}
SUMMARY_COLUMNS = {
    "model": Column("Model"), "input": Column("Input (px)"), "blocks": Column("Blocks"),
    "first_block": Column("After the first layer (K values)", digits=0, scale=1e-3),
    "last_map": Column("Last feature map (K values)", digits=0, scale=1e-3),
    "largest_drop": Column("Largest one-step drop (x)", digits=2), "at": Column("Where"),
    "largest_drop_in_body": Column("Largest drop after the stem (x)", digits=2),
    "at_in_body": Column("Where, after the stem"),
}
FIGURE_MODELS = ("googlenet", "bn_inception", "inception_v3", "inception_v4", "inception_resnet_v2", "xception")


@styled
def _representation_figure(along: pd.DataFrame) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name in FIGURE_MODELS:
        part = along[along["model"] == name]
        depth = part["step"] / part["step"].max()
        ax.plot(depth, part["elements"] / 1e3, marker="o", markersize=2.5, linewidth=1.2, label=name)
    ax.set_yscale("log")
    ax.set_xlabel("depth (block index / number of blocks; 0 = the input image)")
    ax.set_ylabel("activation size per image (thousands of values, log)")
    ax.set_title("The representation along each network")
    ax.legend(fontsize="small", ncol=2)
    fig.tight_layout()
    return fig


def section(mode: Tier, seed: int, results_root: Path | None = None) -> Section:
    """GoogLeNet's 1x1 reductions, Inception-v3's grid-size reduction and the representation along each model."""
    reductions = one_by_one_reduction_table()
    grid = grid_reduction_table()
    along, summary = representation_summary()
    by_form = grid.set_index("form")
    conv_first = by_form.loc["conv, then pool", "macs"] / by_form.loc["pool, then conv", "macs"]
    pools = summary[summary["at_in_body"].str.startswith("maxpool")]
    return Section(
        title="Design rules, counted: 1x1 reductions, grid-size reduction, representation size",
        text=("**GoogLeNet's 1x1 reductions** (sec. 4, Fig. 2). Each Inception module of Table 1, fed the input "
              "Table 1 gives it at its grid, built as the naive module (1x1, 3x3 and 5x5 convolutions and a 3x3 "
              "max pool, all on the module's input) and as the module with 1x1 reductions, in the paper's "
              "convention (no batch norm). The reductions make the modules "
              f"{reductions['macs_ratio'].min():.1f}-{reductions['macs_ratio'].max():.1f}x cheaper, more in the "
              "deeper, wider modules; and the naive module's pool branch passes every input channel on, so its "
              "output is wider than its input and stacked naive modules would grow without bound (the paper's "
              "\"computational blow up\").\n\n"
              "**Inception-v3's grid-size reduction** (sec. 5, Fig. 9-10), at the paper's example 35x35x320 → "
              "17x17x640, with 3x3 convolutions. Pooling first passes the whole representation through "
              f"{by_form.loc['pool, then conv', 'bottleneck'] / 1e3:.1f}K values, half the output (the "
              "representational bottleneck); convolving first avoids it at "
              f"{conv_first:.2f}x the cost of pooling first (the paper's 2d²k² against 2(d/2)²k²: 4x, and 4.24x "
              "here since the pool gives 17x17, not 17.5x17.5; Fig. 9's caption says 3 times for its Inception-"
              "module version). The parallel block (Fig. 10) has no bottleneck and costs "
              f"{1 / by_form.loc['pool, then conv', 'cost_vs_parallel']:.2f}x pooling first.\n\n"
              "**The representation along each network** (Inception-v3, sec. 2, principle 1: \"the representation "
              "size should gently decrease from the inputs to the outputs\"). The activation size after every "
              "block (stems layer by layer) at each model's native input. Every model shrinks fastest in its "
              "stem (a stride-2 pool there quarters it); after the stem the Inception-v3-era models shrink by at "
              "most ~3x per reduction block, widening as they go, while "
              + (", ".join(pools["model"]) + " quarter the representation at a plain max pool between stages: the "
                 "bottleneck Inception-v3 designed its reduction blocks to avoid." if len(pools) else
                 "none quarters it at a plain pool.")),
        tables=[Table("one_by_one_reductions", "GoogLeNet's Inception modules (Table 1) with their 1x1 reductions "
                      "and as naive modules, per module at its grid", reductions, columns=REDUCTION_COLUMNS,
                      notes=[MAC_CONVENTION + " Conv and FC MACs only; the paper's convention (bias, no BN)."]),
                Table("grid_reduction", "Three ways to halve the grid and double the channels (Inception-v3, "
                      "Fig. 9-10), 35x35x320 → 17x17x640: cost and the fewest values the representation passes "
                      "through", grid, columns=GRID_COLUMNS,
                      notes=["3x3 convolutions with batch norm and ReLU; 3x3/2 max pools; conv MACs only."]),
                Table("representation_summary", "The representation along each zoo model: its size after the "
                      "first layer and at the last feature map, and the largest one-step drop (the factor by which "
                      "one block shrinks it)", summary, columns=SUMMARY_COLUMNS,
                      notes=["\"After the stem\": blocks fed a grid at most 1/8 of the input's side."]),
                Table("representation_along", "The activation size after every block of every zoo model", along,
                      inline=False)],
        figures=[Figure("representation_along",
                        "Activation size per image along each network (log scale, depth normalised): steep falls "
                        "in the stems, then gentle steps at the reduction blocks",
                        lambda: _representation_figure(along))],
    )
