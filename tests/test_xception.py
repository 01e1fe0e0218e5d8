"""Xception: exact size, parity with timm's ``legacy_xception`` (weights copied by order), flows, knobs."""

from __future__ import annotations

import math

import pytest
import timm
import torch
from torch import nn

from inception_models import create_model, model_info
from inception_models.xception import SeparableConv2d, Xception, XceptionBlock

from helpers import calibrate_bn, copy_by_order, macs_and_grids, n_params, xception_params

REFERENCE_PARAMS = 22_855_952  # timm 1.0.31 legacy_xception = the paper's Table 3 model, shared/REFERENCES.md
REFERENCE_GMACS = 8.357


@pytest.fixture(scope="module")
def pair() -> tuple[nn.Module, nn.Module]:
    """timm's legacy_xception with calibrated BN, and ours holding its values copied by order; eval mode."""
    torch.manual_seed(0)
    reference = timm.create_model("legacy_xception")
    calibrate_bn(reference, torch.randn(4, 3, 64, 64))
    ours = create_model("xception").eval()
    copy_by_order(ours, reference)
    return ours, reference


def test_exact_parameter_count(pair):
    ours, reference = pair
    assert n_params(ours) == REFERENCE_PARAMS == n_params(reference)
    info = model_info("xception")
    assert info.reference_params == REFERENCE_PARAMS and info.year == 2017 and "Xception" in info.paper


def test_ordered_shapes_equal_timm(pair):
    ours, reference = pair
    assert [p.shape for p in ours.parameters()] == [p.shape for p in reference.parameters()]
    assert [t.shape for t in ours.state_dict().values()] == [t.shape for t in reference.state_dict().values()]
    assert len(ours.state_dict()) == 276


def test_logits_equal_timm_after_copy_by_order(pair):
    ours, reference = pair
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        feats, logits = ours.forward_features(x), ours(x)
        ref_feats, ref_logits = reference.forward_features(x), reference(x)
    assert feats.shape == ref_feats.shape == (2, 2048, 2, 2)
    assert (logits[0] - logits[1]).abs().max() > 0.1  # the outputs depend on the input
    assert logits.abs().max() < 1e3  # and are of a size where the tolerance is tight
    torch.testing.assert_close(feats, ref_feats, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)


def test_mid_activation_adds_a_relu_and_no_parameters(pair):
    ours, reference = pair
    with_relu = create_model("xception", mid_activation=True).eval()
    assert n_params(with_relu) == REFERENCE_PARAMS
    relus = lambda m: sum(isinstance(x, nn.ReLU) for x in m.modules())  # noqa: E731
    separable = sum(isinstance(x, SeparableConv2d) for x in ours.modules())
    assert separable == 34  # 36 conv layers (Sec. 3) minus the two plain stem convolutions
    assert relus(with_relu) - relus(ours) == separable
    copy_by_order(with_relu, reference)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert (with_relu(x) - ours(x)).abs().max() > 1e-3  # same weights, the ReLU changes the function


def test_full_size_macs_and_flows():
    """The one 299x299 forward: MACs of conv + linear layers (batch 1) and each flow's output grid."""
    model = create_model("xception").eval()
    flows = ("stem", "entry_flow", "middle_flow", "exit_flow")
    macs, grids, logits = macs_and_grids(model, torch.randn(1, 3, 299, 299), flows)
    assert logits.shape == (1, 1000)
    assert round(macs / 1e9, 3) == REFERENCE_GMACS
    assert grids == {
        "stem": (64, 147, 147),
        "entry_flow": (728, 19, 19),
        "middle_flow": (728, 19, 19),
        "exit_flow": (2048, 10, 10),
    }


def test_structure_follows_the_paper():
    model = Xception(num_classes=10)
    blocks = [m for m in model.modules() if isinstance(m, XceptionBlock)]
    assert len(blocks) == 12 and len(model.middle_flow) == 8  # 14 modules with the stem and the last two convs
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(b.eps == 1e-5 for b in bns)
    assert model.entry_flow[0].rep[0].pre_act.__class__ is nn.Identity  # the first block follows the stem's ReLU
    assert all(isinstance(b.rep[0].pre_act, nn.ReLU) and not b.rep[0].pre_act.inplace for b in blocks[1:])
    assert all(isinstance(b.skip, nn.Identity) for b in model.middle_flow)
    assert model.fc.out_features == 10 and model.num_features == 2048


def test_minimum_input_size_is_7():
    """7 is the smallest input timm's legacy_xception takes (3x3/2 'valid', then 3x3 'valid'); we say so first."""
    model = create_model("xception", num_classes=5, width_mult=0.25).eval()
    assert model.min_input_size == 7 == model_info("xception").min_input_size
    reference = timm.create_model("legacy_xception", num_classes=5).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 7, 7)).shape == (1, 5)
        assert reference(torch.randn(1, 3, 7, 7)).shape == (1, 5)
        with pytest.raises(RuntimeError):
            reference(torch.randn(1, 3, 6, 6))
        with pytest.raises(ValueError, match="at least 7x7"):
            model(torch.randn(1, 3, 6, 40))


def test_middle_blocks_norm_and_width_knobs():
    base = n_params(Xception())
    # One middle-flow block: three (depthwise 3x3 728, pointwise 728x728, BN 728) units, identity shortcut.
    middle_block = 3 * (9 * 728 + 728 * 728 + 2 * 728)
    assert n_params(Xception(middle_blocks=4)) == base - 4 * middle_block
    shallow = create_model("xception", num_classes=3, middle_blocks=0, width_mult=0.25).eval()
    assert len(shallow.middle_flow) == 0
    with torch.no_grad():
        assert shallow(torch.randn(1, 3, 32, 32)).shape == (1, 3)

    bn = Xception(width_mult=0.25)
    plain = create_model("xception", width_mult=0.25, norm="none")
    bn_channels = sum(m.num_features for m in bn.modules() if isinstance(m, nn.BatchNorm2d))
    # Without BN every pointwise/skip/stem conv gets a bias (C) instead of gamma and beta (2C).
    assert n_params(plain) == n_params(bn) - bn_channels
    assert bn.num_features == 512 and bn.stem[0].conv.weight.shape == (8, 3, 3, 3)

    gray = create_model("xception", in_chans=1, num_classes=2, drop_rate=0.5, width_mult=0.25).eval()
    assert gray.dropout.p == 0.5
    with torch.no_grad():
        assert gray(torch.randn(2, 1, 33, 47)).shape == (2, 2)
    with pytest.raises(ValueError, match="in_chans"):
        gray(torch.randn(2, 3, 33, 47))
    with pytest.raises(ValueError, match="middle_blocks"):
        create_model("xception", middle_blocks=-1)
    with pytest.raises(ValueError, match="norm"):
        create_model("xception", norm="gn")


def test_backward_on_a_small_input():
    torch.manual_seed(0)
    model = create_model("xception", num_classes=4, width_mult=0.25, mid_activation=True).train()
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 2])
    nn.functional.cross_entropy(model(x), y).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.stem[0].conv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("kind, layer", [(False, nn.Identity), ("none", nn.Identity), (True, nn.ReLU),
                                         ("relu", nn.ReLU), ("elu", nn.ELU)])
def test_mid_activation_kinds_add_no_parameters(kind, layer):
    """Fig. 10's three arms: nothing, ReLU or ELU between depthwise and pointwise; the count stays the hand count."""
    model = create_model("xception", num_classes=10, width_mult=0.125, middle_blocks=2, mid_activation=kind)
    mids = [m.mid_act for m in model.modules() if isinstance(m, SeparableConv2d)]
    assert len(mids) == 34 - 3 * 6 and all(type(m) is layer for m in mids)
    assert n_params(model) == xception_params(width_mult=0.125, middle_blocks=2, classes=10)


def test_mid_activation_elu_is_not_relu_and_bad_kinds_are_named():
    conv = SeparableConv2d(2, 2, mid_activation="elu")
    x = -torch.ones(1, 2, 3, 3)
    assert torch.allclose(conv.mid_act(x.clone()), torch.full_like(x, math.expm1(-1.0)))
    with pytest.raises(ValueError, match="mid_activation must be"):
        create_model("xception", mid_activation="gelu")
