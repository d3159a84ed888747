"""Small generated projects for the real tests: an Alembic app, SQL migrations, seed files."""

from __future__ import annotations

from conftest import Project

ALEMBIC_INI = """
[alembic]
script_location = %(here)s/migrations
prepend_sys_path = %(here)s

[loggers]
keys = root,sqlalchemy,alembic
[handlers]
keys = console
[formatters]
keys = generic
[logger_root]
level = WARN
handlers = console
[logger_sqlalchemy]
level = WARN
handlers =
qualname = sqlalchemy
[logger_alembic]
level = INFO
handlers =
qualname = alembic
[handler_console]
class = StreamHandler
args = (sys.stderr,)
level = NOTSET
formatter = generic
[formatter_generic]
format = %(levelname)-5.5s [%(name)s] %(message)s
"""

ENV_PY = '''
import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy import create_engine

config = context.config
if config.config_file_name:
    fileConfig(config.config_file_name)  # as generated env.py files do: it must not silence envkit
url = config.get_main_option("sqlalchemy.url") or os.environ["DATABASE_URL"]
assert url == os.environ["DATABASE_URL"], "envkit passes the same URL both ways"
engine = create_engine(url)
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()
'''

REVISION = '''
from alembic import op

revision = "{rev}"
down_revision = {down}


def upgrade():
    op.execute("""{sql}""")


def downgrade():
    pass
'''


def alembic_project(project: Project, revisions: list[str], seed: str = "", extra: str = "") -> None:
    """An Alembic project whose revisions run the given SQL, in order."""
    project.write("alembic.ini", ALEMBIC_INI)
    project.write("migrations/env.py", ENV_PY)
    project.write("migrations/script.py.mako", "")
    for index, sql in enumerate(revisions):
        rev = f"{index + 1:04d}"
        down = f'"{index:04d}"' if index else "None"
        project.write(f"migrations/versions/{rev}_step.py", REVISION.format(rev=rev, down=down, sql=sql))
    project.configure(f'[migrations]\nkind = "alembic"\n{seed}\n{extra}')


USERS_TABLE = """
CREATE TABLE "user" (
    id uuid PRIMARY KEY,
    username text UNIQUE NOT NULL,
    email text,
    password_hash text NOT NULL,
    role text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
)
"""
