"""The smoothness experiment (Santurkar et al. 2018) under the verdict protocol: configs and arms, the result
schema and resumability on a tiny config, the verdict words of every branch on fixed frames, the intervals
against an independent computation, noisy BN, and the report section with its claims. Not the science."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from analysis.experiments import smoothness as sm
from analysis.experiments.verdict import CONTRADICTS, NO_EFFECT, NOT_TESTED, SUPPORTS
from analysis.report.build import render_section
from analysis.report.sections import smoothness as sm_section
from analysis.training.sweep import point_id
from inception_models import create_model

# A 1/16-width net, 6 steps of batch 8, two tuning rates (the first equal to the shared rate), two seeds.
TINY = {
    **sm.CONFIGS["quick"],
    "width_mult": 0.0625,
    "n_train": 64,
    "n_val": 32,
    "batch_size": 8,
    "steps": 6,
    "lrs": (0.05, 0.1),
    "shared_lr": 0.05,
    "eval_every": 3,
    "probe_every": 3,
    "num_points": 2,
    "eigen_iters": 2,
    "seeds": 2,
    "workers": 1,
}

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------------ config
def test_tiers_and_arms():
    assert set(sm.CONFIGS) == {"quick", "standard", "full"}
    standard = sm.CONFIGS["standard"]
    assert standard["seeds"] >= 5 and len(standard["lrs"]) >= 3 and standard["momentum"] == 0.0
    assert standard["shared_lr"] in standard["lrs"]  # the runs both settings need are trained once
    assert set(sm.CONFIGS["quick"]) == set(standard) == set(sm.CONFIGS["full"])
    bn, none = sm.arms(standard)
    assert (bn.name, none.name) == ("bn", "none")
    assert none.init == "data" and none.share_with == "bn" and bn.init == "default"
    assert bn.knobs == {"width_mult": 0.125, "norm": "bn"} and none.knobs["norm"] == "none"
    noisy = sm.arms(sm.CONFIGS["full"])[2]
    assert noisy.name == "noisy_bn" and noisy.knobs["norm"] == "bn" and noisy.share_with == "bn"
    assert noisy.recipe == {"bn_noise": list(sm.NOISE)}


@pytest.mark.parametrize("change, message", [
    ({"arms": ("bn", "ln")}, "unknown arm"),
    ({"arms": ("bn",)}, "must include"),
    ({"shared_lr": 0.0}, "shared_lr"),
    ({"probe_every": 1000}, "probe_every"),
    ({"model": "resnet50"}, "unknown model 'resnet50'"),
    ({"model": "inception_v3"}, "inception_v3 needs image_size >= 75, got 32"),
])
def test_bad_configs_are_clear_errors(change, message):
    with pytest.raises(ValueError, match=message):
        sm.run({**TINY, **change}, progress=False)


def test_a_config_missing_keys_is_a_clear_error():
    with pytest.raises(ValueError, match="lacks"):
        sm.run({"arms": ("bn", "none")}, progress=False)


# ------------------------------------------------------------------------------------------------ running
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("smoothness")
    frame = sm.run(TINY, results_dir=folder, progress=False)
    return folder, frame, sm.summarise(frame)


def test_run_schema_settings_and_probes(tiny):
    _, frame, runs = tiny
    assert set(frame["rate"]) == {"tune", "own", "shared"}
    assert set(frame["split"]) == {"train", "val", "probe", "ics"}
    tune = frame[frame["rate"] == "tune"]
    assert set(tune["split"]) == {"train", "val"} and set(tune["eval_split"]) == {"test"}
    assert set(tune["seed"]) == {10_000}  # the tuning seed, apart from the comparison's seeds 0 and 1
    seeded = frame[frame["rate"] != "tune"]
    probes = seeded[seeded["split"] == "probe"]
    # probes at steps 0 and 3 of 6, one Hessian eigenvalue each, every measure finite
    assert probes.groupby(["rate", "arm", "seed"])["step"].apply(list).map(lambda s: s == [0, 3]).all()
    assert probes[["loss_range", "grad_pred_max", "beta_eff", "hessian_top"]].notna().all().all()
    assert (probes["loss_max"] >= probes["loss_min"]).all() and (probes["beta_eff"] > 0).all()
    ics = seeded[seeded["split"] == "ics"]
    assert ics.groupby(["rate", "arm", "seed", "step"])["layer"].apply(list).map(
        lambda layers: layers == list(TINY["ics_layers"])).all()
    assert ics["cosine"].between(-1, 1).all() and (ics["shift"] >= 0).all()
    assert list(runs.columns) == sm.RUN_SUMMARY_COLUMNS
    assert len(runs) == 4 + 4 + 4  # 2 arms x 2 rates tuned, 2 arms x 2 seeds in each setting
    assert (runs.loc[runs["rate"] != "tune", "probes"] == 2).all()
    assert runs.loc[runs["rate"] == "tune", ["beta_eff", "ics_shift"]].isna().all().all()
    assert (runs.loc[runs["rate"] == "shared", "lr"] == 0.05).all()


def test_no_bn_arm_starts_from_the_bn_arms_weights_and_the_data_init():
    point = {**sm._common(TINY), **sm.arms(TINY)[1].fields({a.name: a for a in sm.arms(TINY)}),
             "seed": 3, "lr": 0.05}
    from analysis.experiments.runner import build_arm_model, tensors

    images = tensors("train", TINY["n_train"], TINY["image_size"])[0]
    none = build_arm_model(point, images)
    torch.manual_seed(3)
    bn = create_model("small_inception", num_classes=10, norm="bn", width_mult=TINY["width_mult"])
    torch.manual_seed(3)
    plain = create_model("small_inception", num_classes=10, norm="none", width_mult=TINY["width_mult"])
    # the classifier has no conv after it: the data init leaves it, so it is the BN arm's, not its own draw
    assert torch.equal(none.fc.weight, bn.fc.weight) and not torch.equal(plain.fc.weight, bn.fc.weight)
    conv = next(m for m in none.modules() if isinstance(m, nn.Conv2d))
    seen = []
    # clone: the ReLU after the conv works in place
    hook = conv.register_forward_hook(lambda module, inputs, output: seen.append(output.clone()))
    with torch.no_grad():
        none(images[:256])
    hook.remove()
    # the data-dependent init normalised the first conv's channels on these training images
    assert seen[0].mean((0, 2, 3)).abs().max() < 1e-4
    assert torch.allclose(seen[0].std((0, 2, 3)), torch.ones(conv.out_channels), atol=1e-3)


def test_a_run_both_settings_need_is_trained_once_and_a_rerun_trains_nothing(tiny, monkeypatch):
    folder, frame, runs = tiny
    own = runs[runs["rate"] == "own"]
    assert set(own["lr"]) <= {0.05, 0.1}
    both = frame[frame["rate"] == "shared"]["point_id"].unique()
    reused = set(both) & set(frame[frame["rate"] == "own"]["point_id"])
    assert reused == set(own[own["lr"] == 0.05].merge(runs[runs["rate"] == "shared"], on=["arm", "seed"])
                         .pipe(lambda m: frame[(frame["rate"] == "own") & frame["arm"].isin(m["arm"])
                                               & (frame["lr"] == 0.05)]["point_id"]))
    lines = (folder / "results.jsonl").read_text().splitlines()
    ids = {line.split('"point_id": "')[1][:12] for line in lines if '"point_id": "' in line}
    assert len(ids) == 4 + 2 * 2 + 2 * 2 - len(reused)

    def boom(point):
        raise AssertionError("a finished run was run again")

    monkeypatch.setattr(sm, "run_point", boom)
    again = sm.run(TINY, results_dir=folder, progress=False)
    pd.testing.assert_frame_equal(frame.reset_index(drop=True), again.reset_index(drop=True))


def test_a_diverged_run_is_a_result_not_a_crash():
    arm = sm.arms(TINY)[1]
    point = {**sm._common(TINY), **arm.fields({a.name: a for a in sm.arms(TINY)}), "stage": "tune",
             "eval_split": "test", "lr": 1e5, "seed": 0}
    rows = sm.run_point(point).assign(point_id=point_id(point), stage="tune", arm="none", seed=0, lr=1e5, steps=6,
                                      difficulty="default")
    summary = sm.summarise(rows.assign(rate="tune"))
    assert summary["diverged"].tolist() == [True] and summary["learned"].tolist() == [False]


# ------------------------------------------------------------------------------------------------- verdict
def _runs(bn: list[float], none: list[float], *, column: str = "loss_range", rate: str = "shared",
          learned: dict[tuple[str, int], bool] | None = None) -> pd.DataFrame:
    rows = []
    for arm, values in (("bn", bn), ("none", none)):
        for seed, value in enumerate(values):
            row = {"arm": arm, "seed": seed, "learned": (learned or {}).get((arm, seed), True)}
            rows += [{**row, "rate": r, **{m: 1.0 for m in sm.MEASURES}, column: value} for r in ("shared", "own")]
    frame = pd.DataFrame(rows)
    return frame


def _claim(runs: pd.DataFrame, name: str):
    return {c.claim: c for c in sm.claims(runs)}[name]


LOSS = "BN lowers loss variation"
ICS_L2 = "BN does not reduce internal covariate shift (l2)"
ICS_COS = "BN does not reduce internal covariate shift (cosine)"


@pytest.mark.parametrize("bn, none, word", [
    ([1.0, 1.1, 0.9, 1.0, 1.05], [2.0, 2.2, 1.9, 2.1, 2.0], SUPPORTS),   # BN's loss varies less in every seed
    ([2.0, 2.2, 1.9, 2.1, 2.0], [1.0, 1.1, 0.9, 1.0, 1.05], CONTRADICTS),
    ([1.0, 1.2, 0.9, 1.1, 1.0], [1.1, 1.0, 1.0, 1.0, 1.1], NO_EFFECT),
])
def test_loss_variation_verdict_words(bn, none, word):
    claim = _claim(_runs(bn, none), LOSS)
    assert claim.verdict.word == word
    effect = np.mean(np.array(none) - np.array(bn))  # positive: BN lower, Santurkar's direction
    assert claim.verdict.effect.effect == pytest.approx(effect)
    assert claim.row()["experiment"] == "smoothness" and claim.row()["seeds"] == 5


def test_a_run_below_the_gate_makes_every_claim_not_tested():
    runs = _runs([1.0, 1.1, 0.9], [2.0, 2.2, 1.9], learned={("none", 1): False})
    for claim in sm.claims(runs):
        assert claim.verdict.word == NOT_TESTED
        assert claim.verdict.reason == "did not pass the learnability gate: none in seed 1"
        assert claim.verdict.arms_learned == "5/6"


@pytest.mark.parametrize("column, bn, none, word", [
    # Santurkar's finding, BN with more shift: the l2 distance larger, the cosine lower with BN
    ("ics_shift", [2.0, 2.1, 1.9], [1.0, 1.1, 1.0], SUPPORTS),
    ("ics_cosine", [0.5, 0.55, 0.45], [0.9, 0.85, 0.95], SUPPORTS),
    # the BN paper's premise, BN with less shift
    ("ics_shift", [1.0, 1.1, 1.0], [2.0, 2.1, 1.9], CONTRADICTS),
    ("ics_cosine", [0.9, 0.85, 0.95], [0.5, 0.55, 0.45], CONTRADICTS),
])
def test_internal_covariate_shift_is_signed_so_that_more_shift_with_bn_supports(column, bn, none, word):
    name = ICS_L2 if column == "ics_shift" else ICS_COS
    assert _claim(_runs(bn, none, column=column), name).verdict.word == word


def test_each_claim_reads_its_own_rate_setting():
    runs = _runs([1.0, 1.1, 0.9], [2.0, 2.2, 1.9], column="beta_eff")
    runs.loc[(runs["rate"] == "own") & (runs["arm"] == "bn"), "beta_eff"] = 5.0  # BN rougher at its own rate
    words = {c.claim: c.verdict.word for c in sm.claims(runs)}
    assert words["BN lowers effective beta-smoothness"] == SUPPORTS
    assert words["BN lowers effective beta-smoothness at each arm's own best rate"] == CONTRADICTS


def test_summary_interval_is_students_t_over_seeds():
    values = [0.2, 0.5, 0.3, 0.9, 0.4]
    runs = _runs(values, [1.0] * 5).assign(lr=0.1, final_val_accuracy=0.8)
    table = sm.summary_table(runs)
    row = table[(table["rate"] == "shared") & (table["arm"] == "bn")].iloc[0]
    mean, sd, n = np.mean(values), np.std(values, ddof=1), len(values)
    half = 2.7764451051977987 * sd / math.sqrt(n)  # t(0.975, 4)
    assert row["loss_range"] == pytest.approx(mean)
    assert (row["loss_range_low"], row["loss_range_high"]) == pytest.approx((mean - half, mean + half))
    assert row["learned"] == "5/5"


def test_the_run_measure_is_the_median_over_probes_and_the_layer_mean_for_ics():
    rows = [{"point_id": "p", "split": "probe", "step": s, "loss_range": v, "grad_pred_max": 1.0, "beta_eff": 1.0,
             "hessian_top": 1.0} for s, v in ((0, 5.0), (3, 1.0), (6, 2.0))]
    rows += [{"point_id": "p", "split": "ics", "step": s, "layer": layer, "shift": v, "cosine": 0.5}
             for s, pairs in ((0, ((1, 1.0), (2, 3.0))), (3, ((1, 10.0), (2, 10.0))), (6, ((1, 0.0), (2, 0.0))))
             for layer, v in pairs]
    measures = sm._per_run_measures(pd.DataFrame(rows))
    assert measures.loc["p", "loss_range"] == 2.0 and measures.loc["p", "probes"] == 3
    assert measures.loc["p", "ics_shift"] == 2.0  # layer means 2, 10, 0 -> median 2


# ---------------------------------------------------------------------------------------------- noisy BN
class _FakeTrainer:
    def __init__(self, model: nn.Module) -> None:
        self.model, self.step = model, 0


def test_noisy_bn_is_fixed_within_a_step_and_changes_between_steps():
    torch.manual_seed(0)
    model = create_model("small_inception", norm="bn", width_mult=0.125).train()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        clean = model(x)
    trainer = _FakeTrainer(model)
    noise = sm.BatchNormNoise(seed=0)
    noise.on_train_start(trainer)
    with torch.no_grad():
        first, again = model(x), model(x)
        trainer.step = 1
        noise.on_step_end(trainer, None, torch.tensor(0.0))
        second = model(x)
    noise.on_train_end(trainer)
    with torch.no_grad():
        after = model(x)
    assert torch.equal(first, again)
    assert not torch.allclose(first, second) and not torch.allclose(first, clean)
    assert torch.allclose(after, clean, atol=1e-6)  # hooks removed


def test_noisy_bn_needs_bn_layers():
    with pytest.raises(ValueError, match="no BatchNorm"):
        sm.BatchNormNoise().attach(create_model("small_inception", norm="none", width_mult=0.125))


# ------------------------------------------------------------------------------------------------ section
def test_section_renders_with_its_claims(tiny, tmp_path, monkeypatch):
    folder, _, _ = tiny
    monkeypatch.setitem(sm.CONFIGS, "quick", TINY)
    monkeypatch.setattr(sm_section, "default_results_dir", lambda *args, **kwargs: folder)
    section = sm_section.section("quick", 0, results_root=tmp_path)
    assert [c.claim for c in section.claims] == [c[0] for c in sm.CLAIMS]
    assert all(c.verdict.word in (SUPPORTS, CONTRADICTS, NO_EFFECT, NOT_TESTED) for c in section.claims)
    assert [t.stem for t in section.tables] == ["smoothness_tuning", "smoothness_summary", "smoothness_runs",
                                                "smoothness_probes"]
    assert [t.inline for t in section.tables] == [True, True, False, False]
    assert len(section.figures) == 8 and "2/lr = 40" in section.figures[4].caption
    text = render_section(section, tmp_path)
    assert "smoke test" in section.text and section.claims[0].claim in section.verdict
    summary_md = (tmp_path / "smoothness_summary.md").read_text().splitlines()
    header = next(line for line in summary_md if line.startswith("| Rate"))
    assert header.count("|") == 12  # 11 columns: no header holds a pipe that would split it
    assert all((tmp_path / f"{f.stem}.png").exists() for f in section.figures)
    assert "smoothness_hessian.png" in text
    for name in ("smoothness_summary", "smoothness_tuning"):
        assert "?" not in (tmp_path / f"{name}.tex").read_text()  # no character LaTeX cannot print


def test_figures_read_at_a_glance(tiny, monkeypatch):
    import matplotlib.pyplot as plt

    _, frame, runs = tiny
    figures = {f.stem: f for f in sm_section._figures(frame, runs, TINY)}
    hessian = figures["smoothness_hessian"].draw()
    ax = hessian.axes[0]
    assert [round(line.get_ydata()[0], 6) for line in ax.lines if line.get_linestyle() == ":"] == [40.0]
    assert ax.get_title() == "shared rate (lr 0.05)" and "λ_max" in ax.get_ylabel()
    assert all(len(line.get_xdata()) == 2 for line in ax.lines if line.get_marker() == "o")  # 2 probes, markers
    plt.close(hessian)
    accuracy = figures["smoothness_accuracy"].draw()
    panels = accuracy.axes
    assert sorted(a.get_title() for a in panels) == ["own best rate (lr 0.05)", "shared rate (lr 0.05)"]
    assert [a.get_legend() is not None for a in panels] == [True, False]  # one legend for the figure
    assert 0.1 in [line.get_ydata()[0] for line in panels[0].lines if line.get_linestyle() == ":"]  # chance
    assert all("=" not in a.get_title() for a in panels)
    plt.close(accuracy)


def test_cli_prints_one_row_per_probe(tmp_path, monkeypatch, capsys):
    import io
    import sys

    from analysis.cli import main

    monkeypatch.setitem(sm.CONFIGS, "quick", {**TINY, "lrs": (0.05,), "seeds": 1})
    monkeypatch.setattr(sys, "argv", ["inception-lab", "smoothness", "--quick", "--results-dir", str(tmp_path),
                                      "--format", "csv"])
    try:
        main()
    except SystemExit as exit_:
        assert not exit_.code
    table = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert {"rate", "arm", "seed", "step", "loss_range", "grad_pred_max", "beta_eff", "hessian_top"} <= set(table)
    assert sorted(table["arm"].unique()) == ["bn", "none"]
    assert table.groupby(["rate", "arm"])["step"].apply(list).map(lambda s: s == [0, 3]).all()
