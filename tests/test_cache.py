"""The migrated-and-seeded snapshot cache is correct before it is fast.

A changed migration file or seed row reaches the next environment (the
fingerprint covers them), ``--no-cache`` neither reads nor fills the cache,
the size bound evicts the least recently used entry, and ``envkit cache
clear`` empties it.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import Project
from projects import ALEMBIC_INI, ENV_PY, USERS_TABLE, alembic_project

import envkit
from envkit import cache
from envkit.backends.native import spares
from envkit.proc import RunAs

pytestmark = pytest.mark.native

SEED = '[seed]\nfile = "seed.toml"\ntable = "user"\ngenerate = { id = "uuid4" }\n'
USERS = """
[[users]]
username = "ada"
email = "{email}"
password = "ada-password"
role = "admin"
"""


def make(project: Project, widget: str = "CREATE TABLE widget (id int)", email: str = "ada@one.example") -> None:
    alembic_project(project, [USERS_TABLE, widget], seed=SEED)
    # Alembic runs in this process here, where filterwarnings = error turns its warning about a missing
    # path_separator, and the ResourceWarning of a pooled connection env.py never closes, into errors
    project.write("alembic.ini", ALEMBIC_INI.replace("prepend_sys_path = %(here)s", "prepend_sys_path = %(here)s\npath_separator = os"))
    project.write("migrations/env.py", ENV_PY.replace("import create_engine", "import create_engine, pool")
                  .replace("create_engine(url)", "create_engine(url, poolclass=pool.NullPool)"))
    project.write("seed.toml", USERS.format(email=email))


def bring_up(project: Project, **overrides: Any) -> dict[str, Any]:
    """Up and down once; what the environment held, and whether it came from the snapshot."""
    with envkit.environment(project.load(backend="native", **overrides)) as env:
        assert env.running.postgres is not None
        with psycopg.connect(env.running.postgres.libpq()) as conn:
            columns = [r[0] for r in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'widget' ORDER BY ordinal_position")]
            emails = [r[0] for r in conn.execute('SELECT email FROM "user" ORDER BY username')]
        return {"restored": env.running.restored, "columns": columns, "emails": emails,
                "users_file": [u["email"] for u in env.users()], "spare": env.session.info.get("from_spare", False)}


def snapshots(config: envkit.Config) -> list[str]:
    return sorted(key for kind, key, _, _ in cache.entries(config) if kind == "snapshots")


def test_changed_migration_and_seed_row_reach_the_next_environment(project: Project, tmp_path: Path) -> None:
    own = {"cache_dir": str(tmp_path / "cache")}
    make(project)
    first = bring_up(project, **own)
    assert not first["restored"] and first["columns"] == ["id"] and first["emails"] == ["ada@one.example"]
    again = bring_up(project, **own)
    assert again == {**first, "restored": True, "spare": True}, "an unchanged project must start from its snapshot"

    make(project, widget="CREATE TABLE widget (id int, size int)")  # the same revision file, edited
    changed = bring_up(project, **own)
    assert not changed["restored"] and changed["columns"] == ["id", "size"] and changed["emails"] == ["ada@one.example"]

    project.write("seed.toml", USERS.format(email="ada@two.example"))  # one seed row changed
    reseeded = bring_up(project, **own)
    assert not reseeded["restored"]
    assert reseeded["emails"] == reseeded["users_file"] == ["ada@two.example"] and reseeded["columns"] == ["id", "size"]
    cached = bring_up(project, **own)
    assert cached == {**reseeded, "restored": True, "spare": True}, "the new content is what is cached now"
    assert len(snapshots(project.load(**own))) == 3


def test_no_cache_neither_reads_nor_fills_the_cache(project: Project, tmp_path: Path) -> None:
    own = tmp_path / "cache"
    make(project)
    env = project.env(ENVKIT_CACHE_DIR=str(own))
    cold = project.cli("up", "--backend", "native", "--no-cache", "-v", env=env, check=True)
    try:
        assert "from cache" not in cold.stderr and "(snapshot)" not in cold.stderr
        exports = json.loads(project.cli("env", "--format", "json", env=env, check=True).stdout)
        with psycopg.connect(exports["DATABASE_URL"].replace("+psycopg", "")) as conn:
            assert conn.execute('SELECT email FROM "user"').fetchall() == [("ada@one.example",)]
    finally:
        project.cli("down", env=env, check=True)
    assert not own.exists() or not any(own.rglob("*")), "--no-cache must not fill the cache"

    assert not bring_up(project, cache_dir=str(own))["restored"]  # fills it
    assert bring_up(project, cache_dir=str(own))["restored"]
    spares.clear(own)  # kept at `down` of the run before: not the cache, but must not stay on after a --no-cache run
    entries = cache.entries(project.load(cache_dir=str(own)))
    bypassed = project.cli("up", "--backend", "native", "--no-cache", "-v", env=env, check=True)
    project.cli("down", env=env, check=True)
    assert "from cache" not in bypassed.stderr and "(snapshot)" not in bypassed.stderr
    assert cache.entries(project.load(cache_dir=str(own))) == entries, "--no-cache must not touch the cache either"


def test_size_bound_evicts_the_least_recently_used_snapshot(project: Project, tmp_path: Path) -> None:
    own = str(tmp_path / "cache")
    make(project)
    bring_up(project, cache_dir=own)
    config = project.load(cache_dir=own)
    sizes = {key: size for _, key, size, _ in cache.entries(config)}
    (old,) = snapshots(config)
    # room for the pristine cluster and one snapshot, not two
    limit_mb = (sum(sizes.values()) + sizes[old] // 2) // (1024 * 1024) + 1

    make(project, widget="CREATE TABLE widget (id int, size int)")
    assert not bring_up(project, cache_dir=own, cache_max_mb=limit_mb)["restored"]
    config = project.load(cache_dir=own, cache_max_mb=limit_mb)
    kept = snapshots(config)
    assert old not in kept and len(kept) == 1, f"the older snapshot should have been evicted, found {kept}"
    assert any(kind == "clusters" for kind, *_ in cache.entries(config)), "the cluster was used last: it stays"
    assert sum(size for *_, size, _ in cache.entries(config)) <= limit_mb * 1024 * 1024

    make(project)  # the evicted content again: built anew, not restored
    assert not bring_up(project, cache_dir=own, cache_max_mb=limit_mb)["restored"]


def test_cache_clear_empties_it(project: Project, tmp_path: Path) -> None:
    own = tmp_path / "cache"
    make(project)
    bring_up(project, cache_dir=str(own))
    env = project.env(ENVKIT_CACHE_DIR=str(own))
    listed = project.cli("cache", "list", env=env, check=True)
    assert "snapshots" in listed.stdout and "clusters" in listed.stdout
    cleared = project.cli("cache", "clear", env=env, check=True)
    assert "cache cleared" in cleared.stderr
    assert not own.exists() or not any(own.rglob("*"))
    assert "snapshots" not in project.cli("cache", "list", env=env, check=True).stdout
    assert not bring_up(project, cache_dir=str(own))["restored"]


# -- spares: the next start's copy, made at `down` (or while envkit test/run's command runs) -------------------------------------------------

def spare_names(cache_dir: Path) -> list[str]:
    home = spares.folder(cache_dir)
    return sorted(p.name for p in home.iterdir() if p.is_dir()) if home.is_dir() else []


def test_a_spare_is_kept_at_down_renamed_into_place_and_cleared(project: Project, tmp_path: Path) -> None:
    own = tmp_path / "cache"
    make(project)
    first = bring_up(project, cache_dir=str(own))  # saves the snapshot: its spare is made at down
    (entry,) = [own / "snapshots" / key for key in snapshots(project.load(cache_dir=str(own)))]
    assert not first["spare"] and spare_names(own) == [spares.name(entry)]
    data = spares.folder(own) / spares.name(entry) / "pgdata"
    run_as = RunAs.for_servers()
    if run_as:  # ready for a server that runs as nobody: no chown on the way in
        assert data.stat().st_uid == run_as.uid and (data / "PG_VERSION").stat().st_uid == run_as.uid

    with envkit.environment(project.load(backend="native", cache_dir=str(own))) as env:
        assert env.running.restored and env.session.info["from_spare"]
        assert spare_names(own) == [], "claimed by this run"
    assert spare_names(own) == [spares.name(entry)], "made again at down"
    assert bring_up(project, cache_dir=str(own)) == {**first, "restored": True, "spare": True}

    assert not bring_up(project, cache_dir=str(own), cache_spare=False)["spare"]
    listed = project.cli("cache", "list", env=project.env(ENVKIT_CACHE_DIR=str(own)), check=True)
    assert f"1 spare copy for the next start in {spares.folder(own)}: {spares.name(entry)}" in listed.stderr
    project.cli("cache", "clear", env=project.env(ENVKIT_CACHE_DIR=str(own)), check=True)
    assert not spares.folder(own).exists()


def test_envkit_run_makes_the_spare_while_its_command_runs(project: Project, tmp_path: Path) -> None:
    """Off the teardown: the command itself sees the next start's spare appear, and teardown finds it made."""
    from envkit import lifecycle

    own = tmp_path / "cache"
    make(project)
    bring_up(project, cache_dir=str(own))  # the snapshot, and a spare made at down
    (name,) = spare_names(own)
    spare = spares.folder(own) / name
    waits = ("import pathlib, sys, time\n"
             "spare = pathlib.Path(sys.argv[1])\n"
             "deadline = time.monotonic() + 30\n"
             "while not spare.is_dir() and time.monotonic() < deadline:\n"
             "    time.sleep(0.01)\n"
             "sys.exit(0 if spare.is_dir() else 7)\n")
    config = project.load(backend="native", cache_dir=str(own))
    assert lifecycle.run(config, [sys.executable, "-c", waits, str(spare)]) == 0  # claimed at start, made again
    assert spare_names(own) == [name]
    assert bring_up(project, cache_dir=str(own))["spare"]


def test_cache_spare_false_keeps_none(project: Project, tmp_path: Path) -> None:
    own = tmp_path / "cache"
    make(project)
    for _ in range(2):
        assert not bring_up(project, cache_dir=str(own), cache_spare=False)["spare"]
    assert spare_names(own) == []


def fake_entry(cache_dir: Path, key: str, stamp: str = "1 10") -> Path:
    entry = cache_dir / "snapshots" / key
    (entry / "pgdata" / "base").mkdir(parents=True)
    (entry / "pgdata" / "PG_VERSION").write_text("15\n")
    (entry / ".complete").write_text(stamp)
    return entry


def test_spare_claims_are_exclusive_and_stale_ones_unused(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    entry = fake_entry(cache_dir, "k1")
    copy = lambda src, dst: shutil.copytree(src, dst)  # noqa: E731
    runs = spares.tmpfs_root() / f"spare-test-{os.getpid()}"  # run directories live on the same tmpfs as spares
    runs.mkdir()
    try:
        assert spares.make(cache_dir, entry, copy) is not None
        assert spares.make(cache_dir, entry, copy) is None, "one spare per entry"
        first, second = runs / "a", runs / "b"
        assert spares.take(cache_dir, entry, first) and (first / "PG_VERSION").exists()
        assert not spares.take(cache_dir, entry, second) and not second.exists()

        spares.make(cache_dir, entry, copy)
        (entry / ".complete").write_text("2 10")  # the entry was stored again: the spare is of the old one
        assert not spares.take(cache_dir, entry, runs / "c")
    finally:
        spares.clear(cache_dir)
        shutil.rmtree(runs)


def test_spares_are_bounded_and_vanished_caches_lose_theirs(tmp_path: Path) -> None:
    copy = lambda src, dst: shutil.copytree(src, dst)  # noqa: E731
    gone, kept = tmp_path / "gone", tmp_path / "kept"
    try:
        spares.make(gone, fake_entry(gone, "old"), copy)
        shutil.rmtree(gone)
        for index in range(spares.MAX_SPARES + 2):
            spares.make(kept, fake_entry(kept, f"k{index}"), copy)
        assert not spares.folder(gone).exists(), "the spares of a cache folder that is gone are removed"
        assert len(spare_names(kept)) <= spares.MAX_SPARES
    finally:
        spares.clear(kept)


def test_an_environment_left_up_is_found_stale_and_replaced(project: Project, tmp_path: Path) -> None:
    """`envkit up` twice after a migration changed: not 'already up', but stale, named, and --replace fixes it."""
    make(project)
    env = project.env(ENVKIT_CACHE_DIR=str(tmp_path / "cache"))
    project.cli("up", "--backend", "native", env=env, check=True)
    try:
        status = project.cli("status", env=env, check=True).stdout
        assert "stale" not in status
        again = project.cli("up", "--backend", "native", env=env)
        assert again.returncode == 3 and "already up" in again.stderr and "--replace" in again.stderr

        make(project, widget="CREATE TABLE widget (id int, size int)")  # the same revision file, edited
        status = json.loads(project.cli("status", "--json", env=env, check=True).stdout)
        assert status["stale"] == ["migrations/versions/0002_step.py"], status["stale"]
        for command in (["up", "--backend", "native"], ["run", "--", "true"], ["test"]):
            refused = project.cli(*command, env=env)
            assert refused.returncode == 3 and "its database is stale" in refused.stderr, (command, refused.stderr)
        stale = project.cli("up", "--backend", "native", env=env)
        assert stale.returncode == 3
        assert "migrations/versions/0002_step.py changed; its database is stale" in stale.stderr, stale.stderr
        assert "envkit up --replace" in stale.stderr

        replaced = project.cli("up", "--backend", "native", "--replace", env=env, check=True)
        assert "torn down, to be replaced" in replaced.stderr
        exports = json.loads(project.cli("env", "--format", "json", env=env, check=True).stdout)
        with psycopg.connect(exports["DATABASE_URL"].replace("+psycopg", "")) as conn:
            columns = [r[0] for r in conn.execute("SELECT column_name FROM information_schema.columns "
                                                  "WHERE table_name = 'widget' ORDER BY ordinal_position")]
        assert columns == ["id", "size"]
        assert json.loads(project.cli("status", "--json", env=env, check=True).stdout)["stale"] == []
    finally:
        project.cli("down", env=env, check=True)
