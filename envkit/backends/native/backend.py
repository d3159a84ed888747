"""The native backend: PostgreSQL and Redis as local processes on tmpfs.

Each environment gets a fresh directory on ``/dev/shm`` holding the cluster,
Redis' working directory, the unix socket and the logs. A pristine cluster is
cached per server version and init options, and copied instead of running
initdb again; a migrated-and-seeded copy is cached under the lifecycle's
fingerprint. As root, servers run as an unprivileged user through
``Popen(user=...)`` (Postgres refuses root; ``runuser`` would swallow SIGINT).
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import hashlib
import logging
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import ClassVar

from ... import cache, ports
from ...config import Config, port_request
from ...errors import BackendUnavailable, CommandFailed, EnvkitError, ServiceExited
from ...proc import RunAs, alive, marked, run, spawn, stop_groups, tail
from ...services import password, specs, waves
from ...services import postgres as postgres_service
from ...services import redis as redis_service
from ...state import Session
from ...wait import wait_for
from ..base import Running
from . import runs, spares
from .binaries import Memo, PgBinaries, find_postgres, find_redis, reachable_postgres, reachable_redis
from .spares import tmpfs_root

log = logging.getLogger("envkit")

_GRACE = 5.0  # seconds between the shutdown signal and SIGKILL


def initdb_args(bins: PgBinaries, data: Path) -> list[str]:
    return postgres_service.initdb_args(bins["initdb"], str(data), bins.major)


class NativeBackend:
    """Servers as processes in their own process groups, data on tmpfs."""

    name: ClassVar[str] = "native"

    def __init__(self) -> None:
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._spawned: list[subprocess.Popen[bytes]] = []
        self._argv: dict[str, list[str]] = {}

    # -- start -------------------------------------------------------------
    def start(self, config: Config, session: Session, stack: ExitStack, snapshot: str | None) -> Running:
        run_as = RunAs.for_servers()
        root = run_root(config, run_as)
        run_dir = root / f"envkit-{session.label}"
        run_dir.mkdir(mode=0o700)
        session.resources.update(run_dir=str(run_dir), processes={})
        session.save()
        stack.callback(self.teardown, session)
        if run_as:
            os.chown(run_dir, run_as.uid, run_as.gid)

        _password(session, config)  # postgres' password, and what each user service's secret derives from
        self._runs = self._plan(config, session, run_dir, run_as, snapshot)
        running = Running(backend=self.name)
        for group in waves(self._runs):  # each group once the groups before it answer; a group starts side by side
            for service in group:
                with _room(root):
                    service.prepare()
                self._spawn(session, service, service.argv(service.port))
            with ThreadPoolExecutor(max_workers=len(group)) as pool:
                # each wait in a copy of this context: the diagnostics' wait history and progress notes reach it
                ready = [pool.submit(contextvars.copy_context().run, self._ready, session, service, config.timeout, root)
                         for service in group]
                for service, done in zip(group, ready, strict=True):
                    running.services[service.name] = service.endpoint(done.result())
            for service in group:
                if service.facts:
                    session.info[service.name] = service.facts
        running.restored = any(getattr(service, "restored", False) for service in self._runs)
        session.save()
        return running

    def _plan(self, config: Config, session: Session, run_dir: Path, run_as: RunAs | None,
              snapshot: str | None) -> list[runs.Run]:
        """One run per service: binaries found, ports chosen, in the order they may start."""
        with ThreadPoolExecutor(max_workers=1) as pool:  # both lookups wait on `--version` subprocesses: side by side
            memo = Memo(cache.root(config) / "binaries.json" if config.cache else None)  # their --version, once
            redis_lookup = (pool.submit(find_redis, config.redis.server, config.environ, Memo(memo.path))
                            if config.redis.enabled else None)
            pg_bins = find_postgres(config.postgres.bindir, config.environ, memo) if config.postgres.enabled else None
            redis_bin = redis_lookup.result() if redis_lookup else None
        if run_as:  # the servers' user may not reach a binary in a private folder: run a copy it can reach
            copies = binary_copies(config)
            pg_bins = reachable_postgres(pg_bins, run_as, copies) if pg_bins else None
            redis_bin = reachable_redis(redis_bin, run_as, copies) if redis_bin else None
        planned: list[runs.Run] = []
        taken: set[int] = set()
        if redis_bin:
            port, strict = port_request(config.redis.port, redis_service.DEFAULT_PORT)
            port = ports.resolve("redis", port, strict)
            taken.add(port)
            planned.append(runs.RedisRun(
                "redis", port, strict, run_as=run_as, binary=redis_bin, workdir=run_dir / "redis", db=config.redis.db,
                facts={"binary": str(redis_bin.path), "source": redis_bin.source, "version": redis_bin.version,
                       "found_by": redis_bin.found_by,
                       **({"copied_from": str(redis_bin.copied_from)} if redis_bin.copied_from else {})}))
        if pg_bins:
            port, strict = port_request(config.postgres.port, postgres_service.DEFAULT_PORT)
            port = ports.resolve("postgres", port, strict, avoid=taken)
            taken.add(port)
            bins = pg_bins
            session.resources["cluster_key"] = _cluster_key(bins)
            planned.append(runs.PostgresRun(
                "postgres", port, strict, run_as=run_as, stop_signal=getattr(signal, postgres_service.STOP_SIGNAL),
                facts={"bindir": str(bins.bindir), "source": bins.source, "version": bins.version,
                       "found_by": bins.found_by, **({"copied_from": str(bins.copied_from)} if bins.copied_from else {})},
                bins=bins, run_dir=run_dir, config=config,
                password=_password(session, config),
                prepare_cluster=lambda: self._prepare_cluster(config, session, bins, run_dir / "pgdata", snapshot,
                                                              run_as)))
        user = specs(config)
        if user:  # only then the user services' modules
            from .user_runs import user_run

            planned += [user_run(config, session, spec, run_dir, taken) for spec in user]
        return planned

    def _ready(self, session: Session, run: runs.Run, timeout: float, root: Path) -> int:
        """Wait for a service; if a port chosen by envkit was grabbed meanwhile by someone else, take another."""
        port = run.port
        for attempt in range(3):
            try:
                with _room(root):
                    self._wait(session, run, port, timeout)
                return port
            except ServiceExited as exc:
                if run.strict or attempt == 2 or "Address already in use" not in exc.log_tail:
                    raise
                old, port = port, ports.free_port()
                log.warning("%s: port %d was taken while starting; retrying on %d", run.name, old, port)
                self._spawn(session, run, run.argv(port))
        raise AssertionError("unreachable")  # pragma: no cover

    def _wait(self, session: Session, run: runs.Run, port: int, timeout: float) -> None:
        log_file = Path(session.resources["run_dir"]) / f"{run.name}.log"

        def check() -> bool:
            self._exited(session, run.name)
            return run.check(port)

        # max_interval: a local server is up within 50-150 ms; backing off to 100 ms would overshoot by up to 50 ms
        wait_for(check, service=run.name, what=run.what(), timeout=timeout, max_interval=run.poll,
                 logs=lambda: tail(log_file))

    def _prepare_cluster(self, config: Config, session: Session, bins: PgBinaries, data: Path,
                         snapshot: str | None, run_as: RunAs | None) -> bool:
        cluster_key = _cluster_key(bins)
        if snapshot and config.cache:
            hit = cache.lookup(config, "snapshots", f"{cluster_key}-{snapshot}")
            if hit:
                self._from_cache(config, session, hit, data, run_as)
                if (hit / "users.json").exists():
                    shutil.copy2(hit / "users.json", session.users_file)
                    os.chmod(session.users_file, 0o600)
                log.debug("postgres: started from snapshot %s", snapshot)
                return True
        pristine = cache.lookup(config, "clusters", cluster_key) if config.cache else None
        if pristine:
            self._from_cache(config, session, pristine, data, run_as)
            return False
        if run_as:
            data.mkdir(mode=0o700)
            os.chown(data, run_as.uid, run_as.gid)
        run(initdb_args(bins, data), run_as=run_as, env=_server_env(session))
        if config.cache:
            cache.store(config, "clusters", cluster_key, data)
        return False

    @classmethod
    def _from_cache(cls, config: Config, session: Session, entry: Path, data: Path, run_as: RunAs | None) -> None:
        """The entry's cluster at ``data``: a spare renamed into place, else a copy."""
        if _spares_apply(config, data.parent):
            session.resources["spare"] = {"cache": str(cache.root(config)), "entry": str(entry)}  # for teardown
            if spares.take(cache.root(config), entry, data):
                session.info["from_spare"] = True
                if run_as and data.stat().st_uid != run_as.uid:
                    run_as.chown_tree(data)
                return
        cls._copy_in(entry / "pgdata", data, run_as)

    @staticmethod
    def _copy_in(src: Path, data: Path, run_as: RunAs | None) -> None:
        cache.copy_tree(src, data)
        if run_as and data.stat().st_uid != run_as.uid:
            run_as.chown_tree(data)

    def _spawn(self, session: Session, run: runs.Run, argv: list[str]) -> None:
        run_dir = Path(session.resources["run_dir"])
        proc = spawn(argv, log_path=run_dir / f"{run.name}.log", env=run.env or _server_env(session),
                     cwd=run.cwd or run_dir, run_as=run.run_as)
        self._procs[run.name] = proc
        self._spawned.append(proc)  # replaced ones too (a restart, a port retry): all are reaped at teardown
        self._argv[run.name] = argv
        # what another process needs to stop it: its group, the signal that stops it best, its ports for diagnostics
        session.resources["processes"][run.name] = {
            "pid": proc.pid, "pgid": proc.pid, "stop": signal.Signals(run.stop_signal).name,
            "ports": run.ports or ({run.name: run.port} if run.port else {})}
        session.save()

    def _exited(self, session: Session, service: str) -> None:
        proc = self._procs[service]
        if proc.poll() is not None:
            # no path to its log: the run directory goes with teardown (the diagnostics bundle keeps a copy)
            raise ServiceExited(f"{service} exited with code {proc.returncode} before it was ready", service,
                                tail(Path(session.resources["run_dir"]) / f"{service}.log"))

    # -- snapshot ----------------------------------------------------------
    def save_snapshot(self, config: Config, session: Session, running: Running, key: str) -> None:
        """Stop Postgres cleanly, copy the cluster into the cache, start it again."""
        assert running.postgres is not None
        run_dir = Path(session.resources["run_dir"])
        info = session.resources["processes"]["postgres"]
        stop_groups([(info["pgid"], signal.SIGINT)], _GRACE, [self._procs["postgres"]])
        extra = [session.users_file] if session.users_file.exists() else []
        entry = cache.store(config, "snapshots", f"{session.resources['cluster_key']}-{key}", run_dir / "pgdata", extra)
        if _spares_apply(config, run_dir):  # the next start renames a spare of the new snapshot into place
            session.resources["spare"] = {"cache": str(cache.root(config)), "entry": str(entry)}
        server = next(r for r in self._runs if r.name == "postgres")
        self._spawn(session, server, self._argv["postgres"])
        self._wait(session, server, running.postgres.port, config.timeout)

    # -- teardown ----------------------------------------------------------
    def teardown(self, session: Session) -> None:
        procs = session.resources.get("processes", {})
        run_dir = session.resources.get("run_dir")
        targets = []
        for service, info in procs.items():
            if _ours(info["pid"], session.label, run_dir) or info["pid"] in {p.pid for p in self._procs.values()}:
                # each service's own stop signal (Postgres: SIGQUIT, an immediate shutdown), recorded at spawn
                stop = info.get("stop") or ("SIGQUIT" if service == "postgres" else "SIGTERM")  # older states: by name
                targets.append((info["pgid"], getattr(signal, stop, signal.SIGTERM)))
        stop_groups(targets, _GRACE, self._spawned)
        if run_dir:
            shutil.rmtree(run_dir, ignore_errors=True)
        self.prepare_next(session)  # unless envkit test/run made it while their command ran

    def prepare_next(self, session: Session) -> None:
        """The spare the next start renames into place (envkit.backends.native.spares): copied from the cache
        entry this environment started from, not from its running cluster; nothing when one is waiting."""
        spare = session.resources.get("spare")
        if spare:
            try:
                run_as = RunAs.for_servers()
                spares.make(Path(spare["cache"]), Path(spare["entry"]), lambda src, dst: self._copy_in(src, dst, run_as))
            except Exception as exc:  # noqa: BLE001 - a spare is an optimisation: teardown goes on
                log.debug("no spare kept: %s", exc)

    def logs(self, session: Session, service: str | None = None) -> dict[str, str]:
        run_dir = Path(session.resources.get("run_dir", "/nonexistent"))
        names = [service] if service else sorted(session.resources.get("processes", {}))
        return {name: tail(run_dir / f"{name}.log", 10_000) for name in names}

    def diagnostics(self, session: Session) -> dict[str, dict[str, object]]:
        """Each server's whole log (up to 1 MB), whether it still runs or its exit code, its pid, command and port."""
        run_dir = Path(session.resources.get("run_dir", "/nonexistent"))
        out: dict[str, dict[str, object]] = {}
        for name, info in sorted(session.resources.get("processes", {}).items()):
            proc = self._procs.get(name)
            code = proc.poll() if proc is not None and proc.pid == info["pid"] else None
            running = code is None and marked(info["pid"], session.label)
            argv = self._argv.get(name, [])
            port = str(next(iter(info["ports"].values()))) if info.get("ports") else None  # recorded at spawn
            log_file = run_dir / f"{name}.log"
            try:
                with open(log_file, "rb") as fh:
                    fh.seek(max(0, log_file.stat().st_size - 1_000_000))
                    text = fh.read().decode(errors="replace")
            except OSError:
                text = ""
            status = "running" if running else f"exited with code {code}" if code is not None else "not running"
            out[name] = {"log": text, "state": {"status": status, "exit_code": code, "pid": info["pid"], "host": ports.HOST,
                                                "port": int(port) if port and port.isdigit() else None,
                                                "command": argv, "log_file": str(log_file)}}
        return out


def run_root(config: Config, run_as: RunAs | None) -> Path:
    """The folder run directories are made in: ``run_dir`` (ENVKIT_RUN_DIR), else /dev/shm, else the temp dir."""
    if not config.run_dir:
        return tmpfs_root()
    root = config.path(config.run_dir)
    if not root.is_dir():
        raise BackendUnavailable(f"run_dir (or ENVKIT_RUN_DIR) is {root}, which is not a folder; create it, or unset "
                                 "it to use /dev/shm")
    if run_as and not run_as.can_reach(root):
        raise BackendUnavailable(f"run_dir (or ENVKIT_RUN_DIR) is {root}, which the servers' user cannot enter (envkit "
                                 "runs as root, the servers do not); make it and the folders above it readable by "
                                 "others (chmod o+rx), or choose another run_dir")
    return root


def _spares_apply(config: Config, run_dir: Path) -> bool:
    """Spares live on tmpfs and are renamed into place: not for a run_dir elsewhere, where a rename cannot reach."""
    return config.cache_spare and run_dir.parent == tmpfs_root()


def clear_copies(config: Config) -> int:
    """Remove the spare copies of the cache's entries and the binaries copied for the servers' user: bytes freed."""
    spares.clear(cache.root(config))
    size = 0
    with contextlib.suppress(EnvkitError):
        copies = binary_copies(config)
        size += cache.size_of(copies) if copies.is_dir() else 0
        shutil.rmtree(copies, ignore_errors=True)
    return size


def binary_copies(config: Config) -> Path:
    """Where binaries the servers' user could not reach are copied (envkit.backends.native.binaries)."""
    return run_root(config, None) / f".envkit-binaries-{os.geteuid()}"


@contextlib.contextmanager
def _room(root: Path) -> Iterator[None]:
    """A full run folder as one paragraph (how much is free, what to do), not a screen of `cp` errors."""
    try:
        yield
    except (OSError, CommandFailed, ServiceExited) as exc:
        text = str(exc) + getattr(exc, "log_tail", "")
        if not (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) and "No space left on device" not in text:
            raise
        stats = os.statvfs(root)
        free, total = stats.f_bavail * stats.f_frsize / 1e6, stats.f_blocks * stats.f_frsize / 1e6
        raise BackendUnavailable(
            f"{root} is full: the servers' data did not fit (no space left on device; {free:.0f} MB free of "
            f"{total:.0f} MB). Free space there (old envkit-* folders, `envkit cache clear` for the spares), or set "
            "run_dir (ENVKIT_RUN_DIR) to a folder with more room"
        ) from None




def is_server(pid: int, label: str, run_dir: str | None) -> bool:
    """Whether this session's server ``pid`` still runs (a reused pid is someone else's): for envkit.health."""
    return alive(pid) and _ours(pid, label, run_dir)


def _ours(pid: int, label: str, run_dir: str | None) -> bool:
    """Whether ``pid`` is this session's server: its marker, or its working directory in the run directory.

    Both, because a server may rewrite its environment block (Redis' proc title did).
    """
    if marked(pid, label):
        return True
    try:
        return bool(run_dir) and os.readlink(f"/proc/{pid}/cwd").startswith(f"{run_dir}/")
    except OSError:
        return False


def _server_env(session: Session) -> dict[str, str]:
    return {"PATH": os.defpath, "TZ": "UTC", "LC_ALL": "C", "ENVKIT_SESSION": session.label}


def _cluster_key(bins: PgBinaries) -> str:
    raw = f"{bins.bindir}|{bins.version}|{' '.join(initdb_args(bins, Path('-'))[1:])}"
    return f"pg{bins.version}-{hashlib.sha1(raw.encode()).hexdigest()[:10]}"


def _password(session: Session, config: Config) -> str:
    """The environment's postgres password, made once and kept in the session (restarts keep it)."""
    session.password = session.password or password(config)
    return session.password
