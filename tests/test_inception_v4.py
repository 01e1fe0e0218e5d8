"""Inception-v4: exact size, parity with timm's ``inception_v4`` (weights copied by order), grids, knobs."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from inception_models import create_model, model_info
from inception_models.inception_v4 import InceptionA, InceptionB, InceptionC, InceptionV4, ReductionA

from helpers import calibrate_bn, conv_bn, copy_by_order, macs_and_grids, n_params

REFERENCE_PARAMS = 42_679_816  # timm 1.0.31 inception_v4, shared/REFERENCES.md
REFERENCE_GMACS = 12.254


@pytest.fixture(scope="module")
def pair() -> tuple[nn.Module, nn.Module]:
    """timm's inception_v4 with random BN, and ours holding its values copied by order; both in eval mode."""
    torch.manual_seed(0)
    reference = timm.create_model("inception_v4")
    calibrate_bn(reference, torch.randn(4, 3, 128, 128))  # 16 samples at the last (2x2) grid
    ours = copy_by_order(create_model("inception_v4").eval(), reference)
    return ours, reference


def test_exact_parameter_count(pair):
    ours, reference = pair
    assert n_params(ours) == REFERENCE_PARAMS == n_params(reference)
    assert model_info("inception_v4").reference_params == REFERENCE_PARAMS


def test_ordered_shapes_equal_timm(pair):
    ours, reference = pair
    assert [p.shape for p in ours.parameters()] == [p.shape for p in reference.parameters()]
    assert [t.shape for t in ours.state_dict().values()] == [t.shape for t in reference.state_dict().values()]
    assert len(ours.state_dict()) == 896


def test_logits_equal_timm_after_copy_by_order(pair):
    ours, reference = pair
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        feats, logits = ours.forward_features(x), ours(x)
        ref_feats, ref_logits = reference.forward_features(x), reference(x)
    assert feats.shape == ref_feats.shape == (2, 1536, 1, 1)
    assert logits.shape == (2, 1000)
    assert (logits[0] - logits[1]).abs().max() > 0.1  # the outputs depend on the input
    assert logits.abs().max() < 1e3  # and are of a size where the tolerance is tight
    torch.testing.assert_close(feats, ref_feats, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)


def test_full_size_macs_and_grids():
    """The one 299x299 forward: MACs of conv + linear layers (batch 1) and the paper's grid per stage."""
    model = create_model("inception_v4").eval()
    stages = ("stem", "inception_a", "reduction_a", "inception_b", "reduction_b", "inception_c")
    macs, grids, logits = macs_and_grids(model, torch.randn(1, 3, 299, 299), stages)
    assert logits.shape == (1, 1000)
    assert round(macs / 1e9, 3) == REFERENCE_GMACS
    assert grids == {
        "stem": (384, 35, 35),
        "inception_a": (384, 35, 35),
        "reduction_a": (1024, 17, 17),
        "inception_b": (1024, 17, 17),
        "reduction_b": (1536, 8, 8),
        "inception_c": (1536, 8, 8),
    }


def test_blocks_and_table():
    model = create_model("inception_v4", num_classes=10)
    assert [len(getattr(model, s)) for s in ("inception_a", "reduction_a", "inception_b", "reduction_b",
                                             "inception_c")] == [4, 1, 7, 1, 3]
    assert all(isinstance(b, InceptionA) for b in model.inception_a)
    assert all(isinstance(b, InceptionB) for b in model.inception_b)
    assert all(isinstance(b, InceptionC) for b in model.inception_c)
    reduction = model.reduction_a[0]
    assert isinstance(reduction, ReductionA)
    # Reduction-A's k, l, m, n = 192, 224, 256, 384 (Table 1)
    assert [reduction.branch1[i].out_channels for i in range(3)] == [192, 224, 256]
    assert reduction.branch0.out_channels == 384
    pools = [m for m in model.modules() if isinstance(m, nn.AvgPool2d)]
    assert len(pools) == 14 and not any(p.count_include_pad for p in pools)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(b.eps == 1e-3 for b in bns)
    assert model.fc.out_features == 10 and model.num_features == 1536


def test_minimum_input_size_is_75():
    model = create_model("inception_v4", num_classes=5).eval()
    assert model.min_input_size == 75 == model_info("inception_v4").min_input_size
    with torch.no_grad():
        assert model.forward_features(torch.randn(1, 3, 75, 75)).shape == (1, 1536, 1, 1)
        with pytest.raises(ValueError, match="at least 75x75"):
            model(torch.randn(1, 3, 74, 90))
    with pytest.raises(ValueError, match="in_chans"):
        model(torch.randn(1, 1, 80, 80))


def test_factorize_switches_have_closed_form_costs():
    base = n_params(InceptionV4())
    # Inception-A: two stacked 3x3 (64 -> 96 -> 96) become one 5x5 (64 -> 96); 4 blocks.
    delta_a = 4 * (conv_bn(64, 96, 5, 5) - conv_bn(64, 96, 3, 3) - conv_bn(96, 96, 3, 3))
    # Inception-B: each 1x7/7x1 pair becomes one 7x7 from the pair's input to its output width; 7 blocks.
    pairs_b = [(192, 224, 256), (192, 192, 224), (224, 224, 256)]
    delta_b = 7 * sum(conv_bn(i, o, 7, 7) - conv_bn(i, m, 1, 7) - conv_bn(m, o, 7, 1) for i, m, o in pairs_b)
    # Inception-C: the 3x1/1x3 pair (384 -> 448 -> 512) and both parallel 1x3 | 3x1 splits become 3x3; 3 blocks.
    delta_c = 3 * (
        conv_bn(384, 512, 3, 3) - conv_bn(384, 448, 3, 1) - conv_bn(448, 512, 1, 3)
        + conv_bn(384, 512, 3, 3) - 2 * conv_bn(384, 256, 1, 3)
        + conv_bn(512, 512, 3, 3) - 2 * conv_bn(512, 256, 1, 3)
    )
    assert delta_a == 60_672
    assert n_params(InceptionV4(factorize_a=False)) - base == delta_a
    assert n_params(InceptionV4(factorize_b=False)) - base == delta_b
    assert n_params(InceptionV4(factorize_c=False)) - base == delta_c
    unfactorized = create_model("inception_v4", num_classes=3, factorize_a=False, factorize_b=False,
                                factorize_c=False).eval()
    assert n_params(unfactorized) - n_params(InceptionV4(num_classes=3)) == delta_a + delta_b + delta_c
    with torch.no_grad():
        assert unfactorized(torch.randn(1, 3, 75, 75)).shape == (1, 3)


def test_norm_width_and_channel_knobs():
    bn = InceptionV4(num_classes=7, width_mult=0.25)
    plain = create_model("inception_v4", num_classes=7, width_mult=0.25, norm="none")
    bn_channels = sum(m.num_features for m in bn.modules() if isinstance(m, nn.BatchNorm2d))
    # Without BN each conv gets a bias (C) instead of gamma and beta (2C).
    assert n_params(plain) == n_params(bn) - bn_channels
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())

    half = create_model("inception_v4", num_classes=7, in_chans=1, width_mult=0.5, drop_rate=0.3).eval()
    assert half.num_features == 768 and half.dropout.p == 0.3
    assert half.stem.conv1a.conv.weight.shape == (16, 1, 3, 3)
    with torch.no_grad():
        assert half(torch.randn(2, 1, 75, 75)).shape == (2, 7)
    with pytest.raises(ValueError, match="norm"):
        create_model("inception_v4", norm="layer")
    headless = create_model("inception_v4", num_classes=0, width_mult=0.25).eval()
    with torch.no_grad():
        assert headless(torch.randn(1, 3, 75, 75)).shape == (1, 384)


def test_backward_on_a_small_input():
    torch.manual_seed(0)
    model = create_model("inception_v4", num_classes=4, width_mult=0.25).train()
    x, y = torch.randn(2, 3, 75, 75), torch.tensor([1, 3])
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.stem.conv1a.conv.weight.grad.abs().sum() > 0
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    assert len(relus) == sum(1 for m in model.modules() if isinstance(m, nn.Conv2d))  # hooks see every ReLU
