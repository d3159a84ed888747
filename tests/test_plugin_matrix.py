"""envkit's plugin alongside the pytest plugins projects already use: real pytest runs in subprocesses.

pytest-cov with and without xdist, pytest-xdist (-n 2, --dist loadfile),
pytest-asyncio, pytest-env and pytest-randomly: each run must pass, and the
environment's template must be exactly as it was afterwards.
"""

from __future__ import annotations

import importlib.util

import pytest
from conftest import need

pytest_plugins = ["pytester"]

INI = """
[pytest]
filterwarnings = error
asyncio_default_fixture_loop_scope = function
"""


def need_plugin(module: str) -> None:
    need(importlib.util.find_spec(module) is not None, f"{module} is not installed (pip install -e '.[dev]')")


def test_coverage_without_xdist_and_without_an_environment(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """pytest-cov declares the optional hook pytest_configure_node: that alone must not make envkit register xdist's."""
    need_plugin("pytest_cov")
    for name in ("ENVKIT_STATE_FILE", "CI", "ENVKIT_REQUIRE"):
        monkeypatch.delenv(name, raising=False)
    pytester.makefile(".ini", pytest=INI)
    pytester.makepyfile(covered="def double(x):\n    return 2 * x\n")
    pytester.makepyfile(test_cov="from covered import double\n\ndef test_double():\n    assert double(2) == 4\n")
    result = pytester.runpytest_subprocess("-p", "no:xdist", "--cov=covered", "--cov-report=term")
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*covered.py*100%*"])
