"""The report's document types: a :class:`Section` of prose, :class:`Table` s, :class:`Figure` s and the
:class:`~analysis.experiments.verdict.Claim` s it decides, all rendered from DataFrames, built by a
:data:`SectionBuilder` for a :data:`Tier` and a seed.

The tiers (:data:`TIERS`): ``quick`` (CI and smoke: the whole report in under 10 minutes on 2 CPU cores),
``standard`` (CPU: every trained claim decided under the paired-seed protocol, each experiment within 20
minutes and all of them within 2 hours on 2 cores; the committed ``reports/``), ``full`` (a GPU or a cluster,
the papers' scale). Same code, different configs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Mapping

import pandas as pd

from analysis.experiments.verdict import Claim
from analysis.report.tables import Column

__all__ = ["TIERS", "Figure", "Section", "SectionBuilder", "Table", "Tier"]

Tier = Literal["quick", "standard", "full"]
TIERS: tuple[str, ...] = ("quick", "standard", "full")


@dataclass
class Table:
    """A table of the report, written as ``stem.md``, ``stem.tex`` (labelled ``tab:<stem>``) and ``stem.csv``
    (the whole frame); ``title`` is its caption (a sentence that says what the table shows); ``columns`` the
    display spec of the Markdown and LaTeX forms (:class:`~analysis.report.tables.Column`: headers with units,
    one precision per column, spreads, the best value); ``inline=False`` keeps a long table out of ``index.md``
    (linked) and in the PDF's appendix."""

    stem: str
    title: str
    frame: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    inline: bool = True
    columns: Mapping[str, Column] | None = None


@dataclass
class Figure:
    """A figure of the report, saved as ``stem.png``; ``draw`` returns a matplotlib Figure."""

    stem: str
    caption: str
    draw: Callable[[], object]


@dataclass
class Section:
    """One part of the report: prose, tables and figures (all rendered from DataFrames), the verdict line, and the
    claims it decides (each a row of ``claims.csv`` and of "Claims at a glance")."""

    title: str
    text: str = ""
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    verdict: str = ""
    claims: list[Claim] = field(default_factory=list)


# ``builder(mode, seed, results_root) -> Section``; ``results_root`` is where the experiments keep their
# resumable results (sections that run no experiment ignore it).
SectionBuilder = Callable[[Tier, int, Path], Section]
