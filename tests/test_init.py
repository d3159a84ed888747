"""envkit init: scaffolding an empty project and an existing one, idempotently; and envkit doctor."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from conftest import REPO, Project, need
from projects import alembic_project

from envkit.scaffold import find_users_table

VENV_BIN = str(Path(sys.executable).parent)


def lines(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """{path: action} from `envkit init`'s report."""
    out = {}
    for line in result.stdout.splitlines():
        parts = line.removeprefix("envkit: ").split()
        if parts and parts[0] in ("wrote", "rewrote", "updated", "skipped"):
            out[parts[1]] = parts[0]
    return out


def test_init_on_an_empty_project_then_again(project: Project) -> None:
    first = project.cli("init", check=True)
    assert lines(first) == {"seed.toml": "wrote", "envkit.toml": "wrote", "Makefile": "wrote",
                            ".github/workflows/envkit.yml": "wrote"}
    config = tomllib.loads((project.root / "envkit.toml").read_text())
    assert config["migrations"]["kind"] == "none" and config["seed"]["file"] == "seed.toml"
    assert "[[users]]" not in (project.root / "seed.toml").read_text().replace("# [[users]]", "")
    makefile = (project.root / "Makefile").read_text()
    for target in ("test", "up", "down"):
        assert f"\n{target}: ## " in makefile
    assert "\t$(ENVKIT) test $(PYTEST_ARGS)\n" in makefile

    snapshot = {p: p.read_bytes() for p in project.root.rglob("*") if p.is_file()}
    again = project.cli("init", check=True)
    assert set(lines(again).values()) == {"skipped"} and len(lines(again)) == 4
    assert {p: p.read_bytes() for p in project.root.rglob("*") if p.is_file()} == snapshot

    (project.root / "envkit.toml").write_text("# mine\n")
    forced = project.cli("init", "--force", check=True)
    assert lines(forced)["envkit.toml"] == "rewrote" and lines(forced)["Makefile"] == "updated"
    assert (project.root / "Makefile").read_text().count("# >>> envkit") == 1  # replaced, not appended twice
    assert "# mine" not in (project.root / "envkit.toml").read_text()


def test_init_never_clobbers_what_the_project_has(project: Project) -> None:
    project.write("Makefile", "# the project's own\n.PHONY: test\ntest:\n\tpytest -x\n\nlint:\n\truff check .\n")
    project.write(".gitignore", "__pycache__/\n")
    project.write("seed.toml", "[[users]]\nemail = 'me@example.com'\npassword = 'pw'\n")
    project.write(".github/workflows/envkit.yml", "name: mine\n")
    result = project.cli("init", check=True)
    actions = lines(result)
    assert actions["seed.toml"] == "skipped" and actions[".github/workflows/envkit.yml"] == "skipped"
    assert actions["Makefile"] == "updated" and "kept your own test target" in result.stdout
    makefile = (project.root / "Makefile").read_text()
    assert makefile.startswith("# the project's own\n.PHONY: test\ntest:\n\tpytest -x\n")  # untouched
    assert "\nup: ## " in makefile and "\ndown: ## " in makefile and "\ntest: ## " not in makefile
    assert (project.root / "seed.toml").read_text().startswith("[[users]]\nemail = 'me@example.com'")
    assert (project.root / ".github/workflows/envkit.yml").read_text() == "name: mine\n"
    assert (project.root / ".gitignore").read_text().splitlines()[-2:] == [".envkit/", ".env.test"]
    forced = project.cli("init", "--force", check=True)
    assert (project.root / "Makefile").read_text().startswith("# the project's own\n.PHONY: test\ntest:\n\tpytest -x\n")
    assert (project.root / "seed.toml").read_text().startswith("[[users]]\nemail")  # not envkit's: never rewritten
    assert lines(forced)[".github/workflows/envkit.yml"] == "rewrote"


def test_init_into_pyproject(project: Project) -> None:
    project.write("pyproject.toml", '[project]\nname = "shop"\nversion = "1"\n\n[tool.ruff]\nline-length = 100\n')
    result = project.cli("init", "--pyproject", check=True)
    assert lines(result)["pyproject.toml"] == "updated" and not (project.root / "envkit.toml").exists()
    doc = tomllib.loads((project.root / "pyproject.toml").read_text())
    assert doc["tool"]["ruff"] == {"line-length": 100} and doc["project"]["name"] == "shop"
    assert doc["tool"]["envkit"]["project"] == "shop" and doc["tool"]["envkit"]["seed"]["file"] == "seed.toml"
    assert lines(project.cli("init", "--pyproject", check=True))["pyproject.toml"] == "skipped"
    project.cli("init", "--pyproject", "--force", check=True)
    doc = tomllib.loads((project.root / "pyproject.toml").read_text())  # still valid: one [tool.envkit], replaced
    assert doc["tool"]["envkit"]["migrations"]["kind"] == "none" and doc["tool"]["ruff"] == {"line-length": 100}


def test_users_table_detection_from_migrations_and_models(tmp_path: Path) -> None:
    demo = REPO / "examples" / "demo"
    table = find_users_table(demo, demo / "alembic.ini")
    assert table is not None and table.name == "users" and table.password_column == "password_hash"
    assert {"id", "username", "email", "role", "is_active", "created_at"} <= set(table.columns)
    (tmp_path / "models.py").write_text(
        "class User(Base):\n    __tablename__ = 'user'\n    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)\n"
        "    email: Mapped[str] = mapped_column(unique=True)\n    hashed_password: Mapped[str] = mapped_column()\n"
        "\n\nclass Other(Base):\n    secret: Mapped[str] = mapped_column()\n")
    table = find_users_table(tmp_path, tmp_path / "alembic.ini")
    assert table is not None and table.name == "user" and table.password_column == "hashed_password"
    assert set(table.columns) == {"id", "email", "hashed_password"}


@pytest.mark.native
def test_init_then_make_test_in_an_existing_alembic_project(project: Project) -> None:
    """The demo app as it was before envkit (its own seed file kept): init, then `make test`, no other edit."""
    need(shutil.which("make") is not None, "make is not installed (apt install make)")
    shutil.copytree(REPO / "examples" / "demo", project.root, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns(".envkit", "__pycache__", "envkit.toml"))
    (project.root / ".gitignore").write_text("__pycache__/\n")
    env = project.env(PATH=f"{VENV_BIN}:/usr/bin:/bin", ENVKIT_CACHE_DIR=str(project.cache_dir),
                      ENVKIT_POSTGRES_PORT="auto", ENVKIT_REDIS_PORT="auto", ENVKIT_BACKEND="native")
    result = project.cli("init", env=env, check=True)
    assert lines(result)["seed.toml"] == "skipped"
    config = tomllib.loads((project.root / "envkit.toml").read_text())
    assert config["migrations"] == {"kind": "alembic", "alembic_ini": "alembic.ini"}
    assert config["seed"] == {"file": "seed.toml", "table": "users", "password_column": "password_hash",
                              "generate": {"id": "uuid4"}}
    make = subprocess.run(["make", "test", "PYTEST_ARGS=-q -p no:cacheprovider"], cwd=project.root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert make.returncode == 0, make.stdout + make.stderr
    assert "12 passed" in make.stdout
    assert subprocess.run(["make", "up"], cwd=project.root, env=env, capture_output=True, timeout=120).returncode == 0
    assert project.cli("status", env=env).returncode == 0
    assert subprocess.run(["make", "down"], cwd=project.root, env=env, capture_output=True, timeout=120).returncode == 0
    assert project.cli("status", env=env).returncode == 1


@pytest.mark.native
def test_init_writes_a_seed_file_that_seeds(project: Project) -> None:
    """No seed file: the users table found in the migrations gives one whose users go in."""
    alembic_project(project, ["""CREATE TABLE users (id uuid PRIMARY KEY, email text NOT NULL UNIQUE,
                                password_hash text NOT NULL, is_admin boolean NOT NULL)"""])
    (project.root / "envkit.toml").unlink()
    (project.root / "migrations" / "versions" / "0001_step.py").write_text('''
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade():
    op.create_table(
        "users",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("email", sa.Text(), nullable=False),
        sa.Column("password_hash", sa.Text(), nullable=False),
        sa.Column("is_admin", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
''')
    env = project.env(ENVKIT_CACHE_DIR=str(project.cache_dir), ENVKIT_POSTGRES_PORT="auto", ENVKIT_REDIS_PORT="auto")
    project.cli("init", env=env, check=True)
    result = project.cli("run", "--backend", "native", "--", sys.executable, "-c", """
import json, os, bcrypt, psycopg
users = json.load(open(os.environ["ENVKIT_USERS_FILE"]))
with psycopg.connect(os.environ["DATABASE_URL"].replace("+psycopg", "")) as conn:
    rows = dict(conn.execute("SELECT email, password_hash FROM users").fetchall())
assert sorted(rows) == ["admin@example.com", "alice@example.com"], rows
for user in users:
    assert bcrypt.checkpw(user["password"].encode(), rows[user["email"]].encode())
print("seeded", len(rows))
""", env=env)
    assert result.returncode == 0, result.stderr
    assert "seeded 2" in result.stdout


def test_doctor_reports_and_exits_non_zero_for_what_the_backend_needs(project: Project, tmp_path: Path) -> None:
    project.configure()
    ok = project.cli("doctor", "--backend", "native")
    assert ok.returncode == 0, ok.stdout
    assert "checks for the native backend" in ok.stdout and "envkit doctor: ready" in ok.stdout
    for name in ("config", "postgres", "redis", "migrations", "seed", "postgres port", "redis port"):
        assert f" {name} " in ok.stdout

    # no server binaries anywhere: required for native, so exit 1 and say how to fix it
    project.configure('[postgres]\nbindir = "/nonexistent"\n[redis]\nserver = "/nonexistent/redis-server"\n')
    broken = project.cli("doctor", "--backend", "native", "--json")
    assert broken.returncode == 1
    checks = {c["name"]: c for c in json.loads(broken.stdout)["checks"]}
    assert checks["postgres"]["status"] == "FAIL" and "postgres.bindir" in checks["postgres"]["detail"]
    assert "apt install postgresql" in checks["postgres"]["fix"]
    assert checks["redis"]["status"] == "FAIL"

    # a taken fixed port is a failure; a broken config is reported, not a traceback
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        project.configure(f"[postgres]\nport = {port}\n")
        taken = project.cli("doctor", "--backend", "native")
    assert taken.returncode == 1 and f"{port} is taken" in taken.stdout and "fix: stop that process" in taken.stdout
    project.write("envkit.toml", "backend = 'nonsense'\n")
    bad = project.cli("doctor")
    assert bad.returncode == 1 and "FAIL     config" in bad.stdout and "backend must be one of" in bad.stdout

    # alembic configured but missing alembic.ini; docker required but no engine at that address
    project.configure('[migrations]\nkind = "alembic"\nalembic_ini = "nope.ini"\n')
    no_ini = project.cli("doctor", "--backend", "docker", env=project.env(DOCKER_HOST=f"unix://{tmp_path}/no.sock"))
    assert no_ini.returncode == 1
    assert "nope.ini does not exist" in no_ini.stdout and "no Docker engine answers" in no_ini.stdout


@pytest.mark.native
def test_init_reads_the_migrated_schema_and_the_settings_then_envkit_test_passes(project: Project) -> None:
    """Four migrations changed the users table (integer id -> uuid, NOT NULL columns without defaults added later);
    pydantic settings read at import need POSTGRES_*: init, then `envkit test`, no edit."""
    from evolving_app import write

    write(project)
    env = project.env(ENVKIT_CACHE_DIR=str(project.cache_dir), ENVKIT_POSTGRES_PORT="auto", ENVKIT_REDIS_PORT="auto")
    result = project.cli("init", env=env, check=True)
    out = result.stdout
    assert "migrated a throwaway database" in out and 'users table: user, as migrated: id (uuid, NOT NULL, primary key)' in out
    assert "which init cannot fill" not in out  # tenant and role: NOT NULL without a default, filled
    assert "seed.generate.id = 'uuid4'" in out and "seed.generate.created_at = 'now'" in out
    assert "seed check: the 2 users go into user" in out
    assert "setting POSTGRES_SERVER: app/core/config.py: Settings reads it" in out
    assert lines(result)["seed.toml"] == "wrote" and lines(result)["envkit.toml"] == "wrote"
    config = tomllib.loads((project.root / "envkit.toml").read_text())
    assert config["seed"] == {"file": "seed.toml", "table": "user", "password_column": "hashed_password",
                              "generate": {"id": "uuid4", "created_at": "now"}}
    assert config["env"] == {
        "PROJECT_NAME": "test-project-name", "ENVIRONMENT": "local", "SECRET_KEY": "test-secret-key",
        "POSTGRES_SERVER": "{{ postgres.host }}", "POSTGRES_PORT": "{{ postgres.port }}", "POSTGRES_USER": "{{ postgres.user }}",
        "POSTGRES_PASSWORD": "{{ postgres.password }}", "POSTGRES_DB": "{{ postgres.database }}",
        "FIRST_SUPERUSER": "{{ users[0].email }}", "FIRST_SUPERUSER_PASSWORD": "{{ users[0].password }}"}
    users = tomllib.loads((project.root / "seed.toml").read_text())["users"]
    assert [u["role"] for u in users] == ["admin", "member"] and [u["is_superuser"] for u in users] == [True, False]
    assert all(u["tenant"] and "id" not in u for u in users)
    assert not list(project.root.glob(".envkit/*"))  # the throwaway environment is gone
    assert "admin-password" not in result.stdout + result.stderr

    doctor = project.cli("doctor", "--backend", "native", env=env)
    assert doctor.returncode == 0 and "seed schema" in doctor.stdout and "2 users go into user" in doctor.stdout, doctor.stdout

    test = project.cli("test", "--backend", "native", "--", "-q", "-p", "no:randomly", env=env, timeout=300)
    assert test.returncode == 0, test.stdout + test.stderr
    assert "2 passed" in test.stdout

    # a seed that no longer fits the schema: doctor says so, with the database's own words
    (project.root / "seed.toml").write_text('[[users]]\nemail = "x@example.com"\npassword = "pw"\n')
    broken = project.cli("doctor", "--backend", "native", env=env)
    assert broken.returncode == 1, broken.stdout
    assert "FAIL     seed schema" in broken.stdout and 'null value in column "tenant"' in broken.stdout
