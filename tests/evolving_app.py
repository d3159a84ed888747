"""A FastAPI-style project whose users table changed over several Alembic migrations, and whose settings
(pydantic-settings) are read when its ``env.py`` imports them: what `envkit init` must read for real."""

from __future__ import annotations

from conftest import Project
from projects import ALEMBIC_INI

SETTINGS = '''
from typing import Literal

from pydantic import computed_field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_ignore_empty=True, extra="ignore")

    PROJECT_NAME: str
    ENVIRONMENT: Literal["local", "staging", "production"]
    SECRET_KEY: str
    POSTGRES_SERVER: str
    POSTGRES_PORT: int = 5432
    POSTGRES_USER: str
    POSTGRES_PASSWORD: str = ""
    POSTGRES_DB: str = ""
    FIRST_SUPERUSER: str
    FIRST_SUPERUSER_PASSWORD: str
    ACCESS_TOKEN_EXPIRE_MINUTES: int = 60 * 24 * 8

    @computed_field
    @property
    def SQLALCHEMY_DATABASE_URI(self) -> str:
        return (f"postgresql+psycopg://{self.POSTGRES_USER}:{self.POSTGRES_PASSWORD}@{self.POSTGRES_SERVER}:"
                f"{self.POSTGRES_PORT}/{self.POSTGRES_DB}")


settings = Settings()
'''

ENV_PY = '''
from alembic import context
from sqlalchemy import create_engine

from app.core.config import settings  # as the project template does: the URL comes from the settings

engine = create_engine(settings.SQLALCHEMY_DATABASE_URI)
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
'''

REVISION = '''
from alembic import op

revision = "{rev}"
down_revision = {down}


def upgrade():
{body}
'''

#: The users table's history: created with an integer id, the id turned into a uuid (no default: the app makes
#: them), a NOT NULL column without a default and a role with a CHECK added later, a NOT NULL timestamp last.
STEPS = [
    '''    op.execute("""CREATE TABLE "user" (id serial PRIMARY KEY, email varchar(255) NOT NULL UNIQUE,
                  hashed_password varchar NOT NULL, is_superuser boolean NOT NULL DEFAULT false,
                  full_name varchar(255))""")''',
    '''    op.execute('ALTER TABLE "user" ALTER COLUMN id DROP DEFAULT')
    op.execute('ALTER TABLE "user" ALTER COLUMN id TYPE uuid USING gen_random_uuid()')
    op.execute("DROP SEQUENCE user_id_seq")''',
    '''    op.execute("""ALTER TABLE "user" ADD COLUMN tenant varchar(64) NOT NULL DEFAULT 'main'""")
    op.execute('ALTER TABLE "user" ALTER COLUMN tenant DROP DEFAULT')
    op.execute("""ALTER TABLE "user" ADD COLUMN role text NOT NULL DEFAULT 'member'
                  CHECK (role IN ('admin', 'member', 'viewer'))""")
    op.execute('ALTER TABLE "user" ALTER COLUMN role DROP DEFAULT')''',
    '''    op.execute('ALTER TABLE "user" ADD COLUMN created_at timestamptz')
    op.execute('UPDATE "user" SET created_at = now()')
    op.execute('ALTER TABLE "user" ALTER COLUMN created_at SET NOT NULL')''',
]

TESTS = '''
import uuid

import bcrypt
from sqlalchemy import text

from app.core.config import settings


def test_the_first_superuser_is_the_seeded_admin(db_session):
    row = db_session.execute(text(\'SELECT * FROM "user" WHERE email = :email\'), {"email": settings.FIRST_SUPERUSER}).one()
    assert isinstance(row.id, uuid.UUID) and row.role == "admin" and row.is_superuser and row.created_at
    assert bcrypt.checkpw(settings.FIRST_SUPERUSER_PASSWORD.encode(), row.hashed_password.encode())


def test_the_settings_point_at_this_process_database(db_session):
    database = db_session.execute(text("SELECT current_database()")).scalar()
    assert settings.SQLALCHEMY_DATABASE_URI.endswith("/" + database)
    assert db_session.execute(text(\'SELECT count(*) FROM "user"\')).scalar() == 2
'''


def write(project: Project) -> None:
    project.write("alembic.ini", ALEMBIC_INI)
    project.write("migrations/env.py", ENV_PY)
    project.write("migrations/script.py.mako", "")
    for index, body in enumerate(STEPS):
        down = f'"{index:04d}"' if index else "None"
        project.write(f"migrations/versions/{index + 1:04d}_step.py", REVISION.format(rev=f"{index + 1:04d}", down=down, body=body))
    project.write("app/__init__.py", "")
    project.write("app/core/__init__.py", "")
    project.write("app/core/config.py", SETTINGS)
    project.write("tests/test_users.py", TESTS)
    project.write("pytest.ini", "[pytest]\npythonpath = .\nfilterwarnings = error\nasyncio_default_fixture_loop_scope = function\n")
    project.write("pyproject.toml", '[project]\nname = "backend"\nversion = "0.1.0"\n')
