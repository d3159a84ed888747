"""The time-to-ready chart (run with bench/.venv, which has matplotlib): results/latest.json -> results/time_to_ready.png."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import READY_ROWS

SHORT = {
    "floor": "physical floor",
    "envkit-warm-bare": "envkit native, warm",
    "envkit-nospare-seeded": "envkit native, warm, no spare",
    "envkit-cli-seeded": "envkit up CLI, warm",
    "envkit-miss-seeded": "envkit native, snapshot miss",
    "envkit-cold-bare": "envkit native, empty cache",
    "envkit-nocache-seeded": "envkit native, --no-cache",
    "envkit-docker-bare": "envkit docker, snapshot",
    "envkit-docker-miss-seeded": "envkit docker, snapshot miss",
    "pgpg-tuned-bare": "pytest-postgresql+redis, tuned",
    "pgpg-shipped-bare": "pytest-postgresql+redis, shipped",
    "testcontainers-bare": "testcontainers (Ryuk off)",
    "compose-bare": "compose up --wait",
}


def main(results_path: Path, out: Path) -> None:
    results = json.loads(results_path.read_text())
    fig_data = results["figures"]["ready"]
    series = fig_data["series"]
    labels, bare, seeded = [], [], []
    for _, b, s in READY_ROWS:
        if not any(k in series for k in (b, s) if k):
            continue
        labels.append(SHORT.get(b or s or "", b or s or ""))
        bare.append(series[b]["median"].get("ready") if b in series else None)
        seeded.append(series[s]["median"].get("ready") if s in series else None)
    y = range(len(labels))[::-1]
    height = 0.38
    fig, ax = plt.subplots(figsize=(10, 0.55 * len(labels) + 1.6), dpi=110)
    for values, offset, color, name in ((bare, height / 2, "#9db4cf", "bare: Postgres + Redis answer"),
                                        (seeded, -height / 2, "#2f5d8a",
                                         f"migrated + {fig_data.get('users', 100)} users seeded")):
        others = seeded if values is bare else bare
        ys = [yy + (offset if other is not None else 0) for yy, v, other in zip(y, values, others, strict=True)
              if v is not None]  # a row with one bar: centred on its label
        vs = [v for v in values if v is not None]
        ax.barh(ys, vs, height=height, color=color, label=name)
        for yy, v in zip(ys, vs, strict=True):
            ax.text(v * 1.04, yy, f"{v:.2f} s" if v >= 0.1 else f"{v * 1000:.0f} ms", va="center", fontsize=8)
    ax.set_yticks(list(y), labels, fontsize=9)
    ax.set_xscale("log")
    ticks = [t for t in (0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20) if min(v for v in bare + seeded if v) * 0.6 <= t
             <= max(v for v in bare + seeded if v) * 2.2]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("seconds to ready (median, log scale; shorter is better)")
    ax.set_xlim(left=min(v for v in bare + seeded if v) * 0.6, right=max(v for v in bare + seeded if v) * 2.2)
    ax.axvline(0.25, color="#c0392b", lw=0.8, ls="--")
    ax.text(0.25, len(labels) - 0.45, " target: warm, migrated + seeded < 0.25 s", color="#c0392b", fontsize=8, va="bottom")
    m = results["machine"]
    ax.set_title(f"Time to a ready Postgres + Redis  ({m['cores']} cores, {m['date']}, median of "
                 f"{results['settings']['runs']})", fontsize=11)
    ax.legend(loc="upper right", fontsize=8, frameon=True, framealpha=0.9)
    ax.grid(axis="x", which="both", alpha=0.25)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    fig.savefig(out)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
