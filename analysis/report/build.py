"""``inception-lab report``: the paper-style report in ``reports/``, its sections in order and how it is built.

The report computes nothing itself: each section calls the instruments or an experiment's
``run(config) -> DataFrame`` and hands the frames to :mod:`analysis.report.tables` and
:mod:`analysis.report.figures`. Everything is written into a staging folder first and swapped in at the end, so
an interrupted run leaves the previous report intact.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Literal

from tqdm.auto import tqdm

from analysis.experiments.runner import RESULTS_ROOT
from analysis.io import atomic_write_text
from analysis.report.document import Mode, Section, SectionBuilder
from analysis.report.figures import save_figure
from analysis.report.sections import (
    aux_heads,
    bn_speedup,
    dead_units,
    factorization,
    factorization_grid,
    label_smoothing,
    residual_speedup,
    smoothness,
    xception_vs_v3,
    zoo,
)
from analysis.report.tables import render, write_table

__all__ = ["QUICK_SECTIONS", "SECTIONS", "build_report", "render_section"]

# Every section in order: the zoo, where the cost sits, the factorization studies, then one section per
# experiment, in the order of :data:`analysis.experiments.EXPERIMENTS`.
SECTIONS: list[tuple[str, SectionBuilder]] = [
    ("zoo", zoo.zoo_section),
    ("cost_by_grid", zoo.cost_by_grid_section),
    ("factorization", factorization.section),
    ("dead_units", dead_units.section),
    ("smoothness", smoothness.section),
    ("factorization_grid", factorization_grid.section),
    ("residual_speedup", residual_speedup.section),
    ("label_smoothing", label_smoothing.section),
    ("aux_heads", aux_heads.section),
    ("xception_vs_v3", xception_vs_v3.section),
    ("bn_speedup", bn_speedup.section),
]

# What a default quick report runs, within its 10-minute budget on 2 CPU cores: the counting and the three
# main experiments. The claims of issue 9 (residual speed-up, label smoothing, aux heads, Xception, BN
# speed-up) take minutes each even in their quick configs: `inception-lab report --all` adds them.
QUICK_SECTIONS: tuple[str, ...] = ("zoo", "cost_by_grid", "factorization", "factorization_grid", "dead_units",
                                   "smoothness")


def render_section(section: Section, folder: Path) -> str:
    """Write the section's tables and figures into ``folder``; return its Markdown for ``index.md``."""
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
                 sections: list[str] | Literal["all"] | None = None, progress: bool = True,
                 results_root: str | Path = RESULTS_ROOT) -> Path:
    """Write the report to ``out`` (``index.md`` plus every table as Markdown, LaTeX and CSV, figures as PNG).

    ``mode="quick"`` runs on 2 CPU cores in minutes; ``"full"`` is for a GPU. ``sections`` picks section keys;
    ``None`` means every section in full mode and, in quick mode, the ones that fit its 10-minute budget (the
    counting, the factorization studies, and the dead-unit, smoothness and factorization-by-grid
    experiments); ``"all"`` means every section in either mode. The experiments keep their resumable results
    under ``results_root`` (default ``runs/experiments`` in the current directory), so a rerun reuses them. The
    same seed gives the same tables byte for byte.
    """
    if mode not in ("quick", "full"):
        raise ValueError(f"mode must be 'quick' or 'full', got {mode!r}")
    out = Path(out)
    builders = SECTIONS
    known = [key for key, _ in builders]
    if sections is None:
        sections = list(QUICK_SECTIONS) if mode == "quick" else known
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
            section = builder(mode, seed, Path(results_root))
            body.append(render_section(section, staging))
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
