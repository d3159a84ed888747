"""Migrated-and-seeded snapshots for the docker backend.

**Save** (once, after a run that migrated and seeded): an online base backup
of the container's data directory, taken with PostgreSQL's own backup API.
Between ``pg_backup_start`` and ``pg_backup_stop`` the server forces
full-page writes (the container runs with them off), so a copy of the files
made while it runs is consistent once the WAL written meanwhile is replayed.
The files are streamed out with ``docker exec ... tar``, the WAL after the
backup ends, and stored in the cache as one tar plus the ``backup_label`` that
tells PostgreSQL where to start recovery.

**Restore**: the postgres service is rendered with an entrypoint that waits for
a marker file, then runs the image's own entrypoint. envkit streams the tar
into the container's tmpfs (``docker exec -i ... tar -x``) and writes the
marker; the entrypoint finds an initialised data directory, so there is no
initdb and no two-phase first start, and PostgreSQL replays a few kilobytes
of WAL. A restore that fails empties the data directory and releases the
entrypoint all the same: the image initialises from scratch, and envkit
migrates and seeds as if there had been no snapshot.

The cache key holds the image's id, its data path and entrypoint, the
postgres template and initdb options, besides the project's fingerprint
(migrations, seeds, hooks): a different image or template never restores
another's data.

This is the docker backend's one piece of provisioning that knows a service
by name (``SERVICE``, postgres): the backend asks :func:`find` for a
:class:`Restore`, puts its waiting entrypoint in the plan, has it stream the
data in once the container exists (:meth:`Restore.into`), and lets the
:class:`Restored` server's endpoint be probed with the snapshot's password;
:func:`keep` saves one after a run. Everything else in the backend runs a
list of services.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ... import cache, progress
from ...config import Config
from ...errors import EnvkitError
from ...proc import reading, run
from ...services import Endpoint, PostgresEndpoint, postgres
from ...state import Session, write_private
from ..base import Running
from . import engine
from .render import Plan, builtin_templates, template_dirs

log = logging.getLogger("envkit")

SERVICE = postgres.NAME  # the service whose data a snapshot holds

MARKER = "/tmp/envkit-restored"
ARCHIVE = "pgdata.tar"
META = "meta.json"
USERS = "users.json"
#: Left out of the copy, as pg_basebackup leaves them out: the running server's own files, and WAL (taken after).
_SKIP_FILES = {"postmaster.pid", "postmaster.opts", "backup_label", "tablespace_map", "backup_label.old"}
_SKIP_CONTENT = ("pg_wal/", "pg_replslot/", "pg_stat_tmp/", "pg_dynshmem/", "pg_notify/", "pg_serial/",
                 "pg_snapshots/", "pg_subtrans/")

_RESTORE = ('mkdir -p "$1" && tar -xf - -C "$1" && : > ' + MARKER + ' && exit 0; status=$?; '
            'rm -rf "$1"/* 2>/dev/null; : > ' + MARKER + '; exit $status')
_SAVE = 'cd "$1" && exec tar -cf - "$2"'


def entry_key(config: Config, image: dict[str, Any], pgdata: str, template_text: str, key: str) -> str:
    """The cache entry for this project's snapshot on this image and postgres template."""
    digest = hashlib.sha256()
    cfg = image.get("Config") or {}
    for part in (image.get("Id", ""), pgdata, json.dumps(cfg.get("Entrypoint")), postgres.image_initdb_args(config.postgres.image),
                 template_text):
        digest.update(str(part).encode() + b"\0")
    return f"docker-{digest.hexdigest()[:12]}-{key}"


@dataclass(frozen=True)
class Restore:
    """A cached snapshot this run's postgres starts from."""

    entry: Path
    pgdata: str  # the data path inside the container
    docker: str  # the docker CLI that streams it in
    entrypoint: list[str] | None  # the image's own, run once the data is in place
    builtin_template: bool  # envkit's own services/postgres.yml.j2, which renders the waiting entrypoint

    def waiting(self, plan: Plan, timeout: float) -> Plan:
        """``plan`` with postgres's entrypoint waiting (at most ``timeout``) for the data."""
        return dataclasses.replace(plan, entrypoints={**plan.entrypoints,
                                                      SERVICE: waiting_entrypoint(self.entrypoint, timeout)})

    def rendered(self, text: str) -> bool:
        """Whether the rendered compose file waits for the data; a user's own postgres template may not (said once)."""
        if self.builtin_template or _waits(text):
            return True
        log.warning("postgres: the postgres template does not render the snapshot's `entrypoint` (see envkit's "
                    "own services/postgres.yml.j2); starting without the cached snapshot")
        return False

    def into(self, env: dict[str, str], found: dict[str, str], users_file: Path) -> Restored | None:
        """Stream the data into the waiting container (``found``: service -> container id); None when that failed
        and the container starts afresh (migrate and seed as usual)."""
        progress.note(SERVICE, "restoring the migrated and seeded snapshot")
        password = restore(self.docker, env, found[SERVICE], self.entry, self.pgdata, users_file)
        return None if password is None else Restored(password)


@dataclass(frozen=True)
class Restored:
    """A restored server: its superuser keeps the snapshot's password until provisioning sets this run's."""

    password: str = field(repr=False)

    def admit(self, service: str, endpoint: Endpoint) -> Endpoint:
        """``endpoint`` with an admin URL the restored server accepts (probes and provisioning use it)."""
        if service != SERVICE or not isinstance(endpoint, PostgresEndpoint):
            return endpoint
        admin = dataclasses.replace(endpoint, password=self.password)
        return dataclasses.replace(endpoint, admin_url=admin.libpq(database="postgres"))


def find(config: Config, session: Session, docs: engine.Inspector, key: str | None) -> Restore | None:
    """Where this run's snapshot lives (recorded for :func:`keep`); a :class:`Restore` when the cache holds it."""
    if not key or not config.postgres.enabled:
        return None
    docker = engine.docker_cli(config.environ)
    image = docs.image(config.postgres.image)
    if docker is None or image is None:  # no CLI to stream it with; an image compose has yet to pull
        return None
    pgdata = engine.image_env(image).get("PGDATA") or postgres.PGDATA
    path, template_text = template(config)
    name = entry_key(config, image, pgdata, template_text, key)
    session.resources["snapshot"] = {"entry": name, "pgdata": pgdata, "docker": docker}
    entry = cache.lookup(config, "snapshots", name)
    if entry is None:
        return None
    return Restore(entry, pgdata, docker, (image.get("Config") or {}).get("Entrypoint"),
                   builtin_template=path is not None and path.parent.parent == builtin_templates())


def keep(config: Config, session: Session, running: Running) -> None:
    """Keep the freshly migrated and seeded data directory (an online backup) for the next run."""
    where = session.resources.get("snapshot")
    if not where or running.postgres is None:
        return
    t0 = time.perf_counter()
    try:
        save(config, where["entry"], where["docker"], engine.compose_env(config.environ),
             session.resources["containers"][SERVICE], where["pgdata"], running.postgres, session.users_file)
    except Exception as exc:  # noqa: BLE001 - a snapshot only saves time: this run goes on (a tar error, a
        # server refusing the backup API, a full disk...), and says why the next one will not be faster
        log.warning("postgres: could not save a snapshot for the next run (%s); the next run migrates and seeds "
                    "again", str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__)
        return
    log.debug("postgres: snapshot %s saved in %.2f s", where["entry"], time.perf_counter() - t0)


def template(config: Config) -> tuple[Path | None, str]:
    """The postgres template this project renders, and its text."""
    for folder in template_dirs(config):
        path = folder / postgres.TEMPLATE
        if path.is_file():
            return path, path.read_text()
    return None, ""


def waiting_entrypoint(image_entrypoint: list[str] | None, timeout: float) -> list[str]:
    """An entrypoint that waits for the restored data (at most ``timeout``), then runs the image's own."""
    rounds = max(int(timeout / 0.02), 50)
    script = (f'n=0; while [ ! -e {MARKER} ]; do n=$((n+1)); if [ "$n" -gt {rounds} ]; then '
              'echo "envkit: the snapshot to start from never arrived (was envkit stopped?)" >&2; exit 1; fi; '
              'sleep 0.02 2>/dev/null || sleep 1; done; exec "$@"')
    return ["sh", "-c", script, "envkit-wait", *(image_entrypoint or [])]


def restore(docker: str, env: dict[str, str], container: str, entry: Path, pgdata: str, users_file: Path) -> str | None:
    """Stream the snapshot into the waiting container; the admin password it holds, or None when it failed.

    Either way the container's entrypoint is released: on failure it starts from an empty data directory.
    """
    try:
        meta = json.loads((entry / META).read_text())
        run([docker, "exec", "-i", container, "sh", "-c", _RESTORE, "envkit-restore", pgdata], env=env,
            stdin=entry / ARCHIVE, timeout=300)
    except Exception as exc:  # noqa: BLE001 - whatever went wrong, the container must not wait for ever
        log.warning("postgres: could not restore the cached snapshot %s (%s); starting from scratch: migrations "
                    "and seeds run as usual", entry.name, str(exc).strip().splitlines()[-1] if str(exc).strip() else exc)
        _release(docker, env, container, pgdata)
        return None
    if (entry / USERS).exists():
        write_private(users_file, (entry / USERS).read_text())
    return str(meta["password"])


def _waits(text: str) -> bool:
    """Whether the rendered postgres service waits for a restored snapshot (a user's own template may not)."""
    import yaml  # 30 ms: only asked of a user's own postgres template; envkit's own renders the wait

    service = (yaml.safe_load(text).get("services") or {}).get(SERVICE) or {}
    entrypoint = service.get("entrypoint") or []
    return len(entrypoint) > 3 and entrypoint[3] == "envkit-wait"


def _release(docker: str, env: dict[str, str], container: str, pgdata: str) -> None:
    """Let the image's entrypoint start afresh on an empty data directory, unless the restore already did
    (then the entrypoint may be initialising that directory: leave it alone)."""
    script = f'[ -e {MARKER} ] || {{ rm -rf "$1"/* 2>/dev/null; : > {MARKER}; }}'
    result = run([docker, "exec", container, "sh", "-c", script, "envkit-release", pgdata], env=env, check=False,
                 timeout=60)
    if result.returncode:
        log.warning("postgres: could not release the container's entrypoint: %s", result.stdout.strip())


def save(config: Config, name: str, docker: str, env: dict[str, str], container: str, pgdata: str,
         pg: PostgresEndpoint, users_file: Path) -> None:
    """Store a consistent copy of the running server's data directory in the cache under ``name``."""
    import psycopg

    def fill(folder: Path) -> None:
        with psycopg.connect(pg.admin_url, autocommit=True, connect_timeout=10) as conn:
            version = conn.info.server_version
            if version < 100000:
                raise EnvkitError(f"PostgreSQL {version // 10000}.{version // 100 % 100} is too old for snapshots (10+)")
            start, stop = (("pg_backup_start(%s, true)", "pg_backup_stop(false)") if version >= 150000
                           else ("pg_start_backup(%s, true, false)", "pg_stop_backup(false, false)"))
            conn.execute(f"SELECT {start}", ("envkit snapshot",))
            with tarfile.open(folder / ARCHIVE, "w", format=tarfile.USTAR_FORMAT) as out:
                try:
                    owner = _copy(out, [docker, "exec", container, "sh", "-c", _SAVE, "envkit-save", pgdata, "."], env,
                                  keep=lambda n: n not in _SKIP_FILES and not any(n.startswith(p) and n != p.rstrip("/")
                                                                                 for p in _SKIP_CONTENT))
                finally:  # always: a backup left open keeps full-page writes forced on
                    row = conn.execute(f"SELECT labelfile, spcmapfile FROM {stop}").fetchone()
                assert row is not None
                label, spcmap = row
                if spcmap:
                    raise EnvkitError("the server has tablespaces outside its data directory")
                _copy(out, [docker, "exec", container, "sh", "-c", _SAVE, "envkit-save", pgdata, "pg_wal"], env,
                      keep=lambda n: n != "pg_wal" and not n.startswith("pg_wal/archive_status/"))
                _add(out, "backup_label", label.encode(), owner)
        write_private(folder / META, json.dumps({"password": pg.password, "user": pg.user, "pgdata": pgdata,
                                                 "created": time.time()}))
        if users_file.exists():
            write_private(folder / USERS, users_file.read_text())

    cache.store(config, "snapshots", name, fill=fill)


def _copy(out: tarfile.TarFile, argv: list[str], env: dict[str, str], keep: Any) -> tarfile.TarInfo | None:
    """Copy the members of the tar a command writes into ``out``; returns the PG_VERSION member (its owner)."""
    owner = None
    with reading(argv, env=env) as stream:
        with tarfile.open(fileobj=stream, mode="r|") as source:  # type: ignore[call-overload]
            for member in source:
                name = member.name[2:] if member.name.startswith("./") else member.name
                if name in ("", ".") or not keep(name.rstrip("/")):
                    continue
                member.name = name
                out.addfile(member, source.extractfile(member) if member.isfile() else None)
                if name == "PG_VERSION":
                    owner = member
    return owner


def _add(out: tarfile.TarFile, name: str, data: bytes, like: tarfile.TarInfo | None) -> None:
    import io

    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o600, int(time.time())
    if like is not None:
        info.uid, info.gid, info.uname, info.gname = like.uid, like.gid, like.uname, like.gname
    out.addfile(info, io.BytesIO(data))

