"""The seed ``envkit init`` proposes: from the migrated schema (:mod:`envkit.schema`), or a scan of the source.

Two users, an admin and a plain one, that fill every NOT NULL column without
a default: uuids and timestamps as ``seed.generate``, other columns with a
value of their type (a CHECK's or an enum's allowed value, a text unique per
user); the role column and flags such as ``is_superuser`` make the first the admin.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import appsettings
from .schema import PASSWORD_COLUMNS, Column, UsersSchema


@dataclass(frozen=True)
class UsersTable:
    """A users table found in the migrations or models: its columns and what each needs."""

    name: str
    columns: dict[str, str]  # column -> the text that declares it
    source: Path

    @property
    def password_column(self) -> str | None:
        return next((c for c in PASSWORD_COLUMNS if c in self.columns), None)


@dataclass
class Plan:
    """The seed init proposes: the table, its password column, generated columns and two users."""

    table: str | None
    password_column: str | None = None
    generate: dict[str, str] = field(default_factory=dict)
    users: list[dict[str, Any]] = field(default_factory=list)
    source: str = ""  # where the columns were read: "the migrated database" or a file name
    env: list[appsettings.Offer] = field(default_factory=list)


def scan_users_table(files: list[Path]) -> UsersTable | None:
    """A ``users`` (or ``user``) table declared in Alembic revisions or SQLAlchemy models, if a simple scan finds one."""
    for path in files:
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


# -- from the migrated schema ---------------------------------------------------------

_NAME_COLUMNS = ("username", "login", "name", "display_name", "full_name", "first_name", "nickname")
_ADMIN_FLAGS = ("is_superuser", "is_admin", "is_staff", "superuser", "admin")


def plan_from_source(found: UsersTable) -> Plan:
    """Two users from a scan of the source: the stand-in when the migrations cannot run."""
    generate = {c: kind for c, kind in ((c, _generated(d)) for c, d in found.columns.items()) if kind}
    users = []
    for name in ("admin", "alice"):
        user: dict[str, Any] = {}
        for column, decl in found.columns.items():
            value = _sample(column, decl, name, found.password_column)
            if value is not None:
                user["password" if column == found.password_column else column] = value
        users.append(user)
    return Plan(found.name, found.password_column, generate, users, f"Columns found in {found.source.name}.")


def plan_from_schema(table: UsersSchema, note: Callable[[str], None]) -> Plan:
    """Two users (an admin and a plain one) that satisfy every NOT NULL column without a default; findings to ``note``."""
    found = []
    for column in table.columns.values():
        facts = [column.type, "NOT NULL" if not column.nullable else "nullable"]
        if column.default:
            facts.append(f"default {column.default}")
        if column.name in table.primary_key:
            facts.append("primary key")
        if column.allowed:
            facts.append("one of " + ", ".join(column.allowed))
        found.append(f"{column.name} ({', '.join(facts)})")
    note(f"users table: {table.qualified}, as migrated: {'; '.join(found)}")
    generate: dict[str, str] = {}
    users: list[dict[str, Any]] = []
    for index, who in enumerate(("admin", "alice")):
        user: dict[str, Any] = {}
        for column in table.columns.values():
            value = _value_for(column, who, index, table, generate)
            if value is not None:
                user["password" if column.name == table.password_column else column.name] = value
        users.append(user)
    why = {"uuid4": "a uuid with no default", "now": "a timestamp with no default"}
    for name, kind in generate.items():
        note(f"column {name}: NOT NULL, {why[kind]} -> seed.generate.{name} = {kind!r}")
    if table.password_column:
        note(f"column {table.password_column}: the password column (bcrypt hashes of each user's `password`)")
    if table.role_column:
        note(f"column {table.role_column}: the role column (admin and a plain user)")
    for column in table.columns.values():
        if column.required and column.name not in generate and column.name != table.password_column \
                and any(column.name not in u for u in users):
            note(f"column {column.name}: NOT NULL without a default, of type {column.type}, which init cannot "
                        "fill: add it to each user in seed.toml")
    return Plan(table.qualified, table.password_column, generate, users,
                "Columns read from the migrated database (envkit init ran the migrations in a throwaway one).")


def _value_for(column: Column, who: str, index: int, table: UsersSchema, generate: dict[str, str]) -> Any:
    name, admin = column.name, who == "admin"
    if name == table.password_column:
        return f"{who}-password"
    if name == table.role_column:
        plain = next((v for v in ("user", "staff", "member", "customer") if v in column.allowed), None)
        if column.allowed:
            return ("admin" if "admin" in column.allowed else column.allowed[0]) if admin else (plain or column.allowed[-1])
        return "admin" if admin else "user"
    if name in _ADMIN_FLAGS and column.base == "bool":
        return admin
    if name == "email" or (name.endswith("email") and column.base == "text"):
        return f"{who}@example.com"
    if name in _NAME_COLUMNS and column.base == "text":
        return who.capitalize() if name in ("full_name", "display_name", "first_name") else who
    if not column.required:
        return None
    if column.base == "uuid":
        generate[name] = "uuid4"
        return None
    if column.base == "timestamp":
        generate[name] = "now"
        return None
    if column.allowed:
        return column.allowed[0]
    return {"int": index + 1 if name in table.primary_key else 0, "number": 0, "bool": False,
            "text": f"{who}-{name}" if column.unique or name in table.primary_key else who,
            "date": dt.date(2000, 1, 1), "json": {}}.get(column.base)


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
