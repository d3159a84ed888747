"""envkit's pytest plugin, registered through the ``pytest11`` entry point: installing envkit is enough.

Which environment the tests use, first found wins:

1. the one ``envkit test`` or ``envkit run`` handed over (``$ENVKIT_STATE_FILE``);
2. the one ``envkit up`` left running for this checkout;
3. with ``--envkit``, one brought up for this session and torn down at its end
   (``--envkit-keep`` leaves it up, ``--envkit-backend`` picks the backend).

Without one, tests that need it (they use a fixture below, or carry the
``envkit`` marker) are skipped with the reason; with ``CI=true`` or
``ENVKIT_REQUIRE=1`` they fail instead.

Each pytest process gets a database and a Redis namespace of its own
(:mod:`envkit.workspace`), and its ``os.environ`` points at them
(``DATABASE_URL``, ``PG*``, ``REDIS_URL``, the ``[env]`` names) from
``pytest_load_initial_conftests`` on: before any conftest or test module is
imported, so settings an application builds at import see them. Under
pytest-xdist the controller finds or brings up the environment before the
workers start; they inherit its state file and run id through os.environ
(their conftests are imported before xdist hands them anything else), and it
sweeps the run's leftovers at the end. Fixtures are listed in the README under "pytest fixtures"; isolation
modes in :mod:`envkit.isolation`.

psycopg, redis and SQLAlchemy are imported only when an environment is used.

This module is the plugin's face, the one pytest registers: the hooks, the
fixtures and the public types live in :mod:`envkit.pytest`, by job, and are
re-exported here (pytest finds hooks and fixtures among a plugin module's names).
"""

from envkit.pytest.fixtures import (  # noqa: F401 - pytest finds a plugin's fixtures and hooks among its names
    _envkit_marker,
    async_db_session,
    auth_headers,
    db_connection,
    db_session,
    envkit_async_db_session,
    envkit_async_engine,
    envkit_auth_headers,
    envkit_db,
    envkit_db_connection,
    envkit_db_session,
    envkit_engine,
    envkit_env,
    envkit_redis_client,
    envkit_seeded_users,
    redis_client,
    seeded_users,
)
from envkit.pytest.hooks import (  # noqa: F401
    pytest_addhooks,
    pytest_addoption,
    pytest_collection_finish,
    pytest_configure,
    pytest_load_initial_conftests,
    pytest_report_header,
    pytest_sessionfinish,
)
from envkit.pytest.types import EnvkitDatabase, EnvkitEnv, SeededUsers

__all__ = ["EnvkitDatabase", "EnvkitEnv", "SeededUsers"]
