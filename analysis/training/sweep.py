"""Experiments as lists of run configs ("points"), each run once, into one results table that survives kills.

>>> points = [dict(model="small_inception", width_mult=w, steps=300) for w in (0.5, 1.0, 2.0)]
>>> table = run_sweep(points, run_point, "runs/width/results.jsonl")   # run_point(dict) -> DataFrame

Each point is identified by :func:`point_id`, a stable hash of its config (key order does not matter). A point
runs in its own process (``multiprocessing`` spawn: a crash, a leaked CUDA context or global state cannot reach
the next point), and its rows, tagged with ``point_id`` and the point's config, are appended to the table by an
atomic rewrite. A re-run skips every point already in the table, so a killed sweep resumes where it stopped.
``run_point`` must be importable (a module-level function) for the spawned process, and a script that calls
:func:`run_sweep` must guard its entry with ``if __name__ == "__main__":``.

On a cluster, make each point its own job rather than a child process: list the unfinished points with
:func:`pending_points`, submit one job per point (e.g. a job array whose index picks the point), and in each job
call ``run_sweep([point], run_point, results_path, isolate=False)``. Under ``torchrun`` (``WORLD_SIZE`` > 1)
``run_sweep`` never spawns (the job is the isolation; the trainer inside joins the process group), every rank
runs the point and only rank 0 appends. Appends from concurrent jobs are serialised by an ``flock`` on
``<results>.lock``; on a file system where ``flock`` is unreliable (some NFS mounts), give each job its own
results file and concatenate them with :func:`read_results`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import multiprocessing as mp
import os
import pickle
import re
import tempfile
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import pandas as pd

from analysis.io import atomic_write_text

__all__ = ["point_id", "run_sweep", "pending_points", "read_results"]


def point_id(point: Mapping[str, Any]) -> str:
    """A 12-hex-digit hash of the point's config, independent of key order and stable across runs."""
    if not isinstance(point, Mapping):
        raise TypeError(f"a sweep point must be a dict of config values, got {type(point).__name__}")
    text = json.dumps(point, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def _is_csv(path: Path) -> bool:
    return path.suffix.lower() == ".csv"


# Every row this module writes starts with its point's id (see _tag).
_POINT_ID_AT_START = re.compile(r'^\{"point_id": "([0-9a-f]{12})"')


def _jsonl_rows(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """The complete rows of a JSON-lines results file, each with its line.

    Rows are appended by an atomic rewrite, but a copy cut short (or a writer on a file system without atomic
    renames) can leave a last line that was not finished: no newline after it and not valid JSON. That line is
    dropped, together with the other rows of its point (named at the line's start; when the cut fell inside the
    id, the point of the line before, the only one it can continue), with a warning: the point counts as
    unfinished and runs again. A bad line anywhere else is damage not to guess about: a ``ValueError`` names it.
    """
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    rows: list[tuple[str, dict[str, Any]]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append((line, json.loads(line)))
        except json.JSONDecodeError as err:
            if number < len(lines) or text.endswith("\n"):
                raise ValueError(f"{path}, line {number}: not a JSON row ({err.msg}); the results file is damaged: "
                                 "repair or delete that line (its point then runs again)") from None
            named = _POINT_ID_AT_START.match(line)
            torn = named.group(1) if named else (rows[-1][1].get("point_id") if rows else None)
            rows = [(kept, row) for kept, row in rows if row.get("point_id") != torn]
            warnings.warn(f"{path}: its last line was cut short; dropped it and the rows of its point {torn}, "
                          "which will run again", stacklevel=3)
    return rows


def read_results(path: str | Path) -> pd.DataFrame:
    """The results table (``.csv``, otherwise JSON lines); empty when the file does not exist yet. A JSON-lines
    file's last line cut short drops its point's rows (the point is unfinished), with a warning."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return pd.DataFrame()
    if _is_csv(path):
        return pd.read_csv(path)
    return pd.DataFrame([row for _, row in _jsonl_rows(path)])


def _finished(path: Path) -> set[str]:
    table = read_results(path)
    return set(table["point_id"].astype(str)) if "point_id" in table else set()


def pending_points(points: Iterable[Mapping[str, Any]], results_path: str | Path) -> list[dict[str, Any]]:
    """The points not yet in the results table, in order (duplicates dropped): the jobs still to submit."""
    done = _finished(Path(results_path))
    out, seen = [], set()
    for point in points:
        pid = point_id(point)
        if pid not in done and pid not in seen:
            seen.add(pid)
            out.append(dict(point))
    return out


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # not POSIX: one sweep at a time
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _cell(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value
    return json.dumps(value, sort_keys=True, default=str)


def _tag(frame: pd.DataFrame, point: Mapping[str, Any], pid: str) -> pd.DataFrame:
    """Rows of one point with ``point_id`` and the point's config in front (the run's own columns win)."""
    frame = frame.reset_index(drop=True)
    if frame.empty:
        frame = pd.DataFrame(index=[0])  # a point that measured nothing is still finished
    tags = {"point_id": pid, **{k: _cell(v) for k, v in point.items() if k not in frame.columns}}
    front = pd.DataFrame({k: [v] * len(frame) for k, v in tags.items()}, index=frame.index)
    return pd.concat([front, frame.drop(columns=["point_id"], errors="ignore")], axis=1)


def _append(path: Path, frame: pd.DataFrame) -> None:
    if _is_csv(path):
        table = pd.concat([read_results(path), frame], ignore_index=True)
        atomic_write_text(path, table.to_csv(index=False))
        return
    old = "".join(line + "\n" for line, _ in _jsonl_rows(path)) if path.exists() else ""
    new = "".join(json.dumps({k: _json_value(v) for k, v in row.items()}) + "\n"
                  for row in frame.to_dict(orient="records"))
    atomic_write_text(path, old + new)


def _json_value(value: Any) -> Any:
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            value = value.item()
        except (ValueError, AttributeError):
            pass
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    return value


def _child(run_point: Callable[[dict], pd.DataFrame], point: dict, result_file: str, error_file: str) -> None:
    try:
        frame = run_point(point)
        with open(result_file, "wb") as f:
            pickle.dump(frame, f)
    except BaseException:  # the parent reports it with the point's name
        Path(error_file).write_text(traceback.format_exc(), encoding="utf-8")
        raise SystemExit(1)


def _run_isolated(run_point: Callable[[dict], pd.DataFrame], point: dict, start_method: str) -> Any:
    context = mp.get_context(start_method)
    with tempfile.TemporaryDirectory(prefix="sweep-point-") as tmp:
        result_file, error_file = os.path.join(tmp, "result.pkl"), os.path.join(tmp, "error.txt")
        process = context.Process(target=_child, args=(run_point, point, result_file, error_file))
        try:
            process.start()
        except (pickle.PicklingError, AttributeError, TypeError) as err:
            raise TypeError(f"run_point {getattr(run_point, '__qualname__', run_point)!r} cannot be sent to a "
                            f"spawned process ({err}); make it a module-level function, or pass isolate=False") from err
        try:
            process.join()
        except BaseException:
            process.terminate()
            process.join()
            raise
        if os.path.exists(error_file):
            raise RuntimeError(Path(error_file).read_text(encoding="utf-8"))
        if process.exitcode != 0 or not os.path.exists(result_file):
            raise RuntimeError(f"the point's process ended with exit code {process.exitcode}")
        with open(result_file, "rb") as f:
            return pickle.load(f)


def run_sweep(
    points: Iterable[Mapping[str, Any]],
    run_point: Callable[[dict], pd.DataFrame],
    results_path: str | Path,
    *,
    isolate: bool = True,
    on_error: str = "raise",
    start_method: str = "spawn",
) -> pd.DataFrame:
    """Run every unfinished point with ``run_point(point) -> DataFrame`` and return the whole results table.

    ``isolate`` runs each point in a fresh process (``start_method``, spawn by default); ``on_error="raise"``
    stops at the first failing point (the finished ones stay in the table), ``"skip"`` warns and goes on
    (the failed point stays unfinished, so the next run retries it).
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error={on_error!r} is not supported; use 'raise' or 'skip'")
    results_path = Path(results_path)
    points = [dict(p) if isinstance(p, Mapping) else p for p in points]
    for p in points:
        point_id(p)  # type check with a clear message
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    writer = int(os.environ.get("RANK", "0")) == 0
    if distributed:
        isolate = False
    for point in pending_points(points, results_path):
        pid = point_id(point)
        with _locked(results_path):
            if pid in _finished(results_path):  # another job finished it meanwhile
                continue
        try:
            frame = _run_isolated(run_point, point, start_method) if isolate else run_point(dict(point))
            if not isinstance(frame, pd.DataFrame):
                raise TypeError(f"run_point must return a pandas DataFrame, got {type(frame).__name__}")
        except Exception as err:
            message = f"sweep point {pid} {json.dumps(point, default=str)} failed: {err}"
            if on_error == "skip":
                warnings.warn(message, stacklevel=2)
                continue
            raise RuntimeError(message) from err
        if writer:
            with _locked(results_path):
                _append(results_path, _tag(frame, point, pid))
    return read_results(results_path)
