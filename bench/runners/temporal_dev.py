"""Temporal's dev server, timed in-process: started by hand as a team's conftest does, or through envkit.

    python temporal_dev.py hand --binary PATH --port N --ui-port N --dir DIR [--stop term|kill]
    python temporal_dev.py envkit ROOT [--backend native|docker]

``hand``: ``temporal server start-dev`` with the recipe's flags (loopback, the two ports, the SQLite file in
DIR), a TCP poll every 10 ms until the gRPC port accepts, then ``terminate()`` (or ``kill()``) and ``wait()``.
``envkit``: ``load_config()`` + ``up()`` of a project whose only service is ``recipe = "temporal"``, then
``down()``. Either way the clock stops when the gRPC port has answered an HTTP/2 connection preface with
its SETTINGS frame (:func:`answers`, the same check for every contender): proof that Temporal's own
server answers, not a port proxy that accepts for a container that is not listening yet.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

POLL = 0.01  # the hand-written poll's pause (envkit's own polls back off from 3 ms towards 50 ms for services)
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # + an empty SETTINGS frame


def answers(host: str, port: int, timeout: float = 60.0) -> float:
    """Until the gRPC server answers the HTTP/2 preface with a SETTINGS frame; returns perf_counter() then."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=5) as sock:
                sock.sendall(PREFACE)
                head = b""
                while len(head) < 9:
                    chunk = sock.recv(9 - len(head))
                    if not chunk:
                        break
                    head += chunk
            if len(head) == 9 and head[3] == 0x04:  # frame type 4: SETTINGS
                return time.perf_counter()
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"temporal on {host}:{port} never answered the HTTP/2 preface")
        time.sleep(0.002)


def hand(args: argparse.Namespace) -> dict[str, object]:
    os.makedirs(args.dir, exist_ok=True)
    argv = [args.binary, "server", "start-dev", "--ip", "127.0.0.1", "--port", str(args.port),
            "--ui-port", str(args.ui_port), "--db-filename", os.path.join(args.dir, "temporal.db")]
    log = open(os.path.join(args.dir, "temporal.log"), "wb")  # closed after the stop
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    polls = 0
    while True:  # the conftest's loop: connect until the port accepts
        polls += 1
        if proc.poll() is not None:
            raise SystemExit(f"temporal exited with {proc.returncode} before its port opened")
        try:
            socket.create_connection(("127.0.0.1", args.port), timeout=1).close()
            break
        except OSError:
            time.sleep(POLL)
    accepted = time.perf_counter() - t0
    ready = answers("127.0.0.1", args.port) - t0
    t1 = time.perf_counter()
    if args.stop == "kill":
        os.killpg(proc.pid, signal.SIGKILL)
    else:
        proc.terminate()
    proc.wait()
    log.close()
    shutil.rmtree(args.dir, ignore_errors=True)
    teardown = time.perf_counter() - t1
    return {"ready": ready, "accepted": accepted, "polls": polls, "teardown": teardown, "whole": ready + teardown,
            "exit_code": proc.returncode, "ports": [args.port, args.ui_port]}


def through_envkit(args: argparse.Namespace) -> dict[str, object]:
    from envkit import load_config, up  # the API imported before the clock, as for the other envkit rows

    t0 = time.perf_counter()
    config = load_config(args.root, overrides={"backend": args.backend})
    env = up(config)
    host, _, port = env.exports["TEMPORAL_ADDRESS"].rpartition(":")
    ready = answers(host, int(port)) - t0
    ui_port = int(env.exports["TEMPORAL_UI_URL"].rsplit(":", 1)[1].split("/")[0])
    t1 = time.perf_counter()
    env.down()
    teardown = time.perf_counter() - t1
    return {"ready": ready, "teardown": teardown, "whole": ready + teardown, "ports": [int(port), ui_port],
            "stages": {k: round(v, 4) for k, v in env.timings.items()}}


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="mode", required=True)
    h = sub.add_parser("hand")
    h.add_argument("--binary", required=True)
    h.add_argument("--port", type=int, required=True)
    h.add_argument("--ui-port", type=int, required=True)
    h.add_argument("--dir", required=True)
    h.add_argument("--stop", choices=("term", "kill"), default="term")
    e = sub.add_parser("envkit")
    e.add_argument("root")
    e.add_argument("--backend", default="native")
    args = parser.parse_args()
    result = hand(args) if args.mode == "hand" else through_envkit(args)
    print("BENCH-RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    sys.exit(main())
