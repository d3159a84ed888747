"""The hand-off to pytest: what a project's own code reads at import, and the template it must never write.

Real pytest runs (subprocesses) of a project whose conftest reads DATABASE_URL
at import, as settings built at import do, writes through it, and deletes
every user at teardown, as real suites do. Under `envkit up` + plain pytest,
`envkit test` and `pytest --envkit`, alone and with two xdist workers: each
process must see a database of its own from its first line, the fixtures
must use that same database, and the environment's template and database
must be unchanged afterwards.
"""

from __future__ import annotations

import importlib.util
import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from conftest import ENVKIT, Project, need

from envkit.provision import database
from envkit.workspace import endpoints, template_of

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.native

INI = """
[pytest]
filterwarnings = error
asyncio_default_fixture_loop_scope = function
"""

CONFIG = """
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
CREATE TABLE items (id serial PRIMARY KEY, name text UNIQUE NOT NULL);
"""

# settings read at import (pydantic-settings in app/core/config.py), a write at import, a teardown deleting every user
CONFTEST = '''
import json, os
import psycopg
import pytest

URL = os.environ.get("DATABASE_URL", "")
assert URL.startswith("postgresql+psycopg://") and "nowhere" not in URL, f"DATABASE_URL at import: {URL!r}"
LIBPQ = URL.replace("postgresql+psycopg://", "postgresql://")
with psycopg.connect(LIBPQ, autocommit=True) as conn:
    AT_IMPORT = conn.execute("SELECT current_database()").fetchone()[0]
    conn.execute("INSERT INTO items (name) VALUES (%s)", (f"conftest-{os.getpid()}",))
WHO = os.environ.get("PYTEST_XDIST_WORKER", "main")
with open(os.path.join(os.environ["OUT_DIR"], f"{WHO}-{os.getpid()}.json"), "w") as fh:
    json.dump({"who": WHO, "database": AT_IMPORT, "pgdatabase": os.environ["PGDATABASE"],
               "from_env": os.environ.get("APP_GREETING")}, fh)


@pytest.fixture(scope="session", autouse=True)
def delete_every_user_at_teardown():
    yield
    with psycopg.connect(LIBPQ, autocommit=True) as conn:
        conn.execute("DELETE FROM users")


@pytest.fixture(autouse=True)
def same_database_as_at_import(envkit_env):
    assert envkit_env.postgres.database == AT_IMPORT == os.environ["PGDATABASE"]
'''

TESTS = '''
import pytest
from sqlalchemy import text

@pytest.mark.parametrize("i", range(4))
def test_sees_its_own_import_time_write(i, db_session):
    names = db_session.execute(text("SELECT name FROM items")).scalars().all()
    assert len(names) == 1 and names[0].startswith("conftest-"), names  # its process's write, nobody else's
    assert db_session.execute(text("SELECT count(*) FROM users")).scalar() == 2
    db_session.execute(text("DELETE FROM users"))
    db_session.commit()

@pytest.mark.envkit(isolation="truncate")
def test_commits_for_real(db_session):
    db_session.execute(text("INSERT INTO items (name) VALUES ('committed')"))
    db_session.commit()
'''


def write_project(project: Project, pytester: pytest.Pytester) -> None:
    need(importlib.util.find_spec("pytest_env") is not None, "pytest-env is not installed (pip install -e '.[dev]')")
    project.configure(CONFIG + '\n[env]\nAPP_GREETING = "hello from envkit"\n')
    project.write("migrations/001_schema.sql", MIGRATION)
    # what would mislead the application: the shell's and the repository's own settings, and pytest-env's
    project.write(".env", "DATABASE_URL=postgresql+psycopg://dev@127.0.0.1:1/nowhere\n")
    pytester.makefile(".ini", pytest=INI + "env =\n    DATABASE_URL=postgresql+psycopg://pytest-env@127.0.0.1:1/nowhere\n"
                      "    APP_GREETING=from pytest-env\n")
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_app=TESTS)


def clean_env(project: Project, out: Path) -> dict[str, str]:
    env = {k: v for k, v in project.env().items() if not k.startswith(("PG", "PYTEST_XDIST")) and k != "CI"}
    env.update(OUT_DIR=str(out), DATABASE_URL="postgresql+psycopg://shell@127.0.0.1:1/nowhere")
    return env


def contents(state_file: Path) -> dict[str, object]:
    """Rows of the environment's database and of its template (read from a throwaway clone: it refuses connections)."""
    from envkit.state import read

    session = read(state_file)
    assert session is not None
    pg, _ = endpoints(session)
    assert pg is not None
    template = template_of(session, pg)
    assert template.database != pg.database
    out: dict[str, object] = {}
    with pytest.raises(psycopg.OperationalError, match="not currently accepting connections"):
        psycopg.connect(template.libpq())
    probe = f"{pg.database}_probe_{secrets.token_hex(3)}"
    database.clone_database(template, probe, template.database)
    try:
        for label, name in (("database", pg.database), ("template", probe)):
            with psycopg.connect(pg.libpq(name), autocommit=True) as conn:
                out[label] = (conn.execute("SELECT username FROM users ORDER BY 1").fetchall(),
                              conn.execute("SELECT name FROM items").fetchall())
        with psycopg.connect(pg.libpq("postgres"), autocommit=True) as conn:
            out["databases"] = sorted(r[0] for r in conn.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE %s AND datname <> %s", (pg.database + "%", probe)))
    finally:
        database.drop_database(template, probe, created_by_envkit=True)
    return out


PRISTINE = ([("alice",), ("bob",)], [])


def check_records(out: Path, workers: int, state_file: Path) -> None:
    records = [json.loads(p.read_text()) for p in out.glob("*.json")]
    assert len(records) == (1 + workers), records  # the controller imports the conftests too
    assert {r["who"] for r in records} == ({"main"} | {f"gw{i}" for i in range(workers)})
    assert len({r["database"] for r in records}) == len(records)  # a database per process, from its first line
    for r in records:
        assert r["database"] == r["pgdatabase"] and r["database"].endswith("_" + r["who"])
        assert r["from_env"] == "hello from envkit"  # [env] wins over pytest-env
    for p in out.glob("*.json"):
        p.unlink()


@pytest.fixture
def app(pytester: pytest.Pytester, shared_cache: Path) -> Iterator[tuple[Project, Path]]:
    project = Project(pytester.path, shared_cache)
    write_project(project, pytester)
    out = pytester.mkdir("out")
    try:
        yield project, out
    finally:
        project.cli("down", "-q")


def run_pytest(project: Project, out: Path, *args: str, timeout: float = 240) -> str:
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:randomly", "-p", "no:cacheprovider", *args],
                            cwd=project.root, env=clean_env(project, out), text=True, capture_output=True, timeout=timeout)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.parametrize("workers", [0, 2])
def test_envkit_up_then_plain_pytest(app: tuple[Project, Path], workers: int) -> None:
    project, out = app
    project.cli("up", "-q", "--backend", "native", check=True)
    state_file = project.root / ".envkit" / "state.json"
    before = contents(state_file)
    assert before["database"] == before["template"] == PRISTINE
    for _ in range(2):  # the second run sees what the first left: nothing
        stdout = run_pytest(project, out, *(["-n", str(workers)] if workers else []))
        assert "5 passed" in stdout and "left up by envkit up" in stdout
        check_records(out, workers, state_file)
        assert contents(state_file) == before


@pytest.mark.parametrize("workers", [0, 2])
def test_envkit_test(app: tuple[Project, Path], workers: int) -> None:
    project, out = app
    env = clean_env(project, out)
    import subprocess

    result = subprocess.run([*ENVKIT, "test", "--keep", "--backend", "native", "--", "-p", "no:randomly",
                             *(["-n", str(workers)] if workers else [])],
                            cwd=project.root, env=env, text=True, capture_output=True, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 passed" in result.stdout
    state_file = project.root / ".envkit" / "state.json"
    check_records(out, workers, state_file)
    after = contents(state_file)
    assert after["database"] == after["template"] == PRISTINE
    assert after["databases"] == ["proj_test", "proj_test_template"]  # every process's database dropped


@pytest.mark.parametrize("workers", [0, 2])
def test_pytest_envkit(app: tuple[Project, Path], workers: int) -> None:
    project, out = app
    stdout = run_pytest(project, out, "--envkit", "--envkit-backend", "native", "--envkit-keep",
                        *(["-n", str(workers)] if workers else []))
    assert "5 passed" in stdout and "brought up for this session" in stdout
    state_file = project.root / ".envkit" / "state.json"
    check_records(out, workers, state_file)
    after = contents(state_file)
    assert after["database"] == after["template"] == PRISTINE
    assert after["databases"] == ["proj_test", "proj_test_template"]


def test_pytest_envkit_without_keep_leaves_nothing(app: tuple[Project, Path]) -> None:
    project, out = app
    stdout = run_pytest(project, out, "--envkit", "--envkit-backend", "native", "-n", "2")
    assert "5 passed" in stdout
    check_records(out, 2, project.root / ".envkit" / "state.json")
    assert not (project.root / ".envkit" / "state.json").exists()  # torn down; no_leaks checks the processes


def test_tenant_schema_with_unqualified_names(pytester: pytest.Pytester, shared_cache: Path) -> None:
    """migrations.schema puts the tenant first on the template's search_path: every clone must have it too."""
    project = Project(pytester.path, shared_cache)
    project.configure(CONFIG.replace('directory = "migrations"', 'directory = "migrations"\nschema = "tenant"'))
    project.write("migrations/001_schema.sql", MIGRATION)
    pytester.makefile(".ini", pytest=INI)
    pytester.makepyfile(test_tenant='''
        import os
        import psycopg
        import pytest
        from sqlalchemy import text

        # at import, as an application's own engine would
        with psycopg.connect(os.environ["DATABASE_URL"].replace("+psycopg", ""), autocommit=True) as conn:
            AT_IMPORT = conn.execute("SELECT count(*) FROM users").fetchone()[0]

        def test_import_time_query():
            assert AT_IMPORT == 2

        def test_rollback(db_session):
            assert db_session.execute(text("SHOW search_path")).scalar().startswith("tenant")
            assert db_session.execute(text("SELECT count(*) FROM users")).scalar() == 2
            db_session.execute(text("INSERT INTO items (name) VALUES ('x')"))

        @pytest.mark.envkit(isolation="clone")
        def test_clone(db_session):
            assert db_session.execute(text("SELECT count(*) FROM tenant.users")).scalar() == 2
            assert db_session.execute(text("SELECT count(*) FROM users")).scalar() == 2

        @pytest.mark.envkit(isolation="truncate")
        def test_truncate(db_session):
            db_session.execute(text("INSERT INTO items (name) VALUES ('x')"))
            db_session.commit()
    ''')
    env = {k: v for k, v in project.env().items() if not k.startswith(("PG", "PYTEST_XDIST")) and k != "CI"}
    import subprocess
    import sys

    try:
        project.cli("up", "-q", "--backend", "native", check=True)
        for args in ([], ["-n", "2"]):
            result = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:randomly", *args], cwd=project.root,
                                    env=env, text=True, capture_output=True, timeout=240)
            assert result.returncode == 0, result.stdout + result.stderr
            assert "4 passed" in result.stdout
    finally:
        project.cli("down", "-q")


def test_clones_carry_owner_privileges_and_settings(pytester: pytest.Pytester, shared_cache: Path) -> None:
    """CREATE DATABASE ... TEMPLATE copies neither ALTER DATABASE ... SET, nor the owner, nor GRANTs on the database."""
    project = Project(pytester.path, shared_cache)
    project.configure("")
    try:
        project.cli("up", "-q", "--backend", "native", check=True)
        from envkit.state import read

        session = read(project.root / ".envkit" / "state.json")
        assert session is not None
        pg, _ = endpoints(session)
        assert pg is not None
        tag = secrets.token_hex(3)
        source, clone, owner, reader = f"src_{tag}", f"src_{tag}_clone", f"owner_{tag}", f"reader_{tag}"
        with psycopg.connect(pg.libpq("postgres"), autocommit=True) as conn:
            conn.execute(f"CREATE ROLE {owner}")
            conn.execute(f"CREATE ROLE {reader}")
            conn.execute(f"CREATE DATABASE {source} OWNER {owner}")
            conn.execute(f'REVOKE ALL ON DATABASE {source} FROM PUBLIC')
            conn.execute(f'GRANT CONNECT ON DATABASE {source} TO {reader}')
            conn.execute(f'GRANT TEMP ON DATABASE {source} TO {reader} WITH GRANT OPTION')
            conn.execute(f'ALTER DATABASE {source} SET search_path TO "My Tenant", public')
            conn.execute(f"ALTER DATABASE {source} SET statement_timeout = '5s'")
            conn.execute(f"ALTER DATABASE {source} SET app.tenant = 'acme'")
            conn.execute(f"ALTER ROLE {reader} IN DATABASE {source} SET work_mem = '8MB'")
        try:
            database.clone_database(pg, clone, source)
            want, got = database.profile(pg, source), database.profile(pg, clone)
            assert got == want
            assert want.owner == owner and want.privileges and (reader, "TEMPORARY", True) in want.privileges
            assert ("", "search_path", '"My Tenant", public') in want.settings
            assert (reader, "work_mem", "8MB") in want.settings
            with psycopg.connect(pg.libpq(clone), autocommit=True) as conn:
                assert conn.execute("SHOW search_path").fetchone()[0] == '"My Tenant", public'
                assert conn.execute("SHOW app.tenant").fetchone()[0] == "acme"
        finally:
            with psycopg.connect(pg.libpq("postgres"), autocommit=True) as conn:
                for name in (source, clone):
                    conn.execute(f"DROP DATABASE IF EXISTS {name}")
                conn.execute(f"DROP ROLE {owner}")
                conn.execute(f"DROP ROLE {reader}")
    finally:
        project.cli("down", "-q")


def test_split_list_settings() -> None:
    split = database._split_list
    assert split('"$user", public') == ["$user", "public"]
    assert split('"My Tenant", public') == ["My Tenant", "public"]
    assert split('"a""b", "c,d"') == ['a"b', "c,d"]
    assert split("") == []
