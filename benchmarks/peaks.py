"""Nominal dense (non-sparse) peak throughput of GPUs per arithmetic, in TFLOP/s, looked up from the device name:
the denominator of a model-FLOPs utilisation (MFU). A row is compared with the peak of the arithmetic it ran
in: a bf16 (or fp16) autocast row with the bf16 (fp16) tensor-core peak, an fp32 row with the TF32 tensor-core
peak when cuDNN may use TF32 for convolutions (PyTorch's default, ``torch.backends.cudnn.allow_tf32``), else
with the plain fp32 peak.

Sources: NVIDIA's data sheets, the dense figures (the sheets print the 2:4-sparsity figure, twice the dense
one, for the tensor-core rows): H100 Tensor Core GPU (SXM5, PCIe, NVL); H200 Tensor Core GPU; GH200 Grace
Hopper Superchip; A100 Tensor Core GPU (SXM and PCIe); L40S; L4; A10; V100 (SXM2; no TF32 or bf16); T4 (no
TF32 or bf16); HGX B200 (per GPU: the 8-GPU board's figure / 8).
"""

from __future__ import annotations

import math

__all__ = ["PEAK_SOURCES", "PEAK_TFLOPS", "peak_arithmetic", "peak_tflops"]

# (name fragment, {arithmetic: dense TFLOP/s}), most specific fragment first: the first that the device name
# contains wins ("H100 PCIe" before "H100", "GH200" before "H200", "A100" before "A10", "L40S" before "L4").
PEAK_TFLOPS: list[tuple[str, dict[str, float]]] = [
    ("GH200", {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4}),
    ("H200", {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4}),
    ("H100 PCIe", {"fp32": 51.2, "tf32": 378.0, "bf16": 756.0, "fp16": 756.0}),
    ("H100 NVL", {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5, "fp16": 835.5}),
    ("H100", {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4}),  # SXM5 ("NVIDIA H100 80GB HBM3")
    ("B200", {"fp32": 75.0, "tf32": 1100.0, "bf16": 2250.0, "fp16": 2250.0}),
    ("A100", {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0}),
    ("L40S", {"fp32": 91.6, "tf32": 183.0, "bf16": 362.05, "fp16": 362.05}),
    ("L4", {"fp32": 30.3, "tf32": 60.0, "bf16": 121.0, "fp16": 121.0}),
    ("A10", {"fp32": 31.2, "tf32": 62.5, "bf16": 125.0, "fp16": 125.0}),
    ("V100", {"fp32": 15.7, "fp16": 125.0}),
    ("T4", {"fp32": 8.1, "fp16": 65.0}),
]
PEAK_SOURCES = __doc__.split("Sources: ", 1)[1].strip()


def peak_arithmetic(amp: str | None, *, cudnn_tf32: bool = True) -> str:
    """The arithmetic a row ran in: ``"bf16"``/``"fp16"`` under autocast, else ``"tf32"`` when cuDNN may use
    TF32 for convolutions, else ``"fp32"``."""
    if amp in ("bf16", "fp16"):
        return amp
    return "tf32" if cudnn_tf32 else "fp32"


def peak_tflops(device_name: str, arithmetic: str) -> float:
    """The dense peak of ``arithmetic`` on the GPU named ``device_name``; NaN for an unknown GPU. A GPU without
    TF32 (V100, T4) runs TF32-eligible work in fp32; one without bf16 has no bf16 peak (NaN)."""
    for fragment, peaks in PEAK_TFLOPS:
        if fragment.lower() in device_name.lower():
            if arithmetic == "tf32" and "tf32" not in peaks:
                arithmetic = "fp32"
            return peaks.get(arithmetic, math.nan)
    return math.nan
