"""The one table writer: a tidy DataFrame to a terminal table, CSV, JSON, Markdown or LaTeX (booktabs).

Tables only render; they never compute. CSV and JSON keep the raw frame; the human-facing formats may be given a
display spec (:class:`Column` per shown column: a header with units, a scale, one number of decimals for the
whole column, a spread shown as "mean ± std" or an interval "[low, high]", and the best value, bold in LaTeX).
LaTeX tables carry a caption and a ``\label{tab:...}``, write symbols in math mode (``$\pm$``, ``$\times$``,
``$\rightarrow$``, ``$\geq$``; OT1 would print a bare ``>`` as an inverted question mark), and a table of more
than :data:`LONG_ROWS` rows is a ``longtable`` that breaks across pages. Every ``.tex`` file compiles on its own
inside a plain ``article`` with ``booktabs`` and ``longtable``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import pandas as pd

from analysis.io import atomic_write_text

__all__ = ["FORMATS", "LONG_ROWS", "Column", "latex_escape", "render", "write_table"]

FORMATS: tuple[str, ...] = ("table", "csv", "json", "markdown", "latex")
# Above this many rows a LaTeX table is a longtable (it breaks across pages; the report puts it in an appendix).
LONG_ROWS = 40


@dataclass(frozen=True)
class Column:
    """How one column of a frame reads in a report table.

    ``header``: the shown header, with its unit (``"Params (M)"``); ``scale`` multiplies the values
    (``1e-6`` for millions, ``100`` for a percentage); ``digits``: the decimals of every value in the column
    (None: integers with thousands separators, other numbers in the generic format); ``spread``: a column shown
    after the value as ``± spread``; ``interval``: two columns shown after the value as ``[low, high]``;
    ``best``: ``"max"`` or ``"min"``: that value is set in bold in LaTeX; ``width``: a LaTeX length (``"4cm"``)
    for a column of long text, whose LaTeX cells wrap in a box of that width instead of running past the margin (the
    other formats ignore it), ragged right."""

    header: str
    digits: int | None = None
    scale: float = 1.0
    spread: str | None = None
    interval: tuple[str, str] | None = None
    best: str | None = None
    width: str | None = None


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


def _fixed(value: object, col: Column) -> str:
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()  # numpy scalars as Python numbers
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return ""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    value = value * col.scale
    if col.digits is None:
        return f"{int(value):,}" if float(value).is_integer() and abs(value) >= 1 else _format_float(float(value))
    return f"{value:,.{col.digits}f}"


def _spec_frame(df: pd.DataFrame, columns: Mapping[str, Column]) -> tuple[pd.DataFrame, dict[str, int]]:
    """The shown frame of a display spec, and per shown header the row of its best value (for LaTeX bold)."""
    missing = [name for name, col in columns.items()
               for needed in (name, col.spread, *(col.interval or ())) if needed and needed not in df]
    if missing:
        raise KeyError(f"display columns {sorted(set(missing))} are not in the frame (columns: {list(df.columns)})")
    headers = [col.header for col in columns.values()]
    repeated = sorted({h for h in headers if headers.count(h) > 1})
    if repeated:  # one header per shown column: a repeated one would silently hide a column
        raise ValueError(f"display headers {repeated} are used by more than one column; give each its own header")
    shown, best = {}, {}
    for name, col in columns.items():
        cells = []
        for i in range(len(df)):
            text = _fixed(df[name].iloc[i], col)
            if col.spread and text:
                text += f" ± {_fixed(df[col.spread].iloc[i], col)}"
            if col.interval and text:
                low, high = (_fixed(df[c].iloc[i], col) for c in col.interval)
                text += f" [{low}, {high}]"
            cells.append(text)
        shown[col.header] = cells
        if col.best in ("max", "min"):
            values = pd.to_numeric(df[name], errors="coerce")
            if values.notna().any():
                best[col.header] = int(values.idxmax() if col.best == "max" else values.idxmin())
    return pd.DataFrame(shown), {h: df.index.get_loc(i) for h, i in best.items()}


def _format_float(v: float) -> str:
    if pd.isna(v):
        return ""
    if abs(v) < 1000:
        return f"{v:,.4g}"
    return f"{v:,.0f}" if float(v).is_integer() else f"{v:,.1f}"


def render(df: pd.DataFrame, fmt: str = "table", *, title: str | None = None, notes: Iterable[str] = (),
           columns: Mapping[str, Column] | None = None, label: str | None = None) -> str:
    """Render ``df`` as text in ``fmt`` (one of :data:`FORMATS`).

    ``csv`` and ``json`` keep the raw values (machine-readable, no title or notes); ``table``, ``markdown``
    and ``latex`` format numbers for reading (with ``columns``, only those columns, as their :class:`Column`
    says) and print ``notes`` under the table (e.g. what a MAC count leaves out). ``label`` is the LaTeX label
    (``tab:...``)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    notes = list(notes)
    if fmt == "csv":
        return df.to_csv(index=False)
    if fmt == "json":
        return json.dumps(json.loads(df.to_json(orient="records")), indent=2) + "\n"
    if columns:
        shown, best = _spec_frame(df.reset_index(drop=True), columns)
    else:
        shown, best = _display_frame(df), {}
    if fmt == "latex":
        widths = {col.header: col.width for col in (columns or {}).values() if col.width}
        return _latex(shown, title=title, notes=notes, label=label, best=best, widths=widths)
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


# Text that OT1 text mode cannot print, as math: arrows, comparisons, plus-minus, times. Order matters (the
# two-character forms first).
_LATEX_SYMBOLS = [("->", r"$\rightarrow$"), ("+-", r"$\pm$"), (">=", r"$\geq$"), ("<=", r"$\leq$"),
                  ("±", r"$\pm$"), ("×", r"$\times$"), ("→", r"$\rightarrow$"), ("≥", r"$\geq$"),
                  ("≤", r"$\leq$"), ("≈", r"$\approx$"), ("−", "-"), (">", r"$>$"), ("<", r"$<$")]
_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
_TIMES = re.compile(r"(?<=\d)x(?=\d)")  # 5x5, 17x17: a multiplication sign, not a letter


def latex_escape(text: object) -> str:
    """``text`` for LaTeX text mode: special characters escaped, symbols in math mode, ``5x5`` as 5$\times$5,
    ``**bold**`` as ``\textbf``, ```code``` as ``\texttt``; anything else outside ASCII is dropped with a ``?``
    so that pdflatex never stops on it."""
    out, i, s = [], 0, str(text)
    s = _TIMES.sub("×", s)
    while i < len(s):
        for sym, tex in _LATEX_SYMBOLS:
            if s.startswith(sym, i):
                out.append(tex)
                i += len(sym)
                break
        else:
            ch = s[i]
            out.append(_LATEX_SPECIAL.get(ch, ch if ord(ch) < 128 else "?"))
            i += 1
    escaped = "".join(out)
    escaped = re.sub(r"\*\*(.+?)\*\*", r"\\textbf{\1}", escaped)
    return re.sub(r"`(.+?)`", r"\\texttt{\1}", escaped)


def _latex(df: pd.DataFrame, *, title: str | None, notes: list[str], label: str | None,
           best: Mapping[str, int], widths: Mapping[str, str] | None = None) -> str:
    widths = widths or {}
    align = "".join("l" if c in widths else "r" if _looks_numeric(df[c]) else "l" for c in df.columns)
    header = " & ".join(latex_escape(c) for c in df.columns) + r" \\"
    rows = []
    for i, row in enumerate(df.itertuples(index=False)):
        cells = []
        for col, value in zip(df.columns, row):
            text = latex_escape(value).replace(",", "{,}") if _is_number(value) else latex_escape(value)
            text = rf"\textbf{{{text}}}" if best.get(col) == i and text else text
            # A wrapping cell, ragged right (a justified narrow column spreads its words apart); a top-aligned
            # parbox needs no package beyond the article's own, so the table still compiles on its own.
            cells.append(rf"\parbox[t]{{{widths[col]}}}{{\raggedright\strut {text}\strut}}" if col in widths else text)
        rows.append(" & ".join(cells) + r" \\")
    caption = rf"\caption{{{latex_escape(title)}}}" if title else ""
    tag = rf"\label{{{label}}}" if label else ""
    if len(df) > LONG_ROWS:
        lines = [rf"\begin{{longtable}}{{{align}}}"]
        if caption or tag:
            lines.append(caption + tag + r" \\")
        lines += [r"\toprule", header, r"\midrule", r"\endfirsthead", r"\toprule", header, r"\midrule",
                  r"\endhead", r"\bottomrule", r"\endfoot", *rows, r"\end{longtable}"]
        lines += [rf"{{\footnotesize {latex_escape(n)}\par}}" for n in notes]
        return "\n".join(lines) + "\n"
    lines = [r"\begin{table}[htbp]", r"\centering"]
    if caption or tag:
        lines.append(caption + tag)
    lines += [rf"\begin{{tabular}}{{{align}}}", r"\toprule", header, r"\midrule", *rows, r"\bottomrule",
              r"\end{tabular}"]
    lines += [rf"\par\smallskip{{\footnotesize {latex_escape(n)}\par}}" for n in notes]
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
    formats: Iterable[str] = ("markdown", "latex", "csv"), columns: Mapping[str, Column] | None = None,
    label: str | None = None,
) -> list[Path]:
    """Write ``df`` as ``stem.md``, ``stem.tex`` (labelled ``tab:<stem>`` unless ``label`` says otherwise) and
    ``stem.csv`` (the raw frame), atomically; return the paths."""
    suffix = {"markdown": ".md", "latex": ".tex", "csv": ".csv", "json": ".json", "table": ".txt"}
    stem = Path(stem)
    label = label or f"tab:{stem.name}"
    paths = []
    for fmt in formats:
        path = stem.with_suffix(suffix[fmt])
        atomic_write_text(path, render(df, fmt, title=title, notes=notes, columns=columns, label=label))
        paths.append(path)
    return paths
