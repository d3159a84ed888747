"""envkit: throwaway PostgreSQL + Redis test environments, migrated and seeded, in one call.

    import envkit

    config = envkit.load_config()
    with envkit.environment(config) as env:
        print(env.database_url, env.redis_url, env.users())
"""

from __future__ import annotations

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
from .lifecycle import Environment, down, environment, run, up

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
