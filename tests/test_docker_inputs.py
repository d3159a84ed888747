"""Docker: secrets in the bundle in every spelling, an image that does not exist, an engine that does not answer."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from urllib.parse import quote

import pytest
from conftest import Project
from test_docker import client, no_docker_leaks  # noqa: F401 - the engine, and the leak check of every test here

from envkit.errors import EXIT_ENVKIT_ERROR
from envkit.ports import free_port

pytestmark = pytest.mark.docker

HOSTILE = ["Pg$x ZZpw6", 'Q"u\\o$te\'s %41+&=é€ pw$$']


def spellings(secret: str) -> set[str]:
    """What a leak would look like: raw, $$-escaped, JSON/YAML-escaped (also with ASCII escapes), URL-encoded."""
    forms = {secret, secret.replace("$", "$$"), quote(secret, safe="")}
    return forms | {json.dumps(f, ensure_ascii=a)[1:-1] for f in forms for a in (True, False)}


def bundle_text(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text(errors="replace") for p in folder.rglob("*") if p.is_file()}


def written_bundle(stderr: str) -> Path:
    line = next(x for x in stderr.splitlines() if "diagnostics" in x and "written to" in x)
    return Path(line.split("written to ", 1)[1])


@pytest.mark.parametrize("secret", HOSTILE)
def test_hostile_password_never_in_any_bundle_file(project: Project, secret: str) -> None:
    toml = json.dumps(secret)  # a TOML basic string is written like a JSON one
    project.configure(f"""
        [postgres]
        port = "auto"
        password = {toml}
        [redis]
        port = "auto"
    """)
    project.write("tests/test_ok.py", "def test_ok():\n    pass\n")
    args = ["--diagnostics", "--", "-q", "-p", "no:cacheprovider", "tests"]
    docker = project.cli("test", "--backend", "docker", *args, timeout=300)
    assert docker.returncode == 0, docker.stderr
    native = project.cli("test", "--backend", "native", *args)  # after a docker run left its compose file in .envkit
    assert native.returncode == 0, native.stderr
    assert (project.root / ".envkit" / "docker-compose.test.yml").is_file()

    docker_files, native_files = bundle_text(written_bundle(docker.stderr)), bundle_text(written_bundle(native.stderr))
    assert "compose/docker-compose.test.yml" in docker_files and 'POSTGRES_PASSWORD: "***"' in \
        docker_files["compose/docker-compose.test.yml"]
    assert not [f for f in native_files if f.startswith("compose/")]  # no stale file of the earlier docker run
    for name, text in {**{f"docker {k}": v for k, v in docker_files.items()},
                       **{f"native {k}": v for k, v in native_files.items()}}.items():
        for form in spellings(secret):
            assert form not in text, f"{name} holds the password as {form!r}"
    for out in (docker.stdout + docker.stderr, native.stdout + native.stderr):
        assert not any(form in out for form in spellings(secret))


def test_an_image_that_does_not_exist_is_named(project: Project) -> None:
    image = "envkit-test-no-such/postgres:0"
    project.configure(textwrap.dedent(f"""
        [postgres]
        port = "auto"
        image = "{image}"
        [redis]
        port = "auto"
    """))
    result = project.cli("up", "--backend", "docker", timeout=300)
    assert result.returncode == EXIT_ENVKIT_ERROR
    message = result.stderr.split("envkit: error [start]: ", 1)[1]
    assert f"docker could not pull the image {image} (service postgres)" in message and "postgres.image" in message
    assert not (project.root / ".envkit" / "state.json").exists()

    doctor = project.cli("doctor", "--backend", "docker", timeout=120)
    assert doctor.returncode == 1
    assert f"FAIL     postgres image {image} is not on the engine and cannot be pulled" in doctor.stdout
    assert "ok       redis image" in doctor.stdout and doctor.stdout.splitlines()[-1] == \
        "envkit doctor: not ready: postgres image"


def test_an_engine_that_does_not_answer_is_said_once_and_briefly(project: Project) -> None:
    project.configure()
    port = free_port()
    result = project.cli("up", "--backend", "docker", env=project.env(DOCKER_HOST=f"tcp://127.0.0.1:{port}"))
    assert result.returncode == EXIT_ENVKIT_ERROR
    assert f"no Docker engine answers at tcp://127.0.0.1:{port} (connection refused)" in result.stderr
    for noise in ("HTTPConnectionPool", "Max retries", "NewConnectionError", "urllib3", "diagnostics failed"):
        assert noise not in result.stderr, result.stderr
