"""envkit's exceptions: one tree, so callers catch what they can act on.

    EnvkitError                      anything envkit expected could go wrong
    ├── ConfigError                  bad or unknown configuration
    ├── BinaryNotFound               a server binary (postgres, redis-server) is missing
    ├── PortInUse                    a configured port is taken
    ├── BackendUnavailable           the chosen backend cannot run here (no engine, ...)
    ├── CommandFailed                a subprocess exited non-zero
    ├── ServiceFailed                a service did not become ready
    │   ├── ServiceExited            ... because its process or container died
    │   └── ReadyTimeout             ... within the deadline
    ├── ProvisionError               database setup failed
    │   ├── MigrationFailed          a migration (file, revision, command) failed
    │   ├── SeedError                seeding failed (bad user, password too long, ...)
    │   └── UnsafeTarget             refused to touch a database envkit did not create
    ├── StateError                   the .envkit state is missing or unreadable
    │   ├── StaleEnvironment         the environment left up was built from other migrations or seeds
    │   └── EnvironmentGone          a server, container or the database of the environment left up is gone
    └── TeardownIncomplete           teardown could not remove everything; the state is kept to finish it

    KeyboardInterrupt
    └── Interrupted                  a signal (SIGINT, SIGTERM, SIGHUP) stopped envkit

Every message says what was checked, what was found and how to fix it; the
CLI prints ``str(error)`` and exits with ``EXIT_ENVKIT_ERROR``.

``Interrupted`` is deliberately not an ``EnvkitError`` (nor an ``Exception``):
no ``except Exception`` may take a Ctrl-C for "not ready yet" or "the migration
failed". The CLI exits with the signal's code (130, 143, 129); see
:mod:`envkit.signals`.
"""

from __future__ import annotations

import signal
from pathlib import Path

#: Exit code for envkit's own failures; a child command's code is passed through.
EXIT_ENVKIT_ERROR = 3


class EnvkitError(Exception):
    """Base class of every error envkit raises on purpose."""

    stage: str | None = None  # the lifecycle stage that failed, set by the pipeline
    service: str | None = None
    diagnostics: Path | None = None  # the diagnostics bundle written for this failure, if any


class ConfigError(EnvkitError):
    """Configuration could not be read or is invalid."""


class BinaryNotFound(EnvkitError):
    """A server binary could not be located."""


class PortInUse(EnvkitError):
    """A port envkit was told to use is already taken."""

    def __init__(self, message: str, port: int) -> None:
        super().__init__(message)
        self.port = port


class BackendUnavailable(EnvkitError):
    """The selected backend cannot run on this machine."""


class CommandFailed(EnvkitError):
    """A subprocess exited with a non-zero status."""

    def __init__(self, argv: list[str], returncode: int, output: str = "") -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.output = output
        tail = "\n".join(output.strip().splitlines()[-20:])
        msg = f"command failed with exit code {returncode}: {' '.join(self.argv)}"
        if tail:
            msg += f"\n{tail}"
        super().__init__(msg)


class ServiceFailed(EnvkitError):
    """A service did not become ready."""

    def __init__(self, message: str, service: str, log_tail: str = "") -> None:
        if log_tail.strip():
            message += "\nlast log lines:\n" + log_tail.rstrip()
        super().__init__(message)
        self.service = service
        self.log_tail = log_tail


class ServiceExited(ServiceFailed):
    """The service's process or container exited while envkit waited for it."""


class ReadyTimeout(ServiceFailed):
    """The service did not answer its readiness probe before the deadline."""


class ProvisionError(EnvkitError):
    """Creating, migrating or seeding the database failed."""


class MigrationFailed(ProvisionError):
    """A migration failed."""


class SeedError(ProvisionError):
    """Seeding failed."""


class UnsafeTarget(ProvisionError):
    """A destructive operation was refused on a database envkit did not create."""


class StateError(EnvkitError):
    """The environment's state could not be read."""


class StaleEnvironment(StateError):
    """The environment ``envkit up`` left running was migrated and seeded from files that have changed since."""

    def __init__(self, label: str, changed: list[str]) -> None:
        self.changed = changed
        shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
        super().__init__(
            f"the environment {label} that is up was migrated and seeded before {shown} changed; its database is "
            "stale. Run `envkit up --replace` (or `envkit down`, then `envkit up`) for a fresh one")


class EnvironmentGone(StateError):
    """Part of the environment ``envkit up`` left running is gone: a server, a container, or its database."""

    def __init__(self, label: str, gone: list[str]) -> None:
        self.gone = gone
        super().__init__(
            f"the environment {label} that is up is broken: {'; '.join(gone)}. Run `envkit up --replace` "
            "(or `envkit down`, then `envkit up`) for a fresh one")


class TeardownIncomplete(EnvkitError):
    """Teardown could not remove everything the state records (an engine or server that does not answer).

    The state file is kept, so that a later ``envkit down`` (or ``envkit prune``) can finish the job.
    """

    def __init__(self, label: str, what: str) -> None:
        self.label = label
        super().__init__(
            f"could not finish tearing down {label}: {what}. Its record is kept in .envkit/state.json: run "
            "`envkit down` again once that answers (or `envkit prune`); if it is gone for good, with everything it "
            "ran, delete .envkit/state.json")


class Interrupted(KeyboardInterrupt):
    """envkit was stopped by a signal; raised in the main thread, and teardown still runs."""

    stage: str | None = None  # the lifecycle stage it stopped, set by the pipeline
    service: str | None = None
    diagnostics: Path | None = None

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")

    def __str__(self) -> str:
        return str(self.args[0]) + (f" during {self.stage}" if self.stage else "")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum
