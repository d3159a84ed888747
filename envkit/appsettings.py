"""The settings names a project's code reads, found by a static read of its source (nothing is imported).

Two forms are found: a pydantic ``BaseSettings`` class (its fields, with the
``env_prefix`` and aliases it declares) and ``os.environ["NAME"]``. Each name
is offered as an ``[env]`` template: the database and Redis names from the
environment's values, a first superuser from the seeded users, and a test
value for any other name the settings require, so the first run passes.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

#: Exported by envkit itself: never rendered over.
BUILT_IN = frozenset({"DATABASE_URL", "REDIS_URL", "PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE"})
_DB = r"(?:POSTGRES(?:QL)?|PG|DB|DATABASE|SQL)"


@dataclass(frozen=True)
class Setting:
    """One environment variable the code reads."""

    name: str  # as the environment spells it (pydantic matches case-insensitively: upper case)
    required: bool  # no default: the code fails without it
    annotation: str  # the field's type as written ("str", "int", "EmailStr", "Literal['local', 'ci']")
    where: str  # "app/core/config.py: Settings"


@dataclass(frozen=True)
class Offer:
    """An ``[env]`` entry for a setting: the template, and why."""

    name: str
    template: str
    why: str


def read(root: Path, files: Iterable[Path]) -> list[Setting]:
    """Every setting the Python ``files`` read, first mention kept."""
    found: dict[str, Setting] = {}
    for path in files:
        text = path.read_text(errors="replace")
        if "BaseSettings" not in text and "environ" not in text:
            continue
        try:
            tree = ast.parse(text)
        except (SyntaxError, ValueError):
            continue
        where = str(path.relative_to(root)) if path.is_relative_to(root) else str(path)
        for setting in [*_settings_classes(tree, where), *_environ_reads(tree, where)]:
            found.setdefault(setting.name, setting)
    return list(found.values())


def uses_asyncpg(files: Iterable[Path]) -> bool:
    return any("asyncpg" in path.read_text(errors="replace") for path in files)


def offers(settings: list[Setting], *, asyncpg: bool, admin: str | None) -> list[Offer]:
    """``[env]`` entries for ``settings``; ``admin`` is the seeded superuser's key in ``users`` (None: no users)."""
    out = []
    for setting in settings:
        if setting.name in BUILT_IN:
            continue
        offer = _offer(setting, asyncpg=asyncpg, admin=admin)
        if offer is not None:
            out.append(offer)
    return out


def _offer(setting: Setting, *, asyncpg: bool, admin: str | None) -> Offer | None:
    name, where = setting.name.upper(), setting.where
    db = re.fullmatch(rf"(?:\w+_)?{_DB}_?(SERVER|HOST|HOSTNAME|PORT|USER|USERNAME|PASSWORD|PASS|DB|NAME|DATABASE)", name)
    if re.search(r"(URL|URI|DSN)$", name) and re.search(rf"{_DB}|SQLALCHEMY", name):
        value = "postgres.async_url" if asyncpg else "postgres.url"
        return Offer(setting.name, f"{{{{ {value} }}}}", f"{where} reads it: the database's URL"
                     + (" (the project uses asyncpg)" if asyncpg else ""))
    if re.search(r"REDIS", name):
        part = {"URL": "url", "URI": "url", "DSN": "url", "HOST": "host", "PORT": "port", "DB": "db"}.get(name.rsplit("_", 1)[-1])
        if part:
            return Offer(setting.name, f"{{{{ redis.{part} }}}}", f"{where} reads it: Redis's {part}")
    if db and not name.startswith("REDIS"):
        part = {"SERVER": "host", "HOST": "host", "HOSTNAME": "host", "PORT": "port", "USER": "user", "USERNAME": "user",
                "PASSWORD": "password", "PASS": "password", "DB": "database", "NAME": "database", "DATABASE": "database"}[db.group(1)]
        return Offer(setting.name, f"{{{{ postgres.{part} }}}}", f"{where} reads it: the database's {part}")
    if admin is not None and re.search(r"SUPERUSER|ADMIN", name):
        key = "password" if re.search(r"PASSWORD|PASS$", name) else "email" if re.search(r"EMAIL|SUPERUSER$|ADMIN$", name) else None
        if key:
            return Offer(setting.name, f"{{{{ {admin}.{key} }}}}", f"{where} reads it: the seeded admin's {key}")
    if not setting.required:
        return None
    return Offer(setting.name, _test_value(name, setting.annotation), f"{where} requires it (no default): a test value")


def _test_value(name: str, annotation: str) -> str:
    literal = re.search(r"Literal\[\s*['\"]([^'\"]*)['\"]", annotation)
    if literal:
        return literal.group(1)
    if re.search(r"\bbool\b", annotation):
        return "false"
    if re.search(r"\b(int|float|PositiveInt)\b", annotation):
        return "1"
    if re.search(r"Email", annotation) or name.endswith("EMAIL"):
        return "test@example.com"
    if re.search(r"Url|URL|Dsn", annotation):
        return "http://localhost"
    if re.search(r"\b(list|List|set|tuple|dict)\b", annotation):
        return "[]"
    return f"test-{name.lower().replace('_', '-')}"


# -- the source, read -----------------------------------------------------------------

def _settings_classes(tree: ast.AST, where: str) -> list[Setting]:
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.ClassDef) or not any(_name(base).endswith("BaseSettings") for base in node.bases):
            continue
        prefix = _env_prefix(node)
        for item in node.body:
            if not (isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)):
                continue
            field, annotation = item.target.id, ast.unparse(item.annotation)
            if field.startswith("_") or field == "model_config" or "ClassVar" in annotation:
                continue
            alias, required = _field(item.value)
            out.append(Setting(alias or (prefix + field).upper(), required, annotation, f"{where}: {node.name}"))
    return out


def _field(value: ast.expr | None) -> tuple[str | None, bool]:
    """(alias, required) of a field's value: nothing, a default, or ``Field(...)``."""
    if value is None:
        return None, True
    if isinstance(value, ast.Call) and _name(value.func).endswith("Field"):
        keywords = {k.arg: k.value for k in value.keywords if k.arg}
        alias = next((k.value for key in ("validation_alias", "alias") if isinstance(k := keywords.get(key), ast.Constant)
                      and isinstance(k.value, str)), None)
        has_default = "default" in keywords or "default_factory" in keywords or (
            value.args and not (isinstance(value.args[0], ast.Constant) and value.args[0].value is Ellipsis))
        return alias, not has_default
    return None, False


def _env_prefix(node: ast.ClassDef) -> str:
    for item in ast.walk(node):
        if isinstance(item, ast.keyword) and item.arg == "env_prefix" and isinstance(item.value, ast.Constant):
            return str(item.value.value)
        if (isinstance(item, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "env_prefix" for t in item.targets)
                and isinstance(item.value, ast.Constant)):
            return str(item.value.value)
    return ""


def _environ_reads(tree: ast.AST, where: str) -> list[Setting]:
    out = []
    for node in ast.walk(tree):
        # os.environ["NAME"]: required; os.environ.get / os.getenv are optional and only offered when recognised
        if isinstance(node, ast.Subscript) and _name(node.value).endswith("environ") and isinstance(node.slice, ast.Constant):
            if isinstance(node.slice.value, str) and isinstance(node.ctx, ast.Load):
                out.append(Setting(node.slice.value, True, "str", where))
        elif isinstance(node, ast.Call) and _name(node.func) in ("os.getenv", "getenv", "os.environ.get", "environ.get"):
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                out.append(Setting(node.args[0].value, False, "str", where))
    return out


def _name(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_name(node.value)}.{node.attr}"
    return ""
