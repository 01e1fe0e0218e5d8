"""small_inception (Zhang et al. 2017, Fig. 3): exact sizes against the paper, grids, knobs, and that it learns."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from inception_models import create_model, model_info
from inception_models.small_inception import (
    MIN_INPUT_SIZE,
    PAPER_PARAMS,
    DownsampleModule,
    SmallInceptionModule,
    stage_grid_sizes,
)

from helpers import n_params
from helpers import small_inception_params as closed_form_params

PARAMS_BN = 1_651_114  # counted; = Zhang et al.'s 1,649,402 + 1,712 BN scales (their BN has no gamma)
BN_CHANNELS = 1_712


pytestmark = pytest.mark.usefixtures("one_thread")


def test_parameter_count_matches_the_paper() -> None:
    bn = create_model("small_inception")
    plain = create_model("small_inception", norm="none")
    assert n_params(bn) == PARAMS_BN == closed_form_params(bn=True)
    # The paper counts BN with a shift only: exactly one value per channel, as the biases of norm="none".
    assert PARAMS_BN - PAPER_PARAMS == BN_CHANNELS
    assert sum(m.num_features for m in bn.modules() if isinstance(m, nn.BatchNorm2d)) == BN_CHANNELS
    assert n_params(plain) == PAPER_PARAMS == 1_649_402 == closed_form_params(bn=False)
    info = model_info("small_inception")
    assert (info.year, info.input_size, info.min_input_size, info.reference_params) == (2017, 32, 1, PAPER_PARAMS)
    assert "rethinking generalization" in info.paper


def test_figure_3_layout_and_grids() -> None:
    model = create_model("small_inception").eval()
    inception = [m for m in model.modules() if isinstance(m, SmallInceptionModule)]
    downsample = [m for m in model.modules() if isinstance(m, DownsampleModule)]
    assert [m.out_channels for m in inception] == [64, 80, 160, 160, 160, 144, 336, 336]
    assert [m.out_channels for m in downsample] == [160, 240]
    assert model.stem.conv.kernel_size == (3, 3) and model.stem.out_channels == 96
    assert model.stem.bn.eps == 1e-3 and model.stem.conv.bias is None

    grids: list[int] = []
    hooks = [m.register_forward_hook(lambda _m, inp, _o: grids.append(inp[0].shape[-1])) for m in inception]
    with torch.no_grad():
        features = model.forward_features(torch.randn(2, 3, 32, 32))
    for h in hooks:
        h.remove()
    assert grids == [32, 32, 16, 16, 16, 16, 8, 8]
    assert stage_grid_sizes(32) == (32, 16, 8)
    assert stage_grid_sizes(28) == (28, 14, 7)  # the paper's 28x28 crops: its "mean pooling 7x7"
    assert stage_grid_sizes(299) == (299, 150, 75)
    assert features.shape == (2, 336, 8, 8)


@pytest.mark.parametrize("size, grid", [(32, 8), (28, 7), (MIN_INPUT_SIZE, 1), (2, 1), (5, 2), (64, 16)])
def test_forward_shapes(size: int, grid: int) -> None:
    model = create_model("small_inception", num_classes=7).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert model.forward_features(x).shape == (2, 336, grid, grid)
        assert model(x).shape == (2, 7)


def test_bad_input_is_a_clear_error() -> None:
    model = create_model("small_inception")
    with pytest.raises(ValueError, match="in_chans=3"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="4-D"):
        model(torch.randn(3, 32, 32))
    with pytest.raises(TypeError, match="factorize_grids"):
        create_model("small_inception", factorize_grids=(16,))


def test_norm_none_has_no_bn_and_glorot_init() -> None:
    torch.manual_seed(0)
    model = create_model("small_inception", norm="none")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 + 8 * 2 + 2
    for m in convs + [model.fc]:
        w = m.weight
        fan_in = w.shape[1] * w[0, 0].numel()
        fan_out = w.shape[0] * w[0, 0].numel()
        bound = math.sqrt(6.0 / (fan_in + fan_out))  # xavier_uniform_, gain 1
        assert float(w.detach().abs().max()) <= bound
        if w.numel() > 2000:
            assert float(w.detach().std()) == pytest.approx(bound / math.sqrt(3), rel=0.05)
        assert m.bias is not None and float(m.bias.detach().abs().max()) == 0.0
    with pytest.raises(ValueError, match="norm"):
        create_model("small_inception", norm="ln")


@pytest.mark.parametrize("width_mult", [0.5, 0.25, 1.5])
def test_width_mult(width_mult: float) -> None:
    model = create_model("small_inception", width_mult=width_mult).eval()
    assert n_params(model) == closed_form_params(width_mult=width_mult)
    assert model.num_features == round(176 * width_mult) + round(160 * width_mult)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("stages", [(0,), (1,), (2,), (0, 1, 2)])
def test_factorize_stages(stages: tuple[int, ...]) -> None:
    model = create_model("small_inception", factorize_stages=stages).eval()
    assert n_params(model) == closed_form_params(factorize_stages=stages) < PARAMS_BN
    for stage in range(3):
        for block in getattr(model, f"stage{stage}"):
            kernels = [layer.conv.kernel_size for layer in block.branch3x3]
            assert kernels == ([(1, 3), (3, 1)] if stage in stages else [(3, 3)])
            assert block.factorized == (stage in stages)
    assert model.downsample0.branch3x3.conv.kernel_size == (3, 3)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("kernel, stages", [(5, ()), (5, (0,)), (7, (1,)), (7, (2,))])
def test_branch_kernel(kernel: int, stages: tuple[int, ...]) -> None:
    model = create_model("small_inception", width_mult=0.25, branch_kernel=kernel, factorize_stages=stages).eval()
    assert n_params(model) == closed_form_params(width_mult=0.25, branch_kernel=kernel, factorize_stages=stages)
    # Stage 0's first module at width 0.25 (c_in = 24 from the stem, 8-wide spatial branch): n x n costs
    # n^2 * 24 * 8 weights, 1 x n then n x 1 costs n * 8 * (24 + 8); BN adds 2 per output channel of each conv.
    branch = model.stage0[0].branch3x3
    expected = kernel * 8 * (24 + 8) + 2 * 16 if 0 in stages else kernel**2 * 24 * 8 + 2 * 8
    assert n_params(branch) == expected
    for stage in range(3):
        for block in getattr(model, f"stage{stage}"):
            kernels = [layer.conv.kernel_size for layer in block.branch3x3]
            assert kernels == ([(1, kernel), (kernel, 1)] if stage in stages else [(kernel, kernel)])
            assert block.kernel == kernel
    assert model.downsample0.branch3x3.conv.kernel_size == (3, 3)  # Downsample modules stay 3x3
    with torch.no_grad():
        for size in (32, 7):  # "same" padding keeps every grid, down to a 2x2 last stage
            assert model.forward_features(torch.randn(2, 3, size, size)).shape[-1] == stage_grid_sizes(size)[2]


def test_branch_kernel_default_is_the_paper_network() -> None:
    assert n_params(create_model("small_inception", branch_kernel=3)) == PARAMS_BN
    for bad in (4, 1):
        with pytest.raises(ValueError, match="branch_kernel must be an odd int"):
            create_model("small_inception", branch_kernel=bad)
    for bad in (3.0, True):  # the knob's type is checked first, naming the knob and the type it takes
        with pytest.raises(TypeError, match="knob branch_kernel takes int"):
            create_model("small_inception", branch_kernel=bad)


def test_factorize_stages_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="unknown stage"):
        create_model("small_inception", factorize_stages=(3,))
    with pytest.raises(TypeError, match=r"knob factorize_stages takes tuple\[int, \.\.\.\], got 1 \(int\)"):  # issue 20.7
        create_model("small_inception", factorize_stages=1)


def test_drop_rate_and_num_classes_zero() -> None:
    model = create_model("small_inception", drop_rate=0.5, num_classes=0).eval()
    assert model.dropout.p == 0.5
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 336)


@pytest.mark.parametrize("norm", ["bn", "none"])
def test_backward_reaches_every_parameter(norm: str) -> None:
    torch.manual_seed(0)
    model = create_model("small_inception", norm=norm, width_mult=0.25, factorize_stages=(1,))
    loss = F.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    assert all(float(p.grad.abs().sum()) > 0 for p in model.parameters())


def test_short_training_run_lowers_the_loss(norm: str = "bn", lr: float = 0.01) -> None:
    """100 SGD steps on the synthetic shapes (a quarter-width net, batch 32): the loss falls."""
    from analysis.data.synthetic import make_synthetic
    from analysis.training.sampling import make_loader

    torch.manual_seed(0)
    data = make_synthetic("train", 1600, 32, seed=1)
    model = create_model("small_inception", norm=norm, width_mult=0.25)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    losses = []
    for epoch in range(2):
        loader = make_loader(data, 32, shuffle=True, seed=0, epoch=epoch)
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    assert len(losses) == 100
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert first == pytest.approx(math.log(10), abs=0.3)
    assert last < first - 0.1, (first, last)
