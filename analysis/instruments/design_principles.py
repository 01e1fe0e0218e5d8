"""The design rules of the Inception papers, counted rather than trained.

* GoogLeNet's 1x1 reductions (Szegedy et al. 2014, sec. 4, Fig. 2): the naive Inception module (1x1, 3x3 and
  5x5 convolutions and a 3x3 max pool side by side on the module's input) against the module with dimension
  reductions that Table 1 builds, module by module at the grid Table 1 runs it on.
* Inception-v3's efficient grid-size reduction (Szegedy et al. 2015, sec. 5, Fig. 9-10): going from a d x d grid
  with k channels to d/2 x d/2 with 2k channels by pooling first (cheap, but the whole representation passes
  through d/2 x d/2 x k values: a representational bottleneck), by convolving first (no bottleneck, about four
  times the cost), or by the parallel block (a stride-2 convolution beside a stride-2 pool, concatenated).
* Inception-v3's first principle (sec. 2): "avoid representational bottlenecks ... the representation size
  should gently decrease from the inputs to the outputs": the activation size after each block of every zoo
  model, and the largest single drop.

Every cost is fvcore's (:func:`analysis.instruments.counting.count_model`); activation sizes are the shapes the
blocks output in a real forward pass.
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd
import torch
import torch.nn as nn

from analysis.instruments.counting import count_model, create_model_for_counting, module_blocks, summarize, totals
from inception_models import list_models, model_info
from inception_models.googlenet import GOOGLENET_BODY, InceptionModule
from inception_models.layers import ConvNormAct

__all__ = [
    "NaiveInceptionModule",
    "activation_sizes",
    "grid_reduction_forms",
    "grid_reduction_table",
    "one_by_one_reduction_table",
    "representation_summary",
]


class NaiveInceptionModule(nn.Module):
    """The naive Inception module (GoogLeNet, Fig. 2a): 1x1, 3x3 and 5x5 convolutions and a 3x3 max pool, all on
    the module's input, concatenated. Without the 1x1 reductions the 3x3 and 5x5 convolutions see every input
    channel, and the pool branch passes every input channel on, so the output is wider than the input."""

    def __init__(self, in_channels: int, ch1x1: int, ch3x3: int, ch5x5: int, **conv: object) -> None:
        super().__init__()
        self.branch1 = ConvNormAct(in_channels, ch1x1, 1, **conv)
        self.branch2 = ConvNormAct(in_channels, ch3x3, 3, padding=1, **conv)
        self.branch3 = ConvNormAct(in_channels, ch5x5, 5, padding=2, **conv)
        self.branch4 = nn.MaxPool2d(3, stride=1, padding=1, ceil_mode=True)
        self.out_channels = ch1x1 + ch3x3 + ch5x5 + in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)), 1)


# The grid each Inception module of Table 1 runs on at 224 px, and the stem's output width (its input).
_TABLE_1_GRIDS = {"3": 28, "4": 14, "5": 7}
_STEM_OUT = 192


def one_by_one_reduction_table() -> pd.DataFrame:
    """GoogLeNet's Inception modules of Table 1 with and without their 1x1 reductions (sec. 4, Fig. 2).

    One row per module (3a ... 5b), each fed the input Table 1 gives it (the previous module's output with
    reductions, at the module's grid), in the paper's convention (no batch norm, biases on). Columns: ``module``,
    ``grid``, ``in_channels``, ``out_channels`` and ``naive_out_channels`` (the naive module's pool branch passes
    every input channel on), ``params``, ``naive_params``, ``macs``, ``naive_macs`` (conv + FC MACs, fvcore),
    and ``macs_ratio`` (naive over reduced: how many times the reductions save)."""
    rows, in_channels = [], _STEM_OUT
    for name, widths in GOOGLENET_BODY:
        if widths is None:  # a max pool between stages
            continue
        ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj = widths
        grid = _TABLE_1_GRIDS[name.removeprefix("inception")[0]]
        reduced = InceptionModule(in_channels, *widths, branch5x5_kernel=5, norm="none")
        naive = NaiveInceptionModule(in_channels, ch1x1, ch3x3, ch5x5, norm="none")
        counts = {form: totals(count_model(module, (in_channels, grid, grid)))
                  for form, module in (("reduced", reduced), ("naive", naive))}
        rows.append({
            "module": name.replace("inception", "inception (") + ")", "grid": grid, "in_channels": in_channels,
            "out_channels": reduced.out_channels, "naive_out_channels": naive.out_channels,
            "params": counts["reduced"]["params"], "naive_params": counts["naive"]["params"],
            "macs": counts["reduced"]["conv_linear_macs"], "naive_macs": counts["naive"]["conv_linear_macs"],
            "macs_ratio": counts["naive"]["conv_linear_macs"] / counts["reduced"]["conv_linear_macs"],
        })
        in_channels = reduced.out_channels
    return pd.DataFrame(rows)


class _Concat(nn.Module):
    """Branches side by side on one input, concatenated along the channels."""

    def __init__(self, *branches: nn.Module) -> None:
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([branch(x) for branch in self.branches], 1)


def _pool() -> nn.MaxPool2d:
    return nn.MaxPool2d(3, stride=2)  # Inception-v3's stride-2 pools are 3x3, unpadded: 35 -> 17


def grid_reduction_forms(channels: int) -> dict[str, nn.Sequential]:
    """The three ways of Inception-v3's sec. 5 to go from d x d x k to d/2 x d/2 x 2k (k = ``channels``), each a
    sequence of stages whose outputs are the representation along the way:

    * ``"pool, then conv"`` (Fig. 9 left): 3x3/2 max pool, then a 3x3 convolution k -> 2k on the small grid;
    * ``"conv, then pool"`` (Fig. 9 right): a 3x3 convolution k -> 2k on the large grid, then the pool;
    * ``"parallel (Fig. 10)"``: a 3x3/2 convolution k -> k beside a 3x3/2 max pool, concatenated to 2k.
    """
    k = channels
    return {
        "pool, then conv": nn.Sequential(_pool(), ConvNormAct(k, 2 * k, 3, padding=1)),
        "conv, then pool": nn.Sequential(ConvNormAct(k, 2 * k, 3, padding=1), _pool()),
        "parallel (Fig. 10)": nn.Sequential(_Concat(ConvNormAct(k, k, 3, stride=2), _pool())),
    }


def _stage_sizes(module: nn.Sequential, shape: tuple[int, ...]) -> list[int]:
    """Elements per image of each stage's output, in order."""
    sizes: list[int] = []
    handles = [stage.register_forward_hook(lambda _m, _i, out: sizes.append(out[0].numel())) for stage in module]
    try:
        with torch.no_grad():
            module.eval()(torch.zeros(1, *shape))
    finally:
        for handle in handles:
            handle.remove()
    return sizes


def grid_reduction_table(grid: int = 35, channels: int = 320) -> pd.DataFrame:
    """Inception-v3's grid-size reduction (sec. 5, Fig. 9-10) at ``grid`` x ``grid`` x ``channels``, the paper's
    example (35 x 35 x 320 -> 17 x 17 x 640).

    One row per form of :func:`grid_reduction_forms`: ``form``, ``params``, ``macs`` (conv MACs, fvcore),
    ``cost_vs_parallel`` (MACs over the parallel block's), ``output`` (C x H x W), ``bottleneck`` (the fewest
    values the whole representation passes through on the way: the smallest stage output) and
    ``bottleneck_vs_output`` (that over the output's size; below 1 is a representational bottleneck)."""
    shape = (channels, grid, grid)
    rows = []
    for form, module in grid_reduction_forms(channels).items():
        counts = totals(count_model(module, shape))
        sizes = _stage_sizes(module, shape)
        with torch.no_grad():
            out = module(torch.zeros(1, *shape))
        rows.append({"form": form, "params": counts["params"], "macs": counts["conv_linear_macs"],
                     "output": " x ".join(map(str, out.shape[1:])), "bottleneck": min(sizes),
                     "bottleneck_vs_output": min(sizes) / out[0].numel()})
    frame = pd.DataFrame(rows)
    parallel = frame.loc[frame["form"] == "parallel (Fig. 10)", "macs"].item()
    frame.insert(3, "cost_vs_parallel", frame["macs"] / parallel)
    return frame


def _feature_blocks(model: nn.Module) -> list[str]:
    """The blocks of ``model`` (as the counting tables group them) that make its feature map, with each stem
    split into its layers, since the stem is where the representation shrinks fastest."""
    names = []
    for block in dict.fromkeys(module_blocks(model).values()):
        module = model.get_submodule(block) if block != "(root)" else None
        if module is None or "aux" in block:
            continue
        if block.split(".")[-1].startswith("stem") and len(list(module.children())) > 1:
            names += [f"{block}.{child}" for child, _ in module.named_children()]
        elif isinstance(module, (nn.ModuleList, nn.ModuleDict)) or type(module) is nn.Sequential and any(
                len(list(c.children())) > 0 for c in module.children()):
            continue  # a container of blocks: its blocks are listed on their own
        else:
            names.append(block)
    return names


def activation_sizes(name: str, input_size: int | None = None) -> pd.DataFrame:
    """The representation along ``name`` (a zoo model) at ``input_size`` (its native size by default): one row
    per block that outputs a feature map larger than 1 x 1, in the order of the forward pass, from the input
    image on. Columns: ``model``, ``step`` (0 = the input), ``block``, ``shape`` (C x H x W), ``elements`` (per
    image) and ``ratio`` (this size over the previous one; below 1 the representation shrinks)."""
    size = input_size or model_info(name).input_size
    model = create_model_for_counting(name)
    blocks = _feature_blocks(model)
    outputs: list[tuple[str, tuple[int, ...]]] = []

    def record(block: str):
        def hook(_module: nn.Module, _inputs: object, out: object) -> None:
            if isinstance(out, torch.Tensor) and out.dim() == 4 and out.shape[-1] > 1:
                outputs.append((block, tuple(out.shape[1:])))
        return hook

    handles = [model.get_submodule(b).register_forward_hook(record(b)) for b in blocks]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, size, size))
    finally:
        for handle in handles:
            handle.remove()
    rows = [("input", (3, size, size))] + outputs
    frame = pd.DataFrame({"model": name, "step": range(len(rows)), "block": [b for b, _ in rows],
                          "shape": [" x ".join(map(str, s)) for _, s in rows],
                          "elements": [int(torch.Size(s).numel()) for _, s in rows]})
    frame["ratio"] = frame["elements"] / frame["elements"].shift(1)
    return frame


def representation_summary(models: Iterable[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Activation sizes along every zoo model (``models``, default all but small_inception, whose 32 px input is
    another regime) and one row per model: ``model``, ``input`` (px), ``blocks``, ``first_block`` and
    ``last_map`` (elements per image after the first layer and at the last feature map), ``largest_drop`` (the
    largest one-step shrink, as a factor) and ``at`` (the block that makes it), ``largest_drop_in_body`` and
    ``at_in_body`` (the same among the blocks fed a grid at most 1/8 of the input's side: after the stem)."""
    names = [m for m in (models or list_models()) if m != "small_inception"]
    along = pd.concat([activation_sizes(m) for m in names], ignore_index=True)
    rows = []
    for name, frame in along.groupby("model", sort=False):
        size = model_info(name).input_size
        heights = frame["shape"].str.split(" x ").str[1].astype(int)
        steps = frame.iloc[1:]
        drop = 1 / steps["ratio"]
        # The body: blocks fed a grid at most 1/8 of the input's side, i.e. after the stem's first strides.
        body = (heights.shift(1).iloc[1:] <= size / 8 + 1).to_numpy()
        worst, worst_body = drop.idxmax(), drop[body].idxmax()
        rows.append({"model": name, "input": size, "blocks": len(steps),
                     "first_block": int(steps["elements"].iloc[0]), "last_map": int(steps["elements"].iloc[-1]),
                     "largest_drop": float(drop[worst]), "at": along.loc[worst, "block"],
                     "largest_drop_in_body": float(drop[worst_body]), "at_in_body": along.loc[worst_body, "block"]})
    return along, pd.DataFrame(rows)
