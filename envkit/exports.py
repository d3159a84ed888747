"""The variables a running environment hands to tests and tools, and their formats.

Built-in names: ``DATABASE_URL`` (SQLAlchemy form, psycopg 3 driver),
``REDIS_URL``, libpq's ``PG*`` (so ``psql`` needs no arguments), and
``ENVKIT_*`` pointers to the state. ``[tool.envkit.env]`` adds the names an
application reads itself, rendered with Jinja2 from the same values.
"""

from __future__ import annotations

import json
import re
import secrets
import shlex
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .errors import ConfigError

if TYPE_CHECKING:
    from .backends.base import Running
    from .config import Config
    from .state import Session

FORMATS = ("shell", "dotenv", "json", "github")
#: Exported names whose values are secrets: masked in CI logs, never printed by default.
SECRET_NAMES = re.compile(r"PASSWORD|SECRET|TOKEN|_URL$|^DATABASE_URL", re.IGNORECASE)


def context(config: Config, running: Running, session: Session) -> dict[str, Any]:
    pg, redis = running.postgres, running.redis
    ctx: dict[str, Any] = {"project": config.project, "name": session.label, "backend": running.backend}
    if pg:
        ctx["postgres"] = {"host": pg.host, "port": pg.port, "user": pg.user, "password": pg.password,
                           "database": pg.database, "url": pg.url(), "libpq_url": pg.libpq(),
                           "async_url": pg.url("psycopg_async")}
    if redis:
        ctx["redis"] = {"host": redis.host, "port": redis.port, "db": redis.db, "url": redis.url}
    for name, info in running.extra.items():
        ctx[name] = info
    return ctx


def build(config: Config, running: Running, session: Session) -> dict[str, str]:
    env: dict[str, str] = {}
    pg, redis = running.postgres, running.redis
    if pg:
        env.update(DATABASE_URL=pg.url(), PGHOST=pg.host, PGPORT=str(pg.port), PGUSER=pg.user,
                   PGPASSWORD=pg.password, PGDATABASE=pg.database)
    if redis:
        env["REDIS_URL"] = redis.url
    for info in running.extra.values():
        env.update({k: str(v) for k, v in info.get("exports", {}).items()})
    env.update(ENVKIT_NAME=session.label, ENVKIT_STATE_FILE=str(session.file), ENVKIT_USERS_FILE=str(session.users_file))
    if config.migrations.schema:
        env["ENVKIT_SCHEMA"] = config.migrations.schema
    env.update(render(config.env, context(config, running, session), config.source))
    return env


def render(templates: Mapping[str, str], ctx: Mapping[str, Any], source: str) -> dict[str, str]:
    if not templates:
        return {}
    import jinja2

    jinja = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False)
    out = {}
    for name, template in templates.items():
        try:
            out[name] = jinja.from_string(template).render(ctx)
        except jinja2.TemplateError as exc:
            raise ConfigError(
                f"{source}: env.{name} = {template!r} cannot be rendered: {exc}. "
                f"Available: {', '.join(sorted(ctx))} (e.g. {{{{ postgres.port }}}})"
            ) from None
    return out


def format_env(env: Mapping[str, str], fmt: str) -> str:
    if fmt == "shell":
        return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())
    if fmt == "dotenv":
        return "".join(f"{k}='{_dotenv_escape(v)}'\n" for k, v in env.items())
    if fmt == "json":
        return json.dumps(dict(env), indent=2) + "\n"
    if fmt == "github":
        return github_env(env)
    raise ConfigError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")


def github_env(env: Mapping[str, str]) -> str:
    """Lines for ``$GITHUB_ENV``: multi-line values use the heredoc syntax with a random delimiter."""
    lines = []
    for key, value in env.items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", key):
            raise ConfigError(f"cannot export {key!r} to GitHub Actions: a name has letters, digits, '_' and '-' only")
        if "\n" in value or "\r" in value:
            delim = f"ENVKIT_EOF_{secrets.token_hex(8)}"
            while delim in value:  # a value cannot end the block early, even by a one-in-2^64 chance
                delim = f"ENVKIT_EOF_{secrets.token_hex(8)}"
            lines.append(f"{key}<<{delim}\n{value}\n{delim}\n")
        else:
            lines.append(f"{key}={value}\n")
    return "".join(lines)


def secrets_of(env: Mapping[str, str]) -> list[str]:
    """Values that must be masked: passwords, and URLs that carry one."""
    out = []
    for key, value in env.items():
        if key in ("PGPASSWORD",) or (SECRET_NAMES.search(key) and ("PASSWORD" in key.upper() or "@" in value)):
            out.append(value)
    return [v for v in out if v]


def _dotenv_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")
