"""Training throughput (images/s) of our Inception-v3 against timm's, with the same settings.

    python benchmarks/throughput.py --device cpu --batch-size 4 --image-size 128 --steps 3      # a CPU smoke run
    python benchmarks/throughput.py --device cuda --batch-size 128 --image-size 299 --compile   # on a GPU

One training step is forward, cross-entropy, backward and an SGD step on random images, as the trainer runs it.
Variants: eager fp32; AMP (bf16 on the CPU, fp16 with a GradScaler or bf16 on CUDA) without and with
channels_last (what each buys on its own); AMP + channels_last under ``torch.compile`` with ``--compile``.
Both models are built without auxiliary heads (timm's default), so they compute the same network. On CUDA
the table also shows the achieved TFLOP/s, counted as MACs x 2 (FLOPs per MAC) x 3 (forward plus a backward
of about twice its cost) per image, MACs counted by fvcore (:func:`analysis.count_model`) at the chosen image
size, and its share (``peak_share``) of the GPU's nominal dense peak in the arithmetic the row ran in
(:mod:`peaks`: bf16 or fp16 for AMP rows, TF32 for fp32 rows, whose convolutions cuDNN runs in TF32 by
default); ``--peak-tflops`` overrides the peak of every row.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any, Callable

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from analysis.report.tables import render
from peaks import PEAK_SOURCES, peak_arithmetic, peak_tflops

def build_ours(num_classes: int) -> tuple[nn.Module | None, str]:
    from inception_models import create_model, list_models, model_info

    if "inception_v3" not in list_models():
        return None, "ours: inception_v3 is not registered yet (skipped)"
    knobs: dict[str, Any] = {"num_classes": num_classes}
    # timm's defaults: no aux head, no dropout before the classifier
    for knob, value in (("aux_logits", False), ("drop_rate", 0.0)):
        if knob in model_info("inception_v3").knobs:
            knobs[knob] = value
    return create_model("inception_v3", **knobs), ""


def build_timm(num_classes: int) -> tuple[nn.Module | None, str]:
    try:
        import timm
    except ImportError:
        return None, "timm is not installed (skipped)"
    return timm.create_model("inception_v3", pretrained=False, num_classes=num_classes), ""


def count_macs(model: nn.Module, image_size: int) -> float:
    """Multiply-accumulates of one image's forward pass, counted by fvcore through :func:`analysis.count_model`."""
    from analysis.instruments.counting import count_model, totals

    return float(totals(count_model(model, (3, image_size, image_size)))["macs"])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def measure(model: nn.Module, device: torch.device, *, batch_size: int, image_size: int, num_classes: int,
            steps: int, warmup: int, amp: torch.dtype | None, channels_last: bool, compile: bool) -> dict[str, float]:
    """Images/s of ``steps`` timed training steps after ``warmup`` untimed ones (the first compiles)."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scaler = torch.amp.GradScaler(device.type) if amp == torch.float16 else None
    step_model: Callable[..., Any] = torch.compile(model) if compile else model
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch_size, 3, image_size, image_size, generator=g).to(device, memory_format=memory_format)
    labels = torch.randint(0, num_classes, (batch_size,), generator=g).to(device)

    def one_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            out = step_model(images)
            logits = out[0] if isinstance(out, tuple) else out
            loss = F.cross_entropy(logits.float(), labels)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()

    for _ in range(warmup):
        one_step()
    _sync(device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        one_step()
        _sync(device)
        times.append(time.perf_counter() - start)
    total = sum(times)
    return {"img_per_s": batch_size * steps / total, "ms_per_step": 1000 * statistics.median(times)}


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 4 on the CPU, 128 on a GPU")
    parser.add_argument("--image-size", type=int, default=None, help="default: 128 on the CPU, 299 on a GPU")
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 3 on the CPU, 30 on a GPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps (default: 1 on the CPU, 5 on a GPU)")
    parser.add_argument("--amp-dtype", choices=("bf16", "fp16"), default=None,
                        help="AMP dtype on CUDA (default bf16; the CPU always uses bf16)")
    parser.add_argument("--compile", action="store_true", help="add the torch.compile variant")
    parser.add_argument("--repeats", type=int, default=1, help="measure each case this often, keep the best")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads on the CPU")
    parser.add_argument("--peak-tflops", type=float, default=None, help="override the GPU's nominal peak (every row)")
    parser.add_argument("--models", default="ours,timm", help="comma-separated: ours, timm")
    parser.add_argument("--format", default="table", help="table, markdown, csv, json or latex")
    args = parser.parse_args(argv)

    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else
                              "mps" if torch.backends.mps.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    gpu = device.type != "cpu"
    batch_size = args.batch_size or (128 if gpu else 4)
    image_size = args.image_size or (299 if gpu else 128)
    steps = args.steps or (30 if gpu else 3)
    warmup = args.warmup if args.warmup is not None else (5 if gpu else 1)
    if args.threads:
        torch.set_num_threads(args.threads)
    amp = torch.bfloat16 if device.type == "cpu" or args.amp_dtype != "fp16" else torch.float16
    amp_name = {torch.bfloat16: "bf16", torch.float16: "fp16"}[amp]

    variants: list[tuple[str, dict[str, Any]]] = [
        ("eager fp32", dict(amp=None, channels_last=False, compile=False)),
        (f"AMP {amp_name}", dict(amp=amp, channels_last=False, compile=False)),
        (f"AMP {amp_name} + channels_last", dict(amp=amp, channels_last=True, compile=False)),
    ]
    if args.compile:
        variants.append((f"AMP {amp_name} + channels_last + compile", dict(amp=amp, channels_last=True, compile=True)))

    builders = {"ours": build_ours, "timm": build_timm}
    notes = [f"device {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
             + f", torch {torch.__version__}, {torch.get_num_threads()} CPU threads; batch {batch_size}, "
             f"{image_size}x{image_size} images, {args.num_classes} classes, {warmup} warm-up + {steps} timed steps, best of {args.repeats}"]
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [n for n in names if n not in builders]
    if unknown:
        raise SystemExit(f"error: unknown model(s) {unknown}; use ours and/or timm")
    counted: dict[str, tuple[int, float]] = {}
    for name in names:
        model, note = builders[name](args.num_classes)
        if model is None:
            notes.append(note)
        else:
            counted[name] = (sum(p.numel() for p in model.parameters()), count_macs(model, image_size))
    # Ours and timm run back to back within each variant and repeat, so a busy machine hits both alike.
    best: dict[tuple[str, str], dict[str, float]] = {}
    failed: set[tuple[str, str]] = set()
    for variant, settings in variants:
        for _ in range(args.repeats):
            for name in counted:
                if (name, variant) in failed:
                    continue
                torch.manual_seed(0)
                fresh, _ = builders[name](args.num_classes)
                try:
                    result = measure(fresh, device, batch_size=batch_size, image_size=image_size,
                                     num_classes=args.num_classes, steps=steps, warmup=warmup, **settings)
                except Exception as err:  # e.g. torch.compile without a working compiler
                    failed.add((name, variant))
                    notes.append(f"{name} / {variant} failed: {type(err).__name__}: "
                                 f"{str(err).splitlines()[0][:160] if str(err) else ''}")
                    continue
                print(f"{name:5s} {variant:45s} {result['img_per_s']:9.2f} img/s", file=sys.stderr, flush=True)
                if result["img_per_s"] > best.get((name, variant), {}).get("img_per_s", 0.0):
                    best[(name, variant)] = result
                del fresh
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    rows = []
    gpu_name = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    amp_of = {variant: settings["amp"] for variant, settings in variants}
    for name, (params, macs) in counted.items():
        for variant, _ in variants:
            if (name, variant) not in best:
                continue
            result = best[(name, variant)]
            row = {"model": name, "variant": variant, "params": params, "gmacs_per_image": macs / 1e9, **result}
            if device.type == "cuda":
                row["tflops"] = result["img_per_s"] * macs * 2 * 3 / 1e12
                arithmetic = peak_arithmetic({torch.bfloat16: "bf16", torch.float16: "fp16"}.get(amp_of[variant]),
                                             cudnn_tf32=torch.backends.cudnn.allow_tf32)
                row["peak_arithmetic"] = arithmetic
                row["peak_tflops"] = args.peak_tflops or peak_tflops(gpu_name, arithmetic)
                row["peak_share"] = row["tflops"] / row["peak_tflops"]
            rows.append(row)

    table = pd.DataFrame(rows)
    if device.type == "cuda" and not table.empty:
        if args.peak_tflops:
            notes.append(f"peak given: {args.peak_tflops:g} TFLOP/s for every row")
        elif table["peak_tflops"].isna().all():
            notes.append(f"unknown GPU {gpu_name!r}: pass --peak-tflops to get the share of peak")
        else:
            notes.append(f"peaks: nominal dense TFLOP/s of {gpu_name} in each row's arithmetic (peak_arithmetic; "
                         f"fp32 rows: TF32 convolutions); sources: {PEAK_SOURCES}")
        notes.append("TFLOP/s = img/s x GMACs x 2 x 3 (fwd + bwd)")
    notes.append("MACs counted by fvcore (one fused multiply-add = one MAC) for one image in eval mode, no aux head")
    print(render(table, args.format, title="Training throughput, Inception-v3: ours vs timm", notes=notes), end="")

    if not table.empty and {"ours", "timm"} <= set(table["model"]):
        wide = table.pivot(index="variant", columns="model", values="img_per_s").dropna().reset_index()
        wide["ours_over_timm"] = wide["ours"] / wide["timm"]
        wide = wide.rename(columns={"ours": "ours_img_per_s", "timm": "timm_img_per_s"})
        wide = wide.set_index("variant").loc[[v for v, _ in variants if v in set(wide["variant"])]].reset_index()
        print()
        print(render(wide, args.format, title="Ratio ours / timm (images/s)"), end="")
    return table


if __name__ == "__main__":
    main()
