"""`make bench`: envkit against the tools users would pick instead, on this machine, in one run.

    python bench/run.py [--runs N] [--quick] [--only ready,isolation,wholerun,growth,temporal] [--tests N]

With --only, the other figures of an existing results file are kept (a partial re-run).

Writes bench/results/latest.json, the tables in bench/README.md and
bench/results/time_to_ready.png. See bench/README.md for what is measured and how.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import anchor_venv
import figures
import report
from contenders import Bench, docker_available, envkit_docker_available
from harness import BENCH, PROJECT_PYTHON, RUNNERS, loadavg, machine, tool_versions, unprivileged

import envkit
from envkit.backends.native.binaries import find_postgres, find_redis

FIGURES = ("ready", "isolation", "wholerun", "growth", "temporal")


def say(message: str) -> None:
    print(message, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, help="rounds per figure (default 5; 3 with --quick)")
    parser.add_argument("--quick", action="store_true", help="a 2-3 minute run: 3 rounds, fewer contenders and sizes")
    parser.add_argument("--only", default=",".join(FIGURES), help=f"figures to run, of {', '.join(FIGURES)}")
    parser.add_argument("--tests", type=int, help="tests in the isolation figure (default 200; 30 with --quick)")
    parser.add_argument("--no-docker", action="store_true", help="skip every Docker contender")
    parser.add_argument("--no-isolation-sql", action="store_true",
                        help="skip the plain-SQL reference rows of the isolation figure (skipped with --quick)")
    parser.add_argument("--keep-workdir", action="store_true", help="keep the generated projects and caches")
    parser.add_argument("--output", type=Path, default=BENCH / "results" / "latest.json")
    args = parser.parse_args()
    runs = args.runs or (3 if args.quick else 5)
    only = [f.strip() for f in args.only.split(",") if f.strip()]
    unknown = set(only) - set(FIGURES)
    if unknown:
        parser.error(f"unknown figure(s) {', '.join(sorted(unknown))}; use {', '.join(FIGURES)}")

    started = time.monotonic()
    anchor_python = anchor_venv.ensure(say)
    for python in (PROJECT_PYTHON, anchor_python):  # runners run as nobody too, who cannot write __pycache__ here
        subprocess.run([python, "-m", "compileall", "-q", str(RUNNERS)], check=True)
    # envkit's own bytecode, as any user's interpreter has it from the second run on: with PYTHONDONTWRITEBYTECODE
    # set (as on these machines) every `envkit` process compiled its ~45 modules again, 0.2-0.4 s a start
    subprocess.run([PROJECT_PYTHON, "-m", "compileall", "-q", str(Path(envkit.__file__).parent)], check=True)
    pg, redis = find_postgres(None, os.environ), find_redis(None, os.environ)
    docker = (False, "--no-docker was given") if args.no_docker else docker_available()
    envkit_docker = envkit_docker_available()
    user = unprivileged()
    workdir = Path(tempfile.mkdtemp(prefix="envkit-bench-"))
    workdir.chmod(0o755)
    results: dict[str, Any] = {
        "machine": machine(), "tools": {**tool_versions(), "postgres": f"PostgreSQL {pg.version}", "redis": redis.version},
        "anchors": anchor_venv.versions(), "settings": {"runs": runs, "quick": args.quick, "figures": only},
        "load": {"before": loadavg()}, "figures": {},
    }
    say(f"bench: {results['machine']['cpu']}, {results['machine']['cores']} cores; load {results['load']['before']}; "
        f"work dir {workdir}")
    bench = Bench(workdir, user, anchor_python, pg.bindir, str(redis.path))
    try:
        bench.prepare(say, docker=docker[0] and envkit_docker[0] and "ready" in only, servers=set(only) != {"temporal"})
        for name in only:
            t0 = time.monotonic()
            if name == "ready":
                fig = figures.ready(bench, runs, args.quick, docker, envkit_docker, say)
            elif name == "isolation":
                tests = args.tests or (30 if args.quick else 200)
                fig = figures.isolation(bench, runs, tests, 10 if args.quick else 20, say,
                                         direct_sql=not (args.quick or args.no_isolation_sql))
            elif name == "wholerun":
                fig = figures.wholerun(bench, runs, say)
            elif name == "temporal":
                fig = figures.temporal(bench, runs, args.no_docker, envkit_docker, say)
            else:
                fig = figures.growth(bench, runs, args.quick, say)
            fig["seconds"] = round(time.monotonic() - t0, 1)
            fig["load_after"] = loadavg()
            fig["measured"] = {"date": results["machine"]["date"], "runs": runs, "quick": args.quick}
            results["figures"][name] = fig
    finally:
        _cleanup(workdir, keep=args.keep_workdir)
    results["load"]["after"] = loadavg()
    results["settings"]["seconds"] = round(time.monotonic() - started, 1)

    if set(only) != set(FIGURES) and args.output.exists():  # a partial re-run: keep the other figures as they were
        earlier = json.loads(args.output.read_text())
        results["figures"] = {**earlier.get("figures", {}), **results["figures"]}
        results["settings"]["figures"] = sorted(results["figures"])
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=1, default=str) + "\n")
    report.write_readme(BENCH / "README.md", results)
    if "ready" in results["figures"]:
        subprocess.run([anchor_python, BENCH / "chart.py", args.output, args.output.parent / "time_to_ready.png"], check=True)
    say("\n" + report.markdown(results))
    say(f"\nbench: done in {results['settings']['seconds']:.0f} s; wrote {args.output}, bench/README.md and the chart")
    return 0


def _cleanup(workdir: Path, keep: bool) -> None:
    """Leave nothing running: containers the runners recorded, compose projects of the bench, the work dir."""
    for state in workdir.glob("*/.envkit/state.json"):  # an environment a failed runner left up
        subprocess.run([PROJECT_PYTHON.parent / "envkit", "down", "-q"], cwd=state.parent.parent, capture_output=True)
    ids_file = workdir / "containers.txt"
    if ids_file.exists():
        ids = ids_file.read_text().split()
        alive = subprocess.run(["docker", "ps", "-aq", "--no-trunc"], capture_output=True, text=True).stdout.split()
        stale = [i for i in ids if i in alive]
        if stale:
            say(f"bench: removing {len(stale)} container(s) a runner left behind")
            subprocess.run(["docker", "rm", "-f", "-v", *stale], capture_output=True)
    if shutil.which("docker"):
        out = subprocess.run(["docker", "compose", "ls", "-a", "--format", "json"], capture_output=True, text=True)
        try:
            projects = [p["Name"] for p in json.loads(out.stdout or "[]")]
        except ValueError:
            projects = []
        for name in projects:
            if name.startswith("envkit-bench-"):
                subprocess.run(["docker", "compose", "-p", name, "down", "-v"], capture_output=True)
    for pid, cmd in _ours(workdir):  # a server a crashed runner left: its command line names our work dir
        say(f"bench: stopping leftover process {pid} ({cmd[:100]})")
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    for shm in Path("/dev/shm").glob(f"envkit-bench-*{workdir.name}*"):
        shutil.rmtree(shm, ignore_errors=True)
    if not keep:
        shutil.rmtree(workdir, ignore_errors=True)


def _ours(workdir: Path) -> list[tuple[int, str]]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmd = fh.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(workdir) in cmd or any(f"envkit-bench-{what}-{workdir.name}" in cmd for what in ("pgpg", "temporal")):
            found.append((int(pid), cmd))
    return found


if __name__ == "__main__":
    sys.exit(main())
