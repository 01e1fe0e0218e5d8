"""Inception-ResNet-v1 / -v2: exact sizes, timm parity, the residual block's formula and the ablation knobs."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from inception_models import create_model, model_info
from inception_models.inception_resnet import (
    InceptionResNetA,
    InceptionResNetB,
    InceptionResNetC,
    InceptionResNetReductionA,
    InceptionResNetReductionB,
)
from inception_models.layers import ConvNormAct

from helpers import macs_and_grids, n_params

NAMES = ("inception_resnet_v2", "inception_resnet_v2_paper", "inception_resnet_v1", "inception_resnet_v1_paper")
SMALL = dict(block_counts=(1, 1, 1), width_mult=0.25, num_classes=10)


def conv_linear_gmacs(model: nn.Module, size: int) -> tuple[float, tuple[int, ...]]:
    """MACs of conv and linear layers (the REFERENCES.md convention) and the feature shape, on meta tensors."""
    # final_conv, an identity where a variant has none, outputs the feature map.
    macs, grids, _ = macs_and_grids(model.eval(), torch.empty(1, 3, size, size, device="meta"), ["final_conv"])
    return macs / 1e9, (1, *grids["final_conv"])


@pytest.mark.parametrize(
    "name, params, gmacs, features",
    [
        ("inception_resnet_v2", 55_843_464, 13.156, (1, 1536, 8, 8)),  # timm, shared/REFERENCES.md
        # The paper variants: the references less the blocks they drop (test_paper_variants_are_...).
        ("inception_resnet_v2_paper", 31_128_712, 8.303, (1, 2080, 8, 8)),
        ("inception_resnet_v1", 24_357_096, 6.309, (1, 1792, 8, 8)),  # facenet + classifier, REFERENCES.md
        ("inception_resnet_v1_paper", 22_756_328, 6.206, (1, 1792, 8, 8)),
    ],
)
def test_sizes_macs_and_feature_shapes_at_299(name, params, gmacs, features):
    with torch.device("meta"):  # shapes and counts without the compute
        model = create_model(name)
    assert n_params(model) == params
    measured, shape = conv_linear_gmacs(model, 299)
    assert measured == pytest.approx(gmacs, abs=5e-4)
    assert shape == features
    info = model_info(name)
    if info.reference_params is not None:
        assert info.reference_params == params
        assert info.reference_gmacs == pytest.approx(measured, abs=5e-3)


# One Inception-ResNet block: (width of the residual stream, branches as ((kh, kw), width) conv-BN-ReLU layers).
# The released v2's widths (TF-slim, timm; the paper's Figs. 16, 17, 19) and facenet's v1 8x8 block (Fig. 13).
V2_A = (320, (((1, 1), 32),), (((1, 1), 32), ((3, 3), 32)), (((1, 1), 32), ((3, 3), 48), ((3, 3), 64)))
V2_B = (1088, (((1, 1), 192),), (((1, 1), 128), ((1, 7), 160), ((7, 1), 192)))
V2_C = (2080, (((1, 1), 192),), (((1, 1), 192), ((1, 3), 224), ((3, 1), 256)))
V1_C = (1792, (((1, 1), 192),), (((1, 1), 192), ((1, 3), 192), ((3, 1), 192)))


def residual_block(stream: int, *branches) -> tuple[int, int]:
    """(parameters, conv weights) of one block: its conv-BN branches from the stream, then the 1x1 projection of
    their concatenation back to the stream's width, with a bias and no BN."""
    params = weights = 0
    for branch in branches:
        c_in = stream
        for (kh, kw), width in branch:
            weights += kh * kw * c_in * width
            params += kh * kw * c_in * width + 2 * width
            c_in = width
    concat = sum(branch[-1][1] for branch in branches)
    return params + concat * stream + stream, weights + concat * stream


def test_paper_variants_are_the_references_less_the_blocks_they_drop():
    """inception_resnet_v2_paper is timm's inception_resnet_v2 (55,843,464 parameters) less 5 of its 10 A blocks,
    10 of its 20 B blocks, 5 of its 10 C blocks (9 scaled and the final one), and its final 1x1 conv-BN to 1536,
    with a classifier on 2080 channels instead of 1536; inception_resnet_v1_paper is facenet's v1 (24,357,096)
    less its final C block. MACs drop by the dropped weights times their grid (35x35, 17x17, 8x8 at 299)."""
    a, b, c = (residual_block(*spec) for spec in (V2_A, V2_B, V2_C))
    final_conv = 2080 * 1536
    classifier = (2080 - 1536) * 1000
    v2_paper = 55_843_464 - 5 * a[0] - 10 * b[0] - 5 * c[0] - (final_conv + 2 * 1536) + classifier
    v1_c = residual_block(*V1_C)
    assert (v2_paper, 24_357_096 - v1_c[0]) == (31_128_712, 22_756_328)
    with torch.device("meta"):
        models = {name: create_model(name) for name in NAMES}
    assert n_params(models["inception_resnet_v2_paper"]) == v2_paper
    assert n_params(models["inception_resnet_v1_paper"]) == 24_357_096 - v1_c[0]
    x = torch.empty(1, 3, 299, 299, device="meta")
    macs = {name: macs_and_grids(model.eval(), x).macs for name, model in models.items()}
    v2_dropped = 5 * a[1] * 35 ** 2 + 10 * b[1] * 17 ** 2 + 5 * c[1] * 8 ** 2 + final_conv * 8 ** 2 - classifier
    assert macs["inception_resnet_v2"] - macs["inception_resnet_v2_paper"] == v2_dropped
    assert macs["inception_resnet_v1"] - macs["inception_resnet_v1_paper"] == v1_c[1] * 8 ** 2


def test_v1_is_facenets_body_plus_a_classifier():
    with torch.device("meta"):
        body = create_model("inception_resnet_v1", num_classes=0)
    assert n_params(body) == 22_564_096
    assert n_params(body) + 1792 * 1000 + 1000 == 24_357_096


def test_registry_metadata():
    for name in NAMES:
        info = model_info(name)
        assert info.year == 2016 and info.input_size == 299 and info.min_input_size == 75
        assert "Impact of Residual Connections" in info.paper
        for knob in ("num_classes", "in_chans", "drop_rate", "norm", "width_mult", "residual_scale",
                     "block_counts", "residual", "final_width", "prepool_bn"):
            assert knob in info.knobs
    assert model_info("inception_resnet_v2").reference_source.startswith("timm")
    assert "facenet" in model_info("inception_resnet_v1").reference_source


def test_v2_maps_onto_timm_by_order_and_gives_its_logits():
    torch.manual_seed(0)
    reference = timm.create_model("inception_resnet_v2", pretrained=False)
    ours = create_model("inception_resnet_v2")
    assert [p.shape for p in ours.parameters()] == [p.shape for p in reference.parameters()]
    ref_state, our_state = reference.state_dict(), ours.state_dict()
    assert [v.shape for v in our_state.values()] == [v.shape for v in ref_state.values()]

    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        # Non-trivial BN statistics, so a mis-ordered buffer changes the logits.
        for key, value in ref_state.items():
            if key.endswith(("running_var", "bn.weight")):
                value.copy_(torch.rand(value.shape, generator=gen) + 0.5)
            elif key.endswith(("running_mean", "bn.bias")):
                value.copy_(torch.randn(value.shape, generator=gen) * 0.1)
        for ours_value, ref_value in zip(our_state.values(), ref_state.values()):
            ours_value.copy_(ref_value)
        reference.eval()
        ours.eval()
        x = torch.randn(2, 3, 75, 75, generator=gen)
        expected, got = reference(x), ours(x)
    assert got.shape == (2, 1000)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # The tolerance is tight enough to see one misplaced value deep in the network.
    with torch.no_grad():
        ours.stage_b[10].project.bias[0] += 0.05
        assert (ours(x) - expected).abs().max() > 1e-4


def test_one_full_size_forward():
    torch.manual_seed(0)
    model = create_model("inception_resnet_v1", num_classes=7).eval()
    with torch.no_grad():
        features = model.forward_features(torch.randn(1, 3, 299, 299))
        logits = model.forward_head(features)
    assert features.shape == (1, 1792, 8, 8)
    assert logits.shape == (1, 7) and torch.isfinite(logits).all()


def _hooked_block_output(block: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    seen = {}
    handle = block.project.register_forward_hook(lambda m, i, out: seen.setdefault("project", out))
    out = block(x)
    handle.remove()
    return out, seen["project"]


@pytest.mark.parametrize("block_cls, widths", [
    (InceptionResNetA, ((4,), (4, 4), (4, 6, 8))),
    (InceptionResNetB, ((6,), (4, 5, 6))),
    (InceptionResNetC, ((6,), (6, 7, 8))),
])
def test_residual_block_computes_the_papers_formula(block_cls, widths):
    torch.manual_seed(0)
    x = torch.randn(2, 16, 9, 9)
    block = block_cls(16, widths, scale=0.3).eval()
    assert block.project.bias is not None and block.project.out_channels == 16
    out, projected = _hooked_block_output(block, x)
    torch.testing.assert_close(out, torch.relu(x + 0.3 * projected))

    final = block_cls(16, widths, scale=1.0, activate=False).eval()
    out, projected = _hooked_block_output(final, x)
    torch.testing.assert_close(out, x + projected)
    assert (out < 0).any()  # no ReLU at the end

    plain = block_cls(16, widths, scale=0.3, residual=False).eval()
    out, projected = _hooked_block_output(plain, x)
    torch.testing.assert_close(out, torch.relu(projected))
    assert n_params(plain) == n_params(block)
    with pytest.raises(ValueError, match="one tuple of widths per branch"):
        block_cls(16, ((4,),), scale=0.3)


def test_reductions_use_valid_padding_and_pass_the_input_through():
    x = torch.randn(1, 12, 17, 17)
    red_a = InceptionResNetReductionA(12, 4, 5, 6, 7)
    assert red_a(x).shape == (1, 7 + 6 + 12, 8, 8) and red_a.out_channels == 25
    red_b = InceptionResNetReductionB(12, ((4, 5), (4, 6), (4, 6, 7)))
    assert red_b(x).shape == (1, 5 + 6 + 7 + 12, 8, 8) and red_b.out_channels == 30


def test_residual_scale_single_and_per_stage():
    default = create_model("inception_resnet_v2", **SMALL)
    per_stage = create_model("inception_resnet_v1", residual_scale=(0.3, 0.2, 0.1), **SMALL)
    single = create_model("inception_resnet_v2_paper", residual_scale=1.0, **SMALL)
    for model, expected in ((default, (0.17, 0.10, 0.20)), (per_stage, (0.3, 0.2, 0.1)), (single, (1.0,) * 3)):
        stages = (model.stage_a, model.stage_b, model.stage_c)
        assert tuple(stage[0].scale for stage in stages) == pytest.approx(expected)
    assert default.final_block.scale == 1.0 and isinstance(default.final_block.act, nn.Identity)
    assert per_stage.final_block.scale == 1.0
    with pytest.raises(ValueError, match="one per stage"):
        create_model("inception_resnet_v2", residual_scale=(0.1, 0.2), **SMALL)

    # The scale changes the function: the same weights with another scale give other logits.
    torch.manual_seed(0)
    a = create_model("inception_resnet_v1_paper", residual_scale=0.1, **SMALL).eval()
    b = create_model("inception_resnet_v1_paper", residual_scale=0.9, **SMALL).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 3, 80, 80)
    with torch.no_grad():
        assert not torch.allclose(a(x), b(x))


@pytest.mark.parametrize("name", NAMES)
def test_min_input_size_is_75(name):
    model = create_model(name, **SMALL).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 75, 75)).shape == (1, 10)
        with pytest.raises(ValueError, match="75x75"):
            model(torch.randn(1, 3, 74, 75))
        with pytest.raises(ValueError, match="75x75"):
            model.forward_features(torch.randn(1, 3, 75, 74))
    assert model.min_input_size == 75


def test_block_counts_width_mult_and_defaults():
    model = create_model("inception_resnet_v2", block_counts=(2, 3, 1), width_mult=0.25)
    assert (len(model.stage_a), len(model.stage_b), len(model.stage_c)) == (2, 3, 1)
    assert model.num_features == 384  # round(1536 * 0.25)
    assert model.stage_a[0].out_channels == 80 and model.stage_c[0].out_channels == 520  # 320 and 2080 / 4
    full = create_model("inception_resnet_v1", width_mult=0.5, block_counts=(0, 0, 0))
    assert len(full.stage_c) == 0 and full.num_features == 896
    with torch.device("meta"):
        v2, v1 = create_model("inception_resnet_v2"), create_model("inception_resnet_v1")
    assert (len(v2.stage_a), len(v2.stage_b), len(v2.stage_c)) == (10, 20, 9)
    assert (len(v1.stage_a), len(v1.stage_b), len(v1.stage_c)) == (5, 10, 5)
    assert v2.dropout.p == 0.0 and v1.dropout.p == 0.2
    for bad in ((1, 1), (1, -1, 1), (1.0, 1, 1), 3):
        with pytest.raises(ValueError, match="block_counts"):
            create_model("inception_resnet_v1", block_counts=bad)


@pytest.mark.parametrize("name", NAMES)
def test_residual_false_keeps_the_parameters_and_drops_the_shortcut(name):
    torch.manual_seed(0)
    with_shortcut = create_model(name, **SMALL).eval()
    without = create_model(name, residual=False, **SMALL).eval()
    assert n_params(without) == n_params(with_shortcut)
    blocks = [m for m in without.modules() if hasattr(m, "residual") and hasattr(m, "project")]
    assert blocks and not any(b.residual for b in blocks)
    without.load_state_dict(with_shortcut.state_dict())
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        assert without(x).shape == (2, 10)
        assert not torch.allclose(without(x), with_shortcut(x))


@pytest.mark.parametrize("width", [256, 2048])
def test_final_width_sets_the_layer_before_pooling(width):
    paper = create_model("inception_resnet_v2_paper", final_width=width, **SMALL)
    assert isinstance(paper.widen, ConvNormAct) and paper.widen.out_channels == width
    assert all(block.project.out_channels == width for block in paper.stage_c)
    v1 = create_model("inception_resnet_v1", final_width=width, **SMALL)
    assert v1.final_block.project.out_channels == width
    released = create_model("inception_resnet_v2", final_width=width, **SMALL)
    assert isinstance(released.widen, nn.Identity) and released.final_conv.out_channels == width
    x = torch.randn(2, 3, 75, 75)
    for model in (paper, v1, released):
        assert model.num_features == width
        assert model.forward_features(x).shape == (2, width, 1, 1)
        assert model.fc.in_features == width
    same = create_model("inception_resnet_v2_paper", final_width=520, **SMALL)  # Reduction-B's own width
    assert isinstance(same.widen, nn.Identity)
    with pytest.raises(ValueError, match="final_width"):
        create_model("inception_resnet_v1", final_width=0)


@pytest.mark.parametrize("name", ["inception_resnet_v2_paper", "inception_resnet_v1_paper"])
def test_prepool_bn_adds_one_bn_before_the_last_relu(name):
    # Section 3.3's "extra batch-normalization" of the layer before the pool: 2 x width parameters more, on the
    # last C block only; off by default (no module).
    plain = create_model(name, final_width=256, **SMALL)
    extra = create_model(name, final_width=256, prepool_bn=True, **SMALL)
    assert n_params(extra) - n_params(plain) == 2 * 256
    assert [b.out_norm is not None for b in extra.stage_c] == [True] and plain.stage_c[-1].out_norm is None
    block, x = extra.stage_c[-1].eval(), torch.randn(2, 256, 1, 1)
    block.out_norm.running_mean.fill_(1.0)  # the BN sits between the residual sum and the ReLU
    with torch.no_grad():
        summed = x + block.scale * block.project(torch.cat([b(x) for b in block.branches], 1))
        torch.testing.assert_close(block(x), torch.relu(block.out_norm(summed)))
    assert extra(torch.randn(2, 3, 75, 75)).shape == (2, 10)
    with pytest.raises(ValueError, match="prepool_bn"):
        create_model("inception_resnet_v2", prepool_bn=True, **SMALL)
    with pytest.raises(TypeError, match="prepool_bn"):
        create_model(name, prepool_bn=1, **SMALL)


def test_norm_none_and_in_chans():
    model = create_model("inception_resnet_v1_paper", norm="none", in_chans=1, **SMALL)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert model.stem.conv1a.conv.bias is not None
    assert model(torch.randn(2, 1, 75, 75)).shape == (2, 10)
    with pytest.raises(ValueError, match="in_chans=3"):
        model(torch.randn(2, 3, 75, 75))
    with pytest.raises(ValueError, match="norm"):
        create_model("inception_resnet_v1", norm="ln")


def test_small_config_trains():
    torch.manual_seed(0)
    model = create_model("inception_resnet_v2_paper", final_width=512, **SMALL).train()
    x, y = torch.randn(8, 3, 75, 75), torch.randint(0, 10, (8,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(6):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        losses.append(loss.item())
        optimizer.step()
    assert model.stem.conv1a.conv.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.parameters())
    assert losses[-1] < losses[0]
