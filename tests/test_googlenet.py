"""GoogLeNet: exact sizes, parity with torchvision's ``googlenet`` (weights copied by order), knobs, the paper's net."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from inception_models import InceptionOutputs, create_model, model_info
from inception_models.googlenet import AUX_LOSS_WEIGHT, GoogLeNet, GoogLeNetPaper, InceptionModule

from helpers import GOOGLENET_TABLE_1 as TABLE_1
from helpers import calibrate_bn, copy_by_order, macs_and_grids, n_params

REFERENCE_PARAMS = 6_624_904  # torchvision 0.29.1 googlenet(aux_logits=False), shared/REFERENCES.md
REFERENCE_PARAMS_AUX = 13_004_888
REFERENCE_AUX1, REFERENCE_AUX2 = 3_188_968, 3_191_016
REFERENCE_PARAMS_5X5 = 7_005_832
REFERENCE_GMACS, REFERENCE_GMACS_5X5 = 1.498, 1.583


def closed_form_params(*, k5: int, bn: bool, width_mult: float = 1.0, aux: bool = False, classes: int = 1000) -> int:
    """GoogLeNet's parameter count from Table 1 alone: each conv has k*k*c_in*c_out weights plus, per output
    channel, BN's gamma and beta (2) or a bias (1); the classifier has 1024*classes + classes."""
    per_channel = 2 if bn else 1

    def conv(k: int, c_in: int, c_out: int) -> int:
        return k * k * c_in * c_out + per_channel * c_out

    def w(c: int) -> int:
        return max(1, round(c * width_mult))

    total = conv(7, 3, w(64)) + conv(1, w(64), w(64)) + conv(3, w(64), w(192))
    c_in = w(192)
    taps = []
    for _, widths in TABLE_1:
        a, b, c, d, e, f = (w(x) for x in widths)
        total += conv(1, c_in, a) + conv(1, c_in, b) + conv(3, b, c) + conv(1, c_in, d) + conv(k5, d, e)
        total += conv(1, c_in, f)
        c_in = a + c + e + f
        taps.append(c_in)
    total += c_in * classes + classes
    if aux:  # after (4a) and (4d): 1x1 conv 128, FC 128*4*4 -> 1024, FC 1024 -> classes
        for tap in (taps[2], taps[5]):
            total += conv(1, tap, w(128)) + w(128) * 16 * w(1024) + w(1024) + w(1024) * classes + classes
    return total


@pytest.fixture(scope="module")
def aux_pair() -> tuple[GoogLeNet, nn.Module]:
    """torchvision's googlenet with aux heads and random BN, and ours with its values copied by order (eval)."""
    torch.manual_seed(0)
    reference = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=True)
    calibrate_bn(reference, torch.randn(4, 3, 64, 64), whole_model=True)
    ours = create_model("googlenet", aux_logits=True).eval()
    copy_by_order(ours, reference)
    return ours, reference


# --------------------------------------------------------------------------------------------- googlenet
def test_exact_parameter_counts_match_torchvision_and_closed_form():
    plain = create_model("googlenet")
    assert n_params(plain) == REFERENCE_PARAMS == closed_form_params(k5=3, bn=True)
    assert model_info("googlenet").reference_params == REFERENCE_PARAMS
    assert model_info("googlenet").reference_gmacs == REFERENCE_GMACS
    with_aux = create_model("googlenet", aux_logits=True)
    assert n_params(with_aux) == REFERENCE_PARAMS_AUX == closed_form_params(k5=3, bn=True, aux=True)
    assert (n_params(with_aux.aux1), n_params(with_aux.aux2)) == (REFERENCE_AUX1, REFERENCE_AUX2)
    assert plain.aux1 is None and plain.aux2 is None


def test_ordered_shapes_and_keys_equal_torchvision(aux_pair):
    reference = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=True)
    without_aux = (create_model("googlenet"), reference)
    for ours, reference in (aux_pair, without_aux):
        assert [p.shape for p in ours.parameters()] == [p.shape for p in reference.parameters()]
        assert [t.shape for t in ours.state_dict().values()] == [t.shape for t in reference.state_dict().values()]
        # Even the key names are torchvision's, so a plain load_state_dict works too.
        assert list(ours.state_dict()) == list(reference.state_dict())
    # 59 conv + BN (6 entries each: weight, gamma, beta, mean, var, count), 2 x 2 aux FCs, the classifier.
    assert len(aux_pair[0].state_dict()) == 59 * 6 + 8 + 2 == 364


def test_eval_logits_equal_torchvision_after_copy_by_order(aux_pair):
    ours, reference = aux_pair
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits, ref_logits = ours(x), reference(x)
        features = ours.forward_features(x)
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 1000)
    assert features.shape == (2, 1024, 3, 3)
    assert (logits[0] - logits[1]).abs().max() > 0.1  # the output depends on the input
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)


def test_training_outputs_equal_torchvision_aux_heads_included(aux_pair):
    ours, reference = aux_pair
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    saved = [{k: v.clone() for k, v in m.state_dict().items()} for m in (ours, reference)]
    ours.train(), reference.train()
    try:
        torch.manual_seed(3)  # the same dropout masks: both draw them in the same order (aux1, aux2, main)
        out = ours(x)
        torch.manual_seed(3)
        ref = reference(x)
    finally:
        for m, state in zip((ours, reference), saved):  # the train-mode pass moved the BN statistics
            m.load_state_dict(state)
            m.eval()
    assert isinstance(out, InceptionOutputs)
    aux1, aux2 = out.aux_logits
    assert out.logits.shape == aux1.shape == aux2.shape == (4, 1000)
    torch.testing.assert_close(out.logits, ref.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(aux1, ref.aux_logits1, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(aux2, ref.aux_logits2, atol=1e-5, rtol=1e-5)


def test_transform_input_equals_torchvision():
    torch.manual_seed(0)
    reference = torchvision.models.googlenet(weights=None, aux_logits=False, transform_input=True, init_weights=True)
    calibrate_bn(reference, torch.randn(4, 3, 48, 48), whole_model=True)
    ours = create_model("googlenet", transform_input=True).eval()
    copy_by_order(ours, reference)
    x = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), atol=1e-5, rtol=1e-5)
        plain = create_model("googlenet").eval()
        copy_by_order(plain, reference)
        assert (plain(x) - ours(x)).abs().max() > 1e-3  # the remap is not a no-op
    with pytest.raises(ValueError, match="transform_input"):
        create_model("googlenet", transform_input=True, in_chans=1)


def test_native_size_macs_grids_and_features():
    model = create_model("googlenet").eval()
    names = ("maxpool2", "inception3b", "inception4a", "inception4e", "inception5b", "fc")
    macs, grids, _ = macs_and_grids(model, torch.randn(1, 3, 224, 224), names)
    assert round(macs / 1e9, 3) == REFERENCE_GMACS
    assert grids == {
        "maxpool2": (192, 28, 28),
        "inception3b": (480, 28, 28),
        "inception4a": (512, 14, 14),
        "inception4e": (832, 14, 14),
        "inception5b": (1024, 7, 7),  # what forward_features returns
        "fc": (1000,),
    }
    assert model.num_features == 1024


def test_real_5x5_branch_adds_exactly_16_weights_per_channel_pair():
    base, five = create_model("googlenet"), create_model("googlenet", branch5x5_kernel=5)
    # Each module's "5x5" conv goes from 3x3 to 5x5: (25 - 9) * c_in * c_out more weights, BN unchanged.
    pairs = sum(widths[3] * widths[4] for _, widths in TABLE_1)
    assert pairs == 23_808
    assert n_params(five) - n_params(base) == (25 - 9) * pairs == 380_928
    assert n_params(five) == REFERENCE_PARAMS_5X5
    assert five.inception3a.branch3[1].conv.kernel_size == (5, 5)
    assert base.inception3a.branch3[1].conv.kernel_size == (3, 3)
    macs, grids, _ = macs_and_grids(five.eval(), torch.randn(1, 3, 224, 224), ("inception5b",))
    assert round(macs / 1e9, 3) == REFERENCE_GMACS_5X5 and grids["inception5b"] == (1024, 7, 7)
    with pytest.raises(ValueError, match="branch5x5_kernel"):
        create_model("googlenet", branch5x5_kernel=4)


def test_norm_width_and_class_knobs_follow_the_closed_form():
    bn = create_model("googlenet", num_classes=10, width_mult=0.5)
    plain = create_model("googlenet", num_classes=10, width_mult=0.5, norm="none")
    assert n_params(bn) == closed_form_params(k5=3, bn=True, width_mult=0.5, classes=10)
    assert n_params(plain) == closed_form_params(k5=3, bn=False, width_mult=0.5, classes=10)
    bn_channels = sum(m.num_features for m in bn.modules() if isinstance(m, nn.BatchNorm2d))
    assert n_params(bn) - n_params(plain) == bn_channels  # gamma + beta (2C) replaced by a conv bias (C)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    assert all(m.bias is not None for m in plain.modules() if isinstance(m, nn.Conv2d))
    assert all(m.bias is None for m in bn.modules() if isinstance(m, nn.Conv2d))
    assert all(m.eps == 1e-3 for m in bn.modules() if isinstance(m, nn.BatchNorm2d))
    assert bn.num_features == 512 and bn.dropout.p == 0.2
    wide = create_model("googlenet", num_classes=7, width_mult=1.5, aux_logits=True, drop_rate=0.5)
    assert n_params(wide) == closed_form_params(k5=3, bn=True, width_mult=1.5, aux=True, classes=7)
    assert wide.dropout.p == 0.5 and wide.aux1.dropout.p == 0.7
    gray = create_model("googlenet", in_chans=1, num_classes=3).eval()
    assert gray.conv1.conv.weight.shape == (64, 1, 7, 7)
    headless = create_model("googlenet", num_classes=0).eval()
    with torch.no_grad():
        assert gray(torch.randn(1, 1, 32, 32)).shape == (1, 3)
        assert headless(torch.randn(1, 3, 32, 32)).shape == (1, 1024)
    with pytest.raises(ValueError, match="aux_logits"):
        create_model("googlenet", num_classes=0, aux_logits=True)
    with pytest.raises(ValueError, match="norm"):
        create_model("googlenet", norm="ln")


def test_minimum_input_size_is_15_and_tight():
    model = create_model("googlenet", num_classes=5, width_mult=0.25).eval()
    assert model.min_input_size == 15 == model_info("googlenet").min_input_size
    with torch.no_grad():
        assert model(torch.randn(1, 3, 15, 15)).shape == (1, 5)
        assert model.forward_features(torch.randn(1, 3, 15, 15)).shape == (1, 256, 1, 1)
        with pytest.raises(ValueError, match="at least 15x15"):
            model(torch.randn(1, 3, 14, 40))
        model.min_input_size = 1  # without our check torch itself fails at 14: the minimum is tight
        with pytest.raises(RuntimeError):
            model(torch.randn(1, 3, 14, 14))


def test_bad_inputs_are_named():
    model = create_model("googlenet", num_classes=5, width_mult=0.25).eval()
    with pytest.raises(ValueError, match="in_chans=3"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="4-D"):
        model(torch.randn(3, 32, 32))
    with pytest.raises(TypeError, match="no_such"):
        create_model("googlenet", no_such=1)


def test_training_returns_both_aux_heads_and_backward_reaches_everything():
    torch.manual_seed(0)
    model = create_model("googlenet", num_classes=4, aux_logits=True, width_mult=0.25).train()
    x, y = torch.randn(2, 3, 64, 64), torch.tensor([1, 3])
    out = model(x)
    assert isinstance(out, InceptionOutputs) and isinstance(out.aux_logits, tuple) and len(out.aux_logits) == 2
    assert all(t.shape == (2, 4) for t in (out.logits, *out.aux_logits))
    ce = nn.functional.cross_entropy
    loss = ce(out.logits, y) + AUX_LOSS_WEIGHT * sum(ce(a, y) for a in out.aux_logits)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert model.aux1.fc1.weight.grad.abs().sum() > 0 and model.conv1.conv.weight.grad.abs().sum() > 0
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    convs_and_hidden_fcs = sum(isinstance(m, nn.Conv2d) for m in model.modules()) + 2
    assert len(relus) == convs_and_hidden_fcs  # every activation is a module, so hooks see it
    model.eval()
    with torch.no_grad():
        assert isinstance(model(x), torch.Tensor)


# ---------------------------------------------------------------------------------------- googlenet_paper
def test_paper_parameter_count_is_the_hand_derived_one():
    """Closed form of Table 1 with real 5x5 branches and conv biases (no BN):

    weights: stem 7*7*3*64 + 64*64 + 3*3*64*192 = 124,096; the nine modules
    sum(c_in*(#1x1 + #3x3red + #5x5red + pool) + 9*#3x3red*#3x3 + 25*#5x5red*#5x5) = 5,842,176;
    classifier 1024*1000 = 1,024,000: 6,990,272 weights. Biases: one per conv output channel (7,280) and
    1,000 for the classifier: 8,280. Total 6,998,552.

    Table 1's params column (in units of 1024) sums to 6,797.7K = 6,960,845, "about 6.8M": within 0.5% of our
    weights, the gap being its typos (conv 7x7 "2.7K" for 9.2K, 4c "463K" for 497.5K, 5a "1072K" for 1018K).
    Each aux head adds a 1x1 conv (c_in*128 + 128), FC 2048->1024 (2,098,176) and FC 1024->1000 (1,025,000):
    3,188,840 after (4a) (c_in 512) and 3,190,888 after (4d) (c_in 528).
    """
    weights = 124_096 + 5_842_176 + 1_024_000
    assert weights == 6_990_272
    biases = (64 + 64 + 192) + sum(sum(w) for _, w in TABLE_1) + 1000
    assert biases == 8_280
    no_aux = create_model("googlenet_paper", aux_logits=False)
    assert n_params(no_aux) == weights + biases == 6_998_552 == closed_form_params(k5=5, bn=False)
    table_1_column = [2.7, 112, 159, 380, 364, 437, 463, 580, 840, 1072, 1388, 1000]  # K params, 1 K = 1024
    assert abs(sum(table_1_column) * 1024 / weights - 1) < 0.005
    model = create_model("googlenet_paper")
    assert (n_params(model.aux1), n_params(model.aux2)) == (3_188_840, 3_190_888)
    assert n_params(model) == 6_998_552 + 3_188_840 + 3_190_888 == 13_378_280


def test_paper_structure_differs_from_torchvision_where_documented():
    model = create_model("googlenet_paper", num_classes=10, width_mult=0.25)
    assert isinstance(model, GoogLeNetPaper) and model.aux_logits
    assert GoogLeNetPaper.AUX_LOSS_WEIGHT == AUX_LOSS_WEIGHT == 0.3
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert all(m.bias is not None for m in model.modules() if isinstance(m, nn.Conv2d))
    lrns = [m for m in model.modules() if isinstance(m, nn.LocalResponseNorm)]
    assert len(lrns) == 2 and model.norm1 is lrns[0] and model.norm2 is lrns[1]
    assert lrns[0].size == 5 and lrns[0].alpha == 1e-4 and lrns[0].beta == 0.75
    assert model.maxpool4.kernel_size == 3 and create_model("googlenet").maxpool4.kernel_size == 2
    assert model.dropout.p == 0.4 and model.aux1.dropout.p == 0.7
    aux_pool = model.aux1.pool[0]
    assert isinstance(aux_pool, nn.AvgPool2d) and (aux_pool.kernel_size, aux_pool.stride) == (5, 3)
    assert all(isinstance(b, InceptionModule) and b.branch3[1].conv.kernel_size == (5, 5)
               for b in model.children() if isinstance(b, InceptionModule))
    assert not any(isinstance(m, nn.LocalResponseNorm) for m in create_model("googlenet_paper", lrn=False).modules())
    bn = create_model("googlenet_paper", norm="bn", aux_logits=False)
    assert n_params(bn) == closed_form_params(k5=5, bn=True) == REFERENCE_PARAMS_5X5  # BN: the torchvision 5x5 fix
    assert model_info("googlenet_paper").reference_gmacs == 1.5


def test_paper_forward_at_224_runs_aux_heads_on_a_4x4_grid():
    torch.manual_seed(0)
    model = create_model("googlenet_paper", num_classes=10, width_mult=0.25).train()
    seen: dict[str, tuple[int, ...]] = {}
    hooks = [
        model.aux1.pool[0].register_forward_hook(lambda _m, _i, o: seen.__setitem__("aux1_pool", tuple(o.shape))),
        model.aux2.pool[0].register_forward_hook(lambda _m, _i, o: seen.__setitem__("aux2_pool", tuple(o.shape))),
        model.maxpool4.register_forward_hook(lambda _m, _i, o: seen.__setitem__("maxpool4", tuple(o.shape))),
    ]
    out = model(torch.randn(2, 3, 224, 224))
    assert isinstance(out, InceptionOutputs) and out.logits.shape == (2, 10)
    assert [a.shape for a in out.aux_logits] == [(2, 10), (2, 10)]
    # The paper's 5x5/3 pool itself gives 4x4 at 224 (the adaptive pool after it changes nothing there).
    assert seen == {"aux1_pool": (2, 128, 4, 4), "aux2_pool": (2, 132, 4, 4), "maxpool4": (2, 208, 7, 7)}
    seen.clear()
    model.eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 224, 224))
    assert logits.shape == (1, 10) and "aux1_pool" not in seen  # aux heads run in training only
    for h in hooks:
        h.remove()


def test_paper_minimum_sizes_and_backward():
    torch.manual_seed(0)
    model = create_model("googlenet_paper", num_classes=3, width_mult=0.25).train()
    assert model.min_input_size == 47 == model_info("googlenet_paper").min_input_size
    y = torch.tensor([0, 2])
    out = model(torch.randn(2, 3, 47, 47))
    loss = nn.functional.cross_entropy(out.logits, y)
    loss = loss + model.AUX_LOSS_WEIGHT * sum(nn.functional.cross_entropy(a, y) for a in out.aux_logits)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    with pytest.raises(ValueError, match="at least 47x47"):
        model(torch.randn(2, 3, 46, 46))
    no_aux = create_model("googlenet_paper", num_classes=3, width_mult=0.25, aux_logits=False).eval()
    assert no_aux.min_input_size == 31
    with torch.no_grad():
        assert no_aux(torch.randn(1, 3, 31, 31)).shape == (1, 3)
        with pytest.raises(ValueError, match="at least 31x31"):
            no_aux(torch.randn(1, 3, 30, 30))
        no_aux.min_input_size = 1
        with pytest.raises(RuntimeError):
            no_aux(torch.randn(1, 3, 30, 30))


def test_aux_norm_sets_the_heads_normalisation_apart_from_the_body():
    counts = {norm: n_params(create_model("googlenet", aux_logits=True, aux_norm=norm)) for norm in (None, "none", "bn")}
    # "none": each head's 1x1 conv trades its BN (2 x 128) for a bias (128); "bn": BatchNorm1d(1024) after fc1.
    assert counts == {None: 13_004_888, "none": 13_004_888 - 2 * 128, "bn": 13_004_888 + 2 * 2 * 1024}
    # The paper's net has no BN in the body: "bn" gives the heads alone BN (conv bias dropped) and the FC's BN.
    assert n_params(create_model("googlenet_paper", aux_norm="bn")) == 13_378_280 + 2 * (128 + 2 * 1024)
    model = create_model("googlenet", num_classes=10, width_mult=0.0625, aux_logits=True, aux_norm="bn")
    assert isinstance(model.conv1.bn, nn.BatchNorm2d)
    for head in (model.aux1, model.aux2):
        assert isinstance(head.conv.bn, nn.BatchNorm2d) and isinstance(head.fc1_norm, nn.BatchNorm1d)
    out = model.train()(torch.randn(4, 3, 32, 32))
    assert out.logits.shape == (4, 10) and [a.shape for a in out.aux_logits] == [(4, 10), (4, 10)]
    plain = create_model("googlenet", num_classes=10, width_mult=0.0625, aux_logits=True, aux_norm="none")
    assert isinstance(plain.aux1.conv.bn, nn.Identity) and plain.aux1.conv.conv.bias is not None
    assert isinstance(plain.conv1.bn, nn.BatchNorm2d)  # the body keeps its BN
    with pytest.raises(ValueError, match="knob aux_norm takes 'bn' or 'none' or None, got 'ln'"):  # issue 20.7
        create_model("googlenet", aux_norm="ln")

