"""The model registry: ``@register_model`` builders, ``create_model(name, **knobs)``, ``list_models()``.

Every builder is registered with the metadata the toolkit prints beside its own measurements: the paper,
its year, the native and minimum input sizes, and the published reference figures with their source.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from torch import nn

__all__ = ["ModelInfo", "register_model", "create_model", "list_models", "model_info"]


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


def _ensure_zoo_loaded() -> None:
    # Builders register themselves on import; importing the package imports every model module.
    import inception_models  # noqa: F401


def list_models() -> list[str]:
    """Names of every registered model, sorted."""
    _ensure_zoo_loaded()
    return sorted(_REGISTRY)


def model_info(name: str) -> ModelInfo:
    """The registry entry for ``name``; an unknown name raises a ``ValueError`` listing the known ones."""
    _ensure_zoo_loaded()
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
        from inception_models.convert import load_weights

        load_weights(model, weights, model_name=name)
    return model
