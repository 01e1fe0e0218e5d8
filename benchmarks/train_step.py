"""Time one training step (forward, cross-entropy, backward, SGD step) of our models against the reference builds
of the same architecture: torchvision's for GoogLeNet and Inception-v3, timm's for the later ones.

    python benchmarks/train_step.py --device cpu --batch 8 --input 160 --repeats 5 --threads 2
    python benchmarks/train_step.py --device cuda --batch 64 --input 299 --repeats 20 --amp bf16 --channels-last
    python benchmarks/train_step.py --device cuda --batch 64 --input 299 --amp bf16 --channels-last --compile

Fair by construction: both models of a pair are built with the same aux setting and without pretrained
weights, then the reference's values are copied into ours by order (our models register their tensors in the
reference's order), so both compute the same function; they get the same batch, the same optimiser and the
same settings. Steps are interleaved, ours and the reference's alternating and the order flipped every repeat
(ABBA), so drift in the machine's speed (other jobs, clocks, caches) falls on both alike; the table shows
the median step time of each and the ratio ours / reference (``ratio``; ``ratio_min`` is the ratio of the
fastest steps, steadier on a shared machine). ``--amp bf16`` autocasts (``fp16`` adds a grad scaler),
``--compile`` runs both under ``torch.compile`` (``--warmup`` steps, 3 by default, absorb the compile and
cuDNN's kernel search). ``loss_diff`` is the difference between the two
models' first-step losses (same weights, same dropout seed): about 0 when the pair computes the same function.

A new pair is one entry of :data:`PAIRS`; a pair whose model is not registered yet is skipped with a note.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from analysis.report.tables import render


def _torchvision(name: str) -> Callable[[int, bool], nn.Module]:
    def build(num_classes: int, aux_logits: bool) -> nn.Module:
        import torchvision

        builder = getattr(torchvision.models, name)
        return builder(weights=None, num_classes=num_classes, aux_logits=aux_logits, init_weights=False)

    return build


def _timm(name: str) -> Callable[[int, bool], nn.Module]:
    def build(num_classes: int, aux_logits: bool) -> nn.Module:
        import timm

        return timm.create_model(name, pretrained=False, num_classes=num_classes)

    return build


@dataclass(frozen=True)
class Pair:
    """One of our registered models and the reference build of the same architecture."""

    model: str  # our registry name
    reference: str  # how the table names the reference
    build_reference: Callable[[int, bool], nn.Module]  # (num_classes, aux_logits) -> module
    has_aux: bool = False  # takes aux_logits (on both sides)
    knobs: dict[str, Any] = field(default_factory=dict)  # extra knobs for ours


PAIRS: dict[str, Pair] = {
    pair.model: pair
    for pair in (
        Pair("googlenet", "torchvision googlenet", _torchvision("googlenet"), has_aux=True),
        Pair("inception_v3", "torchvision inception_v3", _torchvision("inception_v3"), has_aux=True),
        Pair("inception_v4", "timm inception_v4", _timm("inception_v4")),
        Pair("inception_resnet_v2", "timm inception_resnet_v2", _timm("inception_resnet_v2")),
        Pair("xception", "timm legacy_xception", _timm("legacy_xception")),
    )
}


def build_pair(pair: Pair, *, num_classes: int, aux_logits: bool) -> tuple[nn.Module, nn.Module]:
    """Ours and the reference, ours holding the reference's values copied by order."""
    from inception_models import create_model

    aux = aux_logits and pair.has_aux
    knobs = dict(pair.knobs, num_classes=num_classes)
    if pair.has_aux:
        knobs["aux_logits"] = aux
    torch.manual_seed(0)
    reference = pair.build_reference(num_classes, aux)
    ours = create_model(pair.model, **knobs)
    ref_state, our_state = reference.state_dict(), ours.state_dict()
    if [t.shape for t in ref_state.values()] != [t.shape for t in our_state.values()]:
        raise ValueError(f"{pair.model}: its state dict does not pair with {pair.reference}'s by order")
    ours.load_state_dict(dict(zip(our_state, ref_state.values())), strict=True)
    return ours, reference


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


AMP_DTYPES: dict[str | None, torch.dtype | None] = {None: None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Stepper:
    """One model's training step on a fixed batch: forward, loss (main + 0.3 x aux heads), backward, SGD.

    ``amp``: None (fp32), ``"bf16"`` or ``"fp16"`` (with a grad scaler); ``compile``: run the model under
    ``torch.compile`` with ``backend`` (the optimiser step stays eager, as in the trainer)."""

    def __init__(self, model: nn.Module, device: torch.device, *, amp: str | None, channels_last: bool,
                 compile: bool = False, backend: str = "inductor") -> None:
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.to(device, memory_format=memory_format).train()
        self.forward = torch.compile(self.model, backend=backend) if compile else self.model
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=1e-3, momentum=0.9)
        self.device, self.amp_dtype = device, AMP_DTYPES[amp]
        self.scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
            out = self.forward(images)
            if isinstance(out, tuple):  # InceptionOutputs / GoogLeNetOutputs / (logits, aux)
                logits, *aux = [o for o in out if o is not None]
                aux = [a for item in aux for a in (item if isinstance(item, (tuple, list)) else (item,))]
            else:
                logits, aux = out, []
            loss = F.cross_entropy(logits.float(), labels)
            for a in aux:
                loss = loss + 0.3 * F.cross_entropy(a.float(), labels)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        return loss.detach()


CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


def time_pair(ours: Stepper, reference: Stepper, images: torch.Tensor, labels: torch.Tensor, *, warmup: int,
              repeats: int, clock: str = "wall") -> dict[str, float]:
    """Median seconds per step of each, interleaved ABBA; and the first-step loss difference.

    ``clock="cpu"`` times the process's CPU seconds instead of wall seconds: on a CPU shared with other jobs
    (and with ``--threads 1``) it leaves out the time the step waited for a core, the largest noise there.
    """
    now = CLOCKS[clock]
    device = images.device
    losses = []
    for stepper in (ours, reference):
        torch.manual_seed(1)  # the same dropout masks: the same first-step loss when the functions match
        losses.append(float(stepper(images, labels)))
    for _ in range(warmup):
        ours(images, labels)
        reference(images, labels)
    _sync(device)
    times: dict[str, list[float]] = {"ours": [], "reference": []}
    for r in range(repeats):
        order = (("ours", ours), ("reference", reference))
        for key, stepper in order if r % 2 == 0 else order[::-1]:
            _sync(device)
            start = now()
            stepper(images, labels)
            _sync(device)
            times[key].append(now() - start)
    ours_s, ref_s = statistics.median(times["ours"]), statistics.median(times["reference"])
    # The fastest step is what the model costs when nothing else got in the way; on a shared machine its
    # ratio is the steadier of the two.
    ratio_min = min(times["ours"]) / min(times["reference"])
    return {"ours_ms": 1e3 * ours_s, "reference_ms": 1e3 * ref_s, "ratio": ours_s / ref_s, "ratio_min": ratio_min,
            "loss_diff": abs(losses[0] - losses[1])}


def run(*, device: str = "cpu", batch: int = 8, input_size: int = 160, repeats: int = 5, warmup: int = 3,
        amp: str | None = None, channels_last: bool = False, compile: bool = False, models: list[str] | None = None,
        num_classes: int = 1000, aux_logits: bool = False, clock: str = "wall") -> tuple[pd.DataFrame, list[str]]:
    """Time every pair in ``models`` (default: all of :data:`PAIRS`); return the table and its notes."""
    from inception_models import list_models

    dev = torch.device(device)
    if clock not in CLOCKS or (clock == "cpu" and dev.type != "cpu"):
        raise ValueError(f"clock={clock!r}: use 'wall', or 'cpu' with device cpu (a GPU step's time is not CPU time)")
    registered = set(list_models())
    notes = []
    rows = []
    if repeats < 1 or batch < 1:
        raise ValueError(f"repeats and batch must be at least 1, got repeats={repeats}, batch={batch}")
    models = models or list(PAIRS)
    unknown = [name for name in models if name not in PAIRS]
    if unknown:
        raise ValueError(f"no reference pair for {', '.join(map(repr, unknown))}; pairs: {', '.join(PAIRS)}")
    for name in models:
        pair = PAIRS[name]
        if name not in registered:
            note = f"{name}: not registered yet, skipped"
            print(note, flush=True)
            notes.append(note)
            continue
        ours_model, ref_model = build_pair(pair, num_classes=num_classes, aux_logits=aux_logits)
        params = sum(p.numel() for p in ours_model.parameters())
        ours = Stepper(ours_model, dev, amp=amp, channels_last=channels_last, compile=compile)
        reference = Stepper(ref_model, dev, amp=amp, channels_last=channels_last, compile=compile)
        g = torch.Generator().manual_seed(0)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        images = torch.randn(batch, 3, input_size, input_size, generator=g).to(dev, memory_format=memory_format)
        labels = torch.randint(0, num_classes, (batch,), generator=g).to(dev)
        result = time_pair(ours, reference, images, labels, warmup=warmup, repeats=repeats, clock=clock)
        rows.append({"model": name, "reference": pair.reference, "params": params, **result})
        print(f"{name:22s} ours {result['ours_ms']:9.1f} ms  reference {result['reference_ms']:9.1f} ms  "
              f"ratio {result['ratio']:.3f} (fastest steps {result['ratio_min']:.3f})", flush=True)
        del ours, reference, ours_model, ref_model
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    notes.insert(0, (
        f"device {dev}" + (f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else "")
        + f", torch {torch.__version__}, {torch.get_num_threads()} CPU threads; batch {batch}, "
        f"{input_size}x{input_size}, {num_classes} classes, aux heads {'on' if aux_logits else 'off'}, "
        f"{amp + ' autocast' if amp else 'fp32'}, {'channels_last' if channels_last else 'contiguous'}"
        f"{', torch.compile' if compile else ''}; "
        f"{warmup} warm-up + {repeats} timed steps each, interleaved ABBA; median {clock}-clock ms per step; "
        "ratio = ours / reference (medians), ratio_min = the same of the fastest steps"
    ))
    return pd.DataFrame(rows), notes


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--input", type=int, default=160, help="image side in pixels")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per model")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per model after the first (compiles, "
                        "cuDNN's kernel search)")
    parser.add_argument("--amp", choices=("bf16", "fp16"), default=None, help="autocast dtype (fp16: with a grad scaler)")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    parser.add_argument("--models", default=",".join(PAIRS), help=f"comma-separated, of: {', '.join(PAIRS)}")
    parser.add_argument("--aux", action="store_true", help="aux heads on, on both sides (googlenet, inception_v3; "
                        "inception_v3's needs --input 299)")
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument("--clock", choices=tuple(CLOCKS), default="wall",
                        help="wall seconds, or the process's CPU seconds (a shared CPU; use with --threads 1)")
    parser.add_argument("--format", default="table", help="table, markdown, csv, json or latex")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no CUDA device is available; use --device cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        table, notes = run(device=args.device, batch=args.batch, input_size=args.input, repeats=args.repeats,
                           warmup=args.warmup, amp=args.amp, channels_last=args.channels_last, compile=args.compile,
                           models=[m.strip() for m in args.models.split(",") if m.strip()],
                           num_classes=args.num_classes, aux_logits=args.aux, clock=args.clock)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    print(render(table, args.format, title="Training step: ours vs the reference build", notes=notes), end="")
    return table


if __name__ == "__main__":
    main()
