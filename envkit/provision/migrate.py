"""Migrations: alembic, a directory of SQL files, SQLAlchemy metadata, or any command.

Alembic runs in-process (no second interpreter start, a few hundred ms saved)
inside :func:`_isolated`, which hands the user's ``env.py`` the URL both as
``sqlalchemy.url`` and as ``DATABASE_URL`` and restores the environment,
working directory, ``sys.path`` and logging (``fileConfig`` in a typical
``env.py`` would otherwise silence envkit's loggers) afterwards.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import io
import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import Config
from ..environ import Patch
from ..errors import CommandFailed, MigrationFailed
from ..proc import run
from .database import connect, guard_with
from .sources import module_exists, module_files, relative, tree

if TYPE_CHECKING:
    from ..services import PostgresEndpoint

log = logging.getLogger("envkit")

Apply = Callable[[Config, "PostgresEndpoint", Mapping[str, str]], str]


# Plain classes, not dataclasses: every start imports this module (the two dataclasses cost ~1 ms to make).
class Readiness:
    """What ``envkit doctor`` reports for a kind; a finding that names a ``fix`` is one "ready" needs."""

    __slots__ = ("detail", "fix", "ok")

    def __init__(self, ok: bool, detail: str, fix: str = "") -> None:
        self.ok = ok
        self.detail = detail
        self.fix = fix

    def __repr__(self) -> str:
        return f"Readiness(ok={self.ok!r}, detail={self.detail!r}, fix={self.fix!r})"


class MigrationKind:
    """One value of ``migrations.kind``: everything the rest of envkit needs to know about it."""

    __slots__ = ("apply", "cacheable", "check", "files", "name")

    def __init__(self, name: str, apply: Apply | None, files: Callable[[Config], list[Path]],
                 check: Callable[[Config], Readiness], cacheable: bool = True) -> None:
        self.name = name
        self.apply = apply  # migrate, returning a one-line description; None: there is nothing to apply
        self.files = files  # what decides the result: hashed into the snapshot key and the staleness check
        self.check = check  # for envkit doctor
        self.cacheable = cacheable  # its files decide its result, so a snapshot may stand in for running it

    def __repr__(self) -> str:
        return f"MigrationKind({self.name!r})"


def kind_of(config: Config) -> str:
    """The kind that runs: ``auto`` is alembic when alembic.ini exists, else none."""
    kind = config.migrations.kind
    if kind == "auto":
        return "alembic" if config.path(config.migrations.alembic_ini).is_file() else "none"
    return kind


def kind_for(config: Config) -> MigrationKind:
    """The record of the kind that runs."""
    return KINDS[kind_of(config)]


def migrate(config: Config, pg: PostgresEndpoint, env: Mapping[str, str]) -> str:
    """Apply the configured migrations; returns a one-line description."""
    apply = kind_for(config).apply
    if apply is None:
        return "no migrations configured"
    guard_with(config, pg, pg.database, "migrate")
    return apply(config, pg, env)


def _alembic(config: Config, pg: PostgresEndpoint, env: Mapping[str, str]) -> str:
    ini = config.path(config.migrations.alembic_ini)
    if not ini.is_file():
        raise MigrationFailed(f"migrations.alembic_ini is {ini}, which does not exist; fix the path or set migrations.kind")
    try:
        from alembic import command
        from alembic.config import Config as AlembicConfig
    except ImportError:
        raise MigrationFailed("migrations.kind is 'alembic' but alembic is not installed; pip install alembic") from None
    cfg = AlembicConfig(str(ini))
    cfg.set_main_option("sqlalchemy.url", pg.url().replace("%", "%%"))
    output = io.StringIO()
    with _isolated(env, ini.parent, config.root), contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
        try:
            command.upgrade(cfg, "head")
        except Exception as exc:  # noqa: BLE001 - user code: report whatever it raised
            where = _revision_in_traceback(exc, ini.parent)
            said = "\n".join(output.getvalue().strip().splitlines()[-8:])
            raise MigrationFailed(
                f"alembic upgrade head failed{where}: {_first_lines(exc)}\nFix the migration, then run again "
                f"(config: {ini})" + (f"\nalembic said:\n{said}" if said else "")
            ) from None
    log.debug("alembic output:\n%s", output.getvalue())
    return f"alembic upgrade head ({ini.name})"


def _revision_in_traceback(exc: BaseException, base: Path) -> str:
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        path = Path(frame.filename)
        if path.is_relative_to(base) and "versions" in path.parts:
            return f" in {path.relative_to(base)} (line {frame.lineno})"
    return ""


def _sql(config: Config, pg: PostgresEndpoint, env: Mapping[str, str]) -> str:
    folder = config.path(config.migrations.directory)
    files = sorted(folder.glob("*.sql"))
    if not folder.is_dir():
        raise MigrationFailed(f"migrations.directory is {folder}, which does not exist; create it or fix the path")
    applied = 0
    with connect(pg.libpq()) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS envkit_migrations "
            "(filename text PRIMARY KEY, checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = dict(conn.execute("SELECT filename, checksum FROM envkit_migrations").fetchall())
        for file in files:
            text = file.read_text()
            checksum = hashlib.sha256(text.encode()).hexdigest()
            if file.name in done:
                if done[file.name] != checksum:
                    log.warning("migration %s changed after it was applied; not applying it again", file.name)
                continue
            try:
                with conn.transaction():
                    conn.execute(text.encode())
                    conn.execute("INSERT INTO envkit_migrations (filename, checksum) VALUES (%s, %s)", (file.name, checksum))
            except Exception as exc:  # noqa: BLE001
                raise MigrationFailed(f"migration {file} failed: {_first_lines(exc)}\nFix the file, then run again") from None
            applied += 1
    return f"{applied} of {len(files)} SQL files applied from {folder.name}/"


def _metadata(config: Config, pg: PostgresEndpoint, env: Mapping[str, str]) -> str:
    target = config.migrations.target or ""
    with _isolated(env, config.root, config.root):
        try:
            obj = import_target(target)
        except (ImportError, AttributeError, ValueError) as exc:
            raise MigrationFailed(f"migrations.target {target!r} cannot be imported: {exc}; use 'package.module:attr'") from None
        metadata = getattr(obj, "metadata", obj)
        if not hasattr(metadata, "create_all"):
            raise MigrationFailed(f"migrations.target {target!r} is a {type(obj).__name__}, not a MetaData or declarative base")
        from sqlalchemy import create_engine

        engine = create_engine(pg.url())
        try:
            metadata.create_all(engine)
        except Exception as exc:  # noqa: BLE001
            raise MigrationFailed(f"create_all of {target} failed: {_first_lines(exc)}") from None
        finally:
            engine.dispose()
    return f"create_all({target}): {len(metadata.tables)} tables"


def _command(config: Config, pg: PostgresEndpoint, env: Mapping[str, str]) -> str:
    argv = config.migrations.command
    try:
        run(argv, env={**config.environ, **env}, cwd=config.root)
    except CommandFailed as exc:
        raise MigrationFailed(f"migration command failed (exit code {exc.returncode}): {' '.join(argv)}\n{exc.output.strip()[-2000:]}") from None
    return f"ran {' '.join(argv)}"


def _alembic_files(config: Config) -> list[Path]:
    ini = config.path(config.migrations.alembic_ini)
    return [ini, *tree(_alembic_scripts(ini))] if ini.is_file() else []


def _alembic_scripts(ini: Path) -> Path:
    import configparser

    parser = configparser.ConfigParser(defaults={"here": str(ini.parent)})
    parser.read(ini)
    location = parser.get("alembic", "script_location", fallback="migrations")
    return (ini.parent / location).resolve()


def _alembic_ready(config: Config) -> Readiness:
    ini = config.path(config.migrations.alembic_ini)
    if importlib.util.find_spec("alembic") is None:
        return Readiness(False, "alembic is not importable", "pip install alembic")
    if not ini.is_file():
        return Readiness(False, f"{ini} does not exist", "fix migrations.alembic_ini")
    import alembic

    return Readiness(True, f"alembic {alembic.__version__}, {relative(ini, config.root)}")


def _directory_files(config: Config) -> list[Path]:
    return tree(config.path(config.migrations.directory))


def _sql_ready(config: Config) -> Readiness:
    folder = config.path(config.migrations.directory)
    ok = folder.is_dir()
    count = len(list(folder.glob("*.sql"))) if ok else 0
    return Readiness(ok, f"{count} SQL files in {relative(folder, config.root)}" if ok else f"{folder} does not exist",
                     "create it or fix migrations.directory")


def _metadata_files(config: Config) -> list[Path]:
    target = config.migrations.target
    return module_files(target.split(":")[0], config.root) if target else []


def _metadata_ready(config: Config) -> Readiness:
    found = module_exists((config.migrations.target or "").partition(":")[0], config.root)
    return Readiness(found, f"target {config.migrations.target}" + ("" if found else ": module not found"),
                     "use migrations.target = 'package.module:attr', importable from the project root")


#: Every value of ``migrations.kind`` but auto, by name (the names are :data:`envkit.registry.MIGRATION_KINDS`).
KINDS: dict[str, MigrationKind] = {k.name: k for k in (
    MigrationKind("none", None, lambda config: [],
                  lambda config: Readiness(True, "none configured (set migrations.kind, or add alembic.ini)")),
    MigrationKind("alembic", _alembic, _alembic_files, _alembic_ready),
    MigrationKind("sql", _sql, _directory_files, _sql_ready),
    MigrationKind("metadata", _metadata, _metadata_files, _metadata_ready),
    # an arbitrary command's effect cannot be fingerprinted; its folder still tells a stale environment
    MigrationKind("command", _command, _directory_files,
                  lambda config: Readiness(True, f"command: {' '.join(config.migrations.command)}"), cacheable=False),
)}


def import_target(target: str) -> Any:
    module, _, attr = target.partition(":")
    if not module or not attr:
        raise ValueError(f"{target!r} is not 'module:attr'")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


@contextlib.contextmanager
def _isolated(env: Mapping[str, str], cwd: Path, root: Path) -> Iterator[None]:
    """Run user code with the environment's variables, then put the process back as it was."""
    environ = Patch()
    saved_cwd = os.getcwd()
    saved_path = list(sys.path)
    manager = logging.Logger.manager
    saved_disabled = {name: lg.disabled for name, lg in manager.loggerDict.items() if isinstance(lg, logging.Logger)}
    saved_root = (list(logging.root.handlers), logging.root.level)
    envkit_logger = logging.getLogger("envkit")
    saved_envkit = (list(envkit_logger.handlers), envkit_logger.level, envkit_logger.propagate)
    environ.set(env)
    sys.path.insert(0, str(root))
    os.chdir(cwd)
    try:
        yield
    finally:
        os.chdir(saved_cwd)
        sys.path[:] = saved_path
        environ.restore()
        for name, lg in manager.loggerDict.items():
            if isinstance(lg, logging.Logger):
                lg.disabled = saved_disabled.get(name, False)
        logging.root.handlers[:] = saved_root[0]
        logging.root.setLevel(saved_root[1])
        envkit_logger.handlers[:] = saved_envkit[0]
        envkit_logger.setLevel(saved_envkit[1])
        envkit_logger.propagate = saved_envkit[2]


def _first_lines(exc: BaseException, n: int = 6) -> str:
    text = str(exc).strip() or type(exc).__name__
    lines = text.splitlines()
    return "\n".join(lines[:n]) + (" ..." if len(lines) > n else "")
