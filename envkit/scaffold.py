"""``envkit init``: the configuration, a seed file, make targets and a CI workflow for an existing project.

Idempotent: a file that exists is left alone (``--force`` rewrites what envkit
wrote; a Makefile's own targets are never touched), and every action is
reported as written, updated or skipped, with the reason.
"""

from __future__ import annotations

import re
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from . import distribution

_SKIP_DIRS = {".git", ".venv", "venv", "env", "node_modules", "__pycache__", ".tox", ".nox", "build", "dist", ".envkit"}
_PASSWORD_COLUMNS = ("password_hash", "hashed_password", "password_digest", "encrypted_password", "password")
_MARK_BEGIN, _MARK_END = "# >>> envkit (written by envkit init)", "# <<< envkit"
WORKFLOW = Path(".github/workflows/envkit.yml")


@dataclass
class Result:
    """What init did, file by file: (path, what happened, why)."""

    actions: list[tuple[str, str, str]] = field(default_factory=list)

    def add(self, path: Path | str, verb: str, why: str = "") -> None:
        self.actions.append((str(path), verb, why))

    def lines(self) -> list[str]:
        return [f"{verb:<8} {path}" + (f"  ({why})" if why else "") for path, verb, why in self.actions]


@dataclass(frozen=True)
class UsersTable:
    """A users table found in the migrations or models: its columns and what each needs."""

    name: str
    columns: dict[str, str]  # column -> the text that declares it
    source: Path

    @property
    def password_column(self) -> str | None:
        return next((c for c in _PASSWORD_COLUMNS if c in self.columns), None)


def init(root: Path, *, force: bool = False, pyproject: bool = False) -> Result:
    """Scaffold envkit into the project at ``root``."""
    result = Result()
    alembic_ini = root / "alembic.ini"
    table = find_users_table(root, alembic_ini)
    seed_file = root / "seed.toml"
    ours = seed_file.is_file() and "written by envkit init" in seed_file.read_text(errors="replace")
    # seed data the project wrote itself is never replaced, not even with --force
    _write(seed_file, seed_text(table), result, force=force and ours, why_skip="exists; envkit.toml points at it")
    config = config_text(_project_name(root), alembic_ini if alembic_ini.is_file() else None, table, seed_file.name)
    if pyproject:
        _pyproject_table(root / "pyproject.toml", config, result, force=force)
    elif _has_tool_table(root / "pyproject.toml") and not (root / "envkit.toml").exists():
        result.add("pyproject.toml", "skipped", "already has [tool.envkit]")
    else:
        _write(root / "envkit.toml", "\n".join(config) + "\n", result, force=force)
    _makefile(root / "Makefile", result, force=force)
    _write(root / WORKFLOW, workflow_text(root), result, force=force)
    _gitignore(root / ".gitignore", result)
    return result


# -- detection -------------------------------------------------------------------

def find_users_table(root: Path, alembic_ini: Path) -> UsersTable | None:
    """A ``users`` (or ``user``) table declared in Alembic revisions or SQLAlchemy models, if a simple scan finds one."""
    for path in _python_files(root, _versions_dir(alembic_ini)):
        text = path.read_text(errors="replace")
        match = re.search(r"create_table\(\s*['\"](users?)['\"]", text)
        if match:
            end = text.find("create_table(", match.end())
            block = text[match.end(): end if end > 0 else len(text)]
            columns = {m.group(1): _call(block, m.start()) for m in re.finditer(r"Column\(\s*['\"](\w+)['\"]", block)}
            for m in re.finditer(r"CheckConstraint\(\s*['\"](\w+) IN \(([^)]*)\)", block):
                if m.group(1) in columns:
                    columns[m.group(1)] += f"  # allowed: {m.group(2)}"
            return UsersTable(match.group(1), columns, path)
        match = re.search(r"__tablename__\s*=\s*['\"](users?)['\"]", text)
        if match:
            next_class = re.search(r"^class ", text[match.end():], re.MULTILINE)
            block = text[match.end(): match.end() + next_class.start() if next_class else len(text)]
            pattern = r"^\s+(\w+)\s*(?::[^=\n]*)?=\s*(?:mapped_column|Column)\("
            columns = {m.group(1): _call(block, m.start()) for m in re.finditer(pattern, block, re.MULTILINE)}
            return UsersTable(match.group(1), columns, path)
    return None


def _call(text: str, start: int) -> str:
    """The text from ``start`` to the parenthesis that closes the first one opened after it."""
    depth, i = 0, text.find("(", start)
    while 0 <= i < len(text):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return " ".join(text[start: i + 1].split())
        i += 1
    return text[start:].split("\n", 1)[0]


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

def config_text(project: str, alembic_ini: Path | None, table: UsersTable | None, seed_file: str) -> list[str]:
    lines = ["# envkit: a throwaway PostgreSQL + Redis for the tests (written by envkit init; every key is optional).",
             f"project = {_toml(project)}", ""]
    if alembic_ini is not None:
        lines += ["[migrations]", 'kind = "alembic"', f"alembic_ini = {_toml(alembic_ini.name)}", ""]
    else:
        lines += ["[migrations]", '# no alembic.ini found: "sql" (a folder of *.sql), "metadata" (a MetaData target)',
                  '# or "command" also work', 'kind = "none"', ""]
    lines += ["[seed]", f"file = {_toml(seed_file)}"]
    if table is not None:
        lines += [f"table = {_toml(table.name)}"]
        if table.password_column:
            lines += [f"password_column = {_toml(table.password_column)}"]
        generate = {c: kind for c, kind in ((c, _generated(d)) for c, d in table.columns.items()) if kind}
        if generate:
            lines += ["generate = { " + ", ".join(f"{c} = {_toml(k)}" for c, k in generate.items()) + " }"]
    return lines


def seed_text(table: UsersTable | None) -> str:
    head = ["# (written by envkit init)",
            "# Users envkit seeds after the migrations. `password` is hashed with bcrypt into the password column;",
            "# every other key is stored in the column of the same name. Tests find the plain passwords in",
            "# $ENVKIT_USERS_FILE (or in this file).", ""]
    if table is None:
        example = ["# No users table was found; an example:", "# [[users]]", '# email = "admin@example.com"',
                   '# password = "admin-password"', ""]
        return "\n".join([*head, *example])
    users = []
    for name in ("admin", "alice"):
        user: dict[str, object] = {}
        for column, decl in table.columns.items():
            value = _sample(column, decl, name, table.password_column)
            if value is not None:
                user["password" if column == table.password_column else column] = value
        users.append(user)
    body = []
    for user in users:
        body.append("[[users]]")
        body += [f"{k} = {_toml(v)}" for k, v in user.items()]
        body.append("")
    return "\n".join([*head, f"# Columns found in {table.source.name}.", "", *body])


def _sample(column: str, decl: str, name: str, password_column: str | None) -> object | None:
    if column == password_column:
        return f"{name}-password"  # the seeder hashes `password` into this column
    if column in ("username", "login", "name", "display_name", "full_name"):
        return name
    if column == "email":
        return f"{name}@example.com"
    if _generated(decl) or "server_default" in decl or "primary_key=True" in decl or "Identity" in decl:
        return None
    if "nullable=True" in decl or ("nullable=False" not in decl and "Mapped[" in decl and "Optional" in decl):
        return None
    allowed = re.findall(r"'([^']+)'", decl.partition("# allowed:")[2])
    if allowed:
        return allowed[0] if name == "admin" else allowed[-1]
    if column == "role":
        return "admin" if name == "admin" else "user"
    if re.search(r"Boolean|\bbool\b", decl):
        return True
    if re.search(r"Integer|\bint\b", decl):
        return 0
    if "nullable=False" in decl or "Mapped[str]" in decl:
        return name
    return None


def _generated(decl: str) -> str | None:
    if "server_default" in decl or "default=" in decl:
        return None
    if re.search(r"\bUuid\(|\bUUID\(|Mapped\[(uuid\.)?UUID\]", decl):
        return "uuid4"
    if re.search(r"DateTime|Mapped\[(dt\.|datetime\.)?datetime\]", decl) and "nullable=True" not in decl:
        return "now"
    return None


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
    if isinstance(value, int):
        return str(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
