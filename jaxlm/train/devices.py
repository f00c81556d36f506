"""Which devices a run trains on, and a one-line refusal when the config asks for one that is not here.

`device: "gpu"` or `"tpu"` is a promise: a run that asked for a GPU and would silently train on the
CPU (a missing or broken CUDA plugin) is refused before anything is written, at `--dry-run` too, with
what JAX found and the command that installs the plugin. `device: null` takes what JAX chooses (an
accelerator when a plugin works, else the CPU); the launcher prints that choice at start and the
run's summary records it.
"""

from __future__ import annotations

import importlib.metadata
from typing import TYPE_CHECKING

from jaxlm.errors import ConfigError

if TYPE_CHECKING:
    import jax

    from jaxlm.config import Config

# The plugin packages that give JAX each platform, and how to install one with this project.
PLUGINS = {
    "gpu": ("jax-cuda13-plugin", "jax-cuda12-plugin"),
    "tpu": ("libtpu",),
}
INSTALL = {
    "gpu": "uv sync --extra cuda13 (NVIDIA driver >= 580; --extra cuda12 for older drivers), naming every "
    "other extra you use in the same command (e.g. --extra wandb)",
    "tpu": "uv sync --extra tpu, naming every other extra you use in the same command (e.g. --extra wandb)",
}


def installed_plugins(platform: str) -> list[str]:
    """'package version' for each of `platform`'s plugin packages that is installed."""
    found = []
    for package in PLUGINS.get(platform, ()):
        try:
            found.append(f"{package} {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def found_platforms() -> str:
    """What JAX initialised: 'cpu (1 device)', 'gpu (8 devices)'."""
    import jax

    devices = jax.devices()
    return f"{devices[0].platform} ({len(devices)} device{'s' * (len(devices) != 1)})"


def run_devices(c: Config) -> list[jax.Device]:
    """All devices (of all processes) of the configured platform, or of JAX's default one when the
    config names none; ConfigError in one line when the named platform is not usable here."""
    import jax

    if c.device is None:
        return jax.devices()
    try:
        return jax.devices(c.device)
    except RuntimeError as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        plugins = installed_plugins(c.device)
        what = (
            f"{', '.join(plugins)} is installed but JAX could not use it ({reason[:300]})"
            if plugins
            else f"no {c.device.upper()} plugin is installed"
        )
        raise ConfigError(
            f"config key 'device': \"{c.device}\" asked for, but JAX (jax {jax.__version__}) found only "
            f"{found_platforms()}: {what}; install it with {INSTALL[c.device]}, or set device to null "
            "to train on what is here"
        ) from None


def describe_choice(c: Config, devices: list[jax.Device]) -> str:
    """One line: the devices the run uses and who chose them."""
    import jax

    kind = devices[0].device_kind
    by = f'the config (device: "{c.device}")' if c.device else "JAX (device: null)"
    return f"device: {len(devices)} x {kind} ({devices[0].platform}, jax {jax.__version__}), chosen by {by}"
