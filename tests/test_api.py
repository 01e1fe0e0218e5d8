"""The public API beyond the instruments: every exported name resolves, the model registry refuses a second
builder under a name, and the sweep's results file (read_results, pending_points, point identity)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest
from torch import nn

import analysis
import inception_models
from analysis import pending_points, read_results, run_sweep
from analysis.training.sweep import point_id
from inception_models import create_model, list_models, model_info, register_model


# ------------------------------------------------------------------------------------------ exported names
@pytest.mark.parametrize("package", [analysis, inception_models], ids=["analysis", "inception_models"])
def test_every_exported_name_resolves(package):
    assert package.__all__ and len(set(package.__all__)) == len(package.__all__)
    for name in package.__all__:
        assert getattr(package, name) is not None, name
    namespace: dict = {}
    exec(f"from {package.__name__} import *", namespace)  # noqa: S102 (what a user's star import gets)
    assert set(package.__all__) <= set(namespace)


def test_an_unknown_name_is_an_attribute_error_naming_it():
    with pytest.raises(AttributeError, match="module 'analysis' has no attribute 'count_models'"):
        analysis.count_models  # noqa: B018
    assert set(analysis.__all__) <= set(dir(analysis))


# ---------------------------------------------------------------------------------------------- registry
def test_register_model_refuses_a_second_builder_under_a_name():
    original = model_info("googlenet").builder
    names = list_models()

    def googlenet() -> nn.Module:  # the same function name as the registered builder
        return nn.Identity()

    decorate = register_model(paper="x", year=2024, input_size=32, min_input_size=1)
    with pytest.raises(ValueError, match="model 'googlenet' is registered twice"):
        decorate(googlenet)
    with pytest.raises(ValueError, match="model 'xception' is registered twice"):
        register_model(paper="x", year=2024, input_size=32, min_input_size=1, name="xception")(googlenet)
    assert model_info("googlenet").builder is original and list_models() == names
    assert not isinstance(create_model("googlenet", num_classes=3, width_mult=0.0625), nn.Identity)


# ------------------------------------------------------------------------------------------ sweep results
def _measure(point: dict) -> pd.DataFrame:
    """Two rows per point: the width squared and halved."""
    return pd.DataFrame({"step": [1, 2], "value": [point["width"] ** 2, point["width"] / 2]})


def test_point_identity_is_the_hash_of_the_canonical_json():
    """A point is its config: sha256 of the JSON with sorted keys and no spaces, 12 hex digits. Pinned by that
    recipe, so results files of earlier runs keep naming the same points."""
    point = {"width": 2, "model": "small_inception", "lr": 0.1, "stages": [1, 2]}
    canonical = '{"lr":0.1,"model":"small_inception","stages":[1,2],"width":2}'
    assert point_id(point) == hashlib.sha256(canonical.encode()).hexdigest()[:12]
    assert point_id(dict(reversed(list(point.items())))) == point_id(point)
    assert point_id({**point, "lr": 0.2}) != point_id(point)
    with pytest.raises(TypeError, match="dict of config values"):
        point_id([("width", 2)])  # type: ignore[arg-type]


def test_read_results_of_no_file_empty_jsonl_and_csv(tmp_path: Path):
    assert read_results(tmp_path / "absent.jsonl").empty
    (tmp_path / "empty.jsonl").write_text("")
    assert read_results(tmp_path / "empty.jsonl").empty
    (tmp_path / "rows.jsonl").write_text('{"a": 1, "b": "x"}\n\n{"a": 2, "b": null}')  # no newline at the end
    rows = read_results(tmp_path / "rows.jsonl")
    assert rows["a"].tolist() == [1, 2] and rows["b"].tolist()[0] == "x" and rows["b"].isna().tolist()[1]
    (tmp_path / "rows.csv").write_text("a,b\n1,x\n2,y\n")
    assert read_results(tmp_path / "rows.csv").to_dict("list") == {"a": [1, 2], "b": ["x", "y"]}


def test_a_finished_point_is_not_pending_and_duplicates_are_one_point(tmp_path: Path):
    results = tmp_path / "results.jsonl"
    points = [{"width": 1}, {"width": 2}, {"width": 1}, {"width": 3}]
    assert pending_points(points, results) == [{"width": 1}, {"width": 2}, {"width": 3}]  # order kept
    run_sweep([{"width": 2}], _measure, results, isolate=False)
    assert pending_points(points, results) == [{"width": 1}, {"width": 3}]
    table = read_results(results)
    assert table["point_id"].tolist() == [point_id({"width": 2})] * 2 and table["value"].tolist() == [4, 1]
    assert pending_points([{"width": 2}], results) == []


def _two_points(results: Path) -> tuple[str, str]:
    run_sweep([{"width": 2}, {"width": 3}], _measure, results, isolate=False)
    text = results.read_text()
    assert text.count("\n") == 4 and text.endswith("\n")
    return text, point_id({"width": 3})


@pytest.mark.parametrize("cut", ["in_a_value", "in_the_id"])
def test_a_torn_last_line_leaves_its_point_unfinished(tmp_path: Path, cut: str):
    """A copy cut short mid-line: the torn line and the other rows of its point are dropped with a warning, the
    point runs again, and the rewritten file holds every row once."""
    results = tmp_path / "results.jsonl"
    text, third = _two_points(results)
    last = text.rstrip("\n").rsplit("\n", 1)[1]
    keep = last.index('"value"') + 10 if cut == "in_a_value" else len('{"point_id": "') + 5
    results.write_text(text[: len(text) - len(last) - 1 + keep])
    with pytest.warns(UserWarning, match=f"last line was cut short; dropped it and the rows of its point {third}"):
        table = read_results(results)
    assert table["width"].tolist() == [2, 2]
    with pytest.warns(UserWarning, match="cut short"):
        assert pending_points([{"width": 2}, {"width": 3}], results) == [{"width": 3}]
    with pytest.warns(UserWarning, match="cut short"):
        run_sweep([{"width": 2}, {"width": 3}], _measure, results, isolate=False)
    assert results.read_text() == text  # the point ran again; the torn line is gone


def test_a_damaged_line_before_the_last_is_an_error_naming_it(tmp_path: Path):
    results = tmp_path / "results.jsonl"
    text, _ = _two_points(results)
    lines = text.splitlines(keepends=True)
    lines[1] = lines[1][:20] + "\n"
    results.write_text("".join(lines))
    with pytest.raises(ValueError, match=r"results.jsonl, line 2: not a JSON row .*repair or delete that line"):
        read_results(results)
    with pytest.raises(ValueError, match="line 2"):
        run_sweep([{"width": 4}], _measure, results, isolate=False)
    assert results.read_text() == "".join(lines)  # nothing written on top of the damage
    assert json.loads(lines[0])["width"] == 2
