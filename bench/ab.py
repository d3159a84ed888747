"""Compare two envkit source trees on the warm path, pair by pair: is a speed change worth it?

    python bench/ab.py BEFORE_DIR AFTER_DIR [--runs 15] [--users 100] [--cold]

Each DIR holds an ``envkit`` package (e.g. a copy of the tree before a change);
each gets its own warm cache, and the two are run alternately (A B A B ...) on
a copy of examples/demo, the ratio after/before taken inside each pair.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import projects
from contenders import ENVKIT_UP
from harness import PROJECT_PYTHON, Contender, clean_env, interleave, pair_ratios, run_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--cold", action="store_true", help="compare with an empty cache each time instead")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="envkit-bench-ab-"))
    try:
        contenders = []
        for name, tree in (("before", args.before), ("after", args.after)):
            # each tree's bytecode first, as run.py does for envkit: with PYTHONDONTWRITEBYTECODE set (as on these
            # machines) every sample compiled the modules it imports inside the clock, more for the tree with more
            subprocess.run([PROJECT_PYTHON, "-m", "compileall", "-q", str(tree / "envkit")], check=True)
            cache = work / f"cache-{name}"
            root = projects.demo(work / name, args.users, cache)
            env = clean_env(PYTHONPATH=str(tree.resolve()))
            argv = [PROJECT_PYTHON, ENVKIT_UP, root, "--expect-users", str(args.users)]
            run_json([*argv, "--cache-dir", cache], env=env, cwd=root)  # fill the cache

            def run(_: int, argv: list = argv, env: dict = env, cache: Path = cache) -> dict:  # type: ignore[type-arg]
                if not args.cold:
                    return run_json([*argv, "--cache-dir", cache], env=env, cwd=argv[2])
                shutil.rmtree(cache, ignore_errors=True)
                return run_json([*argv, "--cache-dir", cache], env=env, cwd=argv[2])

            contenders.append(Contender(name, str(tree), run))
        series = interleave(contenders, args.runs, print)
        for metric in ("ready", "teardown"):
            r = pair_ratios(series["after"], series["before"], metric)
            print(f"{metric:<9} before {series['before'].median(metric):.4f} s  after {series['after'].median(metric):.4f} s  "
                  f"after/before {r['median']:.3f} (pairs: {statistics.quantiles(r['pairs'], n=4) if len(r['pairs']) > 3 else r['pairs']})")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
