"""Two results files side by side, pair by pair: has envkit moved against the same anchors?

    python bench/compare.py BEFORE.json AFTER.json      # e.g. the committed latest.json (git show) and a new run

Absolute times move with the machine's load (20-50% between runs here), so each row is a ratio taken inside
every round of the ``ready`` figure (an envkit contender's time ÷ an anchor's, same round), then the median of
the rounds; the range of the rounds' ratios is shown beside it, which is the noise a comparison must beat.
A row's ``after ÷ before`` is the change of envkit against that anchor; *within noise* means the after median
lies inside the before run's range of per-round ratios and vice versa.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

#: (envkit contender, anchor, metric): the pairs the no-regression check of issue 12 reads
PAIRS = [
    ("envkit-warm-bare", "floor", "ready"),
    ("envkit-warm-seeded", "floor", "ready"),
    ("envkit-warm-bare", "pgpg-tuned-bare", "ready"),
    ("envkit-warm-seeded", "pgpg-tuned-bare", "ready"),
    ("envkit-warm-seeded", "pgpg-tuned-seeded", "ready"),
    ("envkit-nospare-seeded", "pgpg-tuned-seeded", "ready"),
    ("envkit-cli-seeded", "pgpg-tuned-seeded", "ready"),
    ("envkit-miss-seeded", "pgpg-tuned-seeded", "ready"),
    ("envkit-cold-seeded", "pgpg-tuned-seeded", "ready"),
    ("envkit-nocache-seeded", "pgpg-tuned-seeded", "ready"),
    ("envkit-docker-bare", "testcontainers-bare", "ready"),
    ("envkit-docker-seeded", "testcontainers-bare", "ready"),
    ("envkit-docker-seeded", "compose-bare", "ready"),
    ("envkit-docker-miss-seeded", "testcontainers-seeded", "ready"),
    ("envkit-warm-seeded", "floor", "teardown"),
    ("envkit-warm-seeded", "pgpg-tuned-seeded", "teardown"),
    ("envkit-warm-bare", "pgpg-tuned-bare", "teardown"),
    ("envkit-cli-seeded", "pgpg-tuned-seeded", "teardown"),
    ("envkit-docker-seeded", "testcontainers-seeded", "teardown"),
    ("envkit-docker-seeded", "compose-seeded", "teardown"),
    ("envkit-docker-bare", "testcontainers-bare", "teardown"),
]


def per_round(fig: dict[str, Any], a: str, b: str, metric: str) -> list[float]:
    sa, sb = fig["series"].get(a), fig["series"].get(b)
    if not sa or not sb:
        return []
    return [x[metric] / y[metric] for x, y in zip(sa["samples"], sb["samples"], strict=False)
            if x and y and x.get(metric) is not None and y.get(metric)]


def loads(fig: dict[str, Any]) -> str:
    values = [s.get("load1") for series in fig["series"].values() for s in series["samples"] if s and "load1" in s]
    return f"{min(values):.1f}-{max(values):.1f}" if values else "?"


def table(before: dict[str, Any], after: dict[str, Any]) -> str:
    fb, fa = before["figures"]["ready"], after["figures"]["ready"]
    out = [f"ready figure: before measured {fb.get('measured', {}).get('date', '?')} (1-min load during its samples "
           f"{loads(fb)}), after {fa.get('measured', {}).get('date', '?')} (load {loads(fa)})", "",
           "| envkit ÷ anchor (same round) | metric | before: median [range] | after: median [range] | after ÷ before | |",
           "|---|---|---:|---:|---:|---|"]
    for a, b, metric in PAIRS:
        rb, ra = per_round(fb, a, b, metric), per_round(fa, a, b, metric)
        if not rb or not ra:
            continue
        mb, ma = statistics.median(rb), statistics.median(ra)
        inside = min(rb) <= ma <= max(rb) and min(ra) <= mb <= max(ra)
        verdict = "within noise" if inside else ("**slower**" if ma > mb else "faster")
        out.append(f"| {a} ÷ {b} | {metric} | {mb:.3f} [{min(rb):.3f}-{max(rb):.3f}] | "
                   f"{ma:.3f} [{min(ra):.3f}-{max(ra):.3f}] | {ma / mb:.2f} | {verdict} |")
    return "\n".join(out)


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    before, after = (json.loads(Path(p).read_text()) for p in sys.argv[1:])
    print(table(before, after))
    return 0


if __name__ == "__main__":
    sys.exit(main())
