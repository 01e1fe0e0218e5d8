"""The one table writer: a tidy DataFrame to a terminal table, CSV, JSON, Markdown or LaTeX (booktabs).

Tables only render; they never compute.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import pandas as pd

from analysis.io import atomic_write_text

FORMATS: tuple[str, ...] = ("table", "csv", "json", "markdown", "latex")


# Integer columns that are labels, not counts: no thousands separators (a year of 2,015 reads as a count).
LABEL_COLUMNS = frozenset({"year", "seed", "step", "epoch", "grid", "n", "input", "min_input", "width", "point_id"})


def _display_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Thousands separators for integer counts, readable floats; used by the human-facing formats."""
    out = df.copy()
    for col in out.columns:
        s = out[col]
        if col in LABEL_COLUMNS:
            out[col] = s.astype(str).where(s.notna(), "")
        elif pd.api.types.is_integer_dtype(s) and not pd.api.types.is_bool_dtype(s):
            out[col] = s.map(lambda v: "" if pd.isna(v) else f"{v:,}")
        elif pd.api.types.is_float_dtype(s):
            out[col] = s.map(_format_float)
    return out.fillna("")


def _format_float(v: float) -> str:
    if pd.isna(v):
        return ""
    if abs(v) < 1000:
        return f"{v:,.4g}"
    return f"{v:,.0f}" if float(v).is_integer() else f"{v:,.1f}"


def render(df: pd.DataFrame, fmt: str = "table", *, title: str | None = None, notes: Iterable[str] = ()) -> str:
    """Render ``df`` as text in ``fmt`` (one of :data:`FORMATS`).

    ``csv`` and ``json`` keep the raw values (machine-readable, no title or notes); ``table``, ``markdown``
    and ``latex`` format numbers for reading and print ``notes`` under the table (e.g. what a MAC count
    leaves out).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    notes = list(notes)
    if fmt == "csv":
        return df.to_csv(index=False)
    if fmt == "json":
        return json.dumps(json.loads(df.to_json(orient="records")), indent=2) + "\n"
    shown = _display_frame(df)
    if fmt == "latex":
        return _latex(shown, title=title, notes=notes)
    # Numbers are already formatted; tabulate must not re-parse them (it would print 6,624,904 as 6.6249e+06).
    align = ["right" if _looks_numeric(shown[c]) else "left" for c in shown.columns]
    body = shown.to_markdown(index=False, tablefmt="github" if fmt == "markdown" else "simple",
                             disable_numparse=True, colalign=align)
    parts = []
    if title:
        parts.append(f"### {title}\n" if fmt == "markdown" else f"{title}\n")
    parts.append(body)
    if notes:
        parts.append("\n" + "\n".join(f"_{n}_" if fmt == "markdown" else f"* {n}" for n in notes))
    return "\n".join(parts) + "\n"


def _latex_escape(text: str) -> str:
    repl = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
            "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
    return "".join(repl.get(ch, ch) for ch in str(text))


def _latex(df: pd.DataFrame, *, title: str | None, notes: list[str]) -> str:
    align = "".join("r" if _looks_numeric(df[c]) else "l" for c in df.columns)
    lines = [r"\begin{table}[t]", r"\centering"]
    if title:
        lines.append(rf"\caption{{{_latex_escape(title)}}}")
    lines += [rf"\begin{{tabular}}{{{align}}}", r"\toprule", " & ".join(_latex_escape(c) for c in df.columns) + r" \\",
              r"\midrule"]
    for row in df.itertuples(index=False):
        lines.append(" & ".join(_latex_escape(v).replace(",", "{,}") if _is_number(v) else _latex_escape(v)
                                for v in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    for n in notes:
        lines.append(rf"\par\footnotesize {_latex_escape(n)}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def _is_number(v: object) -> bool:
    try:
        float(str(v).replace(",", ""))
        return True
    except ValueError:
        return False


def _looks_numeric(col: pd.Series) -> bool:
    vals = [v for v in col if str(v) != ""]
    return bool(vals) and all(_is_number(v) for v in vals)


def write_table(
    df: pd.DataFrame, stem: str | Path, *, title: str | None = None, notes: Iterable[str] = (),
    formats: Iterable[str] = ("markdown", "latex", "csv"),
) -> list[Path]:
    """Write ``df`` as ``stem.md``, ``stem.tex`` and ``stem.csv`` (atomically); return the paths."""
    suffix = {"markdown": ".md", "latex": ".tex", "csv": ".csv", "json": ".json", "table": ".txt"}
    stem = Path(stem)
    paths = []
    for fmt in formats:
        path = stem.with_suffix(suffix[fmt])
        atomic_write_text(path, render(df, fmt, title=title, notes=notes))
        paths.append(path)
    return paths
