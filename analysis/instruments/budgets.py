"""Parameter and MAC budgets: a TOML file of limits, a checker, and (in :mod:`analysis.pytest_plugin`)
a pytest plugin so a project's CI fails when a model outgrows its budget.

The file holds one table per budget::

    [budget.googlenet]
    model = "googlenet"                 # a registry name, or "package.module:callable" for your own model
    kwargs = { aux_logits = false }     # constructor keyword arguments (optional)
    input_size = 224                    # int (square, 3 channels) or [C, H, W]; default: the model's native size
    max_params = 6_700_000              # optional
    max_gmacs = 1.55                    # optional; GMACs as fvcore counts them (one multiply-add = one MAC)

    [budget.googlenet.blocks]           # optional limits per block or stage, named as count_model reports them
    inception5b = { max_params = 1_400_000 }

A malformed file raises :class:`BudgetFileError` naming the file, the line (TOML syntax) or the key.
"""

from __future__ import annotations

import importlib
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd
from torch import nn

from analysis.instruments.counting import count_model, create_model_for_counting, summarize
from inception_models import model_info

LIMIT_KEYS = ("max_params", "max_gmacs")
BUDGET_KEYS = {"model", "kwargs", "input_size", "blocks", *LIMIT_KEYS}


class BudgetFileError(ValueError):
    """A budget file that cannot be read: names the file and the offending line or key."""


@dataclass(frozen=True)
class Budget:
    """One model's limits: totals and optional per-block limits (``{block: {"max_params": ...}}``)."""

    label: str
    model: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    input_size: tuple[int, int, int] | None = None
    max_params: int | None = None
    max_gmacs: float | None = None
    blocks: dict[str, dict[str, float]] = field(default_factory=dict)


def _limits(table: dict, where: str, path: Path) -> dict[str, float]:
    out = {}
    for key, value in table.items():
        if key not in LIMIT_KEYS:
            raise BudgetFileError(f"{path}: unknown key {where}.{key}; a limit is one of {', '.join(LIMIT_KEYS)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or math.isnan(value):
            raise BudgetFileError(f"{path}: {where}.{key} must be a non-negative number, got {value!r}")
        out[key] = value
    return out


def _input_size(value: Any, where: str, path: Path) -> tuple[int, int, int]:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return (3, value, value)
    if isinstance(value, list) and len(value) == 3 and all(isinstance(v, int) and v > 0 for v in value):
        return tuple(value)  # type: ignore[return-value]
    raise BudgetFileError(f"{path}: {where}.input_size must be a positive int or [C, H, W], got {value!r}")


def load_budgets(path: str | Path) -> list[Budget]:
    """Read and validate a budget file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"budget file {path} not found (expected a TOML file with [budget.NAME] tables)")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise BudgetFileError(f"{path}: not valid TOML: {err}") from None
    unknown_top = set(data) - {"budget"}
    if unknown_top:
        raise BudgetFileError(f"{path}: unknown top-level key {sorted(unknown_top)[0]!r}; budgets go in [budget.NAME]")
    tables = data.get("budget")
    if not isinstance(tables, dict) or not tables:
        raise BudgetFileError(f"{path}: no budgets found; add at least one [budget.NAME] table")
    budgets = []
    for label, table in tables.items():
        where = f"budget.{label}"
        if not isinstance(table, dict):
            raise BudgetFileError(f"{path}: {where} must be a table")
        unknown = set(table) - BUDGET_KEYS
        if unknown:
            raise BudgetFileError(f"{path}: unknown key {where}.{sorted(unknown)[0]}; known keys: {', '.join(sorted(BUDGET_KEYS))}")
        model = table.get("model", label)
        if not isinstance(model, str) or not model:
            raise BudgetFileError(f"{path}: {where}.model must be a registry name or 'package.module:callable'")
        kwargs = table.get("kwargs", {})
        if not isinstance(kwargs, dict):
            raise BudgetFileError(f"{path}: {where}.kwargs must be a table of keyword arguments")
        limits = _limits({k: v for k, v in table.items() if k in LIMIT_KEYS}, where, path)
        blocks_table = table.get("blocks", {})
        if not isinstance(blocks_table, dict):
            raise BudgetFileError(f"{path}: {where}.blocks must be a table of block limits")
        blocks = {}
        for block, block_limits in blocks_table.items():
            if not isinstance(block_limits, dict) or not block_limits:
                raise BudgetFileError(f"{path}: {where}.blocks.{block} must be a table like {{ max_params = 1000 }}")
            blocks[block] = _limits(block_limits, f"{where}.blocks.{block}", path)
        if not limits and not blocks:
            raise BudgetFileError(f"{path}: {where} sets no limit; add max_params, max_gmacs or blocks")
        size = _input_size(table["input_size"], where, path) if "input_size" in table else None
        budgets.append(Budget(label, model, kwargs, size, limits.get("max_params"), limits.get("max_gmacs"), blocks))
    return budgets


def resolve_model(spec: str, kwargs: dict[str, Any]) -> tuple[nn.Module, tuple[int, int, int]]:
    """Build the model a budget names and return it with its default input size."""
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        try:
            factory: Callable[..., nn.Module] = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise ValueError(f"cannot import {spec!r} ({err}); use 'package.module:callable'") from None
        return factory(**kwargs), (3, 224, 224)
    info = model_info(spec)
    return create_model_for_counting(spec, **kwargs), (3, info.input_size, info.input_size)


def check_budget(budget: Budget) -> pd.DataFrame:
    """Measure one budget's model; one row per limit: ``budget``, ``model``, ``block``, ``metric``,
    ``budget_value``, ``actual``, ``delta_pct`` (positive = over budget) and ``ok``."""
    model, default_size = resolve_model(budget.model, budget.kwargs)
    size = budget.input_size or default_size
    counts = count_model(model, input_size=size)
    per_block = summarize(counts, by="block").set_index("block")
    # A limit may name a block ("stage2.0") or a whole stage ("stage2"), as count_model reports them.
    per_stage = summarize(counts, by="stage").set_index("stage")
    per_stage = per_stage[~per_stage.index.isin(per_block.index)]
    per_part = pd.concat([per_block, per_stage])
    totals = {"params": int(per_block["params"].sum()), "gmacs": per_block["macs"].sum() / 1e9}
    checks = [("(total)", "params", budget.max_params, totals["params"]),
              ("(total)", "gmacs", budget.max_gmacs, totals["gmacs"])]
    for block, limits in budget.blocks.items():
        if block not in per_part.index:
            raise ValueError(f"budget {budget.label!r}: {budget.model} has no block or stage {block!r}; its blocks "
                             f"are {', '.join(map(str, per_block.index))}; its stages "
                             f"{', '.join(map(str, per_stage.index))}")
        for key, limit in limits.items():
            metric = key.removeprefix("max_")
            actual = per_part.loc[block, "params"] if metric == "params" else per_part.loc[block, "macs"] / 1e9
            checks.append((block, metric, limit, actual))
    rows = []
    for block, metric, limit, actual in checks:
        if limit is None:
            continue
        delta = (actual - limit) / limit * 100 if limit else math.inf if actual > 0 else 0.0
        rows.append({"budget": budget.label, "model": budget.model, "block": block, "metric": metric,
                     "budget_value": limit, "actual": round(float(actual), 4) if metric == "gmacs" else int(actual),
                     "delta_pct": round(delta, 2), "ok": bool(actual <= limit)})
    return pd.DataFrame(rows).astype({"budget_value": "float64", "actual": "float64"})


def check_budgets(path: str | Path) -> pd.DataFrame:
    """Check every budget in a file; the rows of :func:`check_budget`, concatenated."""
    return pd.concat([check_budget(b) for b in load_budgets(path)], ignore_index=True)


def overshoot_message(rows: pd.DataFrame) -> str:
    """One line per exceeded limit, e.g. ``inception5b params: 1,443,616 > 1,400,000 (+3.12%)``."""
    lines = []
    for r in rows[~rows["ok"]].itertuples():
        fmt = "{:,.4f}" if r.metric == "gmacs" else "{:,.0f}"
        lines.append(f"{r.block} {r.metric}: {fmt.format(r.actual)} > {fmt.format(r.budget_value)} (+{r.delta_pct}%)")
    return "\n".join(lines)
