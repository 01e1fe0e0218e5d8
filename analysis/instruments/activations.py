"""A per-channel activation monitor that stores no activations: the instrument under the dead-unit study.

:class:`ActivationMonitor` keeps running per-channel statistics of chosen layers of any ``nn.Module`` (ours,
torchvision's, timm's) over a window of batches (positive count, zero count, sum, sum of ``|a|``, max,
elements, samples), computed inside the hook, so the memory cost is a few vectors per layer whatever the
number of batches. :func:`prepool_layer` names the feature map before global average pooling, where the
Inception-v4 paper saw units die; :mod:`analysis.instruments.dead_units` turns the statistics into dead and
dormant counts and watches a training run.

Layer names
-----------
A layer is named in one of three ways:

* ``"Mixed_7c"``: the output of that module (any module: an ``nn.ReLU``, a block whose output is a
  concatenation of ReLUs, ...);
* ``"avgpool:input"``: the first input of that module (``prepool_layer`` gives ``"global_pool:input"`` for our
  zoo and timm, ``"avgpool:input"`` for torchvision);
* ``"Conv2d_1a_3x3:relu"``: a *functional* ReLU (``F.relu``/``torch.relu_``) called by that module's own
  forward; the second call in the same forward is ``":relu_1"`` and so on. The root module is ``"(root)"``.
  ``"prepool"`` is an alias resolved by :func:`prepool_layer`.

Functional ReLUs: how they are seen
-----------------------------------
torchvision's GoogLeNet and Inception-v3 call ``F.relu(x, inplace=True)`` and have no ``nn.ReLU`` modules, so
module hooks see nothing there. With ``layers=None`` and no activation modules in the model (or
``method="dispatch"``, or a ``":relu"`` name) the monitor intercepts ``aten.relu`` and ``aten.relu_`` with a
``TorchDispatchMode`` that is active only while the monitored model's forward runs (entered by a forward
pre-hook on the root, left by a forward hook with ``always_call=True``, so an exception cannot leave it on).
The owner's name comes from a stack kept by pre-/post-hooks on every submodule: a plain module-name stack
is exact and cheaper than ``torch.utils.module_tracker.ModuleTracker`` (which keeps a *set* of parents and
also tracks backward). Hooking ``BasicConv2d``-like modules' outputs would miss ReLUs called elsewhere
(GoogLeNet's aux ``F.relu(fc1(x))``) and depends on class names; the dispatch way does not.
Statistics are computed on the ReLU's output right after the op returns, before any later in-place op can
overwrite it (the reason never to keep a reference for later). The dispatch mode costs a Python call per
aten op during the forward; the pre-pool monitor needs only one module hook and is cheap. It does not see
ops run by ``torch.compile``d graphs.

State
-----
The monitor itself never changes the model. With ``preserve_state`` it saves the buffers and train/eval flags
on creation and puts them back in :meth:`ActivationMonitor.remove`
(:class:`analysis.instruments.state.ModelStateGuard`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import pandas as pd
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from analysis.instruments.state import MODES, ModelStateGuard

__all__ = [
    "ACTIVATION_TYPES",
    "PREPOOL",
    "ActivationMonitor",
    "ChannelStats",
    "prepool_layer",
]

PREPOOL = "prepool"
ROOT_NAME = "(root)"
METHODS = ("auto", "modules", "dispatch")

# Modules whose output is "an activation" for ``layers=None``. Dead/dormant are meaningful for the ReLU family;
# the others are listed so a GELU or SiLU network is still monitored (its channels are rarely exactly zero).
ACTIVATION_TYPES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Hardswish, nn.Hardtanh, nn.Softplus,
)
_RELU_OPS = (torch.ops.aten.relu.default, torch.ops.aten.relu_.default)


# ------------------------------------------------------------------------------------------- statistics
@dataclass
class ChannelStats:
    """Running per-channel statistics of one layer over the batches seen since the last reset.

    ``positive``/``zeros``: how many elements were > 0 / == 0 (int64, one per channel); ``total``/``abs_total``:
    the sum of the activations / of their absolute values; ``maximum``: the largest value; ``elements``: the
    elements seen per channel (samples x positions); ``samples``: the batch items seen; ``modes``: "train"
    and/or "eval", the mode of the module when it ran.
    """

    positive: torch.Tensor
    zeros: torch.Tensor
    total: torch.Tensor
    abs_total: torch.Tensor
    maximum: torch.Tensor
    elements: int = 0
    samples: int = 0
    batches: int = 0
    modes: set[str] = field(default_factory=set)

    @property
    def channels(self) -> int:
        return int(self.positive.numel())

    @property
    def dead(self) -> torch.Tensor:
        """Boolean mask: never > 0 at any position of any sample seen."""
        return self.positive == 0

    @property
    def mean_abs(self) -> torch.Tensor:
        return self.abs_total / max(self.elements, 1)

    def dormant(self, threshold: float) -> torch.Tensor:
        """Boolean mask of ReDo's tau-dormant channels (Sokar et al. 2023, eq. 1).

        score_c = mean|a_c| / mean_k(mean|a_k|); dormant when score_c <= tau. A layer whose every channel is
        zero has no scale to normalise by: all its channels count as dormant.
        """
        mean_abs = self.mean_abs
        layer_mean = mean_abs.mean()
        if float(layer_mean) == 0.0:
            return torch.ones_like(self.dead)
        return (mean_abs / layer_mean) <= threshold

    def mode_label(self) -> str:
        return "+".join(m for m in MODES if m in self.modes) or "none"


def _accumulator_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64


def _channel_view(x: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """The tensor with channels on dim 1 (``N, C, ...``) and the dims to reduce over."""
    if x.dim() == 0:
        x = x.reshape(1, 1)
    elif x.dim() == 1:
        x = x.reshape(-1, 1)
    return x, [0] + list(range(2, x.dim()))


def _accumulate(stats: ChannelStats | None, x: torch.Tensor, mode: str, name: str,
                nonnegative: bool = False) -> ChannelStats:
    """Add one batch; ``nonnegative`` (a ReLU's output) saves two of the five reductions."""
    x, dims = _channel_view(x.detach())
    channels = x.shape[1]
    acc = _accumulator_dtype(x.device)
    if stats is None:
        stats = ChannelStats(
            positive=torch.zeros(channels, dtype=torch.int64, device=x.device),
            zeros=torch.zeros(channels, dtype=torch.int64, device=x.device),
            total=torch.zeros(channels, dtype=acc, device=x.device),
            abs_total=torch.zeros(channels, dtype=acc, device=x.device),
            maximum=torch.full((channels,), float("-inf"), dtype=torch.float32, device=x.device),
        )
    elif stats.channels != channels:
        raise RuntimeError(
            f"layer {name!r} produced {channels} channels after {stats.channels} in earlier batches; a layer "
            f"must keep its width within a window (call monitor.reset() between models)")
    per_channel = x.numel() // channels
    positive = torch.count_nonzero(x, dims) if nonnegative else (x > 0).sum(dims)
    stats.positive += positive
    stats.zeros += (per_channel - positive) if nonnegative else (x == 0).sum(dims)
    total = x.sum(dims, dtype=acc)
    stats.total += total
    stats.abs_total += total if nonnegative else x.abs().sum(dims, dtype=acc)
    torch.maximum(stats.maximum, x.amax(dims).float(), out=stats.maximum)
    stats.elements += per_channel
    stats.samples += x.shape[0]
    stats.batches += 1
    stats.modes.add(mode)
    return stats


# ------------------------------------------------------------------------------------------ layer names
def prepool_layer(model: nn.Module) -> str:
    """The layer name of the feature map just before global average pooling (the Inception-v4 paper's
    "last layer before the average pooling", sec. 3.3).

    It is the input of the global pool: ``"global_pool:input"`` for our zoo and timm (there it is exactly
    ``forward_features(x)``), ``"avgpool:input"`` for torchvision; otherwise the last adaptive average pool.
    """
    modules = dict(model.named_modules())
    for name in ("global_pool", "avgpool"):
        if isinstance(modules.get(name), nn.Module):
            return f"{name}:input"
    pools = [n for n, m in modules.items()
             if isinstance(m, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d))
             or type(m).__name__ == "SelectAdaptivePool2d"]
    if pools:
        return f"{pools[-1]}:input"
    raise ValueError(
        f"{type(model).__name__} has no 'global_pool', 'avgpool' or adaptive average pool module, so the layer "
        f"before pooling cannot be found; name the layer yourself, e.g. layers=['<block name>'] (module "
        f"output) or layers=['<pool name>:input']")


@dataclass(frozen=True)
class _Tap:
    name: str
    kind: Literal["output", "input", "relu"]
    module: str  # the hooked module (output/input) or the owner (relu)


def _activation_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if n and isinstance(m, ACTIVATION_TYPES)]


def _parse_layer(model: nn.Module, modules: dict[str, nn.Module], spec: str) -> _Tap:
    if not isinstance(spec, str):
        raise TypeError(f"layer names are strings, got {type(spec).__name__}: {spec!r}")
    if spec == PREPOOL:
        spec = prepool_layer(model)
    owner, sep, tap = spec.rpartition(":")
    if not sep:
        if spec not in modules:
            raise ValueError(_unknown_module(spec, modules))
        return _Tap(spec, "output", spec)
    module = "" if owner == ROOT_NAME else owner
    if module not in modules:
        raise ValueError(_unknown_module(owner, modules))
    if tap == "input":
        return _Tap(spec, "input", module)
    if tap == "relu" or (tap.startswith("relu_") and tap[5:].isdigit()):
        return _Tap(spec, "relu", module)
    raise ValueError(f"layer {spec!r}: the part after ':' must be 'input', 'relu' or 'relu_<k>', got {tap!r}")


def _unknown_module(name: str, modules: dict[str, nn.Module]) -> str:
    close = [n for n in modules if n and (name in n or n in name)][:8]
    hint = f"; close names: {close}" if close else f"; some names: {[n for n in modules if n][:8]}"
    return (f"the model has no submodule {name!r}{hint}. Layers are module names (their output), "
            f"'<module>:input', '<module>:relu' (a functional ReLU) or 'prepool'")


# --------------------------------------------------------------------------------------------- monitor
class _ReluInterceptor(TorchDispatchMode):
    """Sees every aten op of the forward; hands the output of ``relu``/``relu_`` to the monitor."""

    def __init__(self, monitor: "ActivationMonitor") -> None:
        super().__init__()
        self.monitor = monitor

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        out = func(*args, **(kwargs or {}))
        if func in _RELU_OPS:
            self.monitor._on_functional_relu(out)  # runs with this mode popped: our reductions are not seen
        return out


class ActivationMonitor:
    """Running per-channel activation statistics of chosen layers, without storing activations.

    ``layers``: names as described in the module docstring (default: every activation: the outputs of the
    activation modules, or every functional ReLU when the model has none). ``method``: ``"auto"``
    (module hooks when the model has activation modules, else dispatch), ``"modules"`` or ``"dispatch"``
    (only used with ``layers=None``). ``modes``: record only forwards run in these modes ("train", "eval").
    ``preserve_state``: save the buffers (BN running statistics) and train/eval flags now and put them back
    in :meth:`remove`, for a monitor that runs train-mode forwards on a model it must leave as it was.

    Use as a context manager or call :meth:`remove`; afterwards no hook of the monitor is left on any
    module. :meth:`reset` starts a new window; :meth:`to_frame` and :meth:`channel_frame` report it.
    Setting ``enabled = False`` pauses recording (the hooks stay, at the cost of one flag check).
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[str] | str | None = None,
        *,
        method: str = "auto",
        modes: Sequence[str] = MODES,
        preserve_state: bool = False,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if method not in METHODS:
            raise ValueError(f"method={method!r} is not supported; use one of {list(METHODS)}")
        if isinstance(modes, str):
            modes = (modes,)
        bad = [m for m in modes if m not in MODES]
        if bad:
            raise ValueError(f"modes must be a subset of {list(MODES)}, got {list(modes)}")
        self.model = model
        self.modes = tuple(modes)
        self.enabled = True
        self._stats: dict[str, ChannelStats] = {}
        self._handles: list[Any] = []
        self._stack: list[list[Any]] = []  # [name, module, relu calls so far] per running module
        self._interceptor: _ReluInterceptor | None = None
        self._mode_entered = False
        self._guard: ModelStateGuard | None = None

        modules = dict(model.named_modules())
        if isinstance(layers, str):
            layers = [layers]
        self._all_relus = False
        if layers is None:
            activation_names = _activation_names(model)
            use_dispatch = method == "dispatch" or (method == "auto" and not activation_names)
            if use_dispatch:
                self._all_relus = True
                taps: list[_Tap] = []
            else:
                taps = [_Tap(n, "output", n) for n in activation_names]
                if not taps:
                    raise ValueError(f"{type(model).__name__} has no activation modules; use method='auto' or "
                                     f"'dispatch' to see functional ReLUs")
        else:
            taps = [_parse_layer(model, modules, spec) for spec in layers]
            if not taps:
                raise ValueError("layers is empty; pass None for every activation or a list of layer names")
        self.requested: list[str] = [t.name for t in taps]
        self._relu_names = {t.name for t in taps if t.kind == "relu"}
        try:
            for tap in taps:
                if tap.kind == "output":
                    module = modules[tap.module]
                    self._handles.append(module.register_forward_hook(self._output_hook(tap.name, module)))
                elif tap.kind == "input":
                    self._handles.append(modules[tap.module].register_forward_pre_hook(self._input_hook(tap.name)))
            if self._all_relus or self._relu_names:
                self._install_dispatch(modules)
            if preserve_state:
                self._guard = ModelStateGuard(model, rng=False).__enter__()
        except BaseException:
            self.remove()
            raise

    # ---------------------------------------------------------------- hooks
    @staticmethod
    def _mode(module: nn.Module) -> str:
        return "train" if module.training else "eval"

    def _record(self, name: str, x: Any, module: nn.Module, nonnegative: bool = False) -> None:
        if not self.enabled or not isinstance(x, torch.Tensor):
            return
        mode = self._mode(module)
        if mode not in self.modes:
            return
        self._stats[name] = _accumulate(self._stats.get(name), x, mode, name, nonnegative)

    def _output_hook(self, name: str, module: nn.Module):
        nonnegative = type(module) in (nn.ReLU, nn.ReLU6)

        def hook(module: nn.Module, args: Any, output: Any) -> None:
            self._record(name, output, module, nonnegative)
        return hook

    def _input_hook(self, name: str):
        def hook(module: nn.Module, args: Any) -> None:
            if args:
                self._record(name, args[0], module)
        return hook

    def _install_dispatch(self, modules: dict[str, nn.Module]) -> None:
        self._interceptor = _ReluInterceptor(self)
        for name, module in modules.items():
            self._handles.append(module.register_forward_pre_hook(self._push(name)))
            self._handles.append(module.register_forward_hook(self._pop, always_call=True))

    def _push(self, name: str):
        is_root = name == ""

        def hook(module: nn.Module, args: Any) -> None:
            if is_root and not self._stack and self._interceptor is not None:
                self._interceptor.__enter__()
                self._mode_entered = True
            self._stack.append([name or ROOT_NAME, module, 0])
        return hook

    def _pop(self, module: nn.Module, args: Any, output: Any) -> None:
        if self._stack:
            self._stack.pop()
        if not self._stack and self._mode_entered:
            self._mode_entered = False
            self._interceptor.__exit__(None, None, None)  # type: ignore[union-attr]

    def _on_functional_relu(self, out: Any) -> None:
        if not self._stack:
            return
        frame = self._stack[-1]
        owner, module, calls = frame
        frame[2] = calls + 1
        name = f"{owner}:relu" if calls == 0 else f"{owner}:relu_{calls}"
        if self._all_relus or name in self._relu_names:
            self._record(name, out, module, nonnegative=True)

    # ---------------------------------------------------------------- results
    @property
    def stats(self) -> dict[str, ChannelStats]:
        """Per-layer statistics of the current window, in the order the layers first ran."""
        return dict(self._stats)

    @property
    def layers(self) -> list[str]:
        """The layers seen in the current window (forward order)."""
        return list(self._stats)

    def reset(self) -> None:
        """Start a new window."""
        self._stats = {}

    def missing(self) -> list[str]:
        """Requested layers that have not run in the current window."""
        return [n for n in self.requested if n not in self._stats]

    def dead_channels(self) -> dict[str, list[int]]:
        """Indices of the dead channels of every layer seen."""
        return {name: torch.nonzero(s.dead).flatten().tolist() for name, s in self._stats.items()}

    def to_frame(self, dormant_threshold: float = 0.0) -> pd.DataFrame:
        """One row per layer: ``layer, channels, dead, dead_fraction, dormant, dormant_fraction,
        dormant_threshold, zero_fraction, positive_fraction, mean, max, samples, elements, batches, mode``.

        ``zero_fraction`` is the share of all elements (channels x positions x samples) that are exactly 0;
        ``elements`` counts positions x samples per channel.
        """
        if dormant_threshold < 0:
            raise ValueError(f"dormant_threshold (ReDo's tau) must be >= 0, got {dormant_threshold}")
        rows = []
        for name, s in self._stats.items():
            dead = int(s.dead.sum())
            dormant = int(s.dormant(dormant_threshold).sum())
            cells = s.elements * s.channels
            rows.append({
                "layer": name,
                "channels": s.channels,
                "dead": dead,
                "dead_fraction": dead / s.channels,
                "dormant": dormant,
                "dormant_fraction": dormant / s.channels,
                "dormant_threshold": float(dormant_threshold),
                "zero_fraction": float(s.zeros.sum()) / cells if cells else float("nan"),
                "positive_fraction": float(s.positive.sum()) / cells if cells else float("nan"),
                "mean": float(s.total.sum()) / cells if cells else float("nan"),
                "max": float(s.maximum.max()),
                "samples": s.samples,
                "elements": s.elements,
                "batches": s.batches,
                "mode": s.mode_label(),
            })
        return pd.DataFrame(rows, columns=_FRAME_COLUMNS)

    def channel_frame(self, dormant_threshold: float = 0.0) -> pd.DataFrame:
        """One row per (layer, channel): ``positive_fraction, zero_fraction, mean, mean_abs, max, dormant_score,
        dead, dormant``."""
        frames = []
        for name, s in self._stats.items():
            n = max(s.elements, 1)
            mean_abs = s.mean_abs
            layer_mean = float(mean_abs.mean())
            score = mean_abs / layer_mean if layer_mean > 0 else torch.zeros_like(mean_abs)
            frames.append(pd.DataFrame({
                "layer": name,
                "channel": range(s.channels),
                "positive_fraction": (s.positive.double() / n).cpu().numpy(),
                "zero_fraction": (s.zeros.double() / n).cpu().numpy(),
                "mean": (s.total / n).cpu().numpy(),
                "mean_abs": mean_abs.cpu().numpy(),
                "max": s.maximum.cpu().numpy(),
                "dormant_score": score.cpu().numpy(),
                "dead": s.dead.cpu().numpy(),
                "dormant": s.dormant(dormant_threshold).cpu().numpy(),
                "samples": s.samples,
                "mode": s.mode_label(),
            }))
        if not frames:
            return pd.DataFrame(columns=["layer", "channel", "positive_fraction", "zero_fraction", "mean",
                                         "mean_abs", "max", "dormant_score", "dead", "dormant", "samples", "mode"])
        return pd.concat(frames, ignore_index=True)

    # ---------------------------------------------------------------- lifetime
    def remove(self) -> None:
        """Remove every hook (and leave the dispatch mode if a forward was interrupted); idempotent.

        With ``preserve_state`` the saved buffers and train/eval flags are put back."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self._guard is not None:
            self._guard.__exit__(None, None, None)
            self._guard = None
        if self._mode_entered and self._interceptor is not None:
            self._mode_entered = False
            self._interceptor.__exit__(None, None, None)
        self._stack = []

    def __enter__(self) -> "ActivationMonitor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()


_FRAME_COLUMNS = ["layer", "channels", "dead", "dead_fraction", "dormant", "dormant_fraction", "dormant_threshold",
                  "zero_fraction", "positive_fraction", "mean", "max", "samples", "elements", "batches", "mode"]
