"""The ``full`` tier of every trained experiment, shrunk to a few steps and run through the sweep runner: the GPU
check's ``experiments`` section (:mod:`gpu_check`), and on the CPU with ``--tiny`` a test that every ``full``
config is one the code accepts and runs end to end (tuning skipped, one seed, the arms cut to the fewest that
make a comparison).

    python benchmarks/shrunk_experiments.py --tiny           # every experiment, CPU-sized; a row each

What is kept of each ``full`` config: the network (at its width on the GPU; a narrower one with ``tiny``), the
optimiser and schedule, the data's difficulty and the device settings the tier resolves (bf16, channels_last and
the 8-bit data resident on a GPU). What is cut: seeds to 1, the rates to the first, the steps to 2, the data to a
few batches, evaluations and probes to every step, the arms to the first one or two of each list, and with
``tiny`` the input to the smallest the network takes and the width to 1/8.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
import time
import traceback
from typing import Any

import torch

EXPERIMENTS = ("factorization_grid", "dead_units", "smoothness", "residual_speedup", "label_smoothing", "aux_heads",
               "xception_vs_v3", "bn_speedup")
# The smallest input each full config's network takes (for --tiny): Inception-v3 / -ResNet need 75 px.
# The auxiliary heads of Inception-v3 need its 17x17 grid, so 299 px even with --tiny.
_TINY_SIZE = {"dead_units": 75, "residual_speedup": 75, "aux_heads": 299, "xception_vs_v3": 75, "bn_speedup": 32}
# Per experiment, the lists cut to their first entries (how many kept).
_CUT = {"factorization_grid": {"factorized": 1}, "dead_units": {"widths": 2},
        "residual_speedup": {"pairs": 1, "kinds": 2}, "xception_vs_v3": {"arms": 2}, "smoothness": {"arms": 2},
        "aux_heads": {"arms": 2}, "bn_speedup": {"multipliers": 1}}


def shrink(name: str, config: dict[str, Any], *, tiny: bool, device: str) -> dict[str, Any]:
    """``config`` (an experiment's ``full`` tier) cut to a two-step run of one seed at one rate on ``device``."""
    out = dict(config)
    batch = 4 if tiny else min(int(config.get("batch_size", 32)), 32)
    out.update(seeds=1, lrs=tuple(config["lrs"][:1]), steps=2, warmup_steps=0, batch_size=batch, n_train=2 * batch,
               n_val=batch, log_every=1, eval_every=1, device=device, workers=1, isolate=not tiny)
    if not tiny:
        out["threads"] = config.get("threads", 0)
    for key, value in dict(probe_every=1, monitor_every=1, train_eval_images=batch, gap_images=batch, num_points=2,
                           eigen_iters=2).items():
        if key in out:
            out[key] = value
    if "shared_lr" in out:
        out["shared_lr"] = out["lrs"][0]
    for key, keep in _CUT.get(name, {}).items():
        out[key] = tuple(out[key])[:keep]
    if name == "dead_units":
        out["scales"] = (1.0, out["scaled"])
        out["wide"] = out["widths"][-1]  # the narrow net sets the dead-fraction threshold of the wide one
        out["block_counts"] = (1, 1, 1)
    if name == "residual_speedup":
        out["block_counts"] = (1, 1, 1)
    if name == "xception_vs_v3":
        out["middle_blocks"] = 1
    if tiny:
        for key in ("width_mult", "v3_width", "xception_width"):
            if key in out:
                out[key] = 0.125
        if "image_size" in out:
            out["image_size"] = _TINY_SIZE.get(name, min(int(out["image_size"]), 32))
        if name == "factorization_grid":
            out["factorized"] = ((32, 1),)
        out["threads"] = 1
    return out


def shrunk_full_points(device: torch.device, tiny: bool) -> list[dict[str, Any]]:
    """The GPU check's hook: each experiment's shrunk ``full`` config run through its own ``run`` (the sweep
    runner, each point in its own process on a GPU); a row per experiment with its status and time."""
    rows = []
    for name in EXPERIMENTS:
        module = importlib.import_module(f"analysis.experiments.{name}")
        start = time.monotonic()
        try:
            config = shrink(name, module.CONFIGS["full"], tiny=tiny, device=str(device))
            with tempfile.TemporaryDirectory(prefix=f"shrunk-{name}-") as folder:
                results = module.run(config, results_dir=folder, progress=False)
            points = int(results["point_id"].nunique()) if "point_id" in results else len(results)
            rows.append({"model": name, "variant": "full tier, shrunk", "status": "ok", "value": points,
                         "unit": "points run", "seconds": time.monotonic() - start})
        except Exception as err:  # one experiment's failure is its row; the others still run
            rows.append({"model": name, "variant": "full tier, shrunk", "status": "failed",
                         "detail": f"{type(err).__name__}: {err}"[:300], "seconds": time.monotonic() - start})
            traceback.print_exc()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cuda or cpu")
    parser.add_argument("--tiny", action="store_true", help="CPU-sized networks and inputs")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    rows = shrunk_full_points(device, args.tiny)
    for row in rows:
        print(f"{row['model']:>20}  {row['status']:>6}  {row.get('value', '')!s:>4} points  {row['seconds']:6.1f} s  "
              f"{row.get('detail', '')}")
    return 0 if all(row["status"] == "ok" for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
