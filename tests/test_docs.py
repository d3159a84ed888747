"""Every fenced code block in the READMEs and docs/ is run here, or is marked as output.

How each block is taken, by its language and an optional HTML comment on the line before it:

- ``console``, ``text``, or ``<!-- output -->`` before it: output (a transcript, a summary); not run.
- ``<!-- not run: REASON -->``: a command that needs what a test machine has not (your CI image, your
  servers) or a fragment of an application; the reason is required and says what checks it instead.
- ``yaml``: a workflow in docs/workflows (run step by step by tests/test_workflows.py, which also keeps the
  copy in the guide in sync), or a service template rendered here with the ``toml`` block that names it.
- ``toml``: loaded by envkit's own configuration loader in a sandbox project (unknown keys and wrong types
  are errors there), its ``[services.NAME]`` tables checked as a start would check them; ``[tool.envkit]`` as
  pyproject.toml, the rest as envkit.toml. A block whose services all run natively is also brought up on the
  native backend, and every export of its services must be set.
- ``<!-- excerpt: PATH -->`` before a block: a verbatim part of the file PATH in the repository (a walk-through
  of a shipped file); checked to be there, character for character, so the text cannot drift from the file.
- ``python``: executed, and the hook it defines called.
- ``sh``: a block of ``make`` lines is run as ``make -n`` in the repository (each target exists and
  expands; `make test` itself is CI's entry point); any other block runs with bash -e in a copy of
  examples/demo on the native backend, with `pip` recording what it is asked to install (the real install is
  tests/test_wheel.py's).

A block in a language not listed, or without a language, fails the test with how to fix it.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import REPO, Project, need

import envkit
from envkit import services
from envkit.backends import docker_reachable
from envkit.ports import free_port

DOCS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md")), REPO / "examples" / "demo" / "README.md",
        REPO / "bench" / "README.md"]
VENV_BIN = Path(sys.executable).parent
FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
MARKER = re.compile(r"<!--\s*(output|not run:\s*(?P<reason>.*?)|excerpt:\s*[\w./-]+)\s*-->\s*$", re.DOTALL)
WORKFLOW_TEXTS = {p.read_text() for p in (REPO / "docs" / "workflows").glob("*.yml")}


@dataclass(frozen=True)
class Block:
    path: Path
    line: int
    lang: str
    text: str
    marker: str  # "", "output" or "not run: ..."

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(REPO).as_posix()}:{self.line}"

    @property
    def how(self) -> str:
        if self.marker == "output" or self.lang in ("console", "text"):
            return "output"
        if self.marker.startswith("not run"):
            return "not run"
        if self.marker.startswith("excerpt:"):
            return "excerpt"
        if self.lang == "sh" and all(line.startswith("make ") for line in _commands(self.text)):
            return "make"
        return self.lang


def blocks() -> list[Block]:
    found = []
    for path in DOCS:
        text = path.read_text()
        for match in FENCE.finditer(text):
            before = text[:match.start()].rstrip().rsplit("\n", 1)[-1]
            marker = MARKER.search(before)
            found.append(Block(path, text.count("\n", 0, match.start()) + 1, match.group(1), match.group(2),
                               (marker.group(1) if marker else "").strip()))
    return found


BLOCKS = blocks()


def _commands(text: str) -> list[str]:
    return [line.split("  #")[0].strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def of(how: str) -> list[Block]:
    return [b for b in BLOCKS if b.how == how]


def test_every_block_is_run_here_or_marked() -> None:
    assert len(BLOCKS) >= 15
    known = {"output", "not run", "excerpt", "make", "sh", "toml", "yaml", "python"}
    unknown = [f"{b.id} (```{b.lang or 'no language'})" for b in BLOCKS if b.how not in known]
    assert not unknown, (f"code blocks this test cannot run: {unknown}. Give each a language it runs (sh, toml, yaml, "
                         "python), mark a transcript ```console / ```text or <!-- output -->, or put "
                         "<!-- not run: REASON --> on the line before it")
    for block in of("not run"):
        assert len(block.marker.removeprefix("not run:").strip()) >= 20, f"{block.id}: say why it is not run, and what checks it"


def test_yaml_blocks_are_workflows_or_templates() -> None:
    for block in of("yaml"):
        assert block.text in WORKFLOW_TEXTS or _template_pair(block) is not None, (
            f"{block.id}: a yaml block must be one of docs/workflows/*.yml (run by tests/test_workflows.py) or a service "
            "template named by a toml block after it")


def _template_pair(block: Block) -> Block | None:
    """The toml block after a service template that names it (``template = "NAME"``)."""
    later = [b for b in BLOCKS if b.path == block.path and b.lang == "toml" and b.line > block.line]
    return later[0] if later and re.search(r'^template = "[\w.-]+\.j2"$', later[0].text, re.MULTILINE) else None


def _sandbox(tmp_path: Path, text: str) -> None:
    """The files a configuration names that must exist when it is loaded (the dotenv files it reads)."""
    doc = tomllib.loads(text)
    for name in doc.get("tool", {}).get("envkit", doc).get("env_files", []):
        (tmp_path / name).write_text("")


@pytest.mark.parametrize("block", of("toml"), ids=lambda b: b.id)
def test_toml_blocks_are_valid_configuration(block: Block, tmp_path: Path) -> None:
    _sandbox(tmp_path, block.text)
    if block.text.lstrip().startswith("[tool.envkit"):
        (tmp_path / "pyproject.toml").write_text('[project]\nname = "shop"\n\n' + block.text)
    else:
        (tmp_path / "envkit.toml").write_text(block.text)
    config = envkit.load_config(tmp_path, environ={})
    assert config.project
    found = services.specs(config)  # [services.NAME]: keys, probes, ports, recipes, depends_on, as `envkit up` checks them
    if any(s.image and not s.template for s in found):  # docker_command's and environment's placeholders render
        from envkit.backends.docker.render import render, static_plan

        assert "image:" in render(config, static_plan(config))


def _natively_runnable(block: Block) -> bool:
    if "[services." not in block.text or block.text.lstrip().startswith("[tool.envkit"):
        return False
    doc = tomllib.loads(block.text)
    return all("command" in t or "recipe" in t for t in doc.get("services", {}).values())


@pytest.mark.native
@pytest.mark.parametrize("block", [b for b in of("toml") if _natively_runnable(b)], ids=lambda b: b.id)
def test_service_blocks_run_natively(block: Block, project: Project) -> None:
    """A configuration the docs show for services is brought up for real: each probe passes, each export is set."""
    project.configure(block.text)  # the project's own ports ("auto") and cache: the text itself is unchanged
    config = project.load(backend="native")
    for spec in services.specs(config):
        missing = services.unsupported(spec, "native", config.environ)
        need(missing is None, f"{block.id}: {missing}")
    with envkit.environment(config) as env:
        for spec in services.specs(config):
            for name in spec.exports:
                assert env.exports.get(name), f"{block.id}: {spec.name} exports {name} empty"
        for name in config.env:
            assert env.exports.get(name), f"{block.id}: env.{name} empty"


@pytest.mark.parametrize("block", of("excerpt"), ids=lambda b: b.id)
def test_excerpts_are_verbatim_parts_of_their_files(block: Block) -> None:
    path = REPO / block.marker.removeprefix("excerpt:").strip()
    assert path.is_file(), f"{block.id}: excerpt of {path}, which does not exist"
    assert block.text in path.read_text(), f"{block.id}: no longer a verbatim part of {path.relative_to(REPO)}: copy it again"


def test_the_readme_configuration_reference_says_what_it_sets(tmp_path: Path) -> None:
    """The long reference block, loaded: spot checks that its comments are about the keys they sit on."""
    block = next(b for b in of("toml") if b.path.name == "README.md" and "[tool.envkit.postgres]" in b.text)
    _sandbox(tmp_path, block.text)
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "ignored"\n\n' + block.text)
    config = envkit.load_config(tmp_path, environ={})
    assert config.project == "shop" and config.postgres.database == "shop_test" and config.redis.enabled is True
    assert config.seed.generate == {"id": "uuid4", "created_at": "now"}
    # the comment on `project`: [project].name counts only without an envkit.toml
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "from-pyproject"\n\n[tool.envkit]\n')
    assert envkit.load_config(tmp_path, environ={}).project == "from-pyproject"
    (tmp_path / "envkit.toml").write_text("")
    assert envkit.load_config(tmp_path, environ={}).project == tmp_path.name


@pytest.mark.parametrize("block", of("yaml"), ids=lambda b: b.id)
def test_template_blocks_render_with_their_configuration(block: Block, project: Project) -> None:
    pair = _template_pair(block)
    if pair is None:
        assert block.text in WORKFLOW_TEXTS
        return  # run by tests/test_workflows.py
    name = re.search(r'^template = "([\w.-]+)"$', pair.text, re.MULTILINE).group(1)  # type: ignore[union-attr]
    folder = re.search(r'^templates = "([\w./-]+)"$', pair.text, re.MULTILINE).group(1)  # type: ignore[union-attr]
    project.write(f"{folder}/{name}", block.text)
    project.write("envkit.toml", pair.text)
    result = project.cli("render", "-o", "out.yml", env=project.env(ENVKIT_BACKEND="docker"))
    assert result.returncode == 0, result.stdout + result.stderr
    rendered = (project.root / "out.yml").read_text()
    service = re.search(r"^\[services\.([\w-]+)\]$", pair.text, re.MULTILINE).group(1)  # type: ignore[union-attr]
    assert f"\n  {service}:" in rendered and "127.0.0.1" in rendered


@pytest.mark.parametrize("block", of("python"), ids=lambda b: b.id)
def test_python_blocks_run(block: Block) -> None:
    namespace: dict[str, object] = {"make_token": lambda username, role: f"token-for-{username}-{role}"}
    exec(compile(block.text, block.id, "exec"), namespace)
    hooks = [v for k, v in namespace.items() if k.startswith("pytest_envkit_") and callable(v)]
    assert hooks, f"{block.id}: defines no envkit hook to call; mark it <!-- not run: ... --> if it is a fragment"
    for hook in hooks:
        assert hook(user={"username": "alice", "role": "admin"}, env=None, request=None) == {
            "Authorization": "Bearer token-for-alice-admin"}


@pytest.mark.parametrize("block", of("make"), ids=lambda b: b.id)
def test_make_lines_name_real_targets(block: Block) -> None:
    for line in _commands(block.text):
        result = subprocess.run(["make", "-n", *shlex.split(line)[1:]], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and result.stdout.strip(), f"{block.id}: {line!r}: {result.stderr}"


def _shell_params() -> list[object]:
    """Blocks that call docker need the engine (and are marked so); the others run envkit's native backend."""
    return [pytest.param(b, id=b.id, marks=pytest.mark.docker if re.search(r"^docker ", b.text, re.MULTILINE)
                         else pytest.mark.native) for b in of("sh")]


@pytest.mark.parametrize("block", _shell_params())
def test_shell_blocks_run_in_a_copy_of_the_example(block: Block, project: Project) -> None:
    shutil.copytree(REPO / "examples" / "demo", project.root, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns(".envkit", "__pycache__", ".env.test"))
    shims = project.root.parent / "shims"
    shims.mkdir()
    (shims / "pip").write_text('#!/bin/sh\necho "$*" >> "$PIP_LOG"\n')
    (shims / "pip").chmod(0o755)
    env = project.env(PATH=f"{shims}:{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}", PIP_LOG=str(shims / "pip.log"),
                      # a cache of its own: the session's shared one would make tests/test_example.py's cold run warm
                      ENVKIT_BACKEND="native", ENVKIT_CACHE_DIR=str(project.root.parent / "cache"), ENVKIT_POSTGRES_PORT="auto",
                      ENVKIT_REDIS_PORT="auto")
    compose = None
    if re.search(r"^docker ", block.text, re.MULTILINE):
        need(docker_reachable(os.environ), "no Docker engine answers: run ../shared/docker/provision.sh")
        # the committed compose file has fixed ports: free ones, so that it starts beside whatever else runs
        env.update(ENVKIT_POSTGRES_PORT=str(free_port()), ENVKIT_REDIS_PORT=str(free_port()))
        compose = project.root / "compose" / "docker-compose.test.yml"
    script = project.root.parent / "block.sh"
    script.write_text("set -euo pipefail\n" + textwrap.dedent(block.text))
    try:
        result = subprocess.run(["bash", str(script)], cwd=project.root, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, f"{block.id} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    finally:
        if compose is not None and compose.exists():  # what the block's own `docker compose up` started
            subprocess.run(["docker", "compose", "-f", str(compose), "down", "-v", "--remove-orphans"], cwd=project.root,
                           env=env, capture_output=True, timeout=120)
        if (project.root / ".envkit" / "state.json").exists():
            subprocess.run([str(VENV_BIN / "envkit"), "down", "-q"], cwd=project.root, env=env, timeout=60)
    assert not (project.root / ".envkit" / "state.json").exists(), f"{block.id} left an environment up"
    if compose is not None and compose.exists():
        left = subprocess.run(["docker", "compose", "-f", str(compose), "ps", "-a", "-q"], cwd=project.root, env=env,
                              capture_output=True, text=True, timeout=60)
        assert left.returncode == 0 and left.stdout.strip() == "", f"{block.id} left containers: {left.stdout}"
