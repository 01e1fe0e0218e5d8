"""Where a sweep's pending points run: in this process or local worker processes, one or more per GPU
(:class:`LocalLauncher`), or as the tasks of a job array on a SLURM cluster through submitit
(:class:`SubmititLauncher`).

A launcher runs ``task(point)`` for each point and reports the failures; the task (made by
:func:`analysis.training.sweep.run_sweep`) runs the point and appends its rows to the results file itself, under
the file's lock, so results from any worker, node or requeued job land in the one resumable file.

>>> run_sweep(points, run_point, "runs/x/results.jsonl", launcher=LocalLauncher(gpus="all", workers_per_gpu=2))
>>> run_sweep(points, run_point, "runs/x/results.jsonl",
...           launcher=SubmititLauncher(cluster="slurm", partition="gpu", gpus_per_node=1, timeout_min=240))

**GPUs.** A worker sees one GPU, through ``CUDA_VISIBLE_DEVICES`` set before it starts: its points run on
``cuda:0`` / ``device="auto"`` whichever GPU that is, and the device never enters a point's identity (so a point
moved to another GPU or machine is still the same point). Workers are dealt round-robin over the GPUs
(:func:`gpu_slots`), so the first points spread over all of them.

**Requeue.** A submitit task is checkpointable: on preemption or at its time limit SLURM signals it, submitit
requeues it with the same point, and the point resumes from the checkpoint it keeps in its own folder
(:func:`analysis.training.sweep.current_point_dir`). A job killed outright (out of memory, a node lost) is
reported as failed; running the sweep again submits its point again, which resumes from that checkpoint.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import pickle
import tempfile
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Protocol, Sequence

__all__ = [
    "Launcher",
    "LocalLauncher",
    "PointFailure",
    "SubmititLauncher",
    "gpu_slots",
    "launcher_from_options",
    "visible_gpu_count",
]

log = logging.getLogger(__name__)

Task = Callable[[dict], None]
OnDone = Callable[[dict], None]


@dataclass(frozen=True)
class PointFailure:
    """A point whose task raised (``error``: the message, a traceback when it came from another process)."""

    point: dict
    error: str


class Launcher(Protocol):
    """Runs ``task(point)`` for every point; returns the failures (an empty list when all finished).

    ``stop_on_error`` stops starting new points after the first failure (where the launcher can: a job array
    already submitted runs to its end); ``on_done(point)`` is called in this process as each point finishes;
    ``workdir`` is a folder the launcher may keep its files in (submitit's logs and pickles).
    """

    def run(self, points: Sequence[dict], task: Task, *, workdir: Path, stop_on_error: bool = True,
            on_done: OnDone | None = None) -> list[PointFailure]: ...


# ------------------------------------------------------------------------------------------------ local
def visible_gpu_count() -> int:
    """The CUDA devices this process sees (0 without CUDA); does not create a CUDA context."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def gpu_slots(gpus: str | int | Sequence[int] | None, workers_per_gpu: int = 1, *,
              device_count: Callable[[], int] = visible_gpu_count) -> list[str | None]:
    """The ``CUDA_VISIBLE_DEVICES`` value of each worker: ``workers_per_gpu`` per GPU, dealt round-robin.

    ``gpus``: ``None`` (no GPU assignment: one slot, the workers inherit this process's devices), ``"all"`` (every
    visible GPU), ``"auto"`` (every visible GPU, or one CPU slot without one), a count (the first N) or a list of
    indexes among the visible GPUs. The values name the devices as this process's ``CUDA_VISIBLE_DEVICES`` does,
    so a launcher started on ``CUDA_VISIBLE_DEVICES=2,3`` hands out ``"2"`` and ``"3"``.
    """
    if workers_per_gpu < 1:
        raise ValueError(f"workers_per_gpu must be >= 1, got {workers_per_gpu}")
    if gpus is None:
        return [None]
    count = device_count()
    if gpus == "auto" and count == 0:
        return [None]
    if gpus in ("all", "auto"):
        indexes = list(range(count))
    elif isinstance(gpus, int) and not isinstance(gpus, bool):
        indexes = list(range(gpus))
    elif isinstance(gpus, str):
        raise ValueError(f"gpus={gpus!r} is not 'all', 'auto', a count or a list of GPU indexes")
    else:
        indexes = [int(i) for i in gpus]
    if not indexes:
        raise ValueError(f"gpus={gpus!r} names no GPU")
    missing = [i for i in indexes if not 0 <= i < count]
    if missing:
        raise ValueError(f"gpus={gpus!r} asks for GPU(s) {missing} but this machine shows {count} "
                         f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    names = [v.strip() for v in visible.split(",")] if visible else [str(i) for i in range(count)]
    return [names[i] for _ in range(workers_per_gpu) for i in indexes]


def _child(task: Task, point: dict, error_file: str) -> None:
    try:
        task(point)
    except BaseException:  # the parent reports it with the point's name
        Path(error_file).write_text(traceback.format_exc(), encoding="utf-8")
        raise SystemExit(1)


def run_isolated(task: Task, point: dict, start_method: str = "spawn") -> None:
    """``task(point)`` in a fresh process (a crash, a leaked CUDA context or global state cannot reach the next
    point); its error comes back as a ``RuntimeError`` holding the child's traceback."""
    context = mp.get_context(start_method)
    with tempfile.TemporaryDirectory(prefix="sweep-point-") as tmp:
        error_file = os.path.join(tmp, "error.txt")
        process = context.Process(target=_child, args=(task, point, error_file))
        try:
            process.start()
        except (pickle.PicklingError, AttributeError, TypeError) as err:
            target = getattr(task, "run_point", task)
            raise TypeError(f"run_point {getattr(target, '__qualname__', target)!r} cannot be sent to a spawned "
                            f"process ({err}); make it a module-level function, or run the points in this process "
                            "(isolate=False)") from err
        try:
            process.join()
        except BaseException:
            process.terminate()
            process.join()
            raise
        if os.path.exists(error_file):
            raise RuntimeError(Path(error_file).read_text(encoding="utf-8"))
        if process.exitcode != 0:
            raise RuntimeError(f"the point's process ended with exit code {process.exitcode}")


def _take_slot(slots: Any) -> None:
    """Worker initializer: take one ``CUDA_VISIBLE_DEVICES`` value before anything touches CUDA."""
    slot = slots.get()
    if slot is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = slot


def _run_one(task: Task, point: dict, isolate: bool, start_method: str) -> None:
    if isolate:
        run_isolated(task, point, start_method)
    else:
        task(point)


@dataclass(frozen=True)
class LocalLauncher:
    """Points on this machine: in this process (one worker, no GPU assignment), or in worker processes.

    ``workers``: how many points run at once (default: one per GPU slot, else 1). ``gpus`` and
    ``workers_per_gpu``: see :func:`gpu_slots`; with ``gpus`` given, ``workers`` must equal the slots (or be left
    out). ``isolate``: every point in a fresh process of its own (spawned by the worker, which keeps its GPU);
    ``False`` runs the points in the workers themselves (a worker keeps what it cached, e.g. a rendered data set,
    across its points).
    """

    workers: int | None = None
    gpus: str | int | Sequence[int] | None = None
    workers_per_gpu: int = 1
    isolate: bool = True
    start_method: str = "spawn"
    device_count: Callable[[], int] = field(default=visible_gpu_count, repr=False, compare=False)

    def slots(self) -> list[str | None]:
        """Each worker's ``CUDA_VISIBLE_DEVICES`` (``None``: inherited)."""
        slots = gpu_slots(self.gpus, self.workers_per_gpu, device_count=self.device_count)
        if self.workers is None:
            return slots
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if slots == [None]:
            return [None] * self.workers
        if self.workers != len(slots):
            raise ValueError(f"workers={self.workers} but gpus={self.gpus!r} with workers_per_gpu="
                             f"{self.workers_per_gpu} makes {len(slots)} workers; give one or the other")
        return slots

    def run(self, points: Sequence[dict], task: Task, *, workdir: Path | None = None, stop_on_error: bool = True,
            on_done: OnDone | None = None) -> list[PointFailure]:
        slots = self.slots()
        if len(slots) == 1 and slots[0] is None or not points:
            return self._run_here(points, task, stop_on_error, on_done)
        return self._run_pool(points, task, slots[:len(points)], stop_on_error, on_done)

    def _run_here(self, points: Sequence[dict], task: Task, stop_on_error: bool,
                  on_done: OnDone | None) -> list[PointFailure]:
        failures = []
        for point in points:
            try:
                _run_one(task, point, self.isolate, self.start_method)
            except Exception as err:  # noqa: BLE001 - reported with the point by the caller
                failures.append(PointFailure(point, str(err)))
                if stop_on_error:
                    break
                continue
            if on_done is not None:
                on_done(point)
        return failures

    def _run_pool(self, points: Sequence[dict], task: Task, slots: list[str | None], stop_on_error: bool,
                  on_done: OnDone | None) -> list[PointFailure]:
        context = mp.get_context(self.start_method)
        queue = context.Queue()
        for slot in slots:
            queue.put(slot)
        failures: list[PointFailure] = []
        try:
            with ProcessPoolExecutor(len(slots), mp_context=context, initializer=_take_slot,
                                     initargs=(queue,)) as pool:
                futures = {pool.submit(_run_one, task, point, self.isolate, self.start_method): point
                           for point in points}
                for future in as_completed(futures):
                    point = futures[future]
                    try:
                        future.result()
                    except BrokenProcessPool:
                        raise
                    except Exception as err:  # noqa: BLE001 - reported with the point by the caller
                        failures.append(PointFailure(point, str(err)))
                        if stop_on_error:
                            for other in futures:
                                other.cancel()
                            break
                        continue
                    if on_done is not None:
                        on_done(point)
        except BrokenProcessPool as err:
            raise RuntimeError(
                f"a worker process died ({err}); a script running a sweep with several workers must guard its "
                "entry with `if __name__ == \"__main__\":`, or use workers=1. Finished points are kept: run "
                "again to resume") from err
        return failures


# ---------------------------------------------------------------------------------------------- submitit
def _submitit():
    try:
        import submitit
    except ImportError as err:
        raise ImportError("the submitit launcher needs submitit: pip install 'inception-lab[cluster]'") from err
    return submitit


@dataclass(frozen=True)
class _RequeueableTask:
    """A point as a submitit job: on preemption or time-out, submitit calls :meth:`checkpoint` and requeues the
    same point, which resumes from its own checkpoint. With several tasks per job (``tasks_per_node``, nodes),
    every task gets torch's ``RANK``/``WORLD_SIZE``/``MASTER_ADDR`` so the trainer inside joins one process
    group (rank 0 appends the rows)."""

    task: Task

    def __call__(self, point: dict) -> None:
        submitit = _submitit()
        if submitit.JobEnvironment().num_tasks > 1:
            submitit.helpers.TorchDistributedEnvironment().export()
        self.task(point)

    def checkpoint(self, point: dict) -> Any:
        return _submitit().helpers.DelayedSubmission(self, point)


@dataclass(frozen=True)
class SubmititLauncher:
    """Each point a task of a job array, through submitit (``cluster``: ``"slurm"``, ``"local"`` (jobs as local
    processes, all started at once: for tests) or ``"debug"`` (in this process); ``None`` picks SLURM when it is
    there).

    The SLURM knobs: ``partition``, ``gpus_per_node``, ``cpus_per_task``, ``timeout_min`` (the time limit; SLURM
    signals ``signal_delay_s`` before it, and the point is requeued from its checkpoint), ``array_parallelism``
    (tasks of the array running at once), ``mem_gb``, ``nodes`` and ``tasks_per_node`` (several processes per
    point: the trainer's DDP), ``max_requeues`` (time-outs before a point gives up) and ``slurm`` (any other
    submitit ``slurm_*`` parameter, without the prefix, e.g. ``{"account": "x", "qos": "y"}``). ``folder`` holds
    submitit's logs and pickles (default: ``submitit/`` beside the results file). ``wait=False`` submits and
    returns at once: the jobs append to the results file on their own; running the sweep again later returns
    the table, resubmitting the points that failed (a point still running elsewhere holds its lock and is
    reported, not run twice).
    """

    cluster: Literal["slurm", "local", "debug"] | None = "slurm"
    partition: str | None = None
    gpus_per_node: int = 0
    cpus_per_task: int | None = None
    timeout_min: int = 60
    array_parallelism: int = 64
    mem_gb: float | None = None
    nodes: int = 1
    tasks_per_node: int = 1
    max_requeues: int = 3
    signal_delay_s: int = 120
    slurm: dict[str, Any] = field(default_factory=dict)
    folder: str | Path | None = None
    wait: bool = True
    poll_s: float = 10.0

    def parameters(self) -> dict[str, Any]:
        """The parameters handed to ``submitit.AutoExecutor.update_parameters``."""
        params: dict[str, Any] = dict(timeout_min=int(self.timeout_min), nodes=int(self.nodes),
                                      tasks_per_node=int(self.tasks_per_node), gpus_per_node=int(self.gpus_per_node),
                                      slurm_array_parallelism=int(self.array_parallelism),
                                      slurm_signal_delay_s=int(self.signal_delay_s), name="inception-lab")
        if self.cpus_per_task is not None:
            params["cpus_per_task"] = int(self.cpus_per_task)
        if self.mem_gb is not None:
            params["mem_gb"] = self.mem_gb
        if self.partition is not None:
            params["slurm_partition"] = self.partition
        params.update({f"slurm_{key}": value for key, value in self.slurm.items()})
        return params

    def submit(self, points: Sequence[dict], task: Task, *, workdir: Path) -> list[Any]:
        """Submit one job array (one task per point); returns submitit's jobs, in the order of ``points``."""
        submitit = _submitit()
        folder = Path(self.folder) if self.folder is not None else Path(workdir) / "submitit"
        executor = submitit.AutoExecutor(folder=folder, cluster=self.cluster,
                                         slurm_max_num_timeout=int(self.max_requeues))
        executor.update_parameters(**self.parameters())
        jobs = executor.map_array(_RequeueableTask(task), list(points))
        if jobs:
            log.info("submitted %d point(s) as job(s) %s; logs in %s", len(jobs), jobs[0].job_id.split("_")[0], folder)
        return jobs

    def collect(self, jobs: Sequence[Any], points: Sequence[dict], *,
                on_done: OnDone | None = None) -> list[PointFailure]:
        """Wait for ``jobs`` (as submitted for ``points``) and return the failed points with their job's error."""
        submitit = _submitit()
        point_of = {id(job): point for job, point in zip(jobs, points)}
        failures = []
        for job in submitit.helpers.as_completed(list(jobs), poll_frequency=self.poll_s):
            point = point_of[id(job)]
            try:
                job.result()
            except Exception as err:  # noqa: BLE001 - a failed or killed job, reported with its point
                failures.append(PointFailure(point, f"job {job.job_id} ({job.state}): {err}"))
                continue
            if on_done is not None:
                on_done(point)
        return failures

    def run(self, points: Sequence[dict], task: Task, *, workdir: Path, stop_on_error: bool = True,
            on_done: OnDone | None = None) -> list[PointFailure]:
        """Submit the array and, with ``wait``, wait for it (an array already submitted runs to its end, so
        ``stop_on_error`` does not cancel the other points: their failures are all reported)."""
        if not points:
            return []
        jobs = self.submit(points, task, workdir=workdir)
        if not self.wait:
            return []
        return self.collect(jobs, points, on_done=on_done)


# ------------------------------------------------------------------------------------------------ options
def launcher_from_options(launcher: str = "local", *, workers: int | None = None, gpus: str | None = None,
                          workers_per_gpu: int = 1, isolate: bool | None = None, cluster: str = "slurm",
                          partition: str | None = None, gpus_per_node: int = 0, cpus_per_task: int | None = None,
                          time_limit: int = 60, array_parallelism: int = 64, wait: bool = True) -> Launcher:
    """A launcher from command-line options: ``launcher`` is ``local`` or ``submitit``; ``gpus`` is ``all``,
    ``auto``, a count or a comma-separated list of indexes; ``time_limit`` is in minutes."""
    if launcher == "local":
        chosen: Any = gpus
        if gpus is not None and gpus not in ("all", "auto"):
            try:
                chosen = [int(g) for g in gpus.split(",")] if "," in gpus else int(gpus)
            except ValueError:
                raise ValueError(f"--gpus {gpus!r} is not all, auto, a count or a list like 0,1") from None
        return LocalLauncher(workers=workers, gpus=chosen, workers_per_gpu=workers_per_gpu,
                             isolate=True if isolate is None else isolate)
    if launcher == "submitit":
        if cluster not in ("slurm", "local", "debug"):
            raise ValueError(f"--cluster {cluster!r} is not slurm, local or debug")
        return SubmititLauncher(cluster=cluster, partition=partition, gpus_per_node=gpus_per_node,  # type: ignore[arg-type]
                                cpus_per_task=cpus_per_task, timeout_min=time_limit,
                                array_parallelism=array_parallelism, wait=wait)
    raise ValueError(f"--launcher {launcher!r} is not local or submitit")
