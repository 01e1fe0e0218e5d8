"""Figures: seaborn plots of tidy DataFrames, saved as PNG atomically. Figures only render; they never compute."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from analysis.io import atomic_path  # noqa: E402

sns.set_theme(style="whitegrid", context="notebook")


def save_figure(fig: plt.Figure, path: str | Path) -> Path:
    """Save ``fig`` as a PNG atomically (no date in the metadata, so the same data gives the same bytes)."""
    path = Path(path).with_suffix(".png")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return path


def bar_params_macs(df: pd.DataFrame, *, label: str = "model") -> plt.Figure:
    """Side-by-side bars of parameters (millions) and GMACs per ``label``, reference marks where given."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.45 * len(df) + 1.5), sharey=True)
    order = list(df[label])
    for ax, (col, ref, xlabel) in zip(axes, [("params", "ref_params", "parameters (millions)"),
                                             ("gmacs", "ref_gmacs", "GMACs at native input")]):
        scale = 1e6 if col == "params" else 1.0
        sns.barplot(x=df[col] / scale, y=df[label], order=order, ax=ax, color=sns.color_palette()[0])
        if ref in df:
            refs = df[ref].astype("float") / scale
            ax.scatter(refs, range(len(df)), marker="|", s=300, color="black", zorder=3, label="published")
            ax.legend(loc="lower right")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("")
    fig.tight_layout()
    return fig


def stacked_by_grid(df: pd.DataFrame, *, model: str = "model", grid: str = "grid", value: str = "gmacs",
                    title: str = "") -> plt.Figure:
    """Horizontal stacked bars: how each model's cost splits over grid sizes."""
    pivot = df.pivot_table(index=model, columns=grid, values=value, aggfunc="sum", fill_value=0)
    pivot = pivot[sorted(pivot.columns, key=_grid_key, reverse=True)]
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(pivot) + 1.5))
    pivot.plot.barh(stacked=True, ax=ax, colormap="viridis", width=0.8)
    ax.set_xlabel(value)
    ax.set_ylabel("")
    ax.set_title(title)
    ax.legend(title="output grid", bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.tight_layout()
    return fig


def _grid_key(grid: str) -> int:
    try:
        return int(str(grid).split("x")[0])
    except ValueError:
        return -1


def lines(df: pd.DataFrame, *, x: str, y: str, hue: str | None = None, style: str | None = None,
          col: str | None = None, logy: bool = False, title: str = "", xlabel: str | None = None,
          ylabel: str | None = None, band: Sequence[str] | None = None) -> plt.Figure:
    """Line plot (optionally faceted by ``col``), with a min-max band when ``band=(low, high)`` is given."""
    facets = [None] if col is None else list(dict.fromkeys(df[col]))
    fig, axes = plt.subplots(1, len(facets), figsize=(5.5 * len(facets), 4), squeeze=False, sharey=logy)
    for ax, facet in zip(axes[0], facets):
        part = df if facet is None else df[df[col] == facet]
        if band is not None:
            palette = sns.color_palette(n_colors=part[hue].nunique() if hue else 1)
            for i, (key, grp) in enumerate(part.groupby(hue, sort=False) if hue else [(None, part)]):
                ax.fill_between(grp[x], grp[band[0]], grp[band[1]], alpha=0.3, color=palette[i], label=key)
        else:
            sns.lineplot(data=part, x=x, y=y, hue=hue, style=style, marker="o", ax=ax)
        if logy:
            ax.set_yscale("log")
        ax.set_title(f"{title}{'' if facet is None else f' ({col}={facet})'}")
        ax.set_xlabel(xlabel or x)
        ax.set_ylabel(ylabel or y)
        if hue:
            ax.legend(title=hue)
    fig.tight_layout()
    return fig


def heatmap(df: pd.DataFrame, *, index: str, columns: str, values: str, title: str = "", fmt: str = ".2f",
            cmap: str = "rocket_r", vmin: float | None = None, vmax: float | None = None) -> plt.Figure:
    """An annotated heatmap of ``values`` over ``index`` x ``columns`` (e.g. a phase diagram); fix the colour
    scale with ``vmin``/``vmax`` (e.g. 0 and 1 for fractions) so figures of different runs compare."""
    pivot = df.pivot_table(index=index, columns=columns, values=values, aggfunc="mean")
    fig, ax = plt.subplots(figsize=(1.2 * len(pivot.columns) + 3, 0.6 * len(pivot) + 2))
    sns.heatmap(pivot, annot=True, fmt=fmt, cmap=cmap, ax=ax, cbar_kws={"label": values}, vmin=vmin, vmax=vmax)
    ax.set_title(title)
    fig.tight_layout()
    return fig
