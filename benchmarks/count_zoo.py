"""Wall time of counting every registered zoo model at its native input size on the CPU (target: < 30 s in all).

    python benchmarks/count_zoo.py                    # every model, default knobs, one thread
    python benchmarks/count_zoo.py --threads 2 inception_v3 xception

Each model is built once with the default knobs (``--init`` builds it with its random initialisation instead
of zero weights on the meta device; counting needs shapes only), then counted by
:func:`analysis.instruments.counting.count_model` (one fvcore trace, batch 1, eval mode). The table shows the build and
count times, the parameters, fvcore's MACs and the conv + linear MACs beside the registry's reference figure.
"""

from __future__ import annotations

import argparse
import sys
import time

import pandas as pd
import torch

from analysis.instruments.counting import MAC_CONVENTION, count_model, create_model_for_counting, totals
from analysis.report.tables import render
from inception_models import create_model, list_models, model_info


def count_zoo(names: list[str], *, init: bool = False) -> pd.DataFrame:
    """One row per model: ``model``, ``input``, ``build_s``, ``count_s``, ``params``, ``gmacs``,
    ``conv_linear_gmacs`` and ``ref_gmacs``."""
    rows = []
    for name in names:
        info = model_info(name)
        start = time.perf_counter()
        model = create_model(name) if init else create_model_for_counting(name)
        built = time.perf_counter()
        counts = count_model(model, (3, info.input_size, info.input_size))
        counted = time.perf_counter()
        t = totals(counts)
        rows.append({
            "model": name, "input": info.input_size, "build_s": round(built - start, 2),
            "count_s": round(counted - built, 2), "params": t["params"], "gmacs": round(t["macs"] / 1e9, 3),
            "conv_linear_gmacs": round(t["conv_linear_macs"] / 1e9, 3), "ref_gmacs": info.reference_gmacs,
        })
        del model
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help="model names (default: every registered model)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--init", action="store_true", help="build with the random initialisation")
    args = parser.parse_args(argv)
    names = args.models or list_models()
    unknown = sorted(set(names) - set(list_models()))
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(list_models())}")
    torch.set_num_threads(args.threads)

    df = count_zoo(names, init=args.init)
    total_count, total_build = float(df["count_s"].sum()), float(df["build_s"].sum())
    notes = [f"Counting: {total_count:.1f} s in all (target < 30 s); building: {total_build:.1f} s; "
             f"{args.threads} CPU thread(s), torch {torch.__version__}.",
             "conv_linear_gmacs counts convolutions and matmuls only (the reference figures' convention); "
             "gmacs is fvcore's total, batch norm and adaptive pooling included.",
             MAC_CONVENTION]
    print(render(df, "table", title="Counting the zoo at native input sizes (CPU)", notes=notes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
