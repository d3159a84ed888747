"""The plugin's pytest hooks: its options, its marker, its own hook, and when the process's :class:`Plugin` starts and ends.

``pytest_load_initial_conftests`` opens the plugin before any conftest or test
module is imported; ``pytest_configure`` opens it when the plugin was
registered after that hook ran (by a conftest's ``pytest_plugins``, say).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from .. import distribution
from ..config import BACKEND_NAMES
from .plugin import KEY, Plugin, isolation_of
from .types import EnvkitEnv


class _HookSpecs:
    @pytest.hookspec(firstresult=True)
    def pytest_envkit_auth_headers(self, user: dict[str, Any], env: EnvkitEnv, request: pytest.FixtureRequest,
                                   ) -> Mapping[str, str] | None:
        """Return the HTTP headers that authenticate ``user`` in your application (``auth_headers`` uses it).

        ``user`` is a seeded user with its plain ``password`` and ``role``;
        ``request`` gives access to other fixtures (a database session, an app).
        """


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(_HookSpecs)


def pytest_addoption(parser: pytest.Parser, pluginmanager: pytest.PytestPluginManager) -> None:
    group = parser.getgroup("envkit", "envkit test environments")
    group.addoption("--envkit", action="store_true",
                    help="Bring an environment up for this session when none is running (envkit test, envkit up), "
                         "and tear it down at the end.")
    group.addoption("--envkit-backend", choices=BACKEND_NAMES,
                    help="The backend of the environment --envkit brings up (implies --envkit).")
    group.addoption("--envkit-keep", action="store_true",
                    help="Leave the environment --envkit brought up running; `envkit down` ends it.")
    pluginmanager.register(_Reapply(), "envkit-reapply")


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config) -> None:
    """Before any conftest or test module is imported: the environment, this process's database, os.environ."""
    ns = early_config.known_args_namespace
    if getattr(ns, "help", False) or getattr(ns, "version", False):
        return
    _open(early_config)


class _Reapply:
    """A plain hookimpl, so it runs after every tryfirst one (pytest-env's among them) and before conftests load.

    envkit's values win over pytest-env's for the names envkit exports,
    whichever of the two tryfirst hooks pytest happened to call first.
    """

    def pytest_load_initial_conftests(self, early_config: pytest.Config) -> None:
        plugin = early_config.stash.get(KEY, None)
        if plugin is not None:
            plugin.reapply_environ()


def _open(config: pytest.Config) -> Plugin:
    plugin = Plugin(config)
    config.stash[KEY] = plugin
    config.add_cleanup(plugin.finish_run)  # also when a conftest fails to import, or the run stops before it starts
    plugin.start()
    return plugin


def pytest_configure(config: pytest.Config) -> None:
    clash = distribution.other_envkit()
    if clash:
        raise pytest.UsageError(f"envkit: {distribution.clash_message(clash)}")
    config.addinivalue_line(
        "markers", "envkit(isolation='rollback'): the test needs the envkit environment; isolation is how its "
                   "database writes are undone: rollback (default), truncate (truncate and reseed) or clone (a fresh database)")
    if config.stash.get(KEY, None) is None:  # registered after the early hook ran
        _open(config)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    session.config.stash[KEY].finish_process()


def pytest_collection_finish(session: pytest.Session) -> None:
    """Clone-isolated tests get databases prepared ahead: say how many to expect."""
    plugin = session.config.stash.get(KEY, None)
    if plugin is not None and plugin.workspace is not None and not session.config.option.collectonly:
        wanted = sum(1 for item in session.items if isolation_of(item) == "clone")
        plugin.workspace.expect_clones(wanted)


def pytest_report_header(config: pytest.Config) -> list[str]:
    plugin = config.stash.get(KEY, None)
    return plugin.header() if plugin else []
