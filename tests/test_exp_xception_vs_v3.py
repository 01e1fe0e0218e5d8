"""The Xception vs Inception-v3 experiment: config plumbing, result schema, resumability, verdicts, section.

The science runs in the quick config (``inception-lab report``); here a tiny config trains for two steps.
"""

from __future__ import annotations

import pandas as pd
import pytest

from analysis.experiments import load_experiment, resolve_config
from analysis.experiments.spread_rule import final_evals
from analysis.experiments import xception_vs_v3 as xv
from analysis.report.document import Section
from analysis.report.sections import xception_vs_v3 as xv_section

from helpers import inception_v3_params, xception_params

WIDTH = 0.0625
TINY = {**xv.CONFIGS["quick"], "seeds": 2, "n_train": 32, "n_val": 20, "steps": 2, "batch_size": 16, "log_every": 1,
        "eval_every": 1, "warmup_steps": 0, "workers": 1,
        "variants": {xv.V3: dict(model="inception_v3", width_mult=WIDTH, drop_rate=0.0),
                     xv.XCEPTION: dict(model="xception", width_mult=WIDTH, middle_blocks=1, mid_activation=False),
                     xv.MID_RELU: dict(model="xception", width_mult=WIDTH, middle_blocks=1, mid_activation=True)}}
# At 10 classes, counted by hand from the layer widths (tests/helpers.py): the ReLU between depthwise and
# pointwise adds no parameters.
PARAMS = {xv.V3: inception_v3_params(width_mult=WIDTH, classes=10),
          xv.XCEPTION: xception_params(width_mult=WIDTH, middle_blocks=1, classes=10),
          xv.MID_RELU: xception_params(width_mult=WIDTH, middle_blocks=1, classes=10)}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("xv")
    return folder, xv.run(TINY, results_dir=folder, progress=False)


def test_configs_share_keys_and_resolve():
    assert set(xv.CONFIGS) >= {"quick", "full"}
    assert set(xv.CONFIGS["quick"]) == set(xv.CONFIGS["full"])
    assert load_experiment("xception_vs_v3") is xv
    assert resolve_config(xv, "quick", steps=3)["steps"] == 3


@pytest.mark.parametrize("mode", ["quick", "full"])
def test_configured_networks_have_matched_parameters(mode):
    from inception_models import create_model

    variants = xv.CONFIGS[mode]["variants"]
    counts = {label: sum(p.numel() for p in create_model(spec["model"], num_classes=10,
                                                         **{k: v for k, v in spec.items() if k != "model"}).parameters())
              for label, spec in variants.items()}
    assert counts[xv.XCEPTION] == counts[xv.MID_RELU]
    assert abs(counts[xv.XCEPTION] / counts[xv.V3] - 1) < xv.CONFIGS[mode]["param_tolerance"]
    width = variants[xv.V3]["width_mult"]
    assert variants[xv.XCEPTION]["width_mult"] == width and variants[xv.XCEPTION]["middle_blocks"] == 8
    assert counts == {xv.V3: inception_v3_params(width_mult=width, classes=10),
                      xv.XCEPTION: xception_params(width_mult=width, classes=10),
                      xv.MID_RELU: xception_params(width_mult=width, classes=10)}


def test_the_closed_forms_give_the_reference_ports_at_full_width():
    """The hand counts behind PARAMS reproduce torchvision's inception_v3 (23,834,568) and timm's legacy_xception
    (22,855,952) at full width and 1000 classes (shared/REFERENCES.md); at 1/16 width the counts are these."""
    assert inception_v3_params() == 23_834_568 and xception_params() == 22_855_952
    assert PARAMS == {xv.V3: 88_458, xv.XCEPTION: 44_324, xv.MID_RELU: 44_324}


def test_points_one_per_variant_and_seed():
    points = xv.make_points({**TINY, "seeds": 3, "seed": 4})
    assert len(points) == 9
    assert [p["variant"] for p in points[::3]] == [xv.V3, xv.XCEPTION, xv.MID_RELU]
    assert [p["seed"] for p in points[:3]] == [4, 5, 6] and {p["data_seed"] for p in points} == {4}
    assert points[-1]["mid_activation"] is True and points[3]["mid_activation"] is False


def test_bad_variant_is_named():
    with pytest.raises(ValueError, match="unknown knob"):
        xv.make_points({**TINY, "variants": {"x": dict(model="xception", widht_mult=0.5)}})
    with pytest.raises(ValueError, match="names no model"):
        xv.make_points({**TINY, "variants": {"x": dict(width_mult=0.5)}})


def test_result_schema_and_rows(tiny_run):
    _, table = tiny_run
    assert list(table.columns) == ["point_id"] + xv.RESULT_COLUMNS
    # 3 variants x 2 seeds, each: 2 logged train steps + validation after steps 1 and 2.
    assert len(table) == 24
    assert table.groupby("point_id", sort=False).size().tolist() == [4] * 6
    # In the trainer's log order: each step's training row, then its evaluation.
    assert table["split"].tolist()[:4] == ["train", "val", "train", "val"]
    assert table["step"].tolist()[:4] == [1, 1, 2, 2]
    assert dict(table.groupby("variant")["params"].first()) == PARAMS
    assert table.loc[table["variant"] == xv.MID_RELU, "mid_activation"].all()
    assert not table.loc[table["variant"] == xv.XCEPTION, "mid_activation"].any()
    # Eval-mode losses after one or two steps can be large (BN running statistics barely moved): finite is enough.
    assert (table["loss"] > 0).all() and table["loss"].lt(float("inf")).all() and (table["cpu_s"] > 0).all()


def test_second_run_trains_nothing(tiny_run, monkeypatch):
    folder, first = tiny_run

    def fail(point):
        raise AssertionError("a finished point ran again")

    monkeypatch.setattr(xv, "run_point", fail)
    pd.testing.assert_frame_equal(first, xv.run(TINY, results_dir=folder, progress=False))


def test_summary_columns(tiny_run):
    _, table = tiny_run
    summary = xv.summarise(table)
    assert list(summary.columns) == xv.SUMMARY_COLUMNS
    assert summary["variant"].tolist() == [xv.V3, xv.XCEPTION, xv.MID_RELU]
    assert summary["seeds"].tolist() == [2, 2, 2]
    assert summary["params"].tolist() == [PARAMS[v] for v in summary["variant"]]
    ratio = PARAMS[xv.XCEPTION] / PARAMS[xv.V3] - 1
    assert summary["params_vs_v3"].tolist() == pytest.approx([0.0, ratio, ratio])


def _frames(accuracies: dict[str, list[float]], params: dict[str, int] | None = None):
    params = params or {xv.V3: 1000, xv.XCEPTION: 1050, xv.MID_RELU: 1050}
    rows = [{"point_id": f"{v}{i}", "variant": v, "model": v.split("_mid")[0], "mid_activation": v == xv.MID_RELU,
             "seed": i, "params": params[v], "split": "val", "step": 10, "loss": 1.0, "accuracy": a}
            for v, accs in accuracies.items() for i, a in enumerate(accs)]
    results = pd.DataFrame(rows)
    return xv.summarise(results), final_evals(results)


LEARNED = {xv.V3: [0.40, 0.42], xv.XCEPTION: [0.50, 0.52], xv.MID_RELU: [0.45, 0.46]}
CHANCE_LINE = "<= 0.128: chance 0.1 + 3 binomial s.e. on 1000 images"  # 0.1 + 3 sqrt(0.1 x 0.9 / 1000)
BEATS_V3 = ("shows: Xception beat Inception-v3 at a similar parameter count (xception 0.510 vs inception_v3 0.410, "
            "difference +0.100 against a seed spread of 0.020)")
RELU_HURTS = ("shows: the ReLU between depthwise and pointwise convolutions hurt (xception 0.510 vs xception_mid_relu "
              "0.455, difference +0.055 against a seed spread of 0.020)")


@pytest.mark.parametrize("accuracies, params, first, second", [
    (LEARNED, None, BEATS_V3, RELU_HURTS),
    ({xv.V3: [0.60, 0.62], xv.XCEPTION: [0.50, 0.52], xv.MID_RELU: [0.60, 0.61]}, None,
     "does not show: the opposite held (xception 0.510 vs inception_v3 0.610, difference -0.100 against a seed "
     "spread of 0.020)",
     "does not show: the opposite held (xception 0.510 vs xception_mid_relu 0.605, difference -0.095 against a "
     "seed spread of 0.020)"),
    ({xv.V3: [0.40, 0.55], xv.XCEPTION: [0.45, 0.55], xv.MID_RELU: [0.44, 0.52]}, None,
     "inconclusive: spread over seeds larger than the effect (xception 0.500 vs inception_v3 0.475, difference "
     "+0.025 against a seed spread of 0.150)",
     "inconclusive: spread over seeds larger than the effect (xception 0.500 vs xception_mid_relu 0.480, "
     "difference +0.020 against a seed spread of 0.100)"),
    ({**LEARNED, xv.V3: [0.10, 0.11]}, None,
     f"inconclusive: inception_v3 did not learn beyond chance (mean accuracy 0.105 {CHANCE_LINE}; xception reached "
     "0.510, so it trained faster here, but the claim is about accuracy once trained)", RELU_HURTS),
    (LEARNED, {xv.V3: 1000, xv.XCEPTION: 1200, xv.MID_RELU: 1200},
     "inconclusive: parameter counts differ by 20.0% (1,200 vs 1,000), more than 10%", RELU_HURTS),
    # The mid-activation claim includes convergence speed: staying at chance while the other learns is a result.
    ({**LEARNED, xv.MID_RELU: [0.10, 0.11]}, None, BEATS_V3,
     "shows: the ReLU between depthwise and pointwise convolutions hurt (xception 0.510 vs xception_mid_relu 0.105, "
     "difference +0.405 against a seed spread of 0.020; xception_mid_relu did not learn beyond chance (0.128) in "
     "this budget)"),
    ({**LEARNED, xv.XCEPTION: [0.10, 0.11]}, None,
     f"inconclusive: xception did not learn beyond chance (mean accuracy 0.105 {CHANCE_LINE}; inception_v3 reached "
     "0.410, so it trained faster here, but the claim is about accuracy once trained)",
     "does not show: the opposite held (xception 0.105 vs xception_mid_relu 0.455, difference -0.350 against a seed "
     "spread of 0.010; xception did not learn beyond chance (0.128) in this budget)"),
    ({xv.V3: [0.10, 0.12], xv.XCEPTION: [0.10, 0.11], xv.MID_RELU: [0.11, 0.10]}, None,
     f"inconclusive: xception and inception_v3 did not learn beyond chance (mean accuracy 0.105, 0.110 {CHANCE_LINE})",
     f"inconclusive: xception and xception_mid_relu did not learn beyond chance (mean accuracy 0.105, 0.105 "
     f"{CHANCE_LINE})"),
])
def test_verdicts_on_hand_made_frames(accuracies, params, first, second):
    summary, final = _frames(accuracies, params)
    assert xv.verdicts(summary, final, n_val=1000) == {"xception_vs_v3": first, "mid_activation": second}
    assert xv.verdict(summary, final, n_val=1000) == (
        f"Xception vs Inception-v3 at similar parameters: {first}. Activation between depthwise and pointwise: "
        f"{second}.")


def test_verdict_names_a_missing_network():
    summary, final = _frames({xv.XCEPTION: [0.5, 0.52], xv.MID_RELU: [0.45, 0.46]})
    assert xv.verdicts(summary, final, n_val=1000)["xception_vs_v3"] == "inconclusive: inception_v3 not trained"


def test_section_renders(tiny_run, monkeypatch):
    import matplotlib.pyplot as plt

    folder, _ = tiny_run
    monkeypatch.setitem(xv.CONFIGS, "quick", TINY)
    monkeypatch.setattr(xv_section, "default_results_dir", lambda *_: folder)
    section = xv_section.section("quick", 0)
    assert isinstance(section, Section)
    assert section.verdict.startswith("Xception vs Inception-v3 at similar parameters: ")
    assert list(section.tables[0].frame.columns) == xv.SUMMARY_COLUMNS
    assert len(section.tables[1].frame) == 6
    assert "2 steps" in section.text and "75 px" in section.text
    for figure in section.figures:
        drawn = figure.draw()
        assert isinstance(drawn, plt.Figure) and drawn.axes
        plt.close(drawn)
