"""The GPU check: one command that says whether the GPU path is fast and correct, in under 8 minutes on one H100.

    python benchmarks/gpu_check.py                          # on the GPU: every section, then the results files
    python benchmarks/gpu_check.py --device cpu --tiny      # the same code paths on tiny inputs, < 2 minutes
    python benchmarks/gpu_check.py --experiments my_module:shrunk_full_points    # the experiments' own hook

It prints each section's table as it finishes and writes ``benchmarks/results/gpu-<device>.csv`` and ``.md``
(``--out`` moves them). Sections, each in its own ``try`` with its own time limit (``--timeout``; a failing or
overrunning section is recorded and the check goes on, so one model's failure never loses the rest):

* ``environment``: torch, CUDA, cuDNN, the device, its memory, and the dense peaks looked up for it
  (:mod:`peaks`, with their sources);
* ``throughput``: for every zoo model at its native input, training images/s in fp32 (TF32 convolutions),
  bf16 autocast, bf16 + channels_last and bf16 + channels_last + ``torch.compile``, ours and the reference
  build of the same architecture (torchvision's or timm's, :data:`train_step.PAIRS`) measured interleaved
  (ABBA, :func:`train_step.time_pair`) with ours holding the reference's weights; the ratio ours / reference;
  MFU (3 x forward FLOPs counted by fvcore x batch / step time, over the dense peak of the row's arithmetic);
  our step's peak memory; frames compiled, graph breaks and recompiles in the timed steps (``torch._dynamo``);
* ``sync_audit``: trainer steps under ``torch.cuda.set_sync_debug_mode("warn")`` (on the CPU: a counter of
  host reads), counted per step: only the logged step may wait for the device;
* ``resume``: a run stopped mid-way and resumed equals the uninterrupted run bit for bit, with
  ``deterministic=True`` (and, for the record, without);
* ``determinism``: two steps of every zoo model with ``deterministic=True`` (an op without a deterministic CUDA
  kernel raises here);
* ``experiments``: a hook, ``--experiments MODULE:FUNCTION``, called as ``function(device, tiny)`` and returning
  rows (dicts with ``model``, ``status``, ``value``, ``detail``...). Without it, each trained experiment's ``full``
  config shrunk to two steps of one seed and run through its own ``run`` and the sweep runner, each point in a
  process of its own on a GPU (:mod:`shrunk_experiments`): a row per experiment.

``--tiny`` (for the CPU) keeps every section but shrinks it: the GoogLeNet pair and small_inception at 64 px,
batch 2, a step or two, and ``torch.compile`` with the ``eager`` backend (Dynamo's tracing, graph breaks and
recompiles, without Inductor's code generation).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import os
import platform
import re
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator

# Deterministic cuBLAS needs its workspace fixed before the process first uses cuBLAS (the resume and
# determinism sections); the throughput of convolution networks does not depend on it.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import pandas as pd  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from analysis.report.tables import render  # noqa: E402
from peaks import PEAK_SOURCES, PEAK_TFLOPS, peak_arithmetic, peak_tflops  # noqa: E402
from shrunk_experiments import shrunk_full_points  # noqa: E402
from train_step import PAIRS, Stepper, build_pair, time_pair  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
COLUMNS = ["section", "model", "reference", "variant", "status", "ours_img_per_s", "reference_img_per_s", "ratio",
           "ratio_min", "mfu", "mfu_reference", "peak_arithmetic", "peak_tflops", "peak_mem_gib", "frames_compiled",
           "graph_breaks", "recompiles", "value", "unit", "seconds", "detail"]
# Seconds per section; the whole check also stops starting sections past --budget.
TIMEOUTS = {"environment": 30, "throughput": 180, "compile": 150, "sync_audit": 40, "resume": 40,
            "determinism": 60, "experiments": 180}
VARIANTS = {  # name: (amp, channels_last, compile)
    "fp32": (None, False, False),
    "bf16": ("bf16", False, False),
    "bf16+channels_last": ("bf16", True, False),
    "bf16+channels_last+compile": ("bf16", True, True),
}


class SectionTimeout(Exception):
    pass


class Check:
    """The check's state: where it runs, how big, its rows, its time limits."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.device = torch.device(args.device if args.device != "auto" else
                                   "cuda" if torch.cuda.is_available() else "cpu")
        self.tiny = args.tiny
        self.rows: list[dict[str, Any]] = []
        self.deadline = time.monotonic() + args.budget
        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"
        self.device_name = name
        self.slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")

    def add(self, section: str, **row: Any) -> dict[str, Any]:
        row = {"section": section, "status": "ok", **row}
        self.rows.append(row)
        return row

    def spent(self, name: str) -> bool:
        """Whether the --budget is spent: then section ``name`` is recorded as skipped and not run."""
        if self.deadline - time.monotonic() > 1:
            return False
        self.add(name, status="skipped", detail=f"no time left in the --budget of {self.args.budget} s")
        print(f"[{name}] skipped: budget spent", flush=True)
        return True

    @contextlib.contextmanager
    def section(self, name: str) -> Iterator[None]:
        """Run the block within its time limit; a failure or timeout becomes a row, and the check goes on. With
        --tiny (a CPU, often a shared one) the limits are four times longer: there it checks code paths, not speed."""
        left = self.deadline - time.monotonic()
        limit = min(self.args.timeout or TIMEOUTS[name] * (4 if self.tiny else 1), left)
        start, before = time.monotonic(), len(self.rows)

        def expire(signum: int, frame: Any) -> None:
            raise SectionTimeout(f"over its {limit:.0f} s")

        previous = signal.signal(signal.SIGALRM, expire)
        signal.setitimer(signal.ITIMER_REAL, limit)
        print(f"[{name}] up to {limit:.0f} s", flush=True)
        try:
            yield
        except SectionTimeout as err:
            self.add(name, status="timeout", detail=str(err))
        except Exception as err:  # the section fails, the check goes on
            self.add(name, status="failed", detail=_error(err))
            traceback.print_exc()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        seconds = time.monotonic() - start
        done = [r for r in self.rows[before:]]
        for row in done:
            row.setdefault("seconds", seconds)
        print(render(pd.DataFrame(done).reindex(columns=[c for c in COLUMNS if any(c in r for r in done)]),
                     "table", title=f"{name} ({seconds:.0f} s)"), flush=True)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def _error(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:300] if text else ''}"


# --------------------------------------------------------------------------------------------- sections
def environment(check: Check) -> None:
    dev = check.device
    info: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda,
                            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
                            "python": platform.python_version(), "device": check.device_name,
                            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
                            "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
                            "cublas_workspace": os.environ.get("CUBLAS_WORKSPACE_CONFIG")}
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        info.update(capability=f"{props.major}.{props.minor}", memory_gib=round(props.total_memory / 2**30, 1),
                    multiprocessors=props.multi_processor_count, driver=_driver(),
                    bf16=torch.cuda.is_bf16_supported())
    info["peaks_tflops"] = {a: peak_tflops(check.device_name, a) for a in ("fp32", "tf32", "bf16", "fp16")}
    check.add("environment", value=check.device_name, detail=json.dumps(info, default=str))
    print(json.dumps(info, indent=2, default=str), flush=True)


def _driver() -> str | None:
    with contextlib.suppress(Exception):
        import subprocess

        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip().splitlines()[0]
    return None


def _models(check: Check) -> list[str]:
    from inception_models import list_models

    if check.args.models:
        return [m.strip() for m in check.args.models.split(",") if m.strip()]
    if check.tiny:
        return ["googlenet", "small_inception"]
    return [m for m in list_models() if m != "small_inception"]


def _input_size(check: Check, name: str) -> int:
    from inception_models import model_info

    info = model_info(name)
    return max(64, info.min_input_size) if check.tiny else info.input_size


def _batch(check: Check) -> int:
    return check.args.batch or (2 if check.tiny else 64)


def _build(check: Check, name: str) -> tuple[nn.Module, nn.Module | None, str]:
    """Ours and the reference holding the same weights, or ours alone for a model without a reference."""
    from inception_models import create_model, model_info

    if name in PAIRS:
        ours, ref = build_pair(PAIRS[name], num_classes=1000, aux_logits=False)
        return ours, ref, PAIRS[name].reference
    knobs: dict[str, Any] = {"num_classes": 1000}
    if "aux_logits" in model_info(name).knobs:
        knobs["aux_logits"] = False
    torch.manual_seed(0)
    return create_model(name, **knobs), None, ""


def _forward_macs(model: nn.Module, size: int) -> float:
    from analysis.instruments.counting import count_model, totals

    return float(totals(count_model(model, (3, size, size), device="cpu"))["macs"])


def _static_bytes(stepper: Stepper) -> int:
    tensors = [p for p in stepper.model.parameters()] + [p.grad for p in stepper.model.parameters() if p.grad is not None]
    tensors += [t for state in stepper.optimizer.state.values() for t in state.values() if isinstance(t, torch.Tensor)]
    return sum(t.numel() * t.element_size() for t in tensors)


def _peak_mem_gib(check: Check, stepper: Stepper, other: Stepper | None, images: torch.Tensor,
                  labels: torch.Tensor) -> float:
    """Peak memory of one step of ``stepper``, the other model's weights, gradients and optimiser state left out."""
    if check.device.type != "cuda":
        return math.nan
    check.sync()
    torch.cuda.reset_peak_memory_stats(check.device)
    stepper(images, labels)
    check.sync()
    other_bytes = _static_bytes(other) if other is not None else 0
    return (torch.cuda.max_memory_allocated(check.device) - other_bytes) / 2**30


class DynamoCounts:
    """Frames Dynamo compiled, its graph breaks and its recompilations, from ``torch._dynamo``'s counters."""

    def __init__(self) -> None:
        self.recompiles = 0
        with contextlib.suppress(Exception):
            from torch._dynamo import convert_frame

            original = convert_frame.is_recompilation

            def counted(*args: Any, **kwargs: Any) -> bool:
                again = original(*args, **kwargs)
                self.recompiles += bool(again)
                return again

            convert_frame.is_recompilation = counted

    @staticmethod
    def snapshot() -> tuple[int, int]:
        from torch._dynamo.utils import counters

        return int(counters["frames"]["total"]), int(sum(counters["graph_break"].values()))


def throughput(check: Check, *, compiled: bool) -> None:
    """The eager variants of every model (``compiled=False``), or the compiled variant (``compiled=True``)."""
    variants = {k: v for k, v in VARIANTS.items() if v[2] == compiled}
    backend = "eager" if check.tiny else check.args.compile_backend
    dynamo = DynamoCounts() if compiled else None
    torch.backends.cudnn.benchmark = check.device.type == "cuda"  # fixed shapes: cuDNN picks its fastest kernels
    for name in _models(check):
        size, batch = _input_size(check, name), _batch(check)
        try:
            ours_model, ref_model, ref_name = _build(check, name)
            macs = _forward_macs(ours_model, size)
        except Exception as err:
            check.add("throughput", model=name, status="failed", detail=_error(err))
            continue
        for variant, (amp, channels_last, compile_) in variants.items():
            start = time.monotonic()
            row = check.add("throughput", model=name, reference=ref_name, variant=variant, status="running")
            try:
                _measure(check, row, ours_model, ref_model, amp, channels_last, compile_, backend, size, batch, macs,
                         dynamo)
                row["status"] = "ok"
            except SectionTimeout:
                row.update(status="timeout", detail="the section's time ran out during this row")
                raise
            except Exception as err:  # this model and variant fail; the others go on
                row.update(status="failed", detail=_error(err))
            finally:
                row["seconds"] = time.monotonic() - start
                if check.device.type == "cuda":
                    torch.cuda.empty_cache()
            print(f"  {name:22s} {variant:28s} {row.get('ours_img_per_s', math.nan):9.1f} img/s "
                  f"ratio {row.get('ratio', math.nan):.3f} MFU {row.get('mfu', math.nan):.3f} {row['status']}",
                  flush=True)


def _measure(check: Check, row: dict[str, Any], ours_model: nn.Module, ref_model: nn.Module | None, amp: str | None,
             channels_last: bool, compile_: bool, backend: str, size: int, batch: int, macs: float,
             dynamo: DynamoCounts | None) -> None:
    import copy

    dev = check.device
    ours = Stepper(copy.deepcopy(ours_model), dev, amp=amp, channels_last=channels_last, compile=compile_,
                   backend=backend)
    reference = (Stepper(copy.deepcopy(ref_model), dev, amp=amp, channels_last=channels_last, compile=compile_,
                         backend=backend) if ref_model is not None else ours)
    g = torch.Generator().manual_seed(0)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    images = torch.randn(batch, 3, size, size, generator=g).to(dev, memory_format=memory_format)
    labels = torch.randint(0, 1000, (batch,), generator=g).to(dev)
    warmup = 1 if check.tiny else check.args.warmup
    repeats = 2 if check.tiny else check.args.repeats
    if dynamo is not None:
        for stepper in {id(ours): ours, id(reference): reference}.values():  # compile before timing
            for _ in range(2):
                stepper(images, labels)
        frames_before, _ = dynamo.snapshot()
        recompiles_before = dynamo.recompiles
    timed = time_pair(ours, reference, images, labels, warmup=warmup, repeats=repeats)
    if dynamo is not None:
        frames, breaks = dynamo.snapshot()
        row.update(frames_compiled=frames, graph_breaks=breaks, recompiles=dynamo.recompiles - recompiles_before,
                   detail=f"frames compiled in the timed steps: {frames - frames_before}")
    arithmetic = peak_arithmetic(amp, cudnn_tf32=torch.backends.cudnn.allow_tf32)
    peak = peak_tflops(check.device_name, arithmetic) if dev.type == "cuda" else math.nan
    flops_per_step = 3 * 2 * macs * batch  # forward FLOPs = 2 x MACs; a training step = 3 x forward
    row.update(ours_img_per_s=batch / (timed["ours_ms"] / 1e3), ratio=timed["ratio"], ratio_min=timed["ratio_min"],
               peak_arithmetic=arithmetic, peak_tflops=peak,
               mfu=flops_per_step / (timed["ours_ms"] / 1e3) / (peak * 1e12),
               peak_mem_gib=_peak_mem_gib(check, ours, reference if reference is not ours else None, images, labels))
    if ref_model is not None:
        row.update(reference_img_per_s=batch / (timed["reference_ms"] / 1e3),
                   mfu_reference=flops_per_step / (timed["reference_ms"] / 1e3) / (peak * 1e12))
    else:
        row.update(ratio=math.nan, ratio_min=math.nan)


def _train_data(check: Check, n: int, size: int) -> tuple[Any, Any]:
    from analysis.data.synthetic import SyntheticShapes

    return (SyntheticShapes(n, size, seed=0, split="train", cache=True),
            SyntheticShapes(max(n // 4, 8), size, seed=0, split="val", cache=True))


def sync_audit(check: Check) -> None:
    """Trainer steps of Inception-v3's recipe (RMSProp, clipping, label smoothing, aux heads) on 8-bit images
    resident on the device, with the full tier's automatic settings: the waits for the device per step."""
    from analysis.training.audit import audit_steps
    from analysis.training.config import TrainConfig
    from analysis.training.trainer import Trainer, seed_everything
    from inception_models import create_model

    steps = 6
    size, width, batch = (64, 0.125, 4) if check.tiny else (299, 1.0, 32)
    train, _ = _train_data(check, batch * steps, size)
    seed_everything(0)
    name = "googlenet" if check.tiny else "inception_v3"
    knobs = dict(num_classes=10, aux_logits=True, width_mult=width)
    config = TrainConfig.preset("inception_v3", steps=steps, batch_size=batch, device=str(check.device),
                                log_every=steps, progress=False)
    with Trainer(create_model(name, **knobs), config, train) as trainer, audit_steps(trainer) as per_step:
        trainer.fit()
    quiet = {s: n for s, n in per_step.items() if s != steps}
    counter = "torch.cuda.set_sync_debug_mode('warn') warnings" if check.device.type == "cuda" else "host reads"
    check.add("sync_audit", model=name, variant=f"{config.resolved(check.device.type).amp or 'fp32'}",
              status="ok" if not any(quiet.values()) else "failed", value=sum(quiet.values()),
              unit="waits on unlogged steps",
              detail=f"{counter} per step {per_step} (step {steps} logs); data on device, batch {batch}, {size} px")


def _run(check: Check, folder: Path, *, deterministic: bool, stop_at: int | None, resume: bool) -> Any:
    from analysis.callbacks import Callback
    from analysis.training.config import TrainConfig
    from analysis.training.trainer import Trainer, seed_everything
    from inception_models import create_model

    class StopAt(Callback):
        def on_step_end(self, trainer: Any, batch: Any, loss: Any) -> None:
            if stop_at is not None and trainer.step == stop_at:
                trainer.request_stop("the resume check")

    train, val = _train_data(check, 40, 64)
    seed_everything(1234 if resume else 0)  # a resumed run must not depend on its fresh initialisation
    model = create_model("googlenet", num_classes=10, aux_logits=True, width_mult=0.125)
    config = TrainConfig.preset("inception_v3", steps=12, batch_size=8, device=str(check.device), seed=11,
                                log_every=1, eval_every=5, checkpoint_every=3, progress=False, out_dir=str(folder),
                                resume=resume, deterministic=deterministic)
    with Trainer(model, config, train, val, callbacks=[StopAt()]) as trainer:
        trainer.fit()
    return folder


def _same_run(a: Path, b: Path) -> tuple[bool, float]:
    from analysis.training.checkpoint import load_checkpoint, read_metrics

    log_a, log_b = read_metrics(a).drop(columns="time"), read_metrics(b).drop(columns="time")
    same_log = log_a.equals(log_b)
    sa, sb = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    diff = max(float((sa[k].double() - sb[k].double()).abs().max()) if sa[k].numel() else 0.0 for k in sa)
    return same_log and diff == 0.0, diff


def resume(check: Check) -> None:
    import tempfile

    for deterministic in (True, False):
        with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
            whole = _run(check, Path(tmp, "whole"), deterministic=deterministic, stop_at=None, resume=False)
            part = Path(tmp, "part")
            _run(check, part, deterministic=deterministic, stop_at=7, resume=False)
            _run(check, part, deterministic=deterministic, stop_at=None, resume=True)
            exact, diff = _same_run(whole, part)
        row = dict(model="googlenet (1/8 width)", variant="deterministic" if deterministic else "default",
                   value="bit-exact" if exact else f"max |diff| {diff:.3g}", unit="stopped at 7, resumed, vs 12 steps",
                   detail="metrics log and every parameter and buffer compared")
        if deterministic:
            check.add("resume", **row, status="ok" if exact else "failed")
        else:  # for the record: without the flag a GPU need not repeat itself
            check.add("resume_nondeterministic", **row)


def determinism(check: Check) -> None:
    from analysis.training.config import TrainConfig
    from analysis.training.trainer import Trainer, seed_everything
    from inception_models import create_model, list_models, model_info

    for name in list_models():
        info = model_info(name)
        knobs: dict[str, Any] = {"num_classes": 10}
        # Inception-v3's aux head needs 299 px: on, at 299, on the GPU; off, at its minimum, with --tiny.
        aux = not (check.tiny and name.startswith("inception_v3"))
        knobs.update({k: v for k, v in (("aux_logits", aux), ("width_mult", 0.25)) if k in info.knobs})
        size = (info.input_size if name.startswith("inception_v3") and aux
                else max(info.min_input_size, 64 if check.tiny else 96))
        start = time.monotonic()
        try:
            seed_everything(0)
            data = (torch.randn(8, 3, size, size), torch.arange(8) % 10)
            config = TrainConfig(steps=2, batch_size=4, device=str(check.device), progress=False, deterministic=True,
                                 label_smoothing=0.1)
            with Trainer(create_model(name, **knobs), config, data) as trainer:
                trainer.fit()
            check.add("determinism", model=name, value="ok", detail=f"{size} px, aux heads where the model has them",
                      seconds=time.monotonic() - start)
        except SectionTimeout:
            raise
        except Exception as err:
            check.add("determinism", model=name, status="failed", detail=_error(err), seconds=time.monotonic() - start)


def experiments(check: Check) -> None:
    hook: Callable[[torch.device, bool], list[dict[str, Any]]] = shrunk_full_points
    if check.args.experiments:
        module, _, function = check.args.experiments.partition(":")
        hook = getattr(importlib.import_module(module), function)
    for row in hook(check.device, check.tiny):
        check.add("experiments", **row)


# -------------------------------------------------------------------------------------------- the report
def write(check: Check) -> tuple[Path, Path]:
    table = pd.DataFrame(check.rows).reindex(columns=COLUMNS)
    out = Path(check.args.out)
    out.mkdir(parents=True, exist_ok=True)
    csv, md = out / f"gpu-{check.slug}.csv", out / f"gpu-{check.slug}.md"
    from analysis.io import atomic_write_text

    atomic_write_text(csv, table.to_csv(index=False))
    parts = [f"# GPU check: {check.device_name}\n",
             f"`python benchmarks/gpu_check.py {' '.join(sys.argv[1:])}`, {time.strftime('%Y-%m-%d %H:%M')}, "
             f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}.\n"]
    notes = {
        "throughput": [
            "img/s: median of interleaved (ABBA) timed steps, ours and the reference holding the same weights; "
            "ratio = ours / reference step time (> 1: ours is slower)",
            "MFU = 3 x forward FLOPs (2 x fvcore MACs) x batch / step time / the dense peak of the row's arithmetic "
            "(fp32 rows: TF32 convolutions, cuDNN's default)",
            "peak_mem_gib: our step's peak allocated memory, the reference's weights, gradients and optimiser state "
            "left out; frames_compiled / graph_breaks: torch._dynamo counters (cumulative); recompiles: in the "
            "timed steps"],
        "environment": [f"dense peaks (TFLOP/s) by name fragment: "
                        + "; ".join(f"{k}: " + ", ".join(f"{a} {v:g}" for a, v in p.items()) for k, p in PEAK_TFLOPS),
                        f"sources: {PEAK_SOURCES}"],
    }
    for section, rows in table.groupby("section", sort=False):
        shown = rows.dropna(axis=1, how="all").drop(columns="section")
        parts.append(render(shown, "markdown", title=section, notes=notes.get(section, [])))
    if "MFU" not in "".join(parts):
        parts.append("MFU: not measured in this run (no throughput rows).\n")
    atomic_write_text(md, "\n".join(parts))
    return csv, md


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cuda, cuda:N or cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny inputs, a step or two: the CPU mode (< 2 minutes)")
    parser.add_argument("--models", default=None, help="comma-separated registry names (default: the whole zoo)")
    parser.add_argument("--batch", type=int, default=None, help="images per step (default 64; --tiny 2)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per model and variant")
    parser.add_argument("--repeats", type=int, default=10, help="timed steps per model and variant")
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per section (default: per section)")
    parser.add_argument("--budget", type=float, default=None, help="seconds for the whole check (default 450; "
                        "--tiny 900); sections that would start past it are skipped")
    parser.add_argument("--experiments", default=None, help="MODULE:FUNCTION, called as FUNCTION(device, tiny) -> rows")
    parser.add_argument("--out", default=str(RESULTS), help="folder of gpu-<device>.csv and .md")
    args = parser.parse_args(argv)
    if args.budget is None:
        args.budget = 900.0 if args.tiny else 450.0
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA device is available; use --device cpu --tiny", file=sys.stderr)
        return 2
    if args.tiny:
        torch.set_num_threads(min(torch.get_num_threads(), 2))
    check = Check(args)
    print(f"GPU check on {check.device_name} ({check.device}), budget {args.budget:.0f} s", flush=True)
    plan: list[tuple[str, Callable[[], None]]] = [
        ("environment", lambda: environment(check)),
        ("throughput", lambda: throughput(check, compiled=False)),
        ("compile", lambda: throughput(check, compiled=True)),
        ("sync_audit", lambda: sync_audit(check)),
        ("resume", lambda: resume(check)),
        ("determinism", lambda: determinism(check)),
        ("experiments", lambda: experiments(check)),
    ]
    for name, run in plan:
        if check.spent(name):
            continue
        with check.section(name):
            run()
    csv, md = write(check)
    failed = [r for r in check.rows if r["status"] not in ("ok", "skipped")]
    print(f"\nwrote {csv} and {md}; {len(failed)} row(s) not ok", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
