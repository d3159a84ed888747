"""Spare copies: a cache entry's data directory, copied to tmpfs ahead of time.

Starting from the cache means copying a cluster (1,300 files for the demo,
2,500 with 200 migrations) to tmpfs, and that copy is most of a warm start.
So when a native environment goes down, envkit copies the entry it started
from once more, into ``<tmpfs>/.envkit-spares-<uid>/``; the next start on the same
entry renames that copy into place (one ``rename()``, whatever its size) and
the copy is off the path the user waits on. ``envkit test`` and ``envkit run``
make it while their command runs instead (``prepare_next``), so that their
teardown is off that path too.

- A spare is claimed by renaming it: two runs never get the same one; the
  loser copies from the cache as before.
- It is named after the entry and the moment it was stored: an entry stored
  again (after eviction, or ``cache clear``) never gets an older spare.
- Bounded: one spare per entry, at most :data:`MAX_SPARES` in all, none when
  tmpfs has less than twice its size free; spares of a cache folder that no
  longer exists, and half-made ones, are removed. ``envkit cache clear``
  removes the cache's spares; ``cache_spare = false`` turns them off.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("envkit")

MAX_SPARES = 8
_STALE = 600.0  # seconds after which a half-made or claimed-but-abandoned spare is removed


def tmpfs_root() -> Path:
    """Where run directories live: /dev/shm when writable, else the temp dir."""
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())


def base() -> Path:
    """This user's spares (per user: /dev/shm is shared, and another user's folder is not writable)."""
    return tmpfs_root() / f".envkit-spares-{os.getuid()}"


def folder(cache_root: Path) -> Path:
    """The spares of one cache folder."""
    return base() / hashlib.sha256(str(cache_root).encode()).hexdigest()[:16]


def name(entry: Path) -> str:
    """``<kind>-<key>-<stamp>``: the entry, and when it was stored."""
    stamp = hashlib.sha256((entry / ".complete").read_bytes()).hexdigest()[:8]
    return f"{entry.parent.name}-{entry.name}-{stamp}"


def take(cache_root: Path, entry: Path, dest: Path) -> bool:
    """Move the spare of ``entry``'s ``pgdata`` to ``dest`` (on the same tmpfs); False when there is none."""
    try:
        spare = folder(cache_root) / name(entry)
    except OSError:
        return False
    claimed = spare.with_name(f".{spare.name}.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        os.rename(spare, claimed)  # atomic: whoever renames it owns it
    except OSError:
        return False
    try:
        os.rename(claimed / "pgdata", dest)
        return True
    except OSError as exc:  # not on the same file system after all: copy from the cache instead
        log.debug("spare %s unusable: %s", spare.name, exc)
        return False
    finally:
        shutil.rmtree(claimed, ignore_errors=True)


def make(cache_root: Path, entry: Path, copy: Callable[[Path, Path], None]) -> Path | None:
    """Copy ``entry``'s ``pgdata`` into a spare with ``copy(src, dest)``, unless one is waiting or tmpfs is short."""
    home = folder(cache_root)
    try:
        spare = home / name(entry)
    except OSError:
        return None  # the entry is gone (evicted, cache cleared)
    if spare.exists():
        return None
    size = _size_of(entry)
    stats = os.statvfs(tmpfs_root())
    if stats.f_bavail * stats.f_frsize < 2 * size + (64 << 20):
        log.debug("not keeping a spare of %s: tmpfs has less than twice its size free", entry.name)
        return None
    base().mkdir(exist_ok=True, mode=0o700)
    home.mkdir(exist_ok=True, mode=0o700)
    (home / ".root").write_text(str(cache_root))
    tmp = home / f".{spare.name}.{os.getpid()}.tmp"
    try:
        tmp.mkdir(mode=0o700)
        copy(entry / "pgdata", tmp / "pgdata")
        os.rename(tmp, spare)
    except OSError as exc:
        log.debug("could not keep a spare of %s: %s", entry.name, exc)
        shutil.rmtree(tmp, ignore_errors=True)
        return None
    tidy()
    return spare


def listed(cache_root: Path) -> list[str]:
    """The spares waiting for the next start, by name."""
    return sorted(p.name for p in _children(folder(cache_root)) if not p.name.startswith("."))


def clear(cache_root: Path) -> None:
    shutil.rmtree(folder(cache_root), ignore_errors=True)


def tidy() -> None:
    """Remove spares of vanished cache folders, abandoned half-made ones, and all but the newest :data:`MAX_SPARES`."""
    now = time.time()
    spares: list[tuple[float, Path]] = []
    for home in _children(base()):
        try:
            root = Path((home / ".root").read_text())
        except OSError:
            root = None
        if root is None or not root.is_dir():
            shutil.rmtree(home, ignore_errors=True)
            continue
        for item in _children(home):
            try:
                age = now - item.stat().st_mtime
            except OSError:
                continue
            if item.name.startswith("."):
                if age > _STALE:
                    shutil.rmtree(item, ignore_errors=True)
            else:
                spares.append((age, item))
    for _, item in sorted(spares)[MAX_SPARES:]:
        shutil.rmtree(item, ignore_errors=True)


def _children(path: Path) -> list[Path]:
    try:
        return [p for p in path.iterdir() if p.is_dir()]
    except OSError:
        return []


def _size_of(entry: Path) -> int:
    recorded = (entry / ".complete").read_text().split()
    return int(recorded[1]) if len(recorded) > 1 and recorded[1].isdigit() else 0
