"""The mariadb recipe (envkit/services/recipes/mariadb.toml), for real, with a real MySQL client (PyMySQL):
natively a private mariadbd beside whatever server the machine runs, on docker the official image's contract
(a local stand-in where the image cannot be pulled: tests/standin.py). Each test checks that nothing is left:
the server's processes, its data directory, its port, its containers."""

from __future__ import annotations

import json
import os
import shutil
import socket
import textwrap
from pathlib import Path

import pymysql  # the dev extra: missing, the suite fails loudly (a skip would hide it in CI)
import pytest
from conftest import Project, need, processes_of, wait_until

import envkit

CONFIG = '''\
    [postgres]
    enabled = false
    [redis]
    enabled = false
    [services.mariadb]
    recipe = "mariadb"
    [env]
    SQLALCHEMY_DATABASE_URI = "{{ mariadb.exports.MYSQL_URL | replace('mysql://', 'mysql+pymysql://') }}"
'''


def _connect(env: dict[str, str], **kw: object):  # type: ignore[no-untyped-def]
    return pymysql.connect(host=env["MYSQL_HOST"], port=int(env["MYSQL_TCP_PORT"]), user=env["MYSQL_USER"],
                           password=env["MYSQL_PASSWORD"], database=env["MYSQL_DATABASE"], connect_timeout=5, **kw)


def _round_trip(env: dict[str, str]) -> str:
    """A table, a row written and read back as the recipe's user; the server's version."""
    with _connect(env, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE notes (id INT AUTO_INCREMENT PRIMARY KEY, body VARCHAR(100)) ENGINE=InnoDB")
        cur.execute("INSERT INTO notes (body) VALUES (%s)", ("héllo 'quoted'",))
        cur.execute("SELECT body FROM notes")
        assert cur.fetchall() == (("héllo 'quoted'",),)
        cur.execute("SELECT VERSION(), CURRENT_USER()")
        version, user = cur.fetchone()
        assert user == f"{env['MYSQL_USER']}@%"
    return str(version)


def _free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def _no_native_mariadb() -> None:
    missing = [b for b in ("mariadbd", "mariadb-install-db") if not (shutil.which(b) or Path("/usr/sbin", b).exists())]
    need(not missing, f"the mariadb recipe runs {' and '.join(missing)} natively: apt-get install mariadb-server")


@pytest.mark.native
def test_the_recipe_runs_a_private_mariadb_natively(project: Project) -> None:
    _no_native_mariadb()
    project.configure(CONFIG)
    with envkit.environment(project.load(backend="native")) as env:
        ex = env.exports
        port = int(ex["MYSQL_TCP_PORT"])
        assert port != 3306 and ex["MYSQL_HOST"] == "127.0.0.1"
        assert ex["MYSQL_URL"] == f"mysql://envkit:envkit-mariadb-pw@127.0.0.1:{port}/envkit"
        assert ex["SQLALCHEMY_DATABASE_URI"].startswith("mysql+pymysql://envkit:")
        assert "MariaDB" in _round_trip(ex)
        with pymysql.connect(host="127.0.0.1", port=port, user="root", password="envkit-mariadb-root") as root:
            with root.cursor() as cur:  # root over TCP, as the image gives it: may create databases
                cur.execute("CREATE DATABASE scratch")
                cur.execute("SELECT @@datadir, @@socket, @@bind_address")
                datadir, sock, bind = cur.fetchone()
        data = Path(env.session.resources["run_dir"]) / "services" / "mariadb"
        assert Path(datadir).resolve() == (data / "data").resolve() and Path(sock).parent == data and bind == "127.0.0.1"
        assert (data / "init.sql").stat().st_mode & 0o777 == 0o600  # it holds the passwords
        pids = [pid for pid, cmd in processes_of(project.root) if "mariadbd" in cmd]  # this checkout's, not others'
        assert len(pids) == 1
        logs = envkit.backends.by_name("native").logs(env.session)
        assert "ready for connections" in logs["mariadb"]
    assert wait_until(lambda: not processes_of(project.root), timeout=15), processes_of(project.root)
    assert not data.exists() and _free(port)


@pytest.mark.native
def test_vars_rename_the_database_and_user_everywhere(project: Project) -> None:
    _no_native_mariadb()
    project.configure(CONFIG.replace('recipe = "mariadb"', 'recipe = "mariadb"\n    vars = { database = "shop`s", '
                                     'user = "o\'brien", password = "p\\\\a\'ss/w@rd" }'))
    with envkit.environment(project.load(backend="native")) as env:
        ex = env.exports
        assert (ex["MYSQL_DATABASE"], ex["MYSQL_USER"], ex["MYSQL_PASSWORD"]) == ("shop`s", "o'brien", "p\\a'ss/w@rd")
        assert "/shop%60s" in ex["MYSQL_URL"] and "p%5Ca%27ss%2Fw%40rd@" in ex["MYSQL_URL"]
        _round_trip(ex)  # the quoting in the recipe's SQL held for each of them


@pytest.mark.native
def test_the_cli_checks_lists_and_logs_it(project: Project) -> None:
    _no_native_mariadb()
    project.configure(CONFIG)
    doctor = json.loads(project.cli("doctor", "--backend", "native", "--json").stdout)
    checks = {c["name"]: c for c in doctor["checks"]}
    assert checks["service mariadb"]["status"] == "ok", checks["service mariadb"]
    assert "recipe mariadb" in checks["service mariadb"]["detail"]
    project.cli("up", "--backend", "native", check=True)
    try:
        assert "mariadb: 127.0.0.1 mysql " in project.cli("status").stdout
        assert "ready for connections" in project.cli("logs", "mariadb", check=True).stdout
        shell = project.cli("env", check=True).stdout
        assert "MYSQL_TCP_PORT=" in shell
    finally:
        project.cli("down", check=True)
    assert not (project.root / ".envkit" / "state.json").exists()


@pytest.mark.docker
def test_the_recipe_runs_the_image_on_docker(project: Project) -> None:
    from envkit.backends import docker_reachable
    from envkit.backends.docker import reaper

    need(docker_reachable(os.environ), "no Docker engine answers: run ../shared/docker/provision.sh as root")
    import docker
    import standin

    try:
        image = standin.ensure("mariadb")
    except RuntimeError as exc:
        need(False, str(exc))
    project.configure('backend = "docker"\n' + textwrap.dedent(CONFIG))
    client = docker.from_env()
    with envkit.environment(project.load()) as env:
        ex = env.exports
        version = _round_trip(ex)
        assert version
        assert env.session.info["mariadb"]["image"] == image
        with pymysql.connect(host=ex["MYSQL_HOST"], port=int(ex["MYSQL_TCP_PORT"]), user="root",
                             password="envkit-mariadb-root") as root, root.cursor() as cur:
            cur.execute("CREATE DATABASE scratch")
        label = env.session.label
        port = int(ex["MYSQL_TCP_PORT"])
    assert not any(reaper.resources(client, reaper.SESSION, label).values())
    assert _free(port)


@pytest.mark.docker
def test_the_image_refuses_an_empty_data_directory_without_a_root_password() -> None:
    """The image's contract, which the recipe relies on (a stand-in must keep it too): no root password option,
    no server."""
    from envkit.backends import docker_reachable

    need(docker_reachable(os.environ), "no Docker engine answers: run ../shared/docker/provision.sh as root")
    import docker
    import standin

    try:
        image = standin.ensure("mariadb")
    except RuntimeError as exc:
        need(False, str(exc))
    client = docker.from_env()
    container = client.containers.run(image, detach=True, environment={"MARIADB_DATABASE": "x"},
                                      labels={"envkit.test": "mariadb-contract"})
    try:
        assert container.wait(timeout=60)["StatusCode"] != 0
        assert "MARIADB_ROOT_PASSWORD" in container.logs().decode()
    finally:
        container.remove(force=True, v=True)
    assert not client.containers.list(all=True, filters={"label": "envkit.test=mariadb-contract"})


@pytest.mark.native
def test_a_machine_without_mariadb_fails_fast_with_the_recipe_s_message(project: Project, tmp_path: Path) -> None:
    """docs/services.md: sh is found, the script then says which MariaDB program is missing and how to get it."""
    bare = tmp_path / "bin"
    bare.mkdir()
    for tool in ("sh", "sed", "cat", "id", "printf"):  # what the script needs before it looks for MariaDB
        found = shutil.which(tool)
        if found:
            (bare / tool).symlink_to(found)
    project.configure(CONFIG)
    result = project.cli("up", "--backend", "native", "--timeout", "20", env=project.env(PATH=str(bare)))
    assert result.returncode == 3, result.stderr
    assert "mariadb exited with code 127 before it was ready" in result.stderr
    assert "not found on PATH or in /usr/sbin" in result.stderr and "mariadb recipe: mariadb" in result.stderr
    assert "apt-get install mariadb-server" in result.stderr and "Traceback" not in result.stderr
    assert not (project.root / ".envkit" / "state.json").exists()
