"""The run configuration (`Config`, docs/config.md): its keys (`fields`), how a config is read
(`loading`: JSON + `--set` overrides) and checked (`checks`). Every key a user can write in a config
JSON is a field of `Config`, with its default; `load_config` turns JSON + overrides into a validated
`Config`, raising `ConfigError` (a one-line message naming the key) for anything wrong, before any
JAX work happens. Standard library only."""

from jaxlm.config.checks import validate
from jaxlm.config.fields import FIELDS, IDENTITY_KEYS, RESUME_ROLES, RUN_METADATA_KEYS, Config, Resume
from jaxlm.config.loading import (
    MAX_INT,
    build_config,
    config_values,
    load_config,
    loads_strict,
    parse_override,
    read_config_file,
)

__all__ = [
    "FIELDS",
    "IDENTITY_KEYS",
    "MAX_INT",
    "RESUME_ROLES",
    "RUN_METADATA_KEYS",
    "Config",
    "Resume",
    "build_config",
    "config_values",
    "load_config",
    "loads_strict",
    "parse_override",
    "read_config_file",
    "validate",
]
