"""Every command of ``inception-lab`` through its entry point (``analysis.cli.main`` with ``sys.argv``, and the
installed console script in a real process): train and resume, report sections, dead units from a weights
file, the whole-model factorization table, and bad input: one line on stderr naming the problem, exit code 2,
no traceback, nothing written.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

import analysis
from analysis import load_checkpoint
from helpers import run_cli
from inception_models import create_model

pytestmark = pytest.mark.usefixtures("one_thread")

# A cheap run: small_inception at a quarter width on 32 px synthetic images, 4 batches of 4 per epoch, dropout
# on (so a resume must restore the random generators).
TRAIN = ["train", "small_inception", "--data", "synthetic", "--batch-size", "4", "--n-train", "16", "--n-val", "8",
         "--image-size", "32", "-k", "width_mult=0.25", "-k", "drop_rate=0.3", "--device", "cpu", "--format", "csv"]


def csv(out: str) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(out))


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path below ``folder`` with its bytes (None for a folder): what a refused command must not change."""
    return {str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes() for p in sorted(folder.rglob("*"))}


def assert_one_line_error(code: int, err: str, message: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err


# ------------------------------------------------------------------------------------------------- train
def test_train_then_resume_equals_the_uninterrupted_run(monkeypatch, capsys, tmp_path):
    code, out, err = run_cli(monkeypatch, capsys, *TRAIN, "--steps", "2", "--out", str(tmp_path / "run"))
    assert code == 0, err
    first = csv(out)
    assert first[["split", "step"]].values.tolist() == [["train", 2], ["val", 2]]

    code, out, err = run_cli(monkeypatch, capsys, *TRAIN, "--steps", "5", "--resume", "--out", str(tmp_path / "run"))
    assert code == 0, err
    resumed = csv(out)  # the log's last rows: the first run's, kept, then the resumed run's
    assert resumed[["split", "step"]].values.tolist() == [["train", 2], ["val", 2], ["train", 5], ["val", 5]]
    pd.testing.assert_frame_equal(resumed.head(2), first, check_exact=True)
    assert load_checkpoint(tmp_path / "run")["step"] == 5

    code, out, err = run_cli(monkeypatch, capsys, *TRAIN, "--steps", "5", "--out", str(tmp_path / "uninterrupted"))
    assert code == 0, err
    columns = ["split", "step", "loss", "accuracy"]
    pd.testing.assert_frame_equal(resumed[columns].tail(2).reset_index(drop=True),
                                  csv(out)[columns].tail(2).reset_index(drop=True), check_exact=True)
    final, expected = load_checkpoint(tmp_path / "run")["model"], load_checkpoint(tmp_path / "uninterrupted")["model"]
    for name, value in expected.items():
        assert torch.equal(final[name], value), name


def test_train_keeps_a_rendered_synthetic_set_on_disk_and_decides_speed_per_device(monkeypatch, capsys, tmp_path):
    """--data-cache renders each split once into the folder; a second run reads it and trains the same steps. The
    speed settings left at their defaults resolve to off on the CPU (bf16 and channels_last are CUDA's); --amp off
    and a bad --amp are understood."""
    cache = tmp_path / "cache"
    args = [*TRAIN, "--steps", "2", "--data-cache", str(cache)]
    code, out, err = run_cli(monkeypatch, capsys, *args, "--out", str(tmp_path / "a"))
    assert code == 0, err
    stored = sorted(p.name for p in cache.iterdir())
    assert len(stored) == 2 and all(name.startswith("synthetic-") for name in stored)
    config = load_checkpoint(tmp_path / "a")["config"]
    assert (config["amp"], config["channels_last"], config["cudnn_benchmark"]) == (None, False, False)
    mtimes = {p: p.stat().st_mtime_ns for p in cache.iterdir()}
    code, again, err = run_cli(monkeypatch, capsys, *args, "--amp", "off", "--out", str(tmp_path / "b"))
    assert code == 0, err
    assert {p: p.stat().st_mtime_ns for p in cache.iterdir()} == mtimes  # read back, not rendered again
    pd.testing.assert_frame_equal(csv(again).drop(columns="time"), csv(out).drop(columns="time"), check_exact=True)
    code, _, err = run_cli(monkeypatch, capsys, *TRAIN, "--steps", "1", "--amp", "int8", "--out", str(tmp_path / "c"))
    assert_one_line_error(code, err, "amp='int8'")


@pytest.mark.slow  # three interpreter starts: a few seconds on 2 idle cores
def test_the_installed_script_trains_resumes_and_refuses_bad_input(tmp_path):
    script = shutil.which("inception-lab", path=str(Path(sys.executable).parent)) or shutil.which("inception-lab")
    assert script, "the inception-lab console script is not installed: pip install -e '.[dev]'"
    repo = str(Path(analysis.__file__).resolve().parents[1])  # the tree under test, not another install
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([script, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)

    first = run(*TRAIN, "--steps", "2", "--out", "run", "--channels-last")
    assert first.returncode == 0, first.stderr
    second = run(*TRAIN, "--steps", "3", "--out", "run", "--channels-last", "--resume")
    assert second.returncode == 0, second.stderr
    assert csv(second.stdout)[["split", "step"]].values.tolist()[-2:] == [["train", 3], ["val", 3]]
    assert load_checkpoint(tmp_path / "run")["config"]["channels_last"] is True

    bad = run("experiment", "dead_units", "--config", "nope")
    assert "Traceback" not in bad.stderr
    assert_one_line_error(bad.returncode, bad.stderr, "unknown config 'nope'; known configs: quick, standard, full")


def test_a_diverging_run_exits_2_and_keeps_the_last_good_checkpoint(monkeypatch, capsys, tmp_path):
    code, _, err = run_cli(monkeypatch, capsys, *TRAIN, "--steps", "6", "--lr", "1e30", "--checkpoint-every", "1",
                           "--out", str(tmp_path))
    assert_one_line_error(code, err, "training diverged at step ")
    step = int(err.split("training diverged at step ")[1].split(":")[0])
    assert {p.name for p in tmp_path.iterdir()} == {"checkpoint.pt", "config.json", "metrics.jsonl"}  # no temp file
    state = load_checkpoint(tmp_path)
    assert state["step"] == step - 1
    model = create_model("small_inception", width_mult=0.25, drop_rate=0.3)
    model.load_state_dict(state["model"])
    assert all(torch.isfinite(p).all() for p in model.parameters())


# ------------------------------------------------------------------------------------------------ report
@pytest.mark.slow  # fvcore counts eight whole models (the undo table): a few seconds on 2 idle cores
def test_report_writes_only_the_requested_section(monkeypatch, capsys, tmp_path):
    code, out, err = run_cli(monkeypatch, capsys, "report", "--section", "factorization", "--out", str(tmp_path / "rep"))
    assert code == 0, err
    assert out.strip() == f"wrote {tmp_path / 'rep' / 'index.md'}"
    index = (tmp_path / "rep" / "index.md").read_text()
    assert [line for line in index.splitlines() if line.startswith("## ")] == ["## Factorization: what each form costs"]
    names = {p.name for p in (tmp_path / "rep").iterdir()}
    assert {"undo_factorization.csv", "factorization_all.csv", "factorization_ratio_by_grid.png"} <= names
    assert {p.name for p in tmp_path.iterdir()} == {"rep"}  # no staging folder left
    study = pd.read_csv(tmp_path / "rep" / "factorization_all.csv")
    factorized = study[study["form"] == "factorized"]
    assert factorized[factorized["scheme"] == "5x5->2x3x3"]["ratio"].tolist() == pytest.approx(
        [18 / 25] * int((factorized["scheme"] == "5x5->2x3x3").sum()))  # (2 * 9) / 25 at every grid


# ----------------------------------------------------------------------------------------------- factorize
@pytest.mark.slow  # fvcore counts eight whole models: a few seconds on 2 idle cores
def test_factorize_whole_model_counts_each_undone_factorization(monkeypatch, capsys):
    code, out, err = run_cli(monkeypatch, capsys, "factorize", "--whole-model", "--format", "csv")
    assert code == 0, err
    table = csv(out).set_index(["model", "knobs"])
    # torchvision 0.29.1's counts (shared/REFERENCES.md): inception_v3 without aux heads, googlenet, and googlenet
    # with its "5x5" branch really 5x5.
    assert table.loc[("inception_v3", "(defaults)"), "params"] == 23_834_568
    assert table.loc[("googlenet", "(defaults)"), "params"] == 6_624_904
    assert table.loc[("googlenet", "branch5x5_kernel=5"), "params"] == 7_005_832
    # Undoing Inception-A (Fig. 5 -> Fig. 4) turns the 3x3 (64 -> 96) then 3x3 (96 -> 96) branch of each of the
    # three modules into one 5x5 (64 -> 96), and drops the middle BN's 2 x 96 parameters; at 35 x 35.
    per_module = 25 * 64 * 96 - (9 * 64 * 96 + 9 * 96 * 96)
    undone_a = table.loc[("inception_v3", "factorize_a=False")]
    assert undone_a["params_delta"] == 3 * (per_module - 2 * 96)
    released = table.loc[("inception_v3", "(defaults)")]
    assert undone_a["conv_linear_macs"] - released["conv_linear_macs"] == 3 * 35 * 35 * per_module


# ---------------------------------------------------------------------------------------------- dead units
def killed_model() -> tuple[nn.Module, str]:
    """small_inception with the first five channels of its last 3x3 branch pushed below zero (BN bias -100)."""
    torch.manual_seed(0)
    model = create_model("small_inception")
    with torch.no_grad():
        model.stage2[1].branch3x3[0].bn.bias[:5] = -100.0
    return model, "stage2.1.branch3x3.0.act"


DEAD_UNITS = ["--batches", "2", "--batch-size", "4", "--image-size", "32", "--mode", "train", "--format", "csv"]


def test_dead_units_reads_a_weights_file(monkeypatch, capsys, tmp_path):
    model, _ = killed_model()
    torch.save(model.state_dict(), tmp_path / "weights.pth")
    code, out, err = run_cli(monkeypatch, capsys, "dead-units", "small_inception", "--weights",
                             str(tmp_path / "weights.pth"), *DEAD_UNITS)
    assert code == 0, err
    table = csv(out)
    # In train mode BN centres every other channel on each batch, so exactly the five killed ones are dead; a
    # fresh model (the weights not read) would show none.
    assert table[["layer", "channels", "dead", "samples"]].values.tolist() == [["global_pool:input", 336, 5, 8]]


def test_dead_units_all_layers_has_one_row_per_activation(monkeypatch, capsys, tmp_path):
    model, killed = killed_model()
    torch.save(model.state_dict(), tmp_path / "weights.pth")
    code, out, err = run_cli(monkeypatch, capsys, "dead-units", "small_inception", "--weights",
                             str(tmp_path / "weights.pth"), "--all-layers", *DEAD_UNITS)
    assert code == 0, err
    table = csv(out).set_index("layer")
    relus = {name: m for name, m in model.named_modules() if isinstance(m, nn.ReLU)}
    assert set(table.index) == set(relus)
    assert table["dead"].to_dict() == {name: 5 if name == killed else 0 for name in relus}
    assert table.loc[killed, "channels"] == model.stage2[1].branch3x3[0].bn.num_features


# --------------------------------------------------------------------------------------------- bad input
@pytest.fixture
def bad_files(tmp_path) -> Path:
    """Files a user might hand over by mistake, in ``tmp_path``: garbage, a truncated torch.save file, a plain
    state dict given as a trainer checkpoint, and a run folder whose checkpoint is truncated."""
    (tmp_path / "garbage.pth").write_bytes(b"not a weights file\n" * 10)
    buffer = io.BytesIO()
    torch.save(create_model("small_inception", width_mult=0.25).state_dict(), buffer)
    (tmp_path / "truncated.pth").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (tmp_path / "state_dict.pth").write_bytes(buffer.getvalue())
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint.pt").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (tmp_path / "run" / "metrics.jsonl").write_text('{"split": "train", "step": 1, "loss": 2.3}\n')
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "index.md").write_text("# the previous report\n")
    return tmp_path


DEAD_UNITS_SMALL = ["dead-units", "small_inception", "--batches", "1", "--batch-size", "2", "--image-size", "32"]


@pytest.mark.parametrize("args, message", [
    (["experiment", "dead_units", "--config", "nope"], "unknown config 'nope'; known configs: quick, standard, full"),
    (["report", "--all", "--section", "zoo", "--out", "reports"], "give --all or --section, not both"),
    ([*DEAD_UNITS_SMALL, "--weights", "garbage.pth"], "garbage.pth is neither a torch.save file nor a safetensors"),
    ([*DEAD_UNITS_SMALL, "--weights", "truncated.pth"], "cannot read truncated.pth as a torch.save file"),
    ([*DEAD_UNITS_SMALL, "--weights", "absent.pth"], "weights file absent.pth does not exist"),
    ([*DEAD_UNITS_SMALL, "--checkpoint", "truncated.pth"], "cannot read checkpoint truncated.pth"),
    ([*DEAD_UNITS_SMALL, "--checkpoint", "state_dict.pth"], "state_dict.pth is not a trainer checkpoint"),
    ([*DEAD_UNITS_SMALL, "--data", "imagefolder:/nonexistent"], "image folder '/nonexistent"),
    ([*TRAIN, "--steps", "2", "--data", "cifar10:/nonexistent", "--out", "new"], "CIFAR-10 folder '/nonexistent'"),
    ([*TRAIN, "--steps", "2", "--resume", "--out", "run"], "cannot read checkpoint run/checkpoint.pt"),
], ids=["unknown-config", "all-and-section", "garbage-weights", "truncated-weights", "missing-weights",
        "truncated-checkpoint", "state-dict-as-checkpoint", "missing-image-folder", "missing-cifar10",
        "resume-truncated-checkpoint"])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(monkeypatch, capsys, bad_files, args, message):
    monkeypatch.chdir(bad_files)
    before = snapshot(bad_files)
    code, _, err = run_cli(monkeypatch, capsys, *args)
    assert_one_line_error(code, err, message)
    assert snapshot(bad_files) == before


def test_a_full_disk_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    """An OSError from the system (a full disk while writing the report) names the file and the reason."""
    import errno

    import analysis.report.build as build

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "r" / "index.md"))

    monkeypatch.setattr(build, "build_report", no_space)
    code, out, err = run_cli(monkeypatch, capsys, "report", "--section", "zoo", "--out", str(tmp_path / "r"))
    assert code == 2 and err.strip() == f"error: {tmp_path / 'r' / 'index.md'}: No space left on device"
    assert "Traceback" not in err
