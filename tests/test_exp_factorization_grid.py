"""The factorization-by-grid-size experiment: config plumbing, result schema, resumability, verdict, section.

The science runs in the quick config (``inception-lab report``); here a tiny config trains for two steps.
"""

from __future__ import annotations

import math

import pandas as pd
import pytest

from analysis.experiments.spread_rule import final_evals
from analysis.experiments import factorization_grid as fg
from analysis.experiments import load_experiment, resolve_config
from analysis.report.document import Section
from analysis.report.sections import factorization_grid as fg_section
from analysis.training.sweep import point_id

from helpers import small_inception_params

TINY = {**fg.CONFIGS["quick"], "width_mult": 0.125, "stages": (None, 1), "seeds": 2, "n_train": 32, "n_val": 20,
        "steps": 2, "batch_size": 16, "log_every": 1, "warmup_steps": 0, "workers": 1}
# small_inception at width 0.125, 10 classes, counted by hand from the widths of Zhang et al.'s Fig. 3
# (tests/helpers.py), with the 3x3 branches of one stage factorised to 1x3 + 3x1 (stage 0, 1, 2: grid 32, 16, 8).
PARAMS = {variant: small_inception_params(width_mult=0.125, factorize_stages=stages)
          for variant, stages in (("none", ()), ("32x32", (0,)), ("16x16", (1,)), ("8x8", (2,)))}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fg")
    return folder, fg.run(TINY, results_dir=folder, progress=False)


def test_configs_share_keys_and_resolve():
    assert set(fg.CONFIGS) >= {"quick", "full"}
    assert set(fg.CONFIGS["quick"]) == set(fg.CONFIGS["full"])
    assert load_experiment("factorization_grid") is fg
    assert resolve_config(fg, "quick", seeds=2)["seeds"] == 2
    with pytest.raises(ValueError, match="unknown config key"):
        resolve_config(fg, "quick", bogus=1)


def test_points_one_per_stage_and_seed():
    points = fg.make_points({**TINY, "stages": (None, 0, 1, 2), "seeds": 3, "seed": 5})
    assert len(points) == 12
    assert [p["factorize_stage"] for p in points[::3]] == [None, 0, 1, 2]
    assert [p["seed"] for p in points[:3]] == [5, 6, 7]
    assert {p["data_seed"] for p in points} == {5}
    assert len({point_id(p) for p in points}) == 12


@pytest.mark.parametrize("change, message", [({"stages": (3,)}, "stages"), ({"seeds": 0}, "seeds")])
def test_bad_config_is_named(change, message):
    with pytest.raises(ValueError, match=message):
        fg.make_points({**TINY, **change})
    config = dict(TINY)
    del config["lr"]
    with pytest.raises(ValueError, match="lacks"):
        fg.make_points(config)


def test_result_schema_and_rows(tiny_run):
    _, table = tiny_run
    assert list(table.columns) == ["point_id"] + fg.RESULT_COLUMNS
    # 2 variants x 2 seeds, each: 2 logged train steps + 1 final validation.
    assert len(table) == 12
    assert table.groupby("point_id").size().tolist() == [3, 3, 3, 3]
    assert table["split"].tolist()[:3] == ["train", "train", "val"]
    assert sorted(table["variant"].unique()) == ["16x16", "none"]
    assert table.loc[table["variant"] == "16x16", "grid"].eq(16).all()
    assert table.loc[table["variant"] == "none", "grid"].isna().all()
    assert dict(table.groupby("variant")["params"].first()) == {"none": PARAMS["none"], "16x16": PARAMS["16x16"]}
    assert table["n_val"].eq(20).all() and (table["cpu_s"] > 0).all()
    assert table["loss"].between(0.5, 5).all()


def test_second_run_trains_nothing(tiny_run, monkeypatch):
    folder, first = tiny_run

    def fail(point):
        raise AssertionError("a finished point ran again")

    monkeypatch.setattr(fg, "run_point", fail)
    again = fg.run(TINY, results_dir=folder, progress=False)
    pd.testing.assert_frame_equal(first, again)


@pytest.mark.slow  # two spawned workers import torch: ~10-25 s on busy cores
def test_parallel_workers_give_the_same_rows(tiny_run, tmp_path):
    _, sequential = tiny_run
    config = {**TINY, "stages": (1,), "workers": 2}
    parallel = fg.run(config, results_dir=tmp_path, progress=False)
    expected = sequential[sequential["variant"] == "16x16"].reset_index(drop=True)
    cols = ["point_id", "variant", "seed", "params", "split", "step", "loss", "accuracy"]
    pd.testing.assert_frame_equal(parallel[cols], expected[cols])


def test_summary_columns(tiny_run):
    _, table = tiny_run
    summary = fg.summarise(table)
    assert list(summary.columns) == fg.SUMMARY_COLUMNS
    assert summary["factorized_at"].tolist() == ["none", "16x16"]
    assert summary["seeds"].tolist() == [2, 2]
    assert summary.loc[0, "acc_vs_unfactorized"] == 0.0


def _frames(accuracies: dict[str, list[float]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    grids = {"none": math.nan, "32x32": 32, "16x16": 16, "8x8": 8}
    rows = [{"point_id": f"{v}{i}", "variant": v, "grid": grids[v], "seed": i, "params": PARAMS[v], "split": "val",
             "step": 10, "loss": 1.0, "accuracy": a} for v, accs in accuracies.items() for i, a in enumerate(accs)]
    results = pd.DataFrame(rows)
    return fg.summarise(results), final_evals(results)


@pytest.mark.parametrize("accuracies, expected", [
    ({"none": [0.60, 0.62, 0.61], "32x32": [0.50, 0.52, 0.51], "16x16": [0.60, 0.61, 0.62], "8x8": [0.6] * 3},
     "shows: factorizing at the medium grid beat the early grid and cost no more than the seed spread against the "
     "unfactorized network (accuracy factorized at 16x16 0.610, at 32x32 0.510, unfactorized 0.610; 16x16 minus "
     "32x32 = +0.100 against a seed spread of 0.020; unfactorized minus 16x16 = +0.000, spread 0.020)"),
    ({"none": [0.60, 0.62, 0.61], "32x32": [0.60, 0.61, 0.62], "16x16": [0.50, 0.52, 0.51], "8x8": [0.6] * 3},
     "does not show: factorizing at the early grid beat the medium grid (accuracy factorized at 16x16 0.510, at "
     "32x32 0.610, unfactorized 0.610; 16x16 minus 32x32 = -0.100 against a seed spread of 0.020)"),
    ({"none": [0.80, 0.81, 0.82], "32x32": [0.50, 0.52, 0.51], "16x16": [0.60, 0.61, 0.62], "8x8": [0.6] * 3},
     "does not show: the medium grid beat the early one, but factorizing there cost 0.200 against the unfactorized "
     "network, more than the seed spread 0.020 (accuracy factorized at 16x16 0.610, at 32x32 0.510, unfactorized "
     "0.810; 16x16 minus 32x32 = +0.100 against a seed spread of 0.020)"),
    ({"none": [0.60, 0.62, 0.61], "32x32": [0.45, 0.60, 0.52], "16x16": [0.50, 0.62, 0.55], "8x8": [0.6] * 3},
     "inconclusive: spread over seeds larger than the effect (accuracy factorized at 16x16 0.557, at 32x32 0.523, "
     "unfactorized 0.610; 16x16 minus 32x32 = +0.033 against a seed spread of 0.150)"),
    ({"none": [0.11, 0.12, 0.10], "32x32": [0.50, 0.52, 0.51], "16x16": [0.60, 0.61, 0.62], "8x8": [0.6] * 3},
     "inconclusive: none did not learn beyond chance (mean accuracy <= 0.128: chance 0.1 + 3 binomial s.e. on 1000 "
     "images)"),
    ({"none": [0.6, 0.6], "8x8": [0.5, 0.5]},
     "inconclusive: the variants do not include the unfactorized network, a factorized grid in 12-20 and an earlier "
     "(larger) one"),
])
def test_verdict_on_hand_made_frames(accuracies, expected):
    summary, final = _frames(accuracies)
    assert fg.verdict(summary, final, n_val=1000) == expected


def test_section_renders(tiny_run, monkeypatch, tmp_path):
    import matplotlib.pyplot as plt

    folder, _ = tiny_run
    monkeypatch.setitem(fg.CONFIGS, "quick", TINY)
    monkeypatch.setattr(fg_section, "default_results_dir", lambda *_: folder)
    section = fg_section.section("quick", 0)
    assert isinstance(section, Section)
    assert section.verdict.split(":")[0] in {"shows", "does not show", "inconclusive"}
    assert list(section.tables[0].frame.columns) == fg.SUMMARY_COLUMNS
    assert len(section.tables[1].frame) == 4
    assert "width_mult 0.125" in section.text and "2 steps" in section.text
    for figure in section.figures:
        drawn = figure.draw()
        assert isinstance(drawn, plt.Figure) and drawn.axes
        plt.close(drawn)
