"""The variables a running environment hands to tests and tools, and their formats.

Built-in names: ``DATABASE_URL`` (SQLAlchemy form, psycopg 3 driver),
``REDIS_URL``, libpq's ``PG*`` (so ``psql`` needs no arguments), and
``ENVKIT_*`` pointers to the state. ``[tool.envkit.env]`` adds the names an
application reads itself, rendered with Jinja2 from the same values, the
asyncio URLs (asyncpg, psycopg) and the users the seed names (:class:`Users`).
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import shlex
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from .errors import ConfigError

if TYPE_CHECKING:
    from .config import Config
    from .services import Running
    from .state import Session

log = logging.getLogger("envkit")
FORMATS = ("shell", "dotenv", "json", "github")
#: Exported names whose values are secrets: masked in CI logs, never printed by default.
SECRET_NAMES = re.compile(r"PASSWORD|SECRET|TOKEN|_URL$|^DATABASE_URL", re.IGNORECASE)


def async_driver(config: Config) -> str:
    """The SQLAlchemy asyncio driver: ``postgres.async_driver``; auto is asyncpg when it is installed, else psycopg."""
    from .services.postgres import async_driver as driver

    return driver(config.postgres.async_driver)


class Users(list):  # type: ignore[type-arg]
    """The users the seed names, as template values: ``users[0].email``, ``users.admin.password``.

    A name finds the user whose username, email, name or full_name it is, or
    whose email starts with it and ``@`` (``users.admin``: admin@example.com),
    else the first user with that role. Only what the seed file and ``seed.users`` say is
    there (no generated column: those exist once the rows are inserted).
    """

    def __getitem__(self, key: Any) -> Any:
        if not isinstance(key, str):
            return super().__getitem__(key)
        for match in (lambda u: key in (u.get("username"), u.get("email"), u.get("name"), u.get("full_name")),
                      lambda u: str(u.get("email", "")).partition("@")[0] == key,
                      lambda u: u.get("role") == key):
            for user in self:
                if match(user):
                    return user
        known = ", ".join(str(u.get("username") or u.get("email") or u.get("name") or "?") for u in self) or "none"
        raise KeyError(f"no seeded user {key!r} (by username, email, name or role; seeded: {known})")

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError as exc:
            raise AttributeError(exc.args[0]) from None


def context(config: Config, running: Running, session: Session) -> dict[str, Any]:
    """What ``[env]`` templates see: each service's values under its name, the project, the users."""
    ctx: dict[str, Any] = {"project": config.project, "name": session.label, "backend": running.backend}
    for name, endpoint in running.services.items():
        ctx[name] = endpoint.context()
    if running.postgres:
        ctx["postgres"]["async_url"] = running.postgres.url(async_driver(config))
    if any("users" in template for template in config.env.values()):  # read the seed only when a template may use it
        from .provision.seed import load_users

        ctx["users"] = Users(load_users(config))
    return ctx


def build(config: Config, running: Running, session: Session) -> dict[str, str]:
    """Every service's own exports (DATABASE_URL and PG*, REDIS_URL, a user service's table), envkit's pointers, [env]."""
    env: dict[str, str] = {}
    for endpoint in running.services.values():
        env.update(endpoint.exports())
    env.update(ENVKIT_NAME=session.label, ENVKIT_STATE_FILE=str(session.file), ENVKIT_USERS_FILE=str(session.users_file))
    if config.migrations.schema:
        env["ENVKIT_SCHEMA"] = config.migrations.schema
    env.update(render(config.env, context(config, running, session), config.source))
    for name, template in config.env.items():
        if "password" in template.lower() and not SECRET_NAMES.search(name):
            log.warning("env.%s renders a password, but its name says neither PASSWORD, SECRET nor TOKEN: envkit "
                        "masks exports by name, so it cannot mask this one in CI logs; rename it if you can", name)
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


def secrets_of(env: Mapping[str, str], passwords: Iterable[str] = ()) -> list[str]:
    """Values that must be masked: passwords, URLs that carry one, and any value holding a seeded user's ``passwords``."""
    known = [p for p in passwords if p]
    out = []
    for key, value in env.items():
        if key in ("PGPASSWORD",) or (SECRET_NAMES.search(key) and ("PASSWORD" in key.upper() or "@" in value)):
            out.append(value)
        elif any(p in value for p in known):
            out.append(value)
    return [v for v in out if v]


def _dotenv_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")
