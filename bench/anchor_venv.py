"""bench/.venv: the anchors' own virtual environment (never a dependency of envkit).

As root, the anchors run as an unprivileged user (PostgreSQL refuses to start
as root, and pytest-postgresql starts it as whoever runs pytest), so the venv
is built on an interpreter that user can execute.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from harness import BENCH, unprivileged

VENV = BENCH / ".venv"
REQUIREMENTS = BENCH / "requirements.txt"


def python() -> Path:
    return VENV / "bin" / "python"


def ensure(say=print) -> Path:  # type: ignore[no-untyped-def]
    """Create or refresh bench/.venv when requirements.txt or the base interpreter changed."""
    base = _base_interpreter()
    want = hashlib.sha256(REQUIREMENTS.read_bytes() + base.encode()).hexdigest()
    stamp = VENV / ".bench-stamp"
    if stamp.exists() and stamp.read_text() == want and python().exists():
        return python()
    say(f"bench: creating {VENV} on {base} (the anchors: pytest-postgresql, pytest-redis, testcontainers, ...)")
    shutil.rmtree(VENV, ignore_errors=True)
    subprocess.run([base, "-m", "venv", str(VENV)], check=True)
    pip = [str(python()), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "-r", str(REQUIREMENTS)], check=True)
    stamp.write_text(want)
    return python()


def versions() -> dict[str, str]:
    """Installed versions of the anchors, for the results file."""
    names = ["pytest-postgresql", "pytest-redis", "testcontainers", "pytest", "alembic", "bcrypt", "psycopg", "mirakuru"]
    code = ("import importlib.metadata as m, json, sys; "
            "print(json.dumps({n: m.version(n) for n in sys.argv[1:]}))")
    out = subprocess.run([str(python()), "-c", code, *names], capture_output=True, text=True, check=True)
    import json

    return dict(json.loads(out.stdout))


def _base_interpreter() -> str:
    """An interpreter (3.10+) that the anchors' user can execute."""
    own = getattr(sys, "_base_executable", sys.executable)
    user = unprivileged()
    if user is None:
        return own
    candidates = [own, shutil.which("python3.11"), shutil.which("python3.12"), "/usr/bin/python3"]
    for candidate in filter(None, candidates):
        try:
            probe = subprocess.run([candidate, "-c", "import sys, venv, ensurepip; assert sys.version_info >= (3, 10)"],
                                   capture_output=True, cwd="/", **user.popen_kwargs())
        except (OSError, subprocess.SubprocessError):
            continue
        if probe.returncode == 0:
            return os.path.realpath(candidate)
    raise SystemExit(
        "bench: running as root, the anchors must run as an unprivileged user, but no Python 3.10+ with venv and "
        "ensurepip is executable by 'nobody'; install python3-venv (apt install python3-venv) or run as a normal user"
    )
