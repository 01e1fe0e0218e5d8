"""Parameters and MACs of any ``nn.Module``, per module, block, stage and grid size, counted with fvcore.

Conventions (print them under every table: :func:`table_notes`):

- **MACs.** fvcore's ``FlopCountAnalysis`` counts one fused multiply-add as one "flop", so its number is a
  count of multiply-accumulates: the column is ``macs`` (FLOPs = 2 x MACs). It counts convolutions, linear
  layers / matmuls, batch norm (2 per element with an affine, 1 without), adaptive average pooling and
  upsampling. Max and average pooling, residual adds and other elementwise ops count zero (fvcore lists
  them as unsupported), and ReLU, concatenation and dropout count zero silently: :func:`uncounted_ops`
  names them all. ``conv_linear_macs`` keeps only convolutions and matmuls, the convention of
  torchvision's and timm's published "GFLOPS"/"GMACs" (``shared/REFERENCES.md``).
- **Rows do not overlap.** Each parameter belongs to the module that registers it, each counted op to the
  innermost module whose ``forward`` ran it (fvcore's "owner" attribution). One row per module that is a
  leaf or owns parameters or MACs itself; a container's own row holds only what its own ``forward`` does
  (e.g. a functional pooling), never its children's. So ``df["params"].sum()`` equals fvcore's
  ``parameter_count(model)[""]`` and ``df["macs"].sum()`` equals ``FlopCountAnalysis(model, x).total()``
  exactly (:func:`totals`). The model itself, when it owns something, is the row ``(root)``.
- **Mode.** Counting runs in eval mode with batch ``batch_size`` (MACs scale with it), so auxiliary heads
  that run only in training (GoogLeNet's, Inception-v3's) show their parameters and 0 MACs. With
  ``aux_macs=True`` the model runs in training mode, but with every batch norm and dropout in eval mode,
  so the aux heads run too and their MACs are counted, with no statistics updated.
- **Block** is the top-level child holding the module (``inception3a``, ``Mixed_5b``); a plain
  ``nn.Sequential``/``ModuleList``/``ModuleDict`` of blocks is looked into, so timm's Inception-v4 gives
  ``features.5`` and our models ``inception_a.0``. **Stage** is the output grid of the block (``"35x35"``),
  ``"aux"`` for auxiliary heads (any module whose path has "aux" in a name), ``"stem"`` for blocks named
  ``stem...`` (whose layers span several grids), ``"head"`` for a block with a non-spatial output (the
  classifier), ``"(root)"`` for the model's own row. **Grid** is each module's own
  output height x width, recorded by a forward hook on its first call (the first tensor of a tuple, named
  tuple, list or dict output); empty when the output is not a 4-D map or the module did not run.

Counting has no side effects: the train/eval flag of every submodule, every buffer (BN running statistics
and ``num_batches_tracked`` included) and the global RNG state are restored, and the hooks removed.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import logging
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterator, Literal, Sequence

import pandas as pd
import torch
from torch import nn

from analysis.instruments.state import ModelStateGuard
from inception_models import create_model

with warnings.catch_warnings():
    # fvcore's focal-loss module calls torch.jit.script at import, which torch >= 2.10 flags as deprecated;
    # it is not ours to fix and says nothing about counting.
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
    from fvcore.nn import FlopCountAnalysis, parameter_count

__all__ = [
    "COLUMNS",
    "SILENT_OPS",
    "count_model",
    "totals",
    "summarize",
    "module_blocks",
    "uncounted_ops",
    "uncounted_note",
    "table_notes",
    "MAC_CONVENTION",
    "create_model_for_counting",
    "parameter_count",
]

COLUMNS: tuple[str, ...] = (
    "module", "type", "block", "stage", "grid", "aux", "calls", "params", "macs", "conv_linear_macs",
)
ROOT = "(root)"
MAC_CONVENTION = "MACs: fvcore counts one fused multiply-add as one flop, so its counts are MACs (FLOPs = 2 x MACs)."

# Ops fvcore ignores without a warning although they do work at run time; we count their occurrences so that
# tables can say what the MAC figures leave out. Pure shape and memory ops (view, size, flatten, ...) are not
# listed: they compute nothing.
SILENT_OPS: tuple[str, ...] = (
    "aten::relu", "aten::relu_", "aten::cat", "aten::dropout", "aten::stack", "aten::clamp", "aten::clamp_",
    "aten::max", "aten::constant_pad_nd", "aten::masked_fill", "aten::roll", "aten::gather", "aten::index",
    "aten::index_put_", "aten::floor", "aten::floor_divide", "aten::remainder", "aten::eq", "aten::ge",
    "aten::gt", "aten::__and__", "aten::bitwise_not", "aten::nonzero",
)
# fvcore's names for convolution and matmul counts (its handles' Counter keys).
_CONV_LINEAR_OPS = frozenset({"conv", "linear", "addmm", "matmul", "mm", "bmm", "einsum"})
_PLAIN_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
_AUX_NAME = re.compile(r"aux", re.IGNORECASE)
_STOCHASTIC_OR_STATEFUL = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm,
                           nn.modules.dropout._DropoutNd, nn.AlphaDropout, nn.FeatureAlphaDropout)

GroupBy = Literal["module", "block", "stage", "grid"]


@dataclass
class _Trace:
    """What one fvcore trace gave: per-module own op counts, hook records and the ops left out."""

    own_ops: dict[str, Counter]
    total_macs: int
    grids: dict[str, str]
    calls: dict[str, int]
    last_call: dict[str, int]
    unsupported: Counter
    silent: Counter
    uncalled: set[str] = field(default_factory=set)
    input_shape: tuple[int, ...] = ()


# ---------------------------------------------------------------------------------------------- input checks

def _check_model(model: object) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(model).__name__}; build the model first "
                        f"(e.g. inception_models.create_model(name))")
    return model


def _input_shape(input_size: int | Sequence[int], batch_size: int) -> tuple[int, ...]:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if isinstance(input_size, int) and not isinstance(input_size, bool):
        input_size = (3, input_size, input_size)
    try:
        size = tuple(int(s) for s in input_size)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ValueError(
            f"input_size must be (channels, height, width), e.g. (3, 299, 299); got {input_size!r}"
        ) from None
    if len(size) != 3 or min(size) < 1:
        raise ValueError(f"input_size must be three positive ints (channels, height, width), e.g. (3, 299, 299); "
                         f"got {input_size!r}")
    return (batch_size, *size)


def _model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    return device, dtype


# ------------------------------------------------------------------------------------------- no side effects

def _set_counting_mode(model: nn.Module, aux_macs: bool) -> None:
    if not aux_macs:
        model.eval()
        return
    # Training-mode control flow (so aux heads run), without statistics updates or random masks.
    model.train()
    for m in model.modules():
        if isinstance(m, _STOCHASTIC_OR_STATEFUL) or type(m).__name__ in ("DropPath", "DropBlock2d"):
            m.eval()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence fvcore's log lines and the tracer's warnings; what they say is kept in the results."""
    loggers = [logging.getLogger(n) for n in ("fvcore", "fvcore.nn.jit_analysis")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


# ----------------------------------------------------------------------------------------------------- trace

def _grid_of(output: Any) -> str | None:
    """'HxW' of the first tensor in ``output``; '' when it is not a 4-D map; None when there is no tensor."""
    if isinstance(output, torch.Tensor):
        return f"{int(output.shape[-2])}x{int(output.shape[-1])}" if output.dim() == 4 else ""
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (tuple, list)):
        for item in output:
            grid = _grid_of(item)
            if grid is not None:
                return grid
    return None


def _trace(model: nn.Module, shape: tuple[int, ...], device: torch.device | None, aux_macs: bool,
           inputs: torch.Tensor | None = None) -> _Trace:
    model_device, dtype = _model_device_dtype(model)
    if model_device.type == "meta":
        raise ValueError("the model is on the meta device (shapes only), but fvcore's tracer runs real tensors; "
                         "allocate it first: model.to_empty(device='cpu'), or use create_model_for_counting(name)")
    if device is not None and torch.device(device) != model_device:
        # Counting elsewhere than the model lives must not move the caller's model: count a copy.
        model = copy.deepcopy(model).to(device)
        model_device = torch.device(device)
    x = inputs.to(model_device) if inputs is not None else torch.zeros(shape, device=model_device, dtype=dtype)

    names = {m: n for n, m in model.named_modules()}
    grids: dict[str, str] = {}
    calls: Counter = Counter()
    last_call: dict[str, int] = {}

    def record(module: nn.Module, _inputs: Any, output: Any) -> None:
        name = names.get(module)
        if name is None:
            return
        calls[name] += 1
        last_call[name] = sum(calls.values())
        if name not in grids:
            # Reading shapes while the tracer records is slow (and adds size ops to the graph): pause it.
            tracing_state = torch._C._get_tracing_state()
            torch._C._set_tracing_state(None)
            try:
                grids[name] = _grid_of(output) or ""
            finally:
                torch._C._set_tracing_state(tracing_state)

    silent: Counter = Counter()

    def silent_handle(op: str):
        def handle(_inputs: Any, _outputs: Any) -> int:
            silent[op] += 1
            return 0
        return handle

    with ModelStateGuard(model), _quiet(), torch.no_grad():
        _set_counting_mode(model, aux_macs)
        handles = [m.register_forward_hook(record) for m in names]
        try:
            flops = (FlopCountAnalysis(model, x).unsupported_ops_warnings(False)
                     .uncalled_modules_warnings(False).tracer_warnings("none").ancestor_mode("owner"))
            flops.set_op_handle(**{op: silent_handle(op) for op in SILENT_OPS if op in flops._ignored_ops})
            try:
                total = flops.total()
            except RuntimeError as err:  # a shape mismatch deep in torch; ValueErrors of the model pass as they are
                raise ValueError(
                    f"{type(model).__name__} could not run on an input of shape {tuple(x.shape)} ({err}); check "
                    f"input_size=(channels, height, width) against the model's input channels and minimum size"
                ) from err
            by_module = flops.by_module_and_operator()
            unsupported = Counter(flops.unsupported_ops(""))
            uncalled = set(flops.uncalled_modules())
        finally:
            for h in handles:
                h.remove()

    return _Trace(own_ops=_own_counts(by_module), total_macs=int(total), grids=grids, calls=dict(calls),
                  last_call=last_call, unsupported=unsupported, silent=silent, uncalled=uncalled,
                  input_shape=tuple(x.shape))


def _own_counts(by_module: dict[str, Counter]) -> dict[str, Counter]:
    """Inclusive per-module counts -> what each module's own forward ran (children subtracted).

    Under fvcore's "owner" attribution an op counts for its innermost module and every name prefix of it, so
    subtracting each module's nearest counted ancestor telescopes: the own counts sum to the root's total.
    """
    own = {name: Counter({op: int(v) for op, v in ops.items()}) for name, ops in by_module.items()}
    for name, ops in by_module.items():
        if name == "":
            continue
        parent = name
        while parent:
            parent = parent.rpartition(".")[0]
            if parent in by_module:
                break
        for op, v in ops.items():
            own[parent][op] = own[parent].get(op, 0) - int(v)
    return own


# -------------------------------------------------------------------------------------------------- the table

def module_blocks(model: nn.Module) -> dict[str, str]:
    """Module name -> its block: the top-level child, or the child inside a plain container of blocks."""
    block_of: dict[str, str] = {"": ROOT}

    def is_container_of_blocks(m: nn.Module) -> bool:
        return type(m) in _PLAIN_CONTAINERS and any(len(list(c.children())) > 0 for c in m.children())

    def walk(module: nn.Module, prefix: str, block: str | None) -> None:
        for child_name, child in module.named_children():
            name = f"{prefix}.{child_name}" if prefix else child_name
            if name in block_of:
                continue
            child_block = block
            if child_block is None and not is_container_of_blocks(child):
                child_block = name
            block_of[name] = child_block or name
            walk(child, name, child_block)

    walk(model, "", None)
    return block_of


def _is_aux(name: str) -> bool:
    return any(_AUX_NAME.search(part) for part in name.split("."))


def _frame(model: nn.Module, trace: _Trace) -> pd.DataFrame:
    own_params: Counter = Counter()
    for pname, p in model.named_parameters():
        own_params[pname.rpartition(".")[0]] += p.numel()
    block_of = module_blocks(model)

    def block_stage(block: str) -> str:
        if block == ROOT:
            return ROOT
        if _is_aux(block):
            return "aux"
        if any(part.lower().startswith("stem") for part in block.split(".")):
            return "stem"
        if block in trace.grids:
            grid = trace.grids[block]
        else:  # a ModuleList/ModuleDict block is never called itself: take its last module to run
            inside = [n for n in trace.last_call if n == block or n.startswith(block + ".")]
            if not inside:
                return "(not run)"
            grid = trace.grids[max(inside, key=trace.last_call.__getitem__)]
        return grid or "head"

    stages = {b: block_stage(b) for b in set(block_of.values())}
    rows = []
    for name, module in model.named_modules():
        ops = trace.own_ops.get(name, Counter())
        macs = int(sum(ops.values()))
        params = int(own_params.get(name, 0))
        is_leaf = next(module.children(), None) is None
        if not (is_leaf or params or macs):
            continue
        block = block_of.get(name, ROOT)
        rows.append({
            "module": name or ROOT,
            "type": type(module).__name__,
            "block": block,
            "stage": stages[block],
            "grid": trace.grids.get(name, ""),
            "aux": _is_aux(name),
            "calls": int(trace.calls.get(name, 0)),
            "params": params,
            "macs": macs,
            "conv_linear_macs": int(sum(v for op, v in ops.items() if op in _CONV_LINEAR_OPS)),
        })
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    for col in ("calls", "params", "macs", "conv_linear_macs"):
        df[col] = df[col].astype("int64")
    df["aux"] = df["aux"].astype(bool)
    missing = trace.total_macs - int(df["macs"].sum())
    if missing:
        raise RuntimeError(f"internal error: per-module MACs miss {missing} of fvcore's total {trace.total_macs}")
    return df


def count_model(
    model: nn.Module,
    input_size: int | Sequence[int] = (3, 299, 299),
    *,
    batch_size: int = 1,
    device: str | torch.device | None = None,
    aux_macs: bool = False,
) -> pd.DataFrame:
    """Parameters and MACs of ``model`` per module, counted with fvcore on a zero input.

    Works on any ``nn.Module`` (the zoo's, torchvision's, timm's, a user's) whose forward takes one
    ``(batch_size, *input_size)`` tensor; outputs may be tensors, tuples, named tuples, lists or dicts.
    ``input_size`` is ``(channels, height, width)`` or one int for a square RGB input. ``device`` defaults to
    the model's; another device counts a copy, leaving the model where it is. ``aux_macs`` counts the
    auxiliary heads' MACs too (training-mode control flow, BN and dropout in eval mode).

    Returns one row per module that is a leaf or owns parameters or MACs itself, with the columns of
    :data:`COLUMNS`; rows do not overlap, so sums are totals (:func:`totals`). ``df.attrs`` keeps the input
    shape, the mode, the uncounted ops (:func:`uncounted_ops`) and the modules that never ran. Conventions:
    the module docstring.
    """
    _check_model(model)
    shape = _input_shape(input_size, batch_size)
    trace = _trace(model, shape, device, aux_macs)
    df = _frame(model, trace)
    df.attrs.update({
        "input_shape": trace.input_shape,
        "mode": "train (BN, dropout in eval)" if aux_macs else "eval",
        "total_params": int(df["params"].sum()),
        "total_macs": trace.total_macs,
        "uncounted_ops": _uncounted_frame(trace).to_dict("records"),
        "uncalled_modules": sorted(trace.uncalled),
    })
    return df


def totals(df: pd.DataFrame) -> dict[str, int]:
    """Whole-model ``params``, ``macs`` and ``conv_linear_macs`` of a :func:`count_model` table.

    The rows never overlap, so these are plain column sums."""
    _check_counts(df)
    return {c: int(df[c].sum()) for c in ("params", "macs", "conv_linear_macs") if c in df.columns}


def _check_counts(df: object) -> None:
    if not isinstance(df, pd.DataFrame) or not {"module", "params", "macs"} <= set(df.columns):
        raise TypeError("expected the DataFrame returned by count_model(model, input_size)")


def summarize(df: pd.DataFrame, by: GroupBy = "module", *, with_total: bool = False) -> pd.DataFrame:
    """Sum a :func:`count_model` table by ``module``, ``block``, ``stage`` or ``grid``, in model order.

    Columns: the key, ``aux`` (any aux module in the group), ``params``, ``macs``, ``conv_linear_macs`` and
    ``gmacs`` (= macs / 1e9); ``by="module"`` keeps ``type``, ``block``, ``stage`` and ``grid`` too. Groups of
    ``by="grid"`` are the modules' own output grids, with ``"(non-spatial)"`` for vector outputs and
    ``"(not run)"`` for modules that did not run. ``with_total`` appends a ``(total)`` row (leave it off
    before summing the result again).
    """
    _check_counts(df)
    keys = ("module", "block", "stage", "grid")
    if by not in keys:
        raise ValueError(f"by={by!r} is not supported; use one of {', '.join(keys)}")
    sums = ["params", "macs", "conv_linear_macs"]
    if by == "module":
        out = df[["module", "type", "block", "stage", "grid", "aux", *sums]].copy()
    else:
        frame = df.copy()
        if by == "grid":
            frame["grid"] = frame["grid"].where(frame["grid"] != "", "(non-spatial)")
            frame.loc[frame["calls"] == 0, "grid"] = "(not run)"
        out = frame.groupby(by, sort=False).agg(aux=("aux", "any"), **{c: (c, "sum") for c in sums}).reset_index()
    out["gmacs"] = out["macs"] / 1e9
    if with_total:
        total = {by: "(total)", "aux": bool(out["aux"].any()), **{c: int(out[c].sum()) for c in sums}}
        total["gmacs"] = total["macs"] / 1e9
        out = pd.concat([out, pd.DataFrame([total])], ignore_index=True)
    for c in sums:
        out[c] = out[c].astype("int64")
    return out.reset_index(drop=True)


# ------------------------------------------------------------------------------------------ what is not counted

def _uncounted_frame(trace: _Trace) -> pd.DataFrame:
    rows = [{"op": op.removeprefix("aten::"), "count": int(n), "why": "unsupported by fvcore (counted as 0)"}
            for op, n in sorted(trace.unsupported.items())]
    rows += [{"op": op.removeprefix("aten::"), "count": int(n), "why": "ignored by fvcore (silently 0)"}
             for op, n in sorted(trace.silent.items())]
    return pd.DataFrame(rows, columns=["op", "count", "why"]).astype({"count": "int64"})


def uncounted_ops(
    model: nn.Module | pd.DataFrame,
    input: torch.Tensor | int | Sequence[int] = (3, 299, 299),
    *,
    batch_size: int = 1,
    device: str | torch.device | None = None,
    aux_macs: bool = False,
) -> pd.DataFrame:
    """The ops fvcore ran into but did not count, one row each: ``op``, ``count`` (occurrences), ``why``.

    Both fvcore's unsupported ops (max/avg pooling, residual ``add``, ``mul``, ``mean``..., which it warns
    about) and the ones it ignores silently (``relu``, ``cat``, ``dropout``, ...: :data:`SILENT_OPS`).
    ``input`` is an input tensor or an ``input_size`` as for :func:`count_model`. Given the DataFrame of
    :func:`count_model` instead of a model, return the list recorded when it was counted.
    """
    if isinstance(model, pd.DataFrame):
        if "uncounted_ops" not in model.attrs:
            raise ValueError("this DataFrame has no record of uncounted ops; pass the one count_model returned")
        return pd.DataFrame(model.attrs["uncounted_ops"], columns=["op", "count", "why"])
    _check_model(model)
    if isinstance(input, torch.Tensor):
        trace = _trace(model, tuple(input.shape), device, aux_macs, inputs=input)
    else:
        trace = _trace(model, _input_shape(input, batch_size), device, aux_macs)
    return _uncounted_frame(trace)


def uncounted_note(uncounted: pd.DataFrame) -> str:
    """One line for under a table: ``Not counted (0 MACs): max_pool2d x13, relu_ x57, ...``."""
    if isinstance(uncounted, pd.DataFrame) and "op" not in uncounted.columns:
        uncounted = uncounted_ops(uncounted)
    if uncounted.empty:
        return "Not counted: nothing (fvcore counted every op it met)."
    ops = ", ".join(f"{r.op} x{r.count}" for r in uncounted.itertuples())
    return f"Not counted (0 MACs): {ops}."


def table_notes(counts: pd.DataFrame) -> list[str]:
    """The notes every counting table prints underneath: the MAC convention, the input, what is not counted."""
    _check_counts(counts)
    notes = [MAC_CONVENTION]
    shape = counts.attrs.get("input_shape")
    if shape:
        mode = counts.attrs.get("mode", "eval")
        aux = "; aux heads that run only in training count 0 MACs" if mode == "eval" else ""
        notes.append(f"Input {tuple(shape)} (N, C, H, W), {mode} mode{aux}.")
    if "uncounted_ops" in counts.attrs:
        notes.append(uncounted_note(uncounted_ops(counts)))
    return notes


def create_model_for_counting(name: str, **knobs: object) -> nn.Module:
    """``inception_models.create_model(name, **knobs)`` with every weight and buffer zero, built without the
    random initialisation (on the meta device, then allocated): counting needs shapes only, and skipping the
    initialisation of tens of millions of weights makes building many variants quick."""
    try:
        with torch.device("meta"):
            model = create_model(name, **knobs)
        model = model.to_empty(device="cpu")
    except (RuntimeError, NotImplementedError):
        return create_model(name, **knobs)
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            t.zero_()
    return model
