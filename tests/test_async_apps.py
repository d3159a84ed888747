"""asyncpg as well as psycopg, async seed hooks, seeded users as [env] values: a real FastAPI app, configuration only."""

from __future__ import annotations

import json

import pytest
from async_app import ENVKIT_TOML, write
from conftest import Project

from envkit.provision.hook import wanted_argument

pytestmark = pytest.mark.native


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
def test_an_async_fastapi_app_passes_with_configuration_only(project: Project, driver: str) -> None:
    write(project)
    env = project.env(ENVKIT_POSTGRES_ASYNC_DRIVER=driver, EXPECTED_DRIVER=driver)
    result = project.cli("test", "--backend", "native", "--", "-q", "-p", "no:randomly", "-p", "no:cacheprovider",
                         env=env, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "7 passed" in result.stdout
    for secret in ("root-Secret-9", "ann-pw-1234"):  # the seeded passwords are [env] values, never printed
        assert secret not in result.stdout + result.stderr


def test_env_names_seeded_users_and_keeps_their_passwords_unprinted(project: Project) -> None:
    write(project)
    project.configure(ENVKIT_TOML.replace(
        "[env]\n", '[env]\nADMIN_EMAIL = "{{ users.root.email }}"\nANN_PASSWORD = "{{ users.Ann.password }}"\n'))
    up = project.cli("up", "--backend", "native", "--json")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "ann-pw-1234" not in up.stdout + up.stderr and "root-Secret-9" not in up.stdout + up.stderr
        exports = json.loads((project.root / ".envkit" / "state.json").read_text())["exports"]
        assert exports["FIRST_SUPERUSER"] == exports["ADMIN_EMAIL"] == "root@example.com"  # by index and by name
        assert exports["FIRST_SUPERUSER_PASSWORD"] == "root-Secret-9" and exports["ANN_PASSWORD"] == "ann-pw-1234"
        assert exports["SQLALCHEMY_DATABASE_URI"].startswith("postgresql+asyncpg://")  # auto: asyncpg is installed
        mask = project.cli("env", "--format", "github", env=project.env(GITHUB_ACTIONS="true"))
        assert "::add-mask::ann-pw-1234" in mask.stderr and "::add-mask::root-Secret-9" in mask.stderr
    finally:
        project.cli("down", "-q")


def test_an_async_hook_that_fails_is_reported_and_the_environment_unwinds(project: Project) -> None:
    write(project)
    project.write("app/seed.py", '''
        from sqlalchemy import text


        async def seed(conn):
            await conn.execute(text("INSERT INTO items (title, owner_id) SELECT 'half', id FROM users LIMIT 1"))
            raise RuntimeError("the starter data is broken")
    ''')
    result = project.cli("up", "--backend", "native")
    assert result.returncode == 3, result.stdout + result.stderr
    assert "seed.hook app.seed:seed raised RuntimeError: the starter data is broken" in result.stderr
    assert not (project.root / ".envkit" / "state.json").exists()


def test_what_a_hook_is_given_follows_its_first_parameter() -> None:
    from sqlalchemy.ext.asyncio import AsyncSession
    from sqlalchemy.orm import Session

    async def by_type(s: AsyncSession) -> None: ...
    def by_string(s: "Session") -> None: ...  # noqa: UP037 - a string annotation, as with `from __future__ import annotations`
    def by_name(session): ...  # type: ignore[no-untyped-def]
    def connection(conn): ...  # type: ignore[no-untyped-def]
    async def nothing() -> None: ...
    def optional_only(conn=None): ...  # type: ignore[no-untyped-def]

    assert Session and wanted_argument(by_type) == "session" and wanted_argument(by_string) == "session"
    assert wanted_argument(by_name) == "session" and wanted_argument(connection) == "connection"
    assert wanted_argument(nothing) == "none" and wanted_argument(optional_only) == "none"
