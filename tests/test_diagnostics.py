"""The diagnostics bundle: written on a forced failure before teardown removes the logs, and on request."""

from __future__ import annotations

import json
import os
import stat
from contextlib import ExitStack
from pathlib import Path
from typing import Any, ClassVar

import pytest
from conftest import Project, envkit_run_dirs
from projects import alembic_project

import envkit
from envkit import diagnostics, lifecycle, state
from envkit.errors import EXIT_ENVKIT_ERROR, ReadyTimeout, ServiceExited
from envkit.services import Running

SECRET = "Sekr1t-pass-for-bundle"


def bundle_of(stderr: str) -> Path:
    """The bundle folder that the CLI printed (``envkit: diagnostics: PATH``)."""
    lines = [line for line in stderr.splitlines() if line.startswith("envkit: diagnostics: ")]
    assert lines, f"no diagnostics path printed:\n{stderr}"
    return Path(lines[-1].removeprefix("envkit: diagnostics: "))


def all_text(folder: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in folder.rglob("*") if p.is_file())


def assert_private(folder: Path) -> None:
    for path in [folder, *folder.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, f"{path} is readable by others ({oct(mode)})"


@pytest.mark.native
def test_service_that_exits_at_once_leaves_its_log_and_exit_code(project: Project) -> None:
    before = envkit_run_dirs()
    project.configure(f"""
        [postgres]
        port = "auto"
        password = "{SECRET}"
        settings = {{ shared_buffers = "not-a-size" }}
    """)
    result = project.cli("test", "--backend", "native")
    assert result.returncode == EXIT_ENVKIT_ERROR
    folder = bundle_of(result.stderr)
    assert folder.parent == project.root / ".envkit" / "diagnostics"
    assert envkit_run_dirs() <= before  # torn down: the original log is gone, the bundle keeps it

    log = (folder / "services" / "postgres.log").read_text()
    assert 'invalid value for parameter "shared_buffers": "not-a-size"' in log
    pg = json.loads((folder / "services" / "postgres.json").read_text())
    assert pg["state"]["exit_code"] == 1 and pg["state"]["status"] == "exited with code 1"
    assert pg["health"][0]["check"] == "accepting connections" and pg["health"][0]["outcome"].startswith("failed: postgres exited")
    redis = json.loads((folder / "services" / "redis.json").read_text())
    assert redis["state"]["status"] == "running"  # captured before teardown stopped it
    assert "Ready to accept connections" in (folder / "services" / "redis.log").read_text()

    summary = json.loads((folder / "environment.json").read_text())
    assert summary["result"] == "failed"
    assert summary["error"]["stage"] == "start" and summary["error"]["service"] == "postgres"
    assert summary["error"]["type"] == "ServiceExited"
    assert [s["stage"] for s in summary["stages"]] == ["start"] and summary["stages"][0]["status"] == "failed"
    assert {s["name"]: s["status"] for s in summary["services"]} == {"postgres": "exited with code 1", "redis": "running"}
    config = json.loads((folder / "config.json").read_text())
    assert config["postgres"]["password"] == "***" and config["postgres"]["settings"] == {"shared_buffers": "not-a-size"}
    assert "Result: failed at stage **start** (service **postgres**)" in (folder / "README.md").read_text()
    assert SECRET not in all_text(folder)
    assert_private(folder)


@pytest.mark.native
def test_service_that_never_becomes_ready_records_the_probe_history(project: Project) -> None:
    # the server listens on its unix socket only: it starts, and the TCP probe the tests depend on never answers
    project.configure("""
        [postgres]
        port = "auto"
        settings = { listen_addresses = "" }
    """)
    result = project.cli("up", "--backend", "native", "--timeout", "1.5")
    assert result.returncode == EXIT_ENVKIT_ERROR, result.stderr
    assert "[ready]" in result.stderr and "did not succeed within 1.5 s" in result.stderr
    folder = bundle_of(result.stderr)
    summary = json.loads((folder / "environment.json").read_text())
    assert summary["error"]["stage"] == "ready" and summary["error"]["type"] == ReadyTimeout.__name__
    probe = [h for h in summary["health"] if h["check"].startswith("connect with the app's credentials")]
    assert probe and probe[0]["outcome"] == "timed out after 1.5 s" and probe[0]["attempts"] > 3
    assert any("OperationalError" in e["error"] for e in probe[0]["errors"])
    assert {"status": "running"}.items() <= json.loads((folder / "services" / "postgres.json").read_text())["state"].items()
    assert (project.root / ".envkit" / "state.json").exists() is False  # nothing left up


@pytest.mark.native
def test_broken_alembic_migration_bundle_has_the_servers_error(project: Project) -> None:
    alembic_project(project, ["CREATE TABLE t (id int PRIMARY KEY)", "ALTER TABLE t ADD COLUMN c nosuchtype"])
    result = project.cli("test", "--backend", "native")
    assert result.returncode == EXIT_ENVKIT_ERROR
    folder = bundle_of(result.stderr)
    summary = json.loads((folder / "environment.json").read_text())
    assert summary["error"]["stage"] == "migrate" and summary["error"]["service"] == "postgres"
    assert "0002_step.py" in summary["error"]["message"]
    assert [(s["stage"], s["status"]) for s in summary["stages"]] == [
        ("start", "done"), ("database", "done"), ("ready", "done"), ("migrate", "failed")]
    assert 'type "nosuchtype" does not exist' in (folder / "services" / "postgres.log").read_text()


@pytest.mark.native
def test_diagnostics_on_request_and_never(project: Project) -> None:
    project.configure()
    project.write("tests/test_ok.py", "def test_ok():\n    pass\n")
    ok = project.cli("test", "--backend", "native", "--diagnostics", "--", "-q", "-p", "no:cacheprovider", "tests")
    assert ok.returncode == 0, ok.stderr
    line = next(x for x in ok.stderr.splitlines() if "diagnostics" in x and "written to" in x)
    folder = Path(line.split("written to ", 1)[1])
    summary = json.loads((folder / "environment.json").read_text())
    assert summary["result"] == "ok" and {s["name"] for s in summary["services"]} == {"postgres", "redis"}
    assert all(s["status"] == "running" for s in summary["services"])
    assert "database system is ready to accept connections" in (folder / "services" / "postgres.log").read_text()

    # envkit up; envkit down --diagnostics: the bundle of a detached environment, before it goes
    project.cli("up", "--backend", "native", check=True)
    down = project.cli("down", "--diagnostics", check=True)
    assert bundle_of(down.stderr).is_dir() and "torn down" in down.stderr

    project.configure('diagnostics = "never"\n[postgres]\nport = "auto"\nsettings = { shared_buffers = "x" }')
    failed = project.cli("up", "--backend", "native")
    assert failed.returncode == EXIT_ENVKIT_ERROR and "diagnostics" not in failed.stderr


class ComposeLikeBackend:
    """A backend that implements the optional diagnostics() protocol, as the Docker backend does."""

    name: ClassVar[str] = "fake"

    def start(self, config: Any, session: state.Session, stack: ExitStack, snapshot: str | None) -> Running:
        compose = session.path / f"{session.label}.compose.yml"
        compose.write_text(f"services:\n  postgres:\n    environment:\n      POSTGRES_PASSWORD: {SECRET}\n")
        session.resources["compose"] = {"file": str(compose)}
        session.password = SECRET  # where the native and docker backends keep a generated password
        stack.callback(compose.unlink)
        raise ServiceExited("postgres: container exited with code 137 (OOMKilled)", "postgres")

    def teardown(self, session: state.Session) -> None:
        pass

    def logs(self, session: state.Session, service: str | None = None) -> dict[str, str]:
        raise AssertionError("diagnostics() is preferred to logs()")

    def diagnostics(self, session: state.Session) -> dict[str, dict[str, Any]]:
        return {"postgres": {"log": f"FATAL: out of memory (password {SECRET})",
                             "state": {"status": "exited", "exit_code": 137, "oom_killed": True, "port": 55432},
                             "health": [{"at": "t1", "exit_code": 1, "output": "no response"}]}}


def test_backend_diagnostics_protocol_and_compose_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = ComposeLikeBackend()
    monkeypatch.setattr(lifecycle, "select_backend", lambda config: backend)
    (tmp_path / "envkit.toml").write_text('project = "oom"\n')
    reported: list[tuple[str, str, str]] = []
    with pytest.raises(ServiceExited) as info:
        envkit.up(envkit.load_config(tmp_path, environ={}), reporter=lambda st, s, sec, d: reported.append((st, s, d)))
    folder = info.value.diagnostics
    assert folder is not None and folder.is_dir()
    assert ("diagnostics", "done", f"written to {folder}") in reported
    pg = json.loads((folder / "services" / "postgres.json").read_text())
    assert pg["state"]["oom_killed"] is True and pg["health"] == [{"at": "t1", "exit_code": 1, "output": "no response"}]
    assert (folder / "services" / "postgres.log").read_text() == "FATAL: out of memory (password ***)"
    copied = list((folder / "compose").iterdir())
    assert len(copied) == 1 and "POSTGRES_PASSWORD: ***" in copied[0].read_text()
    assert not list(tmp_path.glob(".envkit/*.compose.yml"))  # the original went with teardown; the copy stays
    assert SECRET not in all_text(folder)


def test_old_bundles_are_pruned(tmp_path: Path) -> None:
    config = envkit.load_config(tmp_path, environ={})
    folders = []
    for i in range(diagnostics.KEEP + 3):
        session = state.begin(config, "fake")
        folders.append(diagnostics.write(config, session, ComposeLikeBackend(), timings={"start": 0.1}))
        os.utime(folders[-1], (i, i))  # oldest first
    left = sorted(p.name for p in diagnostics.folder(config).iterdir())
    assert len(left) == diagnostics.KEEP and folders[-1].name in left and folders[0].name not in left
