"""The design rules counted (analysis.instruments.design_principles), against closed forms from the widths."""

from __future__ import annotations

import pytest

from analysis.instruments import design_principles as dp
from analysis.instruments.factorization import unequal_widths_saving


def test_one_by_one_reductions_match_the_closed_form_of_table_1_widths():
    table = dp.one_by_one_reduction_table().set_index("module")
    assert list(table.index) == [f"inception ({m})" for m in ("3a", "3b", "4a", "4b", "4c", "4d", "4e", "5a", "5b")]
    row = table.loc["inception (3a)"]  # Table 1: 192 in; 1x1 64; 3x3 reduce 96 -> 128; 5x5 reduce 16 -> 32; pool 32
    assert (row["grid"], row["in_channels"], row["out_channels"]) == (28, 192, 256)
    assert row["macs"] == (192 * (64 + 96 + 16 + 32) + 9 * 96 * 128 + 25 * 16 * 32) * 28 ** 2
    assert row["naive_macs"] == (192 * 64 + 9 * 192 * 128 + 25 * 192 * 32) * 28 ** 2
    assert row["naive_params"] == 192 * 64 + 9 * 192 * 128 + 25 * 192 * 32 + (64 + 128 + 32)  # weights + biases
    assert row["naive_out_channels"] == 64 + 128 + 32 + 192  # the pool branch passes all 192 channels on
    assert table.loc["inception (5b)", "in_channels"] == 832  # each module is fed the previous one's output
    assert (table["macs_ratio"] > 2).all()


def test_grid_reduction_forms_cost_and_bottleneck():
    table = dp.grid_reduction_table(grid=35, channels=320).set_index("form")
    k = 320
    assert table.loc["pool, then conv", "macs"] == 9 * k * 2 * k * 17 ** 2
    assert table.loc["conv, then pool", "macs"] == 9 * k * 2 * k * 35 ** 2
    assert table.loc["parallel (Fig. 10)", "macs"] == 9 * k * k * 17 ** 2
    assert set(table["output"]) == {"640 x 17 x 17"}
    assert table.loc["pool, then conv", "bottleneck"] == k * 17 * 17  # half the output: the bottleneck
    assert table.loc["pool, then conv", "bottleneck_vs_output"] == 0.5
    assert table.loc["parallel (Fig. 10)", "bottleneck_vs_output"] == table.loc["conv, then pool",
                                                                                "bottleneck_vs_output"] == 1.0
    assert table.loc["conv, then pool", "cost_vs_parallel"] == pytest.approx(2 * 35 ** 2 / 17 ** 2)


def test_activation_sizes_follow_the_known_inception_v3_shapes():
    along = dp.activation_sizes("inception_v3").set_index("block")
    # torchvision's inception_v3 at 299: Mixed_5b 256x35x35, Mixed_6a 768x17x17, Mixed_7a 1280x8x8, 2048x8x8.
    assert along.loc["input", "shape"] == "3 x 299 x 299"
    assert along.loc["stem.pool2", "shape"] == "192 x 35 x 35"
    assert along.loc["inception_a.0", "shape"] == "256 x 35 x 35"
    assert along.loc["reduction_a.0", "elements"] == 768 * 17 * 17
    assert along.loc["reduction_b.0", "shape"] == "1280 x 8 x 8"
    assert along.loc["inception_c.1", "elements"] == 2048 * 8 * 8
    assert along.loc["reduction_a.0", "ratio"] == pytest.approx(768 * 17 ** 2 / (288 * 35 ** 2))


def test_representation_summary_finds_googlenets_pool_between_stages():
    _, summary = dp.representation_summary(["googlenet"])
    row = summary.set_index("model").loc["googlenet"]
    # After the stem GoogLeNet's largest drop is the plain 3x3/2 max pool after (3b): 480x28x28 -> 480x14x14.
    assert (row["at_in_body"], row["largest_drop_in_body"]) == ("maxpool3", 4.0)
    assert row["last_map"] == 1024 * 7 * 7


def test_unequal_widths_save_less_than_the_papers_28_percent():
    # Inception-A's 64 -> 96 -> 96 against a 5x5 64 -> 96: 1 - (9*64*96 + 9*96*96) / (25*64*96) = 0.1.
    assert unequal_widths_saving()["saving"] == pytest.approx(0.1)
    assert unequal_widths_saving(96, 96, 96)["saving"] == pytest.approx(1 - 18 / 25)


def test_design_principles_section_renders(monkeypatch, tmp_path):
    from analysis.report.build import render_section
    from analysis.report.sections import design_principles as section_module

    small = dp.representation_summary(["googlenet", "inception_v3"])
    monkeypatch.setattr(section_module, "representation_summary", lambda: small)
    section = section_module.section("quick", 0)
    text = render_section(section, tmp_path)
    assert "googlenet quarter the representation at a plain max pool" in text
    assert {p.name for p in tmp_path.iterdir()} >= {"grid_reduction.tex", "one_by_one_reductions.csv",
                                                    "representation_along.png", "representation_summary.md"}
