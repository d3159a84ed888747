"""A backend that starts nothing, for the unit tier: ``envkit.up(config, backend=FakeBackend())``.

It records what the lifecycle asks of it in :attr:`FakeBackend.calls` (one list shared by every instance,
so that the instance ``envkit down`` looks up by name records into the same one) and hands back the
endpoints it was given. :func:`registered` also puts it in the backend registry under its name, as
``envkit down`` and the reaping of a dead owner's environment find a backend by the name in the state.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import ClassVar

import pytest

from envkit import progress
from envkit.backends import BACKENDS
from envkit.config import Config
from envkit.services import PostgresEndpoint, RedisEndpoint, Running
from envkit.state import Session

#: A password that needs quoting in a URL: the exports must escape it.
POSTGRES = PostgresEndpoint("127.0.0.1", 1, "u", "p@ss/word", "db_test", admin_url="host=/x", version="15")
REDIS = RedisEndpoint("127.0.0.1", 2, 3)


class FakeBackend:
    """Starts nothing; records each call; returns ``postgres`` and ``redis`` as the running services."""

    name: ClassVar[str] = "fake"
    calls: ClassVar[list[str]] = []

    def __init__(self, *, restored: bool = False, postgres: PostgresEndpoint | None = POSTGRES,
                 redis: RedisEndpoint | None = REDIS) -> None:
        self.restored = restored
        self.postgres = postgres
        self.redis = redis

    def start(self, config: Config, session: Session, stack: ExitStack, snapshot: str | None) -> Running:
        self.calls.append("start")
        progress.note("postgres", "starting")
        session.resources["fake"] = True  # recorded like a real resource: the state is written before anything else
        session.save()
        stack.callback(self.teardown, session)
        return Running(self.name, postgres=self.postgres, redis=self.redis, restored=self.restored)

    def save_snapshot(self, config: Config, session: Session, running: Running, key: str) -> None:
        self.calls.append("snapshot")

    def teardown(self, session: Session) -> None:
        self.calls.append("teardown")

    def logs(self, session: Session, service: str | None = None) -> dict[str, str]:
        return {}  # not recorded: a failure's diagnostics bundle asks for them


def registered(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Register the fake under its name for this test; returns the (fresh) list its calls go to."""
    calls: list[str] = []
    monkeypatch.setattr(FakeBackend, "calls", calls)
    monkeypatch.setitem(BACKENDS, FakeBackend.name, f"{__name__}:FakeBackend")
    return calls
