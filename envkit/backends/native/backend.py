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
import errno
import hashlib
import logging
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import ClassVar

from ... import cache, ports
from ...config import DEFAULT_PG_PORT, DEFAULT_REDIS_PORT, Config, port_request
from ...errors import BackendUnavailable, CommandFailed, EnvkitError, ServiceExited
from ...proc import RunAs, alive, marked, run, spawn, stop_groups, tail
from ...services import PostgresEndpoint, RedisEndpoint, ServiceSpec, probes, specs, waves
from ...services import redis as redis_service
from ...services.user import binary, context, endpoint, render
from ...state import Session
from ...wait import wait_for
from ..base import Running
from . import spares
from .binaries import Memo, PgBinaries, find_postgres, find_redis, reachable_postgres, reachable_redis
from .spares import tmpfs_root

log = logging.getLogger("envkit")

SUPERUSER = "postgres"
_GRACE = 5.0  # seconds between the shutdown signal and SIGKILL
_POLL_MAX = 0.01  # seconds: the longest pause between two readiness checks of a local server


def initdb_args(bins: PgBinaries, data: Path) -> list[str]:
    args = [bins["initdb"], "-D", str(data), "-U", SUPERUSER, "-E", "UTF8", "--locale=C", "--no-sync",
            "--auth-local=trust", "--auth-host=scram-sha-256"]
    # 1 MB WAL segments instead of 16: every cluster copy (cache, snapshot, each start) moves 15 MB less
    return args + (["--wal-segsize=1"] if bins.major >= 11 else []) + (["--no-instructions"] if bins.major >= 14 else [])


def server_settings(config: Config, port: int, socket_dir: Path) -> dict[str, str]:
    return {
        "listen_addresses": ports.HOST,
        "port": str(port),
        "unix_socket_directories": str(socket_dir),
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "off",
        "timezone": "UTC",
        "log_timezone": "UTC",
        "jit": "off",
        "dynamic_shared_memory_type": "mmap",  # in the data directory on tmpfs, not /dev/shm/PostgreSQL.*: a killed server leaves nothing
        **config.postgres.settings,
    }


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

        running = Running(backend=self.name)
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
        redis_req = port_request(config.redis.port, DEFAULT_REDIS_PORT)
        pg_req = port_request(config.postgres.port, DEFAULT_PG_PORT)
        redis_port = ports.resolve("redis", *redis_req) if redis_bin else 0
        pg_port = ports.resolve("postgres", *pg_req, avoid={redis_port}) if pg_bins else 0

        if redis_bin:
            (run_dir / "redis").mkdir()
            if run_as:
                os.chown(run_dir / "redis", run_as.uid, run_as.gid)
            session.info["redis"] = {"binary": str(redis_bin.path), "source": redis_bin.source, "version": redis_bin.version,
                                     "found_by": redis_bin.found_by,
                                     **({"copied_from": str(redis_bin.copied_from)} if redis_bin.copied_from else {})}
            self._argv["redis"] = [
                str(redis_bin.path), "--port", str(redis_port), "--bind", ports.HOST, "--save", "", "--appendonly", "no",
                "--dir", str(run_dir / "redis"), "--daemonize", "no",
            ]
            if _at_least(redis_bin.version, (6, 2)):
                # a proc title overwrites /proc/<pid>/environ, and with it the ENVKIT_SESSION marker that
                # lets `envkit down` (another process) recognise this Redis and stop it
                self._argv["redis"] += ["--set-proc-title", "no"]
            self._spawn(session, "redis", self._argv["redis"], run_as)
        if pg_bins:
            data = run_dir / "pgdata"
            with _room(root):
                running.restored = self._prepare_cluster(config, session, pg_bins, data, snapshot, run_as)
            session.info["postgres"] = {"bindir": str(pg_bins.bindir), "source": pg_bins.source, "version": pg_bins.version,
                                        "found_by": pg_bins.found_by,
                                        **({"copied_from": str(pg_bins.copied_from)} if pg_bins.copied_from else {})}
            session.resources["cluster_key"] = _cluster_key(pg_bins)
            self._argv["postgres"] = self._postgres_argv(config, pg_bins, data, pg_port, run_dir)
            self._spawn(session, "postgres", self._argv["postgres"], run_as)

        user_waves = waves(specs(config))
        started: dict[str, tuple[dict[str, int], str]] = {}
        taken = {pg_port, redis_port}
        for spec in user_waves[0] if user_waves else []:  # what needs neither postgres nor redis starts beside them
            if not set(spec.depends_on) & {"postgres", "redis"}:
                started[spec.name] = self._start_user(config, session, spec, taken)

        if pg_bins:
            with _room(root):
                    pg_port = self._ready(session, "postgres", pg_port, pg_req[1], config, run_as,
                                      lambda port: self._wait_postgres(session, port, config.timeout),
                                      lambda port: self._postgres_argv(config, pg_bins, run_dir / "pgdata", port, run_dir))
            password = session.info.setdefault("password", config.postgres.password or _password())
            running.services["postgres"] = PostgresEndpoint(
                host=ports.HOST, port=pg_port, user=config.postgres.user, password=password,
                database=config.database, admin_url=admin_url(run_dir, pg_port), version=pg_bins.version,
            )
        if redis_bin:
            redis_port = self._ready(session, "redis", redis_port, redis_req[1], config, run_as,
                                     lambda port: self._wait_redis(session, port, config.timeout),
                                     lambda port: [*self._argv["redis"][:2], str(port), *self._argv["redis"][3:]])
            running.services["redis"] = RedisEndpoint(ports.HOST, redis_port, config.redis.db, version=redis_bin.version)
        for group in user_waves:  # each group once the groups before it (and postgres, redis) answer
            for spec in group:
                if spec.name not in started:
                    started[spec.name] = self._start_user(config, session, spec, taken)
            with ThreadPoolExecutor(max_workers=len(group)) as pool:
                waits = [pool.submit(self._wait_user, config, session, spec, *started[spec.name]) for spec in group]
                for done in waits:
                    done.result()
            for spec in group:
                running.services[spec.name] = endpoint(spec, ports.HOST, started[spec.name][0], config.project,
                                                       data_dir=started[spec.name][1])
        session.save()
        return running

    # -- user services -------------------------------------------------------
    def _start_user(self, config: Config, session: Session, spec: ServiceSpec,
                    taken: set[int]) -> tuple[dict[str, int], str]:
        """Spawn a user service on free ports, in a data directory of its own: its host ports and that directory."""
        run_dir = Path(session.resources["run_dir"])
        host_ports = {}
        for name in spec.ports:
            host_ports[name] = ports.free_port(avoid=taken)
            taken.add(host_ports[name])
        data_dir = run_dir / "services" / spec.name
        data_dir.mkdir(parents=True, mode=0o700)
        ctx = context(spec, ports.HOST, host_ports, config.project, data_dir=str(data_dir), run_dir=str(run_dir))
        argv = [binary(spec, config.environ), *(render(a, ctx, f"{spec.where} command") for a in spec.command[1:])]
        env = user_env(config, session, data_dir)
        env.update({k: render(v, ctx, f"{spec.where} environment.{k}") for k, v in spec.environment.items()})
        session.info[spec.name] = {"binary": argv[0]}
        # as this user, not the servers' one: a service from the venv (a wheel's binary) must reach the venv
        self._spawn(session, spec.name, argv, None, env=env, cwd=data_dir)
        session.resources["processes"][spec.name]["ports"] = host_ports
        session.save()
        return host_ports, str(data_dir)

    def _wait_user(self, config: Config, session: Session, spec: ServiceSpec, host_ports: dict[str, int],
                   data_dir: str) -> None:
        log_file = Path(session.resources["run_dir"]) / f"{spec.name}.log"
        probe = spec.probe
        ctx = context(spec, ports.HOST, host_ports, config.project, data_dir=data_dir)
        kind = probe.kind if probe.kind != "health" else ("tcp" if host_ports else "running")
        port = host_ports[spec.port_of(probe.port)] if kind in ("tcp", "http") else 0
        argv = [render(a, ctx, f"{spec.where} probe") for a in probe.target] if kind == "command" else []
        env = user_env(config, session, Path(data_dir))

        def check() -> bool:
            self._exited(session, spec.name)
            if kind == "tcp":
                return probes.tcp(ports.HOST, port)
            if kind == "http":
                return probes.http(ports.HOST, port, str(probe.target))
            if kind == "command":
                return probes.command(argv, env, data_dir)
            if kind == "log":
                return probes.log(log_file, str(probe.target))
            return True

        what = {"tcp": f"port {port} accepts connections", "http": f"GET {probe.target} on port {port} answers",
                "command": f"{' '.join(argv)} exits 0", "log": f"its log matches {probe.target!r}",
                "running": "its process runs"}[kind]
        wait_for(check, service=spec.name, what=what, timeout=config.timeout, max_interval=0.05,
                 logs=lambda: tail(log_file))

    def _ready(self, session: Session, service: str, port: int, strict: bool, config: Config, run_as: RunAs | None,
               wait: Callable[[int], None], argv_for: Callable[[int], list[str]]) -> int:
        """Wait for a server; if a port chosen by envkit was grabbed meanwhile by someone else, take another."""
        for attempt in range(3):
            try:
                wait(port)
                return port
            except ServiceExited as exc:
                if strict or attempt == 2 or "Address already in use" not in exc.log_tail:
                    raise
                old, port = port, ports.free_port()
                log.warning("%s: port %d was taken while starting; retrying on %d", service, old, port)
                self._argv[service] = argv_for(port)
                self._spawn(session, service, self._argv[service], run_as)
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _postgres_argv(config: Config, bins: PgBinaries, data: Path, port: int, run_dir: Path) -> list[str]:
        argv = [bins["postgres"], "-D", str(data)]
        for key, value in server_settings(config, port, run_dir).items():
            argv += ["-c", f"{key}={value}"]
        return argv

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

    def _spawn(self, session: Session, service: str, argv: list[str], run_as: RunAs | None,
               env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
        run_dir = Path(session.resources["run_dir"])
        proc = spawn(argv, log_path=run_dir / f"{service}.log", env=env or _server_env(session), cwd=cwd or run_dir,
                     run_as=run_as)
        self._procs[service] = proc
        self._spawned.append(proc)  # replaced ones too (a restart, a port retry): all are reaped at teardown
        self._argv[service] = argv
        session.resources["processes"][service] = {"pid": proc.pid, "pgid": proc.pid}
        session.save()

    def _exited(self, session: Session, service: str) -> None:
        proc = self._procs[service]
        if proc.poll() is not None:
            # no path to its log: the run directory goes with teardown (the diagnostics bundle keeps a copy)
            raise ServiceExited(f"{service} exited with code {proc.returncode} before it was ready", service,
                                tail(Path(session.resources["run_dir"]) / f"{service}.log"))

    def _wait_postgres(self, session: Session, port: int, timeout: float) -> None:
        import psycopg

        run_dir = Path(session.resources["run_dir"])
        socket_file = run_dir / f".s.PGSQL.{port}"
        admin = admin_url(run_dir, port)

        def check() -> bool:
            self._exited(session, "postgres")
            if not socket_file.exists():
                return False
            with psycopg.connect(admin, connect_timeout=2, autocommit=True) as conn:
                conn.execute("SELECT 1")
            return True

        # max_interval: a local server is up within 50-150 ms; backing off to 100 ms would overshoot by up to 50 ms
        wait_for(check, service="postgres", what="accepting connections", timeout=timeout, max_interval=_POLL_MAX,
                 logs=lambda: tail(Path(session.resources["run_dir"]) / "postgres.log"))

    def _wait_redis(self, session: Session, port: int, timeout: float) -> None:
        def check() -> bool:
            self._exited(session, "redis")
            return ping_redis(ports.HOST, port)

        wait_for(check, service="redis", what="PING answered with PONG", timeout=timeout, max_interval=_POLL_MAX,
                 logs=lambda: tail(Path(session.resources["run_dir"]) / "redis.log"))

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
        self._spawn(session, "postgres", self._argv["postgres"], RunAs.for_servers())
        self._wait_postgres(session, running.postgres.port, config.timeout)

    # -- teardown ----------------------------------------------------------
    def teardown(self, session: Session) -> None:
        procs = session.resources.get("processes", {})
        run_dir = session.resources.get("run_dir")
        targets = []
        for service, info in procs.items():
            if _ours(info["pid"], session.label, run_dir) or info["pid"] in {p.pid for p in self._procs.values()}:
                # SIGQUIT: Postgres' immediate shutdown skips the shutdown checkpoint of data about to be deleted
                targets.append((info["pgid"], signal.SIGQUIT if service == "postgres" else signal.SIGTERM))
        stop_groups(targets, _GRACE, self._spawned)
        if run_dir:
            shutil.rmtree(run_dir, ignore_errors=True)
        spare = session.resources.get("spare")
        if spare:  # copied now, renamed into place by the next start (envkit.backends.native.spares)
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
            port = next((a.split("=", 1)[1] for a in argv if a.startswith("port=")), None)
            if "--port" in argv[:-1]:
                port = argv[argv.index("--port") + 1]
            if info.get("ports"):  # a user service: the ports envkit gave it
                port = str(next(iter(info["ports"].values())))
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


ping_redis = redis_service.ping  # the name other modules knew it by


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


def admin_url(run_dir: Path, port: int) -> str:
    """The superuser over the server's socket in its run directory (trust: only this machine's users reach it)."""
    return f"host={run_dir} port={port} user={SUPERUSER} dbname=postgres"


def user_env(config: Config, session: Session, data_dir: Path) -> dict[str, str]:
    """A user service's environment: this Python's bin first on PATH, a home of its own, envkit's marker."""
    path = os.pathsep.join([str(Path(sys.executable).parent), config.environ.get("PATH", os.defpath)])
    return {"PATH": path, "HOME": str(data_dir), "TMPDIR": str(data_dir), "TZ": "UTC", "LANG": "C.UTF-8",
            "ENVKIT_SESSION": session.label}


def _server_env(session: Session) -> dict[str, str]:
    return {"PATH": os.defpath, "TZ": "UTC", "LC_ALL": "C", "ENVKIT_SESSION": session.label}


def _cluster_key(bins: PgBinaries) -> str:
    raw = f"{bins.bindir}|{bins.version}|{' '.join(initdb_args(bins, Path('-'))[1:])}"
    return f"pg{bins.version}-{hashlib.sha1(raw.encode()).hexdigest()[:10]}"


def _password() -> str:
    import secrets

    return secrets.token_urlsafe(18)



def _at_least(version: str, wanted: tuple[int, ...]) -> bool:
    parts = tuple(int(p) for p in version.split(".")[:len(wanted)] if p.isdigit())
    return len(parts) == len(wanted) and parts >= wanted
