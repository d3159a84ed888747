"""A throwaway environment, migrated (and seeded, or not), to read the schema the migrations make.

``envkit init`` writes its seed from what it finds; ``envkit doctor`` checks a
seed against it. It lives in a state directory of its own (an environment the
checkout has up is left alone), writes no dotenv file, and is always torn down.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import Config, load
from .errors import SeedError

if TYPE_CHECKING:
    from .services import PostgresEndpoint


@contextlib.contextmanager
def migrated(root: Path, environ: Mapping[str, str], overrides: Mapping[str, Any], *, seed: bool = False,
             ) -> Iterator[PostgresEndpoint]:
    """Bring up the project at ``root`` with ``overrides``, migrate it (and seed it, with ``seed``); yield its database."""
    from . import lifecycle

    state = Path(tempfile.mkdtemp(prefix="envkit-probe-"))
    settings = {"state_dir": str(state), "dotenv": "", "keep": False, "postgres.port": "auto", "redis.port": "auto",
                **({} if seed else {"seed": {}}), **overrides}
    try:
        config = load(root, overrides=settings, environ=environ)
        with lifecycle.environment(config) as env:
            assert env.running.postgres is not None
            yield env.running.postgres
    finally:
        shutil.rmtree(state, ignore_errors=True)


def check_seed(config: Config, pg: PostgresEndpoint) -> int:
    """Insert the configured users into ``pg`` in a transaction that is rolled back; returns how many went in.

    Raises :class:`SeedError` with the database's own message when they do not.
    """
    from .provision.database import connect
    from .provision.seed import insert_statements, load_users, rows_for

    users = load_users(config)
    if not users:
        return 0
    rows = rows_for(users, config.seed)
    with connect(pg.libpq()) as conn:
        try:
            with conn.transaction(force_rollback=True), conn.cursor() as cur:
                for query, params in insert_statements(config.seed.table, rows):
                    cur.executemany(query, params)
        except Exception as exc:  # noqa: BLE001 - the database's own message is the finding
            raise SeedError(f"the seed's users do not go into {config.seed.table!r}: "
                            f"{str(exc).strip().splitlines()[0]}") from None
    return len(rows)
