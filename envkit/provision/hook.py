"""The seed hook: a team's own seeder, sync or ``async def``, run as it is.

What it is given follows its first parameter::

    def seed(conn)                        a SQLAlchemy Connection, in a transaction committed afterwards
    def seed(session: Session)            an ORM Session (annotated ``Session``, or named ``session``)
    async def seed(conn)                  an AsyncConnection, on ``postgres.async_driver``
    async def seed(session: AsyncSession) an AsyncSession
    def seed() / async def seed()         nothing: the hook connects itself (``DATABASE_URL`` is set)

A session is committed after the hook returns (a hook that commits itself is
fine); anything the hook raises is a :class:`SeedError` and nothing is kept.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any

from ..config import Config
from ..errors import SeedError
from .migrate import _isolated, import_target

if TYPE_CHECKING:
    from ..services import PostgresEndpoint


def run(config: Config, pg: PostgresEndpoint, env: Mapping[str, str]) -> None:
    """Import ``seed.hook`` with the environment's variables set, and run it on the database."""
    hook = config.seed.hook or ""
    with _isolated(env, config.root, config.root):
        try:
            function = import_target(hook)
        except (ImportError, AttributeError, ValueError) as exc:
            raise SeedError(f"seed.hook {hook!r} cannot be imported: {exc}; use 'package.module:function'") from None
        if not callable(function):
            raise SeedError(f"seed.hook {hook!r} is a {type(function).__name__}, not a function")
        wants = wanted_argument(function)
        try:
            if inspect.iscoroutinefunction(function):
                from ..services.postgres import async_driver

                _run_coroutine(_run_async(function, wants, pg.url(async_driver(config.postgres.async_driver))))
            else:
                _run_sync(function, wants, pg.url())
        except SeedError:
            raise
        except ModuleNotFoundError as exc:
            raise SeedError(f"seed.hook {hook}: {exc}. An async hook runs on postgres.async_driver "
                            f"({config.postgres.async_driver}): install that driver (pip install asyncpg) "
                            "or set postgres.async_driver = \"psycopg\"") from None
        except Exception as exc:  # noqa: BLE001 - user code: report whatever it raised
            raise SeedError(f"seed.hook {hook} raised {type(exc).__name__}: {str(exc).strip()[:500]}") from None


def wanted_argument(function: Callable[..., Any]) -> str:
    """``"none"``, ``"session"`` or ``"connection"``: what the hook's first parameter asks for."""
    try:
        params = [p for p in inspect.signature(function).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
    except (TypeError, ValueError):
        return "connection"
    if not params:
        return "none"
    annotation = params[0].annotation
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    if "Session" in text or (annotation is params[0].empty and params[0].name in ("session", "db_session")):
        return "session"
    return "connection"


def _run_sync(function: Callable[..., Any], wants: str, url: str) -> None:
    if wants == "none":
        function()
        return
    from sqlalchemy import create_engine

    engine = create_engine(url)
    try:
        if wants == "session":
            from sqlalchemy.orm import Session

            with Session(engine, expire_on_commit=False) as session:
                function(session)
                session.commit()
        else:
            with engine.begin() as conn:
                function(conn)
    finally:
        engine.dispose()


async def _run_async(function: Callable[..., Any], wants: str, url: str) -> None:
    if wants == "none":
        await function()
        return
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
    from sqlalchemy.pool import NullPool

    engine = create_async_engine(url, poolclass=NullPool)
    try:
        if wants == "session":
            async with AsyncSession(engine, expire_on_commit=False) as session:
                await function(session)
                await session.commit()
        else:
            async with engine.begin() as conn:
                await function(conn)
    finally:
        await engine.dispose()


def _run_coroutine(coro: Coroutine[Any, Any, None]) -> None:
    """``asyncio.run``, or in a thread of its own when this thread already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(coro)
        return
    failure: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(coro)
        except BaseException as exc:  # noqa: BLE001 - handed back to the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=target, name="envkit-seed-hook")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
