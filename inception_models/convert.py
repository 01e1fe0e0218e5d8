"""Load torchvision and timm weights onto the zoo's models, from local files only (nothing is downloaded).

Our models register their parameters and buffers in exactly the order, and with exactly the shapes, of the
reference implementation they follow, so a reference state dict maps onto them *by order*, with no table of
renamed keys. Conversion is therefore:

1. read the file (``torch.save`` through ``torch.load(weights_only=True)``, or safetensors, told apart by the
   file's first bytes) and unwrap ``{"state_dict": ...}`` / ``{"model": ...}`` and ``module.`` prefixes;
2. detect the format from the keys (:data:`REFERENCE_FORMATS`; each has a signature key) and check that the
   keys are exactly that format's (``num_batches_tracked`` buffers may be absent; auxiliary heads may be);
3. pair the format's canonical key order with the model's state dict order and check the shapes pair by pair;
4. build the complete new state dict, then ``load_state_dict(strict=True)`` once, so a failure leaves the
   model untouched.

Rules where file and model differ:

- **auxiliary heads**: a file with aux-head weights loads into a model built without them (``aux_logits=False``);
  the aux weights are dropped, as they play no part in inference. A file without them cannot fill a model
  built with them: that raises, naming ``aux_logits``.
- **classifier**: a model built with ``num_classes=0`` (no classifier) takes the file's body and drops its
  classifier; any other class-count difference raises, naming ``num_classes``.
- **num_batches_tracked**: torchvision and timm save these BN counters; files without them (older ports) load,
  and the model keeps its own counters.
- A file saved from one of our own models (``model.state_dict()``) loads as it is (format ``inception_lab``).

torchvision's and timm's ``inception_v3`` share one layout (the same keys in the same order), so they are one
format here, ``inception_v3``. Weights carry no input convention: torchvision's pretrained GoogLeNet and
Inception-v3 run with ``transform_input=True`` (ImageNet-normalised inputs re-mapped to [-1, 1] inside the
model), so build ours with ``transform_input=True`` to use them as torchvision does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import torch
from torch import nn

__all__ = [
    "ConversionError",
    "ReferenceFormat",
    "REFERENCE_FORMATS",
    "FORMAT_FOR_MODEL",
    "read_state_dict",
    "detect_format",
    "convert_state_dict",
    "load_weights",
]

NATIVE_FORMAT = "inception_lab"
_NBT = "num_batches_tracked"


class ConversionError(ValueError):
    """A weights file or state dict that cannot be mapped onto the model; the message says why and what to do."""


# ---------------------------------------------------------------------------------------------------------------
# The reference layouts: each format's keys in the reference model's registration order.


def _bn(prefix: str) -> list[str]:
    return [f"{prefix}.{n}" for n in ("weight", "bias", "running_mean", "running_var", _NBT)]


def _conv_bn(prefix: str) -> list[str]:
    """torchvision's and timm's BasicConv2d / ConvNormAct: ``conv`` without bias, then ``bn``."""
    return [f"{prefix}.conv.weight", *_bn(f"{prefix}.bn")]


def _convs(prefix: str, names: Iterable[str]) -> list[str]:
    return [key for name in names for key in _conv_bn(f"{prefix}.{name}")]


def _linear(prefix: str) -> list[str]:
    return [f"{prefix}.weight", f"{prefix}.bias"]


@dataclass(frozen=True)
class ReferenceFormat:
    """One reference layout: its keys in registration order, split into segments.

    ``segments`` is an ordered tuple of ``(kind, keys)`` with kind ``"body"``, ``"aux"`` (auxiliary heads,
    optional in a file) or ``"head"`` (the main classifier). ``classifier_keys`` are the tensors whose first
    dimension is the number of classes.
    """

    name: str
    description: str
    signature: tuple[str, ...]
    segments: tuple[tuple[str, tuple[str, ...]], ...]
    classifier_keys: frozenset[str]

    def keys(self, *, aux: bool = True, head: bool = True, num_batches_tracked: bool = True) -> list[str]:
        """The format's keys in order, with or without the aux heads, classifier and BN counters."""
        wanted = {"body"} | ({"aux"} if aux else set()) | ({"head"} if head else set())
        return [
            k
            for kind, keys in self.segments
            if kind in wanted
            for k in keys
            if num_batches_tracked or not k.endswith(_NBT)
        ]

    @property
    def has_aux(self) -> bool:
        return any(kind == "aux" for kind, _ in self.segments)

    def aux_keys(self) -> list[str]:
        return [k for kind, keys in self.segments if kind == "aux" for k in keys]


def _googlenet_format() -> ReferenceFormat:
    blocks = ("3a", "3b", "4a", "4b", "4c", "4d", "4e", "5a", "5b")
    branches = ("branch1", "branch2.0", "branch2.1", "branch3.0", "branch3.1", "branch4.1")
    body = [k for name in ("conv1", "conv2", "conv3") for k in _conv_bn(name)]
    body += [k for b in blocks for k in _convs(f"inception{b}", branches)]
    aux = [k for a in ("aux1", "aux2") for k in (*_conv_bn(f"{a}.conv"), *_linear(f"{a}.fc1"), *_linear(f"{a}.fc2"))]
    return ReferenceFormat(
        name="torchvision_googlenet",
        description="torchvision googlenet",
        signature=("inception3a.branch1.conv.weight",),
        segments=(("body", tuple(body)), ("aux", tuple(aux)), ("head", tuple(_linear("fc")))),
        classifier_keys=frozenset(_linear("aux1.fc2") + _linear("aux2.fc2") + _linear("fc")),
    )


def _inception_v3_format() -> ReferenceFormat:
    stem = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3")
    block_a = ("branch1x1", "branch5x5_1", "branch5x5_2", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3",
               "branch_pool")
    block_b = ("branch3x3", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3")
    block_c = ("branch1x1", "branch7x7_1", "branch7x7_2", "branch7x7_3", *(f"branch7x7dbl_{i}" for i in range(1, 6)),
               "branch_pool")
    block_d = ("branch3x3_1", "branch3x3_2", "branch7x7x3_1", "branch7x7x3_2", "branch7x7x3_3", "branch7x7x3_4")
    block_e = ("branch1x1", "branch3x3_1", "branch3x3_2a", "branch3x3_2b", "branch3x3dbl_1", "branch3x3dbl_2",
               "branch3x3dbl_3a", "branch3x3dbl_3b", "branch_pool")
    body = [k for name in stem for k in _conv_bn(name)]
    for mixed, branches in (("5b", block_a), ("5c", block_a), ("5d", block_a), ("6a", block_b),
                            ("6b", block_c), ("6c", block_c), ("6d", block_c), ("6e", block_c)):
        body += _convs(f"Mixed_{mixed}", branches)
    aux = [*_conv_bn("AuxLogits.conv0"), *_conv_bn("AuxLogits.conv1"), *_linear("AuxLogits.fc")]
    tail = [k for mixed, branches in (("7a", block_d), ("7b", block_e), ("7c", block_e))
            for k in _convs(f"Mixed_{mixed}", branches)]
    return ReferenceFormat(
        name="inception_v3",
        description="torchvision/timm inception_v3 (one layout)",
        signature=("Conv2d_1a_3x3.conv.weight",),
        segments=(("body", tuple(body)), ("aux", tuple(aux)), ("body", tuple(tail)), ("head", tuple(_linear("fc")))),
        classifier_keys=frozenset(_linear("AuxLogits.fc") + _linear("fc")),
    )


def _inception_v4_format() -> ReferenceFormat:
    block_a = ("branch0", "branch1.0", "branch1.1", "branch2.0", "branch2.1", "branch2.2", "branch3.1")
    reduction_a = ("branch0", "branch1.0", "branch1.1", "branch1.2")
    block_b = ("branch0", "branch1.0", "branch1.1", "branch1.2", *(f"branch2.{i}" for i in range(5)), "branch3.1")
    reduction_b = ("branch0.0", "branch0.1", "branch1.0", "branch1.1", "branch1.2", "branch1.3")
    block_c = ("branch0", "branch1_0", "branch1_1a", "branch1_1b", "branch2_0", "branch2_1", "branch2_2",
               "branch2_3a", "branch2_3b", "branch3.1")
    stem = ("0", "1", "2", "3.conv", *(f"4.{b}" for b in ("branch0.0", "branch0.1", "branch1.0", "branch1.1",
                                                          "branch1.2", "branch1.3")), "5.conv")
    body = _convs("features", stem)
    layout = [block_a] * 4 + [reduction_a] + [block_b] * 7 + [reduction_b] + [block_c] * 3
    for index, branches in enumerate(layout, start=6):
        body += _convs(f"features.{index}", branches)
    return ReferenceFormat(
        name="timm_inception_v4",
        description="timm inception_v4",
        signature=("features.0.conv.weight",),
        segments=(("body", tuple(body)), ("head", tuple(_linear("last_linear")))),
        classifier_keys=frozenset(_linear("last_linear")),
    )


def _inception_resnet_v2_format() -> ReferenceFormat:
    body = [k for name in ("conv2d_1a", "conv2d_2a", "conv2d_2b", "conv2d_3b", "conv2d_4a") for k in _conv_bn(name)]
    body += _convs("mixed_5b", ("branch0", "branch1.0", "branch1.1", "branch2.0", "branch2.1", "branch2.2",
                                "branch3.1"))
    block35 = ("branch0", "branch1.0", "branch1.1", "branch2.0", "branch2.1", "branch2.2")
    block17 = ("branch0", "branch1.0", "branch1.1", "branch1.2")
    block8 = block17
    for i in range(10):
        body += _convs(f"repeat.{i}", block35) + _linear(f"repeat.{i}.conv2d")
    body += _convs("mixed_6a", ("branch0", "branch1.0", "branch1.1", "branch1.2"))
    for i in range(20):
        body += _convs(f"repeat_1.{i}", block17) + _linear(f"repeat_1.{i}.conv2d")
    body += _convs("mixed_7a", ("branch0.0", "branch0.1", "branch1.0", "branch1.1", "branch2.0", "branch2.1",
                                "branch2.2"))
    for prefix in [f"repeat_2.{i}" for i in range(9)] + ["block8"]:
        body += _convs(prefix, block8) + _linear(f"{prefix}.conv2d")
    body += _conv_bn("conv2d_7b")
    return ReferenceFormat(
        name="timm_inception_resnet_v2",
        description="timm inception_resnet_v2",
        signature=("conv2d_1a.conv.weight", "mixed_5b.branch0.conv.weight"),
        segments=(("body", tuple(body)), ("head", tuple(_linear("classif")))),
        classifier_keys=frozenset(_linear("classif")),
    )


def _legacy_xception_format() -> ReferenceFormat:
    def separable(prefix: str) -> list[str]:
        return [f"{prefix}.conv1.weight", f"{prefix}.pointwise.weight"]

    def block(index: int, reps: int, *, skip: bool, start_with_relu: bool = True) -> list[str]:
        keys = [f"block{index}.skip.weight", *_bn(f"block{index}.skipbn")] if skip else []
        # rep is a flat Sequential of [ReLU,] SeparableConv2d, BatchNorm2d per repetition.
        position = 0
        for i in range(reps):
            if start_with_relu or i > 0:
                position += 1
            keys += separable(f"block{index}.rep.{position}") + _bn(f"block{index}.rep.{position + 1}")
            position += 2
        return keys

    body = ["conv1.weight", *_bn("bn1"), "conv2.weight", *_bn("bn2")]
    body += block(1, 2, skip=True, start_with_relu=False) + block(2, 2, skip=True) + block(3, 2, skip=True)
    for index in range(4, 12):
        body += block(index, 3, skip=False)
    body += block(12, 2, skip=True)
    body += separable("conv3") + _bn("bn3") + separable("conv4") + _bn("bn4")
    return ReferenceFormat(
        name="timm_legacy_xception",
        description="timm legacy_xception (Cadene's Xception)",
        signature=("conv1.weight", "block1.skip.weight"),
        segments=(("body", tuple(body)), ("head", tuple(_linear("fc")))),
        classifier_keys=frozenset(_linear("fc")),
    )


REFERENCE_FORMATS: dict[str, ReferenceFormat] = {
    fmt.name: fmt
    for fmt in (
        _googlenet_format(),
        _inception_v3_format(),
        _inception_v4_format(),
        _inception_resnet_v2_format(),
        _legacy_xception_format(),
    )
}

# The reference each of our models follows (their registry names); a file of another format is refused for them.
# Models not listed take their own files, or a reference file whose layout they match by order and shape.
FORMAT_FOR_MODEL: dict[str, str] = {
    "googlenet": "torchvision_googlenet",
    "inception_v3": "inception_v3",
    "inception_v4": "timm_inception_v4",
    "inception_resnet_v2": "timm_inception_resnet_v2",
    "xception": "timm_legacy_xception",
}


# ---------------------------------------------------------------------------------------------------------------
# Reading files.


def _sniff(path: Path) -> str:
    with path.open("rb") as f:
        head = f.read(9)
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":  # torch.save's zip archive / legacy pickle
        return "torch"
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < path.stat().st_size:
        return "safetensors"  # an 8-byte little-endian header length, then the JSON header
    if path.suffix == ".safetensors":
        return "safetensors"
    raise ConversionError(
        f"{path} is neither a torch.save file nor a safetensors file (it starts with {head!r}); "
        "save the weights with torch.save(model.state_dict(), path) or safetensors.torch.save_file"
    )


def _unwrap(obj: object, source: str) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for wrapper in ("state_dict", "model"):
            if isinstance(obj.get(wrapper), Mapping):
                obj = obj[wrapper]
                break
    if not isinstance(obj, Mapping):
        raise ConversionError(
            f"{source} holds a {type(obj).__name__}, not a state dict; save model.state_dict() instead"
        )
    state = dict(obj)
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise ConversionError(
                f"{source} is not a state dict of tensors: entry {key!r} is a {type(value).__name__}"
            )
    # DistributedDataParallel and torch.compile wrap the model and prefix every key.
    for prefix in ("module.", "_orig_mod."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from a local ``torch.save`` or safetensors file (told apart by content, then suffix).

    ``torch.save`` files are read with ``torch.load(weights_only=True)``, so no code in the file runs.
    A wrapped ``{"state_dict": ...}`` or ``{"model": ...}`` checkpoint is unwrapped. A missing file raises
    ``FileNotFoundError``; an unreadable, truncated or corrupt one raises :class:`ConversionError`; both name
    the path.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"weights file {path} does not exist (weights= takes a local file; nothing is downloaded)"
        )
    kind = _sniff(path)
    try:
        if kind == "safetensors":
            from safetensors.torch import load_file

            obj: object = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch and safetensors raise many types for bad files; one clear error instead
        reason = (str(err).strip().splitlines() or [""])[0].split(". ")[0]
        advice = (
            "the file is truncated or corrupt, or holds pickled objects other than tensors "
            "(save model.state_dict(), not the model)"
            if kind == "torch"
            else "the file is truncated or corrupt"
        )
        raise ConversionError(
            f"cannot read {path} as a {'torch.save' if kind == 'torch' else kind} file "
            f"({type(err).__name__}: {reason}); {advice}"
        ) from err
    return _unwrap(obj, str(path))


# ---------------------------------------------------------------------------------------------------------------
# Detecting the format and mapping by order.


def _first(keys: Iterable[str]) -> str:
    return next((repr(k) for k in keys), "none")


def _mismatch(fmt: ReferenceFormat, keys: Mapping[str, object]) -> tuple[list[str], list[str]]:
    """Keys of the file the format does not have, and keys of the format the file lacks (aux/BN counters
    count as missing only when the file has some of them)."""
    everything = set(fmt.keys())
    unexpected = [k for k in keys if k not in everything]
    has_aux = any(k in keys for k in fmt.aux_keys())
    has_nbt = any(k.endswith(_NBT) for k in keys)
    missing = [k for k in fmt.keys(aux=has_aux, num_batches_tracked=has_nbt) if k not in keys]
    return unexpected, missing


def detect_format(state_dict: Mapping[str, torch.Tensor], *, expected: str | None = None) -> ReferenceFormat:
    """The reference format whose keys the state dict has exactly (see :data:`REFERENCE_FORMATS`).

    Raises :class:`ConversionError` naming the first unexpected and the first missing key, against the format
    the keys' signature points to, else ``expected`` (the format the target model takes), and the formats tried.
    """
    tried = ", ".join(f.description for f in REFERENCE_FORMATS.values())
    for fmt in REFERENCE_FORMATS.values():
        if all(k in state_dict for k in fmt.signature):
            unexpected, missing = _mismatch(fmt, state_dict)
            if not unexpected and not missing:
                return fmt
            raise ConversionError(
                f"the keys look like {fmt.description} (they include {fmt.signature[0]!r}) but differ from it: "
                f"first unexpected key {_first(unexpected)} ({len(unexpected)} unexpected), "
                f"first missing key {_first(missing)} ({len(missing)} missing)"
            )
    if expected in REFERENCE_FORMATS:
        closest = REFERENCE_FORMATS[expected]
    else:
        closest = max(REFERENCE_FORMATS.values(), key=lambda f: len(set(f.keys()) & set(state_dict)))
    unexpected, missing = _mismatch(closest, state_dict)
    raise ConversionError(
        f"the state dict fits no known format (tried: {tried}, and this library's own layout); "
        f"against {closest.description}: first unexpected key {_first(unexpected)}, "
        f"first missing key {_first(missing)}"
    )


def _classes(model: nn.Module) -> str:
    return f"num_classes={getattr(model, 'num_classes', '?')}"


def _pair_shapes(
    pairs: list[tuple[str, str | None]],
    state_dict: Mapping[str, torch.Tensor],
    own: Mapping[str, torch.Tensor],
    classifier_keys: frozenset[str] | set[str],
    model: nn.Module,
    model_name: str,
) -> dict[str, torch.Tensor]:
    """Build ``{our key: the file's tensor}``; ``None`` as a file key keeps the model's own value."""
    converted: dict[str, torch.Tensor] = {}
    bad: list[tuple[str, str, torch.Size, torch.Size]] = []
    for ours, theirs in pairs:
        if theirs is None:  # a BN counter the file does not have
            converted[ours] = own[ours].clone()
            continue
        value = state_dict[theirs]
        if value.shape != own[ours].shape:
            bad.append((ours, theirs, value.shape, own[ours].shape))
        converted[ours] = value
    if not bad:
        return converted
    body = [b for b in bad if b[1] not in classifier_keys]
    if not body:
        ours, theirs, file_shape, model_shape = bad[0]
        raise ConversionError(
            f"the file's classifier {theirs!r} has {file_shape[0]} classes (shape {tuple(file_shape)}) but "
            f"{model_name} was built with {_classes(model)} (shape {tuple(model_shape)}): build it with "
            f"num_classes={file_shape[0]} and replace the classifier afterwards, or with num_classes=0 to "
            "load the body alone"
        )
    ours, theirs, file_shape, model_shape = body[0]
    hint = "built with different width knobs (width_mult, ...) than the reference"
    if ours == pairs[0][0] and len(file_shape) == 4 and file_shape[1] != model_shape[1]:
        hint = f"built with in_chans={model_shape[1]} but the weights take {file_shape[1]} input channels"
    raise ConversionError(
        f"shape mismatch ({len(bad)} tensors): the file's {theirs!r} is {tuple(file_shape)} but {model_name}'s "
        f"{ours!r} is {tuple(model_shape)}; the model was {hint}"
    )


def _convert_native(
    state_dict: Mapping[str, torch.Tensor], model: nn.Module, model_name: str
) -> dict[str, torch.Tensor] | None:
    own = model.state_dict()
    keys = set(state_dict)
    if not keys <= set(own) or any(not k.endswith(_NBT) for k in set(own) - keys):
        return None
    classifier = model.get_classifier() if hasattr(model, "get_classifier") else None
    prefix = next((n for n, m in model.named_modules() if m is classifier), None)
    classifier_keys = {k for k in own if prefix and k.startswith(prefix + ".")}
    pairs = [(k, k if k in keys else None) for k in own]
    return _pair_shapes(pairs, state_dict, own, classifier_keys, model, model_name)


def convert_state_dict(
    state_dict: Mapping[str, torch.Tensor], model: nn.Module, model_name: str
) -> dict[str, torch.Tensor]:
    """Map a torchvision/timm (or our own) state dict onto ``model``'s keys, by order; nothing is loaded.

    Returns a complete state dict for ``model.load_state_dict(..., strict=True)``. Raises
    :class:`ConversionError` when the keys fit no known format, the format is not the one ``model_name``
    follows, the model's layout differs (knobs such as ``norm``, ``factorize_*``, ``aux_logits``), or shapes
    differ (``num_classes``, ``in_chans``, ``width_mult``). See the module docstring for the rules.
    """
    state_dict = _unwrap(state_dict, "the state dict")
    native = _convert_native(state_dict, model, model_name)
    if native is not None:
        return native
    own = model.state_dict()
    signed = any(all(k in state_dict for k in f.signature) for f in REFERENCE_FORMATS.values())
    if not signed and 2 * len(set(state_dict) & set(own)) > len(state_dict):
        unexpected = [k for k in state_dict if k not in own]
        missing = [k for k in own if k not in state_dict and not k.endswith(_NBT)]
        raise ConversionError(
            f"the keys look like this library's own {model_name} layout but differ from this model's: "
            f"first unexpected key {_first(unexpected)}, first missing key {_first(missing)}; was the file saved "
            "from a model built with other knobs (norm, factorize_*, aux_logits, middle_blocks, ...)?"
        )
    expected = FORMAT_FOR_MODEL.get(model_name)
    fmt = detect_format(state_dict, expected=expected)
    if expected is not None and fmt.name != expected:
        raise ConversionError(
            f"the file holds {fmt.description} weights, but {model_name} takes "
            f"{REFERENCE_FORMATS[expected].description} weights"
        )
    options = [(aux, head) for aux in ((True, False) if fmt.has_aux else (False,)) for head in (True, False)]
    fitting = [o for o in options if len(fmt.keys(aux=o[0], head=o[1])) == len(own)]
    if not fitting:
        sizes = f"{len(fmt.keys())} ({len(fmt.keys(head=False))} without the classifier"
        sizes += f", {len(fmt.keys(aux=False))} without the aux heads)" if fmt.has_aux else ")"
        raise ConversionError(
            f"{model_name} as built has {len(own)} state-dict entries but {fmt.description} has {sizes}: "
            "the model was built with knobs that change its layout (norm, factorize_*, aux_logits, "
            "middle_blocks, ...); build it with the reference's defaults to load these weights"
        )
    model_aux, model_head = fitting[0]
    file_aux = any(k in state_dict for k in fmt.aux_keys())
    if model_aux and not file_aux:
        raise ConversionError(
            f"the file has no auxiliary-head weights but {model_name} was built with aux heads; "
            "build it with aux_logits=False, or load a file saved with its aux heads"
        )
    reference = fmt.keys(aux=model_aux, head=model_head)
    pairs = [(ours, theirs if theirs in state_dict else None) for ours, theirs in zip(own, reference)]
    missing = [theirs for (_, theirs_or_none), theirs in zip(pairs, reference)
               if theirs_or_none is None and not theirs.endswith(_NBT)]
    if missing:  # cannot happen after detect_format; a guard against a model/format pairing error
        raise ConversionError(f"the file lacks {missing[0]!r}")
    return _pair_shapes(pairs, state_dict, own, fmt.classifier_keys, model, model_name)


def load_weights(model: nn.Module, path: str | Path, model_name: str) -> nn.Module:
    """Load a local torchvision/timm (or our own) weights file into ``model``; all or nothing.

    ``create_model(name, weights=path)`` calls this. The file is read and converted completely before a
    single ``load_state_dict(strict=True)``, so on any error the model keeps its weights. Errors name the path.
    """
    state_dict = read_state_dict(path)
    try:
        converted = convert_state_dict(state_dict, model, model_name)
    except ConversionError as err:
        raise ConversionError(f"cannot load {path} into {model_name}: {err}") from None
    model.load_state_dict(converted, strict=True)
    return model
