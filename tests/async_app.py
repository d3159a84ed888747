"""A small FastAPI application on ``postgresql+asyncpg://``, written out as a project for the real tests.

Its settings (pydantic-settings) are read at import and need every variable;
its users are seeded by envkit from TOML and named in ``[env]`` as its first
superuser; its own async seeder (``app.seed:seed``) adds the starter items.
Configuration only: no envkit code in it.
"""

from __future__ import annotations

from conftest import Project

SCHEMA = """
CREATE TABLE users (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  email text UNIQUE NOT NULL,
  full_name text,
  hashed_password text NOT NULL,
  is_superuser boolean NOT NULL DEFAULT false
);
CREATE TABLE items (id serial PRIMARY KEY, title text UNIQUE NOT NULL, owner_id uuid NOT NULL REFERENCES users (id));
"""

ENVKIT_TOML = """
[migrations]
kind = "sql"
directory = "migrations"

[seed]
table = "users"
password_column = "hashed_password"
hook = "app.seed:seed"
users = [
  { email = "root@example.com", full_name = "Root", password = "root-Secret-9", is_superuser = true },
  { email = "ann@example.com", full_name = "Ann", password = "ann-pw-1234" },
]

[env]
SQLALCHEMY_DATABASE_URI = "{{ postgres.async_url }}"
FIRST_SUPERUSER = "{{ users[0].email }}"
FIRST_SUPERUSER_PASSWORD = "{{ users['root@example.com'].password }}"
"""

SETTINGS = '''
from pydantic_settings import BaseSettings


class Settings(BaseSettings):
    SQLALCHEMY_DATABASE_URI: str
    FIRST_SUPERUSER: str
    FIRST_SUPERUSER_PASSWORD: str


settings = Settings()
'''

MODELS = '''
import uuid

from sqlalchemy import ForeignKey
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    email: Mapped[str]
    full_name: Mapped[str | None]
    hashed_password: Mapped[str]
    is_superuser: Mapped[bool]


class Item(Base):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str]
    owner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))
'''

DB = '''
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from app.settings import settings

engine = create_async_engine(settings.SQLALCHEMY_DATABASE_URI)
SessionLocal = async_sessionmaker(engine, expire_on_commit=False)


async def get_session():
    async with SessionLocal() as session:
        yield session
'''

MAIN = '''
import bcrypt
from fastapi import Depends, FastAPI, HTTPException
from pydantic import BaseModel
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import get_session
from app.models import Item, User

app = FastAPI()


class Login(BaseModel):
    email: str
    password: str


@app.post("/login")
async def login(body: Login, session: AsyncSession = Depends(get_session)):
    user = (await session.execute(select(User).where(User.email == body.email))).scalar_one_or_none()
    if user is None or not bcrypt.checkpw(body.password.encode(), user.hashed_password.encode()):
        raise HTTPException(401)
    return {"email": user.email, "superuser": user.is_superuser}


@app.post("/items")
async def create_item(title: str, owner: str, session: AsyncSession = Depends(get_session)):
    user = (await session.execute(select(User).where(User.email == owner))).scalar_one()
    session.add(Item(title=title, owner_id=user.id))
    await session.commit()
    return {"title": title}


@app.get("/items/count")
async def count_items(session: AsyncSession = Depends(get_session)):
    return {"count": (await session.execute(select(func.count()).select_from(Item))).scalar_one()}
'''

SEEDER = '''
"""The team's own seeder, as the application runs it: async, on an AsyncSession."""
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import Item, User
from app.settings import settings


async def seed(session: AsyncSession) -> None:
    owner = (await session.execute(select(User).where(User.email == settings.FIRST_SUPERUSER))).scalar_one()
    session.add_all([Item(title=f"starter {n}", owner_id=owner.id) for n in range(3)])
    await session.commit()
'''

CONFTEST = '''
import httpx
import pytest_asyncio


@pytest_asyncio.fixture
async def client(async_db_session):
    # imported here, not at the top: pytest imports tests/conftest.py before the session starts, and the app's
    # settings are read at import; the test modules (imported later) see this process's own database
    from app.db import get_session
    from app.main import app

    async def session_override():
        yield async_db_session

    app.dependency_overrides[get_session] = session_override
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app") as c:
        yield c
    app.dependency_overrides.clear()
'''

TESTS = '''
import os

import pytest
from sqlalchemy import text

from app.db import engine
from app.settings import settings

pytestmark = pytest.mark.asyncio
DRIVER = os.environ["EXPECTED_DRIVER"]
IN_URL = {"psycopg": "psycopg_async"}.get(DRIVER, DRIVER)  # SQLAlchemy's name for psycopg 3's asyncio dialect


async def test_the_app_and_the_fixture_use_the_configured_driver(async_db_session, envkit_env):
    assert engine.url.drivername == f"postgresql+{IN_URL}"
    assert async_db_session.bind.dialect.driver == DRIVER
    assert envkit_env.async_database_url.startswith(f"postgresql+{IN_URL}://")
    database = (await async_db_session.execute(text("SELECT current_database()"))).scalar()
    assert engine.url.database == database == envkit_env.postgres.database  # the app follows this process's database


async def test_first_superuser_logs_in(client, seeded_users):
    assert seeded_users[settings.FIRST_SUPERUSER]["password"] == settings.FIRST_SUPERUSER_PASSWORD
    answer = await client.post("/login", json={"email": settings.FIRST_SUPERUSER, "password": settings.FIRST_SUPERUSER_PASSWORD})
    assert answer.status_code == 200 and answer.json() == {"email": "root@example.com", "superuser": True}
    wrong = await client.post("/login", json={"email": settings.FIRST_SUPERUSER, "password": "nope"})
    assert wrong.status_code == 401


async def test_the_async_seeder_ran(client):
    assert (await client.get("/items/count")).json() == {"count": 3}


async def test_commit_in_the_app_1(client):
    made = await client.post("/items", params={"title": "widget", "owner": "ann@example.com"})
    assert made.status_code == 200
    assert (await client.get("/items/count")).json() == {"count": 4}


async def test_commit_in_the_app_2(client):
    assert (await client.get("/items/count")).json() == {"count": 3}  # rolled back: the same title is free again
    assert (await client.post("/items", params={"title": "widget", "owner": "ann@example.com"})).status_code == 200


@pytest.mark.envkit(isolation="truncate")
async def test_own_engine_commits_for_real_1(envkit_async_engine):
    async with envkit_async_engine.begin() as conn:
        await conn.execute(text("INSERT INTO items (title, owner_id) SELECT 'real', id FROM users LIMIT 1"))
    async with engine.connect() as conn:  # the application's own engine sees the commit
        assert (await conn.execute(text("SELECT count(*) FROM items"))).scalar() == 4
    await engine.dispose()


@pytest.mark.envkit(isolation="truncate")
async def test_own_engine_commits_for_real_2(envkit_async_engine):
    async with envkit_async_engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM items"))).scalar() == 3
'''

INI = """
[pytest]
pythonpath = .
filterwarnings = error
asyncio_default_fixture_loop_scope = function
"""


def write(project: Project) -> None:
    project.configure(ENVKIT_TOML)
    project.write("migrations/001_schema.sql", SCHEMA)
    project.write("app/__init__.py", "")
    for name, text in (("settings", SETTINGS), ("models", MODELS), ("db", DB), ("main", MAIN), ("seed", SEEDER)):
        project.write(f"app/{name}.py", text)
    project.write("tests/conftest.py", CONFTEST)
    project.write("tests/test_api.py", TESTS)
    project.write("pytest.ini", INI)
