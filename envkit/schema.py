"""The users table as the migrations left it: read from ``information_schema`` and ``pg_catalog``.

``envkit init`` writes a seed from it and ``envkit doctor`` checks a seed
against it. Everything here needs only a DSN (a throwaway environment's).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .provision.database import connect

#: Names a password column goes by, most specific first.
PASSWORD_COLUMNS = ("password_hash", "hashed_password", "password_digest", "encrypted_password", "passwd", "password")
_TABLE_NAMES = ("users", "user", "accounts", "account", "auth_user")


@dataclass(frozen=True)
class Column:
    """One column: its type, whether it must be given, and the values a CHECK or an enum allows."""

    name: str
    type: str  # as format_type() prints it: integer, uuid, text, timestamp with time zone, a enum's name
    base: str  # the type's category: int, uuid, text, bool, timestamp, date, json, enum, number, other
    nullable: bool
    default: str | None  # the server default's expression, or "identity"/"generated"
    allowed: tuple[str, ...] = ()  # an enum's labels, or a CHECK (col IN (...))'s values
    unique: bool = False

    @property
    def required(self) -> bool:
        """NOT NULL and nothing fills it: every seeded row must give it."""
        return not self.nullable and self.default is None


@dataclass(frozen=True)
class UsersSchema:
    """A migrated users table."""

    schema: str
    name: str
    columns: dict[str, Column]
    primary_key: tuple[str, ...]

    @property
    def qualified(self) -> str:
        return self.name if self.schema == "public" else f"{self.schema}.{self.name}"

    @property
    def password_column(self) -> str | None:
        return next((c for c in PASSWORD_COLUMNS if c in self.columns), None)

    @property
    def role_column(self) -> str | None:
        for name in ("role", "roles", "user_role", "kind", "user_type"):
            if name in self.columns and self.columns[name].base in ("text", "enum"):
                return name
        return None


def find(dsn: str, wanted: str | None = None) -> UsersSchema | None:
    """The users table (``wanted``: ``table`` or ``schema.table``) in the database at ``dsn``, if there is one."""
    with connect(dsn) as conn:
        rows = conn.execute(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
            "AND n.nspname NOT LIKE 'pg_toast%' ORDER BY n.nspname = 'public' DESC, n.nspname").fetchall()
        tables = [(str(s), str(t)) for s, t in rows]
        if wanted:
            schema, _, name = wanted.rpartition(".")
            found = next(((s, t) for s, t in tables if t == name and (not schema or s == schema)), None)
        else:
            found = next(((s, t) for want in _TABLE_NAMES for s, t in tables if t == want), None)
        if found is None:
            return None
        return _read(conn, *found)


def _read(conn: Any, schema: str, table: str) -> UsersSchema:
    oid = conn.execute("SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                       "WHERE n.nspname = %s AND c.relname = %s", (schema, table)).fetchone()[0]
    columns = {}
    for name, type_name, typtype, category, not_null, default, identity, generated, labels in conn.execute("""
        SELECT a.attname, format_type(a.atttypid, a.atttypmod), t.typtype, t.typcategory, a.attnotnull,
               pg_get_expr(d.adbin, d.adrelid), a.attidentity, a.attgenerated,
               ARRAY(SELECT e.enumlabel FROM pg_enum e WHERE e.enumtypid = t.oid ORDER BY e.enumsortorder)
        FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum""", (oid,)):
        filled = default or ("identity" if identity else None) or ("generated" if generated else None)
        columns[name] = Column(name, type_name, _base(type_name, typtype, category), not not_null, filled,
                               tuple(labels or ()))
    primary: tuple[str, ...] = ()
    for kind, keys, definition in conn.execute("""
        SELECT c.contype, ARRAY(SELECT a.attname FROM unnest(c.conkey) k JOIN pg_attribute a
                                ON a.attrelid = c.conrelid AND a.attnum = k), pg_get_constraintdef(c.oid)
        FROM pg_constraint c WHERE c.conrelid = %s""", (oid,)):
        keys = list(keys or [])
        if kind == "p":
            primary = tuple(keys)
        elif kind == "u" and len(keys) == 1 and keys[0] in columns:
            columns[keys[0]] = _replace(columns[keys[0]], unique=True)
        elif kind == "c" and len(keys) == 1 and keys[0] in columns:
            allowed = _check_values(str(definition))
            if allowed:
                columns[keys[0]] = _replace(columns[keys[0]], allowed=allowed)
    for (column,) in conn.execute("SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
                                  "AND a.attnum = i.indkey[0] WHERE i.indrelid = %s AND i.indisunique "
                                  "AND i.indnkeyatts = 1 AND i.indkey[0] <> 0", (oid,)):
        if column in columns:
            columns[column] = _replace(columns[column], unique=True)
    return UsersSchema(schema, table, columns, primary)


def _replace(column: Column, **changes: Any) -> Column:
    from dataclasses import replace

    return replace(column, **changes)


def _base(type_name: str, typtype: str, category: str) -> str:
    if typtype == "e":
        return "enum"
    if type_name == "uuid":
        return "uuid"
    if type_name in ("json", "jsonb"):
        return "json"
    if type_name == "date":
        return "date"
    if type_name.startswith("timestamp"):
        return "timestamp"
    return {"S": "text", "B": "bool", "N": "int" if type_name in ("integer", "bigint", "smallint") else "number"}.get(
        category, "other")


def _check_values(definition: str) -> tuple[str, ...]:
    """``CHECK ((role = ANY (ARRAY['admin'::text, 'user'::text])))`` or ``CHECK (role IN (...))``: the values."""
    import re

    if not re.search(r"= ANY \(ARRAY\[|\bIN \(", definition):
        return ()
    return tuple(re.findall(r"'((?:[^']|'')*)'", definition))
