"""Parameter budgets: the TOML file, the checker, `inception-lab budgets check` and the pytest plugin."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from analysis.instruments.budgets import BudgetFileError, check_budget, check_budgets, load_budgets, overshoot_message

pytest_plugins = ["pytester"]

# small_inception at 32x32: 1,651,114 parameters (Zhang et al. 2017's 1,649,402 + 1,712 BN scales, see
# tests/test_small_inception.py); its last stage (stage2) is the widest.
SMALL = 1_651_114


def small_inception_macs_at_32() -> int:
    """fvcore's total for small_inception at 32x32, by hand from Fig. 3's widths: every conv does its weights'
    worth of MACs per output position; every BN (with its affine) 2 per element; the global pool 1 per element
    it reads; the classifier 336 x 10. Inception modules keep the grid; a Downsample halves it (3x3/2, pad 1)."""
    stages = ((((32, 32), (32, 48)), 80), (((112, 48), (96, 64), (80, 80), (48, 96)), 96),
              (((176, 160), (176, 160)), None))
    grid, c = 32, 96
    conv, bn = 3 * 3 * 3 * 96 * grid ** 2, 2 * 96 * grid ** 2  # the stem
    for modules, downsample in stages:
        for ch1, ch3 in modules:  # 1x1 ch1 | 3x3 ch3, concatenated
            conv += (c * ch1 + 9 * c * ch3) * grid ** 2
            bn += 2 * (ch1 + ch3) * grid ** 2
            c = ch1 + ch3
        if downsample is not None:  # 3x3/2 conv | 3x3/2 max pool, concatenated
            grid = (grid + 1) // 2
            conv += 9 * c * downsample * grid ** 2
            bn += 2 * downsample * grid ** 2
            c += downsample
    return conv + bn + c * grid ** 2 + c * 10


def write(tmp_path: Path, text: str, name: str = "budgets.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_totals_and_blocks_within_and_over_budget(tmp_path):
    path = write(tmp_path, f"""
        [budget.small]
        model = "small_inception"
        input_size = 32
        max_params = {SMALL}
        max_gmacs = 0.2

        [budget.small.blocks]
        stem = {{ max_params = 100 }}
        """)
    rows = check_budgets(path)
    assert list(rows.columns) == ["budget", "model", "block", "metric", "budget_value", "actual", "delta_pct", "ok"]
    by = rows.set_index(["block", "metric"])
    assert by.loc[("(total)", "params"), "actual"] == SMALL and by.loc[("(total)", "params"), "ok"]
    assert small_inception_macs_at_32() == 267_706_656
    assert by.loc[("(total)", "gmacs"), "actual"] == round(small_inception_macs_at_32() / 1e9, 4)  # shown to 4 places
    assert not by.loc[("(total)", "gmacs"), "ok"]
    stem = by.loc[("stem", "params")]
    assert stem["actual"] == 2_784 and not stem["ok"]  # 3x3x3x96 conv + 2x96 BN
    assert stem["delta_pct"] == pytest.approx(2684.0)
    message = overshoot_message(rows)
    assert "(total) gmacs: 0.2677 > 0.2000" in message
    assert "stem params: 2,784 > 100 (+2684.0%)" in message


def test_kwargs_change_the_model(tmp_path):
    path = write(tmp_path, """
        [budget.half]
        model = "small_inception"
        kwargs = { width_mult = 0.5, norm = "none" }
        input_size = [3, 32, 32]
        max_params = 1_000_000
        """)
    (budget,) = load_budgets(path)
    assert budget.kwargs == {"width_mult": 0.5, "norm": "none"} and budget.input_size == (3, 32, 32)
    rows = check_budget(budget)
    assert rows["ok"].all() and rows["actual"].iloc[0] < SMALL / 3


def test_a_users_own_model_by_import_path(tmp_path, monkeypatch):
    (tmp_path / "my_nets.py").write_text(textwrap.dedent("""
        from torch import nn
        def tiny(width=8):
            return nn.Sequential(nn.Conv2d(3, width, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(width, 10))
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    path = write(tmp_path, """
        [budget.mine]
        model = "my_nets:tiny"
        kwargs = { width = 4 }
        input_size = 16
        max_params = 200
        """)
    rows = check_budgets(path)
    assert rows["actual"].tolist() == [3 * 4 * 9 + 4 + 4 * 10 + 10]  # 162
    assert rows["ok"].all()


@pytest.mark.parametrize("text, match", [
    ("[budget.a]\nmodel = \"googlenet\"\nmax_params = = 3\n", r"not valid TOML: .*line 3"),
    ("[budget.a]\nmodel = \"googlenet\"\nmax_parms = 3\n", r"unknown key budget\.a\.max_parms"),
    ("[budget.a]\nmodel = \"googlenet\"\n", r"budget\.a sets no limit"),
    ("[budget.a]\nmax_params = -1\n", r"budget\.a\.max_params must be a non-negative number"),
    ("[budget.a]\nmax_params = 5\ninput_size = \"big\"\n", r"budget\.a\.input_size must be a positive int"),
    ("[budget.a]\nmax_params = 5\n[budget.a.blocks]\nstem = 3\n", r"budget\.a\.blocks\.stem must be a table"),
    ("[models]\nx = 1\n", r"unknown top-level key 'models'"),
    ("", r"no budgets found"),
])
def test_malformed_files_name_the_line_or_key(tmp_path, text, match):
    path = write(tmp_path, text)
    with pytest.raises(BudgetFileError, match=match) as err:
        load_budgets(path)
    assert str(path) in str(err.value)


def test_unknown_block_and_model_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"has no block or stage .stage9.; its blocks are stem, stage0"):
        check_budgets(write(tmp_path, "[budget.a]\nmodel = \"small_inception\"\n[budget.a.blocks]\n"
                                      "stage9 = { max_params = 1 }\n"))
    with pytest.raises(ValueError, match=r"unknown model 'inception_v9'"):
        check_budgets(write(tmp_path, "[budget.a]\nmodel = \"inception_v9\"\nmax_params = 1\n", "b.toml"))
    with pytest.raises(FileNotFoundError, match="not found"):
        load_budgets(tmp_path / "absent.toml")


def test_cli_exit_codes(tmp_path, monkeypatch, capsys):
    from analysis.cli import main

    ok = write(tmp_path, f"[budget.small]\nmodel = \"small_inception\"\nmax_params = {SMALL}\n", "ok.toml")
    over = write(tmp_path, f"[budget.small]\nmodel = \"small_inception\"\nmax_params = {SMALL - 1}\n", "over.toml")
    bad = write(tmp_path, "[budget.small]\nmax_params = \n", "bad.toml")
    codes = {}
    for name, path in {"ok": ok, "over": over, "bad": bad}.items():
        monkeypatch.setattr(sys, "argv", ["inception-lab", "budgets", "check", str(path), "--format", "csv"])
        with pytest.raises(SystemExit) as exit_:
            main()
        codes[name] = (exit_.value.code, capsys.readouterr())
    assert codes["ok"][0] in (0, None) and "small,small_inception,(total),params,1651114.0,1651114.0,0.0,True" in codes["ok"][1].out
    assert codes["over"][0] == 1 and "(total) params: 1,651,114 > 1,651,113" in codes["over"][1].err
    assert codes["bad"][0] == 2 and codes["bad"][1].err.startswith("error: ") and "line 2" in codes["bad"][1].err


def test_pytest_plugin_turns_budgets_into_items(pytester):
    pytester.makefile(".toml", budgets=f"""
        [budget.fits]
        model = "small_inception"
        max_params = {SMALL}

        [budget.too_tight]
        model = "small_inception"
        max_params = 2_000_000
        [budget.too_tight.blocks]
        "8x8" = {{ max_params = 1_000_000 }}
        "stage2.1" = {{ max_params = 100_000 }}
        """)
    result = pytester.runpytest("--param-budgets", "budgets.toml", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*small_inception is over budget:*", "*8x8 params: 1,* > 1,000,000 (+*%)*",
                               "*stage2.1 params: * > 100,000 (+*%)*"])


def test_pytest_plugin_reports_a_missing_file(pytester):
    result = pytester.runpytest("--param-budgets", "absent.toml")
    assert result.ret != 0
    result.stderr.fnmatch_lines(["*--param-budgets: absent.toml not found*"])
