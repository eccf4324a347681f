"""Many workers (issue 31, item 4): how latency-first places its first trials when many run at once.

Latency-first counts a running trial at its predicted IoU on the front (a "kriging believer") but does
not refit its IoU model on it, so with 16 workers and no finished trial the first wave is the 16
configurations with the widest latency span ahead of them: the fastest ones. The variant replayed
here (`Believer`, not the product's) also fits each running trial as an observation at its predicted
IoU, with noise ``--fantasy-noise`` (the product's observations have 0.02): configurations sharing a
running trial's knob values become surer, so the next pick goes elsewhere in the space. Replays of
the recorded tables (20 seeds, latency-first without stopping, host latency) against the product's
searcher and random sampling, at 10/25/50% of the grid's epochs.

    python benchmarks/first_wave.py                       # tables A and B, 4 and 16 workers
    python benchmarks/first_wave.py --tables B --workers 16 --fantasy-noise 0.02 0.1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402
from raysearch.replay.compare import standard_error  # noqa: E402
from raysearch.replay.methods import METHOD_KEYS  # noqa: E402
from raysearch.replay.simulator import simulate, table_latencies  # noqa: E402
from raysearch.replay.table import load  # noqa: E402
from raysearch.search.latency_first import NOISE_SD, BayesLinear, LatencyFirstSearch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BUDGETS = (0.1, 0.25, 0.5)


class Believer(LatencyFirstSearch):
    """Latency-first whose IoU model is also fitted on the running trials, each at its predicted IoU
    with noise ``fantasy_noise`` (a row weighted by NOISE_SD / fantasy_noise)."""

    fantasy_noise = NOISE_SD

    def model(self) -> BayesLinear:
        base = super().model()
        running = sorted(set(self.pending.values()) - set(self.observed))
        if not running:
            return base
        mu, _ = base.predict(self.features[running])
        rows = sorted(self.observed) + running
        y = np.array([self.observed[i] for i in sorted(self.observed)] + list(mu))
        w = np.array([1.0] * len(self.observed) + [NOISE_SD / self.fantasy_noise] * len(running))
        return BayesLinear(*self.prior, NOISE_SD).fit(self.features[rows] * w[:, None], y * w)


def shares(table, latencies, make, key: str, workers: int, seeds: int) -> list[list[float]]:
    out = []
    for s in range(seeds):
        opts = METHOD_KEYS[key].options(s, 10 * len(table.configs))
        objects = None if make is None else (make(latencies, s), None)
        r = simulate(table, opts, workers=workers, max_epochs=max(BUDGETS) * table.grid_epochs, objects=objects)
        out.append([r.share_at(b * table.grid_epochs) for b in BUDGETS])
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tables", nargs="+", default=["A", "B"])
    p.add_argument("--workers", type=int, nargs="+", default=[4, 16])
    p.add_argument("--fantasy-noise", type=float, nargs="+", default=[0.02, 0.05, 0.1])
    p.add_argument("--seeds", type=int, default=20)
    args = p.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)
    print(f"# {machine()}\n\n| table | workers | method | at 10% | at 25% | at 50% |\n|---|---:|---|---|---|---|")
    for name in args.tables:
        table = load(REPO / "benchmarks" / "tables" / f"{name}.jsonl.gz")
        latencies = table_latencies(table, "host")
        for workers in args.workers:
            rows = [("random", None, "random"), ("latency-first (the product's)", None, "latency-first")]
            for noise in args.fantasy_noise:
                kind = type(f"Believer{noise}", (Believer,), {"fantasy_noise": noise})
                rows.append((f"believer, fantasy noise {noise:g}",
                             lambda lat, s, k=kind: k(lat, seed=s), "latency-first"))
            for label, make, key in rows:
                got = shares(table, latencies, make, key, workers, args.seeds)
                cells = [f"{statistics.mean(c):.3f} +- {standard_error(c):.3f}" for c in zip(*got)]
                print(f"| {name} | {workers} | {label} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
