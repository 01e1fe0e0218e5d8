"""The training-claim experiments label_smoothing and aux_heads (bn_speedup and residual_speedup have their own
files) and their shared helpers: config plumbing, result schemas, resumability, divergence as a result, the verdict rules on hand-made
frames, calibration and logit-gap arithmetic, and each section rendered from a tiny config. Not the science."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from analysis.experiments import aux_heads as ah
from analysis.experiments import label_smoothing as ls
from analysis.experiments.calibration import expected_calibration_error, logit_gaps, reliability_bins
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
    "label_smoothing": {**ls.CONFIGS["quick"], **TINY_TRAIN, "width_mult": 0.0625, "seeds": 1},
    "aux_heads": {**ah.CONFIGS["quick"], **TINY_TRAIN, "width_mult": 0.0625, "image_size": 32, "seeds": 1},
}
MODULES = {"label_smoothing": ls, "aux_heads": ah}


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


def test_ece_and_reliability_bins_on_hand_made_probabilities():
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.55, 0.45], [0.45, 0.55]])
    labels = torch.tensor([0, 1, 0, 0])
    bins = reliability_bins(probs, labels, bins=5)
    assert bins["count"].tolist() == [0, 0, 2, 0, 2]
    assert bins.loc[2, "confidence"] == pytest.approx(0.55) and bins.loc[2, "accuracy"] == pytest.approx(0.5)
    assert bins.loc[4, "confidence"] == pytest.approx(0.9) and bins.loc[4, "accuracy"] == pytest.approx(0.5)
    # (2/4) * |0.5 - 0.55| + (2/4) * |0.5 - 0.9|
    assert expected_calibration_error(probs, labels, bins=5) == pytest.approx(0.225)
    with pytest.raises(ValueError, match="labels"):
        reliability_bins(probs, labels[:2])


def test_logit_gaps():
    gaps = logit_gaps(torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 2.0]]))
    assert gaps["gap_to_mean"] == pytest.approx((2.5 + 1.0) / 2)
    assert gaps["gap_to_second"] == pytest.approx((2.0 + 0.0) / 2)
    assert 1 / 3 < gaps["max_prob"] < 1
    with pytest.raises(ValueError, match="logits"):
        logit_gaps(torch.zeros(4))


# ================================================================================================= configs
def test_quick_and_full_configs_make_the_intended_points():
    assert len(ls.make_points(ls.CONFIGS["quick"])) == 2 * 3
    assert {p["label_smoothing"] for p in ls.make_points(ls.CONFIGS["quick"])} == {0.0, 0.1}
    assert len(ah.make_points(ah.CONFIGS["quick"])) == 3 * 2
    for module in MODULES.values():
        assert {"quick", "full"} <= set(module.CONFIGS)
        points = module.make_points(module.CONFIGS["full"])
        assert len({point_id(p) for p in points}) == len(points)


@pytest.mark.parametrize("module, change, message", [
    (ls, {"epsilons": (0.1,)}, "baseline"),
    (ls, {"epsilons": (0.0, 1.5)}, r"\[0, 1\)"),
    (ah, {"model": "inception_v4"}, "no auxiliary heads"),
    (ah, {"arms": ("heads", "heads_bn")}, "no_heads"),
    (ah, {"steps": None, "early_fraction": 0.0}, "early_fraction"),
])
def test_bad_configs_are_clear_errors(module, change, message):
    with pytest.raises(ValueError, match=message):
        module.make_points({**module.CONFIGS["quick"], **change})


@pytest.mark.parametrize("module", list(MODULES.values()))
def test_a_config_missing_keys_is_a_clear_error(module):
    with pytest.raises(ValueError, match="lacks"):
        module.make_points({"seed": 0})


# ============================================================================================ running: schema
def test_label_smoothing_schema(tiny_runs):
    _, frame = tiny_runs["label_smoothing"]
    assert list(frame.columns) == ["point_id"] + ls.RESULT_COLUMNS
    for eps in (0.0, 0.1):
        part = frame[frame["epsilon"] == eps]
        assert part["split"].value_counts().to_dict() == {"reliability": 15, "train": 2, "val": 2, "final": 1}
    final = ls.per_seed(frame)
    assert list(final.columns) == ls.PER_SEED_COLUMNS and len(final) == 2
    assert final["ece"].between(0, 1).all() and (final["gap_to_mean"] > 0).all()
    bins = frame[frame["split"] == "reliability"]
    assert (bins.groupby("epsilon")["count"].sum() == 16).all()
    assert list(ls.summarise(frame).columns) == ls.SUMMARY_COLUMNS


def test_aux_heads_schema_and_gradient_reach(tiny_runs):
    _, frame = tiny_runs["aux_heads"]
    assert list(frame.columns) == ["point_id"] + ah.RESULT_COLUMNS
    train = frame[frame["split"] == "train"]
    assert len(train) == 3 * 2 and (train["grad_norm_lower"] > 0).all() and (train["grad_norm_first"] > 0).all()
    # With heads the trainer's loss adds 0.3 x each head's loss to the main head's: it is larger.
    with_heads = train[train["arm"] != "no_heads"]
    assert (with_heads["loss"] > with_heads["main_loss"]).all()
    no_heads = train[train["arm"] == "no_heads"]
    assert np.allclose(no_heads["loss"], no_heads["main_loss"], rtol=1e-5)
    seeds = ah.per_seed(frame, early_fraction=0.5)
    assert list(seeds.columns) == ah.PER_SEED_COLUMNS and len(seeds) == 3
    assert seeds["final_train_accuracy"].between(0, 1).all() and (seeds["early_step"] == 2).all()


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
def _ls_final(acc0, acc1, gap0=(6.0, 6.2), gap1=(3.0, 3.1), ece0=(0.10, 0.11), ece1=(0.04, 0.05)):
    rows = []
    for eps, accs, gaps, eces in ((0.0, acc0, gap0, ece0), (0.1, acc1, gap1, ece1)):
        for seed, (a, g, e) in enumerate(zip(accs, gaps, eces)):
            rows.append({"epsilon": eps, "seed": seed, "accuracy": a, "loss": 1.0, "ece": e, "gap_to_mean": g,
                         "gap_to_second": g / 2, "max_prob": 0.8, "diverged": False})
    return pd.DataFrame(rows)


# The parts of a label-smoothing verdict that _ls_final's default gaps and ECEs give in every case below.
LS_ARGUMENT = ("the paper's argument, the largest logit's lead over the others: shows: mean gap to the other logits "
               "3.05 vs 6.10 (effect +3.05, seed spread 0.20, 2 seeds)")
LS_CALIBRATION = ("calibration (not the paper's claim): shows: ECE 0.045 vs 0.105 (effect +0.060, seed spread 0.010, "
                  "2 seeds)")


@pytest.mark.parametrize("without, with_smoothing, expected", [
    ((0.50, 0.51), (0.55, 0.56), "shows: validation accuracy with eps 0.1 vs without 0.555 vs 0.505 (effect +0.050, "
     f"seed spread 0.010, 2 seeds); {LS_ARGUMENT}; {LS_CALIBRATION}"),
    ((0.50, 0.60), (0.52, 0.58), "inconclusive: spread over seeds larger than the effect: validation accuracy with "
     f"eps 0.1 vs without 0.550 vs 0.550 (effect +0.000, seed spread 0.100, 2 seeds); {LS_ARGUMENT}; {LS_CALIBRATION}"),
    ((0.56, 0.57), (0.50, 0.51), "does not show: validation accuracy with eps 0.1 vs without 0.505 vs 0.565 (effect "
     f"-0.060, seed spread 0.010, 2 seeds); {LS_ARGUMENT}; {LS_CALIBRATION}"),
    ((0.10, 0.11), (0.12, 0.10), "inconclusive: the networks did not learn beyond chance (mean validation accuracy "
     "0.110 with, 0.105 without smoothing; chance + 3 SE = 0.128)"),
])
def test_label_smoothing_verdicts(without, with_smoothing, expected):
    assert ls.verdict(_ls_final(without, with_smoothing), n_val=1000) == expected


def _ah_seeds(none, heads, bn, early=((0.2, 0.21), (0.2, 0.22), (0.2, 0.2))):
    rows = []
    for (arm, accs), earlies in zip((("no_heads", none), ("heads", heads), ("heads_bn", bn)), early):
        for seed, (a, e) in enumerate(zip(accs, earlies)):
            rows.append({"arm": arm, "seed": seed, "early_step": 100.0, "early_val_accuracy": e,
                         "final_val_accuracy": a, "final_train_accuracy": a + 0.1, "generalisation_gap": 0.1,
                         "grad_norm_lower": 2.0 if arm != "no_heads" else 1.0, "grad_norm_first": 1.0,
                         "diverged": False})
    return pd.DataFrame(rows)


AH_BN = ("BN in the heads helps: shows: final validation accuracy heads with BN vs without 0.505 vs 0.455 (effect "
         "+0.050, seed spread 0.010, 2 seeds)")
AH_EARLY = ("no early speed-up (v3 paper): shows (heads not ahead early beyond the seed spread): validation "
            "accuracy at step 100, heads vs none 0.210 vs 0.205 (effect +0.005, seed spread 0.020, 2 seeds)")
AH_GRADIENT = "gradient norm below the first head: 2 with heads vs 1 without (x2.00; first conv x1.00)"
AH_SHOWS = ("shows: final validation accuracy with aux heads, no BN vs without heads 0.455 vs 0.405 (effect +0.050, "
            "seed spread 0.010, 2 seeds)")
AH_LEARNED = ((0.40, 0.41), (0.45, 0.46), (0.50, 0.51))


@pytest.mark.parametrize("seeds, expected", [
    (_ah_seeds(*AH_LEARNED), f"{AH_SHOWS}; {AH_BN}; {AH_EARLY}; {AH_GRADIENT}"),
    (_ah_seeds(*AH_LEARNED).assign(generalisation_gap=0.01), f"{AH_SHOWS}; {AH_BN}; {AH_EARLY}; note: every net "
     "underfits (train minus validation accuracy at most 0.010), so a regulariser has nothing to act on here; an "
     f"accuracy gain at this budget is an optimisation effect; {AH_GRADIENT}"),
    (_ah_seeds(*AH_LEARNED, early=((0.2, 0.21), (0.4, 0.41), (0.2, 0.2))), f"{AH_SHOWS}; {AH_BN}; no early speed-up "
     "(v3 paper): does not show (heads ahead early beyond the seed spread): validation accuracy at step 100, heads vs "
     f"none 0.405 vs 0.205 (effect +0.200, seed spread 0.010, 2 seeds); {AH_GRADIENT}"),
    (_ah_seeds((0.40, 0.50), (0.44, 0.46), (0.5, 0.5)), "inconclusive: spread over seeds larger than the effect: final "
     "validation accuracy with aux heads, no BN vs without heads 0.450 vs 0.450 (effect +0.000, seed spread 0.100, 2 "
     "seeds); BN in the heads helps: shows: final validation accuracy heads with BN vs without 0.500 vs 0.450 (effect "
     f"+0.050, seed spread 0.020, 2 seeds); {AH_EARLY}; {AH_GRADIENT}"),
    (_ah_seeds((0.1, 0.1), (0.1, 0.11), (0.1, 0.1)), "inconclusive: the networks did not learn beyond chance (final "
     "validation accuracy 0.100 without, 0.105 with heads; chance + 3 SE = 0.140)"),
], ids=["shows", "underfit", "faster_early", "spread", "chance"])
def test_aux_heads_verdicts(seeds, expected):
    assert ah.verdict(seeds, n_val=500) == expected


# ================================================================================================ sections
@pytest.mark.parametrize("name, stems", [
    ("label_smoothing", ["label_smoothing.md", "label_smoothing_seeds.csv", "label_smoothing_curves.png",
                         "label_smoothing_reliability.png"]),
    ("aux_heads", ["aux_heads.md", "aux_heads_seeds.csv", "aux_heads_curves.png", "aux_heads_gradients.png"]),
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
