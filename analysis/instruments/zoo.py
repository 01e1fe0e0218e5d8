"""The zoo table: every registered model with its paper, input sizes, our counts, the reference port's counts and
what the paper itself prints, kept apart.

Three kinds of figure, never mixed in one column:

- **ours**: counted here (parameters; MACs with fvcore at the native input), aux heads off, and with them in
  ``params_with_aux`` where the model has heads;
- **reference port** (``ref_params``): the count of the released network as torchvision, timm or the original
  authors' port builds it, measured with those libraries (``shared/REFERENCES.md``); a ``_paper`` variant has no
  port;
- **published** (``published_params``, ``published_gmacs``, ``top1_err``, ``top5_err``): what the paper prints,
  as it prints it ("about", "less than"), with its source; never our measurement of a port.
"""

from __future__ import annotations

from typing import Iterable

import pandas as pd

from analysis.instruments.counting import count_model, create_model_for_counting, parameter_count, totals
from inception_models import list_models, model_info

__all__ = ["PUBLISHED", "PUBLISHED_ERRORS", "VARIANTS", "published_errors", "zoo_table"]

# What each paper prints about the network a builder makes: (parameters, multiply-adds, source), as printed.
_GOOGLENET = ("about 6.8 M (Table 1, summed)", "about 1.5 G", "Szegedy et al. 2015, sec. 1 and Table 1")
PUBLISHED: dict[str, tuple[str | None, str | None, str]] = {
    "googlenet": _GOOGLENET,
    "googlenet_paper": _GOOGLENET,
    "bn_inception": ("13.6 M", None, "Ioffe & Szegedy 2015, sec. 4.2 (no implementation reproduces it)"),
    "inception_v3": ("less than 25 M", "5 G", "Szegedy et al. 2016, abstract"),
    "inception_v4": (None, None, "Szegedy et al. 2017 print no counts"),
    "inception_resnet_v1": (None, "about Inception-v3's", "Szegedy et al. 2017, sec. 3"),
    "inception_resnet_v1_paper": (None, "about Inception-v3's", "Szegedy et al. 2017, sec. 3"),
    "inception_resnet_v2": (None, "about Inception-v4's", "Szegedy et al. 2017, sec. 3"),
    "inception_resnet_v2_paper": (None, "about Inception-v4's", "Szegedy et al. 2017, sec. 3"),
    "xception": ("22,855,952", None, "Chollet 2017, Table 3"),
    "small_inception": ("1,649,402", None, "Zhang et al. 2017, Table 1 (BN without its scale)"),
}

# What each builder makes, against the released network its family is measured by.
VARIANTS: dict[str, str] = {
    "googlenet": "torchvision's port: BN, a 3x3 conv in the '5x5' branch, 2x2 pool before 5a, dropout 0.2",
    "googlenet_paper": "the paper's Table 1: a real 5x5 branch, LRN, no BN, 3x3 pool, dropout 0.4",
    "bn_inception": "the Caffe port (Cadene): the paper's branch widths, conv bias, BN eps 1e-5",
    "inception_v3": "the released TF-slim model (torchvision = timm)",
    "inception_v4": "the released TF-slim model (timm = Cadene)",
    "inception_resnet_v1": "facenet's network: 5/10/5 blocks plus a last 8x8 block, 1792 features",
    "inception_resnet_v1_paper": "the paper's Fig. 15: facenet's network without the extra 8x8 block",
    "inception_resnet_v2": "the released model: 10/20/10 blocks, a last 8x8 block and a 1x1 conv to 1536",
    "inception_resnet_v2_paper": "the released stem and widths at the paper's 5/10/5 depth, no last block or "
                                 "1536 conv: 8.3 GMACs, below the paper's 'roughly Inception-v4's cost'",
    "xception": "the Keras model of the paper's Table 3 (timm legacy_xception)",
    "small_inception": "Zhang et al.'s CIFAR-scale Inception (Fig. 3), BN with its scale",
}

# ImageNet validation, single model, single crop (top-1 / top-5 error %), as the papers report them.
PUBLISHED_ERRORS: dict[str, tuple[float | None, float | None, str]] = {
    "googlenet_paper": (29.0, 9.2, "Inception-v3 paper, Table 3 (single crop)"),
    "bn_inception": (25.2, 7.8, "Inception-v3 paper, Table 3 (single crop)"),
    "inception_v3": (21.2, 5.6, "Inception-v4 paper, Table 2"),
    "inception_resnet_v1": (21.3, 5.5, "Inception-v4 paper, Table 2"),
    "inception_v4": (20.0, 5.0, "Inception-v4 paper, Table 2"),
    "inception_resnet_v2": (19.9, 4.9, "Inception-v4 paper, Table 2"),
    "xception": (21.0, 5.5, "Xception paper, Table 1 (79.0% / 94.5% accuracy)"),
}


def zoo_table(models: Iterable[str] | None = None, *, with_macs: bool = False) -> pd.DataFrame:
    """One row per registered model (default knobs, aux heads off): paper, year, native and minimum input size,
    what this builder makes (``variant``), our parameter count (``params``; ``params_with_aux`` where the model
    has aux heads), the reference port's (``ref_params``) and our difference from it (``params_delta``), and
    the paper's printed figures (``published_params``, ``published_gmacs``, ``published_source``).

    With ``with_macs`` the MACs at native input are counted too (fvcore, one traced forward each): ``gmacs`` is
    fvcore's total (BN included), ``conv_fc_gmacs`` the convolutions and the classifier only, which is what the
    papers and timm's tables count.
    """
    rows = []
    for name in models if models is not None else list_models():
        info = model_info(name)
        heads = "aux_logits" in info.knobs
        model = create_model_for_counting(name, **({"aux_logits": False} if heads else {}))
        params = int(parameter_count(model)[""])
        published = PUBLISHED.get(name, (None, None, ""))
        row = {
            "model": name,
            "paper": info.paper,
            "year": info.year,
            "variant": VARIANTS.get(name, ""),
            "input": info.input_size,
            "min_input": info.min_input_size,
            "params": params,
            "params_with_aux": int(parameter_count(create_model_for_counting(name, aux_logits=True))[""])
            if heads else None,
            "ref_params": info.reference_params,
            "params_delta": None if info.reference_params is None else params - info.reference_params,
            "published_params": published[0],
        }
        if with_macs:
            sums = totals(count_model(model, input_size=(3, info.input_size, info.input_size)))
            row["gmacs"] = round(sums["macs"] / 1e9, 3)
            row["conv_fc_gmacs"] = round(sums["conv_linear_macs"] / 1e9, 3)
        row["published_gmacs"] = published[1]
        row["published_source"] = published[2]
        row["reference"] = info.reference_source
        rows.append(row)
    df = pd.DataFrame(rows)
    for col in ("params_with_aux", "ref_params", "params_delta"):
        df[col] = df[col].astype("Int64")
    return df


def published_errors() -> pd.DataFrame:
    """The papers' single-crop ImageNet errors, one row per model that has one."""
    return pd.DataFrame(
        [{"model": m, "top1_err": t1, "top5_err": t5, "error_source": src} for m, (t1, t5, src) in PUBLISHED_ERRORS.items()]
    )
