"""Figures: seaborn plots of tidy DataFrames, saved as PNG atomically. Figures only render; they never compute.

The report's look (seaborn's ``whitegrid`` theme in the ``notebook`` context, :data:`STYLE`) is applied while a
figure is drawn and saved (:func:`figure_style`), never at import: importing this module changes no global
matplotlib setting, so a notebook or a user's own plots keep theirs.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence, TypeVar

import matplotlib as mpl
import matplotlib.pyplot as plt
from matplotlib.patches import Patch, Rectangle
import numpy as np
import pandas as pd
import seaborn as sns

from analysis.io import atomic_path

__all__ = ["STYLE", "band_lines", "bar_params_macs", "category_grid", "figure_style", "heatmap", "lines",
           "reliability_figure", "save_figure", "stacked_shares", "styled"]

# seaborn's theme for the report. ``color_codes=False``: seaborn would otherwise remap matplotlib's one-letter
# colours ("b", "g", ...) for the whole process, a change that no rc context undoes.
STYLE: dict[str, Any] = dict(style="whitegrid", context="notebook", color_codes=False)

Draw = TypeVar("Draw", bound=Callable[..., Any])


@contextmanager
def figure_style() -> Iterator[None]:
    """Draw and save in the report's look inside the block; matplotlib's settings are restored after it."""
    with mpl.rc_context():
        sns.set_theme(**STYLE)
        yield


def styled(draw: Draw) -> Draw:
    """Run a draw function inside :func:`figure_style`."""
    @functools.wraps(draw)
    def in_style(*args: Any, **kwargs: Any) -> Any:
        with figure_style():
            return draw(*args, **kwargs)

    return in_style  # type: ignore[return-value]


def save_figure(fig: plt.Figure, path: str | Path) -> Path:
    """Save ``fig`` as a PNG atomically (no date in the metadata, so the same data gives the same bytes), in the
    report's look (ticks and labels are laid out when the figure is drawn, here)."""
    path = Path(path).with_suffix(".png")
    with atomic_path(path) as tmp, figure_style():
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return path


@styled
def bar_params_macs(df: pd.DataFrame, *, label: str = "model") -> plt.Figure:
    """Side-by-side bars of our parameters (millions) and conv + FC GMACs per ``label``; black ticks mark the
    reference port's parameter count (``ref_params``), open circles a paper's printed figure where it is a
    number (``published_params_value``, ``published_gmacs_value``)."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.45 * len(df) + 1.8), sharey=True)
    order = list(df[label])
    y = np.arange(len(df))
    panels = [("params", 1e6, "ref_params", "published_params_value", "parameters (millions)"),
              ("gmacs", 1.0, None, "published_gmacs_value", "GMACs at the native input (conv + FC)")]
    for ax, (col, scale, port, printed, xlabel) in zip(axes, panels):
        sns.barplot(x=df[col] / scale, y=df[label], order=order, ax=ax, color=sns.color_palette()[0],
                    label="ours (fvcore)")
        if port and port in df:
            ax.scatter(df[port].astype("float") / scale, y, marker="|", s=300, color="black", zorder=3,
                       label="reference port (measured)")
        if printed in df and df[printed].notna().any():
            ax.scatter(df[printed].astype("float") / scale, y, marker="o", s=45, facecolors="none",
                       edgecolors="crimson", zorder=4, label="paper's printed figure")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("")
        ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    return fig


@styled
def stacked_shares(df: pd.DataFrame, *, index: str, columns: str, value: str, order: Sequence[str],
                   xlabel: str, legend: str, title: str = "") -> plt.Figure:
    """Horizontal 100%-stacked bars: each ``index`` row's ``value`` split over ``columns`` (in ``order``, a
    sequential palette), as percentages, so rows of very different totals compare at a glance."""
    pivot = df.pivot_table(index=index, columns=columns, values=value, aggfunc="sum", fill_value=0.0)
    pivot = pivot.reindex(columns=[c for c in order if c in pivot.columns])
    shares = 100.0 * pivot.div(pivot.sum(axis=1), axis=0)
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(shares) + 1.8))
    colours = sns.color_palette("viridis", n_colors=len(shares.columns))
    shares.plot.barh(stacked=True, ax=ax, color=colours, width=0.8)
    ax.set_xlim(0, 100)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("")
    ax.set_title(title)
    ax.legend(title=legend, bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.tight_layout()
    return fig


@styled
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


@styled
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


@styled
def category_grid(frame: pd.DataFrame, *, x: str, y: str, category: str, categories: Sequence[str],
                  col: str | None = None, label: str | None = None, title: str = "", xlabel: str | None = None,
                  ylabel: str | None = None) -> Any:
    """A phase diagram: one cell per (``x``, ``y``) value pair (both read as ordered labels), coloured by its
    ``category`` (one colour per entry of ``categories``, in that order, with a legend), and written with its
    ``label`` (e.g. an accuracy); one panel per ``col``. A pair with several rows shows the last. Renders only."""
    facets = [None] if col is None else list(dict.fromkeys(frame[col]))
    xs, ys = sorted(frame[x].unique()), sorted(frame[y].unique())
    palette = dict(zip(categories, sns.color_palette("Set2", n_colors=len(categories))))
    fig, axes = plt.subplots(1, len(facets), figsize=(0.9 * len(xs) * len(facets) + 2.5, 0.55 * len(ys) + 2.2),
                             squeeze=False, sharey=True)
    for ax, facet in zip(axes[0], facets):
        part = frame if facet is None else frame[frame[col] == facet]
        for _, row in part.iterrows():
            i, j = xs.index(row[x]), ys.index(row[y])
            ax.add_patch(Rectangle((i - 0.5, j - 0.5), 1, 1, color=palette[row[category]], ec="white"))
            if label is not None:
                ax.text(i, j, str(row[label]), ha="center", va="center", fontsize="small")
        ax.set_xlim(-0.5, len(xs) - 0.5)
        ax.set_ylim(-0.5, len(ys) - 0.5)
        ax.set_xticks(range(len(xs)), [f"{v:g}" if isinstance(v, float) else str(v) for v in xs])
        ax.set_yticks(range(len(ys)), [f"{v:g}" if isinstance(v, float) else str(v) for v in ys])
        ax.grid(False)
        ax.set_title(title if facet is None else str(facet))
        ax.set_xlabel(xlabel or x)
        ax.set_ylabel(ylabel or y)
    handles = [Patch(color=palette[c], label=c) for c in categories]
    fig.legend(handles=handles, title=category, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small")
    if col is not None and title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


@styled
def band_lines(frame: pd.DataFrame, *, x: str, y: str, hue: str, col: str | None = None, seed: str = "seed",
               title: str = "", xlabel: str | None = None, ylabel: str | None = None, logy: bool = False,
               per_seed: bool = False, hlines: Mapping[str, float] | None = None, sharey: bool = False,
               legend_once: bool = False) -> Any:
    """The mean over seeds of ``y`` against ``x``, one line per ``hue`` (one panel per ``col``), with the min-max
    band over seeds shaded: the spread the verdicts compare effects against. ``per_seed`` draws every seed's own
    line instead (for an ``x`` such as time, whose values differ between seeds); ``hlines`` adds labelled
    horizontal reference lines (e.g. a target accuracy); ``sharey`` one y scale for every panel; ``legend_once``
    one legend, in the first panel, instead of one per panel. Renders only."""
    data = frame.dropna(subset=[x, y])
    facets = [None] if col is None else list(dict.fromkeys(data[col]))
    hues = list(dict.fromkeys(data[hue]))
    palette = dict(zip(hues, sns.color_palette(n_colors=max(len(hues), 1))))
    fig, axes = plt.subplots(1, len(facets), figsize=(5.5 * len(facets), 4), squeeze=False, sharey=sharey)
    for ax, facet in zip(axes[0], facets):
        part = data if facet is None else data[data[col] == facet]
        for key in hues:
            grp = part[part[hue] == key]
            if grp.empty:
                continue
            if per_seed and seed in grp:
                for i, (_, one) in enumerate(grp.groupby(seed, sort=True)):
                    one = one.sort_values(x)
                    ax.plot(one[x], one[y], color=palette[key], alpha=0.7, linewidth=1.2,
                            label=f"{key}" if i == 0 else None)
                continue
            stats = grp.groupby(x, sort=True)[y].agg(["mean", "min", "max"]).reset_index()
            seeds = grp[seed].nunique() if seed in grp else 1
            ax.plot(stats[x], stats["mean"], marker="o", markersize=3, color=palette[key], label=f"{key}")
            if seeds > 1:
                ax.fill_between(stats[x], stats["min"], stats["max"], color=palette[key], alpha=0.2, linewidth=0)
        for label, level in (hlines or {}).items():
            ax.axhline(level, color="grey", linestyle=":", linewidth=1)
            ax.annotate(label, (0.01, level), xycoords=("axes fraction", "data"), fontsize="x-small",
                        color="grey", va="bottom")
        if logy:
            ax.set_yscale("log")
        ax.set_title(title if facet is None else str(facet))
        ax.set_xlabel(xlabel or x)
        ax.set_ylabel(ylabel or y)
        if not legend_once or ax is axes[0][0]:
            ax.legend(title=hue, fontsize="small")
    if col is not None and title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


@styled
def reliability_figure(bins: pd.DataFrame, *, hue: str, title: str = "Reliability diagram") -> Any:
    """Accuracy against confidence per bin, one line per ``hue`` (bins pooled over seeds by count), the
    diagonal of perfect calibration, and the share of samples per bin below. Renders only."""
    hues = list(dict.fromkeys(bins[hue]))
    palette = dict(zip(hues, sns.color_palette(n_colors=max(len(hues), 1))))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    width = float((bins["upper"] - bins["lower"]).iloc[0]) if len(bins) else 0.1
    offsets = np.linspace(-0.3, 0.3, max(len(hues), 1)) * width if len(hues) > 1 else [0.0]
    for offset, key in zip(offsets, hues):
        grp = bins[bins[hue] == key]
        pooled = grp.assign(hits=grp["accuracy"].fillna(0) * grp["count"],
                            conf=grp["confidence"].fillna(0) * grp["count"])
        pooled = pooled.groupby(["lower", "upper"], sort=True)[["count", "hits", "conf"]].sum().reset_index()
        filled = pooled[pooled["count"] > 0]
        top.plot(filled["conf"] / filled["count"], filled["hits"] / filled["count"], marker="o",
                 color=palette[key], label=f"{hue}={key}")
        centres = (pooled["lower"] + pooled["upper"]) / 2 + offset
        bottom.bar(centres, pooled["count"] / max(pooled["count"].sum(), 1), width=width / max(len(hues), 1),
                   color=palette[key], alpha=0.8)
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy in bin")
    top.set_title(title)
    top.legend(fontsize="small")
    bottom.set_xlabel("confidence (top softmax probability)")
    bottom.set_ylabel("share of samples")
    fig.tight_layout()
    return fig
