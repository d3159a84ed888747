"""``envkit init``: the configuration, a seed file, make targets and a CI workflow for an existing project.

With migrations, the seed comes from the real schema: a throwaway environment
(:mod:`envkit.probe`) is migrated and its users table read (:mod:`envkit.schema`),
and the seed written is inserted there and rolled back before init says it is
done. The settings names the code reads (:mod:`envkit.appsettings`) become
``[env]``. Without migrations, or when they cannot run, a scan of the source
stands in. Idempotent: a file that exists is left alone (``--force`` rewrites
what envkit wrote; a Makefile's own targets are never touched), and every
action is reported as written, updated or skipped, with the reason.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import sys
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import appsettings, distribution
from .errors import EnvkitError
from .seedplan import Plan, UsersTable, plan_from_schema, plan_from_source, scan_users_table

_SKIP_DIRS = {".git", ".venv", "venv", "env", "node_modules", "__pycache__", ".tox", ".nox", "build", "dist", ".envkit"}
_MARK_BEGIN, _MARK_END = "# >>> envkit (written by envkit init)", "# <<< envkit"
WORKFLOW = Path(".github/workflows/envkit.yml")


@dataclass
class Result:
    """What init did, file by file: (path, what happened, why)."""

    actions: list[tuple[str, str, str]] = field(default_factory=list)
    found: list[str] = field(default_factory=list)  # what init read and what it made of it, in order

    def add(self, path: Path | str, verb: str, why: str = "") -> None:
        self.actions.append((str(path), verb, why))

    def note(self, line: str) -> None:
        self.found.append(line)

    def lines(self) -> list[str]:
        return [f"{verb:<8} {path}" + (f"  ({why})" if why else "") for path, verb, why in self.actions]




def init(root: Path, *, force: bool = False, pyproject: bool = False, environ: Mapping[str, str] | None = None,
         migrate: bool = True) -> Result:
    """Scaffold envkit into the project at ``root``; ``migrate=False`` reads the source only (no throwaway database)."""
    result = Result()
    alembic_ini = root / "alembic.ini"
    files = _python_files(root, _versions_dir(alembic_ini))
    settings = appsettings.read(root, files)
    asyncpg = appsettings.uses_asyncpg(files)
    offers = appsettings.offers(settings, asyncpg=asyncpg, admin="users[0]")
    for offer in offers:
        result.note(f"setting {offer.name}: {offer.why} -> [env] {offer.name} = {offer.template!r}")
    project = _project_name(root)
    with _throwaway(root, project, alembic_ini if migrate else None, offers, environ or {}, result) as pg:
        plan = _plan(root, alembic_ini, pg, result)
        plan.env = offers if plan.users else [o for o in offers if "users[" not in o.template]
        seed_file = root / "seed.toml"
        ours = seed_file.is_file() and "written by envkit init" in seed_file.read_text(errors="replace")
        # seed data the project wrote itself is never replaced, not even with --force
        _write(seed_file, seed_text(plan), result, force=force and ours, why_skip="exists; envkit.toml points at it")
        config = config_text(project, alembic_ini if alembic_ini.is_file() else None, plan, seed_file.name)
        if pyproject:
            _pyproject_table(root / "pyproject.toml", config, result, force=force)
        elif _has_tool_table(root / "pyproject.toml") and not (root / "envkit.toml").exists():
            result.add("pyproject.toml", "skipped", "already has [tool.envkit]")
        else:
            _write(root / "envkit.toml", "\n".join(config) + "\n", result, force=force)
        if pg is not None:
            _check_seed(root, environ or {}, pg, result)
    _makefile(root / "Makefile", result, force=force)
    _write(root / WORKFLOW, workflow_text(root), result, force=force)
    _gitignore(root / ".gitignore", result)
    return result


@contextlib.contextmanager
def _throwaway(root: Path, project: str, alembic_ini: Path | None, offers: list[appsettings.Offer],
               environ: Mapping[str, str], result: Result) -> Iterator[Any]:
    """A migrated throwaway database (native backend), or None: no migrations, or they could not run (noted)."""
    if alembic_ini is None or not alembic_ini.is_file():
        yield None
        return
    from . import probe

    # the migrations may import the app's settings: give them the [env] init offers, with stand-ins for the users
    stand_ins = {o.name: re.sub(r"\{\{ users\[0\]\.(\w+) \}\}", lambda m: "admin@example.com" if m.group(1) == "email"
                                else "admin-password", o.template) for o in offers}
    overrides = {"project": project, "backend": "native", "migrations": {"kind": "alembic", "alembic_ini": alembic_ini.name},
                 "env": stand_ins, "redis.enabled": any("redis." in t for t in stand_ins.values())}
    stack = contextlib.ExitStack()
    try:
        pg = stack.enter_context(probe.migrated(root, environ, overrides))
    except EnvkitError as exc:
        first = str(exc).strip().splitlines()[0]
        result.note(f"schema: could not migrate a throwaway database ({exc.stage or 'start'}: {first}); "
                    "the seed below comes from reading the source instead")
        pg = None
    else:
        result.note("schema: migrated a throwaway database (native backend) to read the users table as the migrations leave it")
    with stack:
        yield pg


def _plan(root: Path, alembic_ini: Path, pg: Any, result: Result) -> Plan:
    if pg is not None:
        from . import schema

        table = schema.find(pg.libpq())
        if table is None:
            result.note("users table: none in the migrated database (looked for users, user, accounts, auth_user)")
            return Plan(None)
        return plan_from_schema(table, result.note)
    found = find_users_table(root, alembic_ini)
    if found is None:
        return Plan(None)
    result.note(f"users table: {found.name}, from a scan of {found.source.name}")
    return plan_from_source(found)


def _check_seed(root: Path, environ: Mapping[str, str], pg: Any, result: Result) -> None:
    """Insert the seed the configuration now names into the throwaway database, rolled back."""
    from . import probe
    from .config import load

    try:
        config = load(root, environ=environ)
    except EnvkitError as exc:
        result.note(f"seed check: skipped, the configuration does not load: {exc}")
        return
    try:
        count = probe.check_seed(config, pg)
    except EnvkitError as exc:
        result.note(f"seed check: FAILED: {exc}. Fix {config.seed.file or 'seed.users'}, then run envkit doctor")
        return
    if count:
        result.note(f"seed check: the {count} users go into {config.seed.table} (inserted in the throwaway database "
                    "and rolled back)")


# -- detection -------------------------------------------------------------------

def find_users_table(root: Path, alembic_ini: Path) -> UsersTable | None:
    """A users table declared in the Alembic revisions (searched first) or the models of the project at ``root``."""
    return scan_users_table(_python_files(root, _versions_dir(alembic_ini)))



def _versions_dir(alembic_ini: Path) -> Path | None:
    if not alembic_ini.is_file():
        return None
    match = re.search(r"^script_location\s*=\s*(.+)$", alembic_ini.read_text(), re.MULTILINE)
    if not match:
        return None
    location = match.group(1).strip().replace("%(here)s", str(alembic_ini.parent))
    return (alembic_ini.parent / location / "versions").resolve()


def _python_files(root: Path, first: Path | None) -> list[Path]:
    found = sorted(first.glob("*.py")) if first and first.is_dir() else []
    for path in sorted(root.rglob("*.py")):
        if len(found) > 2000:
            break
        if not _SKIP_DIRS.intersection(path.relative_to(root).parts) and path not in found and path.stat().st_size < 500_000:
            found.append(path)
    return found


def _project_name(root: Path) -> str:
    try:
        name = tomllib.loads((root / "pyproject.toml").read_text()).get("project", {}).get("name")
    except (OSError, tomllib.TOMLDecodeError):
        name = None
    return str(name or root.resolve().name)


def _has_tool_table(path: Path) -> bool:
    try:
        return "envkit" in tomllib.loads(path.read_text()).get("tool", {})
    except (OSError, tomllib.TOMLDecodeError):
        return False


# -- what gets written -------------------------------------------------------------

def config_text(project: str, alembic_ini: Path | None, plan: Plan, seed_file: str) -> list[str]:
    lines = ["# envkit: a throwaway PostgreSQL + Redis for the tests (written by envkit init; every key is optional).",
             f"project = {_toml(project)}", ""]
    if alembic_ini is not None:
        lines += ["[migrations]", 'kind = "alembic"', f"alembic_ini = {_toml(alembic_ini.name)}", ""]
    else:
        lines += ["[migrations]", '# no alembic.ini found: "sql" (a folder of *.sql), "metadata" (a MetaData target)',
                  '# or "command" also work', 'kind = "none"', ""]
    lines += ["[seed]", f"file = {_toml(seed_file)}"]
    if plan.table is not None:
        lines += [f"table = {_toml(plan.table)}"]
        if plan.password_column:
            lines += [f"password_column = {_toml(plan.password_column)}"]
        if plan.generate:
            lines += ["generate = { " + ", ".join(f"{c} = {_toml(k)}" for c, k in plan.generate.items()) + " }"]
    if plan.env:
        lines += ["", "# Names the project's settings read (found in its source), rendered from the environment's values."]
        lines += ["[env]"] + [f"{o.name} = {_toml(o.template)}" for o in plan.env]
    return lines


def seed_text(plan: Plan) -> str:
    head = ["# (written by envkit init)",
            "# Users envkit seeds after the migrations. `password` is hashed with bcrypt into the password column;",
            "# every other key is stored in the column of the same name. Tests find the plain passwords in",
            "# $ENVKIT_USERS_FILE (or in this file).", ""]
    if plan.table is None:
        example = ["# No users table was found; an example:", "# [[users]]", '# email = "admin@example.com"',
                   '# password = "admin-password"', ""]
        return "\n".join([*head, *example])
    body = []
    for user in plan.users:
        body.append("[[users]]")
        body += [f"{k} = {_toml(v)}" for k, v in user.items()]
        body.append("")
    return "\n".join([*head, f"# {plan.source}", "", *body])




_TARGETS = {
    "test": ("Run the tests in a throwaway PostgreSQL + Redis (envkit test)", "$(ENVKIT) test $(PYTEST_ARGS)"),
    "up": ('Start PostgreSQL + Redis and leave them up (connect: eval "$$($(ENVKIT) env)")', "$(ENVKIT) up"),
    "down": ("Stop them (safe when nothing is up)", "$(ENVKIT) down"),
}


def makefile_block(targets: list[str] | tuple[str, ...] = ("test", "up", "down")) -> str:
    lines = [_MARK_BEGIN, "# The same commands as CI: a throwaway PostgreSQL + Redis, migrated and seeded, for the tests.",
             "ENVKIT ?= $(shell command -v envkit 2>/dev/null || echo .venv/bin/envkit)",
             f".PHONY: {' '.join(targets)}"]
    for target in targets:
        doc, recipe = _TARGETS[target]
        lines += [f"{target}: ## {doc}", f"\t{recipe}"]
    return "\n".join([*lines, _MARK_END]) + "\n"


def workflow_text(root: Path) -> str:
    install = []
    if (root / "pyproject.toml").is_file() or (root / "setup.py").is_file():
        install.append("python -m pip install -e .")
    for req in ("requirements.txt", "requirements-dev.txt", "requirements/dev.txt"):
        if (root / req).is_file():
            install.append(f"python -m pip install -r {req}")
    install.append(f"python -m pip install {distribution.NAME}")
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    steps = "\n".join(f"          {line}" for line in install)
    return f"""# Written by envkit init: the same `envkit test` as `make test`, on every push and pull request.
# The Docker backend is used where the runner has an engine (ubuntu-latest does). See envkit's docs/github-actions.md.
name: tests

on:
  push:
  pull_request:

permissions:
  contents: read

jobs:
  test:
    runs-on: ubuntu-latest
    timeout-minutes: 20
    steps:
      - uses: actions/checkout@v5

      - uses: actions/setup-python@v6
        with:
          python-version: "{python}"

      - name: Install the project and envkit
        run: |
{steps}

      - name: Tests in a throwaway PostgreSQL + Redis
        run: envkit test

      - name: Tear down (safe when nothing is up)
        if: always()
        run: envkit down

      - name: Upload the diagnostics bundle
        if: failure()
        uses: actions/upload-artifact@v6
        with:
          name: envkit-diagnostics
          path: .envkit/diagnostics/
          include-hidden-files: true
          if-no-files-found: ignore
"""


# -- writing ---------------------------------------------------------------------

def _write(path: Path, text: str, result: Result, *, force: bool, why_skip: str = "exists; --force rewrites it") -> None:
    shown = WORKFLOW if path.parent.name == "workflows" else Path(path.name)
    if path.exists() and not force:
        result.add(shown, "skipped", why_skip)
        return
    verb = "rewrote" if path.exists() else "wrote"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    result.add(shown, verb)


def _pyproject_table(path: Path, config: list[str], result: Result, *, force: bool) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; run envkit init without --pyproject to write envkit.toml")
    text = path.read_text()
    table = ["[tool.envkit]"] + [line for line in config if not line.startswith("#") or line.startswith("# no")]
    table = [re.sub(r"^\[(migrations|seed)\]$", r"[tool.envkit.\1]", line) for line in table]
    block = "\n".join(table).rstrip() + "\n"
    if _has_tool_table(path):
        if not force:
            result.add(path.name, "skipped", "already has [tool.envkit]; --force replaces it")
            return
        text = re.sub(r"^\[tool\.envkit(\.[\w.]+)?\]\n(?:(?!\[).*\n?)*", "", text, flags=re.MULTILINE)
    path.write_text(text.rstrip() + "\n\n" + block)
    result.add(path.name, "updated", "[tool.envkit]")


def _makefile(path: Path, result: Result, *, force: bool) -> None:
    text = path.read_text() if path.is_file() else ""
    if _MARK_BEGIN in text:
        if not force:
            result.add("Makefile", "skipped", "already has envkit's targets")
            return
        text = re.sub(re.escape(_MARK_BEGIN) + r".*?" + re.escape(_MARK_END) + r"\n?", "", text, flags=re.DOTALL)
    own = [t for t in _TARGETS if re.search(rf"^{t}\s*:(?!=)", text, re.MULTILINE)]  # never touched
    if len(own) == len(_TARGETS):
        result.add("Makefile", "skipped", "has its own test, up and down targets; call envkit from them")
        return
    verb = "updated" if path.is_file() else "wrote"
    block = makefile_block([t for t in _TARGETS if t not in own])
    path.write_text((text.rstrip() + "\n\n" if text.strip() else "") + block)
    why = f"kept your own {', '.join(own)} target{'s' if len(own) > 1 else ''}" if own else "test, up, down"
    result.add("Makefile", verb, why)


def _gitignore(path: Path, result: Result) -> None:
    if not path.is_file():
        return
    lines = path.read_text().splitlines()
    missing = [entry for entry in (".envkit/", ".env.test") if entry not in lines and entry.rstrip("/") not in lines]
    if missing:
        path.write_text("\n".join([*lines, "# envkit's state and the dotenv file it writes", *missing]) + "\n")
        result.add(".gitignore", "updated", ", ".join(missing))


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, dt.date)):
        return str(value)
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }" if value else "{}"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
