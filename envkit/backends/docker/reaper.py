"""envkit's labels on Docker resources, and the reaper that removes labelled resources nobody owns.

Every container, network and volume envkit creates carries:

    envkit.session     the session label (``<name>-<id>``), unique per run
    envkit.project     the project's name
    envkit.owner.pid   the process that brought it up ...
    envkit.owner.host  ... on this host (pids mean nothing elsewhere) ...
    envkit.owner.pidns ... in this pid namespace (containers sharing a hostname do not share pids)
    envkit.state       the state directory, whose state.json says whether it was detached (``envkit up``)

A session is orphaned when its owner is dead on this host and its state
does not say it was handed over. Resources of other hosts, of live owners,
of detached environments, and anything without envkit's labels are never
touched.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path
from typing import Any

from ...config import Config
from ...proc import alive
from ...state import STATE_FILE, Session

log = logging.getLogger("envkit")

SESSION = "envkit.session"
PROJECT = "envkit.project"
OWNER_PID = "envkit.owner.pid"
OWNER_HOST = "envkit.owner.host"
OWNER_PIDNS = "envkit.owner.pidns"
STATE = "envkit.state"


def labels(config: Config, session: Session) -> dict[str, str]:
    return {SESSION: session.label, PROJECT: config.project, OWNER_PID: str(session.owner_pid),
            OWNER_HOST: session.owner_host, OWNER_PIDNS: pid_namespace(), STATE: str(session.path)}


def pid_namespace() -> str:
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return ""


def resources(client: Any, label: str = SESSION, value: str | None = None) -> dict[str, list[Any]]:
    """Containers (stopped too), networks and volumes carrying ``label`` (``=value``)."""
    filters = {"label": f"{label}={value}" if value is not None else label}
    return {
        "containers": client.containers.list(all=True, filters=filters, sparse=True),
        "networks": client.networks.list(filters=filters),
        "volumes": client.volumes.list(filters=filters),
    }


def remove_session(client: Any, session_label: str) -> int:
    """Remove every resource labelled with this session; returns how many. Idempotent."""
    import docker.errors

    found = resources(client, SESSION, session_label)
    count = 0
    for kind in ("containers", "networks", "volumes"):  # containers first: they hold networks and volumes
        for item in found[kind]:
            try:
                if kind == "containers":
                    item.remove(force=True, v=True)
                else:
                    item.remove()
                count += 1
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                log.warning("could not remove %s %s of %s: %s", kind[:-1], item.name, session_label, exc)
    return count


def orphaned(client: Any, host: str | None = None) -> dict[str, dict[str, str]]:
    """Sessions on this engine whose owner died on ``host`` (this one) without handing them over."""
    host = host or socket.gethostname()
    sessions: dict[str, dict[str, str]] = {}
    for items in resources(client, SESSION).values():
        for item in items:
            item_labels = item.attrs.get("Labels") or item.attrs.get("Config", {}).get("Labels") or {}
            sessions.setdefault(item_labels[SESSION], item_labels)
    out = {}
    for label, info in sessions.items():
        if info.get(OWNER_HOST) != host or info.get(OWNER_PIDNS, "") != pid_namespace() or not info.get(OWNER_PID, "").isdigit():
            continue  # another machine's or container's pid: whether it lives cannot be told from here
        if alive(int(info[OWNER_PID])) or _detached(info.get(STATE), label):
            continue
        out[label] = info
    return out


def prune(client: Any) -> list[str]:
    """Remove every orphaned session's resources; returns their session labels."""
    removed = []
    for label, info in orphaned(client).items():
        log.warning("removing Docker resources of %s: its owner (pid %s) is gone", label, info.get(OWNER_PID))
        remove_session(client, label)
        if any(resources(client, SESSION, label).values()):
            log.warning("could not remove every Docker resource of %s; `envkit prune` tries again", label)
            continue
        removed.append(label)
    return removed


def _detached(state_dir: str | None, label: str) -> bool:
    """Whether the state directory still records ``label`` as handed over by ``envkit up``."""
    if not state_dir:
        return False
    try:
        data = json.loads((Path(state_dir) / STATE_FILE).read_text())
    except (OSError, ValueError):
        return False
    return f"{data.get('name')}-{data.get('id')}" == label and bool(data.get("detached"))
