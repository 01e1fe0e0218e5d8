"""The zoo table: every registered model with its paper, input sizes, and counted vs published figures."""

from __future__ import annotations

from typing import Iterable

import pandas as pd

from analysis.instruments.counting import count_model, create_model_for_counting, parameter_count, totals
from inception_models import list_models, model_info


def zoo_table(models: Iterable[str] | None = None, *, with_macs: bool = False) -> pd.DataFrame:
    """One row per registered model (default knobs): paper, year, native and minimum input size,
    counted parameters beside the reference count from REFERENCES.md, and their difference.

    With ``with_macs`` the MACs at native input are counted too (fvcore, one traced forward each): ``gmacs``
    is fvcore's total (BN included), ``conv_fc_gmacs`` the convolutions and the classifier only, which is
    what the papers and timm's tables count, so it is the column to set beside ``ref_gmacs``.
    """
    rows = []
    for name in models if models is not None else list_models():
        info = model_info(name)
        model = create_model_for_counting(name)
        params = int(parameter_count(model)[""])
        row = {
            "model": name,
            "paper": info.paper,
            "year": info.year,
            "input": info.input_size,
            "min_input": info.min_input_size,
            "params": params,
            "ref_params": info.reference_params,
            "params_delta": None if info.reference_params is None else params - info.reference_params,
        }
        if with_macs:
            sums = totals(count_model(model, input_size=(3, info.input_size, info.input_size)))
            row["gmacs"] = round(sums["macs"] / 1e9, 3)
            row["conv_fc_gmacs"] = round(sums["conv_linear_macs"] / 1e9, 3)
            row["ref_gmacs"] = info.reference_gmacs
        row["reference"] = info.reference_source
        rows.append(row)
    df = pd.DataFrame(rows)
    for col in ("ref_params", "params_delta"):
        df[col] = df[col].astype("Int64")
    return df


# ImageNet validation, single model, single crop (top-1 / top-5 error %), as the papers report them.
PUBLISHED_ERRORS: dict[str, tuple[float | None, float | None, str]] = {
    "inception_v3": (21.2, 5.6, "Inception-v4 paper, Table 2"),
    "inception_resnet_v1": (21.3, 5.5, "Inception-v4 paper, Table 2"),
    "inception_v4": (20.0, 5.0, "Inception-v4 paper, Table 2"),
    "inception_resnet_v2": (19.9, 4.9, "Inception-v4 paper, Table 2"),
    "xception": (21.0, 5.5, "Xception paper, Table 1 (79.0% / 94.5% accuracy)"),
}


def published_errors() -> pd.DataFrame:
    """The papers' single-crop ImageNet errors, one row per model that has one."""
    return pd.DataFrame(
        [{"model": m, "top1_err": t1, "top5_err": t5, "error_source": src} for m, (t1, t5, src) in PUBLISHED_ERRORS.items()]
    )
