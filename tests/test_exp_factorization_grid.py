"""The factorisation-by-grid-size experiment: tiers, arms, the result schema, resumability, params and MACs by
closed form, the three claims on fixed frames (every verdict word), and the section with its claims.

The science runs in the standard tier (``inception-lab report --tier standard``); here a tiny config trains for
two steps.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis.experiments import factorization_grid as fg
from analysis.experiments import load_experiment, resolve_config
from analysis.experiments.arms import RUN_COLUMNS
from analysis.experiments.runner import CPU_QUICK, GPU_FULL
from analysis.experiments.verdict import minimum_detectable_effect
from analysis.report.document import Section
from analysis.report.sections import factorization_grid as fg_section
from analysis.report.tables import render
from inception_models.small_inception import SMALL_INCEPTION_STAGES, stage_grid_sizes

from helpers import small_inception_params

TINY = {**fg.CONFIGS["quick"], "width_mult": 0.125, "factorized": ((32, 0), (32, 1), (48, 1)), "seeds": 2,
        "lrs": (0.01, 0.02), "n_train": 32, "n_val": 20, "steps": 2, "batch_size": 16, "log_every": 1,
        "warmup_steps": 0, "workers": 1}
ARMS = ["32px none", "32px stage 0", "32px stage 1", "48px none", "48px stage 1"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fg")
    return folder, fg.run(TINY, results_dir=folder, progress=False)


# ------------------------------------------------------------------------------------------------- the tiers
def test_tiers_share_keys_and_hold_the_claims_arms():
    assert set(fg.CONFIGS) == {"quick", "standard", "full"}
    assert set(fg.CONFIGS["quick"]) == set(fg.CONFIGS["standard"]) == set(fg.CONFIGS["full"])
    for config in fg.CONFIGS.values():
        assert {fg.MEDIUM, fg.EARLY} <= set(config["factorized"])
        assert config["branch_kernel"] >= 5  # the paper's n >= 5, not the 3x3
    standard = fg.CONFIGS["standard"]
    assert standard["seeds"] >= 5 and len(standard["lrs"]) >= 2
    assert fg.LARGE in fg.CONFIGS["quick"]["factorized"] and fg.LARGE in fg.CONFIGS["full"]["factorized"]
    full_grids = {stage_grid_sizes(size)[stage] for size, stage in fg.CONFIGS["full"]["factorized"]}
    assert min(full_grids) == 8 and max(full_grids) == 64 and {12, 16} <= full_grids
    assert {k: standard[k] for k in CPU_QUICK} == CPU_QUICK
    assert {k: fg.CONFIGS["full"][k] for k in GPU_FULL} == GPU_FULL
    assert load_experiment("factorization_grid") is fg
    assert resolve_config(fg, "standard", seeds=6)["seeds"] == 6


def test_the_claims_arms_see_the_grids_they_are_named_for():
    grid = {arm: stage_grid_sizes(size)[stage] for arm, (size, stage) in
            (("medium", fg.MEDIUM), ("early", fg.EARLY), ("large", fg.LARGE))}
    assert grid == {"medium": 16, "early": 32, "large": 24}
    lo, hi = fg.PAPER_GRID_RANGE
    assert lo <= grid["medium"] <= hi < grid["large"] < grid["early"]
    assert fg.MEDIUM[1] == fg.LARGE[1] and fg.MEDIUM[0] != fg.LARGE[0]  # same stage (depth), two grids


def test_arms_per_input_size_pair_with_the_unfactorised_net():
    arms = fg.make_arms(TINY)
    assert {size: [a.name for a in group] for size, group in arms.items()} == {
        32: ARMS[:3], 48: ARMS[3:]}
    base, stage0 = arms[32][0], arms[32][1]
    assert base.share_with is None and base.knobs == {"width_mult": 0.125, "branch_kernel": 5,
                                                      "factorize_stages": []}
    assert stage0.share_with == "32px none" and stage0.knobs["factorize_stages"] == [0]
    assert arms[48][1].share_with == "48px none"


@pytest.mark.parametrize("change, message", [
    ({"factorized": ((32, 3),)}, "factorized must list"),
    ({"factorized": ((16, 1),)}, "factorized must list"),
    ({"factorized": ()}, "factorized must list"),
    ({"factorized": ((32, 1), (32, 1))}, "twice"),
])
def test_bad_config_is_named(change, message):
    with pytest.raises(ValueError, match=message):
        fg.make_arms({**TINY, **change})
    config = dict(TINY)
    del config["branch_kernel"]
    with pytest.raises(ValueError, match="lacks"):
        fg.make_arms(config)


# ------------------------------------------------------------------------------------------ runs and counts
def test_tuning_then_seeds_schema(tiny_run):
    _, results = tiny_run
    runs = fg.run_table(results)
    assert list(runs.columns) == RUN_COLUMNS + fg.RUN_META
    # 5 arms x (2 tuning rates + 2 seeds); the tuning runs are judged on the held-out test split.
    assert len(runs) == 20
    assert sorted(runs.groupby("stage").size().items()) == [("seed", 10), ("tune", 10)]
    tune_points = results[results["stage"] == "tune"]
    assert set(tune_points["eval_split"]) == {"test"} and set(results[results["stage"] == "seed"]["eval_split"]) == {
        "val"}
    by_arm = runs.groupby("arm").first()
    assert by_arm.loc["32px stage 0", "grid"] == 32 and by_arm.loc["48px stage 1", "grid"] == 24
    assert math.isnan(by_arm.loc["48px none", "grid"]) and math.isnan(by_arm.loc["48px none", "factorized_stage"])
    assert (runs["cpu_s"] > 0).all() and runs["final_val_accuracy"].between(0, 1).all()


def test_second_run_trains_nothing(tiny_run, monkeypatch):
    folder, first = tiny_run

    def fail(point):
        raise AssertionError("a finished point ran again")

    monkeypatch.setattr(fg, "run_point", fail)
    again = fg.run(TINY, results_dir=folder, progress=False)
    pd.testing.assert_frame_equal(first, again)


def _conv_saving(size: int, stage: int, n: int, width_mult: float) -> int:
    """Conv MACs an n x n branch costs above its 1 x n + n x 1 factorisation, summed over the modules of one stage
    (n^2 c_in c against n c (c_in + c) per position), by hand from Fig. 3's widths."""
    w = lambda c: max(1, round(c * width_mult))  # noqa: E731
    c_in, saving = w(96), 0
    for s, (modules, downsample) in enumerate(SMALL_INCEPTION_STAGES):
        grid = stage_grid_sizes(size)[s]
        for ch1, ch3 in modules:
            if s == stage:
                # The factorised pair's extra BN (on the 1 x n's output): 2 MACs per element, fvcore's convention.
                saving += grid ** 2 * (n * n * c_in * w(ch3) - n * w(ch3) * (c_in + w(ch3)) - 2 * w(ch3))
            c_in = w(ch1) + w(ch3)
        if downsample is not None:
            c_in += w(downsample)
    return saving


def test_costs_match_closed_forms():
    cost = fg.costs(TINY).set_index("arm")
    for arm, (size, stage) in {"32px stage 0": (32, 0), "32px stage 1": (32, 1), "48px stage 1": (48, 1)}.items():
        assert cost.loc[arm, "params"] == small_inception_params(width_mult=0.125, branch_kernel=5,
                                                                 factorize_stages=(stage,))
        base = cost.loc[f"{size}px none"]
        assert base["macs"] - cost.loc[arm, "macs"] == _conv_saving(size, stage, 5, 0.125)
    assert cost.loc["32px none", "params"] == cost.loc["48px none", "params"] == small_inception_params(
        width_mult=0.125, branch_kernel=5)


# ---------------------------------------------------------------------------------- the claims on fixed frames
def _runs(accuracy: dict[str, list[float]], failed: dict[str, list[int]] | None = None) -> pd.DataFrame:
    rows = []
    for arm, values in accuracy.items():
        size, rest = arm.split("px ")
        stage = math.nan if rest == "none" else float(rest.split()[-1])
        for seed, value in enumerate(values):
            rows.append({"stage": "seed", "arm": arm, "seed": seed, "lr": 0.02, "final_val_accuracy": value,
                         "learned": seed not in (failed or {}).get(arm, []), "image_size": int(size),
                         "factorized_stage": stage,
                         "grid": math.nan if math.isnan(stage) else stage_grid_sizes(int(size))[int(stage)]})
    return pd.DataFrame(rows)


BASE = [0.80, 0.82, 0.78, 0.81, 0.79]


def _claims(runs: pd.DataFrame) -> dict[str, tuple[str, float]]:
    return {c.claim.split()[0] + str(i): (c.verdict.word, c.verdict.row()["effect"])
            for i, c in enumerate(fg.claims(runs))}


def test_claims_in_the_papers_direction():
    runs = _runs({"32px none": BASE, "32px stage 0": [b - 0.05 - 0.01 * (i % 2) for i, b in enumerate(BASE)],
                  "32px stage 1": [b - 0.01 + 0.005 * (i % 2) for i, b in enumerate(BASE)],
                  "48px none": BASE, "48px stage 1": [b - 0.04 + 0.01 * (i % 3) for i, b in enumerate(BASE)]})
    decided = fg.claims(runs)
    assert [c.verdict.word for c in decided] == ["supports"] * 4
    assert [c.experiment for c in decided] == [fg.NAME] * 4 and all(fg.PAPER == c.paper for c in decided)
    # Claim 1 by hand: unfactorised - stage 0 per seed = 0.05 + 0.01 * (i odd).
    assert decided[0].verdict.row()["effect"] == pytest.approx(np.mean([0.05 + 0.01 * (i % 2) for i in range(5)]))
    # Claim 2: stage 1 - unfactorised + margin = 0.01 + 0.005 * (i odd); its interval is the difference's, shifted.
    diffs = np.array([-0.01 + 0.005 * (i % 2) for i in range(5)])
    half = stats.t.ppf(0.975, 4) * diffs.std(ddof=1) / math.sqrt(5)
    row = decided[1].verdict.row()
    assert row["effect"] == pytest.approx(diffs.mean() + fg.NO_LOSS_MARGIN)
    assert row["ci_low"] == pytest.approx(diffs.mean() - half + fg.NO_LOSS_MARGIN)
    assert row["mde"] == pytest.approx(minimum_detectable_effect(diffs.std(ddof=1), 5))  # the margin shifts, not widens
    # Claim 3: (stage 1) - (stage 0) per seed = 0.04 + 0.015 * (i odd).
    diffs = np.array([0.04 + 0.015 * (i % 2) for i in range(5)])
    half = stats.t.ppf(0.975, 4) * diffs.std(ddof=1) / math.sqrt(5)
    row = decided[2].verdict.row()
    assert row["effect"] == pytest.approx(diffs.mean()) and row["ci_low"] == pytest.approx(diffs.mean() - half)
    # Claim 4: cost at 16 (-0.01 + 0.005 (i odd)) minus cost at 24 (-0.04 + 0.01 (i mod 3)).
    expected = np.mean([(-0.01 + 0.005 * (i % 2)) - (-0.04 + 0.01 * (i % 3)) for i in range(5)])
    assert decided[3].verdict.row()["effect"] == pytest.approx(expected)
    assert decided[3].verdict.arms_learned == "20/20"


def test_claims_against_the_paper():
    flipped = _runs({"32px none": [b - 0.06 for b in BASE], "32px stage 0": [b + 0.001 * i for i, b in enumerate(BASE)],
                     "32px stage 1": [b - 0.05 + 0.002 * i for i, b in enumerate(BASE)],
                     "48px none": BASE, "48px stage 1": [b + 0.03 - 0.002 * i for i, b in enumerate(BASE)]})
    # Stage 0 above the unfactorised net by 0.06 + 0.001 i (claim 1), stage 1 below stage 0 by 0.05 - 0.001 i
    # (claim 3); claim 2 is in the paper's direction here (stage 1 above the unfactorised net by 0.01 + 0.002 i);
    # claim 4: the change at 16 (0.01 + 0.002 i) is below the change at 24 (0.03 - 0.002 i).
    assert [c.verdict.word for c in fg.claims(flipped)] == ["contradicts", "supports", "contradicts", "contradicts"]


def test_no_loss_is_decided_against_its_margin_not_against_zero():
    """A loss of 1 pp +- a little is within a 2 pp margin (supports) and outside a 0.5 pp one (contradicts); a
    noisy zero difference straddles the margin (no effect detected), never support."""
    small_loss = _runs({"32px none": BASE, "32px stage 1": [b - 0.01 + 0.001 * (i % 2) for i, b in enumerate(BASE)]})
    assert fg.claims(small_loss)[1].verdict.word == "supports"
    assert fg.claims(small_loss, margin=0.005)[1].verdict.word == "contradicts"
    big_loss = _runs({"32px none": BASE, "32px stage 1": [b - 0.05 + 0.002 * i for i, b in enumerate(BASE)]})
    assert fg.claims(big_loss)[1].verdict.word == "contradicts"
    noisy = _runs({"32px none": BASE, "32px stage 1": [b + d for b, d in zip(BASE, [0.03, -0.04, 0.02, -0.03, 0.0])]})
    row = fg.claims(noisy)[1].verdict.row()
    assert row["verdict"] == "no effect detected" and row["ci_low"] < 0 < row["ci_high"]
    assert row["effect"] == pytest.approx(np.mean([0.03, -0.04, 0.02, -0.03, 0.0]) + fg.NO_LOSS_MARGIN)


def test_claims_without_effect():
    noisy = _runs({"32px none": BASE, "32px stage 0": [b + d for b, d in zip(BASE, [0.02, -0.02, 0.01, -0.01, 0.0])],
                   "32px stage 1": [b + d for b, d in zip(BASE, [0.04, -0.05, 0.03, -0.04, 0.02])],
                   "48px none": BASE,
                   "48px stage 1": [b + d - 0.02 for b, d in zip(BASE, [0.02, -0.01, 0.01, -0.02, 0.0])]})
    for claim in fg.claims(noisy):
        assert claim.verdict.word == "no effect detected", claim.claim
        row = claim.verdict.row()
        assert row["ci_low"] < 0 < row["ci_high"] and row["mde"] > 0


def test_an_arm_that_did_not_learn_makes_its_claims_not_tested():
    runs = _runs({arm: BASE for arm in ARMS}, failed={"48px none": [3]})
    decided = fg.claims(runs)
    # Equal arms: no effect on claims 1 and 3; claim 2 (loss 0, margin 2 pp, no spread) supports; 4 is gated.
    assert [c.verdict.word for c in decided] == ["no effect detected", "supports", "no effect detected",
                                                 "not tested"]
    assert decided[3].verdict.reason == "did not pass the learnability gate: 48px none in seed 3"
    assert decided[3].verdict.arms_learned == "19/20"
    gated = fg.claims(_runs({arm: BASE for arm in ARMS}, failed={"32px stage 1": [0, 2]}))
    assert [c.verdict.word for c in gated] == ["no effect detected", "not tested", "not tested", "not tested"]
    assert gated[1].verdict.reason == "did not pass the learnability gate: 32px stage 1 in seeds 0, 2"
    missing = fg.claims(_runs({arm: BASE for arm in ARMS[:3]}))
    assert missing[3].verdict.word == "not tested" and "48px stage 1, 48px none" in missing[3].verdict.reason


def test_arm_table_costs_are_paired_intervals():
    stage0 = [b - d for b, d in zip(BASE, [0.03, 0.05, 0.04, 0.06, 0.02])]
    runs = _runs({"32px none": BASE, "32px stage 0": stage0})
    cost = pd.DataFrame({"arm": ["32px none", "32px stage 0"], "params": [10, 9], "macs": [100, 80]})
    table = fg.arm_table(runs, cost)
    assert list(table.columns) == fg.ARM_COLUMNS and table["arm"].tolist() == ["32px none", "32px stage 0"]
    row = table.iloc[1]
    diffs = np.array(stage0) - np.array(BASE)
    half = stats.t.ppf(0.975, 4) * diffs.std(ddof=1) / math.sqrt(5)
    assert row["cost"] == pytest.approx(-0.04) and row["cost_high"] == pytest.approx(-0.04 + half)
    assert (row["learned"], row["params"], row["macs"], row["grid"]) == ("5/5", 9, 80, 32)
    assert (row["params_ratio"], row["macs_ratio"]) == (pytest.approx(0.9), pytest.approx(0.8))
    assert math.isnan(table.iloc[0]["cost"]) and pd.isna(table.iloc[0]["grid"])
    assert table.iloc[0]["macs_ratio"] == 1.0


# ------------------------------------------------------------------------------------------------- the section
def test_section_renders_with_its_claims(tiny_run, monkeypatch):
    import matplotlib.pyplot as plt

    folder, results = tiny_run
    monkeypatch.setitem(fg.CONFIGS, "quick", TINY)
    monkeypatch.setattr(fg_section, "default_results_dir", lambda *_: folder)
    section = fg_section.section("quick", 0)
    assert isinstance(section, Section)
    expected = fg.claims(fg.run_table(results))
    summary = lambda claims: [(c.claim, c.measure, c.verdict.word, c.verdict.arms_learned) for c in claims]  # noqa
    assert summary(section.claims) == summary(expected) and len(expected) == 4
    assert all(c.verdict.word in ("supports", "contradicts", "no effect detected", "not tested")
               for c in section.claims)
    assert all(f"({i}) {c.claim}: {c.verdict.word}" in section.verdict for i, c in enumerate(expected, 1))
    arms = section.tables[0]
    assert arms.frame["arm"].tolist() == ARMS and arms.columns is fg_section.ARM_DISPLAY
    rendered = render(arms.frame, "markdown", columns=arms.columns)
    assert "MACs / unfact." in rendered and "Change vs unfact. (pp) [95% CI]" in rendered and "| none" in rendered
    tuning = section.tables[1]
    assert tuning.frame["chosen"].notna().all() and "Test acc. at lr 0.01 (%)" in render(
        tuning.frame, "markdown", columns=tuning.columns)
    assert not section.tables[-1].inline and len(section.tables[-1].frame) == 20
    assert "width 0.125" in section.text and "2 steps" in section.text and "smoke test" in section.text
    assert "non-inferiority" in section.text and "28%" in section.text
    for figure in section.figures:
        drawn = figure.draw()
        assert isinstance(drawn, plt.Figure) and drawn.axes
        plt.close(drawn)


def test_the_figure_plots_ratios_and_marks_chance(tiny_run):
    """The cost panel is a ratio (0-1.1, linear), with no 12-20 shading; the accuracy panel has a chance line."""
    import matplotlib.pyplot as plt

    _, results = tiny_run
    runs = fg.run_table(results)
    arms = fg.arm_table(runs, fg.costs(TINY))
    fig = fg_section._grid_figure(runs, arms, fg.NO_LOSS_MARGIN)
    accuracy, change, saving = fig.axes
    assert any(line.get_ydata()[0] == pytest.approx(10.0) for line in accuracy.get_lines())  # chance, in %
    assert saving.get_yscale() == "linear" and saving.get_ylim() == (0, 1.1)
    plotted = np.concatenate([c.get_offsets()[:, 1] for c in saving.collections])
    assert np.all((plotted > 0) & (plotted < 1))
    assert not change.patches and not saving.patches  # no shaded band (an axvspan is a patch)
    assert any(line.get_ydata()[0] == pytest.approx(-100 * fg.NO_LOSS_MARGIN) for line in change.get_lines())
    plt.close(fig)
