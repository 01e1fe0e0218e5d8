"""The dead-units experiment (Inception-v4 paper, sec. 3.3): config plumbing, result schema, resumability,
divergence as a result, the verdict on hand-made tables, and the report section on a tiny config."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from analysis.experiments import dead_units as du
from analysis.report.build import render_section
from analysis.report.document import Section
from analysis.report.sections import dead_units as du_section
from analysis.training.sweep import point_id

# Two points' worth of a model that still has the wide 1x1 last stage: one A/B/C block each, 1/16 width.
TINY = {
    **du.CONFIGS["quick"],
    "variants": ("v2",),
    "lrs": (0.1,),
    "widths": (24,),
    "scales": (1.0,),
    "seeds": 1,
    "block_counts": (0, 0, 1),
    "width_mult": 0.0625,
    "steps": 4,
    "batch_size": 8,
    "n_train": 16,
    "n_val": 8,
    "monitor_every": 2,
    "workers": 1,
}


pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------------ config
def test_quick_points_cover_widths_scales_control_and_seeds():
    points = du.make_points(du.CONFIGS["quick"])
    assert len(points) == 2 * 2 * (3 + 1) * 2 * 2  # variants x widths x (scales + control) x lrs x seeds
    control = [p for p in points if not p["residual"]]
    assert len(control) == 16 and all(p["scale"] is None for p in control)
    assert {p["width"] for p in points} == {256, 1536}
    assert {p["lr"] for p in points} == {0.045, 0.1}
    assert {p["model"] for p in points} == {"inception_resnet_v1_paper", "inception_resnet_v2_paper"}
    assert len({point_id(p) for p in points}) == len(points)


def test_full_config_covers_the_issue_grid():
    full = du.CONFIGS["full"]
    assert set(du.CONFIGS) >= {"quick", "full"}
    assert set(full["scales"]) == {1.0, 0.3, 0.2, 0.1} and max(full["widths"]) > 1000 > min(full["widths"])
    assert len(du.make_points(full)) == 2 * 3 * 5 * (4 + 1)


@pytest.mark.parametrize("change, message", [
    ({"variants": ("v3",)}, "unknown variant"),
    ({"image_size": 64}, "below 75 px"),
    ({"monitor_every": 100}, "monitor_every"),
    ({"widths": ()}, "at least one width"),
])
def test_bad_configs_are_clear_errors(change, message):
    with pytest.raises(ValueError, match=message):
        du.make_points({**du.CONFIGS["quick"], **change})


def test_a_config_missing_keys_is_a_clear_error():
    with pytest.raises(ValueError, match="lacks"):
        du.make_points({"widths": (256,)})


# ------------------------------------------------------------------------------------------------ running
def test_run_schema_and_resume(tmp_path, monkeypatch):
    frame = du.run(TINY, results_dir=tmp_path, progress=False)
    assert list(frame.columns) == ["point_id"] + du.CURVE_COLUMNS + du.POINT_COLUMNS
    assert len(frame) == 2 * (4 // 2)  # (scale 1.0, control) x monitored steps
    assert frame["step"].tolist() == [2, 4, 2, 4]
    assert frame["scale_label"].tolist() == ["1", "1", "no residual", "no residual"]
    assert (frame["channels"] == 24).all() and (frame["window_samples"] == 2 * 8).all()
    assert frame["dead_fraction"].between(0, 1).all() and frame["train_loss"].notna().all()
    assert not frame["diverged"].any() and (frame["final_step"] == 4).all()
    assert (frame["eval_samples"] == 8).all()

    def must_not_run(point):
        raise AssertionError(f"point {point} ran again")

    monkeypatch.setattr(du, "run_point", must_not_run)
    again = du.run(TINY, results_dir=tmp_path, progress=False)
    pd.testing.assert_frame_equal(again, frame)


def test_divergence_is_recorded_not_raised(tmp_path):
    config = {**TINY, "control": False, "optimizer": "sgd", "lrs": (1e12,)}
    frame = du.run(config, results_dir=tmp_path, progress=False)
    summary = du.summarise(frame)
    assert len(summary) == 1
    row = summary.iloc[0]
    assert bool(row["diverged"]) and 1 <= int(row["diverged_step"]) <= 4
    assert math.isnan(row["val_accuracy"]) and math.isnan(row["eval_dead_fraction"])


# ------------------------------------------------------------------------------------------------ summary
def _curves(points: list[tuple[int, str, list[float]]], *, diverged=False, seed=0) -> pd.DataFrame:
    rows = []
    for width, label, deads in points:
        for i, dead in enumerate(deads):
            rows.append({"variant": "v2", "width": width, "residual": label != du.NO_RESIDUAL,
                         "scale": None if label == du.NO_RESIDUAL else float(label), "scale_label": label,
                         "lr": 0.1, "seed": seed, "step": 5 * (i + 1), "dead_fraction": dead, "train_loss": 2.3,
                         "final_step": 5 * len(deads), "diverged": diverged, "diverged_step": None,
                         "val_loss": 2.3, "val_accuracy": 0.1, "eval_dead_fraction": dead})
    return pd.DataFrame(rows)


def test_summarise_final_max_first_dead_step_and_died():
    curves = _curves([(1536, "1", [0.1, 0.6, 1.0]), (1536, "0.1", [0.0, 0.7, 0.2])])
    summary = du.summarise(curves, dead_level=0.5)
    assert list(summary.columns) == du.SUMMARY_COLUMNS
    first, second = summary.iloc[0], summary.iloc[1]
    assert (first["final_dead_fraction"], first["max_dead_fraction"], first["first_dead_step"]) == (1.0, 1.0, 10)
    assert bool(first["died"]) and not bool(second["died"])  # died is about the end, not the peak
    assert second["max_dead_fraction"] == 0.7 and second["steps_run"] == 15


def _summary(cells: dict[tuple[int, str], list[float]], diverged: tuple[tuple[int, str], ...] = (),
             lr: float = 0.1) -> pd.DataFrame:
    """A hand-made summary: for each (width, scale label) the final dead fraction of each seed."""
    rows = []
    for (width, label), finals in cells.items():
        for seed, final in enumerate(finals):
            rows.append({"variant": "v2", "width": width, "scale_label": label, "lr": lr, "seed": seed,
                         "steps_run": 60, "final_dead_fraction": final, "diverged": (width, label) in diverged,
                         "died": final >= 0.5})
    return pd.DataFrame(rows)


def test_verdict_shows_when_only_wide_unscaled_die():
    summary = _summary({(256, "1"): [0.4], (256, "0.1"): [0.0], (256, du.NO_RESIDUAL): [0.3],
                        (1536, "1"): [0.98], (1536, "0.1"): [0.05], (1536, du.NO_RESIDUAL): [0.3]})
    assert du.verdict(summary) == (
        "shows: death rate of wide unscaled 1.00, wide scaled (<= 0.3) 0.00, wide no-residual 0.00, narrow unscaled "
        "0.00; mean final dead fraction 0.98, 0.05, 0.30, 0.40; 1 of 6 points died, 0 diverged, within 60 steps")


def test_verdict_does_not_show_when_nothing_dies():
    summary = _summary({(1536, "1"): [0.2], (1536, "0.1"): [0.0], (1536, du.NO_RESIDUAL): [0.1]})
    assert du.verdict(summary) == (
        "does not show at this scale: no pre-pool layer died (largest final dead fraction 0.20; 0 of 3 points died, 0 "
        "diverged, within 60 steps); the run is too short or too small for the paper's symptom to appear")


def test_verdict_does_not_show_when_scaling_does_not_help_or_control_dies_too():
    scaled_die = _summary({(1536, "1"): [1.0], (1536, "0.1"): [0.9]})
    assert du.verdict(scaled_die) == (
        "does not show: deaths do not follow the claimed pattern: death rate of wide unscaled 1.00, wide scaled (<= "
        "0.3) 1.00, wide no-residual nan, narrow unscaled nan; mean final dead fraction 1.00, 0.90, nan, nan; 2 of 2 "
        "points died, 0 diverged, within 60 steps")
    control_dies = _summary({(1536, "1"): [1.0], (1536, "0.1"): [0.0], (1536, du.NO_RESIDUAL): [0.9]})
    assert du.verdict(control_dies) == (
        "does not show: deaths do not follow the claimed pattern: death rate of wide unscaled 1.00, wide scaled (<= "
        "0.3) 0.00, wide no-residual 1.00, narrow unscaled nan; mean final dead fraction 1.00, 0.00, 0.90, nan; 2 of 3 "
        "points died, 0 diverged, within 60 steps")


def test_verdict_inconclusive_when_seeds_spread_more_than_the_effect():
    summary = _summary({(1536, "1"): [0.9, 0.1, 0.2], (1536, "0.1"): [0.8, 0.0, 0.1]})
    assert du.verdict(summary) == (
        "inconclusive: spread over seeds larger than the effect: death rate of wide unscaled 0.33, wide scaled (<= "
        "0.3) 0.33, wide no-residual nan, narrow unscaled nan; mean final dead fraction 0.40, 0.30, nan, nan; 2 of 6 "
        "points died, 0 diverged, within 60 steps")


def test_verdict_judges_each_learning_rate_apart():
    # Pooled, 2 of 4 unscaled and 1 of 4 scaled runs died: "inconclusive". Per rate, lr 0.1 shows cleanly and
    # at lr 0.045 nothing died, which the verdict names as the rate preventing death.
    high = _summary({(1536, "1"): [0.95, 0.9], (1536, "0.1"): [0.0, 0.05], (1536, du.NO_RESIDUAL): [0.2, 0.3]})
    low = _summary({(1536, "1"): [0.1, 0.0], (1536, "0.1"): [0.0, 0.0], (1536, du.NO_RESIDUAL): [0.1, 0.0]},
                   lr=0.045)
    at_high = ("lr 0.1: shows (death rate of wide unscaled 1.00, wide scaled (<= 0.3) 0.00, wide no-residual 0.00, "
               "narrow unscaled nan; mean final dead fraction 0.93, 0.03, 0.25, nan)")
    assert du.verdict(pd.concat([low, high], ignore_index=True)) == (
        "shows: lr 0.045: no wide residual point died (death rate of wide unscaled 0.00, wide scaled (<= 0.3) 0.00, "
        "wide no-residual 0.00, narrow unscaled nan; mean final dead fraction 0.05, 0.00, 0.05, nan); "
        f"{at_high}; at lr 0.045 nothing wide died, so lowering the rate prevented death here (the paper: it did "
        "not); 2 of 12 points died, 0 diverged, within 60 steps")
    scaled_die = _summary({(1536, "1"): [1.0, 1.0], (1536, "0.1"): [0.9, 1.0]}, lr=0.045)
    assert du.verdict(pd.concat([scaled_die, high], ignore_index=True)) == (
        "does not show: deaths do not follow the claimed pattern: lr 0.045: does not show (death rate of wide unscaled "
        "1.00, wide scaled (<= 0.3) 1.00, wide no-residual nan, narrow unscaled nan; mean final dead fraction 1.00, "
        f"0.95, nan, nan); {at_high}; 6 of 10 points died, 0 diverged, within 60 steps")


def test_verdict_inconclusive_without_the_needed_arms_and_rejects_empty():
    narrow_only = _summary({(256, "1"): [1.0], (256, "0.1"): [0.0]})
    assert du.verdict(narrow_only) == (
        "inconclusive: the sweep lacks wide (> 1000 filters) points with scale 1.0 and with scale <= 0.3; 1 of 2 "
        "points died, 0 diverged, within 60 steps")
    with pytest.raises(ValueError, match="at least one"):
        du.verdict(_summary({}))


# ------------------------------------------------------------------------------------------------ section
def test_section_renders_table_figures_and_verdict(tmp_path, monkeypatch):
    monkeypatch.setitem(du.CONFIGS, "quick", TINY)
    section = du_section.section("quick", 0, results_root=tmp_path / "results")
    assert isinstance(section, Section)
    assert section.verdict.split(":")[0] in {"shows", "does not show", "does not show at this scale",
                                             "inconclusive"}
    assert len(section.tables[0].frame) == 2 and list(section.tables[0].frame.columns) == du.SUMMARY_COLUMNS
    markdown = render_section(section, tmp_path / "report")
    for stem in ("dead_units.md", "dead_units.csv", "dead_units_curves.csv", "dead_units_curves_v2.png",
                 "dead_units_phase_v2.png"):
        assert (tmp_path / "report" / stem).exists(), stem
    assert "Verdict at this scale" in markdown and "no residual" in markdown
