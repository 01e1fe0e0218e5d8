"""The model registry: ``@register_model`` builders, ``create_model(name, **knobs)``, ``list_models()``.

Every builder is registered with the metadata the toolkit prints beside its own measurements: the paper,
its year, the native and minimum input sizes, and the published reference figures with their source.

A family of the zoo declares its knobs once, on its model class (keyword-only constructor arguments), and its
widths once, in a frozen spec; :func:`register_variant` registers one builder per variant (a spec, e.g. the
paper's made from the released one with ``dataclasses.replace``), whose knobs the registry reads from that
class's signature.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from torch import nn

from inception_models.convert import load_weights

__all__ = ["ModelInfo", "register_model", "register_variant", "create_model", "list_models", "model_info"]


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
    allowed = {p.name for p in params}

    def builder(**kwargs: Any) -> nn.Module:
        unknown = [k for k in kwargs if k not in allowed]
        if unknown:
            raise TypeError(f"{name} got unknown knob(s) {', '.join(map(repr, unknown))}; it takes: "
                            f"{', '.join(p.name for p in params)}")
        return model(spec, **kwargs)

    builder.__name__ = builder.__qualname__ = name
    builder.__doc__ = doc
    builder.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    return register_model(name=name, **metadata)(builder)


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
    one raises a ``TypeError`` naming it and listing those the model takes. ``weights`` is a local file
    (torch.save or safetensors) holding a torchvision or timm state dict, converted onto our layout.
    """
    info = model_info(name)
    unknown = [k for k in knobs if k not in info.knobs]
    if unknown:
        raise TypeError(
            f"{name} got unknown knob(s) {', '.join(map(repr, unknown))}; it takes: {', '.join(info.knobs)}"
        )
    model = info.builder(**knobs)
    if weights is not None:
        load_weights(model, weights, model_name=name)
    return model
