"""Memory of the services and of the measuring process, from /proc (stdlib only: every runner imports it).

Services are found by the TCP port they listen on (then the whole tree under
that process), or by a container's processes; their memory is summed as PSS,
so pages that Postgres' processes share are counted once.
"""

from __future__ import annotations

import os
import subprocess


def self_peak_kb() -> int:
    """This process' peak resident set (VmHWM)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def listener(port: int) -> int | None:
    """The pid of the process listening on TCP ``port``."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as fh:
                next(fh)
                for line in fh:
                    parts = line.split()
                    if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                        inodes.add(f"socket:[{parts[9]}]")
        except OSError:
            continue
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    return int(pid)
        except OSError:
            continue
    return None


def tree(root: int) -> list[int]:
    """``root`` and all its descendants."""
    children: dict[int, list[int]] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(pid))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def pss_kb(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as fh:
                for line in fh:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            continue
    return total


def services_kb(ports: list[int]) -> int | None:
    """PSS of the processes serving ``ports`` (their whole trees), or None when one is not found."""
    pids: set[int] = set()
    for port in ports:
        pid = listener(port)
        if pid is None:
            return None
        pids.update(tree(pid))
    return pss_kb(sorted(pids))


def containers_kb(ids: list[str]) -> int | None:
    """PSS of the processes of containers (``docker top``), seen from the host."""
    pids: list[int] = []
    for cid in ids:
        out = subprocess.run(["docker", "top", cid, "-eo", "pid"], capture_output=True, text=True)
        if out.returncode != 0:
            return None
        pids += [int(x) for x in out.stdout.split()[1:] if x.isdigit()]
    return pss_kb(pids)
