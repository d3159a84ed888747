"""The lifecycle pipeline with a fake backend: order of stages, unwinding on failure, state."""

from __future__ import annotations

import io
import signal
from pathlib import Path
from typing import Any

import pytest
from fake_backend import FakeBackend, registered

import envkit
from envkit import lifecycle, progress, recorded, state
from envkit.errors import Interrupted, MigrationFailed
from envkit.output import StageReporter


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What the fake backend was asked, interleaved with the provisioning stages (which need a real server:
    here they only record that they ran, and a snapshot key is made up so that the snapshot stage runs)."""
    events = registered(monkeypatch)
    monkeypatch.setattr(lifecycle, "_provision_database", lambda *a: events.append("database"))
    monkeypatch.setattr(lifecycle, "_probe", lambda *a: events.append("ready"))
    monkeypatch.setattr(lifecycle, "migrate", lambda *a: events.append("migrate") or "m")
    monkeypatch.setattr(lifecycle, "seed", lambda *a: events.append("seed") or "s")
    monkeypatch.setattr(lifecycle, "_make_template", lambda *a: events.append("template"))
    monkeypatch.setattr(lifecycle, "_snapshot_key", lambda config, backend, content: "key")
    return events


def config_for(tmp_path: Path) -> envkit.Config:
    return envkit.load_config(tmp_path, environ={})


def test_stages_run_in_order_and_teardown_runs_once(tmp_path: Path, events: list[str]) -> None:
    seen: list[tuple[str, str]] = []
    env = envkit.up(config_for(tmp_path), backend=FakeBackend(),
                    reporter=lambda stage, status, s, d: seen.append((stage, status)))
    assert events == ["start", "database", "ready", "migrate", "seed", "template", "snapshot"]
    assert [s for s, status in seen if status == "done"] == ["start", "database", "ready", "migrate", "seed", "template",
                                                             "snapshot"]
    assert env.database_url == "postgresql+psycopg://u:p%40ss%2Fword@127.0.0.1:1/db_test"
    assert env.redis_url == "redis://127.0.0.1:2/3"
    state_file = tmp_path / ".envkit" / "state.json"
    assert state_file.stat().st_mode & 0o777 == 0o600
    dotenv = tmp_path / ".env.test"
    assert dotenv.stat().st_mode & 0o777 == 0o600 and "DATABASE_URL=" in dotenv.read_text()
    env.down()
    env.down()
    assert events[-1] == "teardown" and events.count("teardown") == 1
    assert not state_file.exists() and not dotenv.exists()


def test_progress_notes_reach_the_reporter_during_their_stage_only(tmp_path: Path, events: list[str]) -> None:
    seen: list[tuple[str, str, str]] = []
    with envkit.environment(config_for(tmp_path), backend=FakeBackend(),
                            reporter=lambda stage, status, s, d: seen.append((stage, status, d))):
        progress.note("postgres", "after the start stage")  # no stage listens: goes nowhere
    assert [e for e in seen if e[1] == "progress"] == [("start", "progress", "postgres: starting")]
    stream = io.StringIO()
    reporter = StageReporter(stream=stream)
    reporter("start", "start", 0.0, "")
    reporter("start", "progress", 0.1, "postgres: starting")
    reporter("start", "done", 0.2, "up")
    assert [s["stage"] for s in reporter.stages] == ["start"] and "starting" not in stream.getvalue()


def test_restored_snapshot_skips_migrate_and_seed(tmp_path: Path, events: list[str]) -> None:
    with envkit.environment(config_for(tmp_path), backend=FakeBackend(restored=True)):
        assert events == ["start", "database", "ready"]
    assert events[-1] == "teardown"


def test_failure_in_a_stage_unwinds_what_was_started(tmp_path: Path, events: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*a: Any) -> str:
        raise MigrationFailed("revision 0002 failed: syntax error")

    monkeypatch.setattr(lifecycle, "migrate", broken)
    with pytest.raises(MigrationFailed) as info:
        envkit.up(config_for(tmp_path), backend=FakeBackend())
    assert info.value.stage == "migrate"
    assert events == ["start", "database", "ready", "teardown"]
    assert not (tmp_path / ".envkit" / "state.json").exists()


def test_signal_during_a_stage_unwinds(tmp_path: Path, events: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*a: Any) -> str:
        raise Interrupted(signal.SIGTERM)

    monkeypatch.setattr(lifecycle, "seed", interrupted)
    with pytest.raises(Interrupted) as info:
        envkit.up(config_for(tmp_path), backend=FakeBackend())
    assert info.value.exit_code == 143
    assert events[-1] == "teardown"


def test_stale_state_of_a_dead_owner_is_reaped(tmp_path: Path, events: list[str]) -> None:
    config = config_for(tmp_path)
    session = state.begin(config, "fake")
    session.owner_pid = 2**22 + 12345  # no such process
    session.save()
    assert recorded.current(config) is None
    assert events == ["teardown"]


def test_detached_environment_is_not_reaped(tmp_path: Path, events: list[str]) -> None:
    config = config_for(tmp_path)
    env = envkit.up(config, backend=FakeBackend())
    env.detach()
    session = state.load(config)
    assert session is not None
    session.owner_pid = 2**22 + 12345
    session.save()
    assert recorded.current(config) is not None
    assert envkit.down(config) is not None
    assert envkit.down(config) is None
    assert events.count("teardown") == 1


def test_exports_render_user_templates(tmp_path: Path, events: list[str]) -> None:
    (tmp_path / "envkit.toml").write_text('[env]\nPOSTGRES_SERVER = "{{ postgres.host }}"\nPOSTGRES_PORT = "{{ postgres.port }}"\n')
    with envkit.environment(config_for(tmp_path), backend=FakeBackend()) as env:
        assert env.exports["POSTGRES_SERVER"] == "127.0.0.1"
        assert env.exports["POSTGRES_PORT"] == "1"


def test_bad_export_template_is_a_config_error(tmp_path: Path, events: list[str]) -> None:
    (tmp_path / "envkit.toml").write_text('[env]\nX = "{{ postgres.nope }}"\n')
    with pytest.raises(envkit.ConfigError, match=r"env\.X"):
        envkit.up(config_for(tmp_path), backend=FakeBackend())
    assert events[-1] == "teardown"


def test_public_api_does_not_drift() -> None:
    assert sorted(envkit.__all__) == sorted([
        "BackendUnavailable", "BinaryNotFound", "CommandFailed", "Config", "ConfigError", "Environment", "EnvkitError",
        "Interrupted", "MigrationFailed", "PortInUse", "ProvisionError", "ReadyTimeout", "SeedError", "ServiceExited",
        "ServiceFailed", "StateError", "UnsafeTarget", "__version__", "down", "environment", "load_config", "run", "up",
    ])
    for name in envkit.__all__:
        assert hasattr(envkit, name)
