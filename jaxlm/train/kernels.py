"""The attention kernel of a training run, chosen once, when the train step is compiled.

On an NVIDIA GPU in bfloat16/float16 the config's `attention: "auto"` tries cuDNN's flash
attention first. cuDNN can refuse a shape, dtype or version while the step is traced or only when
XLA compiles it; either way the step is compiled again with jaxlm's own kernel, one line says why,
and the run records which kernel trained it (summary.json `attention_kernel` / `attention_reason`,
and the TensorBoard hparams). The model is rebuilt with the kernel that compiled, so evaluation
and sampling use the same one and nothing re-decides mid-run.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from jaxlm.config import Config
from jaxlm.errors import ConfigError
from jaxlm.model.attention import cudnn_applies

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class AttentionChoice:
    kernel: str  # "cudnn" or "jaxlm": what the compiled train step runs
    reason: str  # why that kernel, in a few words

    def record(self) -> dict[str, str]:
        """The summary.json / hparams fields."""
        return {"attention_kernel": self.kernel, "attention_reason": self.reason}


def wanted(c: Config, platform: str) -> AttentionChoice:
    """The kernel the config asks for on `platform`, before anything is compiled."""
    if c.attention != "auto":
        return AttentionChoice(c.attention, f'config attention: "{c.attention}"')
    if cudnn_applies(c.dtype, platform):
        return AttentionChoice("cudnn", f"cuDNN flash attention ({c.dtype} on {platform})")
    why = "not an NVIDIA GPU" if platform != "gpu" else f"cuDNN flash attention has no {c.dtype} kernel"
    return AttentionChoice("jaxlm", f"jaxlm's kernel ({why})")


def first_line(e: BaseException, limit: int = 300) -> str:
    text = str(e).strip().splitlines()
    return (f"{type(e).__name__}: {text[0]}" if text else type(e).__name__)[:limit]


def compile_with_attention(c: Config, platform: str, compile_for: Callable[[Config], T]) -> tuple[T, AttentionChoice]:
    """`compile_for(config with attention set to the kernel)`, with cuDNN first where it applies and
    jaxlm's kernel when tracing or compiling with cuDNN fails (a config that insists on "cudnn" gets a
    one-line ConfigError instead)."""
    choice = wanted(c, platform)
    if choice.kernel == "jaxlm":
        return compile_for(dataclasses.replace(c, attention="jaxlm")), choice
    try:
        return compile_for(dataclasses.replace(c, attention="cudnn")), choice
    except Exception as e:  # noqa: BLE001 - any failure of cuDNN's path: tracing or XLA's compilation
        why = first_line(e)
        if c.attention == "cudnn":
            raise ConfigError(
                f"config key 'attention': cuDNN attention failed to compile the train step ({why})"
            ) from None
    log.warning("cuDNN attention failed to compile the train step (%s); using jaxlm's attention kernel", why)
    return compile_for(dataclasses.replace(c, attention="jaxlm")), AttentionChoice("jaxlm", f"cuDNN failed: {why}")
