"""Shared test fixtures: temporary projects, the CLI as a subprocess, and leak checks.

Every test is checked afterwards for what envkit may leave behind: processes
marked ``ENVKIT_SESSION``, run directories on tmpfs, and (for docker tests)
containers, networks and volumes with envkit's labels.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from envkit.backends.native import spares
from envkit.backends.native.spares import tmpfs_root

REPO = Path(__file__).resolve().parents[1]
ENVKIT = [sys.executable, "-m", "envkit.cli"]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes") or os.environ.get("ENVKIT_REQUIRE") == "1"


def need(condition: bool, reason: str) -> None:
    """Skip when something the test needs is missing; in CI, fail instead (a skip would hide it)."""
    if not condition:
        if IN_CI:
            pytest.fail(f"required in CI: {reason}")
        pytest.skip(reason)


def need_native_servers() -> None:
    """The PostgreSQL and Redis binaries the native backend starts its servers from."""
    from envkit.backends.native.binaries import find_postgres, find_redis
    from envkit.errors import BinaryNotFound

    try:
        find_postgres(None, os.environ)
        find_redis(None, os.environ)
    except BinaryNotFound as exc:
        need(False, f"native servers need PostgreSQL and Redis binaries: {exc}")


def envkit_processes() -> set[tuple[int, str]]:
    """Live processes carrying envkit's ENVKIT_SESSION marker."""
    found = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                if b"ENVKIT_SESSION=" not in fh.read():
                    continue
            with open(f"/proc/{pid}/stat") as fh:
                if fh.read().rsplit(")", 1)[1].split()[0] == "Z":
                    continue
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                found.add((int(pid), fh.read().replace(b"\0", b" ").decode(errors="replace")[:200]))
        except OSError:
            continue
    return found


def processes_of(root: Path) -> set[tuple[int, str]]:
    """envkit processes (servers, watchdogs) of the checkout at ``root``; other suites' are not counted."""
    digest = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:6]
    return {p for p in envkit_processes() if _root_hash(_label_of(p[0])) == digest}


def envkit_run_dirs() -> set[str]:
    return {str(p) for p in tmpfs_root().glob("envkit-*")}


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def _session_roots(base: Path) -> set[str]:
    """Root hashes of the projects this test session made (a label is ``<project>-<sha1(root)[:6]>-<id>``).

    The leak check looks only at these: another suite running on the same machine starts
    environments of its own, which are not this test's leaks and must not be killed.
    """
    roots = {REPO / "examples" / "demo"}
    for pattern in (".envkit", "*/.envkit", "*/*/.envkit", "*/*/*/.envkit"):
        roots.update(p.parent for p in base.glob(pattern))
    return {hashlib.sha1(str(r.resolve()).encode()).hexdigest()[:6] for r in roots}


def _root_hash(label: str) -> str:
    parts = label.rsplit("-", 2)
    return parts[-2] if len(parts) == 3 else ""


def _label_of(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            marker = next((v for v in fh.read().split(b"\0") if v.startswith(b"ENVKIT_SESSION=")), b"=")
    except OSError:
        return ""
    return marker.split(b"=", 1)[1].decode(errors="replace")


@pytest.fixture(autouse=True)
def no_leaks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Fail a test that leaves an envkit process or run directory behind."""
    procs, dirs = envkit_processes(), envkit_run_dirs()
    yield
    base = tmp_path_factory.getbasetemp()

    def leaks() -> tuple[set[tuple[int, str]], set[str]]:
        ours = _session_roots(base)
        return ({p for p in envkit_processes() - procs if _root_hash(_label_of(p[0])) in ours},
                {d for d in envkit_run_dirs() - dirs if _root_hash(Path(d).name.removeprefix("envkit-")) in ours})

    ok = wait_until(lambda: leaks() == (set(), set()), timeout=10)
    if not ok:
        leaked_p, leaked_d = leaks()
        # clean up so one leak does not cascade into every later test
        for pid, _ in leaked_p:
            try:
                os.killpg(pid, 9)
            except OSError:
                pass
        pytest.fail(f"test left behind processes {sorted(leaked_p)} and run directories {sorted(leaked_d)}")


class Project:
    """A temporary project directory with its own envkit.toml and cache."""

    def __init__(self, root: Path, cache_dir: Path) -> None:
        self.root = root
        self.cache_dir = cache_dir

    def write(self, name: str, text: str) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())
        return path

    def config_text(self, body: str = "", *, ports: str = '"auto"') -> str:
        head = f'project = "proj"\ncache_dir = "{self.cache_dir}"\n'
        text = textwrap.dedent(body).strip()
        if "[postgres]" not in text:
            text += f"\n[postgres]\nport = {ports}\n"
        if "[redis]" not in text:
            text += f"\n[redis]\nport = {ports}\n"
        return head + text + "\n"

    def configure(self, body: str = "", **kw: str) -> Path:
        return self.write("envkit.toml", self.config_text(body, **kw))

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ENVKIT_") and k not in ("DATABASE_URL", "REDIS_URL")}
        env.update(extra)
        return env

    def load(self, **overrides: object):  # type: ignore[no-untyped-def]
        import envkit

        return envkit.load_config(self.root, overrides=overrides, environ=self.env())

    def cli(self, *args: str, env: dict[str, str] | None = None, timeout: float = 120, check: bool = False,
            ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([*ENVKIT, *args], cwd=self.root, env=env or self.env(), text=True,
                                capture_output=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"envkit {' '.join(args)} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
        return result

    def popen(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen([*ENVKIT, *args], cwd=self.root, env=env or self.env(), text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.fixture(scope="session", autouse=True)
def own_cache_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A project without `cache_dir` (the demo's copies) caches under XDG_CACHE_HOME: the session's, not the user's."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
        yield


@pytest.fixture(scope="session", autouse=True)
def no_spares_after_the_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Spares (envkit.backends.native.spares) are a cache kept on tmpfs on purpose; this session's caches take theirs along."""
    yield
    base = str(tmp_path_factory.getbasetemp())
    for marker in spares.base().glob("*/.root"):
        try:
            if marker.read_text().startswith(base):
                shutil.rmtree(marker.parent, ignore_errors=True)
        except OSError:
            pass


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cluster cache for the session: initdb once, not once per test."""
    return tmp_path_factory.mktemp("envkit-cache")


@pytest.fixture
def project(tmp_path: Path, shared_cache: Path) -> Iterator[Project]:
    root = tmp_path / "proj"
    root.mkdir()
    proj = Project(root, shared_cache)
    yield proj
    # whatever a test left up is torn down (and reported by no_leaks if it leaked processes)
    if (root / ".envkit" / "state.json").exists():
        subprocess.run([*ENVKIT, "down", "-q"], cwd=root, env=proj.env(), timeout=60, check=False)
