"""How long a cancelled run takes to be gone: GitHub Actions' cancellation against `envkit run`.

    .venv/bin/python bench/cancel.py [--runs 5] [--backend native|docker|all] [--child ignores-sigint|obeys]

Each round brings a project up with `envkit run -- CHILD` (no terminal, as on a runner), waits until the
child runs, then cancels as GitHub does: SIGINT, 7.5 s later SIGTERM, 2.5 s later SIGKILL of the tree.
Prints, per backend, the median and worst seconds from the SIGINT until envkit exited, and how many rounds
needed the runner's SIGTERM or its SIGKILL (the kill leaves whatever was not torn down yet). The child
either ignores SIGINT (envkit's SIGTERM after 3 s ends it) or exits on it.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHILD = {
    "ignores-sigint": "import signal, time, pathlib, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
                      "pathlib.Path(sys.argv[1]).write_text('x'); time.sleep(120)",
    "obeys": "import time, pathlib, sys; pathlib.Path(sys.argv[1]).write_text('x'); time.sleep(120)",
}


def _tree(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{name}/stat") as fh:
                children.setdefault(int(fh.read().rsplit(")", 1)[1].split()[1]), []).append(int(name))
        except (OSError, IndexError):
            continue
    found, todo = [], [pid]
    while todo:
        found.append(todo.pop())
        todo += children.get(found[-1], [])
    return found


def one(backend: str, child: str, folder: Path) -> tuple[float, str]:
    (folder / "envkit.toml").write_text(f'project = "cancel"\nbackend = "{backend}"\n[postgres]\nport = "auto"\n'
                                        '[redis]\nport = "auto"\n')
    marker = folder / "child-runs"
    marker.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENVKIT_")}
    proc = subprocess.Popen([sys.executable, "-m", "envkit.cli", "run", "--", sys.executable, "-c", CHILD[child],
                             str(marker)], cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    while not marker.exists():
        if proc.poll() is not None:
            raise SystemExit(f"envkit exited {proc.returncode} before the child ran")
        time.sleep(0.05)
    t0 = time.monotonic()
    for sig, wait in ((signal.SIGINT, 7.5), (signal.SIGTERM, 2.5)):
        os.kill(proc.pid, sig)
        try:
            proc.wait(wait)
            return time.monotonic() - t0, signal.Signals(sig).name
        except subprocess.TimeoutExpired:
            continue
    for pid in _tree(proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    subprocess.run([sys.executable, "-m", "envkit.cli", "down", "-q"], cwd=folder, env=env, check=False)
    return time.monotonic() - t0, "SIGKILL"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--backend", default="all", choices=["native", "docker", "all"])
    parser.add_argument("--child", default="ignores-sigint", choices=sorted(CHILD))
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    for backend in (["native", "docker"] if args.backend == "all" else [args.backend]):
        with tempfile.TemporaryDirectory() as tmp:
            results = [one(backend, args.child, Path(tmp)) for _ in range(args.runs)]
        seconds = [s for s, _ in results]
        steps = [step for _, step in results]
        print(f"{backend:7} child {args.child}: gone after median {statistics.median(seconds):.2f} s, worst "
              f"{max(seconds):.2f} s; needed SIGTERM {steps.count('SIGTERM')}, SIGKILL {steps.count('SIGKILL')} "
              f"of {len(results)}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
