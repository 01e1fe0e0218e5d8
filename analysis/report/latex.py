"""The report as one LaTeX document (``report.tex``) and, where ``pdflatex`` is installed, ``report.pdf``.

The document follows ``index.md``: the provenance, the claims at a glance, then every section with its text,
verdict, inline tables (``\\input`` of the table files the report wrote) and figures; tables kept out of the
index (long ones) go to an appendix as ``longtable`` s. It needs only ``booktabs``, ``longtable``, ``graphicx``
and ``hyperref``, all in ``texlive-latex-recommended`` (``apt-get install texlive-latex-recommended``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Sequence

from analysis.report.document import Section
from analysis.report.tables import latex_escape

__all__ = ["INSTALL_HINT", "PDF_FILE", "TEX_FILE", "compile_pdf", "document", "pdflatex_available"]

TEX_FILE = "report.tex"
PDF_FILE = "report.pdf"
INSTALL_HINT = "apt-get install texlive-latex-recommended"
_LINK = re.compile(r"\[([^\]]+)\]\([^)]*\)")
_PREAMBLE = r"""\documentclass[10pt]{article}
\usepackage[a4paper,margin=2cm]{geometry}
\usepackage{booktabs}
\usepackage{longtable}
\usepackage{graphicx}
\usepackage[hidelinks]{hyperref}
\usepackage{etoolbox}
% Tables set a size smaller than the text, so the wide ones (the zoo, the per-arm tables) keep inside the margins.
\AtBeginEnvironment{tabular}{\footnotesize}
\AtBeginEnvironment{longtable}{\footnotesize}
\setlength{\tabcolsep}{4pt}
\setlength{\LTcapwidth}{\textwidth}
\title{Inception Lab report}
\date{}
\begin{document}
\maketitle
"""


def text(markdown: str) -> str:
    """A paragraph of the report's Markdown in LaTeX: links keep their text, ``code`` and **bold** keep their
    look, everything else is escaped (:func:`analysis.report.tables.latex_escape`)."""
    return latex_escape(_LINK.sub(r"\1", markdown.strip()))


def _figure(stem: str, caption: str) -> list[str]:
    return [r"\begin{figure}[htbp]", r"\centering", rf"\includegraphics[width=\linewidth,height=0.4\textheight,"
            rf"keepaspectratio]{{{stem}.png}}", rf"\caption{{{text(caption)}}}\label{{fig:{stem}}}",
            r"\end{figure}"]


def document(sections: Sequence[Section], *, header: Sequence[str], claims_table: str | None = None) -> str:
    """The LaTeX source of the whole report. ``header``: Markdown paragraphs for the top (tier, provenance);
    ``claims_table``: the stem of the claims table, set first. Table and figure files are the report's own,
    input by their stems from the same folder."""
    lines = [_PREAMBLE]
    lines += [text(paragraph) + "\n" for paragraph in header if paragraph.strip()]
    if claims_table:
        # On a page of its own: the table is about half a page, too tall for what the provenance leaves of page 1.
        lines += [r"\clearpage", r"\section*{Claims at a glance}", rf"\input{{{claims_table}.tex}}", r"\clearpage"]
    appendix = []
    for section in sections:
        lines.append(rf"\section{{{text(section.title)}}}")
        if section.text:
            lines.append(text(section.text) + "\n")
        if section.verdict:
            lines.append(r"\paragraph{Verdict.} " + text(section.verdict) + "\n")
        for table in section.tables:
            (lines if table.inline else appendix).append(rf"\input{{{table.stem}.tex}}")
        for figure in section.figures:
            lines += _figure(figure.stem, figure.caption)
        lines.append(r"\clearpage")
    if appendix:
        lines += [r"\appendix", r"\section{Long tables}", *appendix]
    lines.append(r"\end{document}")
    return "\n".join(lines) + "\n"


def pdflatex_available() -> bool:
    return shutil.which("pdflatex") is not None


def compile_pdf(folder: Path, tex: str = TEX_FILE, *, timeout: float = 300.0) -> Path:
    """Compile ``folder/tex`` with ``pdflatex`` (twice, for references) in a scratch folder and move the PDF next
    to it; a LaTeX error raises a ``RuntimeError`` with the first error lines of the log."""
    if not pdflatex_available():
        raise FileNotFoundError(f"pdflatex is not installed; install it with `{INSTALL_HINT}`")
    folder = Path(folder)
    # A fixed date and document id: the same source gives the same PDF bytes (pdfTeX's reproducible builds).
    env = {**os.environ, "SOURCE_DATE_EPOCH": "0", "FORCE_SOURCE_DATE": "1"}
    with tempfile.TemporaryDirectory(prefix="latex-") as scratch:
        for _ in range(2):
            done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error",
                                   f"-output-directory={scratch}", tex], cwd=folder, capture_output=True,
                                  text=True, errors="replace", timeout=timeout, env=env)
            if done.returncode != 0:
                errors = [line for line in done.stdout.splitlines() if line.startswith("!")] or \
                    done.stdout.splitlines()[-5:]
                raise RuntimeError(f"pdflatex failed on {folder / tex}: {' | '.join(errors[:3])}")
        target = folder / Path(tex).with_suffix(".pdf").name
        shutil.move(str(Path(scratch) / Path(tex).with_suffix(".pdf").name), target)
    return target
