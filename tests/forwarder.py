"""A byte forwarder that stands between envkit and a server, so a test can make that server unreachable.

Stopping the forwarder closes its listening socket (and, for a unix socket,
removes the file) and every connection through it: to envkit, the engine or
server is gone, while the real one keeps running for everybody else on the
machine. Starting it again on the same address brings it back.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path


class Forwarder:
    """Listen on ``listen`` (a unix socket path, or a TCP port on 127.0.0.1) and forward to ``target``."""

    def __init__(self, listen: Path | int, target: Path | tuple[str, int]) -> None:
        self.listen, self.target = listen, target
        self._server: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"unix://{self.listen}" if isinstance(self.listen, Path) else f"127.0.0.1:{self.listen}"

    def start(self) -> Forwarder:
        if isinstance(self.listen, Path):
            self.listen.unlink(missing_ok=True)
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            server.bind(str(self.listen))
        else:
            server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server.bind(("127.0.0.1", self.listen))
        server.listen(64)
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            try:
                server.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
            except OSError:
                pass
            server.close()
        if isinstance(self.listen, Path):
            self.listen.unlink(missing_ok=True)
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)  # the pipe threads close them
            except OSError:
                pass

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return  # stopped
            try:
                if isinstance(self.target, Path):
                    upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    upstream.connect(str(self.target))
                else:
                    upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns = [c for c in self._conns if c.fileno() != -1]
            with self._lock:
                self._conns += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pipe, args=(src, dst), daemon=True).start()


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (src, dst):  # both directions end together; the other thread's recv() wakes up
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


def unix_path(folder: Path) -> Path:
    """A socket path short enough for AF_UNIX (108 bytes), in ``folder`` if it fits."""
    path = folder / "engine.sock"
    return path if len(os.fsencode(path)) < 100 else Path(f"/tmp/envkit-fwd-{os.getpid()}-{id(folder)}.sock")
