"""The registries of backends and migration kinds, and what derives from them; every backend holds to the protocol."""

from __future__ import annotations

import importlib
import inspect
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import click
import pytest
from conftest import REPO, need
from fake_backend import FakeBackend

import envkit
from envkit import cache, config, doctor, health, registry
from envkit.backends import by_name
from envkit.backends.base import Backend
from envkit.cli import main
from envkit.errors import ConfigError
from envkit.provision.migrate import KINDS


def _backend_class(name: str) -> type:
    module, _, cls = registry.BACKENDS[name].partition(":")
    found: type = getattr(importlib.import_module(module), cls)
    return found


# -- the names and what derives from them --------------------------------------

def test_every_migration_kind_name_has_one_record() -> None:
    assert list(KINDS) == list(registry.MIGRATION_KINDS)
    assert all(kind.name == name for name, kind in KINDS.items())


def test_choices_derive_from_the_registries() -> None:
    assert config.BACKEND_NAMES == ("auto", *registry.BACKENDS)
    assert config.MIGRATION_KINDS == ("auto", *registry.MIGRATION_KINDS)
    backend = next(p for p in main.params if p.name == "backend")
    assert isinstance(backend.type, click.Choice) and tuple(backend.type.choices) == config.BACKEND_NAMES
    assert set(health._BACKENDS) == set(registry.BACKENDS)  # each backend says how it finds its servers gone


def test_config_validates_against_the_registries(tmp_path: Path) -> None:
    for kind in registry.MIGRATION_KINDS:
        extra = {"metadata": 'target = "models:Base"\n', "command": 'command = ["true"]\n'}.get(kind, "")
        (tmp_path / "envkit.toml").write_text(f'[migrations]\nkind = "{kind}"\n{extra}')
        assert envkit.load_config(tmp_path, environ={}).migrations.kind == kind
    (tmp_path / "envkit.toml").write_text('[migrations]\nkind = "alembik"\n')
    with pytest.raises(ConfigError, match="must be one of auto, " + ", ".join(registry.MIGRATION_KINDS) + r".*'alembic'"):
        envkit.load_config(tmp_path, environ={})
    (tmp_path / "envkit.toml").write_text('backend = "nativ"\n')
    with pytest.raises(ConfigError, match="must be one of auto, " + ", ".join(registry.BACKENDS) + r".*'native'"):
        envkit.load_config(tmp_path, environ={})


# -- every migration kind decides the fingerprint ------------------------------

def _alembic(root: Path) -> str:
    (root / "alembic.ini").write_text("[alembic]\nscript_location = %(here)s/migrations\n")
    (root / "migrations" / "versions").mkdir(parents=True)
    (root / "migrations" / "env.py").write_text("# env\n")
    (root / "migrations" / "versions" / "0001_users.py").write_text("revision = '0001'\n")
    return 'kind = "alembic"\n'


def _sql(root: Path) -> str:
    (root / "migrations").mkdir()
    (root / "migrations" / "0001_users.sql").write_text("CREATE TABLE users (id int);\n")
    return 'kind = "sql"\n'


def _metadata(root: Path) -> str:
    (root / "models.py").write_text("Base = None\n")
    return 'kind = "metadata"\ntarget = "models:Base"\n'


def _command(root: Path) -> str:
    (root / "migrations").mkdir()
    (root / "migrations" / "migrate.sh").write_text("echo migrate\n")
    return 'kind = "command"\ncommand = ["sh", "migrations/migrate.sh"]\n'


#: A project for each kind that has files; a new kind needs one here (the test below fails until it has).
PROJECTS: dict[str, Callable[[Path], str]] = {"alembic": _alembic, "sql": _sql, "metadata": _metadata, "command": _command}


@pytest.mark.parametrize("kind", registry.MIGRATION_KINDS)
def test_every_migration_kind_contributes_to_the_fingerprint(tmp_path: Path, kind: str) -> None:
    if kind == "none":
        (tmp_path / "envkit.toml").write_text('[migrations]\nkind = "none"\n')
        assert KINDS[kind].files(envkit.load_config(tmp_path, environ={})) == []  # nothing decides it
        return
    assert kind in PROJECTS, f"add a project for migration kind {kind!r} to PROJECTS"
    (tmp_path / "envkit.toml").write_text("[migrations]\n" + PROJECTS[kind](tmp_path))
    cfg = envkit.load_config(tmp_path, environ={})
    files = KINDS[kind].files(cfg)
    assert files, f"migration kind {kind!r} names no files"
    for file in files:
        before = cache.fingerprint(cfg, "native", "template")
        file.write_text(file.read_text() + "# changed\n")
        assert cache.fingerprint(cfg, "native", "template") != before, f"a change in {file} left the key as it was"
        assert str(file.relative_to(tmp_path)) in cache.contents(cfg)  # ... and in the staleness check


@pytest.mark.parametrize("kind", registry.MIGRATION_KINDS)
def test_doctor_reports_what_each_migration_kind_checks(tmp_path: Path, kind: str) -> None:
    body = PROJECTS[kind](tmp_path) if kind in PROJECTS else f'kind = "{kind}"\n'
    (tmp_path / "envkit.toml").write_text("[migrations]\n" + body)
    [check] = doctor._migrations(envkit.load_config(tmp_path, environ={}), "native")
    found = KINDS[kind].check(envkit.load_config(tmp_path, environ={}))
    assert (check.name, check.ok, check.detail) == ("migrations", found.ok, found.detail)
    if kind == "alembic" and importlib.util.find_spec("alembic") is None:
        return
    assert check.ok, check.detail
    (tmp_path / "envkit.toml").write_text('[migrations]\nkind = "sql"\ndirectory = "nowhere"\n')
    [check] = doctor._migrations(envkit.load_config(tmp_path, environ={}), "native")
    assert not check.ok and check.required and "nowhere does not exist" in check.detail and check.fix


# -- every backend holds to the protocol ---------------------------------------

def _members(protocol: type) -> dict[str, inspect.Signature | None]:
    """A protocol's members: its methods with their signatures, its attributes with None."""
    methods = {n: inspect.signature(v) for n, v in vars(protocol).items() if callable(v) and not n.startswith("_")}
    return {**dict.fromkeys(protocol.__annotations__), **methods}


@pytest.mark.parametrize("name", [*registry.BACKENDS, "fake"])
def test_every_backend_has_the_protocols_members_at_runtime(name: str) -> None:
    cls = FakeBackend if name == "fake" else _backend_class(name)
    wanted = _members(Backend)
    assert set(wanted) == {"name", "start", "save_snapshot", "teardown", "logs"}
    for member, signature in wanted.items():
        assert hasattr(cls, member), f"{cls.__name__} has no {member}"
        if signature is not None:  # the lifecycle passes arguments by position: their number and kinds must match,
            # and their names, so that a reader of one backend reads the protocol's words (and keywords would work)
            found = [(p.name, p.kind.name) for p in inspect.signature(getattr(cls, member)).parameters.values()]
            protocol = [(p.name, p.kind.name) for p in signature.parameters.values()]
            assert found == protocol, f"{cls.__name__}.{member} takes {found}; the protocol: {protocol}"
    assert cls.name == name
    if name != "fake":
        assert type(by_name(name)) is cls


def test_every_backend_satisfies_the_protocol_for_mypy(tmp_path: Path) -> None:
    """mypy is the judge of a Protocol: a file that assigns one of each to a ``Backend`` must pass, and a class
    missing a member must not (so that the check can fail)."""
    mypy = shutil.which("mypy", path=str(Path(sys.executable).parent))
    need(mypy is not None, "mypy is not installed in the venv (pip install -e '.[dev]')")
    lines = ["from envkit.backends.base import Backend", "from fake_backend import FakeBackend"]
    for name, target in registry.BACKENDS.items():
        module, _, cls = target.partition(":")
        lines += [f"from {module} import {cls}", f"{name}: Backend = {cls}()"]
    lines += ["fake: Backend = FakeBackend()", "", "class Half:", "    name = 'half'",
              "    def teardown(self, session: object) -> None: ...", "", "half: Backend = Half()  # must fail"]
    checked = tmp_path / "conformance.py"
    checked.write_text("\n".join(lines) + "\n")
    result = subprocess.run([str(mypy), "--no-error-summary", "--cache-dir", str(REPO / ".mypy_cache"),
                             "--follow-imports=silent", str(checked)], cwd=REPO, capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin", "MYPYPATH": str(REPO / "tests")}, timeout=300)
    errors = [line for line in result.stdout.splitlines() if ": error:" in line]
    failing = len(lines)  # the last line: half
    assert errors and all(f"conformance.py:{failing}:" in line for line in errors), textwrap.indent(result.stdout, "  ")

