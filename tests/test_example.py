"""The example application, run through `envkit test` exactly as `make demo` does."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import REPO, Project

pytestmark = pytest.mark.native


@pytest.fixture
def demo(tmp_path: Path, shared_cache: Path) -> Project:
    root = tmp_path / "demo"
    shutil.copytree(REPO / "examples" / "demo", root, ignore=shutil.ignore_patterns(".envkit", "__pycache__", ".env.test"))
    return Project(root, shared_cache)


def test_demo_passes_through_envkit_test(demo: Project) -> None:
    env = demo.env(ENVKIT_CACHE_DIR=str(demo.cache_dir), ENVKIT_POSTGRES_PORT="auto", ENVKIT_REDIS_PORT="auto")
    for attempt in ("cold", "warm"):
        result = demo.cli("test", "--backend", "native", "--", "-q", "-p", "no:cacheprovider", env=env)
        assert result.returncode == 0, f"{attempt}:\n{result.stdout}\n{result.stderr}"
        assert "12 passed" in result.stdout
        assert ("from cache" in result.stderr) == (attempt == "warm")
    assert not (demo.root / ".envkit" / "state.json").exists()
    assert not (demo.root / ".env.test").exists()


def test_demo_fails_loudly_without_an_environment(demo: Project) -> None:
    import subprocess
    import sys

    env = demo.env(CI="true")
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=demo.root, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0, "without DATABASE_URL the demo's tests must fail in CI, not pass or skip"
