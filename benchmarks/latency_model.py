"""How well `raysearch.search.latency_model` predicts the latencies a recorded table measured.

For each table and seed: measure (read from the table) a random share of its configurations, fit
the model on them, predict the others and score the predictions against the table's figures:
the share within +-10%, the median error, Spearman's rank correlation and how often the measured
figure falls inside the predicted 2-sd interval. Beside it, the measurement's own repeatability
(the table's passes against each other): no model can beat it.

    python benchmarks/latency_model.py                        # tables A and B, 5% measured, 20 seeds
    python benchmarks/latency_model.py --tables C --share 0.02 0.05 0.1
    python benchmarks/latency_model.py --features knobs       # the knobs alone, for comparison
    python benchmarks/latency_model.py --tables B --new-class host-int8 host-2threads  # a new device class

A new device class (``--new-class SOURCE``): the table's ``--reference`` source (default host) fully
measured, and 10 (``--measured``) configurations of SOURCE at random; SOURCE's other latencies are
predicted by its own model with the reference class's prediction as one more input (what the
product does for a class the latency cache knows little of), and, for comparison, by a model of
the 10 alone and by the reference's figures themselves (the order of the other class, unchanged).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402
from raysearch.models import ModelSpec  # noqa: E402
from raysearch.replay.table import load  # noqa: E402
from raysearch.search.latency_model import LatencyModel, config_features, graph_features, model_error  # noqa: E402

TABLES = Path(__file__).resolve().parent / "tables"


def knob_features(spec: ModelSpec) -> tuple[float, ...]:
    return (math.log(spec.a), float(spec.t), float(spec.r), float(spec.pp), math.log(spec.height * spec.width))


FEATURE_SETS = {"graph": graph_features, "knobs": knob_features, "both": config_features}


def repeatability(passes: list[tuple[float, ...]]) -> tuple[float, float]:
    """The passes against each other: the share of single passes within +-10% of the median of the
    others, and Spearman between the first two passes."""
    from scipy.stats import spearmanr

    within = [abs(p[i] / statistics.median(p[:i] + p[i + 1:]) - 1) <= 0.10 for p in passes for i in range(len(p))]
    rho = float(spearmanr([p[0] for p in passes], [p[1] for p in passes]).statistic)
    return float(np.mean(within)), rho


def evaluate(name: str, share: float, seeds: int, features: str) -> dict:
    table = load(TABLES / f"{name}.jsonl.gz")
    cids = sorted(table.configs)
    specs = [ModelSpec.from_dict(table.configs[c]) for c in cids]
    truth = np.array([table.latency_ms(c, "host") for c in cids])
    n = max(3, round(share * len(cids)))
    rows = []
    t0 = time.perf_counter()
    for f in (FEATURE_SETS[features](s) for s in specs):  # computed once, timed apart
        del f
    t_features = time.perf_counter() - t0
    t_fit = 0.0
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        known = set(rng.choice(len(cids), n, replace=False).tolist())
        model = LatencyModel("host", features=FEATURE_SETS[features], seed=seed)
        model.update((specs[i], float(truth[i])) for i in known)
        rest = [i for i in range(len(cids)) if i not in known]
        t1 = time.perf_counter()
        pred = model.predict([specs[i] for i in rest])
        t_fit += time.perf_counter() - t1
        rows.append(model_error(pred, truth[rest]))
    rep = repeatability([table.latencies[(c, "host")].passes_ms for c in cids])

    def ms(values: list[float]) -> str:
        return f"{statistics.mean(values):.3f} +- {statistics.stdev(values):.3f}"

    print(f"table {name} ({len(cids)} configurations, {features} features): {n} measured at random "
          f"({share:.0%}), {seeds} seeds")
    print(f"  within +-10%: {ms([r.within_10pct for r in rows])}  (min {min(r.within_10pct for r in rows):.3f})")
    print(f"  Spearman:     {ms([r.spearman for r in rows])}  (min {min(r.spearman for r in rows):.3f})")
    print(f"  median error: {ms([r.median_abs_pct for r in rows])} %")
    print(f"  in 2-sd band: {ms([r.covered_2sd for r in rows])}")
    print(f"  the measurement itself: {rep[0]:.3f} of single passes within +-10% of the others' median, "
          f"Spearman pass 1 vs 2 {rep[1]:.3f}")
    print(f"  features {t_features:.1f} s for {len(cids)}; fit + predict {t_fit / seeds:.2f} s a seed")
    return {"table": name, "share": share, "rows": rows, "repeatability": rep}


def new_class(name: str, source: str, reference: str, measured: int, seeds: int) -> dict:
    from scipy.stats import spearmanr

    table = load(TABLES / f"{name}.jsonl.gz")
    cids = sorted(table.configs)
    specs = [ModelSpec.from_dict(table.configs[c]) for c in cids]
    truth = np.array([table.latency_ms(c, source) for c in cids])
    ref = LatencyModel(reference)
    ref.update((s, table.latency_ms(c, reference)) for s, c in zip(specs, cids))
    out: dict[str, list] = {"with reference": [], "alone": [], "reference as is": []}
    for seed in range(seeds):
        known = set(np.random.default_rng(seed).choice(len(cids), measured, replace=False).tolist())
        rest = [i for i in range(len(cids)) if i not in known]
        for label, model in (("with reference", LatencyModel(source, reference=ref, seed=seed)),
                             ("alone", LatencyModel(source, seed=seed))):
            model.update((specs[i], float(truth[i])) for i in known)
            out[label].append(model_error(model.predict([specs[i] for i in rest]), truth[rest]))
        as_is = [table.latency_ms(cids[i], reference) for i in rest]
        out["reference as is"].append(float(spearmanr(as_is, truth[rest]).statistic))
    passes = [table.latencies[(c, source)].passes_ms for c in cids]
    rep = repeatability(passes) if min(map(len, passes)) > 1 else None
    print(f"table {name}: new class {source!r} from {measured} of its measurements (at random), reference "
          f"{reference!r} ({len(cids)} measured), {seeds} seeds")
    for label in ("with reference", "alone"):
        rows = out[label]
        print(f"  {label:15s} Spearman {statistics.mean(r.spearman for r in rows):.3f} +- "
              f"{statistics.stdev(r.spearman for r in rows):.3f} (min {min(r.spearman for r in rows):.3f}), "
              f"within +-10% {statistics.mean(r.within_10pct for r in rows):.3f}, median error "
              f"{statistics.mean(r.median_abs_pct for r in rows):.1f}%, in 2-sd band "
              f"{statistics.mean(r.covered_2sd for r in rows):.2f}")
    print(f"  {reference!r}'s own figures as the order: Spearman {statistics.mean(out['reference as is']):.3f}")
    print(f"  the measurement itself: {rep[0]:.3f} of single passes within +-10% of the others' median, "
          f"Spearman pass 1 vs 2 {rep[1]:.3f}" if rep else "  the measurement itself: one pass, its repeatability unknown")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tables", nargs="+", default=["A", "B"])
    ap.add_argument("--share", type=float, nargs="+", default=[0.05], help="shares measured (default 0.05)")
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--features", choices=sorted(FEATURE_SETS), default="both", help="the model's inputs: the graph's sizes, the knobs, or both (the product's; default)")
    ap.add_argument("--new-class", nargs="+", metavar="SOURCE", help="latency sources to treat as a new device class")
    ap.add_argument("--reference", default="host", help="the class measured in full (default %(default)s)")
    ap.add_argument("--measured", type=int, default=10, help="measurements of the new class (default %(default)s)")
    args = ap.parse_args()
    print(f"machine: {machine()}")
    if args.new_class:
        for name in args.tables:
            for source in args.new_class:
                new_class(name, source, args.reference, args.measured, args.seeds)
        return
    for name in args.tables:
        for share in args.share:
            evaluate(name, share, args.seeds, args.features)


if __name__ == "__main__":
    main()
