"""The external backend against this machine's own PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379).

They stand in for GitHub Actions service containers. Every test first plants
sentinels (a database of its own with a row, a key in two Redis indexes that
envkit is not told about) and proves afterwards that they, and the server's
list of databases, are exactly as before; then it removes its sentinels.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import redis
from conftest import ENVKIT, REPO, Project, need
from forwarder import Forwarder

import envkit
from envkit import ProvisionError
from envkit.backends.external import admin_endpoint
from envkit.ports import free_port
from envkit.provision import database

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.external

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379"
ENVKIT_INDEX = 9  # the index envkit is told it may use
OTHER_INDEXES = (0, 3)  # sentinels live here
LOCK = Path(tempfile.gettempdir()) / "envkit-external-tests.lock"


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@dataclass
class Sentinels:
    token: str
    database: str
    key: str
    databases_before: set[str]

    def assert_untouched(self) -> None:
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{self.database}") as conn:
            assert conn.execute("SELECT v FROM keep").fetchall() == [(self.token,)]
        for index in OTHER_INDEXES:
            client = redis.Redis(host="127.0.0.1", port=6379, db=index)
            try:
                assert client.get(self.key) == self.token.encode(), f"sentinel key in redis db {index}"
            finally:
                client.close()
        assert server_databases() == self.databases_before  # nothing left behind, nothing removed


def server_databases() -> set[str]:
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        return {r[0] for r in conn.execute("SELECT datname FROM pg_database")}


def envkit_index() -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=6379, db=ENVKIT_INDEX, decode_responses=True)


@pytest.fixture
def sentinels() -> Iterator[Sentinels]:
    """Plant the sentinels; the server's list of databases is compared whole, so the external tests of every
    checkout on this machine take turns (a lock file): another suite's databases come and go meanwhile."""
    with open(LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield from _sentinels()


def _sentinels() -> Iterator[Sentinels]:
    need(_answers(5432) and _answers(6379), "the machine's PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379")
    with envkit_index() as client:  # the cleanup below empties it: only if nothing but these tests writes there
        assert client.dbsize() == 0, f"redis db {ENVKIT_INDEX} on 127.0.0.1:6379 holds keys these tests did not write"
    token = secrets.token_hex(6)
    name = f"envkit_sentinel_{token}"
    key = f"envkit-sentinel:{token}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{name}") as conn:
            conn.execute("CREATE TABLE keep (v text)")
            conn.execute("INSERT INTO keep VALUES (%s)", (token,))
        for index in OTHER_INDEXES:
            with redis.Redis(host="127.0.0.1", port=6379, db=index) as client:
                client.set(key, token)
        yield Sentinels(token, name, key, server_databases())
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        for index in OTHER_INDEXES:
            with redis.Redis(host="127.0.0.1", port=6379, db=index) as client:
                client.delete(key)
        with envkit_index() as client:
            client.flushdb()  # only if a failed test left something in envkit's own index


@pytest.fixture
def external_project(project: Project) -> Project:
    project.configure(f"""
        backend = "external"

        [postgres]
        url = "{ADMIN_URL}"

        [redis]
        url = "{REDIS_URL}"
        db = {ENVKIT_INDEX}

        [migrations]
        kind = "sql"
        directory = "migrations"

        [seed]
        users = [{{ username = "alice", password = "alice-pw", role = "admin" }}]
    """)
    project.write("migrations/001.sql", "CREATE TABLE users (id serial PRIMARY KEY, username text, password_hash text, role text);\n")
    return project


def test_a_fresh_database_is_created_used_and_dropped(sentinels: Sentinels, external_project: Project) -> None:
    config = external_project.load()
    with envkit.environment(config) as env:
        pg = env.running.postgres
        assert pg is not None and not pg.owned
        assert pg.database == f"proj_test_{env.session.id}" and pg.database not in sentinels.databases_before
        assert (pg.host, pg.port, pg.user) == ("127.0.0.1", 5432, "postgres")
        assert env.redis_url == f"redis://127.0.0.1:6379/{ENVKIT_INDEX}"
        with psycopg.connect(pg.libpq()) as conn:  # migrated and seeded
            assert conn.execute("SELECT username, role FROM users").fetchall() == [("alice", "admin")]
        with redis.Redis.from_url(env.redis_url) as client:
            client.set("written-by-the-tests", "1")
        assert env.users()[0]["password"] == "alice-pw"
    assert envkit_index().dbsize() == 0  # flushed: the one index envkit was told it may use
    sentinels.assert_untouched()


def test_envkit_test_with_database_url_runs_the_demo_on_a_fresh_database(sentinels: Sentinels, tmp_path: Path,
                                                                       project: Project) -> None:
    demo = tmp_path / "demo"
    shutil.copytree(REPO / "examples" / "demo", demo, ignore=shutil.ignore_patterns(".envkit", "__pycache__", ".env.test"))
    (demo / "tests" / "test_zz_where.py").write_text(
        "import os, pathlib\nfrom sqlalchemy import text\n\n\n"
        "def test_where(engine):\n"
        "    with engine.connect() as conn:\n"
        "        name = conn.execute(text('SELECT current_database()')).scalar()\n"
        "    pathlib.Path(os.environ['WHERE_FILE']).write_text(name)\n"
    )
    where = tmp_path / "where.txt"
    env = project.env(DATABASE_URL=ADMIN_URL, REDIS_URL=f"{REDIS_URL}/{ENVKIT_INDEX}", CI="true", WHERE_FILE=str(where))
    result = subprocess.run([*ENVKIT, "test", "--backend", "external", "--", "-p", "no:cacheprovider"],
                            cwd=demo, env=env, text=True, capture_output=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "13 passed" in result.stdout
    used = where.read_text()
    assert used.startswith("demo_test_") and used not in sentinels.databases_before  # fresh, and now gone
    assert envkit_index().dbsize() == 0
    sentinels.assert_untouched()


def test_down_from_another_process_drops_what_envkit_made(sentinels: Sentinels, external_project: Project) -> None:
    external_project.cli("up", "-q", check=True)
    state = json.loads((external_project.root / ".envkit" / "state.json").read_text())
    created = state["created_databases"]
    assert created == [created[0], f"{created[0]}_template"] and set(created) <= server_databases()
    admin = admin_endpoint(ADMIN_URL)
    # what the pytest plugin derives from it (a per-process copy) when its run is killed before cleaning up
    leftover = f"{created[0]}_0a1b2c_gw0"
    database.clone_database(admin, leftover, created[0])
    envkit_index().set("left-by-a-killed-run", "1")

    external_project.cli("down", "-q", check=True)
    assert not {*created, leftover} & server_databases()
    assert envkit_index().dbsize() == 0
    sentinels.assert_untouched()


def test_down_drops_only_the_databases_envkit_marked_never_by_record_or_prefix(sentinels: Sentinels,
                                                                               external_project: Project) -> None:
    """state.json edited to list a database envkit did not create: refused; a look-alike copy name: left alone."""
    external_project.cli("up", "-q", check=True)
    state_file = external_project.root / ".envkit" / "state.json"
    state = json.loads(state_file.read_text())
    real = state["created_databases"][0]
    app = f"ekapp_{secrets.token_hex(4)}"  # someone's database: no 'test' in its name, not envkit's
    planted = [app, f"{app}_keep", f"{real}_0a1b2c_gw0"]  # the last: named like a plugin copy, but not one
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        for name in planted:
            conn.execute(f'CREATE DATABASE "{name}"')
    try:
        state["created_databases"] = [real, app]
        state_file.write_text(json.dumps(state))
        result = external_project.cli("down")
        assert result.returncode == 3, result.stderr
        assert f"refusing to drop database '{app}'" in result.stderr and "envkit did not create it" in result.stderr
        assert f"left database {planted[2]}" in result.stderr
        left = server_databases()
        assert set(planted) <= left and real not in left
        assert not state_file.exists()  # the rest was torn down: nothing more to finish
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            for name in planted:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    sentinels.assert_untouched()


def test_down_with_the_server_unreachable_keeps_the_state(sentinels: Sentinels, external_project: Project) -> None:
    """The server goes away (a forwarder in front of it stops): `down` fails, keeps the record, finishes later."""
    server = Forwarder(free_port(), ("127.0.0.1", 5432)).start()
    try:
        external_project.cli("up", "-q", env=external_project.env(
            ENVKIT_POSTGRES_URL=f"postgresql://postgres@{server.url}/postgres"), check=True)
        created = json.loads((external_project.root / ".envkit" / "state.json").read_text())["created_databases"]
        server.stop()
        result = external_project.cli("down")
        assert result.returncode == 3 and "could not finish tearing down" in result.stderr, result.stderr
        assert "torn down" not in result.stderr.replace("tearing down", "")
        assert (external_project.root / ".envkit" / "state.json").exists() and set(created) <= server_databases()
        server.start()
        external_project.cli("down", check=True)
        assert not set(created) & server_databases()
        assert not (external_project.root / ".envkit" / "state.json").exists()
    finally:
        server.stop()
    sentinels.assert_untouched()


def test_a_redis_index_that_holds_keys_is_refused_unless_allowed(sentinels: Sentinels, external_project: Project) -> None:
    """envkit empties the index it uses: one that holds someone's keys when it starts is refused, and kept."""
    keys = {f"envkit-test-owned:{sentinels.token}:{i}": str(i) for i in range(3)}  # index 9 is empty: the fixture checked
    with envkit_index() as client:
        client.mset(keys)
    try:
        result = external_project.cli("up")
        assert result.returncode == 3, result.stderr
        assert f"redis db {ENVKIT_INDEX} on 127.0.0.1:6379 already holds 3 keys" in result.stderr
        assert "redis.allow_flush" in result.stderr
        with envkit_index() as client:
            assert client.mget(list(keys)) == list(keys.values()) and client.dbsize() == 3
        assert not (external_project.root / ".envkit" / "state.json").exists()
        assert server_databases() == sentinels.databases_before

        allowed = external_project.cli("up", env=external_project.env(ENVKIT_REDIS_ALLOW_FLUSH="1"))
        assert allowed.returncode == 0 and "holds 3 keys" in allowed.stderr, allowed.stderr
        external_project.cli("down", check=True)
        assert envkit_index().dbsize() == 0  # emptied, as allowed: only the keys this test wrote were there
    finally:
        with envkit_index() as client:
            client.delete(*keys)
    sentinels.assert_untouched()


def test_an_existing_database_is_never_adopted(sentinels: Sentinels) -> None:
    with pytest.raises(ProvisionError, match=f"database '{sentinels.database}' already exists .* never adopts"):
        database.create_database(admin_endpoint(ADMIN_URL), sentinels.database, exist_ok=False)
    sentinels.assert_untouched()


def test_wrong_credentials_fail_fast(sentinels: Sentinels, external_project: Project) -> None:
    config = external_project.load(**{"postgres.url": "postgresql://no_such_role@127.0.0.1:5432/postgres"})
    with pytest.raises(envkit.ServiceFailed, match="refused the URL given to the external backend"):
        envkit.up(config)
    sentinels.assert_untouched()


def test_xdist_workers_share_the_one_redis_index_under_prefixes(sentinels: Sentinels, external_project: Project,
                                                                pytester: pytest.Pytester,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    external_project.cli("up", "-q", check=True)
    try:
        for name in list(os.environ):
            if name.startswith(("ENVKIT_", "PG")) or name in ("DATABASE_URL", "REDIS_URL", "CI"):
                monkeypatch.delenv(name)
        monkeypatch.setenv("ENVKIT_STATE_FILE", str(external_project.root / ".envkit" / "state.json"))
        pytester.makepyfile(test_prefix="""
            import os, time
            import pytest
            from sqlalchemy import text

            @pytest.mark.parametrize("i", range(4))
            def test_same_key(i, redis_client, envkit_env, worker_id, db_session):
                assert envkit_env.redis.db == 9 and worker_id in envkit_env.redis_prefix
                assert os.environ["ENVKIT_REDIS_PREFIX"] == envkit_env.redis_prefix
                key = envkit_env.redis_key("same")
                redis_client.set(key, worker_id)
                time.sleep(0.2)
                assert redis_client.get(key) == worker_id
                assert redis_client.keys(envkit_env.redis_key("*")) == [key]
                assert db_session.execute(text("SELECT count(*) FROM users")).scalar() == 1
        """)
        result = pytester.runpytest_subprocess("-n", "2", "-p", "no:randomly")
        result.assert_outcomes(passed=4)
        assert envkit_index().dbsize() == 0  # each worker deleted its own keys, and only those
    finally:
        external_project.cli("down", "-q")
    sentinels.assert_untouched()
