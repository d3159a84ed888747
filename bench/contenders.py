"""Each contender as one function that brings an environment up, times it, tears it down, and returns the sample.

A sample is a dict: ``ready`` (seconds from the tool's first call until Postgres
answered a query and Redis a PING), ``teardown``, ``services_kb`` (PSS of the
servers) and ``host_peak_kb`` (the peak RSS of the process that drove them).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import floor as floor_mod
import projects
from harness import PROJECT_PYTHON, REPO, RUNNERS, SampleFailed, User, clean_env, free_port, run_json

ENVKIT_UP = RUNNERS / "envkit_up.py"
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
    def prepare(self, say: Any, docker: bool = False) -> None:
        w = self.workdir
        self.paths["warm_cache"] = w / "cache-warm"
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
