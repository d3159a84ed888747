"""Markdown tables from results/latest.json, written between markers in bench/README.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

START = "<!-- bench:results:start -->"
END = "<!-- bench:results:end -->"

READY_ROWS = [
    ("physical floor (harness: cached cluster copied to tmpfs, `postgres` direct)", "floor", None),
    ("**envkit native, warm cache**", "envkit-warm-bare", "envkit-warm-seeded"),
    ("envkit native, warm cache, no spare (`cache_spare = false`: the snapshot copied while you wait)", None,
     "envkit-nospare-seeded"),
    ("envkit native, `envkit up` CLI (process start to ready), warm", None, "envkit-cli-seeded"),
    ("envkit native, snapshot miss (migrations changed; cluster warm)", None, "envkit-miss-seeded"),
    ("envkit native, empty cache (first run ever)", "envkit-cold-bare", "envkit-cold-seeded"),
    ("envkit native, `--no-cache`", None, "envkit-nocache-seeded"),
    ("envkit docker (seeded: snapshot warm)", "envkit-docker-bare", "envkit-docker-seeded"),
    ("envkit docker, snapshot miss (first run on this image and project)", None, "envkit-docker-miss-seeded"),
    ("pytest-postgresql + pytest-redis `*_proc`, tuned (tmpfs, fsync off)", "pgpg-tuned-bare", "pgpg-tuned-seeded"),
    ("pytest-postgresql + pytest-redis `*_proc`, as shipped", "pgpg-shipped-bare", "pgpg-shipped-seeded"),
    ("testcontainers-python (Ryuk off)", "testcontainers-bare", "testcontainers-seeded"),
    ("`docker compose up --wait`, hand-written file", "compose-bare", "compose-seeded"),
]


def _s(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ms(value: float | None) -> str:
    return "-" if value is None else (f"{value * 1000:.2f}" if value < 0.01 else f"{value * 1000:.1f}")


def _mb(kb: float | None) -> str:
    return "-" if kb is None else f"{kb / 1024:.0f}"


def _ratio(fig: dict[str, Any], a: str, b: str) -> float | None:
    for r in fig.get("ratios", []):
        if r["a"] == a and r["b"] == b and r.get("kind", "ratio") == "ratio":
            return r["median"]  # type: ignore[no-any-return]
    return None


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _med(fig: dict[str, Any], key: str | None, metric: str = "ready") -> float | None:
    if not key or key not in fig["series"]:
        return None
    return fig["series"][key]["median"].get(metric)  # type: ignore[no-any-return]


def ready_table(fig: dict[str, Any]) -> str:
    users = fig.get("users", 100)
    out = [f"| contender | bare: ready (s) | x envkit | migrated + {users} users: ready (s) | x envkit | teardown (s) | "
           "servers PSS (MB) | driver peak RSS (MB) |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for label, bare, seeded in READY_ROWS:
        if not any(k in fig["series"] for k in (bare, seeded) if k):
            continue
        key = seeded if seeded in fig["series"] else bare
        out.append(
            f"| {label} | {_s(_med(fig, bare))} | {_x(_ratio(fig, bare, 'envkit-warm-bare')) if bare != 'envkit-warm-bare' else '1'} "
            f"| {_s(_med(fig, seeded))} | "
            f"{_x(_ratio(fig, seeded, 'envkit-warm-seeded')) if seeded and seeded != 'envkit-warm-seeded' else ('1' if seeded else '-')} "
            f"| {_s(_med(fig, key, 'teardown'))} | {_mb(_med(fig, key, 'services_kb'))} | "
            f"{_mb(_med(fig, key, 'host_peak_kb'))} |")
    return "\n".join(out)


def targets(results: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    figs = results["figures"]
    rows: list[tuple[str, str, bool | None]] = []

    def add(name: str, value: float | None, ok: Any, fmt: str = "{:.3f} s") -> None:
        rows.append((name, "not measured" if value is None else fmt.format(value), None if value is None else bool(ok(value))))

    if "ready" in figs:
        f = figs["ready"]
        add("native, warm, migrated + seeded: under 0.25 s", _med(f, "envkit-warm-seeded"), lambda v: v < 0.25)
        add("... at least 3x faster than pytest-postgresql + pytest-redis bare, tuned", _ratio(f, "pgpg-tuned-bare", "envkit-warm-seeded"),
            lambda v: v >= 3, "{:.2f}x")
        add("native, cold (empty cache), migrated + seeded: under 1.5 s", _med(f, "envkit-cold-seeded"), lambda v: v < 1.5)
        add("docker, migrated + seeded: at most 0.7x testcontainers bare", _ratio(f, "envkit-docker-seeded", "testcontainers-bare"),
            lambda v: v <= 0.7, "{:.2f}x")
        add("docker, migrated + seeded: at most 0.5x `docker compose up --wait` bare (issue 3)",
            _ratio(f, "envkit-docker-seeded", "compose-bare"), lambda v: v <= 0.5, "{:.2f}x")
        add("teardown native under 0.3 s", _med(f, "envkit-warm-seeded", "teardown"), lambda v: v < 0.3)
        add("teardown docker under 1.5 s", _med(f, "envkit-docker-seeded", "teardown"), lambda v: v < 1.5)
    if "isolation" in figs:
        f = figs["isolation"]
        add("rollback isolation under 1 ms per test (mechanism alone)", _alone(f, "envkit-rollback"), lambda v: v < 0.001,
            "{:.5f} s")
        add("template clone under 40 ms per test (mechanism alone)", _alone(f, "envkit-clone"), lambda v: v < 0.040,
            "{:.4f} s")
        if "envkit-clone-100ms" in f["series"]:
            add("clone isolation from the pool under 5 ms per test, tests with a 100 ms body (mechanism alone; issue 10)",
                _alone(f, "envkit-clone-100ms"), lambda v: v < 0.005, "{:.4f} s")
    if "wholerun" in figs:
        diff = figs["wholerun"]["ratios"][0]["median"]  # envkit test - bare pytest, pair by pair
        add("`envkit test` overhead over bare pytest (native, warm) under 0.5 s (issues 5 and 10)", diff, lambda v: v < 0.5)
    if "growth" in figs:
        f = figs["growth"]
        revs, users = f["revisions"], f["users"]
        add(f"warm: time to ready flat (within 20%) from {revs[0]} to {revs[-1]} revisions",
            _ratio(f, f"r{revs[-1]}-u100-warm", "r10-u100-warm"), lambda v: v <= 1.2, "{:.2f}x")
        add(f"warm: flat (within 20%) from {users[0]} to {users[-1]} users",
            _ratio(f, f"r10-u{users[-1]}-warm", "r10-u100-warm"), lambda v: v <= 1.2, "{:.2f}x")
    return rows


def targets_table(results: dict[str, Any]) -> str:
    out = ["| target (issue 5 unless named) | measured | met |", "|---|---:|:---:|"]
    for name, value, ok in targets(results):
        out.append(f"| {name} | {value} | {'-' if ok is None else ('yes' if ok else '**no**')} |")
    return "\n".join(out)


def _suffix(key: str) -> str:
    """``-100ms`` for the rows whose tests have a body of their own (each compared with its own baseline), else ''."""
    return key[key.rindex("-"):] if key.endswith("ms") and key[key.rindex("-") + 1:-2].isdigit() else ""


def _alone(fig: dict[str, Any], key: str) -> float | None:
    """A mechanism's per-test cost minus the no-isolation baseline (of the same test body), pair by pair."""
    for r in fig.get("ratios", []):
        if r["a"] == key and r["b"] == "baseline" + _suffix(key) and r.get("kind") == "difference":
            return r["median"]  # type: ignore[no-any-return]
    return None


def isolation_table(fig: dict[str, Any]) -> str:
    out = ["| mechanism | per test (ms) | mechanism alone (ms) | pytest-postgresql ÷ this |", "|---|---:|---:|---:|"]
    for key, s in fig["series"].items():
        base, pgpg = "baseline" + _suffix(key), "pgpg-fresh-db" + _suffix(key)
        ratio = "-" if key == base else ("1" if key == pgpg else _x(_ratio(fig, pgpg, key)))
        alone = "-" if key == base else _ms(_alone(fig, key))
        out.append(f"| {s['label']} | {_ms(s['median'].get('per_test'))} | {alone} | {ratio} |")
    return "\n".join(out)


def wholerun_table(fig: dict[str, Any]) -> str:
    s = fig["series"]
    diff = fig["ratios"][0]["median"]
    return "\n".join([
        "| run | wall (s) |", "|---|---:|",
        f"| {s['envkit-test']['label']} | {_s(s['envkit-test']['median'].get('whole'))} |",
        f"| {s['bare-pytest']['label']} | {_s(s['bare-pytest']['median'].get('whole'))} |",
        f"| **envkit's overhead** (pair by pair) | **{_s(diff)}** |",
        f"| envkit test's own peak RSS (MB) | {_mb(s['envkit-test']['median'].get('peak_kb'))} |",
    ])


def growth_table(fig: dict[str, Any]) -> str:
    out = ["| project | snapshot warm (s) | warm, no spare (s) | no snapshot (s) | no snapshot ÷ warm |",
           "|---|---:|---:|---:|---:|"]
    shapes = sorted({tuple(int(p[1:]) for p in k.split("-")[:2]) for k in fig["series"]})
    for r, u in shapes:
        warm, nospare, miss = f"r{r}-u{u}-warm", f"r{r}-u{u}-nospare", f"r{r}-u{u}-miss"
        out.append(f"| {r} revisions, {u:,} users | {_s(_med(fig, warm))} | "
                   f"{_s(_med(fig, nospare)) if nospare in fig['series'] else '-'} | {_s(_med(fig, miss))} | "
                   f"{_x(_ratio(fig, miss, warm))} |")
    revs = fig["revisions"]
    flat = _ratio(fig, f"r{revs[-1]}-u100-nospare", "r10-u100-nospare")
    if flat is not None:
        out.append(f"\nWithout spares, {revs[-1]} revisions take {flat:.2f}x the time of 10 (pair by pair); with them, "
                   f"{_ratio(fig, f'r{revs[-1]}-u100-warm', 'r10-u100-warm') or 0:.2f}x.")
    return "\n".join(out)


def _metric_ratio(fig: dict[str, Any], a: str, b: str, metric: str) -> float | None:
    for r in fig.get("ratios", []):
        if r["a"] == a and r["b"] == b and r.get("metric") == metric and r.get("kind", "ratio") == "ratio":
            return r["median"]  # type: ignore[no-any-return]
    return None


def temporal_table(fig: dict[str, Any]) -> str:
    out = ["| contender | ready (s) | ÷ by hand | teardown (s) | ÷ by hand | up to gone (s) | ÷ by hand |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    for key, s in fig["series"].items():
        cells = [f"**{s['label']}**" if key == "hand" else s["label"]]
        for metric in ("ready", "teardown", "whole"):
            value = s["median"].get(metric)
            ratio = "1" if key == "hand" and value is not None else _x(_metric_ratio(fig, key, "hand", metric))
            cells += [_s(value), ratio if value is not None else "-"]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def features_table(results: dict[str, Any]) -> str:
    """Each speed feature's measured effect: the same project with and without it, in the same rounds."""
    figs = results["figures"]
    out = ["| feature | without (s) | with (s) | speed-up (pair by pair) |", "|---|---:|---:|---:|"]
    if "ready" in figs:
        f = figs["ready"]
        for name, without, with_ in (
            ("migrated-and-seeded snapshot (demo app, 100 users)", "envkit-miss-seeded", "envkit-warm-seeded"),
            ("snapshot + cluster cache vs an empty cache", "envkit-cold-seeded", "envkit-warm-seeded"),
            ("pristine-cluster cache (bare servers)", "envkit-cold-bare", "envkit-warm-bare"),
            ("spare renamed into place vs copied from the cache (demo, warm)", "envkit-nospare-seeded", "envkit-warm-seeded"),
            ("docker: snapshot streamed into the container vs initdb + migrate + seed", "envkit-docker-miss-seeded",
             "envkit-docker-seeded"),
        ):
            if without in f["series"] and with_ in f["series"]:
                out.append(f"| {name} | {_s(_med(f, without))} | {_s(_med(f, with_))} | {_x(_ratio(f, without, with_))} |")
    if "growth" in figs:
        f = figs["growth"]
        for r, u in ((f["revisions"][-1], 100), (10, f["users"][-1])):
            warm, miss = f"r{r}-u{u}-warm", f"r{r}-u{u}-miss"
            if warm in f["series"]:
                out.append(f"| snapshot, {r} revisions and {u:,} users | {_s(_med(f, miss))} | {_s(_med(f, warm))} | "
                           f"{_x(_ratio(f, miss, warm))} |")
    return "\n".join(out)


def markdown(results: dict[str, Any]) -> str:
    m, figs = results["machine"], results["figures"]
    load = results.get("load", {})
    parts = [
        f"Measured {m['date']} on {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, Linux {m['kernel']}, "
        f"Python {m['python']}; {results['tools'].get('postgres', '?')}, Redis {results['tools'].get('redis', '?')}, "
        f"Docker {results['tools'].get('docker', '?')}, Compose {results['tools'].get('compose', '?')}. "
        f"Medians of {results['settings']['runs']} interleaved rounds{' (--quick)' if results['settings']['quick'] else ''}; "
        f"ratios are computed inside each round, then their median is shown. Load average before / after: "
        f"{load.get('before', '?')} / {load.get('after', '?')} (other engineers' test suites were running on the same "
        "2 cores).",
        "", "**Targets**", "", targets_table(results),
        "", "**Speed features, measured**", "", features_table(results),
    ]
    if "ready" in figs:
        parts += ["", "**Time to ready, teardown and memory** (x envkit: the contender's time ÷ envkit native warm, "
                  "same round)", "", ready_table(figs["ready"])]
        parts += [f"\n- {n}" for n in figs["ready"]["notes"]]
    if "isolation" in figs:
        parts += ["", f"**Per-test isolation** ({figs['isolation']['tests']} small tests)", "", isolation_table(figs["isolation"])]
        parts += [f"\n- {n}" for n in figs["isolation"]["notes"]]
    if "wholerun" in figs:
        parts += ["", "**Whole run: the example app**", "", wholerun_table(figs["wholerun"])]
    if "growth" in figs:
        parts += ["", "**Growth: time to ready as migrations and users grow** (envkit native)", "", growth_table(figs["growth"])]
    if "temporal" in figs:
        parts += ["", "**Temporal's dev server: the recipe through envkit vs started by hand** (÷ by hand: this row's "
                  "time ÷ the hand-started server's in the same round, median of the rounds)", "",
                  temporal_table(figs["temporal"])]
        parts += [f"\n- {n}" for n in figs["temporal"]["notes"]]
    dates = {fig.get("measured", {}).get("date") for fig in figs.values()} - {None}
    if len(dates) > 1:
        parts += ["", "Figures re-run separately: " + ", ".join(
            f"{name} on {fig['measured']['date']}" for name, fig in figs.items() if fig.get("measured")) + "."]
    failures = [f"{fig_name}/{key}: {len(s['errors'])} failed run(s): {s['errors'][0].splitlines()[0]}"
                for fig_name, fig in figs.items() for key, s in fig["series"].items() if s["errors"]]
    if failures:
        parts += ["", "**Failed samples** (left out of the medians)", ""] + [f"- {f}" for f in failures]
    parts += ["", "![time to ready](results/time_to_ready.png)"]
    return "\n".join(parts)


def write_readme(readme: Path, results: dict[str, Any]) -> None:
    text = readme.read_text() if readme.exists() else f"# Benchmarks\n\n{START}\n{END}\n"
    if START not in text:
        text += f"\n{START}\n{END}\n"
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    readme.write_text(f"{head}{START}\n{markdown(results)}\n{END}{tail}")
