"""Peak FLOP/s per device and model-FLOPs utilisation (MFU).

MFU = achieved model FLOP/s / (devices x peak FLOP/s per device), with model
FLOPs from `jaxlm.train.flops.flops_per_token`. Peaks are *dense* (no 2:4 sparsity)
figures from vendor datasheets, keyed by `jax.Device.device_kind`; a device we
have no datasheet figure for gets MFU None (an empty cell), never a guess.

Sources (NVIDIA quotes tensor-core numbers "with sparsity"; dense = half):
  [H100]  NVIDIA H100 Tensor Core GPU datasheet,
          https://resources.nvidia.com/en-us-tensor-core/nvidia-tensor-core-gpu-datasheet
          SXM: BF16 1,979 / TF32 989 (sparse), FP32 67 TFLOPS; PCIe: 1,513 / 756, FP32 51;
          NVL: 1,671 / 835, FP32 60.
  [H200]  NVIDIA H200 datasheet, https://www.nvidia.com/en-us/data-center/h200/
          SXM: BF16 1,979 / TF32 989 (sparse), FP32 67; NVL: 1,671 / 835, FP32 60.
  [A100]  NVIDIA A100 datasheet, https://www.nvidia.com/en-us/data-center/a100/
          BF16 312 / TF32 156 (dense), FP32 19.5 (SXM and PCIe, 40 and 80 GB).
  [B200]  NVIDIA HGX B200 (8 GPUs), https://www.nvidia.com/en-us/data-center/hgx/
          FP16/BF16 36 PFLOPS, TF32 18 PFLOPS (sparse), FP32 600 TFLOPS -> per GPU dense
          BF16 2,250, TF32 1,125, FP32 75.
  [L4]    NVIDIA L4 datasheet, https://www.nvidia.com/en-us/data-center/l4/
          BF16 242 / TF32 120 (sparse), FP32 30.3.
  [TPU]   Cloud TPU system architecture pages, https://cloud.google.com/tpu/docs/{v4,v5e,v5p,v6e}
          BF16 per chip: v4 275, v5e 197, v5p 459, v6e (Trillium) 918 TFLOPS. Google publishes
          no FP32 peak, so full-precision (HIGHEST) float32 runs on TPU report no MFU.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported only for annotations: the peak table needs no JAX
    import jax

T = 1e12


@dataclass(frozen=True)
class Peak:
    """Dense peak FLOP/s of one device; None where the vendor publishes none."""

    bf16: float
    tf32: float | None  # NVIDIA tensor-core TF32
    fp32: float | None  # plain (non-tensor) FP32


# (pattern on device_kind, peak); first match wins, so specific variants come first.
PEAKS: tuple[tuple[str, Peak], ...] = (
    (r"\bH100\b.*\bPCIE\b", Peak(1513 * T / 2, 756 * T / 2, 51 * T)),  # [H100] PCIe
    (r"\bH100\b.*\bNVL\b", Peak(1671 * T / 2, 835 * T / 2, 60 * T)),  # [H100] NVL
    (r"\bH100\b", Peak(1979 * T / 2, 989 * T / 2, 67 * T)),  # [H100] SXM ("NVIDIA H100 80GB HBM3")
    (r"\bH200\b.*\bNVL\b", Peak(1671 * T / 2, 835 * T / 2, 60 * T)),  # [H200] NVL
    (r"\bH200\b", Peak(1979 * T / 2, 989 * T / 2, 67 * T)),  # [H200] SXM
    (r"\bA100\b", Peak(312 * T, 156 * T, 19.5 * T)),  # [A100]
    (r"\bB200\b", Peak(2250 * T, 1125 * T, 75 * T)),  # [B200] HGX
    (r"\bL4\b", Peak(242 * T / 2, 120 * T / 2, 30.3 * T)),  # [L4]
    (r"^TPU V4\b", Peak(275 * T, None, None)),  # [TPU] v4
    (r"^TPU V5 LITE\b|^TPU V5E\b", Peak(197 * T, None, None)),  # [TPU] v5e
    (r"^TPU V5P?$", Peak(459 * T, None, None)),  # [TPU] v5p reports "TPU v5"
    (r"^TPU V6 LITE\b|^TPU V6E\b", Peak(918 * T, None, None)),  # [TPU] v6e
)

FULL_PRECISION = ("highest", "float32")


def device_peak(device_kind: str) -> Peak | None:
    kind = device_kind.upper().replace("-", " ")
    for pattern, peak in PEAKS:
        if re.search(pattern, kind):
            return peak
    return None


def peak_flops(device_kind: str, platform: str, dtype: str, matmul_precision: str | None = None) -> float | None:
    """Peak FLOP/s the matmuls of a `dtype` run can reach on one device; None if unknown.

    float32 matmuls at JAX's default precision run on TF32 tensor cores on NVIDIA
    GPUs and as single-pass bf16 on TPUs, so that is the peak they are held to;
    with `jax_default_matmul_precision` "highest"/"float32" the plain FP32 peak.
    """
    peak = device_peak(device_kind)
    if peak is None:
        return None
    if dtype == "bfloat16":
        return peak.bf16
    if (matmul_precision or "default").lower() in FULL_PRECISION:
        return peak.fp32
    if platform == "tpu":
        return peak.bf16
    return peak.tf32 if peak.tf32 is not None else peak.fp32


def peak_flops_for(device: jax.Device, dtype: str) -> float | None:
    """`peak_flops` for a JAX device under the current matmul-precision setting."""
    import jax

    return peak_flops(device.device_kind, device.platform, dtype, jax.config.jax_default_matmul_precision)
