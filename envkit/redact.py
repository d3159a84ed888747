"""Secrets out of everything envkit prints or writes: by value, in every encoding envkit writes them in.

A password reaches files in several spellings: raw in a server log, with
``$`` doubled and JSON/YAML-escaped in a compose file (``"Pg$$x \\"q\\""``),
percent-encoded in a URL, JSON-escaped in ``environment.json``, shell-quoted
in ``envkit env`` output. Replacing only the raw value leaves the others, so a
:class:`Redactor` replaces each secret in all of them. It is the one helper
for every place a secret could be printed: the diagnostics bundle, ``status``,
the connection lines of ``up``, error messages.
"""

from __future__ import annotations

import contextlib
import json
import re
import shlex
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, quote_plus, unquote, urlsplit

from . import exports

if TYPE_CHECKING:
    from .config import Config
    from .state import Session

MASK = "***"
#: Shorter values are not replaced: a two-letter password would turn every "pg" in a log into "***".
MIN_LENGTH = 4
_PASSWORD_SETTING = re.compile(r"(\bpassword\s*=\s*)(?!\*\*\*)[^\s'\"]+", re.IGNORECASE)  # libpq key=value strings


def spellings(secret: str) -> set[str]:
    """``secret`` as envkit may have written it: raw, ``$$``-escaped, URL-encoded, JSON/YAML-escaped, quoted."""
    base = {
        secret,
        secret.replace("$", "$$"),  # Compose interpolation escape (render.escape)
        quote(secret, safe=""), quote(secret), quote_plus(secret),  # URLs
        shlex.quote(secret),  # envkit env (shell)
        secret.replace("\\", "\\\\").replace("'", "\\'"),  # envkit env -f dotenv
        secret.replace("'", "''"),  # YAML single-quoted
        repr(secret)[1:-1],  # a Python repr in a message
    }
    out = set(base)
    for _ in range(2):  # inside a JSON or YAML double-quoted string (render.q, environment.json), and JSON in JSON
        out |= {json.dumps(f, ensure_ascii=a)[1:-1] for f in list(out) for a in (True, False)}
    return {f for f in out if len(f) >= MIN_LENGTH}


class Redactor:
    """Replaces every known secret, in each of its :func:`spellings`, with ``***``."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        forms: set[str] = set()
        for secret in secrets:
            if isinstance(secret, str) and len(secret) >= MIN_LENGTH:
                forms |= spellings(secret)
        self._forms = sorted(forms, key=len, reverse=True)  # longest first: a spelling may contain another

    def __call__(self, text: str) -> str:
        for form in self._forms:
            text = text.replace(form, MASK)
        return urls(_PASSWORD_SETTING.sub(rf"\1{MASK}", text))

    def data(self, value: Any) -> Any:
        """A JSON-able structure with every string redacted."""
        if isinstance(value, Mapping):
            return {k: self.data(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.data(v) for v in value]
        return self(value) if isinstance(value, str) else value


_URL_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@\s]+@")


def urls(text: str) -> str:
    """Free text with the password of every URL in it replaced (``scheme://user:***@host``), known or not."""
    return _URL_PASSWORD.sub(rf"\1{MASK}@", text)


def url(value: str) -> str:
    """A URL with its password replaced by ``***`` (the rest is no secret)."""
    with contextlib.suppress(ValueError):
        password = urlsplit(value).password
        if password:
            return value.replace(f":{password}@", f":{MASK}@", 1)
    return value


def url_passwords(value: str) -> list[str]:
    """The password of a URL, as written and decoded."""
    if "://" not in value:
        return []
    with contextlib.suppress(ValueError):
        password = urlsplit(value).password
        if password:
            return [password, unquote(password)]
    return []


def for_run(config: Config | None, session: Session | None = None, extra: Iterable[str] = ()) -> Redactor:
    """A redactor for everything known to be secret about a run: passwords set or generated, and URLs' passwords."""
    values = list(extra)
    candidates: list[str] = []
    if config is not None:
        values.append(config.postgres.password or "")
        candidates += [config.postgres.url or "", config.redis.url or "", config.environ.get("DATABASE_URL", ""),
                       config.environ.get("REDIS_URL", "")]
        candidates += [v for k, v in config.environ.items() if exports.SECRET_NAMES.search(k)]
        for user in config.seed.users:  # plain seed passwords are for the users file only
            if isinstance(user, Mapping) and isinstance(user.get("password"), str):
                values.append(user["password"])
    if session is not None:
        values += exports.secrets_of(session.exports)
        values.append(session.password)
        if session.password:  # each service's {{ secret }}, wherever a command or a log shows it
            from .services.user import secret

            values += [secret(session.password, name) for name in [*session.services, *session.info]]
        candidates += [*session.exports.values(), *strings(session.resources)]
    for value in candidates:
        values += url_passwords(value)
    return Redactor(v for v in values if v)


def strings(value: Any) -> Iterator[str]:
    """Every string inside nested mappings, lists and tuples."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from strings(item)
