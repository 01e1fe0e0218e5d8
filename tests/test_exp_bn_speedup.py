"""The BN speed-up experiment (analysis.experiments.bn_speedup): its configs, the runs it makes (tuning, then
paired seeds at multiples of the baseline's rate and at each variant's own), divergence as a result, the verdicts
on made-up training logs whose curve areas are known in closed form, and the report section with its claims."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis.experiments import bn_speedup as bs
from analysis.experiments import load_experiment
from analysis.experiments.verdict import CLAIM_COLUMNS, CONTRADICTS, NO_EFFECT, NOT_TESTED, SUPPORTS
from analysis.report import sections
from analysis.report.build import render_section
from tests.helpers import ramp_log

pytestmark = pytest.mark.usefixtures("one_thread")

# Two rates to tune on, and a rate a billion times the base at which both variants diverge: recorded, not raised.
TINY = {**bs.CONFIGS["quick"], "n_train": 32, "n_val": 16, "steps": 4, "batch_size": 8, "log_every": 2,
        "eval_every": 2, "workers": 1, "width_mult": 0.0625, "lrs": (0.01, 0.02), "multipliers": (1, 1e9),
        "seeds": 2}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bn_speedup")
    return folder, bs.run(TINY, results_dir=folder, progress=False)


# ================================================================================================= configs
def test_tiers_and_arms():
    assert load_experiment("bn_speedup") is bs
    assert set(bs.CONFIGS) == {"quick", "standard", "full"}
    standard = bs.CONFIGS["standard"]
    assert standard["seeds"] >= 5 and len(standard["lrs"]) >= 2 and standard["tune_metric"] == "curve_area"
    assert tuple(standard["multipliers"]) == (1, 5, 30) and standard["device"] == "cpu"
    assert bs.CONFIGS["full"]["device"] == "auto"
    bn, none = bs.make_arms(standard)
    assert (bn.knobs["norm"], none.knobs["norm"]) == ("bn", "none")
    # The no-BN net trains from the data-dependent init, after copying the BN net's initial weights of the seed.
    assert none.init == "data" and none.share_with == "bn" and bn.init == "default"


@pytest.mark.parametrize("change, message", [
    ({"multipliers": (5, 30)}, "include 1"),
    ({"multipliers": (1, 1, 5)}, "distinct"),
    ({"eval_every": 1000}, "within the budget"),
    ({"target_fraction": 0.0}, "target_fraction"),
    ({"tune_metric": "loss"}, "tune_metric"),
])
def test_bad_configs_are_clear_errors(tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        bs.run({**TINY, "lrs": (0.01, 0.02), **change}, results_dir=tmp_path, progress=False)


def test_a_config_missing_keys_is_a_clear_error():
    with pytest.raises(ValueError, match="lacks"):
        bs.run({"seed": 0})


# ================================================================================================== running
def test_runs_tuning_then_rates_and_records_divergence(tiny):
    _, results = tiny
    runs = bs.per_run(results, TINY)
    assert runs["point_id"].is_unique  # the baseline at 1x is its own tuned rate: trained once, not twice
    tune, seeded = runs[runs["stage"] == "tune"], runs[runs["stage"] == "seed"]
    assert sorted(zip(tune["arm"], tune["lr"])) == [("bn", 0.01), ("bn", 0.02), ("none", 0.01), ("none", 0.02)]
    base = bs.base_rate(results, TINY)
    assert base in (0.01, 0.02)
    none = seeded[seeded["arm"] == "none"]
    assert sorted(none["multiplier"].unique()) == [1.0, 1e9] and len(none) == 2 * 2
    # BN runs at both multipliers and at its own tuned rate (which may be one of them).
    bn = seeded[seeded["arm"] == "bn"]
    assert {1.0, 1e9} <= set(bn["multiplier"]) and bn["own_rate"].sum() == 2
    assert np.allclose(seeded["lr"], seeded["multiplier"] * base)
    huge = seeded[seeded["multiplier"] == 1e9]
    assert huge["diverged"].all() and not huge["learned"].any()
    assert ((huge["diverged_step"] >= 1) & (huge["diverged_step"] <= 4)).all()
    assert np.allclose(huge["final_val_accuracy"], 0.1) and huge["steps_to_target"].isna().all()
    assert not seeded.loc[seeded["multiplier"] == 1.0, "diverged"].any()


def test_a_second_run_trains_nothing(tiny, monkeypatch):
    folder, results = tiny
    monkeypatch.setattr(bs, "run_point", lambda point: (_ for _ in ()).throw(AssertionError("trained again")))
    pd.testing.assert_frame_equal(bs.run(TINY, results_dir=folder, progress=False), results)


# ========================================================================================= verdicts by hand
NONE_1X = [0.70, 0.72, 0.74, 0.76, 0.78]
CONFIG = {"lrs": (0.01,), "target_fraction": 0.9}


def _results(tops: dict[tuple[str, float], list[float]], steps: int = 400) -> pd.DataFrame:
    """Made-up logs: each (variant, multiplier) rises in a straight line from chance to its top per seed."""
    frames = [ramp_log(f"{arm}-{m:g}-{seed}", top=top, steps=steps, eval_every=50, stage="seed", arm=arm, seed=seed,
                       lr=0.01 * m, difficulty="default")
              for (arm, m), tops_per_seed in tops.items() for seed, top in enumerate(tops_per_seed)]
    return pd.concat(frames, ignore_index=True)


def _interval(diffs):
    diffs = np.asarray(diffs)
    half = stats.t.ppf(0.975, len(diffs) - 1) * diffs.std(ddof=1) / math.sqrt(len(diffs))
    return diffs.mean(), diffs.mean() - half, diffs.mean() + half


PAPER_LIKE = {("bn", 1): [0.90, 0.94, 0.92, 0.96, 0.98], ("none", 1): NONE_1X,
              ("bn", 5): [0.95, 0.96, 0.97, 0.95, 0.99], ("none", 5): [0.2] * 5,
              ("bn", 30): [0.50, 0.52, 0.48, 0.50, 0.49], ("none", 30): [0.1] * 5}


def test_verdicts_on_made_up_logs():
    runs = bs.per_run(_results(PAPER_LIKE), CONFIG)
    decided = {key: verdict for key, _, verdict in bs.comparisons(runs)}
    assert list(decided) == ["same_rate_x1", "same_rate_x5", "same_rate_x30", "bn_x5_vs_baseline",
                             "bn_x30_vs_baseline", "own_rates"]
    # The area under a straight line from chance (0.1) to top is (0.1 + top) / 2: the effects are half the gaps.
    x1 = decided["same_rate_x1"]
    effect, low, high = _interval([(b - n) / 2 for b, n in zip(PAPER_LIKE[("bn", 1)], NONE_1X)])
    assert x1.word == SUPPORTS and x1.arms_learned == "10/10"
    assert (x1.effect.effect, x1.effect.ci_low, x1.effect.ci_high) == pytest.approx((effect, low, high))
    assert decided["bn_x5_vs_baseline"].word == SUPPORTS
    assert decided["bn_x30_vs_baseline"].word == CONTRADICTS  # slower than the baseline at its own rate
    # Without BN the higher rates do not learn: their same-rate comparisons are not tested, and say why.
    assert decided["same_rate_x5"].word == NOT_TESTED
    assert decided["same_rate_x5"].reason == ("did not pass the learnability gate: no BN x5 in seeds 0, 1, 2, 3, 4")
    assert decided["same_rate_x30"].arms_learned == "5/10"
    assert decided["own_rates"].word == SUPPORTS  # one rate, no tuning: the own rates are the base rate
    assert bs.stops_learning(runs) == {"BN": math.inf, "no BN": 5.0}
    claims = bs.claims(runs)
    assert [(c.claim, c.verdict.word) for c in claims] == [
        ("BN reaches the target in fewer steps", SUPPORTS), ("BN tolerates higher rates (x5)", SUPPORTS),
        ("BN tolerates higher rates (x30)", CONTRADICTS)]
    assert all(set(CLAIM_COLUMNS) <= set(c.row()) for c in claims)


def test_no_effect_detected_when_the_gaps_change_sign():
    tops = {("bn", 1): [0.72, 0.70, 0.76, 0.74, 0.78], ("none", 1): NONE_1X}
    runs = bs.per_run(_results(tops), CONFIG)
    (claim,) = bs.claims(runs)
    assert claim.verdict.word == NO_EFFECT and claim.verdict.effect.effect == pytest.approx(0.0)


def test_target_and_censored_steps():
    runs = bs.per_run(_results(PAPER_LIKE), CONFIG)
    # The target: 0.9 x the baseline's mean best accuracy (0.74).
    assert runs["target"].iloc[0] == pytest.approx(0.666)
    # 0.1 + (top - 0.1) * step / 400 >= 0.666 from step 226.4 / (top - 0.1) on, seen at the next evaluation (every
    # 50 steps): step 400 for tops 0.70-0.74, 350 for 0.76-0.78.
    baseline = runs[(runs["arm"] == "none") & (runs["multiplier"] == 1.0)].sort_values("seed")
    assert baseline["steps_to_target"].tolist() == [400, 400, 400, 350, 350]
    table = bs.rate_table(runs).set_index(["variant", "multiplier"])
    assert table.loc[("no BN", 1.0), "target reached"] == "reached in 5/5 seeds"
    assert table.loc[("no BN", 1.0), "KM median steps to target"] == 400  # survival 3/5 after 350, 0 after 400
    assert table.loc[("BN", 30.0), "target reached"] == "reached in 0/5 seeds"
    assert math.isinf(table.loc[("BN", 30.0), "KM median steps to target"])  # censored, not the budget
    assert table.loc[("no BN", 5.0), "learned"] == "0/5"


# ================================================================================================= section
def test_section_renders_tables_figures_and_claims(tiny, tmp_path, monkeypatch):
    folder, _ = tiny
    monkeypatch.setitem(bs.CONFIGS, "quick", {**TINY, "seed": 0})
    monkeypatch.setattr(sections.bn_speedup, "default_results_dir", lambda *_: folder)
    monkeypatch.setattr(bs, "run_point", lambda point: (_ for _ in ()).throw(AssertionError("trained again")))
    section = sections.bn_speedup.section("quick", 0)
    assert [c.claim for c in section.claims] == ["BN reaches the target in fewer steps",
                                                 "BN tolerates higher rates (x1e+09)"]
    assert {c.verdict.word for c in section.claims} == {NOT_TESTED}  # four steps: nothing learned
    markdown = render_section(section, tmp_path)
    for stem in ("bn_speedup_rates.md", "bn_speedup_comparisons.csv", "bn_speedup_tuning.md", "bn_speedup_runs.csv",
                 "bn_speedup_curves.csv", "bn_speedup_accuracy.png", "bn_speedup_loss.png"):
        assert (tmp_path / stem).exists(), stem
    assert "Verdict at this scale" in markdown and "not tested" in markdown
    # The loss figure: a linear axis, with the chance line at ln K (K = 10 classes) in every panel.
    loss = next(f for f in section.figures if f.stem == "bn_speedup_loss").draw()
    for ax in loss.axes:
        assert ax.get_yscale() == "linear"
        assert any(list(line.get_ydata()) == pytest.approx([math.log(10)] * 2) for line in ax.get_lines())
    # Every accuracy plot marks chance (0.1).
    for figure in section.figures:
        if figure.stem != "bn_speedup_loss":
            for ax in figure.draw().axes:
                assert any(list(line.get_ydata()) == pytest.approx([0.1] * 2) for line in ax.get_lines())
