"""What made a report: the tier, the seed, the code (git commit, clean or not), the package versions, the
machine (CPU model and its vector extensions, threads, GPU) and the wall time of each section.

It is written beside the report as ``provenance.json`` and summarised at the top of ``index.md``: the same
command and seed give different trained numbers on another CPU (other kernels, other rounding, other
trajectories), so a reader needs to know which machine a figure came from.
"""

from __future__ import annotations

import datetime as dt
import json
import platform
import subprocess
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from analysis.training.sweep import read_results

__all__ = ["PACKAGES", "PROVENANCE_FILE", "Provenance", "collect", "read_tier", "training_cost"]

PROVENANCE_FILE = "provenance.json"
PACKAGES = ("inception-lab", "torch", "torchvision", "fvcore", "timm", "numpy", "scipy", "pandas")


@dataclass
class Provenance:
    """One report's provenance: ``sections`` maps each section key to the wall time (s) of building it now;
    ``training`` maps each trained section to its runs' count and CPU seconds (``{"runs": n, "cpu_s": s}``),
    spent when the runs were computed, which may be long before a re-rendering that reuses them."""

    tier: str
    seed: int
    command: str
    commit: str
    dirty: bool | None
    packages: dict[str, str]
    cpu: str
    cpu_flags: str
    threads: int
    gpu: str
    written: str
    sections: dict[str, float] = field(default_factory=dict)
    training: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    def summary(self) -> str:
        """Two Markdown lines for the top of ``index.md``."""
        state = "" if self.dirty is None else (" (uncommitted changes)" if self.dirty else " (clean)")
        versions = ", ".join(f"{name} {version}" for name, version in self.packages.items())
        total = sum(self.sections.values())
        runs = sum(int(t["runs"]) for t in self.training.values())
        trained = (f"; its experiments' results hold {runs:,} training runs that took "
                   f"{sum(t['cpu_s'] for t in self.training.values()):,.0f} CPU-s to compute") if runs else ""
        return (f"Code: commit `{self.commit}`{state}; {versions}.  \n"
                f"Machine: {self.cpu} ({self.cpu_flags}), {self.threads} torch threads, GPU: {self.gpu}. "
                f"Written {self.written}; building it took {_duration(total)} of wall time{trained}.")

    def per_section(self) -> str:
        """One Markdown line: each section's build time now and, for a trained one, its runs' CPU time."""
        parts = []
        for key, wall in self.sections.items():
            cost = self.training.get(key)
            runs = f" (its results: {int(cost['runs'])} runs, {cost['cpu_s']:,.0f} CPU-s of training)" if cost else ""
            parts.append(f"`{key}` {wall:.1f} s{runs}")
        return "Per section, wall time to build it now: " + "; ".join(parts) + "." if parts else ""


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s"


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                              cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _cpu() -> tuple[str, str]:
    """The CPU's model name and the vector extensions that decide which kernels torch runs."""
    model, flags = platform.processor() or platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    vector = [name for name in ("avx2", "avx512f", "amx_tile") if name in flags]
    return model, "+".join(vector) if vector else "no AVX2"


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def training_cost(results: str | Path) -> dict[str, float]:
    """The number of runs in an experiment's results file and their CPU seconds (each run's largest logged
    ``cpu_s``); zeros when the file is absent or logs no CPU time."""
    frame = read_results(results)
    if frame.empty or "point_id" not in frame or "cpu_s" not in frame:
        return {"runs": 0, "cpu_s": 0.0}
    per_run = pd.to_numeric(frame["cpu_s"], errors="coerce").groupby(frame["point_id"]).max()
    return {"runs": int(per_run.size), "cpu_s": round(float(per_run.fillna(0.0).sum()), 1)}


def collect(tier: str, seed: int, command: str, output: str | Path | None = None) -> Provenance:
    """The provenance of a report being written now (sections are filled in as they finish). ``output``, the
    report's folder, is left out of the "uncommitted changes" check: re-rendering a committed report changes it,
    not the code that made it."""
    commit = _git("rev-parse", "--short=12", "HEAD")
    exclude = []
    if output is not None and commit:
        top = _git("rev-parse", "--show-toplevel")
        try:
            inside = Path(output).resolve().relative_to(Path(top).resolve()).as_posix() if top else None
        except ValueError:  # the output folder is outside the checkout
            inside = None
        exclude = [f":(top,exclude){inside}"] if inside else []
    status = _git("status", "--porcelain", "--untracked-files=no", "--", ":/", *exclude) if commit else None
    cpu, flags = _cpu()
    packages = {name: version for name in PACKAGES if (version := _version(name)) is not None}
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return Provenance(tier=tier, seed=seed, command=command, commit=commit or "unknown (not a git checkout)",
                      dirty=None if status is None else bool(status), packages=packages, cpu=cpu, cpu_flags=flags,
                      threads=torch.get_num_threads(), gpu=gpu,
                      written=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))


def read_tier(folder: str | Path) -> str | None:
    """The tier of the report in ``folder`` (None when it holds no report with a provenance file)."""
    path = Path(folder) / PROVENANCE_FILE
    if not path.is_file():
        return None
    try:
        return str(json.loads(path.read_text(encoding="utf-8"))["tier"])
    except (ValueError, KeyError, TypeError):
        return None

