"""The auxiliary-heads experiment (GoogLeNet sec. 5; Inception-v3 paper sec. 4): the arms and their shared initial
weights, the configs, the result schema on a tiny config (seconds, one thread), resuming, the overfitting check
and the protocol's verdicts on fixed frames, and the section with its claims."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch

from analysis.experiments import aux_heads as ah
from analysis.experiments.runner import build_arm_model
from analysis.experiments.verdict import CONTRADICTS, NO_EFFECT, NOT_TESTED, SUPPORTS, VERDICTS
from analysis.report import sections
from analysis.report.build import render_section

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {**ah.CONFIGS["quick"], "n_train": 64, "n_val": 32, "train_eval_images": 48, "steps": 6, "batch_size": 16,
        "log_every": 2, "eval_every": 3, "width_mult": 0.0625, "image_size": 32, "workers": 1, "seeds": 1}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The experiment run once on the tiny config (3 arms, 1 seed, one rate); tests reuse the folder."""
    folder = tmp_path_factory.mktemp("aux_heads")
    return folder, ah.run(TINY, results_dir=folder, progress=False)


# ==================================================================================================== arms
def test_the_arms_differ_by_their_heads_alone():
    arms = {arm.name: arm for arm in ah.make_arms(ah.CONFIGS["standard"])}
    assert list(arms) == list(ah.ARMS)
    assert arms["no_heads"].knobs["aux_logits"] is False and "aux_norm" not in arms["no_heads"].knobs
    assert (arms["heads"].knobs["aux_norm"], arms["heads_bn"].knobs["aux_norm"]) == ("none", "bn")
    body = {k: v for k, v in arms["no_heads"].knobs.items() if k != "aux_logits"}
    for name in ("heads", "heads_bn"):
        assert {k: arms[name].knobs[k] for k in body} == body and arms[name].share_with == "no_heads"


def test_a_seed_starts_every_arm_from_the_same_body():
    """Paired seeds: the arms with heads copy the no-heads network of the same seed wherever name and shape match
    (body and main classifier); the heads' convolutions start alike (He init from the same stream)."""
    config = {**TINY, "init": "he"}
    arms = {arm.name: arm for arm in ah.make_arms(config)}
    states = {name: build_arm_model({**arm.fields(arms), "seed": 3, "difficulty": "default"}).state_dict()
              for name, arm in arms.items()}
    for key, tensor in states["no_heads"].items():
        assert torch.equal(states["heads"][key], tensor) and torch.equal(states["heads_bn"][key], tensor), key
    assert torch.equal(states["heads"]["aux1.conv.conv.weight"], states["heads_bn"]["aux1.conv.conv.weight"])
    other = build_arm_model({**arms["no_heads"].fields(arms), "seed": 4, "difficulty": "default"}).state_dict()
    assert not torch.equal(other["conv1.conv.weight"], states["no_heads"]["conv1.conv.weight"])


# ================================================================================================= configs
def test_tiers_and_the_standard_design():
    assert set(ah.CONFIGS) == {"quick", "standard", "full"}
    standard = ah.CONFIGS["standard"]
    assert standard["seeds"] >= 5 and tuple(standard["arms"]) == ah.ARMS
    assert len(ah.CONFIGS["full"]["lrs"]) >= 2  # the GPU tier tunes; the CPU tiers share one rate (the budget)
    # Overfitting needs many passes over a small training set.
    assert standard["steps"] * standard["batch_size"] / standard["n_train"] >= 20
    assert standard["device"] == "cpu" and ah.CONFIGS["full"]["device"] == "auto"


@pytest.mark.parametrize("change, message", [
    ({"model": "inception_v4"}, "no auxiliary heads"),
    ({"arms": ("heads", "heads_bn")}, "no_heads"),
    ({"early_fraction": 0.0}, "early_fraction"),
    ({"min_gap": 1.0}, "min_gap"),
])
def test_bad_configs_are_clear_errors(change, message):
    with pytest.raises(ValueError, match=message):
        ah.run({**ah.CONFIGS["quick"], **change}, progress=False)


def test_a_config_missing_keys_is_a_clear_error():
    with pytest.raises(ValueError, match="lacks"):
        ah.run({"seed": 0}, progress=False)


# ================================================================================================== schema
def test_schema_and_what_each_run_measures(tiny):
    _, frame = tiny
    assert set(ah.RESULT_COLUMNS) <= set(frame.columns)
    assert frame.groupby("arm")["point_id"].nunique().to_dict() == {"no_heads": 1, "heads": 1, "heads_bn": 1}
    train = frame[frame["split"] == "train"]
    assert len(train) == 3 * 3 and (train["grad_norm_lower"] > 0).all()
    # With heads the trainer's loss adds 0.3 x each head's loss to the main head's: it is larger.
    with_heads = train[train["arm"] != "no_heads"]
    assert (with_heads["loss"] > with_heads["main_loss"]).all()
    no_heads = train[train["arm"] == "no_heads"]
    assert np.allclose(no_heads["loss"], no_heads["main_loss"], rtol=1e-5)
    final = frame[frame["split"] == "final"]
    assert len(final) == 3 and final["train_accuracy"].between(0, 1).all()
    # Accuracy on 48 training images: a multiple of 1/48.
    assert np.allclose((final["train_accuracy"] * 48) % 1, 0) or np.allclose((final["train_accuracy"] * 48) % 1, 1)
    runs = ah.per_run(frame, 0.5)
    assert list(runs.columns) == ah.PER_RUN_COLUMNS and len(runs) == 3
    assert np.allclose(runs["generalisation_gap"], runs["final_train_accuracy"] - runs["final_val_accuracy"])
    assert list(ah.summarise(runs).columns) == ah.SUMMARY_COLUMNS


def test_early_area_is_the_mean_validation_accuracy_over_the_early_steps(tiny):
    _, frame = tiny
    runs = ah.per_run(frame, 0.5).set_index("arm")
    for arm, run in frame[frame["split"] == "val"].groupby("arm"):
        acc = run.set_index("step")["accuracy"]
        # Over steps 0..3: from chance (0.1) at step 0 to acc(3) at step 3, a trapezoid.
        assert runs.loc[arm, "early_area"] == pytest.approx((0.1 + acc[3]) / 2)


def test_a_second_run_runs_nothing_new(tiny, monkeypatch):
    folder, frame = tiny
    monkeypatch.setattr(ah, "run_point", lambda point: (_ for _ in ()).throw(AssertionError(f"{point} ran again")))
    pd.testing.assert_frame_equal(ah.run(TINY, results_dir=folder, progress=False), frame)


# ================================================================================================ verdicts
def _runs(val, gap, *, early=(0.5, 0.6, 0.6), learned=True, seeds=5):
    """Per-run rows: ``val`` and ``gap`` give each arm's (no_heads, heads, heads_bn) mean; seed s adds a jitter
    that differs between arms so that the paired differences vary."""
    rows = []
    for k, arm in enumerate(ah.ARMS):
        for seed in range(seeds):
            jitter = 0.002 * seed * (k + 1)
            rows.append({"stage": "seed", "arm": arm, "seed": seed, "lr": 0.03, "final_val_accuracy": val[k] + jitter,
                         "final_train_accuracy": val[k] + gap[k] + jitter, "generalisation_gap": gap[k],
                         "early_area": early[k] + jitter, "grad_norm_lower": 2.0 if k else 1.0, "learned": learned,
                         "diverged": False})
    return pd.DataFrame(rows)


def _words(verdicts):
    return {key: v.word for key, v in verdicts.items()}


def test_heads_that_regularise_an_overfitting_net_support_every_claim():
    verdicts = ah.decide(_runs(val=(0.70, 0.74, 0.77), gap=(0.25, 0.20, 0.18)), min_gap=0.05)
    assert _words(verdicts) == {"heads_accuracy": SUPPORTS, "heads_gap": SUPPORTS, "early": SUPPORTS,
                                "bn_accuracy": SUPPORTS}
    assert verdicts["heads_accuracy"].effect.effect == pytest.approx(0.04 + 0.002 * 2)  # the jitter's mean, 2 x 0.002
    assert verdicts["heads_gap"].effect.effect == pytest.approx(0.05)  # none's 0.25 minus heads' 0.20


def test_heads_that_hurt_contradict_and_equal_arms_detect_no_effect():
    verdicts = ah.decide(_runs(val=(0.74, 0.70, 0.70), gap=(0.20, 0.25, 0.25)), min_gap=0.05)
    assert verdicts["heads_accuracy"].word == CONTRADICTS and verdicts["heads_gap"].word == CONTRADICTS
    runs = _runs(val=(0.70, 0.70, 0.70), gap=(0.2, 0.2, 0.2))
    noisy = runs["arm"].map({"no_heads": 0.0, "heads": 1.0, "heads_bn": -1.0}) * runs["seed"].map(
        dict(enumerate((0.01, -0.01, 0.02, -0.02, 0.0))))
    runs["final_val_accuracy"] += noisy
    verdicts = ah.decide(runs, min_gap=0.05)
    assert verdicts["heads_accuracy"].word == NO_EFFECT and verdicts["bn_accuracy"].word == NO_EFFECT


def test_a_net_that_does_not_overfit_leaves_the_regulariser_claims_not_tested():
    runs = _runs(val=(0.70, 0.74, 0.77), gap=(0.02, 0.01, 0.01))
    assert ah.overfits(runs, 0.05) == (False, pytest.approx(0.02))
    verdicts = ah.decide(runs, min_gap=0.05)
    assert _words(verdicts) == {"heads_accuracy": NOT_TESTED, "heads_gap": NOT_TESTED, "bn_accuracy": NOT_TESTED,
                                "early": SUPPORTS}  # speed is not a regulariser's claim: not gated on overfitting
    assert verdicts["bn_accuracy"].reason == ("the net without heads does not overfit: its train-minus-validation "
                                              "accuracy gap is 0.020, below the 0.050 a regulariser needs to act on")
    assert verdicts["heads_accuracy"].effect.effect > 0  # the figures are kept beside the words


def test_an_arm_that_did_not_learn_is_named():
    runs = _runs(val=(0.70, 0.74, 0.77), gap=(0.25, 0.20, 0.18))
    runs.loc[(runs["arm"] == "heads_bn") & (runs["seed"].isin([1, 4])), "learned"] = False
    verdicts = ah.decide(runs, min_gap=0.05)
    assert verdicts["bn_accuracy"].word == NOT_TESTED and verdicts["heads_accuracy"].word == SUPPORTS
    assert verdicts["bn_accuracy"].reason == "did not pass the learnability gate: heads_bn in seeds 1, 4"
    assert verdicts["bn_accuracy"].arms_learned == "8/10"


def test_claims_follow_the_arms_that_ran():
    runs = _runs(val=(0.70, 0.74, 0.77), gap=(0.25, 0.20, 0.18))
    names = [c.claim for c in ah.claims(ah.decide(runs, min_gap=0.05))]
    assert names == ["aux heads raise validation accuracy", "aux heads narrow the generalisation gap",
                     "BN in the aux heads raises accuracy"]
    two = ah.decide(runs[runs["arm"] != "heads_bn"], min_gap=0.05)
    assert [c.claim for c in ah.claims(two)] == names[:2]
    line = ah.verdict(ah.decide(runs, min_gap=0.05), runs, min_gap=0.05)
    assert line.startswith("the net without heads overfits: train minus validation accuracy 0.250 (a regulariser "
                           "is tested from 0.050 on); heads vs none: supports: validation accuracy, heads vs none")
    assert line.endswith("gradient norm below the first head (GoogLeNet's motivation): 2 with heads vs 1 without "
                         "(x2.00, mean over logged steps and seeds)")


# ================================================================================================= section
def test_section_renders_its_claims_tables_and_figures(tiny, tmp_path, monkeypatch):
    folder, _ = tiny
    monkeypatch.setitem(ah.CONFIGS, "quick", TINY)
    monkeypatch.setattr(sections.aux_heads, "default_results_dir", lambda *_: folder)
    monkeypatch.setattr(ah, "run_point", lambda point: (_ for _ in ()).throw(AssertionError("ran again")))
    section = sections.aux_heads.section("quick", 0)
    assert len(section.claims) == 3 and all(c.verdict.word in VERDICTS for c in section.claims)
    assert all(c.verdict.arms_learned.endswith("/2") for c in section.claims)
    markdown = render_section(section, tmp_path)
    for stem in ("aux_heads.md", "aux_heads_runs.csv", "aux_heads_curves.csv", "aux_heads_accuracy.png",
                 "aux_heads_gradients.png"):
        assert (tmp_path / stem).exists(), stem
    assert "Verdict at this scale" in markdown
    table = (tmp_path / "aux_heads.md").read_text()
    for header in ("Tuned lr", "Val. accuracy (%), mean ± sd", "Train - val. (pp)", "Gradient norm below first head"):
        assert header in table, header
    assert not math.isnan(float(section.tables[0].frame["val_accuracy"].iloc[0]))


def _y_tick_labels(fig):
    fig.canvas.draw()
    ax = fig.axes[0]
    low, high = ax.get_ylim()
    return ax, [t.get_text() for t in ax.get_yticklabels() if low <= t.get_position()[1] <= high]


def test_the_gradient_figure_reads(tiny):
    """issue 18.3: the y-label stays beside the axes (it ran through the title); the log axis is labelled with a
    few plain numbers (1, 2, 5 x 10^k over several decades), never mantissas or labelled minor ticks."""
    _, frame = tiny
    fig = sections.aux_heads._gradient_figure(frame)
    try:
        ax, labels = _y_tick_labels(fig)
        renderer = fig.canvas.get_renderer()
        assert ax.yaxis.label.get_window_extent(renderer).height <= ax.get_window_extent(renderer).height
        assert ax.get_yscale() == "log" and 2 <= len(labels) <= 8, labels
        assert all(float(text) > 0 for text in labels), labels  # plain numbers: no "$10^{0}$" mathtext
        assert not any(t.get_text() for t in ax.get_yticklabels(minor=True))
    finally:
        plt.close(fig)
    wide = frame[frame["split"] == "train"].copy()
    wide["grad_norm_lower"] = 10.0 ** np.linspace(-2, 2, len(wide))  # four decades
    fig = sections.aux_heads._gradient_figure(wide)
    try:
        _, labels = _y_tick_labels(fig)
        assert labels and all(round(float(t) / 10 ** math.floor(math.log10(float(t))), 6) in (1, 2, 5)
                              for t in labels), labels
    finally:
        plt.close(fig)
