"""The state of a checkout's environment, in ``.envkit/`` (mode 0700).

``state.json`` (mode 0600: it holds passwords) says which backend started
what, who owns it, and what it exports, so ``envkit status|env|logs|down``
from another shell can find it, and a later invocation can tell that its
owner was SIGKILLed and reap it.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import Config
from .errors import StateError
from .proc import alive

STATE_FILE = "state.json"
USERS_FILE = "users.json"


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


@dataclass
class Session:
    """One environment's record: created before anything starts, removed after the last teardown."""

    path: Path  # the state directory
    name: str
    id: str = field(default_factory=lambda: secrets.token_hex(4))
    backend: str = ""
    owner_pid: int = field(default_factory=os.getpid)
    owner_host: str = field(default_factory=socket.gethostname)
    detached: bool = False  # True once `envkit up` hands the environment over to later commands
    started_at: float = field(default_factory=time.time)
    #: what the backend started, in its own terms (run directory and processes, compose project, admin URL):
    #: read only by that backend, so that ``envkit down`` from another process can remove it
    resources: dict[str, Any] = field(default_factory=dict)
    exports: dict[str, str] = field(default_factory=dict)
    #: each service's endpoint, as a typed record (envkit.services.record): what later commands rebuild it from
    services: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: per service name, what the backend noted of it for status and doctor (binary, version, image, container)
    info: dict[str, Any] = field(default_factory=dict)
    #: the environment's own password: postgres' where envkit starts it; each user service's {{ secret }} derives from it
    password: str = field(default="", repr=False)
    #: databases envkit created on a server it did not start: teardown drops these (and their copies), nothing else
    created_databases: list[str] = field(default_factory=list)
    template_database: str | None = None  # the migrated and seeded database test processes clone
    contents: dict[str, str] = field(default_factory=dict)  # fingerprints of what was migrated and seeded
    config_file: str = ""  # the settings it was made with (-c FILE's, maybe)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per lifecycle stage
    teardown_failed: str | None = None  # why the last teardown did not finish (``envkit down`` or prune finishes it)

    @property
    def file(self) -> Path:
        return self.path / STATE_FILE

    @property
    def users_file(self) -> Path:
        return self.path / USERS_FILE

    @property
    def label(self) -> str:
        return f"{self.name}-{self.id}"

    def save(self) -> None:
        data = {k: v for k, v in self.__dict__.items() if k != "path"}
        write_private(self.file, json.dumps(data, indent=2, sort_keys=True))

    def remove(self) -> None:
        for file in (self.file, self.users_file):
            file.unlink(missing_ok=True)

    def owner_alive(self) -> bool:
        return self.owner_host != socket.gethostname() or alive(self.owner_pid)

    @property
    def orphaned(self) -> bool:
        """Its owner died before handing it over (SIGKILL, a cancelled CI job)."""
        return not self.detached and not self.owner_alive()


def begin(config: Config, backend: str) -> Session:
    session = Session(path=config.state_path, name=config.name, backend=backend)
    config.state_path.mkdir(parents=True, exist_ok=True, mode=0o700)
    ignore = config.state_path / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# created by envkit: nothing here belongs in git\n*\n")
    session.save()
    return session


def load(config: Config) -> Session | None:
    """The recorded session of this checkout, or None."""
    return read(config.state_path / STATE_FILE)


def read(file: Path) -> Session | None:
    """The session recorded in a state file (``ENVKIT_STATE_FILE`` from another process), or None."""
    try:
        data = json.loads(file.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise StateError(f"cannot read {file}: {exc}; remove it if no environment is running") from None
    known = set(Session.__dataclass_fields__) - {"path"}
    return Session(path=file.parent, **{k: v for k, v in data.items() if k in known})
