"""envkit's plugin alongside the pytest plugins projects already use: real pytest runs in subprocesses.

pytest-cov with and without xdist, pytest-xdist (-n 2, --dist loadfile),
pytest-asyncio, pytest-env and pytest-randomly: each run must pass, and the
environment's template must be exactly as it was afterwards.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Project, need

pytest_plugins = ["pytester"]

INI = """
[pytest]
filterwarnings = error
asyncio_default_fixture_loop_scope = function
"""


def need_plugin(module: str) -> None:
    need(importlib.util.find_spec(module) is not None, f"{module} is not installed (pip install -e '.[dev]')")


def test_coverage_without_xdist_and_without_an_environment(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """pytest-cov declares the optional hook pytest_configure_node: that alone must not make envkit register xdist's."""
    need_plugin("pytest_cov")
    for name in ("ENVKIT_STATE_FILE", "CI", "ENVKIT_REQUIRE"):
        monkeypatch.delenv(name, raising=False)
    pytester.makefile(".ini", pytest=INI)
    pytester.makepyfile(covered="def double(x):\n    return 2 * x\n")
    pytester.makepyfile(test_cov="from covered import double\n\ndef test_double():\n    assert double(2) == 4\n")
    result = pytester.runpytest_subprocess("-p", "no:xdist", "--cov=covered", "--cov-report=term")
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*covered.py*100%*"])


MATRIX_CONFTEST = '''
import os
import psycopg

URL = os.environ["DATABASE_URL"]  # at import, as settings built at import read it
with psycopg.connect(URL.replace("+psycopg", ""), autocommit=True) as conn:
    AT_IMPORT = conn.execute("SELECT current_database()").fetchone()[0]
'''

MATRIX_TESTS = '''
import os
import random
import pytest
from sqlalchemy import text

import conftest


@pytest.mark.parametrize("i", range(3))
def test_rollback(i, db_session, envkit_env):
    assert envkit_env.postgres.database == conftest.AT_IMPORT
    db_session.execute(text("INSERT INTO items (name) VALUES ('row')"))
    db_session.commit()
    assert db_session.execute(text("SELECT count(*) FROM items")).scalar() == 1
    random.random()


@pytest.mark.envkit(isolation="truncate")
def test_truncate(db_session):
    db_session.execute(text("DELETE FROM users"))
    db_session.commit()


@pytest.mark.envkit(isolation="clone")
def test_clone(db_session):
    assert db_session.execute(text("SELECT count(*) FROM users")).scalar() == 2


@pytest.mark.asyncio
async def test_async(async_db_session):
    assert (await async_db_session.execute(text("SELECT count(*) FROM users"))).scalar() == 2


def test_redis(redis_client):
    redis_client.set("k", "v")


def test_env():  # pytest-env's own names are its own; envkit's (DATABASE_URL) win
    assert os.environ.get("APP_MODE") == os.environ.get("EXPECT_APP_MODE")
'''

MATRIX = {
    "cov": ["-p", "no:xdist", "--cov=conftest", "--cov-report="],
    "cov-xdist": ["-n", "2", "--cov=conftest", "--cov-report="],
    "xdist-loadfile": ["-n", "2", "--dist", "loadfile"],
    "asyncio-strict": ["-p", "no:xdist", "-o", "asyncio_mode=strict"],
    "pytest-env": ["-o", "env=APP_MODE=test\nDATABASE_URL=postgresql+psycopg://pytest-env@127.0.0.1:1/nowhere"],
    "randomly": ["-p", "randomly", "--randomly-seed=4242"],
    "randomly-xdist": ["-p", "randomly", "-n", "2"],
}


@pytest.fixture(scope="module")
def matrix_env(tmp_path_factory: pytest.TempPathFactory, shared_cache: Path) -> Iterator[Project]:
    from test_handoff import CONFIG, MIGRATION

    root = tmp_path_factory.mktemp("matrix") / "proj"
    root.mkdir()
    project = Project(root, shared_cache)
    project.configure(CONFIG)
    project.write("migrations/001_schema.sql", MIGRATION)
    project.write("pytest.ini", INI)
    project.write("conftest.py", MATRIX_CONFTEST)
    project.write("test_matrix.py", MATRIX_TESTS)
    project.cli("up", "-q", "--backend", "native", check=True)
    try:
        yield project
    finally:
        project.cli("down", "-q")


@pytest.mark.native
@pytest.mark.parametrize("plugins", list(MATRIX), ids=list(MATRIX))
def test_plugin_matrix(matrix_env: Project, plugins: str) -> None:
    from test_handoff import PRISTINE, contents

    for module in ("pytest_cov", "xdist", "pytest_asyncio", "pytest_env", "pytest_randomly"):
        need_plugin(module)
    project = matrix_env
    state_file = project.root / ".envkit" / "state.json"
    before = contents(state_file)
    env = {k: v for k, v in project.env().items() if not k.startswith(("PG", "PYTEST_XDIST", "COV_")) and k != "CI"}
    env.pop("APP_MODE", None)
    if plugins == "pytest-env":
        env["EXPECT_APP_MODE"] = "test"
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *MATRIX[plugins]],
                            cwd=project.root, env=env, text=True, capture_output=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "8 passed" in result.stdout and "INTERNALERROR" not in result.stdout + result.stderr
    after = contents(state_file)
    assert after == before and after["template"] == after["database"] == PRISTINE
