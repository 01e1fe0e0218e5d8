"""Wall time of rendering the default data set, the synthetic shapes (target: 2,000 images of 32 px in < 5 s).

    python benchmarks/synthetic_data.py                     # 2,000 and 10,000 images at 32 px, one thread
    python benchmarks/synthetic_data.py --n 4000 --size 75 --repeats 5

Each case renders a fresh training split with :func:`analysis.data.make_synthetic` ``--repeats`` times (a new seed
each time, so nothing is cached) and the table gives the median wall time and the images per second. On an idle
core 2,000 images of 32 px take about 0.4 s; 1.8-2.7 s were seen on 2 cores shared by 8 jobs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import pandas as pd
import torch

from analysis.data import make_synthetic
from analysis.tables import render

TARGET_S = 5.0  # for 2,000 images of 32 px


def time_rendering(n: int, size: int, repeats: int) -> dict[str, float | int]:
    """Median wall time over ``repeats`` renderings of ``n`` training images of ``size`` px."""
    times = []
    for seed in range(repeats):
        start = time.perf_counter()
        make_synthetic("train", n, size, seed=seed)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {"images": n, "size": size, "median_s": round(median, 3), "images_per_s": round(n / median)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="*", default=[2000, 10_000], help="numbers of images")
    parser.add_argument("--size", type=int, default=32, help="image size in px (32 to 299)")
    parser.add_argument("--repeats", type=int, default=3, help="renderings per case (median)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    df = pd.DataFrame([time_rendering(n, args.size, args.repeats) for n in args.n])
    per_image = float((df["median_s"] / df["images"]).median())
    notes = [f"Target: 2,000 images of 32 px in < {TARGET_S:g} s; at this rate 2,000 images of {args.size} px take "
             f"{2000 * per_image:.2f} s. {args.threads} CPU thread(s), torch {torch.__version__}."]
    print(render(df, "table", title="Rendering the synthetic shapes (CPU)", notes=notes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
