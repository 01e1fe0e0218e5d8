"""The training-claim experiments still on the old spread rule (residual_speedup, bn_speedup) and their shared
helpers: config plumbing, result schemas, resumability, divergence as a result, the verdict rules on hand-made
frames, and each section rendered from a tiny config. Not the science. (label_smoothing and aux_heads moved to
the verdict protocol: tests/test_exp_label_smoothing.py and tests/test_exp_aux_heads.py.)"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from analysis.experiments import bn_speedup as bs
from analysis.experiments import residual_speedup as rs
from analysis.experiments.spread_rule import (
    DOES_NOT_SHOW,
    INCONCLUSIVE_ONE_SEED,
    INCONCLUSIVE_SPREAD,
    SHOWS,
    auto_target,
    censored_steps,
    compare,
    finite_evals,
    learned_threshold,
    steps_to_target,
)
from analysis.report import sections
from analysis.report.build import render_section
from analysis.report.document import Section
from analysis.training.sweep import point_id
from analysis.experiments import spread_rule as shared

TINY_TRAIN = dict(n_train=32, n_val=16, steps=4, batch_size=8, log_every=2, eval_every=2, workers=1)
TINY = {
    "residual_speedup": {**rs.CONFIGS["quick"], **TINY_TRAIN, "width_mult": 0.0625, "block_counts": (0, 0, 1),
                         "seeds": 1},
    # A rate a billion times the base: both norms diverge, which must be recorded, not raised.
    "bn_speedup": {**bs.CONFIGS["quick"], **TINY_TRAIN, "width_mult": 0.0625, "multipliers": (1, 1e9), "seeds": 1},
}
MODULES = {"residual_speedup": rs, "bn_speedup": bs}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """Each experiment run once on its tiny config; the tests below reuse the results folder."""
    out = {}
    for name, module in MODULES.items():
        folder = tmp_path_factory.mktemp(name)
        out[name] = (folder, module.run(TINY[name], results_dir=folder, progress=False))
    return out


# ============================================================================================ shared helpers
def test_compare_words_follow_effect_against_spread():
    shows = compare([0.50, 0.52], [0.40, 0.41])
    assert shows.word == SHOWS
    assert shows.effect == pytest.approx(0.105) and shows.spread == pytest.approx(0.02) and shows.seeds == 2
    assert compare([0.40, 0.41], [0.50, 0.52]).word == DOES_NOT_SHOW
    assert compare([0.45, 0.60], [0.40, 0.50]).word == INCONCLUSIVE_SPREAD  # 0.075 < 0.15
    assert compare([0.5], [0.4]).word == INCONCLUSIVE_ONE_SEED
    assert compare([200, 200], [200, 200], higher_is_better=False).word == DOES_NOT_SHOW
    # Lower is better (steps): 100 vs 180 steps with a spread of 20 shows; a floor of 100 steps does not.
    assert compare([90, 110], [170, 190], higher_is_better=False).word == SHOWS
    assert compare([90, 110], [170, 190], higher_is_better=False, min_effect=100).word == DOES_NOT_SHOW
    assert compare([0.5, float("nan"), 0.52], [0.4, 0.41]).seeds == 2
    with pytest.raises(ValueError, match="at least one value"):
        compare([], [0.1])


@pytest.mark.parametrize("effect, spread, min_effect, seeds, word", [
    (0.10, 0.02, 0.0, 2, shared.SHOWS),
    (0.10, 0.0, 0.0, 3, shared.SHOWS),  # no spread: any positive effect counts
    (0.05, 0.02, 0.05, 2, shared.SHOWS),  # the floor itself is enough
    (0.04, 0.02, 0.05, 2, shared.DOES_NOT_SHOW),  # beyond the spread but below the floor: too small to matter
    (-0.10, 0.02, 0.0, 2, shared.DOES_NOT_SHOW),  # the opposite holds
    (0.0, 0.0, 0.0, 2, shared.DOES_NOT_SHOW),  # identical in every seed
    (0.02, 0.02, 0.0, 2, shared.INCONCLUSIVE_SPREAD),  # an effect equal to the spread is not beyond it
    (-0.01, 0.02, 0.0, 2, shared.INCONCLUSIVE_SPREAD),
    (0.0, 0.02, 0.0, 2, shared.INCONCLUSIVE_SPREAD),
    (0.50, 0.0, 0.0, 1, shared.INCONCLUSIVE_ONE_SEED),  # one seed: no spread to judge against, however large
])
def test_verdict_word_on_every_branch(effect, spread, min_effect, seeds, word):
    assert shared.verdict_word(effect, spread, min_effect=min_effect, seeds=seeds) == word


def test_verdict_word_refuses_a_nan_effect_and_compare_an_empty_arm():
    with pytest.raises(ValueError, match="the effect is NaN: an arm has no values to compare"):
        shared.verdict_word(math.nan, 0.1)
    with pytest.raises(ValueError, match="at least one value in each arm, got 2 and 0"):
        shared.compare([0.1, 0.2], [math.nan])


def test_compare_signs_spreads_and_describes():
    """Lower is better (steps): the effect is B's mean minus A's; the spread is the wider arm's range; the seeds
    the fewer after NaNs are dropped; describe() is the verdict line's fragment."""
    steps = shared.compare([90, 110, math.nan], [170, 190, 210], higher_is_better=False)
    assert (steps.mean_a, steps.mean_b, steps.effect, steps.spread, steps.seeds, steps.word) == (
        100.0, 190.0, 90.0, 40.0, 2, shared.SHOWS)
    assert steps.describe("steps to target", fmt=".0f") == (
        "steps to target 100 vs 190 (effect +90, seed spread 40, 2 seeds)")
    one = shared.compare([0.5], [0.4, 0.6])
    assert one.describe("accuracy", unit="%") == ("accuracy 0.500% vs 0.500% (effect +0.000%, seed spread 0.200%, "
                                                  "1 seed)")
    assert one.word == shared.INCONCLUSIVE_ONE_SEED


def test_steps_to_target_censoring_and_auto_target():
    curve = pd.DataFrame({"step": [30, 10, 20], "accuracy": [0.5, 0.1, 0.31]})
    assert steps_to_target(curve, 0.3) == 20.0
    assert math.isnan(steps_to_target(curve, 0.9))
    assert censored_steps(math.nan, 200) == 200.0 and censored_steps(40.0, 200) == 40.0
    assert learned_threshold(900) == pytest.approx(0.13)  # 0.1 + 3 * sqrt(0.09 / 900)
    assert auto_target([0.5, 0.3], fraction=0.9, n_val=900) == pytest.approx(0.36)
    assert auto_target([0.1, 0.1], fraction=0.9, n_val=900) == pytest.approx(0.13)  # floored
    evals = pd.DataFrame({"step": [1, 2], "loss": [float("nan"), 2.0], "accuracy": [0.9, 0.1]})
    assert finite_evals(evals)["step"].tolist() == [2]


# ================================================================================================= configs
def test_quick_and_full_configs_make_the_intended_points():
    quick = rs.make_points(rs.CONFIGS["quick"])
    assert len(quick) == 2 * 3 and {p["model"] for p in quick} == {"inception_resnet_v2_paper"}
    full = rs.make_points(rs.CONFIGS["full"])
    assert len(full) == 2 * 3 * 3 and {p["model"] for p in full} >= {"inception_v3", "inception_v4"}
    points = bs.make_points(bs.CONFIGS["quick"])
    assert len(points) == 2 * 3 * 2
    assert sorted({p["lr"] for p in points}) == pytest.approx([0.002, 0.01, 0.06])
    for module in MODULES.values():
        assert {"quick", "full"} <= set(module.CONFIGS)
        points = module.make_points(module.CONFIGS["full"])
        assert len({point_id(p) for p in points}) == len(points)


@pytest.mark.parametrize("module, change, message", [
    (rs, {"arms": ("no_shortcut", "inception")}, "residual"),
    (rs, {"variants": ("v3",)}, "variants"),
    (rs, {"image_size": 64}, "75"),
    (rs, {"eval_every": 25}, "multiple of log_every"),
    (bs, {"norms": ("bn",)}, "both"),
    (bs, {"multipliers": (5, 30)}, "include 1"),
    (bs, {"none_init": "lsuv"}, "none_init"),
])
def test_bad_configs_are_clear_errors(module, change, message):
    with pytest.raises(ValueError, match=message):
        module.make_points({**module.CONFIGS["quick"], **change})


@pytest.mark.parametrize("module", list(MODULES.values()))
def test_a_config_missing_keys_is_a_clear_error(module):
    with pytest.raises(ValueError, match="lacks"):
        module.make_points({"seed": 0})


# ============================================================================================ running: schema
def test_residual_speedup_schema_and_cost(tiny_runs):
    _, frame = tiny_runs["residual_speedup"]
    assert list(frame.columns) == ["point_id"] + rs.RESULT_COLUMNS
    assert frame.groupby("arm")["split"].apply(list).to_dict() == {
        "residual": ["train", "val", "train", "val"], "no_shortcut": ["train", "val", "train", "val"]}
    # The no-shortcut control is the same network: identical parameters and MACs.
    cost = frame.groupby("arm")[["params", "gmacs"]].first()
    assert cost.loc["residual", "params"] == cost.loc["no_shortcut", "params"] > 0
    assert cost.loc["residual", "gmacs"] == pytest.approx(cost.loc["no_shortcut", "gmacs"])
    assert frame["cpu_s"].notna().all()  # val rows take the CPU time of the train row at their step
    seeds = rs.per_seed(frame, target=0.5, budget=4)
    assert list(seeds.columns) == rs.PER_SEED_COLUMNS and len(seeds) == 2
    assert list(rs.summarise(seeds).columns) == rs.SUMMARY_COLUMNS


def test_bn_speedup_records_divergence_as_a_result(tiny_runs):
    _, frame = tiny_runs["bn_speedup"]
    assert list(frame.columns) == ["point_id"] + bs.RESULT_COLUMNS
    seeds = bs.per_seed(frame, target=0.5, budget=4)
    assert list(seeds.columns) == bs.PER_SEED_COLUMNS and len(seeds) == 4
    base = seeds[seeds["multiplier"] == 1.0]
    huge = seeds[seeds["multiplier"] == 1e9]
    assert not base["diverged"].any() and huge["diverged"].all()
    assert ((huge["diverged_step"] >= 1) & (huge["diverged_step"] <= 4)).all()
    assert not huge["reached"].any()
    summary = bs.summarise(seeds)
    assert list(summary.columns) == bs.SUMMARY_COLUMNS and summary["diverged"].tolist() == [0, 1, 0, 1]


# ================================================================================================ resuming
@pytest.mark.parametrize("name", list(MODULES))
def test_a_second_run_runs_nothing_new(tiny_runs, monkeypatch, name):
    folder, frame = tiny_runs[name]
    module = MODULES[name]

    def must_not_run(point):
        raise AssertionError(f"point {point} ran again")

    monkeypatch.setattr(module, "run_point", must_not_run)
    again = module.run(TINY[name], results_dir=folder, progress=False)
    pd.testing.assert_frame_equal(again, frame)


# ================================================================================================ verdicts
def _rs_seeds(res_steps, other_steps, other="no_shortcut", best=0.5):
    rows = []
    for arm, steps in (("residual", res_steps), (other, other_steps)):
        for seed, s in enumerate(steps):
            rows.append({"variant": "v2", "arm": arm, "seed": seed, "target": 0.3, "steps_to_target": s,
                         "reached": not math.isnan(s), "final_val_accuracy": best, "best_val_accuracy": best,
                         "diverged": False})
    return pd.DataFrame(rows)


RS_FINAL = ("higher accuracy at the end of the budget: does not show: final validation accuracy 0.500 vs 0.500 "
            "(effect +0.000, seed spread 0.000, 2 seeds)")
NAN = math.nan


@pytest.mark.parametrize("seeds, expected", [
    (_rs_seeds([100, 120], [300, NAN]), "shows (target validation accuracy 0.300; v2 vs same, no shortcut: shows: "
     f"steps to target 110 vs 450 (effect +340, seed spread 300, 2 seeds), reached 2/2 vs 1/2; {RS_FINAL})"),
    (_rs_seeds([300, 350], [100, 120]), "does not show (target validation accuracy 0.300; v2 vs same, no shortcut: "
     "does not show: steps to target 325 vs 110 (effect -215, seed spread 50, 2 seeds), reached 2/2 vs 2/2; "
     f"{RS_FINAL})"),
    (_rs_seeds([100, 400], [200, 300]), "inconclusive: spread over seeds larger than the effect (target validation "
     "accuracy 0.300; v2 vs same, no shortcut: inconclusive: spread over seeds larger than the effect: steps to target "
     f"250 vs 250 (effect +0, seed spread 300, 2 seeds), reached 2/2 vs 2/2; {RS_FINAL})"),
    (_rs_seeds([NAN, NAN], [NAN, NAN]), "inconclusive: no run reached the target (target validation accuracy 0.300; "
     "v2: no run reached the target 0.300 in 600 steps)"),
    (_rs_seeds([NAN, NAN], [NAN, NAN], best=0.11), "inconclusive: the networks did not learn beyond chance (target "
     "validation accuracy 0.300; v2: the residual net did not learn beyond chance (best validation accuracy 0.110, "
     "chance + 3 SE 0.140))"),
    # With the paper's pair present, the headline compares against it.
    (pd.concat([_rs_seeds([100, 120], [130, 140]), _rs_seeds([100, 120], [300, 320], other="inception")])
     .drop_duplicates(subset=["arm", "seed"]), "shows (target validation accuracy 0.300; v2 vs Inception (paper "
     "pair): shows: steps to target 110 vs 310 (effect +200, seed spread 20, 2 seeds), reached 2/2 vs 2/2; "
     f"{RS_FINAL}; v2 vs same, no shortcut: shows: steps to target 110 vs 135 (effect +25, seed spread 20, 2 seeds), "
     f"reached 2/2 vs 2/2; {RS_FINAL})"),
], ids=["shows", "does_not_show", "spread", "none_reached", "chance", "paper_pair"])
def test_residual_speedup_verdicts(seeds, expected):
    assert rs.verdict(seeds, budget=600, n_val=500) == expected


def _bs_seeds(cells):
    rows = []
    for (norm, mult), values in cells.items():
        for seed, (steps, diverged) in enumerate(values):
            rows.append({"norm": norm, "multiplier": float(mult), "lr": 0.002 * mult, "seed": seed, "target": 0.2,
                         "steps_to_target": steps, "reached": not math.isnan(steps),
                         "best_val_accuracy": 0.1 if math.isnan(steps) else 0.4, "diverged": diverged})
    return pd.DataFrame(rows)


BS_GOOD = {("bn", 1): [(100, False), (120, False)], ("none", 1): [(NAN, False), (NAN, False)],
           ("bn", 5): [(40, False), (60, False)], ("none", 5): [(NAN, True), (NAN, False)]}
BS_AT_1X = ("fewer steps at 1x: shows: steps to target BN vs no BN 110 vs 200 (effect +90, seed spread 20, 2 seeds) "
            "(BN reached 2/2, diverged 0/2, best accuracy 0.400; no BN reached 0/2, diverged 0/2, best accuracy 0.100)")
BS_AT_5X = ("5x usable: shows: steps BN vs no BN 50 vs 200 (effect +150, seed spread 20, 2 seeds) (BN reached 2/2, "
            "diverged 0/2, best accuracy 0.400; no BN reached 0/2, diverged 1/2, best accuracy 0.100)")
BS_BOUNDS = ("the network without BN never reached the target at any rate, so the step ratios are lower bounds "
             "(budget 200)")


@pytest.mark.parametrize("cells, expected", [
    (BS_GOOD, f"shows (target validation accuracy 0.200; {BS_AT_1X}; {BS_AT_5X}; BN 5x faster than BN 1x: shows (50 "
     f"vs 110 steps); {BS_BOUNDS})"),
    ({**BS_GOOD, ("bn", 5): [(NAN, True), (NAN, True)]}, "does not show (target validation accuracy 0.200; "
     f"{BS_AT_1X}; 5x usable: does not show: steps BN vs no BN 200 vs 200 (effect +0, seed spread 0, 2 seeds) (BN "
     "reached 0/2, diverged 2/2, best accuracy 0.100; no BN reached 0/2, diverged 1/2, best accuracy 0.100); BN 5x "
     f"faster than BN 1x: does not show (200 vs 110 steps); {BS_BOUNDS})"),
    ({**BS_GOOD, ("bn", 1): [(20, False), (190, False)], ("none", 1): [(150, False), (NAN, False)]},
     "inconclusive: spread over seeds larger than the effect (target validation accuracy 0.200; fewer steps at 1x: "
     "inconclusive: spread over seeds larger than the effect: steps to target BN vs no BN 105 vs 175 (effect +70, "
     "seed spread 170, 2 seeds) (BN reached 2/2, diverged 0/2, best accuracy 0.400; no BN reached 1/2, diverged 0/2, "
     f"best accuracy 0.250); {BS_AT_5X}; BN 5x faster than BN 1x: inconclusive: spread over seeds larger than the "
     "effect (50 vs 105 steps))"),
    ({cell: [(NAN, False), (NAN, False)] for cell in BS_GOOD}, "inconclusive: the networks did not learn beyond chance "
     "(BN at the base rate: best validation accuracy 0.100; chance + 3 SE 0.140)"),
], ids=["shows", "does_not_show", "spread", "stuck"])
def test_bn_speedup_verdicts(cells, expected):
    assert bs.verdict(_bs_seeds(cells), budget=200, n_val=500) == expected


# ================================================================================================ sections
@pytest.mark.parametrize("name, stems", [
    ("residual_speedup", ["residual_speedup.md", "residual_speedup_curves.csv", "residual_speedup_accuracy.png",
                          "residual_speedup_loss.png", "residual_speedup_time.png"]),
    ("bn_speedup", ["bn_speedup.md", "bn_speedup_seeds.csv", "bn_speedup_accuracy.png", "bn_speedup_loss.png"]),
])
def test_section_renders_tables_figures_and_verdict(tiny_runs, tmp_path, monkeypatch, name, stems):
    folder, _ = tiny_runs[name]
    module = MODULES[name]
    monkeypatch.setitem(module.CONFIGS, "quick", {**TINY[name], "seed": 0})
    section_module = getattr(sections, name)
    monkeypatch.setattr(section_module, "default_results_dir", lambda *_: folder)
    monkeypatch.setattr(module, "run_point", lambda point: (_ for _ in ()).throw(AssertionError("ran again")))
    section = section_module.section("quick", 0)
    assert isinstance(section, Section) and section.tables and section.figures
    assert section.verdict.split(":")[0].split(" (")[0] in {"shows", "does not show", "inconclusive"}
    markdown = render_section(section, tmp_path)
    for stem in stems:
        assert (tmp_path / stem).exists(), stem
    assert "Verdict at this scale" in markdown
