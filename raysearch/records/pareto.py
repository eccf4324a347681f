"""Pareto front and hypervolume of the IoU / latency trade-off (the maths; tables are in
:mod:`raysearch.reporting`, plots in :mod:`raysearch.reporting.plots`, requirements in :mod:`raysearch.records.results`).

Directions are never hard-coded: every function takes the objectives (``OBJECTIVES`` from
:mod:`raysearch.records.names` by default) and reads each one's ``mode`` ("max" or "min").
Internally a value is turned into a *cost* (``-value`` for "max", ``value`` for "min") so
that smaller is better in every objective.

Missing values
    A point whose value for an objective is missing, ``None``, not a number, NaN or infinite
    is *incomplete*: it is never on the Pareto front, never dominates another point and
    contributes nothing to the hypervolume.

Dominance and duplicates
    ``a`` dominates ``b`` when ``a`` is at least as good as ``b`` in every objective and
    strictly better in at least one. Two points with exactly the same objective values do not
    dominate each other, so exact duplicates on the front are *all* kept (two trials that reach
    the same trade-off are both worth showing).

Hypervolume, its reference point and its box
    The hypervolume is the area of objective space dominated by the points and bounded by a
    reference point: for IoU (max) and latency (min) the area of the union of the rectangles
    ``[ref_iou, iou] x [latency, ref_latency]``, in IoU x ms. It grows whenever a new point
    improves the front and never shrinks, which makes it the one-number progress measure of a
    multi-objective search.

    :func:`default_reference` gives IoU 0.0 (the worst possible IoU) and, for latency, the
    search's latency budget when there is one (only models that meet it add area), else the
    largest latency measured in the search, so that the box spans what the search saw and both
    objectives weigh in: a reference far above every latency (say 1000 ms for models of 0.1 ms)
    makes the hypervolume almost only the best IoU. Divided by its box (IoU 0..1 x latency
    0..ref), it is a share between 0 and 1 (:func:`normalized_hypervolume`). A reference taken
    from the data moves while the search runs; pass a fixed one (``--hv-ref-latency-ms``) to
    compare searches with each other.

Points are mappings of metric names to values, or `raysearch.records.results.TrialRow` records.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from raysearch.records.names import IOU, LATENCY_MS, OBJECTIVES, Objective
from raysearch.records.results import TrialRow, finite, point_value

Point = Mapping[str, Any] | TrialRow  # a mapping of metric names to values, or a trial's record

#: Latency of the reference point with neither a budget nor a measured latency (1 frame/s).
DEFAULT_REF_LATENCY_MS = 1000.0
#: IoU of the reference point: the worst possible IoU.
DEFAULT_REF_IOU = 0.0

__all__ = ["DEFAULT_REF_IOU", "DEFAULT_REF_LATENCY_MS", "as_costs", "costs_dominate", "default_reference", "dominates",
           "hypervolume", "normalized_hypervolume", "pareto_front"]


# --------------------------------------------------------------------------- values


_get = point_value


def _costs(point: Point, objectives: Sequence[Objective]) -> tuple[float, ...] | None:
    """The point's objective values as costs (smaller is better), or None if incomplete."""
    out = []
    for obj in objectives:
        v = _get(point, obj.name)
        if v is None:
            return None
        out.append(-v if obj.mode == "max" else v)
    return tuple(out)


def _check_objectives(objectives: Sequence[Objective]) -> tuple[Objective, ...]:
    objectives = tuple(objectives)
    if not objectives:
        raise ValueError("at least one objective is needed")
    for obj in objectives:
        if obj.mode not in ("max", "min"):
            raise ValueError(f"objective {obj.name!r} has mode {obj.mode!r}, expected 'max' or 'min'")
    return objectives


# --------------------------------------------------------------------------- front


def dominates(a: Point, b: Point, objectives: Sequence[Objective] = OBJECTIVES) -> bool:
    """True when ``a`` is at least as good as ``b`` everywhere and strictly better somewhere.

    An incomplete point (a missing/NaN value) neither dominates nor is dominated.
    """
    objectives = _check_objectives(objectives)
    ca, cb = _costs(a, objectives), _costs(b, objectives)
    if ca is None or cb is None:
        return False
    return costs_dominate(ca, cb)


def costs_dominate(ca: Sequence[float], cb: Sequence[float]) -> bool:
    """The dominance rule on costs (smaller is better in every place; see `as_costs`): ``ca`` is at
    least as good as ``cb`` everywhere and strictly better somewhere."""
    if len(ca) == 2:  # the common case, unrolled: schedulers call this O(n^2) times per decision
        return ca[0] <= cb[0] and ca[1] <= cb[1] and (ca[0] < cb[0] or ca[1] < cb[1])
    better = False
    for x, y in zip(ca, cb):
        if x > y:
            return False
        better = better or x < y
    return better


def as_costs(values: Sequence[float], objectives: Sequence[Objective]) -> tuple[float, ...]:
    """Objective values, one per objective, as costs: negated where the objective is maximized."""
    return tuple(-v if o.mode == "max" else v for v, o in zip(values, objectives, strict=True))


def pareto_front(
    points: Sequence[Point], objectives: Sequence[Objective] = OBJECTIVES
) -> list[int]:
    """Indices of the non-dominated points, best first in the first objective.

    Ties in the first objective are ordered by the next objectives, then by index. Exact
    duplicates of a front point are all returned; incomplete points never are.
    O(n log n) for two objectives, O(n^2) otherwise.
    """
    objectives = _check_objectives(objectives)
    items = [(c, i) for i, p in enumerate(points) if (c := _costs(p, objectives)) is not None]
    items.sort()  # by cost (best first in objective 0, then 1, ...), then index
    if len(objectives) == 2:
        front: list[int] = []
        best_second = math.inf
        last_kept: tuple[float, ...] | None = None
        for cost, i in items:
            if cost == last_kept:  # exact duplicate of the previous front point
                front.append(i)
            elif cost[1] < best_second:  # nothing earlier (no worse in objective 0) beats it
                front.append(i)
                best_second, last_kept = cost[1], cost
            # else: the last kept point is <= in both and differs: dominated
        return front
    return [
        i
        for cost, i in items
        if not any(all(x <= y for x, y in zip(other, cost)) and other != cost for other, _ in items)
    ]


# --------------------------------------------------------------------------- hypervolume


def default_reference(max_latency_ms: float | None = None, latencies: Sequence[Any] = ()) -> dict[str, float]:
    """The reference point: IoU 0.0 and the latency budget; without one, the largest of
    ``latencies`` (the search's measured latencies), else ``DEFAULT_REF_LATENCY_MS``."""
    if max_latency_ms is None:
        seen = [x for x in map(finite, latencies) if x is not None and x > 0]
        latency = max(seen) if seen else DEFAULT_REF_LATENCY_MS
    else:
        budget = finite(max_latency_ms)
        if budget is None or budget <= 0:
            raise ValueError(f"max_latency_ms must be a positive number, got {max_latency_ms!r}")
        latency = budget
    return {IOU.name: DEFAULT_REF_IOU, LATENCY_MS.name: float(latency)}


def hypervolume(
    points: Sequence[Point],
    reference: Mapping[str, float],
    objectives: Sequence[Objective] = OBJECTIVES,
) -> float:
    """Area dominated by ``points`` and bounded by ``reference`` (2 objectives only).

    For IoU (max) and latency (min): the area of the union of ``[ref_iou, iou] x [latency,
    ref_latency]``. Points that are not strictly better than the reference in every objective,
    and incomplete points, contribute nothing. O(n log n).
    """
    objectives = _check_objectives(objectives)
    if len(objectives) != 2:
        raise ValueError(f"hypervolume: only 2-D is implemented, got {len(objectives)} objectives")
    ref = _costs(reference, objectives)
    if ref is None:
        names = ", ".join(o.name for o in objectives)
        raise ValueError(f"hypervolume: the reference needs finite values for {names}, got {dict(reference)!r}")
    costs = sorted(
        c for p in points if (c := _costs(p, objectives)) is not None and c[0] < ref[0] and c[1] < ref[1]
    )
    # Sweep in increasing cost 0. The horizontal slab between a front point's cost 1 and the
    # previous (higher) one is covered from that point's cost 0 up to the reference.
    area = 0.0
    upper = ref[1]
    for c0, c1 in costs:
        if c1 < upper:
            area += (ref[0] - c0) * (upper - c1)
            upper = c1
    return area


@dataclass(frozen=True)
class FrontHypervolume:
    """A search's hypervolume: of its candidates, in the box of its latency budget or else of the
    largest latency it measured (every trial's, candidates or not)."""

    value: float  # IoU x ms
    share: float  # of the box IoU 0..1 x latency 0..reference
    reference: dict[str, float]

    @property
    def reference_latency_ms(self) -> float:
        return self.reference[LATENCY_MS.name]


def front_hypervolume(candidates: Sequence[Point], measured: Sequence[Point],
                      max_latency_ms: float | None = None) -> FrontHypervolume:
    """`FrontHypervolume` of ``candidates`` (trials trained to the end); ``measured``: every trial
    whose latency sets the box when there is no budget."""
    ref = default_reference(max_latency_ms, [point_value(p, LATENCY_MS.name) for p in measured])
    return FrontHypervolume(hypervolume(candidates, ref), normalized_hypervolume(candidates, ref), ref)


def normalized_hypervolume(points: Sequence[Any], reference: Mapping[str, float]) -> float:
    """The hypervolume as a share (0..1) of its box: IoU from the reference's to 1, latency from 0
    to the reference's."""
    box = (1.0 - reference[IOU.name]) * reference[LATENCY_MS.name]
    return hypervolume(points, reference) / box if box > 0 else 0.0
