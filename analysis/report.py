"""``inception-lab report``: the paper-style report in ``reports/``.

The report computes nothing itself: each section calls the analysis functions or an experiment's
``run(config) -> DataFrame`` and hands the frames to :mod:`analysis.tables` and :mod:`analysis.figures`.
Everything is written into a staging folder first and swapped in at the end, so an interrupted run leaves
the previous report intact.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import pandas as pd
from tqdm.auto import tqdm

from analysis.io import atomic_write_text
from analysis.tables import render, write_table

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
    stem: str
    caption: str
    draw: Callable[[], object]  # returns a matplotlib Figure


@dataclass
class Section:
    """One part of the report: prose, tables and figures (all rendered from DataFrames)."""

    title: str
    text: str = ""
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    verdict: str = ""


SectionBuilder = Callable[[Mode, int], Section]


def _section_builders() -> tuple[list[tuple[str, SectionBuilder]], tuple[str, ...]]:
    """Every section in order, and the keys a default quick report runs."""
    from analysis import report_sections as rs

    return rs.SECTIONS, rs.QUICK_SECTIONS


def _render_section(section: Section, folder: Path) -> str:
    from analysis.figures import save_figure

    lines = [f"## {section.title}", ""]
    if section.text:
        lines += [section.text.strip(), ""]
    if section.verdict:
        lines += [f"**Verdict at this scale:** {section.verdict}", ""]
    for table in section.tables:
        write_table(table.frame, folder / table.stem, title=table.title, notes=table.notes)
        links = f"[CSV]({table.stem}.csv) · [LaTeX]({table.stem}.tex) · [Markdown]({table.stem}.md)"
        if table.inline:
            lines += [render(table.frame, "markdown", title=table.title, notes=table.notes).rstrip(), "", links, ""]
        else:
            lines += [f"**{table.title}** ({len(table.frame)} rows): {links}", ""]
    for fig in section.figures:
        path = save_figure(fig.draw(), folder / fig.stem)
        lines += [f"![{fig.caption}]({path.name})", "", f"*{fig.caption}*", ""]
    return "\n".join(lines)


def build_report(out: str | Path = "reports", *, mode: Mode = "quick", seed: int = 0,
                 sections: list[str] | Literal["all"] | None = None, progress: bool = True) -> Path:
    """Write the report to ``out`` (``index.md`` plus every table as Markdown, LaTeX and CSV, figures as PNG).

    ``mode="quick"`` runs on 2 CPU cores in minutes; ``"full"`` is for a GPU. ``sections`` picks section keys;
    ``None`` means every section in full mode and, in quick mode, the ones that fit its 10-minute budget (the
    counting, the factorization studies, and the dead-unit, smoothness and factorization-by-grid
    experiments); ``"all"`` means every section in either mode. The same seed gives the same tables byte
    for byte.
    """
    if mode not in ("quick", "full"):
        raise ValueError(f"mode must be 'quick' or 'full', got {mode!r}")
    out = Path(out)
    builders, quick_keys = _section_builders()
    known = [key for key, _ in builders]
    if sections is None:
        sections = list(quick_keys) if mode == "quick" else known
    elif sections == "all":
        sections = known
    unknown = [s for s in sections if s not in known]
    if unknown:
        raise ValueError(f"unknown report section(s) {unknown}; known sections: {', '.join(known)}")
    builders = [(k, b) for k, b in builders if k in sections]
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    try:
        body = []
        for key, builder in tqdm(builders, desc=f"report ({mode})", disable=not progress, unit="section"):
            section = builder(mode, seed)
            body.append(_render_section(section, staging))
        header = [
            "# Inception Lab report",
            "",
            f"Mode: `{mode}`, seed {seed}. Regenerate with `inception-lab report --{mode} --seed {seed}`.",
            "MACs are counted by fvcore (one fused multiply-add = one MAC); FLOPs, where shown, are 2 x MACs.",
            "",
            "Contents: " + " · ".join(f"[{s.split(chr(10))[0][3:]}](#{_anchor(s.split(chr(10))[0][3:])})"
                                      for s in body),
            "",
        ]
        atomic_write_text(staging / "index.md", "\n".join(header) + "\n" + "\n".join(body))
        _swap_in(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return out / "index.md"


def _anchor(title: str) -> str:
    return "".join(ch for ch in title.lower().replace(" ", "-") if ch.isalnum() or ch in "-_")


def _swap_in(staging: Path, out: Path) -> None:
    """Replace ``out`` with ``staging`` by two renames; the old report is removed only after."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(staging, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
