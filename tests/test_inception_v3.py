"""Inception-v3: exact size, parity with torchvision's and timm's ``inception_v3`` (weights copied by order),
the factorisation switches' closed-form costs, knobs, the auxiliary head and input checks."""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from torch import nn

from inception_models import InceptionOutputs, create_model, model_info
from inception_models.inception_v3 import (
    InceptionV3AuxClassifier,
    InceptionA,
    InceptionB,
    InceptionC,
    InceptionV3,
    ReductionA,
    ReductionB,
)

from helpers import calibrate_bn, conv_bn, copy_by_order, macs_and_grids, n_params

# torchvision 0.29.1 inception_v3 = timm 1.0.31 inception_v3 (shared/REFERENCES.md)
PARAMS_NO_AUX = 23_834_568
PARAMS_AUX = 27_161_264
AUX_HEAD_PARAMS = 3_326_696
REFERENCE_GMACS = 5.713


def on_meta(**knobs) -> InceptionV3:
    """Our model with shapes only (no memory, no initialisation): counting needs nothing more, and is fast."""
    with torch.device("meta"):
        return create_model("inception_v3", **knobs)


@pytest.fixture(scope="module")
def torchvision_pair() -> tuple[nn.Module, nn.Module]:
    """torchvision's inception_v3 (aux head, transform_input) with calibrated BN; ours holding its values."""
    torch.manual_seed(0)
    reference = torchvision.models.inception_v3(weights=None, aux_logits=True, transform_input=True,
                                                init_weights=False)
    # The aux head cannot run in training below 299x299: calibrate the body without it, then the head alone.
    aux_head, reference.AuxLogits = reference.AuxLogits, None
    calibrate_bn(reference, torch.randn(4, 3, 80, 80), whole_model=True)
    reference.AuxLogits = aux_head
    calibrate_bn(aux_head, torch.randn(4, 768, 17, 17), seed=1, whole_model=True)
    ours = copy_by_order(create_model("inception_v3", aux_logits=True, transform_input=True), reference).eval()
    return ours, reference


def test_exact_parameter_counts():
    no_aux, with_aux = on_meta(), on_meta(aux_logits=True)
    assert n_params(no_aux) == PARAMS_NO_AUX
    assert n_params(with_aux) == PARAMS_AUX
    assert n_params(with_aux.aux_head) == AUX_HEAD_PARAMS == PARAMS_AUX - PARAMS_NO_AUX
    info = model_info("inception_v3")
    assert info.reference_params == PARAMS_NO_AUX and info.reference_gmacs == REFERENCE_GMACS
    assert (info.year, info.input_size, info.min_input_size) == (2015, 299, 75)
    assert info.paper.startswith("Rethinking the Inception Architecture")


@pytest.mark.parametrize("aux", [False, True])
def test_ordered_shapes_equal_torchvision_and_timm(aux):
    ours = on_meta(aux_logits=aux)
    with torch.device("meta"):
        references = [torchvision.models.inception_v3(weights=None, aux_logits=aux, init_weights=False),
                      timm.create_model("inception_v3", aux_logits=aux)]
    for reference in references:
        assert [p.shape for p in ours.parameters()] == [p.shape for p in reference.parameters()]
        assert [t.shape for t in ours.state_dict().values()] == [t.shape for t in reference.state_dict().values()]
    assert len(ours.state_dict()) == (580 if aux else 566)


def test_logits_equal_torchvision_after_copy_by_order(torchvision_pair):
    ours, reference = torchvision_pair
    x = torch.randn(2, 3, 80, 80, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits, ref_logits = ours(x), reference(x)
        feats = ours.forward_features(x)
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 1000)  # eval: a tensor, no aux
    assert feats.shape == (2, 2048, 1, 1)
    assert (logits[0] - logits[1]).abs().max() > 0.1  # the outputs depend on the input
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)


def test_aux_head_equals_torchvision(torchvision_pair):
    """The aux head needs a 17x17 grid (a 299 input): feed both heads the same 17x17 map directly."""
    ours, reference = torchvision_pair
    grid = torch.randn(2, 768, 17, 17, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(ours.aux_head(grid), reference.AuxLogits(grid), atol=1e-5, rtol=1e-5)


def test_logits_equal_timm_after_copy_by_order():
    torch.manual_seed(0)
    reference = calibrate_bn(timm.create_model("inception_v3", num_classes=10), torch.randn(4, 3, 76, 76),
                             whole_model=True)
    ours = copy_by_order(create_model("inception_v3", num_classes=10), reference).eval()
    x = torch.randn(2, 3, 76, 76, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), atol=1e-5, rtol=1e-5)


def test_full_size_training_forward_with_aux():
    """The one 299x299 forward, in training with the aux head: outputs, grids and the main path's MACs."""
    torch.manual_seed(0)
    model = create_model("inception_v3", aux_logits=True).train()
    stages = ("stem", "inception_a", "reduction_a", "inception_b", "reduction_b", "inception_c")
    macs, grids, out = macs_and_grids(model, torch.randn(2, 3, 299, 299), stages, exclude=model.aux_head.modules())
    assert isinstance(out, InceptionOutputs)
    assert out.logits.shape == (2, 1000)
    assert isinstance(out.aux_logits, torch.Tensor) and out.aux_logits.shape == (2, 1000)
    assert round(macs / 1e9, 3) == REFERENCE_GMACS
    assert grids == {  # forward_features is the inception_c output: 2048 x 8 x 8
        "stem": (192, 35, 35),
        "inception_a": (288, 35, 35),
        "reduction_a": (768, 17, 17),
        "inception_b": (768, 17, 17),
        "reduction_b": (1280, 8, 8),
        "inception_c": (2048, 8, 8),
    }


def test_blocks_table_and_conventions():
    model = on_meta(num_classes=10)
    stages = ("inception_a", "reduction_a", "inception_b", "reduction_b", "inception_c")
    assert [len(getattr(model, s)) for s in stages] == [3, 1, 4, 1, 2]
    for stage, kind in zip(stages, (InceptionA, ReductionA, InceptionB, ReductionB, InceptionC)):
        assert all(isinstance(b, kind) for b in getattr(model, stage))
    assert [b.out_channels for b in model.inception_a] == [256, 288, 288]
    pools = [m for m in model.modules() if isinstance(m, nn.AvgPool2d)]
    assert len(pools) == 9 and all(p.count_include_pad for p in pools)  # torchvision's F.avg_pool2d default
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(b.eps == 1e-3 for b in bns)
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    assert len(relus) == sum(1 for m in model.modules() if isinstance(m, nn.Conv2d))  # hooks see every ReLU
    assert model.fc.out_features == 10 and model.num_features == 2048 and model.dropout.p == 0.5
    assert model.aux_head is None


def test_factorize_switches_have_closed_form_costs():
    base = n_params(on_meta())
    # Inception-A (Fig. 5 undone): the double 3x3 (64 -> 96 -> 96) becomes one 5x5 (64 -> 96); 3 blocks.
    delta_a = 3 * (conv_bn(64, 96, 5, 5) - conv_bn(64, 96, 3, 3) - conv_bn(96, 96, 3, 3))
    # Inception-B (Fig. 6, n = 7, undone): every 1x7/7x1 pair (in, mid, out) becomes one 7x7 from in to out.
    delta_b = 0
    for c7 in (128, 160, 160, 192):
        for c_in, c_mid, c_out in ((c7, c7, 192), (c7, c7, c7), (c7, c7, 192)):
            delta_b += conv_bn(c_in, c_out, 7, 7) - conv_bn(c_in, c_mid, 1, 7) - conv_bn(c_mid, c_out, 7, 1)
    # Inception-C (Fig. 7 undone): each parallel 1x3 | 3x1 pair (384 -> 384 each) becomes one 3x3 (384 -> 768);
    # two pairs per block, 2 blocks.
    delta_c = 2 * 2 * (conv_bn(384, 768, 3, 3) - conv_bn(384, 384, 1, 3) - conv_bn(384, 384, 3, 1))
    assert delta_a > 0 and delta_b > 0 and delta_c > 0
    assert n_params(on_meta(factorize_a=False)) - base == delta_a
    assert n_params(on_meta(factorize_b=False)) - base == delta_b
    assert n_params(on_meta(factorize_c=False)) - base == delta_c
    # Reduction-B keeps its 1x7/7x1 pair in every variant (the switches touch only Inception-A/B/C).
    undone = dict(factorize_a=False, factorize_b=False, factorize_c=False)
    unfactorized = on_meta(**undone)
    kernels = [m.conv.kernel_size for m in unfactorized.reduction_b[0].branch1]
    assert kernels == [(1, 1), (1, 7), (7, 1), (3, 3)]
    assert n_params(unfactorized) - base == delta_a + delta_b + delta_c
    kernels = {m.kernel_size for m in unfactorized.modules() if isinstance(m, nn.Conv2d)}
    assert {(5, 5), (7, 7), (3, 3)} <= kernels and (1, 3) not in kernels and (3, 1) not in kernels
    small = create_model("inception_v3", num_classes=3, width_mult=0.25, **undone).eval()
    with torch.no_grad():
        assert small(torch.randn(1, 3, 75, 75)).shape == (1, 3)


def test_norm_width_and_channel_knobs():
    bn = InceptionV3(num_classes=7, width_mult=0.25, aux_logits=True)
    plain = create_model("inception_v3", num_classes=7, width_mult=0.25, norm="none", aux_logits=True)
    bn_channels = sum(m.num_features for m in bn.modules() if isinstance(m, nn.BatchNorm2d))
    # Without BN each conv gets a bias (C) instead of gamma and beta (2C).
    assert n_params(plain) == n_params(bn) - bn_channels
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    with torch.no_grad():
        out = plain.eval()(torch.randn(2, 3, 75, 75))
    assert out.shape == (2, 7) and torch.isfinite(out).all()

    half = create_model("inception_v3", num_classes=7, in_chans=1, width_mult=0.5, drop_rate=0.3).eval()
    assert half.num_features == 1024 and half.dropout.p == 0.3
    assert half.stem.conv1a.conv.weight.shape == (16, 1, 3, 3)
    with torch.no_grad():
        assert half(torch.randn(2, 1, 75, 90)).shape == (2, 7)
        assert half.forward_features(torch.randn(1, 1, 75, 75)).shape == (1, 1024, 1, 1)
    headless = create_model("inception_v3", num_classes=0, width_mult=0.25).eval()
    with torch.no_grad():
        assert headless(torch.randn(1, 3, 75, 75)).shape == (1, 512)


def test_backward_on_a_small_input():
    torch.manual_seed(0)
    model = create_model("inception_v3", num_classes=4, width_mult=0.25, aux_logits=True).train()
    x, y = torch.randn(2, 3, 75, 75), torch.tensor([1, 3])
    with pytest.raises(ValueError, match="299x299"):  # the aux head cannot run on 75x75 ...
        model(x)
    model.eval()
    with torch.no_grad():
        assert isinstance(model(x), torch.Tensor)  # ... but in eval it does not run at all
    model = create_model("inception_v3", num_classes=4, width_mult=0.25).train()
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.stem.conv1a.conv.weight.grad.abs().sum() > 0


def test_minimum_input_size_and_bad_inputs():
    model = create_model("inception_v3", num_classes=5, width_mult=0.25).eval()
    assert model.min_input_size == 75 == model_info("inception_v3").min_input_size
    with torch.no_grad():
        assert model(torch.randn(1, 3, 75, 75)).shape == (1, 5)
        with pytest.raises(ValueError, match="at least 75x75"):
            model(torch.randn(1, 3, 74, 90))
        with pytest.raises(ValueError, match="at least 75x75"):
            model(torch.randn(1, 3, 90, 74))
        with pytest.raises(ValueError, match="in_chans=3"):
            model(torch.randn(1, 1, 80, 80))
        with pytest.raises(ValueError, match="4-D"):
            model(torch.randn(3, 80, 80))
    with pytest.raises(ValueError, match="in_chans"):
        create_model("inception_v3", in_chans=1, transform_input=True)
    with pytest.raises(ValueError, match="num_classes"):
        create_model("inception_v3", num_classes=0, aux_logits=True)
    with pytest.raises(ValueError, match="norm"):
        create_model("inception_v3", norm="layer")
    with pytest.raises(TypeError, match="aux_logit"):
        create_model("inception_v3", aux_logit=True)


def test_aux_head_is_the_papers_side_head():
    model = on_meta(aux_logits=True, num_classes=10)
    head = model.aux_head
    assert isinstance(head, InceptionV3AuxClassifier)
    assert head.conv0.conv.kernel_size == (1, 1) and head.conv1.conv.kernel_size == (5, 5)
    assert (head.conv0.out_channels, head.conv1.out_channels, head.fc.out_features) == (128, 768, 10)
    names = list(dict(model.named_children()))
    assert names.index("inception_b") < names.index("aux_head") < names.index("reduction_b")
    # torchvision's init: std 0.001 for the aux classifier, 0.01 for its 5x5 conv, 0.1 for every other layer
    small = create_model("inception_v3", aux_logits=True, num_classes=10, width_mult=0.25)
    stds = [small.aux_head.fc.weight.std(), small.aux_head.conv1.conv.weight.std(), small.fc.weight.std()]
    assert 0.0005 < stds[0] < 0.002 < 0.005 < stds[1] < 0.02 < 0.05 < stds[2] < 0.2


def test_aux_norm_none_strips_bn_from_the_aux_head_only():
    # The head's two convs (128 and 768 wide) trade BN (2 params per channel) for a bias (1 per channel).
    assert n_params(create_model("inception_v3", aux_logits=True, aux_norm="none")) == 27_161_264 - (128 + 768)
    model = create_model("inception_v3", num_classes=10, width_mult=0.0625, aux_logits=True, aux_norm="none")
    assert all(isinstance(b.bn, nn.Identity) for b in (model.aux_head.conv0, model.aux_head.conv1))
    assert isinstance(model.stem[0].bn, nn.BatchNorm2d)

