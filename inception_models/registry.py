"""The model registry: ``@register_model`` builders, ``create_model(name, **knobs)``, ``list_models()``.

Every builder is registered with the metadata the toolkit prints beside its own measurements: the paper,
its year, the native and minimum input sizes, and the published reference figures with their source.

A family of the zoo declares its knobs once, on its model class (keyword-only constructor arguments), and its
widths once, in a frozen spec; :func:`register_variant` registers one builder per variant (a spec, e.g. the
paper's made from the released one with ``dataclasses.replace``), whose knobs the registry reads from that
class's signature. A knob given a value of the wrong type raises a ``TypeError`` naming the knob and the type its
builder declares (checked against the type hints by pydantic, strictly: ``"0.5"`` is not a float, ``True`` is
not an int).
"""

from __future__ import annotations

import functools
import inspect
import typing
from dataclasses import dataclass, field
from pathlib import Path
from types import NoneType, UnionType
from typing import Any, Callable, Literal, Mapping, Sequence

from pydantic import TypeAdapter, ValidationError
from torch import nn

from inception_models.convert import load_weights

__all__ = ["ModelInfo", "check_knobs", "create_model", "list_models", "model_info", "register_model", "register_variant",
           "type_name"]


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about one builder, reference figures included (``../shared/REFERENCES.md``)."""

    name: str
    builder: Callable[..., nn.Module]
    paper: str
    year: int
    input_size: int
    min_input_size: int
    reference_params: int | None = None
    reference_gmacs: float | None = None
    reference_source: str = ""
    description: str = ""
    knobs: tuple[str, ...] = field(default=())
    # Each knob's type as its builder declares it (knobs without a hint take any value).
    knob_types: Mapping[str, Any] = field(default_factory=dict)


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(
    *,
    paper: str,
    year: int,
    input_size: int,
    min_input_size: int,
    reference_params: int | None = None,
    reference_gmacs: float | None = None,
    reference_source: str = "",
    name: str | None = None,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a model builder under its function name (or ``name``) with its paper metadata.

    The reference figures describe the model the builder makes with its default knobs.
    """

    def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or builder.__name__
        if key in _REGISTRY:
            raise ValueError(f"model {key!r} is registered twice")
        params = inspect.signature(builder).parameters.values()
        knobs = tuple(p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))
        hints = getattr(builder, "__knob_types__", None) or typing.get_type_hints(builder)
        doc = inspect.getdoc(builder) or ""
        _REGISTRY[key] = ModelInfo(
            name=key,
            builder=builder,
            paper=paper,
            year=year,
            input_size=input_size,
            min_input_size=min_input_size,
            reference_params=reference_params,
            reference_gmacs=reference_gmacs,
            reference_source=reference_source,
            description=doc.splitlines()[0] if doc else "",
            knobs=knobs,
            knob_types={k: hints[k] for k in knobs if k in hints},
        )
        return builder

    return decorate


def register_variant(
    model: Callable[..., nn.Module],
    spec: Any,
    name: str,
    doc: str,
    *,
    knobs: Sequence[str] | None = None,
    **metadata: Any,
) -> Callable[..., nn.Module]:
    """Register ``name``, one variant of a family: its builder ``name(**knobs)`` returns ``model(spec, **knobs)``.

    The builder's knobs are ``model``'s keyword-only arguments, read from its signature (``knobs`` keeps a
    subset, for a variant that fixes the others in its spec); an unknown knob raises a ``TypeError`` naming the
    known ones. ``doc`` is the builder's docstring; ``metadata`` goes to :func:`register_model`.
    """
    params = [p for p in inspect.signature(model).parameters.values() if p.kind is p.KEYWORD_ONLY]
    if knobs is not None:
        missing = sorted(set(knobs) - {p.name for p in params})
        if missing:
            raise TypeError(f"{name}: {getattr(model, '__name__', model)} takes no knob(s) {missing}")
        params = [p for p in params if p.name in knobs]
    hints = typing.get_type_hints(model.__init__ if isinstance(model, type) else model)
    types = {p.name: hints[p.name] for p in params if p.name in hints}
    knob_names = tuple(p.name for p in params)

    def builder(**kwargs: Any) -> nn.Module:
        check_knobs(name, kwargs, knob_names, types)
        return model(spec, **kwargs)

    builder.__name__ = builder.__qualname__ = name
    builder.__doc__ = doc
    builder.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    builder.__knob_types__ = types  # type: ignore[attr-defined]
    return register_model(name=name, **metadata)(builder)


def type_name(hint: Any) -> str:
    """A type hint as a reader writes it: ``float``, ``'bn' or 'none'``, ``float or Sequence[float]``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is NoneType:
        return "None"
    if origin is Literal:
        return " or ".join(map(repr, args))
    if origin in (typing.Union, UnionType):
        return " or ".join(type_name(a) for a in args)
    if origin is not None:
        inner = ", ".join("..." if a is Ellipsis else type_name(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    return getattr(hint, "__name__", str(hint).replace("typing.", ""))


@functools.lru_cache(maxsize=None)
def _validator(hint: Any) -> TypeAdapter:
    return TypeAdapter(hint)


def _fits(value: Any, hint: Any) -> bool:
    """Whether ``value`` is a ``hint`` (strictly: no str -> number, no bool -> int); a numpy or torch scalar
    stands for its Python number, a list for a tuple (as a command line or a JSON point writes one)."""
    if getattr(value, "shape", None) == () and hasattr(value, "item"):
        value = value.item()
    candidates = [value, tuple(value)] if isinstance(value, list) else [value]
    for candidate in candidates:
        try:
            _validator(hint).validate_python(candidate, strict=True)
            return True
        except ValidationError:
            continue
    return False


def _widened(hint: Any) -> Any:
    """``hint`` with each ``Literal`` replaced by the types of its values: what the knob's type admits."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return typing.Union[tuple(dict.fromkeys(type(a) for a in args))]
    if origin in (typing.Union, UnionType):
        return typing.Union[tuple(_widened(a) for a in args)]
    return hint


def check_knobs(name: str, knobs: Mapping[str, Any], allowed: Sequence[str], types: Mapping[str, Any]) -> None:
    """Raise a ``TypeError`` for a knob ``name`` does not take (listing those it takes) or a value that is not of
    the knob's declared type (naming the knob, its type and the value), a ``ValueError`` for a value of the
    right type outside the knob's choices (``norm="gn"``: the choices are ``'bn' or 'none'``)."""
    unknown = [k for k in knobs if k not in allowed]
    if unknown:
        raise TypeError(f"{name} got unknown knob(s) {', '.join(map(repr, unknown))}; it takes: {', '.join(allowed)}")
    for knob, value in knobs.items():
        if knob in types and not _fits(value, types[knob]):
            error = ValueError if _fits(value, _widened(types[knob])) else TypeError
            raise error(f"{name}: knob {knob} takes {type_name(types[knob])}, got {value!r} ({type(value).__name__})")


def list_models() -> list[str]:
    """Names of every registered model, sorted. (Builders register themselves when their module is imported, and
    importing any module of the package first runs its ``__init__``, which imports every model module.)"""
    return sorted(_REGISTRY)


def model_info(name: str) -> ModelInfo:
    """The registry entry for ``name``; an unknown name raises a ``ValueError`` listing the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(_REGISTRY))}") from None


def create_model(name: str, weights: str | Path | None = None, **knobs) -> nn.Module:
    """Build a registered model by name.

    ``knobs`` are the builder's keyword arguments (``num_classes``, ``norm``, ``width_mult``, ...): an unknown
    one raises a ``TypeError`` naming it and listing those the model takes, a value of the wrong type one
    naming the knob and its type. ``weights`` is a local file
    (torch.save or safetensors) holding a torchvision or timm state dict, converted onto our layout.
    """
    info = model_info(name)
    check_knobs(name, knobs, info.knobs, info.knob_types)
    model = info.builder(**knobs)
    if weights is not None:
        load_weights(model, weights, model_name=name)
    return model
