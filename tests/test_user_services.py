"""User-defined services on the native and external backends, for real: a command envkit runs, probes, exports,
ordering, logs, teardown after SIGKILL, and a URL someone else serves."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import textwrap
import threading
import urllib.request
from pathlib import Path

import pytest
from conftest import Project, envkit_processes, envkit_run_dirs, need_native_servers, wait_until

import envkit
import envkit.backends
from envkit.proc import alive

#: A tiny HTTP server: GET / answers 200 after an optional delay, and /env tells what it was started with.
SERVER = textwrap.dedent('''\
    import http.server, json, os, sys, time
    port, data = int(sys.argv[1]), sys.argv[2]
    time.sleep(float(os.environ.get("DELAY", "0")))
    open(os.path.join(data, "started"), "w").write(os.environ.get("TOKEN", ""))
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"token": os.environ.get("TOKEN"), "data": data, "home": os.environ["HOME"]}).encode()
            self.send_response(200); self.end_headers(); self.wfile.write(body)
        def log_message(self, *a): pass
    print("serving on", port, flush=True)
    http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
''')


@pytest.fixture(autouse=True, scope="module")
def _binaries() -> None:
    need_native_servers()


def _configure(project: Project, extra: str = "") -> None:
    project.write("server.py", SERVER)
    project.configure(textwrap.dedent(f'''\
        [services.web]
        command = ["python", "{project.root / 'server.py'}", "{{{{ ports.http }}}}", "{{{{ data_dir }}}}"]
        ports = {{ http = 8000 }}
        probe = {{ http = "/" }}
        environment = {{ TOKEN = "t-{{{{ port }}}}", DELAY = "0.3" }}
        depends_on = ["postgres"]
        [services.web.exports]
        WEB_URL = "http://{{{{ host }}}}:{{{{ ports.http }}}}"
        [services.echo]
        command = ["python", "-c", "import time; print('echo ready', flush=True); time.sleep(600)"]
        probe = {{ log = "echo ready" }}
        [env]
        WEB_PORT = "{{{{ web.port }}}}"
        {extra}'''))


@pytest.mark.native
def test_a_user_service_runs_natively_with_its_ports_probe_exports_logs_and_order(project: Project) -> None:
    _configure(project)
    with envkit.environment(project.load(backend="native")) as env:
        web = env.running.services["web"]
        assert env.exports["WEB_URL"] == f"http://127.0.0.1:{web.port}" and env.exports["WEB_PORT"] == str(web.port)
        assert web.port not in (env.running.postgres.port, env.running.redis.port)  # type: ignore[union-attr]
        answer = json.loads(urllib.request.urlopen(env.exports["WEB_URL"], timeout=5).read())
        assert answer["token"] == f"t-{web.port}"  # environment rendered with the port envkit chose
        data = Path(answer["data"])
        assert data.is_dir() and answer["home"] == str(data) and (data / "started").exists()
        assert data.stat().st_mode & 0o777 == 0o700
        record = env.session.services["web"]
        assert record["kind"] == "service" and record["ports"] == {"http": web.port}  # a typed record, no re-parse
        logs = envkit.backends.by_name("native").logs(env.session)
        assert "serving on" in logs["web"] and "echo ready" in logs["echo"]
        pids = {name: info["pid"] for name, info in env.session.resources["processes"].items()}
        assert {"postgres", "redis", "web", "echo"} <= set(pids)
    assert not any(alive(pid) for pid in pids.values())
    assert not data.exists()


@pytest.mark.native
def test_the_cli_lists_and_logs_user_services_and_down_stops_them(project: Project) -> None:
    _configure(project)
    project.cli("up", "--backend", "native", check=True)
    try:
        status = json.loads(project.cli("status", "--json", check=True).stdout)
        assert "web" in json.dumps(status)
        assert "serving on" in project.cli("logs", "web", check=True).stdout
        env = dict(line.split("=", 1) for line in project.cli("env", "--format", "dotenv", check=True).stdout
                   .replace("'", "").splitlines() if "=" in line)
        assert env["WEB_URL"].startswith("http://127.0.0.1:")
        doctor = json.loads(project.cli("doctor", "--backend", "native", "--json").stdout)
        checks = {c["name"]: c for c in doctor["checks"]}
        assert checks["service web"]["status"] == "ok" and "python" in checks["service web"]["detail"]
    finally:
        project.cli("down", check=True)
    assert not envkit_processes() & {p for p in envkit_processes() if "server.py" in p[1]}


@pytest.mark.native
def test_a_sigkilled_envkit_leaves_no_user_service(project: Project) -> None:
    procs, dirs = envkit_processes(), envkit_run_dirs()
    _configure(project)
    proc = project.popen("run", "--backend", "native", "--", sys.executable, "-c", "import time; time.sleep(120)")
    try:
        assert wait_until(lambda: any("server.py" in c for _, c in envkit_processes() - procs), timeout=60)
        servers = [pid for pid, c in envkit_processes() - procs if "server.py" in c or "echo ready" in c]
        assert len(servers) == 2
        assert wait_until(lambda: (project.root / ".envkit" / "state.json").exists() and
                          "web" in json.loads((project.root / ".envkit" / "state.json").read_text())["services"], 60)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        assert wait_until(lambda: not any(alive(p) for p in servers), timeout=30), "the watchdog left a user service"
        assert wait_until(lambda: envkit_processes() <= procs and envkit_run_dirs() <= dirs, timeout=20)
    finally:
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()


@pytest.mark.native
def test_a_service_that_exits_is_reported_with_its_log(project: Project) -> None:
    project.configure('[services.bad]\ncommand = ["python", "-c", "import sys; print(\'no luck\'); sys.exit(4)"]\n'
                      'ports = [9000]\n')
    result = project.cli("up", "--backend", "native")
    assert result.returncode == 3, result.stderr
    assert "bad exited with code 4" in result.stderr and "no luck" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.native
def test_a_missing_binary_is_refused_naming_where_envkit_looked(project: Project) -> None:
    project.configure('[services.tool]\ncommand = ["envkit-no-such-server"]\nwheel = "envkit-no-such-wheel"\n')
    result = project.cli("up", "--backend", "native")
    assert result.returncode == 3
    assert "could not find 'envkit-no-such-server'" in result.stderr and "pip install envkit-no-such-wheel" in result.stderr


@pytest.mark.external
def test_the_external_backend_takes_a_url_for_a_user_service(project: Project) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                conn.close()
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        project.configure(f'[postgres]\nenabled = false\n[redis]\nenabled = false\n'
                          f'[services.queue]\nurl = "amqp://127.0.0.1:{port}"\nports = {{ amqp = 5672 }}\n'
                          '[services.queue.exports]\nQUEUE = "{{ host }}:{{ ports.amqp }}"\n')
        with envkit.environment(project.load(backend="external")) as env:
            assert env.exports["QUEUE"] == f"127.0.0.1:{port}"
            assert env.running.services["queue"].owned is False
        project.configure('[postgres]\nenabled = false\n[redis]\nenabled = false\n[services.queue]\nimage = "x"\n')
        result = project.cli("up", "--backend", "external")
        assert result.returncode == 3 and "has no url, which the external backend needs" in result.stderr
    finally:
        stop.set()
        thread.join()
        server.close()


@pytest.mark.native
def test_a_service_secret_is_the_same_in_its_command_environment_and_exports_and_never_printed(project: Project) -> None:
    project.write("server.py", SERVER)
    project.configure(textwrap.dedent(f'''\
        [postgres]
        enabled = false
        [redis]
        enabled = false
        [services.web]
        command = ["python", "{project.root / 'server.py'}", "{{{{ ports.http }}}}", "{{{{ data_dir }}}}"]
        ports = {{ http = 8000 }}
        probe = {{ http = "/" }}
        environment = {{ TOKEN = "{{{{ secret }}}}" }}
        [services.web.exports]
        WEB_PASSWORD = "{{{{ secret }}}}"
        WEB_URL = "http://{{{{ host }}}}:{{{{ ports.http }}}}"
        '''))
    seen = []
    for _ in range(2):
        with envkit.environment(project.load(backend="native")) as env:
            token = json.loads(urllib.request.urlopen(env.exports["WEB_URL"], timeout=5).read())["token"]
            assert token == env.exports["WEB_PASSWORD"] and len(token) == 24 and token.isalnum()
            seen.append(token)
    assert seen[0] != seen[1]  # new each run
    project.cli("up", "--backend", "native", check=True)
    try:
        shown = project.cli("status", "--json", check=True).stdout + project.cli("status", check=True).stdout
        secret = json.loads((project.root / ".envkit" / "state.json").read_text())["exports"]["WEB_PASSWORD"]
        assert secret not in shown
    finally:
        project.cli("down", check=True)
