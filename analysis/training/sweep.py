"""Experiments as lists of run configs ("points"), each run once, into one results table that survives kills,
with the code that made each result.

>>> points = [dict(model="small_inception", width_mult=w, steps=300) for w in (0.5, 1.0, 2.0)]
>>> table = run_sweep(points, run_point, "runs/width/results.jsonl")   # run_point(dict) -> DataFrame

**Identity.** Each point is identified by :func:`point_id`, a stable hash of its config (key order does not
matter) without its :data:`PLACEMENT_KEYS` (``device``, ``threads``): where a point runs is not what it computes,
so a point moved to another GPU or machine is the same point. Results files written when the device was part of
the hash are migrated the first time a sweep that knows their points opens them (the rows get the new ids).

**Resume.** A point's rows, tagged with ``point_id``, the point's config and the ``code_*`` columns of
:class:`~analysis.training.provenance.Provenance`, are appended to the table by an atomic rewrite under an
``flock`` on ``<results>.lock`` (concurrent workers, jobs and nodes append to the one file). A re-run skips every
finished point, so a killed sweep resumes where it stopped. While it runs, a point has a folder of its own,
:func:`current_point_dir` (``points/<point_id>/`` beside the results), for the checkpoint it resumes from when its
job is requeued or killed; the folder goes once the point's rows are in. A point holds a lock in that folder
while it runs, so one started twice (a job still running when the sweep is run again) is reported, not run twice.

**Code.** Given ``fingerprint`` (e.g. :func:`~analysis.training.provenance.experiment_fingerprint`), a point
whose rows were made by other code is *stale*: ``stale="refuse"`` (the default) stops with a
:class:`StaleResultsError` naming them, ``"rerun"`` runs them again (their old rows are replaced), ``"reuse"``
keeps them. :func:`sweep_status` tells, before running, which points are current, stale or not run, and by
which code (``describe()``).

**Where points run** is the launcher's business (:mod:`analysis.training.launch`): this process, local workers
(one or more per GPU), or a SLURM job array through submitit. ``run_point`` must be importable (a module-level
function) for another process, and a script that calls :func:`run_sweep` with workers must guard its entry with
``if __name__ == "__main__":``. Under ``torchrun`` (``WORLD_SIZE`` > 1) every rank runs the points in turn in its
own process (the trainer inside joins the process group) and only rank 0 appends. On a file system where
``flock`` is unreliable (some NFS mounts), give each job its own results file and concatenate them with
:func:`read_results`.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import logging
import math
import os
import re
import shutil
import warnings
from collections import Counter
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal, Mapping, Sequence

import pandas as pd

from analysis.io import atomic_write_text
from analysis.training.launch import Launcher, LocalLauncher
from analysis.training.provenance import Provenance, current_provenance

__all__ = [
    "PLACEMENT_KEYS",
    "StaleResultsError",
    "SweepStatus",
    "current_point_dir",
    "pending_points",
    "point_dir",
    "point_id",
    "read_results",
    "run_sweep",
    "sweep_defaults",
    "sweep_status",
]

log = logging.getLogger(__name__)

Stale = Literal["refuse", "rerun", "reuse"]
STALE_POLICIES = ("refuse", "rerun", "reuse")

# Point keys that say where and how a point runs, not what it computes: not part of its identity.
PLACEMENT_KEYS = frozenset({"device", "threads"})

CODE_COLUMNS = tuple(f.name for f in fields(Provenance))


# ------------------------------------------------------------------------------------------------ identity
def _hash(point: Mapping[str, Any]) -> str:
    text = json.dumps(point, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def point_id(point: Mapping[str, Any]) -> str:
    """A 12-hex-digit hash of the point's config without :data:`PLACEMENT_KEYS`, independent of key order and
    stable across runs."""
    if not isinstance(point, Mapping):
        raise TypeError(f"a sweep point must be a dict of config values, got {type(point).__name__}")
    return _hash({k: v for k, v in point.items() if k not in PLACEMENT_KEYS})


def _legacy_point_id(point: Mapping[str, Any]) -> str:
    """The id results files written before :data:`PLACEMENT_KEYS` left the identity gave the point."""
    return _hash(point)


def point_dir(results_path: str | Path, point: Mapping[str, Any]) -> Path:
    """The point's own folder, ``points/<point_id>/`` beside the results file: where it keeps what it resumes
    from while it runs."""
    return Path(results_path).parent / "points" / point_id(point)


_CURRENT_POINT_DIR: contextvars.ContextVar[Path | None] = contextvars.ContextVar("point_dir", default=None)


def current_point_dir() -> Path | None:
    """The running point's folder (it exists; a checkpoint written there survives a requeued or killed job and
    is found again when the point runs again), or ``None`` outside a sweep."""
    return _CURRENT_POINT_DIR.get()


# ------------------------------------------------------------------------------------------- results file
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


def _rows(path: Path) -> list[dict[str, Any]]:
    """The results as one dict per row (missing values None)."""
    if not path.exists() or path.stat().st_size == 0:
        return []
    if not _is_csv(path):
        return [row for _, row in _jsonl_rows(path)]
    table = read_results(path)
    return [{k: _json_value(v) for k, v in row.items()} for row in table.to_dict(orient="records")]


def _write_rows(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    if _is_csv(path):
        atomic_write_text(path, pd.DataFrame(list(rows)).to_csv(index=False))
        return
    atomic_write_text(path, "".join(json.dumps({k: _json_value(v) for k, v in row.items()}) + "\n" for row in rows))


@contextlib.contextmanager
def _locked(path: Path, *, wait: bool = True) -> Iterator[bool]:
    """Hold an ``flock`` on ``<path>.lock``; with ``wait=False`` yield False at once when another holds it."""
    try:
        import fcntl
    except ImportError:  # not POSIX: one sweep at a time
        yield True
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _cell(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value
    return json.dumps(value, sort_keys=True, default=str)


def _tag(frame: pd.DataFrame, point: Mapping[str, Any], pid: str, code: Provenance) -> list[dict[str, Any]]:
    """Rows of one point: ``point_id`` and the point's config in front (the run's own columns win), the run's
    columns, then the ``code_*`` columns."""
    frame = frame.reset_index(drop=True)
    if frame.empty:
        frame = pd.DataFrame(index=[0])  # a point that measured nothing is still finished
    tags = {"point_id": pid, **{k: _cell(v) for k, v in point.items() if k not in frame.columns}}
    own = frame.drop(columns=["point_id", *CODE_COLUMNS], errors="ignore").to_dict(orient="records")
    return [{**tags, **row, **code.columns()} for row in own]


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


def _code_of(row: Mapping[str, Any]) -> Provenance:
    return Provenance(**{k: row.get(k) for k in CODE_COLUMNS})


def _migrate_legacy_ids(path: Path, points: Sequence[Mapping[str, Any]]) -> None:
    """Give rows written under a point's legacy id (its hash with the device) the point's current id, once."""
    renames = {_legacy_point_id(p): point_id(p) for p in points if PLACEMENT_KEYS & set(p)}
    if not renames or not path.exists():
        return
    with _locked(path):
        rows = _rows(path)
        present = {row.get("point_id") for row in rows}
        moved = {old: new for old, new in renames.items() if old in present and new not in present}
        if not moved:
            return
        _write_rows(path, [{**row, "point_id": moved.get(row.get("point_id"), row.get("point_id"))} for row in rows])
    log.warning("%s: %d point(s) renamed to ids without %s (results written before the device left a point's "
                "identity)", path, len(moved), "/".join(sorted(PLACEMENT_KEYS)))


# ------------------------------------------------------------------------------------------------ status
class StaleResultsError(ValueError):
    """The results file holds points finished by other code than the sweep's fingerprint, and the sweep was
    told to refuse them."""


def _unique(points: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    out, seen = [], set()
    for point in points:
        pid = point_id(point)
        if pid not in seen:
            seen.add(pid)
            out.append(dict(point))
    return out


@dataclass(frozen=True)
class SweepStatus:
    """Where a sweep's points stand in their results file: ``current`` (finished by the code of
    ``fingerprint``, or finished at all when it is None), ``stale`` (finished by other code only) and ``pending``
    (no rows); ``code`` maps each finished point's id to the code that made it."""

    results_path: Path
    fingerprint: str | None
    current: tuple[dict[str, Any], ...]
    stale: tuple[dict[str, Any], ...]
    pending: tuple[dict[str, Any], ...]
    code: Mapping[str, Provenance]

    def _groups(self, points: Sequence[Mapping[str, Any]]) -> str:
        counts = Counter(self.code[point_id(p)] for p in points)
        parts = []
        for code, n in counts.most_common():
            what = code.describe() if code.code_fingerprint or code.code_commit else "no record of its code"
            parts.append(f"{n} by {what}")
        return "; ".join(parts)

    def describe(self) -> str:
        """One line: how many points are finished (by which code), stale and not run."""
        total = len(self.current) + len(self.stale) + len(self.pending)
        parts = [f"{self.results_path}: {total} point(s)"]
        if self.current:
            by = f" ({self._groups(self.current)})"
            parts.append(f"{len(self.current)} finished" + (" by this code" if self.fingerprint else "") + by)
        if self.stale:
            parts.append(f"{len(self.stale)} finished by other code ({self._groups(self.stale)})")
        parts.append(f"{len(self.pending)} not run")
        return ", ".join(parts)

    def stale_message(self) -> str:
        return (f"{self.results_path} holds results of {len(self.stale)} point(s) made by other code "
                f"({self._groups(self.stale)}); this code is fingerprint {self.fingerprint}. Rerun them "
                "(stale='rerun', on the command line --stale rerun) or reuse them as they are (stale='reuse', "
                "--stale reuse)")


def _is_current(rows: Sequence[Mapping[str, Any]], fingerprint: str | None) -> bool:
    return bool(rows) and (fingerprint is None or any(r.get("code_fingerprint") == fingerprint for r in rows))


def sweep_status(points: Iterable[Mapping[str, Any]], results_path: str | Path,
                 fingerprint: str | None = None) -> SweepStatus:
    """Which of ``points`` (duplicates dropped, order kept) are finished by the code of ``fingerprint``,
    finished by other code, or not run."""
    path = Path(results_path)
    by_point: dict[str, list[dict[str, Any]]] = {}
    for row in _rows(path):
        by_point.setdefault(str(row.get("point_id")), []).append(row)
    current, stale, pending, code = [], [], [], {}
    for point in _unique(points):
        pid = point_id(point)
        rows = by_point.get(pid, [])
        if not rows:
            pending.append(point)
            continue
        mine = [r for r in rows if fingerprint is not None and r.get("code_fingerprint") == fingerprint]
        code[pid] = _code_of((mine or rows)[0])
        (current if _is_current(rows, fingerprint) else stale).append(point)
    return SweepStatus(path, fingerprint, tuple(current), tuple(stale), tuple(pending), code)


def pending_points(points: Iterable[Mapping[str, Any]], results_path: str | Path,
                   fingerprint: str | None = None) -> list[dict[str, Any]]:
    """The points not yet finished (by the code of ``fingerprint`` when given), in order, duplicates dropped."""
    status = sweep_status(points, results_path, fingerprint)
    todo = {point_id(p) for p in (*status.pending, *status.stale)}
    return [p for p in _unique(points) if point_id(p) in todo]


# --------------------------------------------------------------------------------------------------- running
@dataclass(frozen=True)
class _PointTask:
    """Run one point and append its rows: what a launcher runs for each point, in any process (picklable)."""

    run_point: Callable[[dict], pd.DataFrame]
    results_path: str
    code: Provenance

    def __call__(self, point: dict) -> None:
        path, pid = Path(self.results_path), point_id(point)
        folder = point_dir(path, point)
        if int(os.environ.get("RANK", "0")) != 0:  # torchrun: every rank runs the point, rank 0 writes
            self._run(point, folder)
            return
        with _locked(folder / "point", wait=False) as mine:
            if not mine:
                raise RuntimeError(f"point {pid} is running in another process (it holds {folder}/point.lock); "
                                   "not run twice")
            with _locked(path):
                if _is_current([r for r in _rows(path) if r.get("point_id") == pid], self.code.code_fingerprint):
                    shutil.rmtree(folder, ignore_errors=True)  # another job finished it meanwhile
                    return
            rows = _tag(self._run(point, folder), point, pid, self.code)
            with _locked(path):  # the point's rows from other code, if any, make way for these
                _write_rows(path, [r for r in _rows(path) if r.get("point_id") != pid] + rows)
            shutil.rmtree(folder, ignore_errors=True)

    def _run(self, point: dict, folder: Path) -> pd.DataFrame:
        folder.mkdir(parents=True, exist_ok=True)
        token = _CURRENT_POINT_DIR.set(folder)
        try:
            frame = self.run_point(dict(point))
        finally:
            _CURRENT_POINT_DIR.reset(token)
        if not isinstance(frame, pd.DataFrame):
            raise TypeError(f"run_point must return a pandas DataFrame, got {type(frame).__name__}")
        return frame


_DEFAULTS: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("sweep_defaults", default={})


@contextlib.contextmanager
def sweep_defaults(*, launcher: Launcher | None = None, stale: Stale | None = None) -> Iterator[None]:
    """Within the block, :func:`run_sweep` calls that give no ``launcher`` / ``stale`` use these: how the
    command line's ``--launcher`` and ``--stale`` reach the sweeps an experiment or the report starts."""
    if stale is not None and stale not in STALE_POLICIES:
        raise ValueError(f"stale={stale!r} is not one of {', '.join(STALE_POLICIES)}")
    given = {k: v for k, v in dict(launcher=launcher, stale=stale).items() if v is not None}
    token = _DEFAULTS.set({**_DEFAULTS.get(), **given})
    try:
        yield
    finally:
        _DEFAULTS.reset(token)


def _in_process(launcher: Launcher) -> bool:
    return isinstance(launcher, LocalLauncher) and launcher.slots() == [None]


def run_sweep(
    points: Iterable[Mapping[str, Any]],
    run_point: Callable[[dict], pd.DataFrame],
    results_path: str | Path,
    *,
    launcher: Launcher | None = None,
    isolate: bool | None = None,
    fingerprint: str | None = None,
    stale: Stale | None = None,
    on_error: str = "raise",
    on_done: Callable[[dict], None] | None = None,
    start_method: str = "spawn",
) -> pd.DataFrame:
    """Run every unfinished point with ``run_point(point) -> DataFrame`` and return the whole results table.

    ``launcher`` decides where the points run (default: the one of :func:`sweep_defaults`, else this process,
    each point in a fresh ``start_method`` process, or in this one with ``isolate=False``; ``isolate`` belongs to
    the launcher when one is given). ``fingerprint`` names the code (see the module docstring) and ``stale``
    what to do with points finished by other code (default ``"refuse"``). ``on_error="raise"`` stops at the
    first failing point (the finished ones stay in the table), ``"skip"`` warns and goes on (the failed point
    stays unfinished, so the next run retries it). ``on_done(point)`` is called as each point finishes.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error={on_error!r} is not supported; use 'raise' or 'skip'")
    defaults = _DEFAULTS.get()
    stale = stale or defaults.get("stale", "refuse")
    if stale not in STALE_POLICIES:
        raise ValueError(f"stale={stale!r} is not one of {', '.join(STALE_POLICIES)}")
    if launcher is not None and isolate is not None:
        raise ValueError("give isolate to the launcher (LocalLauncher(isolate=...)), not beside it")
    launcher = launcher or defaults.get("launcher") or LocalLauncher(
        isolate=True if isolate is None else isolate, start_method=start_method)
    results_path = Path(results_path)
    points = [dict(p) if isinstance(p, Mapping) else p for p in points]
    for p in points:
        point_id(p)  # type check with a clear message
    _migrate_legacy_ids(results_path, points)
    status = sweep_status(points, results_path, fingerprint)
    if status.stale and stale == "refuse":
        raise StaleResultsError(status.stale_message())
    if status.stale and stale == "reuse":
        log.info("reusing %d result(s) of other code: %s", len(status.stale), status.describe())
    todo_ids = {point_id(p) for p in (*status.pending, *(status.stale if stale == "rerun" else ()))}
    todo = [p for p in _unique(points) if point_id(p) in todo_ids]
    task = _PointTask(run_point, str(results_path), current_provenance(fingerprint))
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if not _in_process(launcher):
            raise ValueError("under torchrun every rank runs the sweep's points in turn in its own process; "
                             "use no launcher (or LocalLauncher(workers=1)) there")
        launcher = LocalLauncher(isolate=False)
    failures = launcher.run(todo, task, workdir=results_path.parent, stop_on_error=on_error == "raise",
                            on_done=on_done)
    for failure in failures:
        message = f"sweep point {point_id(failure.point)} {json.dumps(failure.point, default=str)} failed: {failure.error}"
        if on_error == "raise":
            raise RuntimeError(message + ("" if len(failures) == 1 else f" (and {len(failures) - 1} more)"))
        warnings.warn(message, stacklevel=2)
    return read_results(results_path)
