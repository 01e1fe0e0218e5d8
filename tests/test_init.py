"""Initialisations the experiments share (analysis.training.init): paired arms copy what they share, He's gain,
the data-dependent initialisation normalises every conv on its batch, and a point's arm is built from them."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from analysis.experiments.runner import build_arm_model
from analysis.training.init import data_dependent_init, he_init, initialise, share_weights
from inception_models import create_model

pytestmark = pytest.mark.usefixtures("one_thread")


def test_share_weights_copies_exactly_what_has_the_same_name_and_shape():
    torch.manual_seed(0)
    plain = create_model("small_inception", width_mult=0.125)
    torch.manual_seed(1)
    factorized = create_model("small_inception", width_mult=0.125, factorize_stages=(1,))
    copied = set(share_weights(factorized, plain))
    mine, theirs = factorized.state_dict(), plain.state_dict()
    shared = {k for k in theirs if k in mine and mine[k].shape == theirs[k].shape}
    assert copied == shared and "stem.conv.weight" in copied
    for name in shared:
        assert torch.equal(mine[name], theirs[name]), name
    # The factorised stage's 1x3 and 3x1 convs exist only in the factorised net: kept as they were built.
    only_mine = [k for k in mine if k not in theirs]
    assert only_mine and all(k.startswith("stage1.") for k in only_mine)


def test_arms_of_one_seed_start_from_the_same_weights_where_they_share_structure():
    point = {"seed": 3, "model": "small_inception", "knobs": {"width_mult": 0.125, "factorize_stages": [1]},
             "share": {"model": "small_inception", "knobs": {"width_mult": 0.125}}}
    arm = build_arm_model(point)
    reference = build_arm_model({"seed": 3, "model": "small_inception", "knobs": {"width_mult": 0.125}})
    other_seed = build_arm_model({**point, "seed": 4})
    assert torch.equal(arm.stem.conv.weight, reference.stem.conv.weight)
    assert torch.equal(arm.stage2[0].branch1x1.conv.weight, reference.stage2[0].branch1x1.conv.weight)
    assert not torch.equal(arm.stem.conv.weight, other_seed.stem.conv.weight)
    assert arm.fc.out_features == 10
    hues = build_arm_model({"seed": 0, "model": "small_inception", "knobs": {"width_mult": 0.125},
                            "difficulty": "k20"})
    assert hues.fc.out_features == 20


def test_he_init_has_the_relu_gain():
    torch.manual_seed(0)
    model = he_init(create_model("small_inception", norm="none", width_mult=0.5))
    conv = model.stage2[0].branch1x1.conv
    fan_in = conv.weight[0].numel()
    assert float(conv.weight.detach().std()) == pytest.approx(math.sqrt(2 / fan_in), rel=0.05)
    assert float(conv.bias.detach().abs().max()) == 0.0


def test_data_dependent_init_normalises_every_conv_on_its_batch():
    torch.manual_seed(0)
    model = create_model("small_inception", norm="none", width_mult=0.125)
    images = torch.randn(16, 3, 32, 32)
    initialise(model, "data", images)
    stats = []
    hooks = [m.register_forward_hook(lambda m, i, o: stats.append((o.mean((0, 2, 3)), o.std((0, 2, 3)))))
             for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model(images)
    for h in hooks:
        h.remove()
    assert len(stats) == sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 19
    for mean, std in stats:
        assert mean.abs().max() < 1e-4
        assert (std - 1).abs().max() < 1e-3
    assert model.training


def test_bad_initialisations_are_refused():
    model = create_model("small_inception", norm="none", width_mult=0.125)
    with pytest.raises(ValueError, match="batch"):
        data_dependent_init(model, torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="init='lsuv' is not known"):
        initialise(model, "lsuv")
    with pytest.raises(ValueError, match="needs a batch"):
        initialise(model, "data")
