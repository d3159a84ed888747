"""envkit: throwaway PostgreSQL + Redis test environments, migrated and seeded, in one call.

    import envkit

    config = envkit.load_config()
    with envkit.environment(config) as env:
        print(env.database_url, env.redis_url, env.users())
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
    BackendUnavailable,
    BinaryNotFound,
    CommandFailed,
    ConfigError,
    EnvkitError,
    Interrupted,
    MigrationFailed,
    PortInUse,
    ProvisionError,
    ReadyTimeout,
    SeedError,
    ServiceExited,
    ServiceFailed,
    StateError,
    UnsafeTarget,
)

if TYPE_CHECKING:
    from .config import Config
    from .config import load as load_config
    from .lifecycle import Environment, down, environment, run, up

# Imported on first use: the CLI starts without paying for them before it can handle a Ctrl-C (envkit.signals).
_LAZY = {"Config": ("config", "Config"), "load_config": ("config", "load"), "Environment": ("lifecycle", "Environment"),
         "down": ("lifecycle", "down"), "environment": ("lifecycle", "environment"), "run": ("lifecycle", "run"),
         "up": ("lifecycle", "up")}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'envkit' has no attribute {name!r}")
    module, attr = _LAZY[name]
    value = getattr(importlib.import_module(f".{module}", __name__), attr)
    globals()[name] = value
    return value


__version__ = "0.1.0"

__all__ = [
    "BackendUnavailable",
    "BinaryNotFound",
    "CommandFailed",
    "Config",
    "ConfigError",
    "Environment",
    "EnvkitError",
    "Interrupted",
    "MigrationFailed",
    "PortInUse",
    "ProvisionError",
    "ReadyTimeout",
    "SeedError",
    "ServiceExited",
    "ServiceFailed",
    "StateError",
    "UnsafeTarget",
    "__version__",
    "down",
    "environment",
    "load_config",
    "run",
    "up",
]
