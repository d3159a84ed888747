"""Environments recorded for a checkout, whoever brought them up: found, judged, reaped, torn down.

An environment outlives the process that brought it up (``envkit up``), or
loses it (SIGKILL, a cancelled job). Any later command, the pytest plugin and
the watchdog find it here through its state file (:mod:`envkit.state`):

- :func:`current`: the one recorded for this checkout, after :func:`reap_stale`
  tore down one whose owner died before handing it over;
- :func:`check_fresh` / :func:`outdated`: whether it can still be used (its
  servers are there; it was built from the checkout's migrations and seeds),
  judged by the settings it was :func:`made_with`;
- :func:`teardown_session` / :func:`down`: tear it down from any process.

The pipeline that brings one up is :mod:`envkit.lifecycle`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from . import cache, health, signals, state
from .backends import by_name
from .config import Config
from .errors import EnvkitError, StaleEnvironment, StateError, TeardownIncomplete, UnsafeTarget
from .proc import end_child
from .state import Session

log = logging.getLogger("envkit")


def current(config: Config) -> Session | None:
    """The environment recorded for this checkout, after reaping one whose owner died."""
    reap_stale(config)
    return state.load(config)


def outdated(config: Config, session: Session) -> list[str]:
    """The migration and seed files (and settings) that changed since ``session`` was migrated and seeded."""
    before = session.contents or None
    config = made_with(config, session)
    if not before or not config.postgres.enabled:
        return []  # recorded by an older envkit, or nothing to compare
    return cache.changed(before, cache.contents(config))


def made_with(config: Config, session: Session) -> Config:
    """The settings ``session`` was brought up with, read again: ``envkit -c FILE up``'s when not the ones found here.

    So that a command or ``pytest`` run without ``-c`` anywhere in the checkout judges the environment by the
    files it was made from, not by another configuration's.
    """
    source = session.config_file or None
    if not source or source in (config.source, "defaults") or not Path(source).is_file():
        return config
    from .config import load

    try:
        return load(config.root, config_file=source, environ=config.environ)
    except EnvkitError as exc:
        log.debug("cannot read %s again (%s); judging %s by %s", source, exc, session.label, config.source)
        return config


def check_fresh(config: Config, session: Session) -> None:
    """Refuse an environment left up that cannot be used as it is.

    :class:`EnvironmentGone` when a server, a container or its database is gone
    (:mod:`envkit.health`); :class:`StaleEnvironment` when it was built from
    other migrations or seeds than the checkout's.
    """
    health.require(session)
    changes = outdated(config, session)
    if changes:
        raise StaleEnvironment(session.label, changes)


def reap_stale(config: Config) -> bool:
    """Tear down an environment whose owner died before handing it over (SIGKILL, cancelled job)."""
    try:
        session = state.load(config)
    except StateError:
        return False
    if session is None or not session.orphaned:
        return False
    log.warning("found environment %s whose owner (pid %d) is gone; tearing it down", session.label, session.owner_pid)
    teardown_session(config, session)
    return True


def teardown_session(config: Config, session: Session) -> None:
    """Tear down a recorded environment from any process; idempotent.

    The record is removed only once teardown succeeded: a :class:`TeardownIncomplete` keeps it (noting why),
    so that a later ``envkit down`` or ``envkit prune`` can finish.
    """
    config = made_with(config, session)  # its dotenv file is the one its own settings named
    refused = None
    with signals.deferred():
        end_child(session.resources.get("child"), session.label)  # the tests of an owner that was killed
        try:
            by_name(session.backend).teardown(session)
        except TeardownIncomplete as exc:
            session.teardown_failed = str(exc)
            session.save()
            raise
        except UnsafeTarget as exc:  # a recorded database envkit did not create: all else is down, and that one
            refused = exc  # will never be envkit's to drop, so the record goes; the refusal is still the outcome
        if config.dotenv:
            config.path(config.dotenv).unlink(missing_ok=True)
        session.remove()
    if refused:
        raise refused


def down(config: Config) -> Session | None:
    """Tear down this checkout's environment, if any; returns what was torn down."""
    session = state.load(config)
    if session is None:
        return None
    teardown_session(config, session)
    return session
