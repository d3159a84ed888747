"""The physical floor, measured by the harness itself: the least any tool could do on this machine.

A slimmed pristine cluster (initdb once, 1 MB WAL segments, trust auth) is
copied to tmpfs, ``postgres`` is started directly (not through ``pg_ctl``,
which polls only every 100 ms) while ``redis-server`` starts in parallel, and
both are polled every 2 ms until Postgres answers ``SELECT 1`` over TCP and
Redis answers PING with PONG.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from harness import RUNNERS, User

sys.path.insert(0, str(RUNNERS))
import memory
import probe
import psycopg  # noqa: F401 - imported before the clock, as for every contender


class Floor:
    def __init__(self, workdir: Path, bindir: Path, redis_server: str, user: User | None) -> None:
        self.bindir, self.redis_server, self.user = bindir, redis_server, user
        self.pristine = workdir / "floor-cluster"
        self.shm = Path("/dev/shm") if Path("/dev/shm").is_dir() else workdir
        self._n = 0
        if not (self.pristine / "PG_VERSION").exists():
            self.pristine.mkdir(parents=True, exist_ok=True)
            if user:
                user.chown(self.pristine)
            subprocess.run([str(bindir / "initdb"), "-D", str(self.pristine), "-U", "postgres", "-E", "UTF8", "--locale=C",
                            "--no-sync", "--auth=trust", "--wal-segsize=1", "--no-instructions"],
                           check=True, capture_output=True, **self._as_user())

    def _as_user(self) -> dict[str, Any]:
        return self.user.popen_kwargs() if self.user else {}

    def run(self, pg_port: int, redis_port: int) -> dict[str, Any]:
        self._n += 1
        run_dir = self.shm / f"envkit-bench-floor-{self._n}"
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(mode=0o700)
        if self.user:
            self.user.chown(run_dir)
        procs: list[subprocess.Popen[bytes]] = []
        log = open(run_dir.parent / f"{run_dir.name}.log", "wb")
        try:
            t0 = time.perf_counter()
            procs.append(subprocess.Popen(
                [self.redis_server, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", str(run_dir)], stdout=log, stderr=log, start_new_session=True, **self._as_user()))
            subprocess.run(["cp", "-a", str(self.pristine), str(run_dir / "pgdata")], check=True)
            procs.append(subprocess.Popen(
                [str(self.bindir / "postgres"), "-D", str(run_dir / "pgdata"), "-c", f"port={pg_port}",
                 "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={run_dir}", "-c", "fsync=off",
                 "-c", "synchronous_commit=off", "-c", "full_page_writes=off"],
                stdout=log, stderr=log, start_new_session=True, **self._as_user()))
            probe.wait(lambda: probe.postgres(f"host=127.0.0.1 port={pg_port} user=postgres dbname=postgres"), timeout=30)
            probe.wait(lambda: probe.redis("127.0.0.1", redis_port), timeout=30)
            ready = time.perf_counter() - t0
            services = memory.services_kb([pg_port, redis_port])
        finally:
            t1 = time.perf_counter()
            for proc, sig in zip(procs, (signal.SIGTERM, signal.SIGINT), strict=False):
                proc.send_signal(sig)
            for proc in procs:
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            shutil.rmtree(run_dir, ignore_errors=True)
            teardown = time.perf_counter() - t1
            log.close()
            Path(log.name).unlink(missing_ok=True)
        return {"ready": ready, "teardown": teardown, "services_kb": services}
