"""The smoothness experiment (Santurkar et al. 2018): config plumbing, result schema, resumability, the
initialisations and the noisy BN, the lr choice, the verdict on hand-made tables, and the report section on a
tiny config. Not the science."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from torch import nn

from analysis.experiments import smoothness as sm
from analysis.report.build import render_section
from analysis.report.document import Section
from analysis.report.sections import smoothness as sm_section
from analysis.training.sweep import point_id
from inception_models import create_model

# Two variants, one lr, a 1/16-width net: 4 sweep steps and 6 probed steps of batch 8.
TINY = {
    **sm.CONFIGS["quick"],
    "width_mult": 0.0625,
    "init_batch": 16,
    "n_train": 32,
    "n_val": 16,
    "batch_size": 8,
    "lrs": (0.05,),
    "sweep_steps": 4,
    "init_check": ("he",),
    "init_check_lrs": (0.05,),
    "steps": 6,
    "probe_every": 3,
    "num_points": 2,
    "eigen_every": 3,
    "eigen_iters": 2,
    "eval_every": None,
    "workers": 1,
}


pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------------ config
def test_points_cover_variants_lrs_and_seeds():
    quick = sm.CONFIGS["quick"]
    sweep = sm.sweep_points(quick)
    assert len(sweep) == len(quick["lrs"]) * 2 + len(quick["init_check_lrs"]) * len(quick["init_check"])
    compared = [p for p in sweep if p["compared"]]
    assert {(p["variant"], p["lr"]) for p in compared} == {(v, lr) for v in ("bn", "none") for lr in quick["lrs"]}
    checks = [(p["variant"], p["init"], p["lr"]) for p in sweep if not p["compared"]]
    assert checks == [("none", init, lr) for lr in quick["init_check_lrs"] for init in ("glorot", "he")]
    assert all(p["phase"] == "sweep" and p["steps"] == quick["sweep_steps"] for p in sweep)
    probed = sm.probe_points({**quick, "seeds": 2}, 0.05)
    assert [(p["variant"], p["seed"]) for p in probed] == [("bn", 0), ("none", 0), ("bn", 1), ("none", 1)]
    assert {p["init"] for p in probed if p["variant"] == "none"} == {"data"}
    assert {p["init"] for p in probed if p["variant"] == "bn"} == {"default"}
    ids = {point_id(p) for p in sweep + probed}
    assert len(ids) == len(sweep) + len(probed)


def test_full_config_adds_noisy_bn_and_seeds():
    full = sm.CONFIGS["full"]
    assert set(sm.CONFIGS) >= {"quick", "full"}
    assert full["variants"] == ("bn", "none", "noisy_bn") and full["seeds"] == 3
    assert len(sm.probe_points(full, 0.1)) == 9
    assert sm.probe_points(full, 0.1)[2]["norm"] == "bn"


@pytest.mark.parametrize("change, message", [
    ({"variants": ("bn", "ln")}, "unknown variant"),
    ({"variants": ("bn",)}, "must include"),
    ({"none_init": "orthogonal"}, "none_init"),
    ({"init_check": ("lsuv",)}, "init_check"),
    ({"lr": None, "lrs": ()}, "give lr"),
    ({"probe_every": 1000}, "probe_every"),
    ({"sweep_steps": 2}, "sweep_steps"),
    ({"eigen_every": 110}, "multiple of probe_every"),
])
def test_bad_configs_are_clear_errors(change, message):
    with pytest.raises(ValueError, match=message):
        sm.sweep_points({**sm.CONFIGS["quick"], **change})


def test_a_config_missing_keys_is_a_clear_error():
    with pytest.raises(ValueError, match="lacks"):
        sm.run({"variants": ("bn", "none")}, progress=False)


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
        model.eval()
        evaluated = model(x)
        model.train()
    noise.on_train_end(trainer)
    with torch.no_grad():
        after = model(x)
    assert torch.equal(first, again)
    assert not torch.allclose(first, second)
    assert not torch.allclose(first, clean)
    assert torch.equal(after, clean) or torch.allclose(after, clean, atol=1e-6)  # hooks removed
    assert evaluated.shape == clean.shape


def test_noisy_bn_needs_bn_layers():
    with pytest.raises(ValueError, match="no BatchNorm"):
        sm.BatchNormNoise().attach(create_model("small_inception", norm="none", width_mult=0.125))


# ------------------------------------------------------------------------------------------------ running
def test_run_schema_rows_and_resume(tmp_path, monkeypatch):
    frame = sm.run(TINY, results_dir=tmp_path, progress=False)
    assert list(frame.columns) == sm.RUN_COLUMNS
    sweep = frame[frame["phase"] == "sweep"]
    probed = frame[frame["phase"] == "probe"]
    # per sweep run: 4 train rows and the final val row; the he-init check is a third run
    assert sweep.groupby(["variant", "init"])["record"].value_counts().to_dict() == {
        ("bn", "default", "train"): 4, ("bn", "default", "val"): 1, ("none", "data", "train"): 4,
        ("none", "data", "val"): 1, ("none", "he", "train"): 4, ("none", "he", "val"): 1}
    assert sweep.groupby("init")["compared"].all().to_dict() == {"default": True, "data": True, "he": False}
    probes = probed[probed["record"] == "probe"]
    assert probes.groupby("variant")["step"].apply(list).to_dict() == {"bn": [0, 3], "none": [0, 3]}
    assert probes["hessian_top"].notna().all() and probes["loss_smooth"].notna().all()
    assert (probes["loss_max"] >= probes["loss_min"]).all() and (probes["beta_eff"] > 0).all()
    assert (probed["lr"] == 0.05).all() and set(probed["init"]) == {"default", "data"}
    assert len(probed[probed["record"] == "train"]) == 2 * 6

    def boom(point):
        raise AssertionError("a finished run was run again")

    monkeypatch.setattr(sm, "run_point", boom)
    again = sm.run(TINY, results_dir=tmp_path, progress=False)
    pd.testing.assert_frame_equal(frame, again)


def test_a_fixed_lr_without_sweep_runs_only_the_probed_runs(tmp_path):
    frame = sm.run({**TINY, "lrs": (), "init_check_lrs": (), "lr": 0.02, "variants": ("bn", "none", "noisy_bn"),
                    "steps": 3, "eigen_every": None}, results_dir=tmp_path, progress=False)
    assert set(frame["phase"]) == {"probe"} and (frame["lr"] == 0.02).all()
    assert frame[frame["record"] == "probe"]["variant"].tolist() == ["bn", "none", "noisy_bn"]
    assert frame["hessian_top"].isna().all()


def test_a_diverged_run_is_a_result_not_a_crash():
    points = sm.sweep_points({**TINY, "lrs": (1e5,), "init_check": ()})
    frame = sm.run_point(points[1])  # no BN at an absurd rate
    assert frame["variant"].iloc[0] == "none" and frame["diverged"].all()
    table = sm.sweep_table(frame)
    assert table["gain"].tolist() == [-math.inf] and not table["learned"].any()


# --------------------------------------------------------------------------------------- lr and summaries
def _sweep_rows(variant: str, lr: float, losses: list[float], compared: bool = True) -> pd.DataFrame:
    return pd.DataFrame({"phase": "sweep", "variant": variant, "init": "x", "compared": compared, "lr": lr,
                         "seed": 0, "record": "train", "step": range(1, len(losses) + 1), "loss": losses,
                         "accuracy": 0.5})


def test_choose_lr_takes_the_rate_whose_worse_variant_gains_most():
    frame = pd.concat([
        _sweep_rows("bn", 0.05, [2.3] * 4 + [1.5] * 4), _sweep_rows("none", 0.05, [2.3] * 8),
        _sweep_rows("bn", 0.1, [2.3] * 4 + [1.8] * 4), _sweep_rows("none", 0.1, [2.3] * 4 + [2.0] * 4),
        _sweep_rows("none", 0.05, [2.3] * 4 + [1.0] * 4, compared=False),  # a check: must not sway the choice
    ])
    table = sm.sweep_table(frame, min_gain=0.1)
    assert list(table.columns) == sm.SWEEP_COLUMNS
    none_05 = table[(table["variant"] == "none") & (table["lr"] == 0.05)].iloc[0]
    assert not none_05["learned"] and none_05["gain"] == pytest.approx(math.log(10) - 2.3)
    assert table.loc[table["chosen"], "lr"].tolist() == [0.1, 0.1]
    assert len(table) == 5 and table["compared"].tolist() == [True] * 4 + [False]
    assert sm.choose_lr(table) == 0.1
    with pytest.raises(ValueError, match="sweep"):
        sm.choose_lr(pd.DataFrame())


def _summary(values: dict[str, dict[str, float]], learned: dict[str, bool] | None = None, seeds=(0,)) -> pd.DataFrame:
    rows = []
    for seed in seeds:
        for variant, measures in values.items():
            rows.append({"variant": variant, "seed": seed, "loss_end": 1.5,
                         "learned": True if learned is None else learned[variant],
                         **{m: measures.get(m, 1.0) * (1 + 0.01 * seed) for m in sm.PROBE_MEASURES}})
    return pd.DataFrame(rows)


def test_verdict_shows_when_bn_is_smoother_everywhere():
    summary = _summary({"bn": {m: 1.0 for m in sm.PROBE_MEASURES}, "none": {m: 3.0 for m in sm.PROBE_MEASURES}},
                       seeds=(0, 1))
    assert sm.verdict(summary) == (
        "shows: BN smoother on all 5 measures (no-BN / BN medians: raw loss_range x3.00 (BN smoother); raw "
        "grad_pred_max x3.00 (BN smoother); raw beta_eff x3.00 (BN smoother); scale-free loss_range_rel x3.00 (BN "
        "smoother); scale-free grad_pred_rel_max x3.00 (BN smoother); 2 seeds)")
    table = sm.comparison(summary)
    assert list(table.columns) == sm.COMPARISON_COLUMNS
    assert table["ratio"].round(6).tolist() == [3.0] * 5


def test_verdict_does_not_show_when_bn_is_rougher():
    summary = _summary({"bn": {m: 2.0 for m in sm.PROBE_MEASURES}, "none": {m: 1.0 for m in sm.PROBE_MEASURES}})
    assert sm.verdict(summary) == (
        "does not show: BN smoother on none of 5 measures (raw loss_range x0.50 (BN rougher); raw grad_pred_max x0.50 "
        "(BN rougher); raw beta_eff x0.50 (BN rougher); scale-free loss_range_rel x0.50 (BN rougher); scale-free "
        "grad_pred_rel_max x0.50 (BN rougher); 1 seed, so no spread over seeds measured)")
    assert set(sm.comparison(summary)["call"]) == {"BN rougher"}


def test_verdict_is_inconclusive_when_a_variant_did_not_learn():
    summary = _summary({"bn": {}, "none": {"loss_range": 0.01}}, learned={"bn": True, "none": False})
    summary.loc[summary["variant"] == "none", "loss_end"] = 2.25
    assert sm.verdict(summary) == (
        "inconclusive: a variant did not learn (none seed 0: end loss 2.250 vs chance 2.303); a network at chance has "
        "a flat landscape for the wrong reason")


def test_verdict_is_inconclusive_when_raw_and_scale_free_disagree():
    summary = _summary({"bn": {m: 1.0 for m in sm.PROBE_MEASURES},
                        "none": {"loss_range": 3.0, "grad_pred_max": 3.0, "beta_eff": 3.0}})
    assert sm.verdict(summary) == (
        "inconclusive: the measures disagree, BN smoother on 3 of 5 (raw loss_range x3.00 (BN smoother); raw "
        "grad_pred_max x3.00 (BN smoother); raw beta_eff x3.00 (BN smoother); scale-free loss_range_rel x1.00 (no "
        "difference); scale-free grad_pred_rel_max x1.00 (no difference); 1 seed, so no spread over seeds measured)")


def test_verdict_is_inconclusive_when_seeds_disagree():
    summary = _summary({"bn": {m: 1.0 for m in sm.PROBE_MEASURES}, "none": {m: 3.0 for m in sm.PROBE_MEASURES}},
                       seeds=(0, 1))
    summary.loc[(summary["seed"] == 1) & (summary["variant"] == "none"), "beta_eff"] = 0.2
    assert sm.verdict(summary) == (
        "inconclusive: spread over seeds larger than the effect (raw loss_range x3.00 (BN smoother); raw grad_pred_max "
        "x3.00 (BN smoother); raw beta_eff x0.77 (seeds disagree); scale-free loss_range_rel x3.00 (BN smoother); "
        "scale-free grad_pred_rel_max x3.00 (BN smoother); 2 seeds)")


def test_verdict_needs_both_variants():
    with pytest.raises(ValueError, match="both"):
        sm.verdict(_summary({"bn": {}}))


def test_matched_uses_the_overlap_of_the_losses_both_runs_visited():
    rows = []
    for variant, losses, ranges in (("bn", [2.3, 2.0, 1.5, 1.0], [9, 1, 1, 1]),
                                    ("none", [2.3, 2.2, 2.1, 2.05], [9, 4, 4, 4])):
        for step, (loss, r) in enumerate(zip(losses, ranges)):
            rows.append({"phase": "probe", "record": "probe", "variant": variant, "seed": 0, "step": step,
                         "loss_smooth": loss, **{m: float(r) for m in sm.PROBE_MEASURES}})
    table = sm.matched(pd.DataFrame(rows))
    assert list(table.columns) == sm.MATCHED_COLUMNS
    assert table["loss_low"].tolist() == [2.05, 2.05] and table["loss_high"].tolist() == [2.3, 2.3]
    assert table.set_index("variant")["probes"].to_dict() == {"bn": 1, "none": 4}
    assert table.set_index("variant")["loss_range"].to_dict() == {"bn": 9.0, "none": 4.0}


# ------------------------------------------------------------------------------------------------ section
def test_section_renders_on_a_tiny_config(tmp_path, monkeypatch):
    monkeypatch.setitem(sm.CONFIGS, "quick", TINY)
    section = sm_section.section("quick", 0, results_root=tmp_path)
    assert isinstance(section, Section)
    assert [t.stem for t in section.tables] == ["smoothness_lr_sweep", "smoothness_summary", "smoothness_matched",
                                                "smoothness_comparison", "smoothness_probes"]
    assert len(section.figures) == 7
    assert section.verdict.split(":")[0] in {"shows", "does not show", "inconclusive"}
    summary = section.tables[1].frame
    assert list(summary.columns) == sm.SUMMARY_COLUMNS and summary["probes"].tolist() == [2, 2]
    (tmp_path / "out").mkdir()
    text = render_section(section, tmp_path / "out")
    assert "lr sweep" in text and (tmp_path / "out" / "smoothness_loss_landscape.png").exists()


def test_cli_prints_one_row_per_variant_and_probed_step(tmp_path, monkeypatch, capsys):
    import io
    import sys

    import pandas as pd

    from analysis.cli import main

    monkeypatch.setitem(sm.CONFIGS, "quick", TINY)
    monkeypatch.setattr(sys, "argv", ["inception-lab", "smoothness", "--quick", "--results-dir", str(tmp_path),
                                      "--format", "csv"])
    try:
        main()
    except SystemExit as exit_:
        assert not exit_.code
    table = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert {"variant", "step", "loss_min", "loss_max", "grad_pred_min", "grad_pred_max", "beta_eff"} <= set(table.columns)
    assert sorted(table["variant"].unique()) == ["bn", "none"]
    assert table.groupby("variant")["step"].apply(list).tolist() == [[0, 3], [0, 3]]
    assert (table["loss_max"] >= table["loss_min"]).all() and (table["beta_eff"] > 0).all()


def test_model_must_have_the_knobs_and_the_size():
    with pytest.raises(ValueError, match="unknown model 'resnet50'"):
        sm.run({**TINY, "model": "resnet50"})
    with pytest.raises(ValueError, match="inception_v3 needs image_size >= 75, got 32"):
        sm.run({**TINY, "model": "inception_v3"})
