"""Every registered backend runs the same things the same way: a built-in (postgres) and a user service, through
the one lifecycle, and leaves nothing behind. (The protocol by mypy and by signature: tests/test_registry.py.)"""

from __future__ import annotations

import os
import socket
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from conftest import Project, need

import envkit
from envkit import registry
from envkit.backends import docker_reachable
from envkit.services import ServiceEndpoint

HTTP = textwrap.dedent('''\
    import http.server, sys
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200); self.end_headers(); self.wfile.write(b"ok")
        def log_message(self, *a): pass
    http.server.HTTPServer((sys.argv[1], int(sys.argv[2])), H).serve_forever()
''')


@pytest.fixture
def listener() -> Iterator[int]:
    """A port someone else serves (for the external backend): accepts and closes connections."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                server.accept()[0].close()
            except OSError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    server.close()


def _service(backend: str, root: Path, port: int) -> str:
    """The same service, told to each backend the way that backend runs things."""
    if backend == "native":
        (root / "web.py").write_text(HTTP)
        how = f'command = ["{sys.executable}", "{root / "web.py"}", "{{{{ host }}}}", "{{{{ ports.web }}}}"]\n'
    elif backend == "docker":
        how = 'image = "redis:7-alpine"\ndocker_command = ["redis-server", "--port", "{{ ports.web }}"]\n'
    else:
        how = f'url = "127.0.0.1:{port}"\n'
    return (f"[services.web]\n{how}ports = {{ web = 8080 }}\nprobe = {{ tcp = \"web\" }}\n"
            '[services.web.exports]\nWEB_ADDRESS = "{{ host }}:{{ ports.web }}"\n')


@pytest.mark.parametrize("backend", [pytest.param(name, marks=getattr(pytest.mark, name)) for name in registry.BACKENDS])
def test_every_backend_runs_a_builtin_and_a_user_service_through_one_lifecycle(
        backend: str, project: Project, listener: int) -> None:
    if backend == "docker":
        need(docker_reachable(os.environ), "a Docker engine (../shared/docker/provision.sh)")
    extra = 'url = "postgresql://postgres@127.0.0.1:5432/postgres"\n' if backend == "external" else ""
    project.configure(f"[postgres]\n{extra}[redis]\nenabled = false\n" + _service(backend, project.root, listener))
    with envkit.environment(project.load(backend=backend)) as env:
        pg, web = env.running.postgres, env.running.services["web"]
        assert pg is not None and isinstance(web, ServiceEndpoint)
        with psycopg.connect(pg.libpq(), connect_timeout=5) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == (pg.database,)
        assert env.exports["WEB_ADDRESS"] == f"{web.host}:{web.ports['web']}"
        with socket.create_connection((web.host, web.ports["web"]), timeout=5):
            pass
        assert env.session.services["web"]["kind"] == "service" and env.session.backend == backend
        label, database = env.session.label, pg.database
    assert not (project.root / ".envkit" / "state.json").exists()
    if backend == "external":  # the database envkit made on somebody else's server is gone, nothing else touched
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres") as conn:
            assert conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone() is None
    if backend == "docker":
        import docker

        client = docker.from_env()
        try:
            left = [c.name for c in client.containers.list(all=True, filters={"label": f"envkit.session={label}"})]
        finally:
            client.close()
        assert not left
