"""The residual speed-up experiment (analysis.experiments.residual_speedup): its configs and arms, the runs it
makes with their cost, the verdicts against steps and against CPU seconds on made-up training logs whose curve
areas are known in closed form, and the report section with its claims."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis.experiments import load_experiment
from analysis.experiments import residual_speedup as rs
from analysis.experiments.verdict import CLAIM_COLUMNS, CONTRADICTS, NO_EFFECT, NOT_TESTED, SUPPORTS
from analysis.instruments.counting import count_model, create_model_for_counting, totals
from analysis.report import sections
from analysis.report.build import render_section
from tests.helpers import ramp_log

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {**rs.CONFIGS["quick"], "n_train": 32, "n_val": 16, "steps": 4, "batch_size": 8, "log_every": 2,
        "eval_every": 2, "workers": 1, "width_mult": 0.0625, "block_counts": (0, 0, 1), "pairs": ("v2",),
        "kinds": ("residual", "inception", "no_shortcut"), "seeds": 2}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("residual_speedup")
    return folder, rs.run(TINY, results_dir=folder, progress=False)


# ================================================================================================= configs
def test_tiers_pairs_and_arms():
    assert load_experiment("residual_speedup") is rs
    assert set(rs.CONFIGS) == {"quick", "standard", "full"}
    standard = rs.CONFIGS["standard"]
    assert standard["seeds"] >= 5 and len(standard["lrs"]) >= 3 and standard["tune_metric"] == "curve_area"
    # The same-cost control only (the budget); the paper's pairs in the full tier.
    assert tuple(standard["kinds"]) == ("residual", "no_shortcut") and min(standard["block_counts"]) >= 2
    assert tuple(rs.CONFIGS["full"]["pairs"]) == ("v1", "v2") and tuple(rs.CONFIGS["full"]["kinds"]) == rs.ARM_KINDS
    # The full tier: the paper's depth (None: the builders' default).
    assert rs.CONFIGS["full"]["block_counts"] is None
    assert create_model_for_counting("inception_resnet_v1_paper", num_classes=10).block_counts == (5, 10, 5)
    arms = {arm.name: arm for arm in rs.make_arms(rs.CONFIGS["full"])}
    assert list(arms) == ["v1_residual", "v1_inception", "v1_no_shortcut", "v2_residual", "v2_inception",
                          "v2_no_shortcut"]
    assert (arms["v1_inception"].model, arms["v2_inception"].model) == ("inception_v3", "inception_v4")
    assert arms["v2_no_shortcut"].knobs["residual"] is False and arms["v2_no_shortcut"].share_with == "v2_residual"
    assert arms["v1_inception"].share_with == "v1_residual" and arms["v1_residual"].share_with is None
    assert [rs.arm_label(n) for n in ("v1_residual", "v2_inception", "v2_no_shortcut")] == [
        "Inception-ResNet-v1", "Inception-v4", "Inception-ResNet-v2, no shortcut"]


V1_PAIR = {**rs.CONFIGS["standard"], "pairs": ("v1",), "kinds": ("residual", "inception"), "block_counts": None}


@pytest.mark.parametrize("config", [rs.CONFIGS["standard"], V1_PAIR])
def test_the_compared_nets_are_matched_in_cost(config):
    """The standard tier's residual net and its no-shortcut twin: the same MACs and parameters; Inception-ResNet-v1
    at the paper's depth and Inception-v3 at the same width and input: within 10% in MACs and 5% in parameters
    (fvcore counts: 3.7 vs 3.4 MMACs, 335k vs 347k)."""
    costs = []
    for arm in rs.make_arms(config):
        model = create_model_for_counting(arm.model, num_classes=10, **arm.knobs)
        macs = totals(count_model(model, input_size=config["image_size"]))["macs"]
        costs.append((macs, sum(p.numel() for p in model.parameters())))
    (res_macs, res_params), (inc_macs, inc_params) = costs
    assert res_macs == pytest.approx(inc_macs, rel=0.1) and res_params == pytest.approx(inc_params, rel=0.05)


@pytest.mark.parametrize("change, message", [
    ({"kinds": ("inception", "no_shortcut")}, "residual"),
    ({"pairs": ("v3",)}, "pairs"),
    ({"image_size": 64}, "75"),
    ({"eval_every": 3}, "multiple of log_every"),
    ({"target_fraction": 1.5}, "target_fraction"),
])
def test_bad_configs_are_clear_errors(tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        rs.run({**TINY, **change}, results_dir=tmp_path, progress=False)


def test_a_config_missing_keys_is_a_clear_error():
    with pytest.raises(ValueError, match="lacks"):
        rs.run({"seed": 0})


# ================================================================================================== running
def test_runs_with_their_cost(tiny):
    _, results = tiny
    assert results.loc[results["split"] == "val", "cpu_s"].notna().all()  # the CPU time of the train row
    runs = rs.per_run(results, TINY)
    assert set(runs["stage"]) == {"seed"} and len(runs) == 3 * 2  # one rate: no tuning
    cost = runs.groupby("kind")[["params", "gmacs"]].first()
    # The no-shortcut control is the same network: the same parameters and MACs; Inception-v4 is another net.
    assert cost.loc["residual", "params"] == cost.loc["no_shortcut", "params"] > 0
    assert cost.loc["residual", "gmacs"] == pytest.approx(cost.loc["no_shortcut", "gmacs"])
    assert cost.loc["inception", "params"] != cost.loc["residual", "params"]
    assert (runs["cpu_per_step"] > 0).all() and (runs["chance"] == 0.1).all()
    table = rs.arm_table(runs)
    assert list(table["arm"]) == ["Inception-ResNet-v2", "Inception-v4", "Inception-ResNet-v2, no shortcut"]
    decided = rs.comparisons(runs, results)
    assert [(other, axis) for _, other, axis, _ in decided] == [
        ("Inception-v4", "steps"), ("Inception-v4", "CPU seconds"),
        ("Inception-ResNet-v2, no shortcut", "steps"), ("Inception-ResNet-v2, no shortcut", "CPU seconds")]


def test_a_second_run_trains_nothing(tiny, monkeypatch):
    folder, results = tiny
    monkeypatch.setattr(rs, "run_point", lambda point: (_ for _ in ()).throw(AssertionError("trained again")))
    pd.testing.assert_frame_equal(rs.run(TINY, results_dir=folder, progress=False), results)


# ========================================================================================= verdicts by hand
RESIDUAL = [0.80, 0.82, 0.78, 0.81, 0.79]
INCEPTION = [0.60, 0.61, 0.59, 0.62, 0.58]
CONFIG = {"target_fraction": 0.9}


def _results(tops: dict[str, list[float]], cpu_per_step: dict[str, float]) -> pd.DataFrame:
    """Made-up logs of the v2 pair: each arm rises in a straight line from chance to its top per seed over 500
    steps, at ``cpu_per_step`` CPU seconds per step."""
    frames = [ramp_log(f"{arm}-{seed}", top=top, steps=500, eval_every=50, cpu_per_step=cpu_per_step[arm],
                       stage="seed", arm=arm, seed=seed, lr=0.03, difficulty="default", params=1000, gmacs=0.001)
              for arm, per_seed in tops.items() for seed, top in enumerate(per_seed)]
    return pd.concat(frames, ignore_index=True)


def _interval(diffs):
    diffs = np.asarray(diffs)
    half = stats.t.ppf(0.975, len(diffs) - 1) * diffs.std(ddof=1) / math.sqrt(len(diffs))
    return diffs.mean(), diffs.mean() - half, diffs.mean() + half


def test_faster_per_step_but_slower_per_cpu_second():
    """The residual net gains more per step but costs twice as much per step: by steps it supports the claim; by
    CPU seconds (up to the 100 s in which it does its 500 steps) the cheaper net, held at its final accuracy
    after its own 50 s, is ahead."""
    results = _results({"v2_residual": RESIDUAL, "v2_inception": INCEPTION},
                       {"v2_residual": 0.2, "v2_inception": 0.1})
    runs = rs.per_run(results, CONFIG)
    (_, _, _, by_steps), (_, _, _, by_cpu) = rs.comparisons(runs, results)
    # Areas: a straight line from 0.1 to top is (0.1 + top) / 2; the cheaper net over [0, 100] s is
    # ((0.1 + top) / 2 x 50 + top x 50) / 100 = 0.025 + 0.75 top.
    steps = _interval([(r - i) / 2 for r, i in zip(RESIDUAL, INCEPTION)])
    cpu = _interval([(0.1 + r) / 2 - (0.025 + 0.75 * i) for r, i in zip(RESIDUAL, INCEPTION)])
    assert by_steps.word == SUPPORTS and by_cpu.word == CONTRADICTS
    assert (by_steps.effect.effect, by_steps.effect.ci_low, by_steps.effect.ci_high) == pytest.approx(steps)
    assert (by_cpu.effect.effect, by_cpu.effect.ci_low, by_cpu.effect.ci_high) == pytest.approx(cpu)
    (claim,) = rs.claims(runs, results)
    assert claim.claim == "Residual connections speed up training (Inception-ResNet-v2 vs Inception-v4)"
    assert claim.verdict == by_steps and set(CLAIM_COLUMNS) <= set(claim.row())
    # The pair's target: 0.9 x the lower mean best accuracy (0.60); times to it are censoring-aware.
    assert runs["target"].iloc[0] == pytest.approx(0.54)
    first = runs[runs["arm"] == "v2_residual"].iloc[0]  # 0.1 + 0.7 x step / 500 >= 0.54 from step 314.3: 350
    assert (first["steps_to_target"], first["cpu_to_target"]) == pytest.approx((350, 70))
    table = rs.arm_table(runs).set_index("arm")
    assert table.loc["Inception-v4", "target reached"] == "reached in 5/5 seeds"
    # 0.1 + (top - 0.1) x step / 500 >= 0.54 from step 220 / (top - 0.1): 450 for tops 0.59-0.62, 500 for 0.58.
    assert table.loc["Inception-v4", "KM median steps"] == 450


@pytest.mark.parametrize("inception, word, reason", [
    (INCEPTION[:2] + [0.25] + INCEPTION[3:], NOT_TESTED, "did not pass the learnability gate: Inception-v4 in seed 2"),
    ([0.82, 0.80, 0.80, 0.79, 0.81], NO_EFFECT, ""),
])
def test_gate_and_no_effect(inception, word, reason):
    results = _results({"v2_residual": RESIDUAL, "v2_inception": inception}, {"v2_residual": 0.1, "v2_inception": 0.1})
    runs = rs.per_run(results, CONFIG)
    (claim,) = rs.claims(runs, results)
    assert (claim.verdict.word, claim.verdict.reason) == (word, reason)


# ================================================================================================= section
def test_section_renders_tables_figures_and_claims(tiny, tmp_path, monkeypatch):
    folder, _ = tiny
    monkeypatch.setitem(rs.CONFIGS, "quick", {**TINY, "seed": 0})
    monkeypatch.setattr(sections.residual_speedup, "default_results_dir", lambda *_: folder)
    monkeypatch.setattr(rs, "run_point", lambda point: (_ for _ in ()).throw(AssertionError("trained again")))
    section = sections.residual_speedup.section("quick", 0)
    assert [c.claim for c in section.claims] == [
        "Residual connections speed up training (Inception-ResNet-v2 vs Inception-v4)",
        "Residual connections speed up training (Inception-ResNet-v2 vs Inception-ResNet-v2, no shortcut)"]
    assert {c.verdict.word for c in section.claims} == {NOT_TESTED}  # four steps: nothing learned
    markdown = render_section(section, tmp_path)
    for stem in ("residual_speedup.md", "residual_speedup_comparisons.csv", "residual_speedup_runs.csv",
                 "residual_speedup_curves.csv", "residual_speedup_accuracy.png", "residual_speedup_time.png",
                 "residual_speedup_loss.png"):
        assert (tmp_path / stem).exists(), stem
    assert "Verdict at this scale" in markdown and "not tested" in markdown
    # The loss figure: a linear axis, with the chance line at ln K (K = 10 classes) in every panel.
    loss = next(f for f in section.figures if f.stem == "residual_speedup_loss").draw()
    for ax in loss.axes:
        assert ax.get_yscale() == "linear"
        assert any(list(line.get_ydata()) == pytest.approx([math.log(10)] * 2) for line in ax.get_lines())
    # Every accuracy plot marks chance (0.1).
    for figure in section.figures:
        if figure.stem != "residual_speedup_loss":
            for ax in figure.draw().axes:
                assert any(list(line.get_ydata()) == pytest.approx([0.1] * 2) for line in ax.get_lines())
