"""BN-Inception: the Caffe port's exact size and layout (from the paper's Fig. 5), grids, knobs, odd grids."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from inception_models import create_model, model_info
from inception_models.bn_inception import BNInception, BNInceptionModule, BNInceptionReduction

from helpers import macs_and_grids, n_params

REFERENCE_PARAMS = 11_295_240  # Cadene's pretrainedmodels bninception, shared/REFERENCES.md
REFERENCE_GMACS = 2.033

# The paper's Fig. 5, written out here independently of the model's table. Inception modules:
# (#1x1, #3x3 reduce, #3x3, double #3x3 reduce, double #3x3, pool proj); stride-2 modules (3c), (4e):
# (#3x3 reduce, #3x3, double #3x3 reduce, double #3x3), their max pool passing its input through.
FIG_5 = (
    ("inception3a", (64, 64, 64, 64, 96, 32)),
    ("inception3b", (64, 64, 96, 64, 96, 64)),
    ("inception3c", (128, 160, 64, 96)),
    ("inception4a", (224, 64, 96, 96, 128, 128)),
    ("inception4b", (192, 96, 128, 96, 128, 128)),
    ("inception4c", (160, 128, 160, 128, 160, 128)),
    ("inception4d", (96, 128, 192, 160, 192, 128)),
    ("inception4e", (128, 192, 192, 256)),
    ("inception5a", (352, 192, 320, 160, 224, 128)),
    ("inception5b", (352, 192, 320, 192, 224, 128)),
)


def port_convs(width_mult: float = 1.0) -> tuple[list[tuple[int, int, int]], int]:
    """(c_in, c_out, k) of every conv in the Caffe port's order (stem, then per module 1x1, 3x3 reduce, 3x3,
    double 3x3 reduce, double 3x3 twice, pool proj) and the width of the final feature map."""
    def w(c: int) -> int:
        return max(1, round(c * width_mult))

    convs = [(3, w(64), 7), (w(64), w(64), 1), (w(64), w(192), 3)]
    c = w(192)
    for _, row in FIG_5:
        if len(row) == 4:
            b, d, e, f = (w(x) for x in row)
            convs += [(c, b, 1), (b, d, 3), (c, e, 1), (e, f, 3), (f, f, 3)]
            c = d + f + c
        else:
            a, b, d, e, f, p = (w(x) for x in row)
            convs += [(c, a, 1), (c, b, 1), (b, d, 3), (c, e, 1), (e, f, 3), (f, f, 3), (c, p, 1)]
            c = a + d + f + p
    return convs, c


def closed_form_params(*, bn: bool = True, width_mult: float = 1.0, classes: int = 1000) -> int:
    """Each conv: k*k*c_in*c_out weights + bias (c_out) + BN gamma and beta (2 c_out); classifier 1024 -> classes."""
    convs, features = port_convs(width_mult)
    per_channel = 3 if bn else 1
    return sum(k * k * ci * co + per_channel * co for ci, co, k in convs) + features * classes + classes


def test_exact_parameter_count_is_the_caffe_ports():
    model = create_model("bn_inception")
    assert n_params(model) == REFERENCE_PARAMS == closed_form_params()
    info = model_info("bn_inception")
    assert (info.reference_params, info.reference_gmacs) == (REFERENCE_PARAMS, REFERENCE_GMACS)
    assert info.year == 2015 and info.input_size == 224


def test_ordered_state_dict_is_the_caffe_ports_layout():
    """Conv weight and bias, then BN gamma, beta, mean, var, count; the 69 convs in the port's order; the FC."""
    model = create_model("bn_inception")
    expected: list[tuple[int, ...]] = []
    convs, features = port_convs()
    assert features == 1024
    for ci, co, k in convs:
        expected += [(co, ci, k, k), (co,), (co,), (co,), (co,), (co,), ()]
    expected += [(1000, 1024), (1000,)]
    assert [tuple(t.shape) for t in model.state_dict().values()] == expected
    assert len(expected) == 69 * 7 + 2 == 485
    params = [(co, ci, k, k) for ci, co, k in convs]
    assert [tuple(p.shape) for p in model.parameters() if p.dim() == 4] == params
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 69 and all(b.eps == 1e-5 for b in bns)
    assert all(m.bias is not None for m in model.modules() if isinstance(m, nn.Conv2d))


def test_native_size_macs_grids_and_features():
    model = create_model("bn_inception").eval()
    x = torch.randn(1, 3, 224, 224)
    macs, grids, logits = macs_and_grids(model, x, [name for name, _ in FIG_5])
    with torch.no_grad():
        features = model.forward_features(x)
    assert logits.shape == (1, 1000) and features.shape == (1, 1024, 7, 7)
    assert round(macs / 1e9, 3) == REFERENCE_GMACS
    # The branch widths, not the table's output column: 608 at (4c)/(4d), 1056 after (4e).
    assert grids == {
        "inception3a": (256, 28, 28),
        "inception3b": (320, 28, 28),
        "inception3c": (576, 14, 14),
        "inception4a": (576, 14, 14),
        "inception4b": (576, 14, 14),
        "inception4c": (608, 14, 14),
        "inception4d": (608, 14, 14),
        "inception4e": (1056, 7, 7),
        "inception5a": (1024, 7, 7),
        "inception5b": (1024, 7, 7),
    }


def test_paper_table_widths_follow_the_output_column():
    base, table = create_model("bn_inception"), create_model("bn_inception", paper_table_widths=True)
    assert [getattr(table, n).out_channels for n in ("inception4c", "inception4d", "inception4e")] == [576, 576, 1024]
    assert table.inception4c.branch_pool[1].out_channels == table.inception4d.branch_pool[1].out_channels == 96
    # (4c), (4d): pool proj 128 -> 96, 32 fewer output channels with weights, bias and BN (576 + 3 each);
    # (4d) then takes 576 inputs not 608 in its four 1x1 convs (96 + 128 + 160 + 128 outputs); (4e) in its
    # two 1x1 convs (128 + 192); (5a) takes 1024 not 1056 in its four 1x1 convs (352 + 192 + 160 + 128).
    delta = 2 * 32 * (576 + 3) + 32 * (96 + 128 + 160 + 128) + 32 * (128 + 192) + 32 * (352 + 192 + 160 + 128)
    assert n_params(base) - n_params(table) == delta == 90_304
    with torch.no_grad():
        assert table.eval().forward_features(torch.randn(1, 3, 64, 64)).shape == (1, 1024, 2, 2)


def test_norm_width_drop_and_channel_knobs():
    bn = create_model("bn_inception", num_classes=10, width_mult=0.5)
    plain = create_model("bn_inception", num_classes=10, width_mult=0.5, norm="none")
    assert n_params(bn) == closed_form_params(width_mult=0.5, classes=10)
    assert n_params(plain) == closed_form_params(bn=False, width_mult=0.5, classes=10)
    bn_channels = sum(m.num_features for m in bn.modules() if isinstance(m, nn.BatchNorm2d))
    assert n_params(bn) - n_params(plain) == 2 * bn_channels  # the convs keep their bias, BN goes
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    assert bn.num_features == 512 and bn.dropout.p == 0.0  # the paper removes dropout (sec. 4.2.1)
    gray = create_model("bn_inception", in_chans=1, num_classes=3, drop_rate=0.5, width_mult=0.25).eval()
    assert gray.conv1.conv.weight.shape == (16, 1, 7, 7) and gray.dropout.p == 0.5
    headless = create_model("bn_inception", num_classes=0, width_mult=0.25).eval()
    with torch.no_grad():
        assert gray(torch.randn(2, 1, 40, 40)).shape == (2, 3)
        assert headless(torch.randn(1, 3, 40, 40)).shape == (1, 256)
    with pytest.raises(ValueError, match="norm"):
        create_model("bn_inception", norm="gn")
    with pytest.raises(TypeError, match="aux_logits"):
        create_model("bn_inception", aux_logits=True)


def test_blocks_and_pools_are_caffes():
    model = create_model("bn_inception", width_mult=0.25)
    kinds = [type(getattr(model, n)) for n, _ in FIG_5]
    assert kinds.count(BNInceptionReduction) == 2 and kinds.count(BNInceptionModule) == 8
    pools = [getattr(model, n).branch_pool[0] for n, row in FIG_5 if len(row) == 6]
    assert [type(p).__name__ for p in pools] == ["AvgPool2d"] * 7 + ["MaxPool2d"]  # (5b) max-pools
    assert all(p.count_include_pad and p.ceil_mode for p in pools[:-1])
    assert model.inception3c.branch3x3[1].conv.stride == (2, 2)
    assert model.inception3c.branch3x3dbl[2].conv.stride == (2, 2)


def test_stride2_module_matches_caffe_on_even_grids_and_still_runs_on_odd_ones():
    torch.manual_seed(0)
    block = BNInceptionReduction(8, 4, 6, 4, 6).eval()
    even = torch.randn(1, 8, 10, 10)
    with torch.no_grad():
        out = block(even)
    assert out.shape == (1, 6 + 6 + 8, 5, 5)
    torch.testing.assert_close(out[:, 12:], F.max_pool2d(even, 3, 2, ceil_mode=True))  # Caffe's ceil-mode pool
    odd = torch.randn(1, 8, 9, 11)
    # Caffe's pool gives 4x5 here but the stride-2 convs give 5x6: the port cannot concatenate them.
    assert F.max_pool2d(odd, 3, 2, ceil_mode=True).shape[-2:] == (4, 5)
    with torch.no_grad():
        out = block(odd)
    assert out.shape == (1, 20, 5, 6)
    # Padding by a row and a column of -inf only adds the last window; the others are Caffe's.
    torch.testing.assert_close(out[:, 12:, :4, :5], F.max_pool2d(odd, 3, 2, ceil_mode=True))
    assert torch.isfinite(out).all()


def test_minimum_input_size_is_7_and_tight():
    model = create_model("bn_inception", num_classes=5, width_mult=0.25).eval()
    assert model.min_input_size == 7 == model_info("bn_inception").min_input_size
    with torch.no_grad():
        assert model(torch.randn(1, 3, 7, 7)).shape == (1, 5)
        assert model(torch.randn(1, 3, 101, 75)).shape == (1, 5)  # odd grids before (3c) and (4e)
        with pytest.raises(ValueError, match="at least 7x7"):
            model(torch.randn(1, 3, 6, 6))
        model.min_input_size = 1  # without our check torch itself fails at 6: the minimum is tight
        with pytest.raises(RuntimeError):
            model(torch.randn(1, 3, 6, 6))
    with pytest.raises(ValueError, match="in_chans=3"):
        model(torch.randn(1, 4, 32, 32))


def test_backward_on_a_small_input():
    torch.manual_seed(0)
    model = create_model("bn_inception", num_classes=4, width_mult=0.25).train()
    x, y = torch.randn(2, 3, 48, 48), torch.tensor([0, 3])
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert model.conv1.conv.weight.grad.abs().sum() > 0
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    assert len(relus) == 69  # one ReLU module per conv, so hooks see every activation
    assert isinstance(model, BNInception)
