"""The command line: every table command in every format, and bad input as one clear line with exit code 2."""

from __future__ import annotations

import io
import json

import pandas as pd
import pytest

from analysis.cli import parse_knobs, parse_range
from helpers import run_cli as run
from inception_models import list_models


def test_models_lists_every_model_with_its_reference_count(monkeypatch, capsys):
    code, out, _ = run(monkeypatch, capsys, "models", "--format", "csv")
    table = pd.read_csv(io.StringIO(out))
    assert code == 0 and sorted(table["model"]) == sorted(list_models())
    rows = table.set_index("model")
    assert rows.loc["inception_v3", "params"] == 23_834_568 == rows.loc["inception_v3", "ref_params"]
    assert rows.loc["xception", "min_input"] == 7 and rows.loc["inception_v4", "input"] == 299
    assert {"paper", "year", "reference"} <= set(table.columns)


@pytest.mark.parametrize("fmt, marker", [("table", "-------"), ("markdown", "|---"), ("latex", r"\toprule"),
                                         ("json", '"stage"')])
def test_every_format(monkeypatch, capsys, fmt, marker):
    code, out, _ = run(monkeypatch, capsys, "summary", "small_inception", "--by", "stage", "--format", fmt)
    assert code == 0 and marker in out
    if fmt == "json":
        rows = json.loads(out)
        assert rows[-1]["stage"] == "(total)" and rows[-1]["params"] == 1_651_114


def test_summary_by_block_with_knobs(monkeypatch, capsys):
    code, out, _ = run(monkeypatch, capsys, "summary", "small_inception", "--by", "block", "--input", "64",
                       "-k", "width_mult=0.5", "-k", "norm=none", "--format", "csv")
    table = pd.read_csv(io.StringIO(out)).set_index("block")
    assert code == 0
    assert table.loc["stem", "params"] == 3 * 9 * 48 + 48  # conv with bias, no BN at half width
    assert table.loc["(total)", "params"] == table.drop(index="(total)")["params"].sum()


def test_factorize_csv_columns_and_ratios(monkeypatch, capsys):
    code, out, _ = run(monkeypatch, capsys, "factorize", "--grids", "8-9", "--channels", "16", "--format", "csv")
    table = pd.read_csv(io.StringIO(out))
    assert code == 0
    assert {"scheme", "n", "grid", "channels", "params", "macs", "receptive_field", "ratio"} <= set(table.columns)
    factorized = table[table["form"] == "factorized"].set_index(["scheme", "n", "grid"])
    assert factorized.loc[("5x5->2x3x3", 5, 8), "ratio"] == pytest.approx(18 / 25)
    assert factorized.loc[("nxn->1xn+nx1", 7, 9), "ratio"] == pytest.approx(2 / 7)
    assert sorted(table["grid"].unique()) == [8, 9] and set(table["channels"]) == {16}


def test_dead_units_reads_a_trained_checkpoint(monkeypatch, capsys, tmp_path):
    import torch

    from inception_models import create_model

    model = create_model("small_inception", num_classes=10)
    bn = model.stage2[1].branch3x3[0].bn  # the last block's 3x3 branch: pre-pool channels 176 to 335
    with torch.no_grad():
        bn.bias[:5] = -100.0
    torch.save({"model": model.state_dict()}, tmp_path / "checkpoint.pt")
    code, out, _ = run(monkeypatch, capsys, "dead-units", "small_inception", "--checkpoint",
                       str(tmp_path / "checkpoint.pt"), "--batches", "2", "--batch-size", "4", "--mode", "train",
                       "--format", "csv")
    table = pd.read_csv(io.StringIO(out))
    assert code == 0 and len(table) == 1
    assert table.loc[0, "channels"] == 336 and table.loc[0, "dead"] >= 5
    assert table.loc[0, "samples"] == 8 and table.loc[0, "mode"] == "train"


@pytest.mark.parametrize("args, message", [
    (["summary", "inception_v9"], "unknown model 'inception_v9'"),
    (["summary", "small_inception", "-k", "widht_mult=2"], "widht_mult"),
    (["summary", "small_inception", "-k", "width_mult"], "is not NAME=VALUE"),
    (["summary", "inception_v3", "--input", "40"], "75"),
    (["factorize", "--grids", "35-8"], "is not a range like 8-35"),
    (["experiment", "no_such_claim"], "unknown experiment 'no_such_claim'; known experiments: dead_units"),
    (["report", "--section", "nope", "--out", "unused-report"], "unknown report section(s) ['nope']"),
    (["budgets", "check", "absent.toml"], "absent.toml not found"),
])
def test_bad_input_is_one_clear_line(monkeypatch, capsys, tmp_path, args, message):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(monkeypatch, capsys, *args)
    assert code == 2
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert not (tmp_path / "unused-report").exists()


def test_parsers():
    assert parse_knobs(["width_mult=0.5", "norm=none", "block_counts=(1, 1, 1)", "aux_logits=True"]) == {
        "width_mult": 0.5, "norm": "none", "block_counts": (1, 1, 1), "aux_logits": True}
    assert parse_range("8-11") == [8, 9, 10, 11] and parse_range("8,17,35") == [8, 17, 35]
