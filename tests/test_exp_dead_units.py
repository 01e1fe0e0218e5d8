"""The dead-units experiment (Inception-v4 paper, sec. 3.3) under the verdict protocol: its arms and configs, the
result schema and resumability on a tiny config, the per-run outcomes and the "died" threshold on hand-made logs,
the exact verdict words of each branch on fixed frames, and the report section with its claims."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from analysis.experiments import dead_units as du
from analysis.experiments.verdict import CONTRADICTS, NO_EFFECT, NOT_TESTED, SUPPORTS
from analysis.report.build import render_section
from analysis.report.sections import dead_units as du_section

# Seconds on one thread: a thin net with one C block, two widths, two scales, two rates, one seed, 4 steps.
TINY = {
    **du.CONFIGS["quick"],
    "widths": (16, 32), "wide": 32, "scales": (1.0, 0.1), "scaled": 0.1, "lrs": (0.01, 0.05), "seeds": 1,
    "block_counts": (0, 0, 1), "width_mult": 0.0625, "steps": 4, "batch_size": 8, "n_train": 16, "n_val": 8,
    "monitor_every": 2, "eval_every": 2, "workers": 1,
}

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------------ config
def test_arms_cover_widths_scales_and_the_extra_bn_remedy():
    arms = du.make_arms(du.CONFIGS["standard"])
    config = du.CONFIGS["standard"]
    assert len(arms) == len(config["widths"]) * len(config["scales"]) + 1
    bn = arms[-1]
    assert bn.name == "W1024 x1 +BN" and bn.knobs["prepool_bn"] and bn.share_with == "W1024 x1"
    assert {a.knobs["final_width"] for a in arms} == set(config["widths"])
    assert min(config["widths"]) < du.PAPER_WIDTH_LIMIT < config["wide"]
    assert set(du.CONFIGS) == {"quick", "standard", "full"} and du.CONFIGS["standard"]["seeds"] >= 5


@pytest.mark.parametrize("change, message", [
    ({"variant": "v3"}, "unknown variant"),
    ({"image_size": 64}, "below 75 px"),
    ({"monitor_every": 100}, "monitor_every"),
    ({"wide": 256}, "narrow width below wide"),
    ({"scales": (0.1, 0.3)}, "need 1.0"),
    ({"spike_factor": 1.0}, "spike_factor"),
])
def test_bad_configs_are_clear_errors(change, message):
    with pytest.raises(ValueError, match=message):
        du.make_arms({**du.CONFIGS["quick"], **change})


# ------------------------------------------------------------------------------------------------ running
def test_run_schema_outcomes_and_resume(tmp_path, monkeypatch):
    results = du.run(dict(TINY), results_dir=tmp_path, progress=False)
    runs = du.summarise(results, TINY)
    assert set(runs["stage"]) >= {"tune", "seed"}
    assert len(runs[runs["stage"] == "tune"]) == (2 * 2 + 1) * 2  # (widths x scales + extra BN) x rates
    assert list(runs.columns)[-len(du.RUN_EXTRA_COLUMNS):] == du.RUN_EXTRA_COLUMNS
    assert set(runs["outcome"]) <= set(du.OUTCOMES) and runs["final_dead_fraction"].between(0, 1).all()
    assert set(runs["width"]) == {16, 32} and runs[runs["stage"] == "tune"]["prepool_bn"].sum() == 2
    assert runs.attrs["death_threshold"] >= TINY["dead_floor"]
    assert len(du.claims(runs, TINY)) == 4

    def must_not_run(point):
        raise AssertionError(f"point {point['arm']} ran again")

    monkeypatch.setattr(du, "run_point", must_not_run)
    again = du.run(dict(TINY), results_dir=tmp_path, progress=False)
    assert len(again) == len(results)


# ------------------------------------------------------------------------------- per-run outcomes (fixed logs)
def _log(pid: str, width: int, *, dead: list[float], acc: list[float], loss: float = 1.5, scale: float = 1.0,
         diverged: bool = False, stage: str = "tune", lr: float = 0.01, seed: int = 0) -> pd.DataFrame:
    """A hand-made training log: one train row (dead fraction) and one val row (accuracy) every 10 steps."""
    point = dict(point_id=pid, stage=stage, arm=du.arm_name(width, scale), seed=seed, lr=lr, steps=10 * len(dead),
                 difficulty="default", diverged=diverged, diverged_step=None, eval_dead_fraction=dead[-1],
                 knobs={"final_width": width, "residual_scale": scale})
    rows = []
    for i, (d, a) in enumerate(zip(dead, acc)):
        rows.append({**point, "split": "train", "step": 10 * (i + 1), "loss": loss, "accuracy": math.nan,
                     "cpu_s": float(i), "dead_fraction": d})
        rows.append({**point, "split": "val", "step": 10 * (i + 1), "loss": loss, "accuracy": a, "cpu_s": math.nan,
                     "dead_fraction": math.nan})
    return pd.DataFrame(rows)


CONFIG = {**du.CONFIGS["quick"], "widths": (256, 1024), "wide": 1024, "dead_floor": 0.05, "spike_factor": 3.0}


def test_threshold_comes_from_the_narrow_nets_that_learned():
    logs = pd.concat([
        _log("a", 256, dead=[0.02, 0.12, 0.08], acc=[0.2, 0.5, 0.6]),   # narrow, learned: its peak 0.12 sets it
        _log("b", 256, dead=[0.5, 0.9, 0.9], acc=[0.1, 0.1, 0.1]),      # narrow, did not learn: ignored
        _log("c", 1024, dead=[0.3, 0.95, 0.97], acc=[0.4, 0.5, 0.1]),   # wide: ignored
        _log("d", 256, dead=[0.0, 0.1, 0.1], acc=[0.4, 0.4, 0.4], stage="seed"),  # not a tuning run
    ], ignore_index=True)
    runs = du.summarise(logs, CONFIG)
    assert runs.attrs["death_threshold"] == pytest.approx(0.12)
    quiet = du.summarise(logs[logs["point_id"] != "a"], CONFIG)
    assert quiet.attrs["death_threshold"] == pytest.approx(0.05)  # no narrow net learned: the floor
    assert du.summarise(logs, CONFIG, threshold=0.5).attrs["death_threshold"] == 0.5


def test_outcomes_died_unstable_not_learned_trained_and_accuracy_at_death():
    spike = 3.0 * math.log(10)
    logs = pd.concat([
        _log("narrow", 256, dead=[0.0, 0.1, 0.05], acc=[0.3, 0.5, 0.6]),
        _log("died", 1024, dead=[0.05, 0.4, 0.98], acc=[0.45, 0.5, 0.1]),
        _log("blip", 1024, dead=[0.05, 0.6, 0.0], acc=[0.3, 0.5, 0.6]),      # revived: died is about the end
        _log("spiky", 1024, dead=[0.0, 0.0, 0.0], acc=[0.3, 0.5, 0.6], loss=spike + 1),
        _log("slow", 1024, dead=[0.0, 0.0, 0.0], acc=[0.1, 0.12, 0.15]),
    ], ignore_index=True)
    runs = du.summarise(logs, CONFIG).set_index("point_id")
    assert runs.attrs["death_threshold"] == pytest.approx(0.1)
    assert runs["outcome"].to_dict() == {"narrow": du.TRAINED, "died": du.DIED, "blip": du.TRAINED,
                                         "spiky": du.UNSTABLE, "slow": du.NOT_LEARNED}
    assert runs.loc["died", "first_dead_step"] == 20 and runs.loc["died", "accuracy_at_death"] == 0.5
    assert runs.loc["blip", "max_dead_fraction"] == 0.6 and math.isnan(runs.loc["slow", "accuracy_at_death"])
    assert bool(runs.loc["spiky", "unstable"]) and not bool(runs.loc["died", "unstable"])


# ------------------------------------------------------------------------------------- verdicts (fixed frames)
WIDE, SCALED, BN = du.arm_name(1024, 1.0), du.arm_name(1024, 0.1), du.arm_name(1024, 1.0, True)
PLAN = du.Plan(rates={WIDE: 0.01, SCALED: 0.02}, strained_rate=0.02, lower_rate=0.005, threshold=0.1)


def _runs(stable: dict[tuple[str, float], list[int]], dead: dict[str, list[float]] | None = None,
          learned_at_tuned: dict[str, list[bool]] | None = None) -> pd.DataFrame:
    """Seeded runs: per (arm, rate), 1/0 "trained stably" per seed; the tuned-rate runs' dead fractions."""
    rows = []
    for (arm, lr), flags in stable.items():
        for seed, ok in enumerate(flags):
            tuned = PLAN.rates.get(arm) == lr
            learned = (learned_at_tuned or {}).get(arm, [True] * len(flags))[seed] if tuned else bool(ok)
            final = (dead or {}).get(arm, [0.0] * len(flags))[seed] if tuned else 0.0
            rows.append({"stage": "seed", "arm": arm, "lr": lr, "seed": seed, "trained": bool(ok),
                         "learned": learned, "final_dead_fraction": final})
    return pd.DataFrame(rows)


def _verdicts(runs: pd.DataFrame, the_plan: du.Plan = PLAN) -> list[str]:
    return [c.verdict.word for c in du.claims(runs, CONFIG, the_plan)]


TUNED = {(WIDE, 0.01): [1] * 5, (SCALED, 0.02): [1] * 5}


def test_verdicts_support_the_paper_when_only_scaling_trains_stably():
    runs = _runs({**TUNED, (WIDE, 0.02): [0, 0, 0, 1, 0], (BN, 0.02): [0] * 5, (WIDE, 0.005): [0, 0, 1, 0, 0]},
                 dead={WIDE: [0.6, 0.7, 0.5, 0.8, 0.9], SCALED: [0.0, 0.1, 0.0, 0.05, 0.0]})
    assert _verdicts(runs) == [SUPPORTS] * 4
    claims = du.claims(runs, CONFIG, PLAN)
    assert claims[1].verdict.effect.effect == pytest.approx(0.8)  # x0.1 minus unscaled, paper's direction
    assert claims[0].verdict.effect.effect > 0  # unscaled deader than scaled: the paper's side


def test_verdicts_contradict_when_the_remedies_work_and_scaling_does_not():
    plan = du.Plan(rates={WIDE: 0.01, SCALED: 0.01}, strained_rate=0.02, lower_rate=0.005, threshold=0.1)
    runs = _runs({(WIDE, 0.01): [1] * 5, (WIDE, 0.02): [1] * 5, (BN, 0.02): [1] * 5, (WIDE, 0.005): [1] * 5,
                  (SCALED, 0.02): [0] * 5})
    scaled = _runs({(SCALED, 0.01): [1] * 5}).assign(final_dead_fraction=[0.5, 0.6, 0.7, 0.6, 0.8])
    assert _verdicts(pd.concat([runs, scaled], ignore_index=True), plan) == [CONTRADICTS] * 4


def test_no_effect_when_both_arms_do_the_same():
    runs = _runs({**TUNED, (WIDE, 0.02): [1, 1, 0, 1, 1], (BN, 0.02): [1, 1, 0, 1, 1], (WIDE, 0.005): [1] * 5,
                  (SCALED, 0.02): [1, 1, 0, 1, 1]}, dead={WIDE: [0.1, 0.0, 0.2, 0.1, 0.0],
                                                          SCALED: [0.0, 0.1, 0.2, 0.0, 0.1]})
    assert _verdicts(runs) == [NO_EFFECT] * 4


def test_not_tested_when_a_tuned_arm_failed_the_gate_or_nothing_strained_it():
    runs = _runs({**TUNED, (WIDE, 0.02): [0] * 5, (BN, 0.02): [0] * 5, (WIDE, 0.005): [0] * 5},
                 learned_at_tuned={WIDE: [True, True, False, True, True]})
    claims = du.claims(runs, CONFIG, PLAN)
    assert [c.verdict.word for c in claims] == [NOT_TESTED] * 4
    assert "W1024 x1 in seed 2" in claims[0].verdict.reason and "W1024 x1 at lr 0.01" in claims[1].verdict.reason
    calm = du.Plan(rates=PLAN.rates, strained_rate=None, lower_rate=None, threshold=0.1)
    claims = du.claims(_runs(TUNED), CONFIG, calm)
    assert [c.verdict.word for c in claims] == [NO_EFFECT] + [NOT_TESTED] * 3
    assert "trained stably at every rate" in claims[1].verdict.reason


def test_plan_finds_the_strained_and_the_lower_rate():
    tune = pd.DataFrame([{"stage": "tune", "arm": arm, "lr": lr, "trained": ok, "final_val_accuracy": acc,
                          "seed": 0}
                         for arm, lr, ok, acc in [(WIDE, 0.005, True, 0.5), (WIDE, 0.01, True, 0.6),
                                                  (WIDE, 0.02, False, 0.2), (WIDE, 0.05, False, 0.1),
                                                  (SCALED, 0.005, True, 0.4), (SCALED, 0.01, True, 0.5),
                                                  (SCALED, 0.02, True, 0.7), (SCALED, 0.05, False, 0.1)]])
    tune.attrs["death_threshold"] = 0.2
    the_plan = du.plan(tune, CONFIG)
    assert the_plan == du.Plan({WIDE: 0.01, SCALED: 0.02}, 0.02, 0.01, 0.2)


# ------------------------------------------------------------------------------------------------ section
def test_section_renders_summary_phase_figure_and_claims(tmp_path, monkeypatch):
    monkeypatch.setitem(du.CONFIGS, "quick", TINY)
    section = du_section.section("quick", 0, results_root=tmp_path / "results")
    assert [c.claim for c in section.claims] == ["Residual scaling keeps wide layers alive",
                                                 "Residual scaling stabilises wide nets",
                                                 "An extra BN does not do what scaling does",
                                                 "A lower rate does not do what scaling does"]
    assert all(c.verdict.word in {SUPPORTS, CONTRADICTS, NO_EFFECT, NOT_TESTED} for c in section.claims)
    runs_table = next(t for t in section.tables if t.stem == "dead_units_runs")
    assert not runs_table.inline and section.tables[0].inline and section.tables[0].columns
    markdown = render_section(section, tmp_path / "report")
    for stem in ("dead_units_summary.csv", "dead_units_runs.csv", "dead_units_phase.png",
                 "dead_units_dead_fraction.png", "dead_units_accuracy.png"):
        assert (tmp_path / "report" / stem).exists(), stem
    assert "died" in markdown and "threshold" in markdown
