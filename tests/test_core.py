"""The shared core: registry errors, layer helpers, the table writer and atomic writes."""

from __future__ import annotations

import io
import json

import pandas as pd
import pytest
import torch

from analysis.io import atomic_path, atomic_write_text
from analysis.report.tables import FORMATS, Column, render, write_table
from inception_models import create_model, list_models, model_info
from inception_models.layers import ConvNormAct, check_input, conv_nxn, conv_stacked, residual_scales, scale_width

from helpers import n_params


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(ValueError) as err:
        create_model("inception_v9")
    message = str(err.value)
    assert "inception_v9" in message
    for name in list_models():
        assert name in message


def test_unknown_knob_is_named():
    name = list_models()[0]
    with pytest.raises(TypeError, match="no_such_knob"):
        create_model(name, no_such_knob=3)


def test_every_model_has_metadata():
    for name in list_models():
        info = model_info(name)
        assert info.year >= 2014 and info.input_size >= info.min_input_size >= 1
        assert info.paper


def test_conv_norm_act_layout_matches_basic_conv2d():
    block = ConvNormAct(8, 16, 3, padding=1)
    assert [k for k, _ in block.named_parameters()] == ["conv.weight", "bn.weight", "bn.bias"]
    assert block.bn.eps == 1e-3
    plain = ConvNormAct(8, 16, 3, norm="none")
    assert [k for k, _ in plain.named_parameters()] == ["conv.weight", "conv.bias"]
    assert isinstance(plain.act, torch.nn.ReLU)


def test_factorised_convs_keep_the_closed_form_cost():
    c = 64
    full = conv_nxn(c, c, c, 7, factorize=False, norm="none", bias=False)
    fact = conv_nxn(c, c, c, 7, factorize=True, norm="none", bias=False)
    assert n_params(full) == 49 * c * c
    assert n_params(fact) == 2 * 7 * c * c  # 2/n of the full cost
    five = conv_stacked(c, [c], kernel_size=5, norm="none", bias=False)
    two_threes = conv_stacked(c, [c, c], kernel_size=3, norm="none", bias=False)
    assert n_params(two_threes) / n_params(five) == pytest.approx(18 / 25)
    x = torch.randn(1, c, 17, 17)
    assert fact(x).shape == full(x).shape == (1, c, 17, 17)


def test_width_and_residual_scale_helpers():
    assert scale_width(96, 0.5) == 48 and scale_width(3, 0.1) == 1
    with pytest.raises(ValueError):
        scale_width(8, 0)
    assert residual_scales(0.1, 3) == (0.1, 0.1, 0.1)
    assert residual_scales([0.17, 0.1, 0.2], 3) == (0.17, 0.1, 0.2)
    with pytest.raises(ValueError, match="one per stage"):
        residual_scales([0.1, 0.2], 3)


def test_check_input_names_the_fix():
    with pytest.raises(ValueError, match="at least 75x75"):
        check_input(torch.zeros(1, 3, 70, 80), in_chans=3, min_size=75, model_name="m")
    with pytest.raises(ValueError, match="in_chans=1"):
        check_input(torch.zeros(1, 3, 80, 80), in_chans=1, min_size=75, model_name="m")
    with pytest.raises(ValueError, match="4-D"):
        check_input(torch.zeros(3, 80, 80), in_chans=3, min_size=75, model_name="m")


FRAME = pd.DataFrame({"model": ["a_b", "c"], "params": [6624904, 12], "gmacs": [1.498, 0.25]})


def test_render_formats():
    csv = render(FRAME, "csv")
    assert pd.read_csv(io.StringIO(csv))["params"].tolist() == [6624904, 12]
    assert json.loads(render(FRAME, "json"))[0]["params"] == 6624904
    md = render(FRAME, "markdown", title="T", notes=["pooling not counted"])
    assert "| a_b" in md and "6,624,904" in md and "pooling not counted" in md
    tex = render(FRAME, "latex", title="T")
    assert r"\begin{tabular}{lrr}" in tex and r"\toprule" in tex and r"a\_b" in tex
    assert "6{,}624{,}904" in tex
    assert "6,624,904" in render(FRAME, "table")
    with pytest.raises(ValueError, match="unknown format"):
        render(FRAME, "xlsx")
    assert set(FORMATS) == {"table", "csv", "json", "markdown", "latex"}


def test_a_display_header_used_twice_is_refused():
    # Two columns under one header would show only the second: the first would vanish from the table unseen.
    columns = {"model": Column("Where"), "params": Column("Where")}
    with pytest.raises(ValueError, match=r"\['Where'\] are used by more than one column"):
        render(FRAME, "markdown", columns=columns)
    assert "| Where " in render(FRAME, "markdown", columns={"model": Column("Where"), "params": Column("Params")})


def test_write_table_writes_three_files(tmp_path):
    paths = write_table(FRAME, tmp_path / "zoo", title="Zoo")
    assert sorted(p.name for p in paths) == ["zoo.csv", "zoo.md", "zoo.tex"]
    assert pd.read_csv(tmp_path / "zoo.csv").shape == (2, 3)


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "report.md"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]


def test_atomic_writes_get_the_mode_of_a_plain_new_file(tmp_path):
    import os
    import stat

    from analysis.io import atomic_write_text

    atomic_write_text(tmp_path / "atomic.txt", "x")
    (tmp_path / "plain.txt").write_text("x")
    mode = lambda name: stat.S_IMODE(os.stat(tmp_path / name).st_mode)  # noqa: E731
    assert mode("atomic.txt") == mode("plain.txt")
