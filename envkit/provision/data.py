"""Truncate-and-reseed: put a database's rows back to what they were at a snapshot.

:func:`capture` copies every table's rows (``COPY ... TO STDOUT`` in binary)
and every sequence's position while the database is freshly migrated and
seeded; :func:`restore` truncates those tables and copies the rows back. This
"reseeds" whatever the migrations, the seed users, the SQL seed files and the
seed hook wrote, without running any of them again (no bcrypt either).

Tables that belong to extensions are left alone, generated columns are
neither copied nor restored, and foreign keys are satisfied by loading
parents first (and, where the role may, with triggers off while loading).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .database import connect, guard

if TYPE_CHECKING:
    from ..services import PostgresEndpoint

_TABLES = """
SELECT c.oid, n.nspname, c.relname,
       array(SELECT a.attname FROM pg_attribute a
             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
             ORDER BY a.attnum)::text[]
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
"""
_FOREIGN_KEYS = "SELECT conrelid, confrelid FROM pg_constraint WHERE contype = 'f' AND conrelid <> confrelid"
_SEQUENCES = """
SELECT schemaname, sequencename, last_value, start_value FROM pg_sequences
WHERE schemaname NOT IN ('pg_catalog', 'information_schema')
"""


@dataclass
class Table:
    schema: str
    name: str
    columns: list[str]
    rows: bytes = b""  # COPY binary; empty when the table had no rows


@dataclass
class Snapshot:
    """The rows and sequence positions of one database, in the order they load."""

    tables: list[Table] = field(default_factory=list)
    sequences: list[tuple[str, str, int | None, int]] = field(default_factory=list)  # schema, name, last, start


def capture(pg: PostgresEndpoint) -> Snapshot:
    """Copy the rows and sequence positions of ``pg.database``."""
    from psycopg import sql

    snapshot = Snapshot()
    with connect(pg.libpq()) as conn, conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        found = {oid: Table(schema, name, list(columns)) for oid, schema, name, columns in conn.execute(_TABLES)}
        for oid in _load_order(found, conn.execute(_FOREIGN_KEYS).fetchall()):
            table = found[oid]
            if not table.columns:
                snapshot.tables.append(table)
                continue
            query = sql.SQL("COPY (SELECT {} FROM {}) TO STDOUT (FORMAT binary)").format(
                _columns(table), sql.Identifier(table.schema, table.name))
            chunks: list[bytes] = []
            with conn.cursor() as cur, cur.copy(query) as copy:
                for chunk in copy:
                    chunks.append(bytes(chunk))
            data = b"".join(chunks)
            # a binary COPY of no rows is just its 19-byte header and a 2-byte trailer
            table.rows = data if len(data) > 21 else b""
            snapshot.tables.append(table)
        snapshot.sequences = [(s, n, last, start) for s, n, last, start in conn.execute(_SEQUENCES)]
    return snapshot


def restore(pg: PostgresEndpoint, snapshot: Snapshot, *, created_by_envkit: bool | None = None,
            allow_hosts: Sequence[str] = (), allow_unsafe: bool = False, lock_timeout: str = "10s",
            conn: Any = None) -> None:
    """Truncate the snapshot's tables and copy its rows and sequence positions back, in one transaction.

    ``conn``: an autocommit connection to ``pg.database`` to do it on (the pytest plugin keeps one, so
    a restore after every test does not pay a new connection and its SCRAM handshake); else one is opened.
    """
    guard(pg, pg.database, "truncate", created_by_envkit=created_by_envkit, allow_hosts=allow_hosts,
          allow_unsafe=allow_unsafe)
    if not snapshot.tables and not snapshot.sequences:
        return
    if conn is not None:
        _restore(conn, snapshot, lock_timeout)
        return
    with connect(pg.libpq()) as own:
        _restore(own, snapshot, lock_timeout)


def _restore(conn: Any, snapshot: Snapshot, lock_timeout: str) -> None:
    from psycopg import errors, sql

    with conn.transaction():
        # a test that left a transaction open would make TRUNCATE wait forever; fail with Postgres' message instead
        conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(lock_timeout)))
        if snapshot.tables:
            conn.execute(sql.SQL("TRUNCATE {} RESTART IDENTITY CASCADE").format(
                sql.SQL(", ").join(sql.Identifier(t.schema, t.name) for t in snapshot.tables)))
        try:
            with conn.transaction():  # a savepoint: only superusers may switch triggers (and FK checks) off
                conn.execute("SET LOCAL session_replication_role = replica")
        except errors.InsufficientPrivilege:
            pass  # the load order alone satisfies the foreign keys
        for table in snapshot.tables:
            if table.rows:
                query = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT binary)").format(
                    sql.Identifier(table.schema, table.name), _columns(table))
                with conn.cursor() as cur, cur.copy(query) as copy:
                    copy.write(table.rows)
        for schema, name, last, start in snapshot.sequences:
            qualified = sql.Identifier(schema, name).as_string(conn)
            if last is None:
                conn.execute("SELECT setval(%s::regclass, %s, false)", (qualified, start))
            else:
                conn.execute("SELECT setval(%s::regclass, %s, true)", (qualified, last))


def _columns(table: Table) -> Any:
    from psycopg import sql

    return sql.SQL(", ").join(map(sql.Identifier, table.columns))


def _load_order(tables: dict[int, Table], foreign_keys: list[tuple[int, int]]) -> list[int]:
    """Parents before children (a depth-first topological sort); tables in a cycle keep their place."""
    parents: dict[int, set[int]] = {oid: set() for oid in tables}
    for child, parent in foreign_keys:
        if child in parents and parent in parents:
            parents[child].add(parent)
    order: list[int] = []
    state: dict[int, int] = {}  # 1: visiting, 2: done

    def visit(oid: int) -> None:
        if state.get(oid):
            return  # done, or a cycle: replication_role (or deferrable constraints) must cover it
        state[oid] = 1
        for parent in sorted(parents[oid]):
            visit(parent)
        state[oid] = 2
        order.append(oid)

    for oid in sorted(tables, key=lambda o: (tables[o].schema, tables[o].name)):
        visit(oid)
    return order
