"""envkit: throwaway PostgreSQL + Redis test environments, migrated and seeded, in one call.

    import envkit

    config = envkit.load_config()
    with envkit.environment(config) as env:
        print(env.database_url, env.redis_url, env.users())
"""

from __future__ import annotations

from importlib import import_module

TYPE_CHECKING = False  # not typing's: the CLI starts by importing this package, before it can handle a Ctrl-C
if TYPE_CHECKING:
    from typing import Any

    from .config import Config
    from .config import load as load_config
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
    from .lifecycle import Environment, environment, run, up
    from .recorded import down

# Imported on first use, so that `envkit` (the CLI) installs its signal handlers before anything slow loads.
_LAZY = {"Config": ("config", "Config"), "load_config": ("config", "load"), "Environment": ("lifecycle", "Environment"),
         "down": ("recorded", "down"), "environment": ("lifecycle", "environment"), "run": ("lifecycle", "run"),
         "up": ("lifecycle", "up"),
         "BackendUnavailable": ("errors", "BackendUnavailable"),
         "BinaryNotFound": ("errors", "BinaryNotFound"),
         "CommandFailed": ("errors", "CommandFailed"),
         "ConfigError": ("errors", "ConfigError"),
         "EnvkitError": ("errors", "EnvkitError"),
         "Interrupted": ("errors", "Interrupted"),
         "MigrationFailed": ("errors", "MigrationFailed"),
         "PortInUse": ("errors", "PortInUse"),
         "ProvisionError": ("errors", "ProvisionError"),
         "ReadyTimeout": ("errors", "ReadyTimeout"),
         "SeedError": ("errors", "SeedError"),
         "ServiceExited": ("errors", "ServiceExited"),
         "ServiceFailed": ("errors", "ServiceFailed"),
         "StateError": ("errors", "StateError"),
         "UnsafeTarget": ("errors", "UnsafeTarget"),
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'envkit' has no attribute {name!r}")
    module, attr = _LAZY[name]
    value = getattr(import_module(f".{module}", __name__), attr)
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
