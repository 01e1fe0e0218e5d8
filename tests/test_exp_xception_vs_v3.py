"""The Xception vs Inception-v3 experiment under the verdict protocol: configs and matched parameter counts, the
arms and their shared initial weights, the result schema on a tiny config, resumability, the verdict words on
fixed frames, and the section with its claims.

The science runs in the standard tier (``inception-lab report --tier standard``); here a tiny config trains for
two steps.
"""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from analysis.experiments import load_experiment, resolve_config
from analysis.experiments import xception_vs_v3 as xv
from analysis.experiments.runner import build_arm_model
from analysis.report.build import render_section
from analysis.report.document import Section
from analysis.report.sections import xception_vs_v3 as xv_section
from inception_models import create_model

from helpers import inception_v3_params, xception_params

WIDTH = 0.0625
TINY = {**xv.CONFIGS["quick"], "seeds": 2, "lrs": (0.01, 0.02), "v3_width": WIDTH, "xception_width": WIDTH,
        "middle_blocks": 1, "n_train": 32, "n_val": 20, "steps": 2, "batch_size": 16, "log_every": 1,
        "eval_every": 1, "warmup_steps": 0, "workers": 1, "param_tolerance": 0.99}
# At 10 classes, counted by hand from the layer widths (tests/helpers.py): a mid activation adds no parameters.
PARAMS = {xv.V3: inception_v3_params(width_mult=WIDTH, classes=10),
          **{arm: xception_params(width_mult=WIDTH, middle_blocks=1, classes=10) for arm in xv.ARMS[1:]}}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("xv")
    return folder, xv.run(TINY, results_dir=folder, progress=False)


# ------------------------------------------------------------------------------------------------ configs
def test_tiers_share_keys_and_resolve():
    assert set(xv.CONFIGS) == {"quick", "standard", "full"}
    assert set(xv.CONFIGS["quick"]) == set(xv.CONFIGS["standard"]) == set(xv.CONFIGS["full"])
    standard = xv.CONFIGS["standard"]
    assert standard["seeds"] >= 5 and len(standard["lrs"]) >= 2 and standard["arms"] == xv.ARMS
    assert load_experiment("xception_vs_v3") is xv
    assert resolve_config(xv, "quick", steps=3)["steps"] == 3


@pytest.mark.parametrize("mode", ["quick", "standard", "full"])
def test_configured_arms_are_parameter_matched(mode):
    """Every tier's Xception is within its tolerance of its Inception-v3, both counted by hand."""
    config = xv.CONFIGS[mode]
    v3 = inception_v3_params(width_mult=config["v3_width"], classes=10)
    xc = xception_params(width_mult=config["xception_width"], middle_blocks=config["middle_blocks"], classes=10)
    assert abs(xc / v3 - 1) <= config["param_tolerance"] <= 0.05
    for arm in xv.make_arms(config):
        built = create_model(arm.model, num_classes=10, **arm.knobs)
        assert sum(p.numel() for p in built.parameters()) == (v3 if arm.name == xv.V3 else xc)
    if mode != "full":  # the CPU tiers' sizes, as their comment states
        assert (v3, xc) == (346_830, 346_351)


def test_arms_share_the_plain_xceptions_initial_weights():
    arms = {arm.name: arm for arm in xv.make_arms(TINY)}
    assert [arms[a].share_with for a in xv.ARMS] == [None, None, xv.XCEPTION, xv.XCEPTION]
    assert [arms[a].knobs.get("mid_activation") for a in xv.ARMS] == [None, "none", "relu", "elu"]
    by_name = dict(arms)
    point = {"seed": 3, "difficulty": "default"}
    plain = build_arm_model({**point, **arms[xv.XCEPTION].fields(by_name)})
    for name in (xv.RELU, xv.ELU):
        other = build_arm_model({**point, **arms[name].fields(by_name)})
        for (key, a), b in zip(plain.state_dict().items(), other.state_dict().values()):
            assert torch.equal(a, b), key
    different_seed = build_arm_model({**point, "seed": 4, **arms[xv.XCEPTION].fields(by_name)})
    assert not torch.equal(plain.fc.weight, different_seed.fc.weight)


@pytest.mark.parametrize("change, message", [
    ({"arms": (xv.V3, xv.RELU)}, "arms must hold 'xception'"),
    ({"arms": (xv.XCEPTION,)}, "arms must hold 'xception'"),
    ({"arms": (xv.XCEPTION, "xception_gelu")}, "arms must hold 'xception'"),
    ({"param_tolerance": 1.5}, "param_tolerance"),
    ({"lrs": ()}, "lrs must list positive"),
])
def test_bad_configs_are_clear_errors(tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        xv.run({**TINY, **change}, results_dir=tmp_path, progress=False)


def test_a_config_missing_keys_is_named(tmp_path):
    config = dict(TINY)
    del config["middle_blocks"]
    with pytest.raises(ValueError, match=r"lacks \['middle_blocks'\]"):
        xv.run(config, results_dir=tmp_path, progress=False)


# ------------------------------------------------------------------------------------------------ schema
def test_result_schema_and_runs(tiny_run):
    _, results = tiny_run
    assert set(xv.RESULT_COLUMNS) <= set(results.columns)
    runs = xv.per_run(results)
    assert list(runs.columns) == xv.PER_RUN_COLUMNS
    # 4 arms x 2 tuning rates, then 4 arms x 2 seeds.
    assert runs.groupby("stage").size().to_dict() == {"seed": 8, "tune": 8}
    assert dict(runs.groupby("arm")["params"].first()) == PARAMS
    seeds = runs[runs["stage"] == "seed"]
    assert sorted(seeds["seed"].unique()) == [0, 1] and set(seeds["lr"]) <= {0.01, 0.02}
    assert (runs["cpu_s"] > 0).all() and runs["final_val_accuracy"].between(0, 1).all()
    # each logged run: 2 training rows and 2 evaluations
    assert results.groupby("point_id").size().eq(4).all()


def test_summary_and_verdicts_on_the_tiny_run(tiny_run):
    _, results = tiny_run
    runs = xv.per_run(results)
    summary = xv.summarise(runs)
    assert list(summary.columns) == xv.SUMMARY_COLUMNS and summary["arm"].tolist() == list(xv.ARMS)
    assert summary["params_vs_v3"].tolist() == pytest.approx(
        [0.0] + [PARAMS[xv.XCEPTION] / PARAMS[xv.V3] - 1] * 3)
    verdicts = xv.decide(runs, TINY["param_tolerance"])
    assert set(verdicts) == set(xv.COMPARISONS)
    assert [c.claim for c in xv.claims(verdicts)] == [
        "Xception beats param-matched Inception-v3", "no intermediate activation beats ReLU",
        "no intermediate activation beats ELU"]


def test_a_second_run_trains_nothing(tiny_run, monkeypatch):
    folder, first = tiny_run

    def fail(point):
        raise AssertionError("a finished point ran again")

    monkeypatch.setattr(xv, "run_point", fail)
    pd.testing.assert_frame_equal(first, xv.run(TINY, results_dir=folder, progress=False))


# ------------------------------------------------------------------------------------------------ verdicts
BASE = [0.80, 0.82, 0.78, 0.81, 0.79]
# Paired differences (treatment - control) with a known mean and t interval: mean 0.05, sd sqrt(2e-4 / 4).
WIN = [0.04, 0.05, 0.06, 0.05, 0.05]


def _runs(xception=BASE, v3=None, relu=None, elu=None, learned=None, params=(1000, 1020)):
    """A per-run frame: the other arms are Xception minus the given paired differences."""
    arms = {xv.XCEPTION: xception,
            xv.V3: [x - d for x, d in zip(xception, v3 or WIN)],
            xv.RELU: [x - d for x, d in zip(xception, relu or WIN)],
            xv.ELU: [x - d for x, d in zip(xception, elu or WIN)]}
    rows = [{"stage": "seed", "arm": arm, "seed": s, "final_val_accuracy": acc, "params": params[arm != xv.V3],
             "learned": (learned or {}).get(arm, [True] * 5)[s]}
            for arm, accs in arms.items() for s, acc in enumerate(accs)]
    tune = [{"stage": "tune", "arm": xv.V3, "seed": 10_000, "final_val_accuracy": 0.1, "params": params[0],
             "learned": False}]
    return pd.DataFrame(rows + tune)


def test_supports_with_the_t_interval_computed_by_hand():
    verdicts = xv.decide(_runs(), 0.05)
    half = 2.7764451 * math.sqrt(2e-4 / 4) / math.sqrt(5)  # t(0.975, 4) x sd / sqrt(n) = 0.00878
    for key in xv.COMPARISONS:
        v = verdicts[key]
        assert v.word == "supports" and v.arms_learned == "10/10"
        assert (v.effect.effect, v.effect.ci_low, v.effect.ci_high) == pytest.approx((0.05, 0.05 - half, 0.05 + half))


def test_contradicts_and_no_effect():
    verdicts = xv.decide(_runs(v3=[-d for d in WIN], relu=[0.02, -0.02, 0.01, -0.01, 0.0]), 0.05)
    assert verdicts["xception_vs_v3"].word == "contradicts"
    assert verdicts["xception_vs_v3"].effect.effect == pytest.approx(-0.05)
    assert verdicts["none_vs_relu"].word == "no effect detected"
    assert verdicts["none_vs_elu"].word == "supports"


def test_an_arm_at_chance_makes_its_comparisons_not_tested_by_name():
    """The review's case: both arms at chance must never read as a result."""
    stuck = {xv.RELU: [False] * 5, xv.V3: [True, True, False, True, True]}
    verdicts = xv.decide(_runs(learned=stuck), 0.05)
    assert verdicts["none_vs_relu"].word == "not tested"
    assert "xception_relu in seeds 0, 1, 2, 3, 4" in verdicts["none_vs_relu"].reason
    assert verdicts["xception_vs_v3"].word == "not tested"
    assert "inception_v3 in seed 2" in verdicts["xception_vs_v3"].reason
    assert verdicts["xception_vs_v3"].arms_learned == "9/10"
    assert verdicts["none_vs_elu"].word == "supports"


def test_a_parameter_mismatch_makes_the_v3_comparison_not_tested():
    verdicts = xv.decide(_runs(params=(1000, 1200)), 0.05)
    assert verdicts["xception_vs_v3"].word == "not tested"
    assert "differ by +20.0%" in verdicts["xception_vs_v3"].reason
    assert verdicts["none_vs_relu"].word == "supports"  # the mid-activation arms are one network


def test_absent_arms_have_no_verdict_and_no_claim():
    runs = _runs()
    verdicts = xv.decide(runs[runs["arm"].isin([xv.XCEPTION, xv.ELU])], 0.05)
    assert list(verdicts) == ["none_vs_elu"]
    assert [c.claim for c in xv.claims(verdicts)] == ["no intermediate activation beats ELU"]
    assert xv.verdict(verdicts).startswith("no mid activation vs ELU: supports: final validation accuracy 0.800 vs "
                                           "0.750, effect +0.050 [+0.041, +0.059] (paired t, 95% over 5 paired")


# ------------------------------------------------------------------------------------------------ section
def test_section_renders_with_claims(tiny_run, monkeypatch, tmp_path):
    import matplotlib.pyplot as plt

    folder, _ = tiny_run
    monkeypatch.setitem(xv.CONFIGS, "quick", TINY)
    monkeypatch.setattr(xv_section, "default_results_dir", lambda *_: folder)
    section = xv_section.section("quick", 0)
    assert isinstance(section, Section)
    assert [c.claim for c in section.claims] == [
        "Xception beats param-matched Inception-v3", "no intermediate activation beats ReLU",
        "no intermediate activation beats ELU"]
    assert all(c.measure.startswith("final validation accuracy") for c in section.claims)
    assert section.verdict.startswith("Xception vs Inception-v3: ")
    summary, verdicts, runs = section.tables
    assert set(summary.columns) <= set(summary.frame.columns) and len(summary.frame) == 4
    assert set(verdicts.columns) <= set(verdicts.frame.columns) and len(verdicts.frame) == 3
    assert not runs.inline and len(runs.frame) == 16
    assert "2 steps" in section.text and "75 px" in section.text and "2 paired seeds" in section.text
    assert "tuned over 0.01, 0.02 on a held-out split with the same budget (chosen: Inception-v3 0.0" in section.text
    markdown = render_section(section, tmp_path)
    assert "Params vs v3 (%)" in markdown and "Effect (points)" in markdown and "Runs past gate" in markdown
    assert "88,458" in markdown  # Inception-v3's hand count, shown with its separators
    for stem in ("xception_vs_v3_accuracy", "xception_vs_v3_effects"):
        assert (tmp_path / f"{stem}.png").stat().st_size > 0
    for figure in section.figures:
        drawn = figure.draw()
        assert isinstance(drawn, plt.Figure) and drawn.axes
        labels = [t.get_text() for ax in drawn.axes for t in ax.texts]
        if figure.stem.endswith("accuracy"):
            assert any(label.startswith("chance (1/10)") for label in labels)
        else:
            assert len(labels) == 3  # one verdict word above each comparison
        plt.close(drawn)
