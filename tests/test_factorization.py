"""Factorisation studies: closed forms, fvcore counts of real zoo layers equal to them exactly, measured
receptive fields, and whole models with their factorisations undone, checked layer by layer."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
from torch import nn

from analysis.instruments.factorization import (
    SCHEMES,
    build_scheme,
    conv_macs,
    conv_params,
    factorization_study,
    factorized_ratio,
    receptive_field,
    undo_factorization_table,
)
from inception_models.layers import ConvNormAct


pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------------ closed form

def test_conv_closed_forms():
    assert conv_params(192, 192, 5, 5) == 921_600
    assert conv_params(192, 192, 1, 7) == 258_048
    assert conv_params(3, 64, 7, 7, bias=True) == 9_472
    assert conv_params(32, 64, 3, 3, groups=32) == 64 * 1 * 9
    assert conv_macs(192, 192, 3, 3, 35, 35) == 331_776 * 1225
    assert conv_macs(192, 192, 3, 3, 35, 35, batch_size=4) == 4 * 331_776 * 1225
    with pytest.raises(ValueError, match="groups"):
        conv_params(30, 64, 3, 3, groups=4)


def test_factorized_ratios_are_the_papers():
    assert factorized_ratio("5x5->2x3x3") == Fraction(18, 25) and float(factorized_ratio("5x5->2x3x3")) == 0.72
    assert factorized_ratio("5x5->2x3x3", 5) == Fraction(18, 25)
    assert [factorized_ratio("nxn->1xn+nx1", n) for n in (3, 5, 7)] == [Fraction(2, 3), Fraction(2, 5), Fraction(2, 7)]
    with pytest.raises(ValueError, match="unknown scheme"):
        factorized_ratio("7x7->3x3x3")
    with pytest.raises(ValueError, match="odd kernel size"):
        factorized_ratio("nxn->1xn+nx1", 4)
    with pytest.raises(ValueError, match="n=5"):
        factorized_ratio("5x5->2x3x3", 7)


# ------------------------------------------------------------------------------------------- the real modules

def test_modules_are_zoo_layers_without_bias_or_norm():
    for scheme, n in (("5x5->2x3x3", 5), ("nxn->1xn+nx1", 7)):
        for form in ("full", "factorized"):
            module = build_scheme(scheme, n, 8, form)
            blocks = list(module.children())
            assert blocks and all(isinstance(b, ConvNormAct) for b in blocks)
            assert all(b.conv.bias is None and isinstance(b.bn, nn.Identity) for b in blocks)
            assert all(isinstance(b.act, nn.ReLU) for b in blocks)
            assert module(torch.zeros(1, 8, 11, 11)).shape == (1, 8, 11, 11)  # 'same' padding


def test_receptive_field_is_measured():
    assert receptive_field(ConvNormAct(1, 1, 5, padding=2, norm="none"), 1) == (5, 5)
    assert receptive_field(ConvNormAct(1, 1, (1, 7), padding=(0, 3), norm="none"), 1) == (1, 7)
    assert receptive_field(build_scheme("5x5->2x3x3", 5, 1, "factorized"), 1) == (5, 5)
    assert receptive_field(build_scheme("nxn->1xn+nx1", 7, 1, "factorized"), 1) == (7, 7)
    assert receptive_field(ConvNormAct(1, 1, 3, stride=2, padding=1, norm="none"), 1) == (3, 3)
    with pytest.raises(ValueError, match="larger size"):
        receptive_field(ConvNormAct(1, 1, 9, padding=4, norm="none"), 1, size=7)


def test_study_measured_equals_closed_form_exactly():
    grids = (8, 12, 17, 35)
    df = factorization_study(grids=grids, channels=16, ns=(3, 5, 7))
    required = {"scheme", "n", "grid", "channels", "form", "params", "macs", "receptive_field", "ratio",
                "closed_form_ratio"}
    assert required <= set(df.columns)
    assert len(df) == 4 * len(grids) * 2  # 5x5->2x3x3 and n = 3, 5, 7; two forms each
    assert df["exact"].all()
    assert (df["params"] == df["closed_form_params"]).all() and (df["macs"] == df["closed_form_macs"]).all()
    for (scheme, n), case in df.groupby(["scheme", "n"]):
        full = case[case["form"] == "full"].set_index("grid")
        fact = case[case["form"] == "factorized"].set_index("grid")
        expected = factorized_ratio(scheme, n)
        for g in grids:
            assert Fraction(int(fact.loc[g, "macs"]), int(full.loc[g, "macs"])) == expected
            assert Fraction(int(fact.loc[g, "params"]), int(full.loc[g, "params"])) == expected
            # the ratio is grid-independent; the absolute saving grows as grid^2
            assert fact.loc[g, "ratio"] == float(expected) == fact.loc[g, "closed_form_ratio"]
            assert fact.loc[g, "macs_saved"] * 64 == fact.loc[8, "macs_saved"] * g * g
        assert set(case["receptive_field"]) == {f"{n}x{n}"}  # both forms see the same window
    five = df[(df["scheme"] == "5x5->2x3x3") & (df["grid"] == 35)].set_index("form")
    assert five.loc["full", "layers"] == "5x5" and five.loc["factorized", "layers"] == "3x3 -> 3x3"
    assert five.loc["factorized", "ratio"] == 0.72
    seven = df[(df["scheme"] == "nxn->1xn+nx1") & (df["n"] == 7) & (df["grid"] == 17)].set_index("form")
    assert seven.loc["factorized", "macs"] == 2 * 7 * 16 * 16 * 17 * 17 and seven.loc["full", "macs"] == 49 * 256 * 289


def test_study_at_inception_width_one_grid():
    df = factorization_study(grids=[17], channels=192, ns=(7,), schemes=("nxn->1xn+nx1",)).set_index("form")
    assert df.loc["full", "params"] == 1_806_336 and df.loc["factorized", "params"] == 516_096
    assert df.loc["factorized", "macs"] == 516_096 * 289


def test_study_rejects_bad_arguments():
    with pytest.raises(ValueError, match="grids"):
        factorization_study(grids=[0, 8])
    with pytest.raises(ValueError, match="unknown scheme"):
        factorization_study(grids=[8], schemes=("3x3->2x2x2",))
    assert set(SCHEMES) == {"5x5->2x3x3", "nxn->1xn+nx1"}


# ------------------------------------------------------------------------------------------------ whole models

def conv_bn(c_in: int, c_out: int, kh: int, kw: int) -> tuple[int, int]:
    """(conv weights, BN parameters) of one ConvNormAct without bias."""
    return conv_params(c_in, c_out, kh, kw), 2 * c_out


def _delta(new: list[tuple[int, int]], old: list[tuple[int, int]]) -> tuple[int, int]:
    return sum(c for c, _ in new) - sum(c for c, _ in old), sum(b for _, b in new) - sum(b for _, b in old)


def inception_v3_deltas() -> dict[str, tuple[int, int]]:
    """Closed-form (conv weight, BN parameter) changes of undoing each Inception-v3 factorisation, from the
    released widths: 3 x Inception-A (64 -> 96 -> 96), 4 x Inception-B (c7 = 128, 160, 160, 192),
    2 x Inception-C (two 384 -> 384 + 384 expanded filter banks each)."""
    a = _delta([conv_bn(64, 96, 5, 5)], [conv_bn(64, 96, 3, 3), conv_bn(96, 96, 3, 3)])
    b_conv = b_bn = 0
    for c7 in (128, 160, 160, 192):
        to_192 = _delta([conv_bn(c7, 192, 7, 7)], [conv_bn(c7, c7, 1, 7), conv_bn(c7, 192, 7, 1)])
        to_c7 = _delta([conv_bn(c7, c7, 7, 7)], [conv_bn(c7, c7, 7, 1), conv_bn(c7, c7, 1, 7)])
        b_conv += 2 * to_192[0] + to_c7[0]
        b_bn += 2 * to_192[1] + to_c7[1]
    c = _delta([conv_bn(384, 768, 3, 3)], [conv_bn(384, 384, 1, 3), conv_bn(384, 384, 3, 1)])
    return {"a": (3 * a[0], 3 * a[1]), "b": (b_conv, b_bn), "c": (2 * 2 * c[0], 2 * 2 * c[1])}


def test_undo_factorization_matches_the_closed_form():
    df = undo_factorization_table(input_size=75, googlenet_input_size=64)
    cols = {"group", "model", "knobs", "variant", "params", "macs", "gmacs", "params_delta", "params_delta_pct",
            "macs_delta", "macs_delta_pct"}
    assert cols <= set(df.columns) and len(df) == 8
    v3 = df[df["group"] == "inception_v3"].set_index("knobs")
    assert v3.loc["(defaults)", "params"] == 23_834_568 and v3.loc["(defaults)", "params_delta"] == 0
    d = inception_v3_deltas()
    # at 75 px the Inception-A/B/C blocks run on 7x7, 3x3 and 1x1 grids
    cases = (("factorize_a=False", "a", 7), ("factorize_b=False", "b", 3), ("factorize_c=False", "c", 1))
    for knob, key, grid in cases:
        conv_delta, bn_delta = d[key]
        assert v3.loc[knob, "params_delta"] == conv_delta + bn_delta
        assert v3.loc[knob, "conv_linear_macs"] - v3.loc["(defaults)", "conv_linear_macs"] == conv_delta * grid * grid
        assert v3.loc[knob, "params_delta_pct"] == pytest.approx(100 * (conv_delta + bn_delta) / 23_834_568)
    assert d["a"][0] + d["a"][1] == 45_504 and d["b"][0] + d["b"][1] == 12_511_488 and d["c"] == (7_077_888, 0)
    all_off = "factorize_a=False, factorize_b=False, factorize_c=False"
    assert v3.loc[all_off, "params_delta"] == sum(c + b for c, b in d.values())
    assert (v3.drop("(defaults)")["macs_delta"] > 0).all()

    g = df[df["group"] == "googlenet"].set_index("knobs")
    five = g.loc["branch5x5_kernel=5"]
    # the nine "5x5" branches (reduce -> out): 5x5 instead of 3x3 adds 16 weights per channel pair
    pairs = [(16, 32), (32, 96), (16, 48), (24, 64), (24, 64), (32, 64), (32, 128), (32, 128), (48, 128)]
    assert five["params_delta"] == 16 * sum(r * o for r, o in pairs) == 380_928
    assert five["params"] == 7_005_832
    bn_inception = df[df["model"] == "bn_inception"].iloc[0]
    assert bn_inception["params"] == 11_295_240 and bn_inception["params_delta"] == 11_295_240 - 6_624_904
