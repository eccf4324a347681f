"""Hand-made recorded tables for the replay tests (`raysearch.replay.table` format)."""

from __future__ import annotations

from pathlib import Path

from raysearch.models import ModelSpec
from raysearch.replay.table import FORMAT, VERSION, Epoch, Latency, Run, Table


def make_table(path: Path, points: dict[str, tuple[dict, float, list[list[float]], list[float]]], *,
               epochs: int, name: str = "hand", seconds: float = 10.0, fixed_s: float = 1.0,
               grid: dict | None = None) -> Path:
    """``points``: id -> (knobs, latency ms, one validation-IoU curve per seed, one test IoU per
    seed). Validation loss falls with the IoU (1 - IoU), so the best epoch is the best IoU's.
    ``grid``: the search space (default: the knobs that vary, over their values; the others fixed)."""
    specs = {cid: ModelSpec.from_dict({"arch": "fastscnn", **knobs}) for cid, (knobs, *_) in points.items()}
    values: dict[str, list] = {}
    for knobs, *_ in points.values():
        for k, v in knobs.items():
            if v not in values.setdefault(k, []):
                values[k].append(v)
    fixed = {"arch": "fastscnn", **{k: v[0] for k, v in values.items() if len(v) == 1}}
    if grid is None:  # the knobs that vary, each over its values
        grid = {k: v for k, v in values.items() if len(v) > 1}
    grid = {k: [list(v) if isinstance(v, tuple) else v for v in vals] for k, vals in grid.items()}
    n_seeds = len(next(iter(points.values()))[2])
    meta = {"format": FORMAT, "version": VERSION, "space": name, "epochs": epochs, "seeds": list(range(n_seeds)),
            "search_space": {"grid": grid, "fixed": fixed, "models": {}},
            "latency_sources": {"host": {"what": "hand-made"}}, "provenance": {"commit": "test"}}
    table = Table(meta=meta, configs={cid: s.to_dict() for cid, s in specs.items()})
    for cid, (_, latency, curves, tests) in points.items():
        table.latencies[(cid, "host")] = Latency(cid, "host", (latency,))
        for seed, (curve, test) in enumerate(zip(curves, tests)):
            assert len(curve) == epochs
            best = max(range(epochs), key=lambda i: (curve[i], i)) + 1
            table.runs[(cid, seed)] = Run(cid, seed, tuple(Epoch(v, 1 - v, seconds) for v in curve), best, test,
                                          test, fixed_s)
    table.save(path)
    return path
