"""The guard against destroying real data, where it is wired, and the pieces it relies on (no servers needed).

Hosts under ``.invalid`` never resolve (RFC 2606): a guard that wrongly lets an
operation through fails at once with a connection error instead of touching
anything.
"""

from __future__ import annotations

import logging
import re
from contextlib import ExitStack
from pathlib import Path

import pytest
from conftest import Project

from envkit import UnsafeTarget
from envkit.backends.external import ExternalBackend, admin_endpoint, redis_endpoint
from envkit.errors import ConfigError
from envkit.provision import data, database
from envkit.provision.migrate import migrate
from envkit.provision.seed import seed
from envkit.pytest_plugin import SeededUsers
from envkit.services import PostgresEndpoint, RedisEndpoint
from envkit.state import begin
from envkit.workspace import derived_name


def endpoint(host: str, name: str, *, owned: bool = False) -> PostgresEndpoint:
    return PostgresEndpoint(host=host, port=5432, user="postgres", password="", database=name,
                            admin_url=f"postgresql://postgres@{host}:5432/postgres", owned=owned)


def test_refuses_a_database_called_app_on_a_remote_host() -> None:
    with pytest.raises(UnsafeTarget) as info:
        database.guard(endpoint("10.20.30.40", "app"), "app", "truncate")
    message = str(info.value)
    assert "refusing to truncate database 'app' on 10.20.30.40:5432" in message
    assert "does not look like a test database" in message and "not loopback" in message
    assert "ENVKIT_ALLOW_UNSAFE=1" in message and "allow_hosts" in message


def test_refuses_a_local_database_without_the_test_pattern() -> None:
    with pytest.raises(UnsafeTarget, match="its name 'app' does not look like a test database") as info:
        database.guard(endpoint("127.0.0.1", "app"), "app", "drop")
    assert "not loopback" not in str(info.value)


@pytest.mark.parametrize("name", ["app_test", "test_app", "app-tests", "app_test_3", "test"])
def test_lets_test_databases_on_loopback_through(name: str) -> None:
    database.guard(endpoint("127.0.0.1", name), name, "drop")
    database.guard(endpoint("localhost", name), name, "drop")


def test_a_test_database_on_a_remote_host_needs_allow_hosts() -> None:
    pg = endpoint("db.ci.internal", "app_test")
    with pytest.raises(UnsafeTarget, match=re.escape('not in postgres.allow_hosts')):
        database.guard(pg, "app_test", "migrate")
    database.guard(pg, "app_test", "migrate", allow_hosts=["db.ci.internal"])
    with pytest.raises(UnsafeTarget, match="does not look like a test database"):  # the host alone is not enough
        database.guard(endpoint("db.ci.internal", "app"), "app", "migrate", allow_hosts=["db.ci.internal"])


def test_the_override_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="envkit"):
        database.guard(endpoint("10.20.30.40", "app"), "app", "truncate", allow_unsafe=True)
    assert "truncate on database 'app' at 10.20.30.40:5432 allowed by ENVKIT_ALLOW_UNSAFE" in caplog.text


def test_what_envkit_owns_or_created_is_not_guarded() -> None:
    database.guard(endpoint("10.20.30.40", "app", owned=True), "app", "drop")
    database.guard(endpoint("10.20.30.40", "app"), "app", "drop", created_by_envkit=True)


def test_allow_unsafe_and_allow_hosts_come_from_the_environment(project: Project) -> None:
    project.configure()
    config = project.load()
    assert config.allow_unsafe is False and config.redis.allow_hosts == []
    import envkit

    config = envkit.load_config(project.root, environ=project.env(ENVKIT_ALLOW_UNSAFE="1",
                                                                  ENVKIT_REDIS_ALLOW_HOSTS="redis,cache.local"))
    assert config.allow_unsafe is True and config.redis.allow_hosts == ["redis", "cache.local"]


# -- wired where the operations happen ------------------------------------------------

@pytest.fixture
def guarded(project: Project):  # type: ignore[no-untyped-def]
    project.configure("""
        [migrations]
        kind = "sql"
        directory = "migrations"

        [seed]
        users = [{ username = "alice", password = "pw", role = "admin" }]
    """)
    project.write("migrations/001.sql", "CREATE TABLE users (username text, password_hash text, role text);\n")
    return project


def test_migrate_refuses_before_connecting(guarded: Project) -> None:
    with pytest.raises(UnsafeTarget, match=re.escape("refusing to migrate database 'app' on app-db.invalid")):
        migrate(guarded.load(), endpoint("app-db.invalid", "app"), {})


def test_seed_refuses_before_connecting(guarded: Project, tmp_path: Path) -> None:
    with pytest.raises(UnsafeTarget, match="refusing to seed database 'app'"):
        seed(guarded.load(), endpoint("app-db.invalid", "app"), tmp_path / "users.json", {})


def test_truncate_and_drop_refuse_before_connecting() -> None:
    pg = endpoint("app-db.invalid", "app")
    with pytest.raises(UnsafeTarget, match="refusing to truncate"):
        data.restore(pg, data.Snapshot(tables=[data.Table("public", "users", ["id"])]))
    with pytest.raises(UnsafeTarget, match="refusing to drop"):
        database.drop_database(pg, "app")


def test_the_override_lets_migrate_through(guarded: Project) -> None:
    import psycopg

    config = guarded.load(allow_unsafe=True)
    with pytest.raises(psycopg.OperationalError):  # past the guard, on to a host that does not exist
        migrate(config, endpoint("app-db.invalid", "app"), {})


def test_redis_flush_is_guarded_on_servers_envkit_did_not_start(caplog: pytest.LogCaptureFixture) -> None:
    remote = RedisEndpoint("10.20.30.40", 6379, db=2, owned=False)
    with pytest.raises(UnsafeTarget, match=re.escape('refusing to flush redis database 2 on 10.20.30.40:6379')):
        database.guard_redis(remote, "flush")
    database.guard_redis(remote, "flush", allow_hosts=["10.20.30.40"])
    database.guard_redis(RedisEndpoint("127.0.0.1", 6379, db=2, owned=False), "flush")
    database.guard_redis(RedisEndpoint("10.20.30.40", 6379, db=2, owned=True), "flush")
    with caplog.at_level(logging.WARNING, logger="envkit"):
        database.guard_redis(remote, "flush", allow_unsafe=True)
    assert "allowed by ENVKIT_ALLOW_UNSAFE" in caplog.text


def test_external_backend_refuses_a_remote_redis_before_connecting(project: Project) -> None:
    project.configure("""
        backend = "external"
        [postgres]
        enabled = false
        [redis]
        url = "redis://cache.invalid:6379/4"
    """)
    config = project.load()
    session = begin(config, "external")
    with ExitStack() as stack, pytest.raises(UnsafeTarget, match=re.escape('refusing to flush redis database 4 on cache.invalid')):
        ExternalBackend().start(config, session, stack, None)
    session.remove()


# -- parsing and naming -------------------------------------------------------------

def test_external_urls_are_parsed() -> None:
    pg = admin_endpoint("postgresql+psycopg://ci:s%40cret@db.example:6543/postgres?sslmode=disable")
    assert (pg.host, pg.port, pg.user, pg.password, pg.database, pg.owned) == ("db.example", 6543, "ci", "s@cret",
                                                                                "postgres", False)
    assert pg.admin_url.startswith("postgresql://ci:") and "sslmode=disable" in pg.admin_url
    with pytest.raises(ConfigError, match="one TCP host"):
        admin_endpoint("postgresql:///postgres?host=/var/run/postgresql")
    assert redis_endpoint("redis://:pw@cache:6390/7", 0) == RedisEndpoint("cache", 6390, 7, "pw", owned=False)
    assert redis_endpoint("redis://cache", 5).db == 5  # no index in the URL: redis.db
    with pytest.raises(ConfigError, match="redis://"):
        redis_endpoint("rediss://cache:6390/1", 0)


def test_derived_names_fit_postgres_identifiers() -> None:
    long = "a_very_long_project_name_that_goes_on_and_on_test_12345678"
    name = derived_name(long, "abc123", "gw12", "345")
    assert len(name) <= database.MAX_NAME and name.endswith("_abc123_gw12_345")
    assert derived_name("app_test", "abc123", "main") == "app_test_abc123_main"


def test_truncate_loads_parents_before_children() -> None:
    tables = {1: data.Table("public", "orders", []), 2: data.Table("public", "customers", []),
              3: data.Table("public", "users", []), 4: data.Table("public", "audit", [])}
    order = data._load_order(tables, [(1, 2), (2, 3), (4, 4), (4, 1)])
    assert order.index(3) < order.index(2) < order.index(1) < order.index(4)


def test_seeded_users_lookup() -> None:
    users = SeededUsers([{"username": "alice", "email": "a@x", "role": "admin"}, {"username": "bob", "role": "staff"}])
    assert users["alice"] is users[0] and users["a@x"] is users[0] and users[1]["username"] == "bob"
    assert users.with_role("staff") == [users[1]]
    with pytest.raises(KeyError, match="no seeded user 'carol' \\(seeded: alice, bob\\)"):
        users["carol"]
