"""``inception-lab report``: the paper-style report in ``reports/``, its sections in order and how it is built.

The report computes nothing itself: each section calls the instruments or an experiment's
``run(config) -> DataFrame`` and hands the frames to :mod:`analysis.report.tables` and
:mod:`analysis.report.figures`. Everything is written into a staging folder first and swapped in at the end, so
an interrupted run leaves the previous report intact.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Literal

import pandas as pd
from tqdm.auto import tqdm

from analysis.experiments.verdict import INTERVAL_METHOD, Claim

from analysis.experiments.runner import RESULTS_FILE, RESULTS_ROOT, default_results_dir
from analysis.io import atomic_write_text
from analysis.report.document import TIERS, Section, SectionBuilder, Tier
from analysis.report.figures import save_figure
from analysis.report.latex import INSTALL_HINT, PDF_FILE, TEX_FILE, compile_pdf, document, pdflatex_available
from analysis.report.provenance import PROVENANCE_FILE, collect, read_tier, training_cost
from analysis.report.sections import (
    aux_heads,
    bn_speedup,
    dead_units,
    design_principles,
    factorization,
    factorization_grid,
    label_smoothing,
    residual_speedup,
    smoothness,
    xception_vs_v3,
    zoo,
)
from analysis.report.tables import Column, render, write_table

__all__ = ["CLAIMS_FILE", "QUICK_SECTIONS", "SECTIONS", "TIER_FOLDERS", "build_report", "render_section"]

# Every section in order: the zoo, where the cost sits, the factorization studies, then one section per
# experiment, in the order of :data:`analysis.experiments.EXPERIMENTS`.
SECTIONS: list[tuple[str, SectionBuilder]] = [
    ("zoo", zoo.zoo_section),
    ("cost_by_grid", zoo.cost_by_grid_section),
    ("factorization", factorization.section),
    ("design_principles", design_principles.section),
    ("dead_units", dead_units.section),
    ("smoothness", smoothness.section),
    ("factorization_grid", factorization_grid.section),
    ("residual_speedup", residual_speedup.section),
    ("label_smoothing", label_smoothing.section),
    ("aux_heads", aux_heads.section),
    ("xception_vs_v3", xception_vs_v3.section),
    ("bn_speedup", bn_speedup.section),
    ("blocks", zoo.blocks_section),
]

# What a default quick report runs, within its 10-minute budget on 2 CPU cores: the counting and the two headline
# experiments with the smoothness study (each quick tier is a smoke test of about a minute). `inception-lab report
# --all` adds the other five claims' smoke tests (residual and BN speed-up, label smoothing, aux heads, Xception).
QUICK_SECTIONS: tuple[str, ...] = ("zoo", "cost_by_grid", "factorization", "design_principles", "factorization_grid",
                                   "dead_units", "smoothness", "blocks")


def render_section(section: Section, folder: Path) -> str:
    """Write the section's tables and figures into ``folder``; return its Markdown for ``index.md``."""
    lines = [f"## {section.title}", ""]
    if section.text:
        lines += [section.text.strip(), ""]
    if section.verdict:
        lines += [f"**Verdict at this scale:** {section.verdict}", ""]
    for table in section.tables:
        write_table(table.frame, folder / table.stem, title=table.title, notes=table.notes, columns=table.columns)
        links = f"[CSV]({table.stem}.csv) · [LaTeX]({table.stem}.tex) · [Markdown]({table.stem}.md)"
        if table.inline:
            lines += [render(table.frame, "markdown", title=table.title, notes=table.notes,
                             columns=table.columns).rstrip(), "", links, ""]
        else:
            lines += [f"**{table.title}** ({len(table.frame)} rows): {links}", ""]
    for fig in section.figures:
        path = save_figure(fig.draw(), folder / fig.stem)
        lines += [f"![{fig.caption}]({path.name})", "", f"*{fig.caption}*", ""]
    return "\n".join(lines)


# Where each tier's report goes by default: the committed reports/ is the standard tier, so the quick and full
# tiers write elsewhere (runs/ is not committed) and never overwrite it by accident.
TIER_FOLDERS: dict[str, Path] = {"standard": Path("reports"), "quick": Path("runs") / "report-quick",
                                 "full": Path("runs") / "report-full"}
CLAIMS_FILE = "claims.csv"
MACHINE_NOTE = (
    "Trained numbers depend on the machine: the same command and seed give other numbers on another CPU (other "
    "vector kernels round differently, and a training trajectory amplifies it; e.g. an AVX2 and an AVX-512 "
    "machine differed in the second digit). The verdicts are built to survive that: each compares paired "
    "seeds and asks whether a 95% interval excludes zero, so a verdict flips only when its interval's edge is "
    "within the machine-to-machine wobble of zero; the effect, interval and MDE are printed so a reader can see "
    "how far each verdict is from flipping.")


def build_report(out: str | Path | None = None, *, tier: Tier = "quick", seed: int = 0,
                 sections: list[str] | Literal["all"] | None = None, progress: bool = True,
                 results_root: str | Path = RESULTS_ROOT, force: bool = False, pdf: bool = True) -> Path:
    """Write the report of ``tier`` to ``out`` (default :data:`TIER_FOLDERS`: ``reports/`` for the standard
    tier): ``index.md`` (provenance, claims at a glance, then every section), every table as Markdown, LaTeX
    and CSV, figures as PNG, ``claims.csv`` and ``provenance.json``.

    ``sections`` picks section keys; ``None`` means every section, except that the quick tier leaves out the
    slower claims (:data:`QUICK_SECTIONS`); ``"all"`` means every section in any tier. The experiments keep
    their resumable results under ``results_root``, so a rerun reuses them. A folder that holds another tier's
    report is refused unless ``force``. ``pdf``: compile ``report.tex`` into ``report.pdf`` when ``pdflatex`` is
    installed. Everything is written to a staging folder and swapped in at the end."""
    if tier not in TIERS:
        raise ValueError(f"tier must be one of {', '.join(TIERS)}, got {tier!r}")
    out = TIER_FOLDERS[tier] if out is None else Path(out)
    there = read_tier(out)
    if there is not None and there != tier and not force:
        raise ValueError(f"{out} holds the {there} tier's report; writing the {tier} tier there would overwrite "
                         f"it: give another folder (--out), or --force to replace it")
    builders = SECTIONS
    known = [key for key, _ in builders]
    if sections is None:
        sections = list(QUICK_SECTIONS) if tier == "quick" else known
    elif sections == "all":
        sections = known
    unknown = [s for s in sections if s not in known]
    if unknown:
        raise ValueError(f"unknown report section(s) {unknown}; known sections: {', '.join(known)}")
    builders = [(k, b) for k, b in builders if k in sections]
    command = f"inception-lab report --tier {tier} --seed {seed}"
    provenance = collect(tier, seed, command, output=out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    try:
        body, claims, built = [], [], []
        for key, builder in tqdm(builders, desc=f"report ({tier})", disable=not progress, unit="section"):
            start = time.perf_counter()
            section = builder(tier, seed, Path(results_root))
            body.append(render_section(section, staging))
            provenance.sections[key] = round(time.perf_counter() - start, 1)
            cost = training_cost(default_results_dir(key, tier, seed, results_root) / RESULTS_FILE)
            if cost["runs"]:
                provenance.training[key] = cost
            claims += [(section.title, claim) for claim in section.claims]
            built.append(section)
        titles = [s.split(chr(10))[0][3:] for s in body]
        header = ["# Inception Lab report", "",
                  f"**Tier: `{tier}`**, seed {seed}. Regenerate with `{command}`. {TIER_NOTES[tier]}", "",
                  provenance.summary(), "", provenance.per_section(), "",
                  "MACs are counted by fvcore (one fused multiply-add = one MAC); FLOPs, where shown, are 2 x MACs.",
                  ""]
        if claims:
            header += _claims_at_a_glance(claims, staging)
        atomic_write_text(staging / TEX_FILE, document(built, header=header[2:7],
                                                       claims_table=Path(CLAIMS_FILE).stem if claims else None))
        if pdf and pdflatex_available():
            compile_pdf(staging)
            whole = f"[PDF]({PDF_FILE}) ([LaTeX source]({TEX_FILE}))"
        elif pdf:
            whole = f"[LaTeX source]({TEX_FILE}); no PDF: pdflatex is not installed here (`{INSTALL_HINT}`)"
        else:
            whole = f"[LaTeX source]({TEX_FILE})"
        header += [f"The whole report as one document: {whole}.", "",
                   "Contents: " + " · ".join(f"[{t}](#{_anchor(t)})" for t in titles), ""]
        atomic_write_text(staging / "index.md", "\n".join(header) + "\n" + "\n".join(body))
        atomic_write_text(staging / PROVENANCE_FILE, provenance.to_json())
        _swap_in(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return out / "index.md"


TIER_NOTES = {
    "quick": "The quick tier is a smoke test (few seeds, short runs): its verdicts are not evidence; the committed "
             "`reports/` holds the standard tier.",
    "standard": "The standard tier decides every trained claim under the paired-seed protocol on 2 CPU cores.",
    "full": "The full tier runs the papers' scale on a GPU or a cluster.",
}


# The claims table as shown (Markdown, LaTeX): the measure's long wording stays in claims.csv and in each section.
CLAIM_DISPLAY = {"claim": Column("Claim", width="5.2cm"),
                 "effect": Column("Effect [95% CI]", digits=3, interval=("ci_low", "ci_high")),
                 "seeds": Column("Seeds"), "arms_learned": Column("Runs learned"), "mde": Column("MDE", digits=3),
                 "verdict": Column("Verdict")}


def _claims_at_a_glance(claims: list[tuple[str, Claim]], folder: Path) -> list[str]:
    """Write ``claims.csv`` and return the "Claims at a glance" lines of ``index.md``, each row linked to its
    section."""
    frame = pd.DataFrame([{**claim.row(), "section": f"index.md#{_anchor(title)}"} for title, claim in claims])
    write_table(frame, folder / Path(CLAIMS_FILE).stem, columns=CLAIM_DISPLAY,
                title="Claims at a glance: each paper claim tested by a trained experiment, its paired effect and "
                      "verdict",
                notes=[f"Effect and interval: {INTERVAL_METHOD} on paired seeds, signed so that positive is the "
                       "paper's direction; MDE: the minimum detectable effect at 80% power."])
    shown = pd.DataFrame({
        "Claim": [f"[{claim.claim}](#{_anchor(title)})" for title, claim in claims],
        "Paper": [claim.paper for _, claim in claims],
        "Measure": [claim.measure for _, claim in claims],
        "Effect [95% CI]": [_interval(claim) for _, claim in claims],
        "Seeds": [claim.verdict.row()["seeds"] for _, claim in claims],
        "Arms learned": [claim.verdict.arms_learned for _, claim in claims],
        "MDE": [_number(claim.verdict.row()["mde"]) for _, claim in claims],
        "Verdict": [f"**{claim.verdict.word}**" for _, claim in claims],
    })
    return ["## Claims at a glance", "", render(shown, "markdown").rstrip(), "",
            f"[CSV]({CLAIMS_FILE}). {MACHINE_NOTE}", ""]


def _number(value: float) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.3g}"


def _interval(claim: Claim) -> str:
    row = claim.verdict.row()
    if math.isnan(row["effect"]):
        return "-"
    return f"{row['effect']:+.3g} [{row['ci_low']:+.3g}, {row['ci_high']:+.3g}]"


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
