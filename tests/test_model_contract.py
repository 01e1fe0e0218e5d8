"""What every zoo model offers other code: ``torch.fx.symbolic_trace``, torchvision's ``create_feature_extractor``
and ``torch.export`` give the eager model's outputs (eager mode keeps its clear input errors); timm's
``reset_classifier(num_classes, global_pool)``; knob values of the wrong type named with the knob's type.

Models are built at width 0.25 and run on small inputs, one thread.
"""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor

from inception_models import create_model, list_models, model_info
from inception_models.registry import check_knobs, type_name

MODELS = list_models()
WITH_AUX = {"googlenet", "googlenet_paper", "inception_v3"}


def _model(name: str, **knobs) -> nn.Module:
    torch.manual_seed(0)
    return create_model(name, num_classes=5, width_mult=0.25, **knobs).eval()


def _input(name: str, size: int | None = None) -> torch.Tensor:
    """A batch of two, small but with a feature map of 2x2 or more (107 pixels for the models with valid
    convolutions in their stems, whose smallest input, 75, gives 1x1)."""
    side = size or (107 if model_info(name).min_input_size >= 75 else 64)
    return torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(1))


def test_the_zoo_has_eleven_models():
    assert len(MODELS) == 11


# ----------------------------------------------------------------------------------------------------- FX
@pytest.mark.parametrize("name", MODELS)
def test_symbolic_trace_gives_the_eager_outputs_and_eager_keeps_its_input_errors(name: str, one_thread):
    model = _model(name)
    traced = torch.fx.symbolic_trace(model)
    x = _input(name)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match=f"{model.model_name} was built with in_chans=3 but got an input with 4"):
        model(torch.zeros(1, 4, 64, 64))
    smallest = model_info(name).min_input_size
    if smallest > 1:
        with pytest.raises(ValueError, match=f"needs inputs of at least {smallest}x{smallest} pixels"):
            model(torch.zeros(1, 3, smallest - 1, smallest - 1))


def test_a_traced_bn_inception_decides_the_grid_parity_when_it_runs(one_thread):
    """Its stride-2 modules pad an odd grid (a torch.fx leaf function): one trace serves odd and even inputs."""
    model = _model("bn_inception")
    traced = torch.fx.symbolic_trace(model)
    assert sum(node.target.__name__ == "_pad_odd_grid" for node in traced.graph.nodes
               if node.op == "call_function") == 2
    with torch.no_grad():
        for side in (32, 33):
            torch.testing.assert_close(traced(_input("bn_inception", side)), model(_input("bn_inception", side)),
                                       rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(WITH_AUX - {"inception_v3"}))
def test_a_traced_model_in_training_returns_the_aux_logits(name: str, one_thread):
    model = _model(name, aux_logits=True).train()
    traced = torch.fx.symbolic_trace(model)
    x = _input(name, 64)
    torch.manual_seed(3)
    eager = model(x)
    torch.manual_seed(3)
    graph = traced(x)
    assert type(graph).__name__ == "InceptionOutputs" and len(graph.aux_logits) == 2
    torch.testing.assert_close(graph, eager, rtol=0, atol=0)


@pytest.mark.parametrize("name", MODELS)
def test_create_feature_extractor_returns_the_features_and_the_logits(name: str, one_thread):
    model = _model(name)
    features = model.feature_stages[-1]  # the node of the last feature stage: the map the head pools
    extractor = create_feature_extractor(model, {features: "features", "fc": "logits"})
    x = _input(name)
    with torch.no_grad():
        out = extractor(x)
        torch.testing.assert_close(out["features"], model.forward_features(x), rtol=0, atol=0)
        torch.testing.assert_close(out["logits"], model(x), rtol=0, atol=0)
    assert out["features"].shape[1] == model.num_features and out["features"].shape[-1] >= 2


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_torch_export_gives_the_eager_outputs(name: str, one_thread):
    model = _model(name)
    x = _input(name)
    program = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model(x), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------- timm contract
@pytest.mark.parametrize("name", MODELS)
def test_reset_classifier_as_timm_does(name: str, one_thread):
    model = _model(name, **({"aux_logits": True} if name in WITH_AUX else {}))
    x = _input(name)
    with torch.no_grad():
        features = model.forward_features(x)
        assert features.shape[-1] >= 2 and features.shape[1] == model.num_features

        model.reset_classifier(0)  # no classifier: the pooled features
        assert model.num_classes == 0 and isinstance(model.get_classifier(), nn.Identity)
        torch.testing.assert_close(model(x), features.mean((2, 3)), rtol=1e-5, atol=1e-6)

        model.reset_classifier(0, global_pool="")  # no pool either: the feature map
        torch.testing.assert_close(model(x), features, rtol=0, atol=0)

        model.reset_classifier(7, global_pool="max")  # a fresh classifier over max-pooled features
        fc = model.get_classifier()
        assert isinstance(fc, nn.Linear) and (fc.in_features, fc.out_features) == (model.num_features, 7)
        torch.testing.assert_close(model(x), features.amax((2, 3)) @ fc.weight.T + fc.bias, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(model.forward_head(features, pre_logits=True), features.amax((2, 3)))

        model.reset_classifier(3)  # None keeps the pool
        assert model.global_pool_type == "max" and model(x).shape == (2, 3)
    if name in WITH_AUX:  # the aux heads follow the classes, so training with them still works
        model.train()
        big = _input(name, 299 if name == "inception_v3" else 64)
        out = model(big)
        assert out.logits.shape == (2, 3) and all(a.shape == (2, 3) for a in _aux(out))
        model.reset_classifier(0)  # as timm's Inception-v3: the aux heads lose their classifier too
        assert all(a.dim() == 2 and a.shape[1] > 3 for a in _aux(model(big)))


def _aux(out) -> tuple[torch.Tensor, ...]:
    return out.aux_logits if isinstance(out.aux_logits, tuple) else (out.aux_logits,)


def test_reset_classifier_refuses_what_timm_refuses():
    model = _model("small_inception")
    with pytest.raises(ValueError, match="global_pool='' returns the unpooled feature map.*num_classes=0"):
        model.reset_classifier(10, global_pool="")
    with pytest.raises(ValueError, match="global_pool='catavgmax' is not supported; use one of 'avg', 'max', ''"):
        model.reset_classifier(10, global_pool="catavgmax")
    with pytest.raises(ValueError, match="num_classes must be >= 0"):
        model.reset_classifier(-1)
    assert model.num_classes == 5 and model.get_classifier().out_features == 5  # left as it was


def test_reset_classifier_keeps_the_device_and_dtype():
    model = _model("small_inception").double()
    model.reset_classifier(4)
    assert model.get_classifier().weight.dtype == torch.float64
    assert model(_input("small_inception").double()).dtype == torch.float64


# ------------------------------------------------------------------------------------------------ knob types
# The types the builders declare, written out (GoogLeNet's None: "as its spec says").
EXPECTED_TYPES = {"num_classes": ("int",), "in_chans": ("int",), "width_mult": ("float",),
                  "norm": ("'bn' or 'none'", "'bn' or 'none' or None"), "aux_norm": ("'bn' or 'none' or None",),
                  "residual_scale": ("float or Sequence[float]",), "block_counts": ("Sequence[int] or None",),
                  "factorize_stages": ("tuple[int, ...]",), "drop_rate": ("float", "float or None"),
                  "aux_logits": ("bool", "bool or None"), "middle_blocks": ("int",), "final_width": ("int or None",), "branch_kernel": ("int",),
                  "mid_activation": ("bool or str",)}


@pytest.mark.parametrize("name", MODELS)
def test_every_knob_of_a_wrong_type_is_named_with_its_type(name: str):
    info = model_info(name)
    assert set(info.knob_types) == set(info.knobs)  # every knob is typed
    for knob in info.knobs:
        expected = type_name(info.knob_types[knob])
        assert expected in EXPECTED_TYPES.get(knob, ("bool", "bool or None", "int or None")), knob
        if "str" in expected.split(" or "):  # a str is of its type: 'abc' is no wrong type for it
            continue
        error = ValueError if "'bn'" in expected else TypeError  # a str outside norm's choices is a bad value
        with pytest.raises(error, match=f"^{name}: knob {knob} takes {re.escape(expected)}, got 'abc' \\(str\\)$"):
            create_model(name, **{knob: "abc"})


@pytest.mark.parametrize("name", MODELS)
def test_every_knob_takes_its_default(name: str):
    info = model_info(name)
    import inspect

    defaults = {p.name: p.default for p in inspect.signature(info.builder).parameters.values()}
    check_knobs(name, defaults, info.knobs, info.knob_types)  # raises on a mismatch


@pytest.mark.parametrize(("knobs", "error", "message"), [
    (dict(width_mult="0.5"), TypeError, "knob width_mult takes float, got '0.5' (str)"),
    (dict(num_classes=True), TypeError, "knob num_classes takes int, got True (bool)"),
    (dict(num_classes=2.0), TypeError, "knob num_classes takes int, got 2.0 (float)"),
    (dict(norm=1), TypeError, "knob norm takes 'bn' or 'none', got 1 (int)"),
    (dict(norm="batch"), ValueError, "knob norm takes 'bn' or 'none', got 'batch' (str)"),  # a str, not a choice
    (dict(factorize_stages=[1, "2"]), TypeError, "knob factorize_stages takes tuple[int, ...], got [1, '2'] (list)"),
])
def test_strict_types(knobs: dict, error: type, message: str):
    with pytest.raises(error, match=f"^small_inception: {re.escape(message)}$"):
        create_model("small_inception", **knobs)


def test_numbers_and_lists_that_fit_are_taken():
    import numpy as np

    from inception_models.small_inception import small_inception

    model = create_model("small_inception", width_mult=1, num_classes=np.int64(3), factorize_stages=[1])
    assert model.get_classifier().out_features == 3
    with pytest.raises(TypeError, match="small_inception: knob width_mult takes float"):
        small_inception(width_mult="abc")  # the builder itself checks too
    with pytest.raises(TypeError, match=r"small_inception got unknown knob\(s\) 'widht'; it takes: num_classes"):
        create_model("small_inception", widht=2)
