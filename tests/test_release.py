"""The names and the version users see: one distribution name, one version, one action reference, the clash found.

The wheel itself, built and installed as users get it, is tests/test_wheel.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml
from conftest import ENVKIT, REPO

import envkit
from envkit import distribution
from envkit.scaffold import workflow_text

USER_DOCS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md")), *sorted((REPO / "docs").rglob("*.yml")),
             REPO / "action.yml", REPO / "examples" / "demo" / "README.md"]


def test_one_distribution_name_everywhere_users_install_from() -> None:
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert meta["name"] == distribution.NAME == "envkit-test"
    assert meta["scripts"] == {"envkit": "envkit.cli:main"}  # the command keeps its name
    assert meta["entry-points"]["pytest11"] == {"envkit": "envkit.pytest_plugin"}  # so does -p no:envkit
    assert all(distribution.REPOSITORY in url for url in meta["urls"].values())
    texts = {p.relative_to(REPO).as_posix(): p.read_text() for p in USER_DOCS}
    texts["envkit init's workflow"] = workflow_text(REPO)
    installs = 0
    for where, text in texts.items():
        for line in re.findall(r"pip install[^\n`]*", text):
            installs += 1
            words = [w.strip("'\"") for w in line.split()[2:]]
            wrong = [w for w in words if re.fullmatch(r"envkit(\[[\w,]+\])?([=<>!~].*)?", w)]
            assert not wrong, f"{where}: {line!r} installs the other project called envkit"
    assert installs >= 5
    assert f"pip install {distribution.NAME}" in texts["README.md"]
    assert "envkit-test[embedded]" in texts["README.md"] and distribution.EMBEDDED_HINT == "pip install 'envkit-test[embedded]'"


def test_one_version_in_the_package_the_changelog_and_the_action_references() -> None:
    changelog = (REPO / "CHANGELOG.md").read_text()
    sections = re.findall(r"^## \[([^\]]+)\]", changelog, flags=re.MULTILINE)
    assert sections[0] == "Unreleased", "keep an [Unreleased] section on top for ongoing work"
    assert sections[1] == envkit.__version__, "the newest released section must be the package's version"
    assert re.search(rf"^## \[{re.escape(envkit.__version__)}\] - \d{{4}}-\d{{2}}-\d{{2}}$", changelog, flags=re.MULTILINE)
    out = subprocess.run([*ENVKIT, "--version"], capture_output=True, text=True, check=True).stdout
    assert out.strip() == f"envkit, version {envkit.__version__}"
    refs = {}
    for path in [*USER_DOCS, REPO / "CHANGELOG.md"]:
        for ref in re.findall(r"envkit-dev/envkit-test@(v[\w.]+)", path.read_text() + "\n"):
            refs.setdefault(ref.rstrip("."), []).append(path.name)
    assert refs and set(refs) == {f"v{envkit.__version__}"}, refs
    assert not re.search(r"envkit/envkit@", "".join(p.read_text() for p in USER_DOCS))


def test_the_action_is_ready_to_publish() -> None:
    action = yaml.safe_load((REPO / "action.yml").read_text())
    assert action["name"] and action["author"]
    assert 0 < len(action["description"]) <= 125  # the Marketplace shows a short one
    assert action["branding"]["icon"] and action["branding"]["color"] in {
        "white", "black", "yellow", "blue", "green", "orange", "red", "purple", "gray-dark"}
    install = next(s["run"] for s in action["runs"]["steps"] if s.get("name") == "Install envkit")
    assert f'requirement="{distribution.NAME}${{extras}}==' in install and '"envkit${extras}' not in install


def test_the_other_envkit_is_found_by_its_metadata_folder(tmp_path: Path) -> None:
    (tmp_path / "envkit_test-0.1.0.dist-info").mkdir()  # ours
    (tmp_path / "envkit").mkdir()  # the import package itself says nothing about whose it is
    assert distribution.other_envkit([str(tmp_path), str(tmp_path / "missing")]) is None
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "envkit-0.6.0-py3.11.egg-info").mkdir()
    assert distribution.other_envkit([str(tmp_path / "old")]) == str(tmp_path / "old" / "envkit-0.6.0-py3.11.egg-info")
    (tmp_path / "envkit-0.7.1.dist-info").mkdir()
    assert distribution.other_envkit([str(tmp_path)]) == str(tmp_path / "envkit-0.7.1.dist-info")
    assert distribution.other_envkit() is None  # this venv holds envkit-test only


def test_envkits_own_install_from_before_the_rename_is_named_as_such(tmp_path: Path) -> None:
    """A checkout upgraded in place keeps its old 'envkit' metadata: said to be envkit's own, not the parser."""
    old = tmp_path / "envkit-0.1.0.dist-info"
    old.mkdir()
    (old / "entry_points.txt").write_text("[pytest11]\nenvkit = envkit.pytest_plugin\n")
    message = distribution.clash_message(str(old))
    assert "made before it was published as 'envkit-test'" in message and "unrelated" not in message
    assert "pip uninstall -y envkit envkit-test && pip install envkit-test" in message
    parser = tmp_path / "envkit-0.7.1.dist-info"
    parser.mkdir()
    assert "an unrelated project" in distribution.clash_message(str(parser))


def _with_the_other_envkit(tmp_path: Path) -> dict[str, str]:
    """A sys.path entry holding what pip leaves for the other project: its metadata folder."""
    site = tmp_path / "site"
    meta = site / "envkit-0.7.1.dist-info"
    meta.mkdir(parents=True)
    (meta / "METADATA").write_text("Metadata-Version: 2.1\nName: envkit\nVersion: 0.7.1\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENVKIT_")}
    env["PYTHONPATH"] = str(site)
    return env


def test_the_cli_and_the_plugin_refuse_to_run_beside_the_other_envkit(tmp_path: Path) -> None:
    env = _with_the_other_envkit(tmp_path)
    result = subprocess.run([*ENVKIT, "status"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 3, result.stderr
    assert "another distribution called 'envkit' is installed" in result.stderr
    assert "pip uninstall -y envkit envkit-test && pip install envkit-test" in result.stderr
    assert "Traceback" not in result.stderr
    (tmp_path / "test_x.py").write_text("def test_x():\n    pass\n")
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_x.py"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 4, result.stdout + result.stderr  # pytest's usage error
    assert "pip uninstall -y envkit envkit-test" in result.stderr
    del env["PYTHONPATH"]  # and without it, both work
    assert subprocess.run([*ENVKIT, "status"], cwd=tmp_path, env=env, capture_output=True, text=True).returncode == 1
