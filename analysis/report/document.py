"""The report's document types: a :class:`Section` of prose, :class:`Table` s and :class:`Figure` s, all
rendered from DataFrames, built by a :data:`SectionBuilder` for a :data:`Mode` (the tier) and a seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import pandas as pd

__all__ = ["Figure", "Mode", "Section", "SectionBuilder", "Table"]

Mode = Literal["quick", "full"]


@dataclass
class Table:
    """A table of the report, written as ``stem.md``, ``stem.tex`` and ``stem.csv``; ``inline=False`` keeps
    a long table out of ``index.md`` (linked only)."""

    stem: str
    title: str
    frame: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    inline: bool = True


@dataclass
class Figure:
    """A figure of the report, saved as ``stem.png``; ``draw`` returns a matplotlib Figure."""

    stem: str
    caption: str
    draw: Callable[[], object]


@dataclass
class Section:
    """One part of the report: prose, tables and figures (all rendered from DataFrames)."""

    title: str
    text: str = ""
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    verdict: str = ""


# ``builder(mode, seed, results_root) -> Section``; ``results_root`` is where the experiments keep their
# resumable results (sections that run no experiment ignore it).
SectionBuilder = Callable[[Mode, int, Path], Section]
