"""The sweep runner: point identity without the device (and the migration of older results files), the code
that made each result (stale results refused, rerun or reused), each point's own folder to resume from, the
local launcher's workers per GPU (a mocked device count), and submitit's local cluster with a preempted job
that is requeued and a killed job that resumes.

This module imports no torch, so the worker processes and submitit jobs that import it start fast.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from analysis.training.launch import LocalLauncher, SubmititLauncher, gpu_slots, launcher_from_options
from analysis.training.sweep import (
    StaleResultsError,
    _legacy_point_id,
    current_point_dir,
    pending_points,
    point_dir,
    point_id,
    read_results,
    run_sweep,
    sweep_defaults,
    sweep_status,
)

HERE = Path(__file__).resolve().parent


# ------------------------------------------------------------------------------------------ point functions
def square(point: dict) -> pd.DataFrame:
    """One row: the width squared; records each call in ``calls.txt`` beside the results."""
    with open(Path(point["folder"]) / "calls.txt", "a") as f:
        f.write(f"{point['width']}\n")
    return pd.DataFrame({"value": [point["width"] ** 2]})


def where(point: dict) -> pd.DataFrame:
    """Where the point ran: its process and the GPU its worker was given."""
    time.sleep(point.get("sleep", 0.0))
    return pd.DataFrame({"pid": [os.getpid()], "gpu": [os.environ.get("CUDA_VISIBLE_DEVICES", "unset")]})


def counting(point: dict) -> pd.DataFrame:
    """``steps`` steps of ``dt`` seconds, the step count kept in the point's folder after each step (the
    checkpoint it resumes from); the row lists the step each attempt started from."""
    folder = current_point_dir()
    state = folder / "state.json"
    done = json.loads(state.read_text())["step"] if state.exists() else 0
    with open(folder / "starts.txt", "a") as f:
        f.write(f"{done}\n")
    (folder / "pid").write_text(str(os.getpid()))
    for step in range(done, point["steps"]):
        if step == point.get("crash_at") and not (folder / "crashed").exists():
            (folder / "crashed").touch()
            raise RuntimeError("simulated crash")
        time.sleep(point["dt"])
        tmp = folder / "state.tmp"
        tmp.write_text(json.dumps({"step": step + 1}))
        os.replace(tmp, state)
    starts = (folder / "starts.txt").read_text().split()
    return pd.DataFrame({"steps_done": [point["steps"]], "starts": [",".join(starts)]})


def _calls(folder: Path) -> list[str]:
    path = folder / "calls.txt"
    return path.read_text().split() if path.exists() else []


# -------------------------------------------------------------------------------------------------- identity
def test_the_device_and_threads_are_not_part_of_a_point():
    point = {"width": 2, "lr": 0.1}
    assert point_id({**point, "device": "cuda", "threads": 0}) == point_id({**point, "device": "cpu", "threads": 1})
    assert point_id({**point, "device": "cuda"}) == point_id(point)
    assert point_id({**point, "lr": 0.2, "device": "cuda"}) != point_id(point)


def test_results_written_with_the_device_in_the_id_are_migrated_not_rerun(tmp_path: Path, caplog):
    results = tmp_path / "results.jsonl"
    points = [dict(width=w, device="cpu", threads=1, folder=str(tmp_path)) for w in (2, 3)]
    old = [{"point_id": _legacy_point_id(p), **p, "value": p["width"] ** 2} for p in points[:1]]
    results.write_text("".join(json.dumps(row) + "\n" for row in old))
    assert _legacy_point_id(points[0]) != point_id(points[0])
    with caplog.at_level(logging.WARNING, logger="analysis.training.sweep"):
        table = run_sweep(points, square, results, isolate=False)
    assert "1 point(s) renamed to ids without device/threads" in caplog.text
    assert _calls(tmp_path) == ["3"]  # the old point was not run again
    assert table["point_id"].tolist() == [point_id(p) for p in points]
    assert table["value"].tolist() == [4, 9]
    moved = {**points[0], "device": "cuda:1"}  # the same point on another device is finished
    assert pending_points([moved], results) == []


# ------------------------------------------------------------------------------------------------ provenance
def test_every_row_records_the_code_that_made_it(tmp_path: Path):
    results = tmp_path / "results.jsonl"
    table = run_sweep([dict(width=2, folder=str(tmp_path))], square, results, isolate=False, fingerprint="f" * 16)
    row = table.iloc[0]
    assert row["code_fingerprint"] == "f" * 16
    assert row["code_version"] == "0.1.0"
    head = os.popen(f"git -C {HERE} rev-parse HEAD").read().strip()
    assert row["code_commit"] == head and len(head) == 40
    dirty = bool(os.popen(f"git -C {HERE} status --porcelain --untracked-files=no").read().strip())
    assert row["code_dirty"] == dirty
    assert list(table.columns)[-4:] == ["code_fingerprint", "code_version", "code_commit", "code_dirty"]


def _stale_setup(tmp_path: Path) -> tuple[Path, list[dict]]:
    results = tmp_path / "results.jsonl"
    points = [dict(width=w, folder=str(tmp_path)) for w in (2, 3, 4)]
    old = {"point_id": point_id(points[0]), **points[0], "value": 4}  # a row written before rows had code columns
    results.write_text(json.dumps(old) + "\n")
    (tmp_path / "calls.txt").write_text("2\n")
    run_sweep(points[1:2], square, results, isolate=False, fingerprint="old0old0old0old0")
    return results, points


def test_results_of_other_code_are_refused_with_a_message_naming_them(tmp_path: Path):
    results, points = _stale_setup(tmp_path)
    before = results.read_text()
    with pytest.raises(StaleResultsError, match=r"holds results of 2 point\(s\) made by other code \(1 by no "
                       r"record of its code; 1 by fingerprint old0old0old0old0, inception-lab 0.1.0, commit "
                       r"[0-9a-f]{7}( \(dirty\))?\); this code is fingerprint new1new1new1new1\. Rerun them .*--stale rerun.*"
                       r"--stale reuse"):
        run_sweep(points, square, results, isolate=False, fingerprint="new1new1new1new1")
    assert results.read_text() == before and _calls(tmp_path) == ["2", "3"]
    assert isinstance(StaleResultsError("x"), ValueError)  # the CLI turns it into one line, exit 2


def test_results_of_other_code_are_rerun_and_replaced(tmp_path: Path):
    results, points = _stale_setup(tmp_path)
    table = run_sweep(points, square, results, isolate=False, fingerprint="new1new1new1new1", stale="rerun")
    assert _calls(tmp_path) == ["2", "3", "2", "3", "4"]
    assert table["code_fingerprint"].tolist() == ["new1new1new1new1"] * 3  # the old rows are gone
    assert table["width"].tolist() == [2, 3, 4]
    run_sweep(points, square, results, isolate=False, fingerprint="new1new1new1new1")
    assert len(_calls(tmp_path)) == 5  # current now


def test_results_of_other_code_are_reused_when_asked_and_the_status_says_so(tmp_path: Path):
    results, points = _stale_setup(tmp_path)
    status = sweep_status(points, results, "new1new1new1new1")
    assert [p["width"] for p in status.stale] == [2, 3] and [p["width"] for p in status.pending] == [4]
    text = status.describe()
    assert text.startswith(f"{results}: 3 point(s), 2 finished by other code (1 by no record of its code; 1 by "
                           "fingerprint old0old0old0old0, inception-lab 0.1.0, commit ")
    assert text.endswith("), 1 not run")
    table = run_sweep(points, square, results, isolate=False, fingerprint="new1new1new1new1", stale="reuse")
    assert _calls(tmp_path) == ["2", "3", "4"]
    assert table["code_fingerprint"].fillna("none").tolist() == ["none", "old0old0old0old0", "new1new1new1new1"]
    after = sweep_status(points, results, "new1new1new1new1")
    assert len(after.stale) == 2 and len(after.current) == 1
    assert "1 finished by this code (1 by fingerprint new1new1new1new1" in after.describe()
    assert pending_points(points, results, "new1new1new1new1") == points[:2]
    assert pending_points(points, results) == []  # without a fingerprint every finished point counts


def test_the_stale_policy_comes_from_sweep_defaults_and_is_checked(tmp_path: Path):
    results, points = _stale_setup(tmp_path)
    with sweep_defaults(stale="reuse"):
        run_sweep(points, square, results, isolate=False, fingerprint="new1new1new1new1")
    assert _calls(tmp_path) == ["2", "3", "4"]
    with pytest.raises(ValueError, match="stale='keep' is not one of refuse, rerun, reuse"):
        run_sweep(points, square, results, isolate=False, stale="keep")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="give isolate to the launcher"):
        run_sweep(points, square, results, launcher=LocalLauncher(), isolate=False)


# ------------------------------------------------------------------------------------------ the point's folder
def test_a_point_resumes_from_its_folder_and_the_folder_goes_when_it_is_done(tmp_path: Path):
    results = tmp_path / "results.jsonl"
    point = dict(steps=6, dt=0.0, crash_at=4)
    assert current_point_dir() is None
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_sweep([point], counting, results, isolate=False)
    folder = point_dir(results, point)
    assert folder == tmp_path / "points" / point_id(point)
    assert json.loads((folder / "state.json").read_text()) == {"step": 4}
    table = run_sweep([point], counting, results, isolate=False)
    assert table["starts"].tolist() == ["0,4"] and table["steps_done"].tolist() == [6]
    assert not folder.exists() and current_point_dir() is None


def test_a_point_running_elsewhere_is_reported_not_run_twice(tmp_path: Path):
    results = tmp_path / "results.jsonl"
    point = dict(width=2, folder=str(tmp_path))
    import fcntl

    folder = point_dir(results, point)
    folder.mkdir(parents=True)
    with open(folder / "point.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process (a job still running) holds the point
        with pytest.raises(RuntimeError, match=f"point {point_id(point)} is running in another process"):
            run_sweep([point], square, results, isolate=False)
    assert _calls(tmp_path) == [] and read_results(results).empty
    run_sweep([point], square, results, isolate=False)
    assert _calls(tmp_path) == ["2"]


# -------------------------------------------------------------------------------------------- local launcher
def test_gpu_slots_deal_workers_round_robin_over_the_visible_gpus(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    four = lambda: 4  # noqa: E731
    assert gpu_slots("all", 2, device_count=four) == ["0", "1", "2", "3", "0", "1", "2", "3"]
    assert gpu_slots([1, 3], 1, device_count=four) == ["1", "3"]
    assert gpu_slots(2, 3, device_count=four) == ["0", "1", "0", "1", "0", "1"]
    assert gpu_slots(None, 1, device_count=four) == [None]
    assert gpu_slots("auto", 2, device_count=lambda: 0) == [None]  # no GPU: one CPU slot
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")  # the parent's own view names the devices
    assert gpu_slots("all", 1, device_count=lambda: 2) == ["5", "7"]
    with pytest.raises(ValueError, match=r"asks for GPU\(s\) \[2\] but this machine shows 2"):
        gpu_slots([0, 2], device_count=lambda: 2)
    with pytest.raises(ValueError, match="workers_per_gpu must be >= 1"):
        gpu_slots("all", 0, device_count=four)
    with pytest.raises(ValueError, match="gpus='any' is not"):
        gpu_slots("any", device_count=four)
    with pytest.raises(ValueError, match="workers=3 but gpus='all' with workers_per_gpu=1 makes 2 workers"):
        LocalLauncher(workers=3, gpus="all", device_count=lambda: 2).slots()
    assert LocalLauncher(workers=3).slots() == [None, None, None]


def test_launcher_from_options():
    assert launcher_from_options("local", gpus="0,2", workers_per_gpu=2) == LocalLauncher(gpus=[0, 2],
                                                                                         workers_per_gpu=2)
    assert launcher_from_options("local", gpus="3").gpus == 3
    slurm = launcher_from_options("submitit", cluster="slurm", partition="gpu", gpus_per_node=1, cpus_per_task=8,
                                  time_limit=240, array_parallelism=16)
    assert slurm.parameters() == dict(timeout_min=240, nodes=1, tasks_per_node=1, gpus_per_node=1,
                                      slurm_array_parallelism=16, slurm_signal_delay_s=120, name="inception-lab",
                                      cpus_per_task=8, slurm_partition="gpu")
    with pytest.raises(ValueError, match="--gpus 'x' is not"):
        launcher_from_options("local", gpus="x")
    with pytest.raises(ValueError, match="--cluster 'pbs' is not slurm, local or debug"):
        launcher_from_options("submitit", cluster="pbs")
    with pytest.raises(ValueError, match="--launcher 'ray' is not local or submitit"):
        launcher_from_options("ray")


@pytest.mark.slow
def test_workers_per_gpu_each_see_their_gpu(tmp_path: Path, monkeypatch):
    """Two mocked GPUs, two workers each: every point runs with one GPU visible and all four slots are used, each
    worker keeping its process (and its GPU) over its points."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    results = tmp_path / "results.jsonl"
    points = [dict(index=i, sleep=0.3) for i in range(8)]
    launcher = LocalLauncher(gpus="all", workers_per_gpu=2, isolate=False, device_count=lambda: 2)
    done: list[int] = []
    table = run_sweep(points, where, results, launcher=launcher, on_done=lambda p: done.append(p["index"]))
    assert sorted(done) == list(range(8)) and len(table) == 8
    assert sorted(table["gpu"].value_counts().to_dict().items()) == [("0", 4), ("1", 4)]
    assert table["pid"].nunique() <= 4 and table.groupby("pid")["gpu"].nunique().max() == 1


@pytest.mark.slow
def test_isolate_with_several_workers_gives_every_point_a_process(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    results = tmp_path / "results.jsonl"
    launcher = LocalLauncher(gpus=[1], workers_per_gpu=2, isolate=True, device_count=lambda: 2)
    table = run_sweep([dict(index=i) for i in range(4)], where, results, launcher=launcher)
    assert table["pid"].nunique() == 4 and set(table["gpu"]) == {"1"}  # the spawned point keeps its worker's GPU


def test_a_failing_point_in_a_pool_names_the_point(tmp_path: Path):
    results = tmp_path / "results.jsonl"
    points = [dict(width=2, folder=str(tmp_path)), dict(width=3, folder=str(tmp_path / "absent"))]
    with pytest.warns(UserWarning, match=r'sweep point [0-9a-f]{12} \{"width": 3.*No such file'):
        table = run_sweep(points, square, results, launcher=LocalLauncher(workers=2, isolate=False),
                          on_error="skip")
    assert table["width"].tolist() == [2]


def test_under_torchrun_a_sweep_refuses_workers(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="under torchrun every rank runs the sweep's points in turn"):
        run_sweep([dict(width=2, folder=str(tmp_path))], square, tmp_path / "r.jsonl",
                  launcher=LocalLauncher(workers=2))


# ---------------------------------------------------------------------------------------------- submitit
def _step_reached(path: Path, point: dict, step: int, timeout: float = 60.0) -> int:
    """Wait until the point's checkpoint holds ``step``; return the pid of the process running it."""
    state, deadline = point_dir(path, point) / "state.json", time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if json.loads(state.read_text())["step"] >= step:
                return int((point_dir(path, point) / "pid").read_text())
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    raise TimeoutError(f"the point {point} did not reach step {step}")


@pytest.mark.slow
def test_submitit_local_cluster_requeues_a_preempted_job_and_a_killed_one_resumes(tmp_path: Path, monkeypatch):
    """Two points as a job array on submitit's local cluster. One is preempted (SIGUSR2, what SLURM sends):
    submitit requeues it and it resumes from its checkpoint. The other is killed outright (SIGKILL): the sweep
    reports it; run again, it resumes from its checkpoint. Both end in the one results file."""
    import submitit

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setattr(submitit.core.core.Job, "_results_timeout_s", 1)  # a killed job leaves no result file
    results = tmp_path / "results.jsonl"
    points = [dict(name="preempted", steps=20, dt=0.1), dict(name="killed", steps=20, dt=0.1)]
    launcher = SubmititLauncher(cluster="local", timeout_min=5, poll_s=0.2)
    errors: list[BaseException] = []

    def sweep() -> None:
        try:
            run_sweep(points, counting, results, launcher=launcher)
        except BaseException as err:  # noqa: BLE001 - checked below
            errors.append(err)

    first = threading.Thread(target=sweep)
    first.start()
    os.kill(_step_reached(results, points[0], 5), signal.SIGUSR2)
    os.kill(_step_reached(results, points[1], 5), signal.SIGKILL)
    first.join(timeout=120)
    assert len(errors) == 1 and isinstance(errors[0], RuntimeError)
    assert f"sweep point {point_id(points[1])}" in str(errors[0]) and "killed" in str(errors[0])
    table = read_results(results)
    assert table["name"].tolist() == ["preempted"]
    assert table["starts"].iloc[0].split(",")[0] == "0" and int(table["starts"].iloc[0].split(",")[1]) >= 5
    assert json.loads((point_dir(results, points[1]) / "state.json").read_text())["step"] >= 5

    table = run_sweep(points, counting, results, launcher=launcher)
    assert table["name"].tolist() == ["preempted", "killed"] and table["steps_done"].tolist() == [20, 20]
    resumed = [int(s) for s in table["starts"].iloc[1].split(",")]
    assert resumed[0] == 0 and resumed[1] >= 5  # the second job started where the killed one had got
    assert not (tmp_path / "points" / point_id(points[0])).exists()
    assert any((tmp_path / "submitit").glob("*_log.out"))
