"""The on-disk cache: pristine clusters and migrated-and-seeded snapshots.

Entries are directories under ``<cache>/<kind>/<key>``, written to a temporary
name and renamed into place (readers never see half an entry), and evicted
least-recently-used first when the cache grows past ``cache_max_mb``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from .config import Config
from .proc import run
from .provision.migrate import kind_for as migration_kind
from .provision.sources import module_files

log = logging.getLogger("envkit")


def root(config: Config) -> Path:
    if config.cache_dir:
        return config.path(config.cache_dir)
    base = config.environ.get("XDG_CACHE_HOME") or str(Path(config.environ.get("HOME", "~")).expanduser() / ".cache")
    return Path(base) / "envkit"


def lookup(config: Config, kind: str, key: str) -> Path | None:
    path = root(config) / kind / key
    if (path / ".complete").exists():
        os.utime(path)
        return path
    return None


def has_entry(config: Config, kind: str, suffix: str) -> bool:
    """Whether a complete entry whose key ends with ``-suffix`` exists (for any server version); reads nothing else."""
    return any((path / ".complete").exists() for path in (root(config) / kind).glob(f"*-{suffix}"))


def copy_tree(src: Path, dst: Path) -> None:
    """Copy a directory tree, keeping owners and modes (cp is several times faster than copytree)."""
    run(["cp", "-a", "--", str(src), str(dst)])


def store(config: Config, kind: str, key: str, src: Path | None = None, extra: Iterable[Path] = (),
          fill: Callable[[Path], None] | None = None) -> Path:
    """Copy ``src`` (and ``extra`` files beside it) into the cache under ``key``; or let ``fill(folder)`` write it."""
    final = root(config) / kind / key
    final.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # unique per call, not per process: two threads storing the same key must not write into one folder
    tmp = final.with_name(f".{key}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    tmp.mkdir(mode=0o700)
    try:
        if src is not None:
            copy_tree(src, tmp / src.name)
        for file in extra:
            shutil.copy2(file, tmp / file.name)
        if fill is not None:
            fill(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # the entry's size is recorded once here, so eviction does not walk every entry's ~1,300 files on each store
    (tmp / ".complete").write_text(f"{time.time()} {_size(tmp)}\n")
    try:
        os.rename(tmp, final)
    except OSError:  # another run stored it first
        shutil.rmtree(tmp, ignore_errors=True)
    _evict(config)
    return final


def clear(config: Config) -> int:
    """Remove every cache entry; returns the bytes freed. (``envkit cache clear`` also removes the native
    backend's copies of them: :func:`envkit.backends.native.backend.clear_copies`.)"""
    path = root(config)
    size = _size(path)
    shutil.rmtree(path, ignore_errors=True)
    return size


def size_of(path: Path) -> int:
    """The bytes of the files under ``path``."""
    return _size(path)


def entries(config: Config) -> list[tuple[str, str, int, float]]:
    """(kind, key, bytes, last use) of each entry."""
    out = []
    base = root(config)
    if base.is_dir():
        for kind in sorted(p for p in base.iterdir() if p.is_dir()):
            for entry in kind.iterdir():
                if entry.name.startswith("."):  # another run's entry still being written
                    continue
                try:
                    recorded = (entry / ".complete").read_text().split()
                    used = entry.stat().st_mtime
                except OSError:  # not a complete entry (being written, or being removed)
                    continue
                size = int(recorded[1]) if len(recorded) > 1 and recorded[1].isdigit() else _size(entry)
                out.append((kind.name, entry.name, size, used))
    return out


def _evict(config: Config) -> None:
    _abandoned(root(config))
    limit = config.cache_max_mb * 1024 * 1024
    items = sorted(entries(config), key=lambda e: e[3])
    total = sum(e[2] for e in items)
    while items and total > limit:
        kind, key, size, _ = items.pop(0)
        log.info("cache: evicting %s/%s (%d MB) to stay under %d MB", kind, key, size >> 20, config.cache_max_mb)
        shutil.rmtree(root(config) / kind / key, ignore_errors=True)
        total -= size


def _abandoned(base: Path, age: float = 3600.0) -> None:
    """Remove entries a killed process left half-written (``.<key>.<pid>.<token>.tmp``) over an hour ago."""
    now = time.time()
    for tmp in base.glob("*/.*.tmp"):
        try:
            if now - tmp.stat().st_mtime > age:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            pass


def _size(path: Path) -> int:
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                pass
    return total


#: The name :func:`contents` gives the settings that decide the database's content.
SETTINGS = "(the [migrations] and [seed] settings)"


def contents(config: Config) -> dict[str, str]:
    """Everything that decides the migrated and seeded database: each file's hash, and the settings'.

    Kept in the state of each environment, so that one left up can be found stale (:func:`changed`).
    """
    def short(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()[:16]

    out = {SETTINGS: short(repr((config.database, config.postgres.user, config.migrations, config.seed)).encode())}
    for file in sorted(_content_files(config)):
        name = str(file.relative_to(config.root) if file.is_relative_to(config.root) else file)
        try:
            out[name] = short(file.read_bytes())
        except OSError:
            out[name] = "<missing>"
    return out


def changed(before: dict[str, str], now: dict[str, str]) -> list[str]:
    """What differs between two :func:`contents`: changed, added and removed names."""
    return sorted(name for name in before.keys() | now.keys() if before.get(name) != now.get(name))


def fingerprint(config: Config, *parts: str, content: dict[str, str] | None = None) -> str:
    """A key for everything that decides the migrated and seeded database's content."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() + b"\0")
    for name, value in sorted((content if content is not None else contents(config)).items()):
        digest.update(f"{name}\0{value}\0".encode())
    return digest.hexdigest()[:20]


def _content_files(config: Config) -> set[Path]:
    """The files that decide the migrated and seeded database: the migration kind's (its record says which), the seeds'."""
    s = config.seed
    files = set(migration_kind(config).files(config))
    if s.file:
        files.add(config.path(s.file))
    files.update(config.path(p) for p in s.sql)
    if s.hook:
        files.update(module_files(s.hook.split(":")[0], config.root))
    return files
