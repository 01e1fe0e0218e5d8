"""Weight conversion: torchvision/timm state dicts in local files, mapped onto our models by order."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from inception_models import create_model, list_models, model_info
from inception_models.convert import (
    FORMAT_FOR_MODEL,
    REFERENCE_FORMATS,
    ConversionError,
    convert_state_dict,
    detect_format,
    load_weights,
)

from helpers import calibrate_bn


def assert_same_logits(ours: nn.Module, reference: nn.Module, size: int) -> None:
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(7))
    ours.eval()
    reference.eval()
    with torch.no_grad():
        logits, expected = ours(x), reference(x)
    assert logits.shape == expected.shape
    assert (expected[0] - expected[1]).abs().max() > 0.1  # the logits depend on the input
    assert expected.abs().max() < 1e3  # and are of a size where 1e-4 is a tight tolerance
    assert (logits - expected).abs().max().item() < 1e-4


def snapshot(model: nn.Module) -> list[torch.Tensor]:
    return [t.clone() for t in model.state_dict().values()]


def unchanged(model: nn.Module, before: list[torch.Tensor]) -> bool:
    return all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), before))


# ---------------------------------------------------------------------------------------------------------------
# The reference layouts are exactly the libraries' keys, in order.

LAYOUTS: list[tuple[str, bool, Callable[[], nn.Module]]] = [
    ("torchvision_googlenet", True, lambda: torchvision.models.googlenet(aux_logits=True, init_weights=False)),
    ("torchvision_googlenet", False, lambda: torchvision.models.googlenet(aux_logits=False, init_weights=False)),
    ("inception_v3", True, lambda: torchvision.models.inception_v3(aux_logits=True, init_weights=False)),
    ("inception_v3", False, lambda: torchvision.models.inception_v3(aux_logits=False, init_weights=False)),
    ("inception_v3", True, lambda: timm.create_model("inception_v3", aux_logits=True)),
    ("inception_v3", False, lambda: timm.create_model("inception_v3")),
    ("timm_inception_v4", False, lambda: timm.create_model("inception_v4")),
    ("timm_inception_resnet_v2", False, lambda: timm.create_model("inception_resnet_v2")),
    ("timm_legacy_xception", False, lambda: timm.create_model("legacy_xception")),
]


@pytest.mark.parametrize("name, aux, factory", LAYOUTS,
                         ids=[f"{n}-{'aux' if a else 'no_aux'}-{i}" for i, (n, a, _) in enumerate(LAYOUTS)])
def test_reference_layouts_are_the_libraries_keys(name, aux, factory):
    with torch.device("meta"):  # keys only: no memory, no initialisation
        reference = factory()
    keys = list(reference.state_dict())
    fmt = REFERENCE_FORMATS[name]
    assert fmt.keys(aux=aux) == keys
    assert detect_format(dict.fromkeys(keys)) is fmt
    without_counters = {k: None for k in keys if not k.endswith("num_batches_tracked")}
    assert detect_format(without_counters) is fmt


def test_each_reference_format_belongs_to_a_model():
    assert set(FORMAT_FOR_MODEL.values()) == set(REFERENCE_FORMATS)
    assert {"inception_v4", "xception"} <= set(list_models())


# ---------------------------------------------------------------------------------------------------------------
# Xception from every kind of file.


@pytest.fixture(scope="module")
def xception_files(tmp_path_factory) -> tuple[nn.Module, dict[str, Path]]:
    torch.manual_seed(0)
    reference = calibrate_bn(timm.create_model("legacy_xception"), torch.randn(4, 3, 64, 64))
    state = reference.state_dict()
    folder = tmp_path_factory.mktemp("xception")
    paths = {
        "torch": folder / "xception.pth",
        "safetensors": folder / "xception.safetensors",
        "safetensors_named_bin": folder / "xception.bin",
        "wrapped_state_dict": folder / "checkpoint.pt",
        "wrapped_model_ddp": folder / "ddp.pt",
        "no_bn_counters": folder / "old_port.pth",
    }
    torch.save(state, paths["torch"])
    save_file(state, paths["safetensors"])
    save_file(state, paths["safetensors_named_bin"])
    torch.save({"state_dict": state, "epoch": 3}, paths["wrapped_state_dict"])
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}}, paths["wrapped_model_ddp"])
    torch.save({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}, paths["no_bn_counters"])
    return reference, paths


@pytest.mark.parametrize(
    "kind", ["torch", "safetensors", "safetensors_named_bin", "wrapped_state_dict", "wrapped_model_ddp",
             "no_bn_counters"]
)
def test_xception_loads_from_every_file_kind(xception_files, kind):
    reference, paths = xception_files
    model = create_model("xception", weights=paths[kind])
    assert_same_logits(model, reference, 64)
    counters = [t.item() for k, t in model.state_dict().items() if k.endswith("num_batches_tracked")]
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert n_bn == 40 and counters == [0 if kind == "no_bn_counters" else 1] * n_bn


def test_headless_model_takes_the_body(xception_files):
    reference, paths = xception_files
    model = create_model("xception", num_classes=0, weights=paths["torch"]).eval()
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        assert (model.forward_features(x) - reference.forward_features(x)).abs().max() < 1e-5
        assert model(x).shape == (1, 2048)


def test_our_own_state_dict_loads_back(tmp_path):
    source = create_model("xception", num_classes=3, width_mult=0.25, mid_activation=True)
    path = tmp_path / "ours.safetensors"
    save_file(source.state_dict(), path)
    loaded = create_model("xception", num_classes=3, width_mult=0.25, mid_activation=True, weights=path)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), source.state_dict().values()))
    with pytest.raises(ConversionError, match="num_classes=4"):
        create_model("xception", num_classes=4, width_mult=0.25, weights=path)
    with pytest.raises(ConversionError, match="own xception layout.*first unexpected key 'middle_flow.7"):
        create_model("xception", num_classes=3, width_mult=0.25, middle_blocks=7, weights=path)


# ---------------------------------------------------------------------------------------------------------------
# Files that must be refused, leaving the model untouched.


def refused(model_name: str, path: Path, match: str, **knobs) -> ConversionError:
    model = create_model(model_name, **knobs)
    before = snapshot(model)
    with pytest.raises(ConversionError, match=match) as err:
        load_weights(model, path, model_name)
    assert str(path) in str(err.value)
    assert unchanged(model, before)
    return err.value


def test_random_bytes_and_empty_files(tmp_path):
    noise = tmp_path / "noise.pt"
    noise.write_bytes(bytes(range(7, 250)) * 40)
    refused("xception", noise, "neither a torch.save file nor a safetensors file", width_mult=0.25)
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    refused("xception", empty, "cannot read", width_mult=0.25)
    random_pickle = tmp_path / "random.pt"
    random_pickle.write_bytes(b"\x80\x02" + os.urandom(2000))
    refused("xception", random_pickle, "truncated or corrupt", width_mult=0.25)


@pytest.mark.parametrize("kind", ["torch", "safetensors"])
def test_truncated_files(xception_files, tmp_path, kind):
    _, paths = xception_files
    data = paths[kind].read_bytes()
    cut = tmp_path / paths[kind].name
    cut.write_bytes(data[: len(data) * 2 // 3])
    refused("xception", cut, "truncated or corrupt")


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        create_model("xception", weights=tmp_path / "nowhere.pth")


def test_pickled_objects_are_not_executed(tmp_path):
    whole = tmp_path / "whole_model.pt"
    torch.save(nn.Linear(2, 2), whole)  # a pickled module: weights_only=True refuses it
    refused("xception", whole, "save model.state_dict", width_mult=0.25)
    text = tmp_path / "text.pt"
    torch.save({"conv1.weight": "not a tensor"}, text)
    refused("xception", text, "'conv1.weight' is a str", width_mult=0.25)


def test_wrong_num_classes_in_chans_and_layout(xception_files):
    _, paths = xception_files
    err = refused("xception", paths["torch"], "num_classes=10", num_classes=10)
    assert "1000 classes" in str(err)
    refused("xception", paths["torch"], "in_chans=1", in_chans=1)
    refused("xception", paths["torch"], "width_mult", width_mult=0.5)
    refused("xception", paths["torch"], "layout", norm="none")
    refused("xception", paths["torch"], "layout", middle_blocks=4)


def test_keys_that_fit_no_format(tmp_path, xception_files):
    reference, _ = xception_files
    unknown = tmp_path / "unknown.pt"
    torch.save({"foo.weight": torch.zeros(2)}, unknown)
    err = refused("xception", unknown, "fits no known format")
    message = str(err)
    assert "first unexpected key 'foo.weight'" in message and "first missing key 'conv1.weight'" in message
    assert "torchvision googlenet" in message and "timm inception_resnet_v2" in message  # the formats tried

    state = dict(reference.state_dict())
    del state["block5.rep.4.pointwise.weight"]
    state["block5.rep.4.extra"] = torch.zeros(1)
    damaged = tmp_path / "damaged.safetensors"
    save_file(state, damaged)
    err = refused("xception", damaged, "look like timm legacy_xception")
    assert "first unexpected key 'block5.rep.4.extra'" in str(err)
    assert "first missing key 'block5.rep.4.pointwise.weight'" in str(err)


def test_convert_state_dict_is_pure(xception_files):
    reference, _ = xception_files
    model = create_model("xception")
    before = snapshot(model)
    converted = convert_state_dict(reference.state_dict(), model, "xception")
    assert list(converted) == list(model.state_dict())
    assert unchanged(model, before)
    assert all(torch.equal(a, b) for a, b in zip(converted.values(), reference.state_dict().values()))


# ---------------------------------------------------------------------------------------------------------------
# Inception-v4 (and another model's file).


@pytest.fixture(scope="module")
def inception_v4_files(tmp_path_factory) -> tuple[nn.Module, dict[str, Path]]:
    torch.manual_seed(0)
    reference = calibrate_bn(timm.create_model("inception_v4"), torch.randn(4, 3, 128, 128))
    folder = tmp_path_factory.mktemp("inception_v4")
    paths = {"torch": folder / "inception_v4.pth", "safetensors": folder / "inception_v4.safetensors"}
    torch.save(reference.state_dict(), paths["torch"])
    save_file(reference.state_dict(), paths["safetensors"])
    return reference, paths


@pytest.mark.parametrize("kind", ["torch", "safetensors"])
def test_inception_v4_loads_timm_weights(inception_v4_files, kind):
    reference, paths = inception_v4_files
    assert_same_logits(create_model("inception_v4", weights=paths[kind]), reference, 80)


def test_another_models_state_dict_is_refused(inception_v4_files, xception_files):
    refused("xception", inception_v4_files[1]["torch"], "holds timm inception_v4 weights, but xception takes")
    refused("inception_v4", xception_files[1]["safetensors"], "holds timm legacy_xception")
    refused("inception_v4", inception_v4_files[1]["torch"], "layout", factorize_c=False)


# ---------------------------------------------------------------------------------------------------------------
# The models other modules build: GoogLeNet, Inception-v3 and Inception-ResNet-v2.

REFERENCES: list[tuple[str, str, Callable[[], nn.Module], dict, str]] = [
    # (our model, id, reference factory, our knobs, file kind)
    ("googlenet", "torchvision_no_aux",
     lambda: torchvision.models.googlenet(aux_logits=False, transform_input=False, init_weights=False),
     {"aux_logits": False}, "torch"),
    ("googlenet", "torchvision_aux",
     lambda: torchvision.models.googlenet(aux_logits=True, transform_input=False, init_weights=False),
     {"aux_logits": True},
     "safetensors"),
    ("inception_v3", "torchvision_aux",
     lambda: torchvision.models.inception_v3(aux_logits=True, transform_input=False, init_weights=False),
     {"aux_logits": True}, "torch"),
    ("inception_v3", "timm_no_aux", lambda: timm.create_model("inception_v3"), {"aux_logits": False}, "safetensors"),
    ("inception_resnet_v2", "timm", lambda: timm.create_model("inception_resnet_v2"), {}, "safetensors"),
]


@pytest.mark.slow
@pytest.mark.parametrize("name, case, factory, knobs, kind", REFERENCES, ids=[f"{r[0]}-{r[1]}" for r in REFERENCES])
def test_other_models_load_their_reference(tmp_path, name, case, factory, knobs, kind):
    size = max(75, model_info(name).min_input_size)
    torch.manual_seed(0)
    reference = calibrate_bn(factory(), torch.randn(4, 3, 128, 128))  # >1 pixel at the last grid
    path = tmp_path / f"{name}.{'safetensors' if kind == 'safetensors' else 'pth'}"
    if kind == "safetensors":
        save_file(reference.state_dict(), path)
    else:
        torch.save(reference.state_dict(), path)
    model = create_model(name, weights=path, **knobs)
    assert_same_logits(model, reference, size)
    # Every tensor, aux heads included, came across in order.
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values()))


@pytest.mark.slow
@pytest.mark.parametrize("name, factory", [
    ("googlenet", lambda: torchvision.models.googlenet(aux_logits=True, transform_input=False, init_weights=False)),
    ("inception_v3", lambda: torchvision.models.inception_v3(aux_logits=True, init_weights=False)),
], ids=["googlenet", "inception_v3"])
def test_aux_heads_rule(tmp_path, name, factory):
    """A file's aux heads are dropped for a model without them; a model with them needs a file with them."""
    reference = factory().eval()
    with_aux = tmp_path / "with_aux.pth"
    torch.save(reference.state_dict(), with_aux)
    model = create_model(name, aux_logits=False, weights=with_aux)
    fmt = REFERENCE_FORMATS[FORMAT_FOR_MODEL[name]]
    kept = [v for k, v in reference.state_dict().items() if k not in set(fmt.aux_keys())]
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), kept))

    without_aux = tmp_path / "without_aux.pth"
    torch.save({k: v for k, v in reference.state_dict().items() if k not in set(fmt.aux_keys())}, without_aux)
    refused(name, without_aux, "aux_logits=False", aux_logits=True)
