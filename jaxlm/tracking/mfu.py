"""Model FLOPs utilisation: achieved training FLOP/s over the devices' peak.

The peaks are dense bfloat16 FLOP/s per chip from vendor spec sheets; an
unknown device (a CPU, say) has no MFU rather than a made-up one.
"""

from __future__ import annotations

# Substring of jax's `device_kind` -> dense bf16 peak FLOP/s per device.
PEAK_FLOPS_BF16 = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L4": 121e12,
    "A10G": 70e12,
    "TPU v6": 918e12,
    "TPU v5p": 459e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v4": 275e12,
}


def peak_flops(device_kind: str | None) -> float | None:
    if not device_kind:
        return None
    for key, flops in PEAK_FLOPS_BF16.items():
        if key.lower() in device_kind.lower():
            return flops
    return None


def model_flops_utilization(tokens_per_sec: float | None, flops_per_token: float | None,
                            peak_per_device: float | None, device_count: int | None) -> float | None:
    """tokens/s x FLOPs/token / (peak x devices), or None when any factor is unknown."""
    if not tokens_per_sec or not flops_per_token or not peak_per_device:
        return None
    return tokens_per_sec * flops_per_token / (peak_per_device * max(device_count or 1, 1))
