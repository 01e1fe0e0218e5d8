"""The verdict protocol on fixed data: every verdict word, the interval, the MDE and the censoring measures
against independent figures (printed t tables, closed forms, a simulation, hand-worked Kaplan-Meier)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from analysis.experiments.verdict import (CONTRADICTS, NO_EFFECT, NOT_TESTED, SUPPORTS, compare_arms, curve_area, judge, km_median,
                     learnability_gate, minimum_detectable_effect, paired_effect, reached)

# Student's t, two-sided 95%: t_{0.975, 4} = 2.776 and t_{0.975, 9} = 2.262 (any printed t table).
T_975_DF4 = 2.7764451
T_975_DF9 = 2.2621572


def test_gate_is_three_times_chance_but_never_above_halfway_to_one():
    assert learnability_gate(0.1) == pytest.approx(0.3)
    assert learnability_gate(0.01) == pytest.approx(0.03)
    assert learnability_gate(0.5) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="chance"):
        learnability_gate(0.0)
    with pytest.raises(ValueError, match="factor"):
        learnability_gate(0.1, factor=1.0)


def test_paired_interval_is_the_t_interval_of_the_differences():
    treatment = [0.80, 0.75, 0.82, 0.78, 0.74]
    control = [0.70, 0.72, 0.71, 0.69, 0.73]
    diff = np.subtract(treatment, control)  # 0.10, 0.03, 0.11, 0.09, 0.01
    mean, sd = diff.mean(), diff.std(ddof=1)
    half = T_975_DF4 * sd / math.sqrt(5)
    e = paired_effect(treatment, control)
    assert e.n == 5 and e.effect == pytest.approx(0.068) and e.median == pytest.approx(0.09)
    assert (e.ci_low, e.ci_high) == pytest.approx((mean - half, mean + half), rel=1e-6)
    assert e.word == SUPPORTS
    flipped = paired_effect(treatment, control, higher_is_better=False)
    assert flipped.effect == pytest.approx(-0.068) and flipped.word == CONTRADICTS
    assert (flipped.ci_low, flipped.ci_high) == pytest.approx((-mean - half, -mean + half), rel=1e-6)


def test_pairing_is_what_decides():
    # Seed effects dominate each arm's spread (0.2-0.8) but the treatment beats the control by 0.02 in every
    # seed: unpaired ranges overlap completely, paired differences do not.
    control = [0.2, 0.4, 0.6, 0.8, 0.5, 0.3, 0.7, 0.25, 0.45, 0.65]
    treatment = [c + 0.02 + 0.001 * k for k, c in enumerate(control)]
    e = paired_effect(treatment, control)
    assert e.word == SUPPORTS and e.ci_low > 0.0
    sd = np.std(np.arange(10) * 0.001, ddof=1)
    assert e.ci_high - e.ci_low == pytest.approx(2 * T_975_DF9 * sd / math.sqrt(10), rel=1e-6)


def test_an_interval_that_contains_zero_detects_nothing():
    e = paired_effect([0.5, 0.6, 0.4, 0.55, 0.45], [0.52, 0.55, 0.45, 0.5, 0.47])
    assert e.ci_low < 0.0 < e.ci_high and e.word == NO_EFFECT
    assert e.mde > abs(e.effect)


def test_identical_differences_give_a_point_interval_and_nan_pairs_are_dropped():
    e = paired_effect([1.0, 2.0, 3.0, math.nan], [0.5, 1.5, 2.5, 1.0])
    assert e.n == 3 and (e.ci_low, e.ci_high) == (0.5, 0.5) and e.mde == 0.0 and e.word == SUPPORTS
    one = paired_effect([1.0], [0.0])
    assert one.n == 1 and math.isnan(one.ci_low) and one.word == NO_EFFECT
    with pytest.raises(ValueError, match="one value per seed"):
        paired_effect([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="no seed"):
        paired_effect([math.nan], [1.0])


def test_mde_approaches_the_normal_formula_for_many_seeds():
    # z_{0.975} + z_{0.80} = 1.95996 + 0.84162 = 2.80158 (normal tables): the t-based MDE tends to it.
    assert minimum_detectable_effect(1.0, 10_000) * math.sqrt(10_000) == pytest.approx(2.80158, rel=2e-3)
    assert minimum_detectable_effect(2.0, 5) == pytest.approx(2 * minimum_detectable_effect(1.0, 5))
    assert math.isnan(minimum_detectable_effect(1.0, 1))


def test_mde_has_the_stated_power_by_simulation():
    # At the MDE, a two-sided paired t-test on 5 seeds rejects in 80% of simulated experiments.
    n, sd = 5, 1.0
    mde = minimum_detectable_effect(sd, n)
    rng = np.random.default_rng(0)
    diffs = rng.normal(mde, sd, size=(40_000, n))
    t = diffs.mean(1) / (diffs.std(1, ddof=1) / math.sqrt(n))
    power = float(np.mean(np.abs(t) > T_975_DF4))
    assert power == pytest.approx(0.80, abs=0.01)
    assert 1.4 < mde < 1.8  # Cohen's d of about 1.6 at n = 5: small seed counts see only large effects


def test_judge_gate_overrides_any_number():
    strong = paired_effect([0.9] * 5 + [0.91], [0.1] * 5 + [0.1])
    assert strong.word == SUPPORTS
    verdict = judge(strong, failed={"no BN": [2, 4]})
    assert verdict.word == NOT_TESTED and "no BN in seeds 2, 4" in verdict.reason
    assert verdict.arms_learned == "10/12"
    assert judge(strong).word == SUPPORTS and judge(strong).arms_learned == "12/12"
    assert judge(None).word == NOT_TESTED
    row = judge(strong).row()
    assert set(row) == {"effect", "ci_low", "ci_high", "seeds", "arms_learned", "mde", "verdict"}


def _runs(values_a, values_b, learned_b=None):
    rows = []
    for s, (a, b) in enumerate(zip(values_a, values_b)):
        rows.append({"arm": "A", "seed": s, "acc": a, "learned": True})
        rows.append({"arm": "B", "seed": s, "acc": b, "learned": True if learned_b is None else learned_b[s]})
    return pd.DataFrame(rows)


def test_compare_arms_pairs_on_seed_and_applies_the_gate():
    frame = _runs([0.8, 0.7, 0.9], [0.6, 0.6, 0.7])
    v = compare_arms(frame.sample(frac=1.0, random_state=1), arm="arm", treatment="A", control="B", value="acc")
    assert v.word == SUPPORTS and v.effect.effect == pytest.approx(0.5 / 3)
    gated = compare_arms(_runs([0.8, 0.7, 0.9], [0.6, 0.6, 0.7], learned_b=[True, False, True]), arm="arm",
                         treatment="A", control="B", value="acc")
    assert gated.word == NOT_TESTED and "B in seed 1" in gated.reason
    lonely = pd.concat([frame, pd.DataFrame([{"arm": "A", "seed": 9, "acc": 0.1, "learned": True}])])
    v = compare_arms(lonely, arm="arm", treatment="A", control="B", value="acc")
    assert v.effect.n == 3 and "seed(s) 9 ran one arm only" in v.reason
    with pytest.raises(ValueError, match="arm 'C' has no runs"):
        compare_arms(frame, arm="arm", treatment="C", control="B", value="acc")
    with pytest.raises(KeyError, match="columns"):
        compare_arms(frame, arm="arm", treatment="A", control="B", value="loss")


def test_describe_names_the_interval_method_and_the_mde():
    v = judge(paired_effect([0.8, 0.75, 0.82, 0.78, 0.74], [0.70, 0.72, 0.71, 0.69, 0.73]))
    text = v.describe("accuracy")
    assert text.startswith("supports: accuracy 0.778 vs 0.710, effect +0.068")
    assert "paired t, 95% over 5 paired seeds" in text and "MDE" in text


def test_curve_area_of_a_linear_ramp_is_half_its_top():
    curve = pd.DataFrame({"step": [0, 50, 100], "accuracy": [0.0, 0.5, 1.0]})
    assert curve_area(curve, 100) == pytest.approx(0.5)
    # Held flat after the last evaluation; started from a stated value before the first.
    assert curve_area(pd.DataFrame({"step": [50], "accuracy": [1.0]}), 100, start_value=0.0) == pytest.approx(0.75)
    # A faster run has the larger area; a NaN (diverged) evaluation counts as the floor.
    slow = pd.DataFrame({"step": [0, 50, 100], "accuracy": [0.1, 0.2, 0.9]})
    fast = pd.DataFrame({"step": [0, 50, 100], "accuracy": [0.1, 0.8, 0.9]})
    assert curve_area(fast, 100) > curve_area(slow, 100)
    broken = pd.DataFrame({"step": [0, 50, 100], "accuracy": [0.1, math.nan, math.nan]})
    assert curve_area(broken, 100, start_value=0.1) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="budget"):
        curve_area(curve, 0)


def test_kaplan_meier_median_by_hand():
    # Five runs, two never reach the target in 500 steps: survival 0.8 after 100, 0.6 after 200, 0.4 after
    # 300, so the median is 300; with three censored of five it never drops to 0.5.
    assert km_median([100, 200, 300, math.nan, math.nan], 500) == 300
    assert km_median([100, 200, math.nan, math.nan, math.nan], 500) == math.inf
    assert km_median([math.nan, math.nan], 500) == math.inf
    assert km_median([40, 10, 30, 20], 500) == 20
    assert reached([100, math.nan, 300]) == "reached in 2/3 seeds"


def test_steps_to_target_is_the_first_evaluation_at_the_target_and_nan_when_censored():
    from analysis.experiments.verdict import steps_to_target

    curve = pd.DataFrame({"step": [30, 10, 20], "accuracy": [0.5, 0.1, 0.31]})  # out of order on purpose
    assert steps_to_target(curve, 0.3) == 20.0
    assert math.isnan(steps_to_target(curve, 0.9))  # not reached within the budget: censored, not the budget
