"""The projects the bench measures, generated into its work directory.

- ``demo``: a copy of examples/demo with N seeded users, its own cache dir and auto ports;
- ``bare``: Postgres + Redis, nothing to migrate or seed;
- ``growth``: an Alembic project with R generated revisions and U users;
- ``pgpg``: the pytest-postgresql + pytest-redis test project (runners/pgpg_*.py);
- ``temporal``: Temporal's dev server and nothing else (``recipe = "temporal"``; postgres and redis disabled).
"""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

from harness import REPO, RUNNERS, User

DEMO = REPO / "examples" / "demo"


def users_toml(count: int, first: str = "") -> str:
    """``first`` (a seed file's own users) and then generated users, up to ``count``."""
    lines = [first.rstrip() + "\n"] if first else []
    have = first.count("[[users]]")
    for i in range(have, count):
        lines.append(f'\n[[users]]\nusername = "user{i:05d}"\nemail = "user{i:05d}@example.com"\n'
                     f'password = "password-{i:05d}"\nrole = "customer"\n')
    return "".join(lines)


def _envkit_settings(cache_dir: Path) -> str:
    return f'cache_dir = "{cache_dir}"\n'


def _auto_ports() -> str:
    return '\n[postgres]\nport = "auto"\n\n[redis]\nport = "auto"\n'


def demo(dest: Path, users: int, cache_dir: Path, owner: User | None = None) -> Path:
    """examples/demo with ``users`` seeded users (its own four first)."""
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(DEMO, dest, ignore=shutil.ignore_patterns(".envkit", "__pycache__", ".env.test", ".pytest_cache"))
    seed = dest / "seed.toml"
    seed.write_text(users_toml(users, seed.read_text()))
    conf = dest / "envkit.toml"
    text = conf.read_text()
    head, sep, rest = text.partition("\n[")
    conf.write_text(head.rstrip() + "\n" + _envkit_settings(cache_dir) + sep + rest + _auto_ports())
    if owner:
        _chown_tree(dest, owner)
    return dest


def bare(dest: Path, cache_dir: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "envkit.toml").write_text(
        'project = "bare"\n' + _envkit_settings(cache_dir) + '\n[migrations]\nkind = "none"\n' + _auto_ports())
    return dest


_ENV_PY = '''
from alembic import context
from sqlalchemy import create_engine, pool

engine = create_engine(context.config.get_main_option("sqlalchemy.url"), poolclass=pool.NullPool)
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()
'''

_USERS_REVISION = '''
    op.execute("""CREATE TABLE users (
        id uuid PRIMARY KEY, username text NOT NULL UNIQUE, email text NOT NULL UNIQUE,
        password_hash text NOT NULL, role text NOT NULL, is_active boolean NOT NULL DEFAULT true,
        created_at timestamptz NOT NULL DEFAULT now())""")
'''

_TABLE_REVISION = '''
    op.execute("""CREATE TABLE t{n:04d} (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text NOT NULL,
        owner_id uuid REFERENCES users (id), created_at timestamptz NOT NULL DEFAULT now())""")
    op.execute("CREATE INDEX ix_t{n:04d}_name ON t{n:04d} (name)")
'''


def growth(dest: Path, revisions: int, users: int, cache_dir: Path) -> Path:
    """An Alembic project: revision 1 creates users, each later one a table with an index."""
    shutil.rmtree(dest, ignore_errors=True)
    versions = dest / "migrations" / "versions"
    versions.mkdir(parents=True)
    (dest / "alembic.ini").write_text("[alembic]\nscript_location = %(here)s/migrations\n")
    (dest / "migrations" / "env.py").write_text(_ENV_PY.lstrip())
    for n in range(1, revisions + 1):
        body = _USERS_REVISION if n == 1 else _TABLE_REVISION.format(n=n)
        down = f'"{n - 1:04d}"' if n > 1 else "None"
        (versions / f"{n:04d}_rev.py").write_text(
            f'from alembic import op\n\nrevision = "{n:04d}"\ndown_revision = {down}\n\n\ndef upgrade():{body}')
    (dest / "seed.toml").write_text(users_toml(users))
    (dest / "envkit.toml").write_text(
        f'project = "growth"\n{_envkit_settings(cache_dir)}\n[migrations]\nkind = "alembic"\n\n'
        '[seed]\nfile = "seed.toml"\ngenerate = { id = "uuid4" }\n' + _auto_ports())
    return dest


TEMPORAL_PROJECT = "bench-temporal"  # also the envkit.project label of its containers: what the leak check looks for


def temporal(dest: Path, cache_dir: Path) -> Path:
    """A project whose only service is the shipped Temporal recipe, as a user names it."""
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "envkit.toml").write_text(
        f'project = "{TEMPORAL_PROJECT}"\n{_envkit_settings(cache_dir)}\n[postgres]\nenabled = false\n\n'
        '[redis]\nenabled = false\n\n[services.temporal]\nrecipe = "temporal"\n')
    return dest


def pgpg(dest: Path, owner: User | None) -> Path:
    """The pytest project whose fixtures are pytest-postgresql's and pytest-redis' ``*_proc``."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    shutil.copy(RUNNERS / "pgpg_conftest.py", dest / "conftest.py")
    shutil.copy(RUNNERS / "pgpg_tests.py", dest / "test_bench.py")
    (dest / "pytest.ini").write_text(textwrap.dedent("""\
        [pytest]
        addopts = -p no:cacheprovider -s -q
        """))
    (dest / "tmp").mkdir()
    if owner:
        _chown_tree(dest, owner)
    return dest


def _chown_tree(path: Path, owner: User) -> None:
    owner.chown(path)
    for sub in path.rglob("*"):
        owner.chown(sub)
