"""Paired arms (analysis.experiments.arms): the tuning stage picks each arm's rate on the held-out split with the
same budget for every arm, the seed stage pairs arms by seed, and every run is summarised with its gate."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from analysis.experiments.arms import Arm, choose_rates, run_arms, summarise_runs

# A stand-in for training: accuracy rises linearly to a ceiling that depends on the arm, the rate and the seed,
# so the best rate of each arm is known in advance (arm "a": 0.1, arm "b": 0.01).
CEILING = {("a", 0.01): 0.5, ("a", 0.1): 0.8, ("b", 0.01): 0.7, ("b", 0.1): 0.2}
CALLS: list[dict] = []


def fake_run_point(point: dict) -> pd.DataFrame:
    CALLS.append(point)
    top = CEILING[(point["arm"], point["lr"])] + 0.01 * (point["seed"] % 10)
    steps = [25, 50, 75, 100]
    rows = [{"split": "val", "step": s, "loss": 1.0, "accuracy": top * s / 100} for s in steps]
    rows += [{"split": "train", "step": s, "loss": 2.0 - s / 100, "accuracy": math.nan, "cpu_s": s / 10}
             for s in steps]
    fields = {k: point[k] for k in ("stage", "arm", "seed", "lr", "steps", "eval_split")}
    return pd.DataFrame(rows).assign(**fields, diverged=False, diverged_step=None)


CONFIG = {"lrs": [0.01, 0.1], "seeds": 3, "seed": 0, "workers": 1}
COMMON = {"steps": 100, "n_train": 8, "n_val": 8, "image_size": 32}
ARMS = [Arm("a", "small_inception", {"width_mult": 0.125}),
        Arm("b", "small_inception", {"width_mult": 0.125, "factorize_stages": [1]}, share_with="a")]


def test_tuning_then_paired_seeds(tmp_path):
    CALLS.clear()
    results, runs = run_arms(ARMS, CONFIG, COMMON, fake_run_point, tmp_path, progress=False)
    tune, seeds = runs[runs["stage"] == "tune"], runs[runs["stage"] == "seed"]
    # Tuning: every arm at every rate, one tuning seed far from the comparison's, judged on the held-out split.
    assert sorted(zip(tune["arm"], tune["lr"])) == sorted(CEILING)
    assert set(tune["seed"]) == {10_000} and all(p["eval_split"] == "test" for p in CALLS if p["stage"] == "tune")
    # Seeds: each arm at its best rate, seeds 0..2 in both arms, evaluated on the validation split.
    assert dict(zip(seeds["arm"], seeds["lr"])) == {"a": 0.1, "b": 0.01}
    assert sorted(seeds[seeds["arm"] == "a"]["seed"]) == sorted(seeds[seeds["arm"] == "b"]["seed"]) == [0, 1, 2]
    assert all(p["eval_split"] == "val" for p in CALLS if p["stage"] == "seed")
    # The arm that shares weights carries the other arm's network; the other carries none.
    b_point = next(p for p in CALLS if p["arm"] == "b")
    assert b_point["share"] == {"model": "small_inception", "knobs": {"width_mult": 0.125}}
    assert "share" not in next(p for p in CALLS if p["arm"] == "a")
    # Resumable: a second call trains nothing.
    CALLS.clear()
    again, _ = run_arms(ARMS, CONFIG, COMMON, fake_run_point, tmp_path, progress=False)
    assert CALLS == [] and len(again) == len(results)


def test_seeded_limits_the_seeds_to_the_named_arms(tmp_path):
    CALLS.clear()
    _, runs = run_arms(ARMS, CONFIG, COMMON, fake_run_point, tmp_path, progress=False, seeded=["b"])
    assert sorted(zip(runs[runs["stage"] == "tune"]["arm"], runs[runs["stage"] == "tune"]["lr"])) == sorted(CEILING)
    seeds = runs[runs["stage"] == "seed"]
    assert set(seeds["arm"]) == {"b"} and sorted(seeds["seed"]) == [0, 1, 2] and set(seeds["lr"]) == {0.01}
    with pytest.raises(ValueError, match="unknown arm"):
        run_arms(ARMS, CONFIG, COMMON, fake_run_point, tmp_path, progress=False, seeded=["c"])


def test_one_rate_means_no_tuning(tmp_path):
    CALLS.clear()
    _, runs = run_arms(ARMS, {**CONFIG, "lrs": [0.1]}, COMMON, fake_run_point, tmp_path, progress=False)
    assert set(runs["stage"]) == {"seed"} and set(runs["lr"]) == {0.1} and len(CALLS) == 6


def test_run_summary_area_gate_and_divergence():
    rows = fake_run_point({"stage": "seed", "arm": "a", "seed": 0, "lr": 0.1, "steps": 100, "eval_split": "val"})
    run = summarise_runs(rows.assign(point_id="p")).iloc[0]
    # Accuracy rises linearly from 0 to 0.8 over 100 steps; from chance (0.1) at step 0 to 0.2 at step 25.
    area = (0.1 + 0.2) / 2 * 25 + (0.2 + 0.8) / 2 * 75
    assert run["curve_area"] == pytest.approx(area / 100)
    assert (run["final_val_accuracy"], run["best_val_accuracy"]) == (0.8, 0.8)
    assert run["learned"] and run["gate"] == pytest.approx(0.3) and run["cpu_s"] == 10.0
    low = summarise_runs(rows.assign(point_id="p", accuracy=rows["accuracy"] * 0.3)).iloc[0]
    assert not low["learned"]  # best 0.24 < 3 x chance
    broken = rows.assign(point_id="p", diverged=True, diverged_step=50)
    broken.loc[(broken["split"] == "val") & (broken["step"] > 50), "loss"] = math.nan
    gone = summarise_runs(broken).iloc[0]
    assert gone["final_val_accuracy"] == pytest.approx(0.1) and gone["diverged"]
    # Its curve: chance at 0, 0.2 at step 25 (the last evaluation before the divergence at 50), chance from 50 on.
    assert gone["curve_area"] == pytest.approx(((0.1 + 0.2) / 2 * 25 + (0.2 + 0.1) / 2 * 25 + 0.1 * 50) / 100)


def test_choose_rates_prefers_the_smaller_rate_on_a_tie_and_never_a_diverged_run():
    tuning = pd.DataFrame({"arm": ["a", "a", "b", "b"], "lr": [0.1, 0.01, 0.1, 0.01],
                           "final_val_accuracy": [0.5, 0.5, math.nan, 0.2]})
    assert choose_rates(tuning) == {"a": 0.01, "b": 0.01}


def test_bad_arms_and_configs():
    with pytest.raises(ValueError, match="distinct"):
        run_arms([ARMS[0], ARMS[0]], CONFIG, COMMON, fake_run_point, None, progress=False)
    with pytest.raises(ValueError, match="unknown arm 'z'"):
        run_arms([Arm("b", "small_inception", share_with="z")], CONFIG, COMMON, fake_run_point, None,
                 progress=False)
    with pytest.raises(ValueError, match="tuning stage decides"):
        run_arms([Arm("a", "small_inception", recipe={"lr": 1.0})], CONFIG, COMMON, fake_run_point, None,
                 progress=False)
    with pytest.raises(ValueError, match="lrs"):
        run_arms(ARMS, {**CONFIG, "lrs": []}, COMMON, fake_run_point, None, progress=False)
    with pytest.raises(ValueError, match="tune_metric"):
        run_arms(ARMS, {**CONFIG, "tune_metric": "loss"}, COMMON, fake_run_point, None, progress=False)
