"""The pytest plugin, through pytester: sample projects' tests run in a subprocess with the plugin loaded.

Most runs share one native environment (brought up once for this module with
``envkit up``, handed to each run through ``ENVKIT_STATE_FILE`` as ``envkit
test`` does); the runs that test bringing an environment up, or its absence,
have their own.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from conftest import Project, wait_until

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.native

INI = """
[pytest]
filterwarnings = error
asyncio_default_fixture_loop_scope = function
"""

ENVKIT_TOML = """
[migrations]
kind = "sql"
directory = "migrations"

[seed]
table = "users"
users = [
  { username = "alice", email = "alice@example.com", password = "alice-pw", role = "admin" },
  { username = "bob", email = "bob@example.com", password = "bob-pw", role = "staff" },
]
"""

MIGRATION = """
CREATE TABLE users (
  id serial PRIMARY KEY, username text UNIQUE NOT NULL, email text NOT NULL,
  password_hash text NOT NULL, role text NOT NULL
);
CREATE TABLE items (id serial PRIMARY KEY, name text UNIQUE NOT NULL, owner_id int REFERENCES users (id));
"""

APP = '''
"""A stand-in for application code: it commits its own transactions."""
from sqlalchemy import text


def add_item(session, name):
    session.execute(text("INSERT INTO items (name) VALUES (:name)"), {"name": name})
    session.commit()


def count_items(session):
    return session.execute(text("SELECT count(*) FROM items")).scalar()
'''


@dataclass
class SharedEnv:
    project: Project
    state_file: Path
    exports: dict[str, str]

    def databases(self) -> set[str]:
        with self.connect("postgres") as conn:
            return {r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE NOT datistemplate")}

    def connect(self, database: str | None = None) -> psycopg.Connection:
        e = self.exports
        return psycopg.connect(host=e["PGHOST"], port=e["PGPORT"], user=e["PGUSER"], password=e["PGPASSWORD"],
                               dbname=database or e["PGDATABASE"], autocommit=True)

    def count(self, table: str) -> int:
        with self.connect() as conn:
            return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # type: ignore[index]


def write_project(project: Project) -> None:
    project.configure(ENVKIT_TOML)
    project.write("migrations/001_schema.sql", MIGRATION)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, shared_cache: Path) -> Iterator[SharedEnv]:
    root = tmp_path_factory.mktemp("plugin-env") / "plug"
    root.mkdir()
    project = Project(root, shared_cache)
    write_project(project)
    project.cli("up", "-q", "--backend", "native", check=True)
    try:
        state_file = root / ".envkit" / "state.json"
        yield SharedEnv(project, state_file, json.loads(state_file.read_text())["exports"])
    finally:
        project.cli("down", "-q")


@pytest.fixture
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Nothing of this process's environment decides what the inner runs find."""
    for name in list(os.environ):
        if name.startswith(("ENVKIT_", "PG", "PYTEST_XDIST")) or name in ("DATABASE_URL", "REDIS_URL", "CI"):
            monkeypatch.delenv(name)
    return monkeypatch


@pytest.fixture
def handed_over(shared: SharedEnv, clean_environ: pytest.MonkeyPatch, pytester: pytest.Pytester) -> SharedEnv:
    """The shared environment handed to the inner run as `envkit test` does."""
    clean_environ.setenv("ENVKIT_STATE_FILE", str(shared.state_file))
    pytester.makefile(".ini", pytest=INI)
    pytester.makepyfile(app=APP)
    return shared


def test_rollback_truncate_clone_redis_users_in_one_run(handed_over: SharedEnv, pytester: pytest.Pytester) -> None:
    shared = handed_over
    before = shared.databases()
    pytester.makeconftest('''
        def pytest_envkit_auth_headers(user, env):
            return {"Authorization": "Basic " + user["username"] + ":" + user["password"], "X-Role": user["role"]}
    ''')
    pytester.makepyfile(test_async='''
        import pytest
        from sqlalchemy import text

        pytestmark = pytest.mark.asyncio

        async def test_async_commit_1(async_db_session):
            await async_db_session.execute(text("INSERT INTO items (name) VALUES ('async')"))
            await async_db_session.commit()
            assert (await async_db_session.execute(text("SELECT count(*) FROM items"))).scalar() == 1

        async def test_async_commit_2(async_db_session):
            assert (await async_db_session.execute(text("SELECT count(*) FROM items"))).scalar() == 0
    ''')
    pytester.makepyfile(test_sync='''
        import os
        import bcrypt
        import pytest
        from sqlalchemy import create_engine, text
        from app import add_item, count_items

        seen = {}

        def test_app_commit_1(db_session, envkit_env):
            add_item(db_session, "widget")
            assert count_items(db_session) == 1
            other = create_engine(envkit_env.database_url)
            with other.connect() as conn:  # committed only inside the test's outer transaction
                assert conn.execute(text("SELECT count(*) FROM items")).scalar() == 0
            other.dispose()

        def test_app_commit_2(db_session):
            assert count_items(db_session) == 0
            add_item(db_session, "widget")  # the unique name is free again

        def test_app_rollback_keeps_what_it_committed(db_session):
            add_item(db_session, "kept")
            db_session.execute(text("INSERT INTO items (name) VALUES ('dropped')"))
            db_session.rollback()
            assert [r[0] for r in db_session.execute(text("SELECT name FROM items"))] == ["kept"]

        def test_process_database(envkit_env, db_connection):
            name = db_connection.execute(text("SELECT current_database()")).scalar()
            assert name == envkit_env.postgres.database == os.environ["PGDATABASE"]
            assert envkit_env.template_database == "proj_test_template" and envkit_env.worker == "main"
            assert name.startswith("proj_test_") and name.endswith("_main")
            assert os.environ["DATABASE_URL"] == envkit_env.database_url
            assert os.environ["REDIS_URL"] == envkit_env.redis_url

        @pytest.mark.envkit(isolation="truncate")
        def test_truncate_1(db_session, envkit_env):
            add_item(db_session, "real")
            seen["user_id"] = db_session.execute(text(
                "INSERT INTO users (username, email, password_hash, role) VALUES ('eve', 'e@x', 'x', 'staff') RETURNING id"
            )).scalar()
            db_session.commit()
            other = create_engine(envkit_env.database_url)
            with other.connect() as conn:  # a real commit
                assert conn.execute(text("SELECT count(*) FROM items")).scalar() == 1
            other.dispose()

        @pytest.mark.envkit(isolation="truncate")
        def test_truncate_2(db_session):
            assert count_items(db_session) == 0
            assert db_session.execute(text("SELECT count(*) FROM users")).scalar() == 2  # reseeded
            again = db_session.execute(text(
                "INSERT INTO users (username, email, password_hash, role) VALUES ('eve', 'e@x', 'x', 'staff') RETURNING id"
            )).scalar()
            assert again == seen["user_id"]  # sequences were put back too
            db_session.commit()

        @pytest.mark.envkit(isolation="truncate")
        def test_truncate_3_drops_the_plugins_connection(db_session):
            # the plugin reseeds over one connection it keeps: a test that terminates it must not break the next
            killed = db_session.execute(text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()")).scalar()
            assert killed >= 1
            add_item(db_session, "after the kill")
            db_session.commit()

        @pytest.mark.envkit(isolation="truncate")
        def test_truncate_4(db_session):
            assert count_items(db_session) == 0

        @pytest.mark.envkit(isolation="clone")
        def test_clone_1(envkit_db, db_session, envkit_env):
            assert envkit_db.postgres.database != envkit_env.postgres.database
            assert os.environ["PGDATABASE"] == envkit_db.postgres.database
            add_item(db_session, "cloned")
            other = create_engine(envkit_db.url)
            with other.connect() as conn:
                assert conn.execute(text("SELECT count(*) FROM items")).scalar() == 1
            other.dispose()
            seen["clone"] = envkit_db.postgres.database

        def test_after_clone(db_session):
            import time
            assert count_items(db_session) == 0
            for _ in range(200):  # dropped in the background (envkit.clones)
                gone = db_session.execute(text("SELECT count(*) FROM pg_database WHERE datname = :n"),
                                          {"n": seen["clone"]}).scalar() == 0
                if gone:
                    break
                time.sleep(0.05)
            assert gone

        @pytest.mark.envkit
        def test_marker_only():
            assert "_main" in os.environ["PGDATABASE"]

        def test_redis_1(redis_client):
            redis_client.set("key", "value")
            assert redis_client.get("key") == "value"

        def test_redis_2(redis_client):
            assert redis_client.dbsize() == 0

        def test_users_and_headers(seeded_users, auth_headers, db_session):
            assert seeded_users["alice"]["password"] == "alice-pw" and seeded_users["alice"]["role"] == "admin"
            assert [u["username"] for u in seeded_users.with_role("staff")] == ["bob"]
            assert auth_headers("bob") == {"Authorization": "Basic bob:bob-pw", "X-Role": "staff"}
            stored = db_session.execute(text("SELECT password_hash FROM users WHERE username = 'alice'")).scalar()
            assert bcrypt.checkpw(b"alice-pw", stored.encode())
    ''')
    result = pytester.runpytest_subprocess("-v", "-p", "no:randomly")
    result.assert_outcomes(passed=16)
    assert "envkit: " in result.stdout.str() and "handed over by envkit" in result.stdout.str()
    assert shared.databases() == before  # the process's database and the clone were dropped
    assert (shared.count("items"), shared.count("users")) == (0, 2)  # the template was never written


def test_xdist_workers_write_the_same_rows_and_keys(handed_over: SharedEnv, pytester: pytest.Pytester,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    shared = handed_over
    before = shared.databases()
    out = pytester.mkdir("out")
    monkeypatch.setenv("OUT_DIR", str(out))
    pytester.makepyfile(test_xdist='''
        import json, os, time
        import pytest
        from sqlalchemy import text

        # real commits: workers sharing a database would collide on the unique name or see two rows
        pytestmark = pytest.mark.envkit(isolation="truncate")

        @pytest.mark.parametrize("i", range(6))
        def test_same_rows_and_keys(i, db_session, redis_client, envkit_env, worker_id):
            db_session.execute(text("INSERT INTO items (name) VALUES ('same')"))
            db_session.commit()
            redis_client.set("same-key", worker_id)
            time.sleep(0.2)
            assert db_session.execute(text("SELECT count(*) FROM items")).scalar() == 1
            assert redis_client.get("same-key") == worker_id and redis_client.dbsize() == 1
            record = {"worker": worker_id, "database": db_session.execute(text("SELECT current_database()")).scalar(),
                      "redis_db": envkit_env.redis.db, "redis_url": os.environ["REDIS_URL"]}
            with open(os.path.join(os.environ["OUT_DIR"], f"{worker_id}-{i}.json"), "w") as fh:
                json.dump(record, fh)
    ''')
    result = pytester.runpytest_subprocess("-n", "2", "-p", "no:randomly")
    result.assert_outcomes(passed=6)
    records = [json.loads(p.read_text()) for p in out.glob("*.json")]
    by_worker = {r["worker"]: r for r in records}
    assert set(by_worker) == {"gw0", "gw1"}, records
    assert len({r["database"] for r in by_worker.values()}) == 2
    assert len({r["redis_db"] for r in by_worker.values()}) == 2
    assert all(r["redis_url"].endswith(f"/{r['redis_db']}") for r in records)
    assert shared.databases() == before  # both workers' databases dropped
    assert shared.count("items") == 0


def test_a_session_on_the_environments_database_blocks_nothing_and_the_template_refuses_tests(
        handed_over: SharedEnv, pytester: pytest.Pytester) -> None:
    """A psql shell (or a running app) on the `envkit up` database: clones come from the template, which nobody can use."""
    shared = handed_over
    pytester.makepyfile(test_busy='''
        import os
        import psycopg
        import pytest
        from sqlalchemy import text

        def test_own_database(db_session, envkit_env):
            assert envkit_env.postgres.database != envkit_env.template_database
            db_session.execute(text("INSERT INTO items (name) VALUES ('x')"))
            db_session.commit()

        @pytest.mark.envkit(isolation="clone")
        def test_clone(db_session):
            assert db_session.execute(text("SELECT count(*) FROM users")).scalar() == 2

        def test_template_refuses_connections(envkit_env):
            with pytest.raises(psycopg.OperationalError, match="not currently accepting connections"):
                psycopg.connect(envkit_env.postgres.libpq(envkit_env.template_database))
    ''')
    with shared.connect() as conn:  # somebody else's session on the environment's database
        result = pytester.runpytest_subprocess("-p", "no:randomly")
        conn.execute("INSERT INTO items (name) VALUES ('by hand')")  # and it stays writable, for `envkit run` and psql
        conn.execute("DELETE FROM items")
    result.assert_outcomes(passed=3)
    assert shared.count("items") == 0


def test_skips_without_an_environment_and_fails_in_ci(clean_environ: pytest.MonkeyPatch, pytester: pytest.Pytester) -> None:
    pytester.makefile(".ini", pytest=INI)
    pytester.makepyfile(test_needs='''
        import pytest

        def test_database(db_session):
            pass

        @pytest.mark.envkit
        def test_marked():
            pass

        def test_plain():
            pass
    ''')
    result = pytester.runpytest_subprocess("-rs")
    result.assert_outcomes(passed=1, skipped=2)
    result.stdout.fnmatch_lines(["*no envkit environment: run the tests with `envkit test`*--envkit*"])

    clean_environ.setenv("CI", "true")
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=1, errors=2)  # failed in setup: pytest reports an error
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*failing instead of skipping: CI or ENVKIT_REQUIRE is set*"])

    # asked for with --envkit, an environment that cannot come up stops the run with envkit's message
    pytester.makefile(".toml", envkit='[postgres]\nprot = 5432\n')
    result = pytester.runpytest_subprocess("--envkit")
    assert result.ret == 3
    assert "envkit: " in result.stderr.str() and "unknown key 'postgres.prot'; did you mean 'postgres.port'?" in result.stderr.str()


def test_envkit_brings_up_keeps_and_reuses(clean_environ: pytest.MonkeyPatch, pytester: pytest.Pytester,
                                           shared_cache: Path) -> None:
    project = Project(pytester.path, shared_cache)
    write_project(project)
    pytester.makefile(".ini", pytest=INI)
    pytester.makepyfile(test_label='''
        import os
        from pathlib import Path
        from sqlalchemy import text

        def test_label(envkit_env, db_session):
            assert db_session.execute(text("SELECT count(*) FROM users")).scalar() == 2
            Path(os.environ["LABEL_FILE"]).write_text(envkit_env.name)
    ''')
    label_file = pytester.path / "label.txt"
    clean_environ.setenv("LABEL_FILE", str(label_file))
    state_file = pytester.path / ".envkit" / "state.json"
    try:
        result = pytester.runpytest_subprocess("--envkit", "--envkit-backend", "native", "--envkit-keep")
        result.assert_outcomes(passed=1)
        assert "left" in result.stdout.str() and state_file.exists()
        kept = label_file.read_text()
        assert json.loads(state_file.read_text())["detached"] is True

        # as after `envkit up`: a plain run finds and reuses it, and leaves it up
        label_file.unlink()
        result = pytester.runpytest_subprocess()
        result.assert_outcomes(passed=1)
        assert label_file.read_text() == kept
        assert "left up by envkit up" in result.stdout.str()
        assert state_file.exists()

        # a migration changed since: reusing it would test against the old schema, so the run stops before any
        # conftest is imported, and says why
        project.write("migrations/002_more.sql", "ALTER TABLE users ADD COLUMN nickname text;")
        result = pytester.runpytest_subprocess()
        said = result.stdout.str() + result.stderr.str()
        assert result.ret == 3, said
        assert "migrations/002_more.sql" in said and "envkit up --replace" in said and "passed" not in said, said
    finally:
        project.cli("down", "-q")
    assert not state_file.exists()


def test_envkit_with_xdist_brings_up_once_and_tears_down(clean_environ: pytest.MonkeyPatch, pytester: pytest.Pytester,
                                                         shared_cache: Path) -> None:
    project = Project(pytester.path, shared_cache)
    write_project(project)
    pytester.makefile(".ini", pytest=INI)
    out = pytester.mkdir("out")
    clean_environ.setenv("OUT_DIR", str(out))
    pytester.makepyfile(test_workers='''
        import os
        import pytest

        @pytest.mark.parametrize("i", range(4))
        def test_worker(i, envkit_env, worker_id):
            with open(os.path.join(os.environ["OUT_DIR"], worker_id), "a") as fh:
                fh.write(envkit_env.name + " " + envkit_env.postgres.database + "\\n")
    ''')
    result = pytester.runpytest_subprocess("-n", "2", "--envkit", "--envkit-backend", "native")
    result.assert_outcomes(passed=4)
    lines = {p.name: set(p.read_text().split("\n")) - {""} for p in out.iterdir()}
    assert set(lines) == {"gw0", "gw1"}
    labels = {line.split()[0] for found in lines.values() for line in found}
    databases = {line.split()[1] for found in lines.values() for line in found}
    assert len(labels) == 1 and len(databases) == 2  # one environment, a database per worker
    assert not (pytester.path / ".envkit" / "state.json").exists()  # torn down (no_leaks checks the processes)


def test_report_shows_what_is_running(handed_over: SharedEnv, pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_nothing="def test_nothing():\n    pass\n")
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["envkit: proj-* (native backend, handed over by envkit); database proj_test_*_main"])


def test_demo_app_under_envkit_test_with_two_workers(shared_cache: Path, tmp_path: Path) -> None:
    """The example app's own conftest reads DATABASE_URL and REDIS_URL: the plugin points them at each worker's."""
    import shutil

    from conftest import ENVKIT, REPO

    demo = tmp_path / "demo"
    shutil.copytree(REPO / "examples" / "demo", demo, ignore=shutil.ignore_patterns(".envkit", "__pycache__", ".env.test"))
    project = Project(demo, shared_cache)
    config = demo / "envkit.toml"
    config.write_text(f'cache_dir = "{shared_cache}"\n{config.read_text()}\n[postgres]\nport = "auto"\n\n[redis]\nport = "auto"\n')
    result = subprocess.run([*ENVKIT, "test", "--backend", "native", "--", "-n", "2", "-p", "no:cacheprovider"],
                            cwd=demo, env=project.env(CI="true"), text=True, capture_output=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "12 passed" in result.stdout


def test_a_projects_own_fixture_names_win_and_envkits_stay_reachable(handed_over: SharedEnv, pytester: pytest.Pytester) -> None:
    pytester.makeconftest('''
        import pytest

        @pytest.fixture
        def db_session():
            return "the project's own"

        @pytest.fixture
        def db_connection():  # envkit's own fixtures must not pick this one up
            raise AssertionError("envkit used the project's db_connection")

        @pytest.fixture
        def auth_headers():
            return {"X-Mine": "1"}

        def pytest_envkit_auth_headers(user, env):
            return {"X-User": user["username"]}
    ''')
    pytester.makepyfile(test_names='''
        import pytest
        from sqlalchemy import text
        from app import add_item, count_items

        def test_project_names(db_session, auth_headers):
            assert db_session == "the project's own" and auth_headers == {"X-Mine": "1"}

        def test_envkit_names(envkit_db_session, envkit_auth_headers, envkit_seeded_users, envkit_redis_client,
                              envkit_db_connection):
            add_item(envkit_db_session, "mine")
            assert count_items(envkit_db_session) == 1
            assert envkit_auth_headers("alice") == {"X-User": "alice"}
            assert envkit_seeded_users["bob"]["role"] == "staff"
            envkit_redis_client.set("k", "v")
            assert envkit_db_connection.execute(text("SELECT 1")).scalar() == 1

        @pytest.mark.asyncio
        async def test_async_name(envkit_async_db_session, async_db_session):
            assert envkit_async_db_session is async_db_session
            assert (await envkit_async_db_session.execute(text("SELECT count(*) FROM items"))).scalar() == 0
    ''')
    result = pytester.runpytest_subprocess("-p", "no:randomly")
    result.assert_outcomes(passed=3)
    assert handed_over.count("items") == 0


def test_clone_isolation_from_the_pool(handed_over: SharedEnv, pytester: pytest.Pytester) -> None:
    """Clones prepared ahead: each test still gets a fresh one of its own; the pool is bounded; nothing is left."""
    shared = handed_over
    before = shared.databases()
    pytester.makepyfile(test_pool='''
        import datetime
        import os
        import pytest
        from sqlalchemy import text
        from app import add_item, count_items

        pytestmark = pytest.mark.envkit(isolation="clone")
        seen = []

        @pytest.mark.parametrize("i", range(12))
        def test_fresh(i, db_session, envkit_db, envkit_env):
            started = datetime.datetime.now(datetime.timezone.utc)
            assert count_items(db_session) == 0  # nothing of the tests before
            # its first connection was opened ahead, with the clone; any further one is new
            pid, backend_start = db_session.execute(text(
                "SELECT pid, backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()")).one()
            assert backend_start < started
            with envkit_db.engine.connect() as other:
                assert other.execute(text("SELECT pg_backend_pid()")).scalar() != pid
            add_item(db_session, "same name every time")
            db_session.execute(text("CREATE TABLE made_by_the_test (x int)"))
            db_session.commit()
            name = envkit_db.postgres.database
            assert name not in seen and os.environ["PGDATABASE"] == name
            seen.append(name)
            run = envkit_env.postgres.database.rsplit("_", 1)[0] + "_"
            alive = db_session.execute(text("SELECT count(*) FROM pg_database WHERE datname LIKE :p"),
                                       {"p": run + "%"}).scalar()
            assert alive <= 1 + 4 + 4 + 2  # this process's, waiting, being dropped, under way
    ''')
    result = pytester.runpytest_subprocess("-p", "no:randomly")
    result.assert_outcomes(passed=12)
    assert shared.databases() == before
    assert (shared.count("items"), shared.count("users")) == (0, 2)


def test_a_clone_engine_keeps_what_its_test_gives_back_and_a_failed_warm_up_is_harmless(
        shared: SharedEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine a clone test gets (isolation.opened_engine, run in the pool's threads): one connection open
    ahead, connections given back kept for the next connect() rather than closed on the test's thread, all of
    them closed by dispose(); a catalog warm-up that fails leaves a usable connection."""
    from sqlalchemy import text

    from envkit import isolation

    e = shared.exports
    template = json.loads(shared.state_file.read_text())["template_database"]
    name = f"{template}_engine_probe"
    url = f"postgresql+psycopg://{e['PGUSER']}:{e['PGPASSWORD']}@{e['PGHOST']}:{e['PGPORT']}/{name}"

    def backends() -> int:
        with shared.connect("postgres") as conn:
            return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (name,)).fetchone()[0]

    with shared.connect("postgres") as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    try:
        engine = isolation.opened_engine(url)
        assert backends() == 1  # opened ahead
        with engine.connect() as a, engine.connect() as b:
            pids = {a.execute(text("SELECT pg_backend_pid()")).scalar(), b.execute(text("SELECT pg_backend_pid()")).scalar()}
            a.execute(text("INSERT INTO items (name) VALUES ('left uncommitted')"))
        assert len(pids) == 2 and backends() == 2  # both kept, none closed on return
        with engine.connect() as c:
            assert c.execute(text("SELECT pg_backend_pid()")).scalar() in pids
            assert c.execute(text("SELECT count(*) FROM items")).scalar() == 0  # rolled back when given back
        engine.dispose()
        assert wait_until(lambda: backends() == 0)

        monkeypatch.setattr(isolation, "_WARM_CATALOG", "SELECT 1 FROM no_such_table")
        engine = isolation.opened_engine(url)
        with engine.connect() as c:
            assert c.execute(text("SELECT count(*) FROM users")).scalar() == 2
        engine.dispose()
    finally:
        with shared.connect("postgres") as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    assert name not in shared.databases()
