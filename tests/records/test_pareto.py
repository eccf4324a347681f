"""Pareto front, hypervolume, constraints and reports on tiny hand-computed cases."""

from __future__ import annotations

import csv
import math
import random

import pytest

from raysearch.records.names import IOU, LATENCY_MS, OBJECTIVES, Objective
from raysearch.records.pareto import (
    DEFAULT_REF_LATENCY_MS,
    default_reference,
    dominates,
    hypervolume,
    normalized_hypervolume,
    pareto_front,
)
from raysearch.records.results import Requirement
from raysearch.reporting.plots import plot_front, plot_hypervolume
from raysearch.reporting.tables import front_table, write_front_csv


def misses(point, max_latency_ms=None, min_iou=None):
    return Requirement(max_latency_ms, min_iou).misses(point)


def qualifies(point, max_latency_ms=None, min_iou=None):
    return Requirement(max_latency_ms, min_iou).qualifies(point)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def P(iou, lat, **extra):
    return {"iou": iou, "latency_ms": lat, **extra}


# Five candidates (IoU up, latency down):
#   0 A (0.90, 20)
#   1 B (0.80, 10)
#   2 C (0.95, 40)
#   3 D (0.85, 30)  dominated by A: 0.90 >= 0.85 and 20 <= 30
#   4 E (0.70,  5)
# Front sorted by IoU best first: C 0.95, A 0.90, B 0.80, E 0.70 -> [2, 0, 1, 4].
FIVE = [P(0.90, 20), P(0.80, 10), P(0.95, 40), P(0.85, 30), P(0.70, 5)]


# --------------------------------------------------------------------------- front


def test_front_five_points_one_dominated():
    assert pareto_front(FIVE) == [2, 0, 1, 4]
    assert dominates(FIVE[0], FIVE[3])
    assert not dominates(FIVE[3], FIVE[0])
    assert not dominates(FIVE[0], FIVE[1]) and not dominates(FIVE[1], FIVE[0])  # a trade-off


def test_front_reads_the_modes_not_the_order():
    # Latency first: sorted by latency best (lowest) first: E 5, B 10, A 20, C 40.
    assert pareto_front(FIVE, (LATENCY_MS, IOU)) == [4, 1, 0, 2]
    # Both "min" (IoU as an error to minimize): now the LOW-IoU, low-latency points win.
    # B (0.80, 10) is dominated by E (0.70, 5); all others are dominated by E too -> [4].
    iou_min = Objective("iou", "min", "test only")
    assert pareto_front(FIVE, (iou_min, LATENCY_MS)) == [4]


def test_front_exact_duplicates_are_all_kept():
    # 0 and 1 are the same trade-off (both kept), 2 is a different front point,
    # 3 and 4 duplicate a dominated point (0.5, 50) (both dropped).
    pts = [P(0.9, 20), P(0.9, 20), P(0.8, 10), P(0.5, 50), P(0.5, 50)]
    assert pareto_front(pts) == [0, 1, 2]
    assert not dominates(pts[0], pts[1])


def test_front_ties_in_one_objective():
    # Same IoU, 25 ms is worse than 20 ms: index 1 is dominated.
    assert pareto_front([P(0.9, 20), P(0.9, 25)]) == [0]
    # Same latency, 0.8 is worse than 0.9: index 0 is dominated.
    assert pareto_front([P(0.8, 20), P(0.9, 20)]) == [1]


def test_front_nan_none_missing_never_on_front_never_dominate():
    pts = [
        P(0.99, float("nan")),  # would dominate everything: excluded
        P(float("nan"), 1.0),
        {"iou": 0.99},  # no latency
        P(None, 1.0),
        P(0.5, 50),
        P("n/a", 1.0),  # not a number
        P(0.6, math.inf),  # infinite latency
    ]
    assert pareto_front(pts) == [4]
    assert not dominates(pts[0], pts[4])
    assert pareto_front(pts[:4]) == []


def test_front_single_and_empty():
    assert pareto_front([P(0.5, 10)]) == [0]
    assert pareto_front([]) == []


def test_front_two_objective_sweep_matches_brute_force():
    # Small integer grid -> many ties and duplicates.
    rng = random.Random(0)
    for _ in range(50):
        pts = [P(rng.randint(0, 4) / 4, rng.randint(1, 5)) for _ in range(rng.randint(1, 12))]
        brute = [i for i, p in enumerate(pts) if not any(dominates(q, p) for q in pts)]
        front = pareto_front(pts)
        assert sorted(front) == brute
        ious = [pts[i]["iou"] for i in front]
        assert ious == sorted(ious, reverse=True)  # best IoU first


def test_front_three_objectives():
    params = Objective("params", "min", "test only")
    # (iou, latency, params):
    #   0 (0.9, 20, 100)
    #   1 (0.8, 30,  50)  dominated by 0 in (iou, latency) but has fewer params -> on the front
    #   2 (0.8, 30,  60)  dominated by 1 (same iou/latency, more params)
    pts = [P(0.9, 20, params=100), P(0.8, 30, params=50), P(0.8, 30, params=60)]
    assert pareto_front(pts) == [0]
    assert pareto_front(pts, (IOU, LATENCY_MS, params)) == [0, 1]


# --------------------------------------------------------------------------- hypervolume

REF = {"iou": 0.0, "latency_ms": 100.0}


def test_hypervolume_one_point():
    # (0.8 - 0) * (100 - 20) = 0.8 * 80 = 64
    assert hypervolume([P(0.8, 20)], REF) == pytest.approx(64.0)


def test_hypervolume_two_points():
    # A (0.9, 40): 0.9 * 60 = 54; B (0.6, 10): 0.6 * 90 = 54;
    # overlap [0, 0.6] x [40, 100] = 0.6 * 60 = 36 -> union 54 + 54 - 36 = 72
    assert hypervolume([P(0.9, 40), P(0.6, 10)], REF) == pytest.approx(72.0)


def test_hypervolume_three_points():
    # A (0.9, 40), B (0.6, 10), C (0.3, 5). Slabs along latency:
    #   [5, 10):   best IoU 0.3 -> 0.3 * 5  = 1.5
    #   [10, 40):  best IoU 0.6 -> 0.6 * 30 = 18
    #   [40, 100]: best IoU 0.9 -> 0.9 * 60 = 54      total 73.5
    pts = [P(0.3, 5), P(0.9, 40), P(0.6, 10)]  # order does not matter
    assert hypervolume(pts, REF) == pytest.approx(73.5)
    # Same area with the objectives in the other order (modes, not positions, matter).
    assert hypervolume(pts, REF, (LATENCY_MS, IOU)) == pytest.approx(73.5)


def test_hypervolume_points_not_better_than_reference_contribute_nothing():
    assert hypervolume([P(0.9, 120)], REF) == 0.0  # slower than the reference
    assert hypervolume([P(0.9, 100)], REF) == 0.0  # on the reference latency: zero width
    assert hypervolume([P(0.0, 10)], REF) == 0.0  # IoU not above the reference
    assert hypervolume([P(float("nan"), 10), {"iou": 0.5}], REF) == 0.0
    assert hypervolume([], REF) == 0.0
    # Adding them to a real point changes nothing: 64 as in the one-point case.
    assert hypervolume([P(0.8, 20), P(0.99, 150), P(-0.1, 1)], REF) == pytest.approx(64.0)


def test_hypervolume_dominated_point_changes_nothing():
    base = [P(0.9, 40), P(0.6, 10), P(0.3, 5)]  # 73.5 (above)
    # D (0.5, 50) is dominated by A (0.9, 40): its rectangle lies inside A's.
    assert hypervolume([*base, P(0.5, 50)], REF) == pytest.approx(73.5)
    # A duplicate changes nothing either.
    assert hypervolume([*base, P(0.6, 10)], REF) == pytest.approx(73.5)


def test_hypervolume_monotonic_when_adding_points():
    rng = random.Random(1)
    pts, last = [], 0.0
    for _ in range(40):
        pts.append(P(rng.uniform(-0.1, 1.0), rng.uniform(1, 130)))
        hv = hypervolume(pts, REF)
        assert hv >= last - 1e-12
        last = hv
    # A new point beyond everything adds its strictly positive extra area:
    # (1.0, 0.5) covers [0, 1] x [0.5, 100] = 99.5 alone, more than any point above could.
    assert hypervolume([*pts, P(1.0, 0.5)], REF) == pytest.approx(99.5)


def test_hypervolume_only_2d_and_needs_a_valid_reference():
    params = Objective("params", "min", "test only")
    with pytest.raises(ValueError, match="only 2-D"):
        hypervolume([P(0.5, 10, params=1)], {**REF, "params": 10}, (IOU, LATENCY_MS, params))
    with pytest.raises(ValueError, match="only 2-D"):
        hypervolume([P(0.5, 10)], REF, (IOU,))
    with pytest.raises(ValueError, match="reference"):
        hypervolume([P(0.5, 10)], {"iou": 0.0})


def test_default_reference():
    assert DEFAULT_REF_LATENCY_MS == 1000.0
    assert default_reference(None) == {"iou": 0.0, "latency_ms": 1000.0}
    assert default_reference(33) == {"iou": 0.0, "latency_ms": 33.0}
    # One point with the default reference: 0.8 * (1000 - 20) = 784
    assert hypervolume([P(0.8, 20)], default_reference(None)) == pytest.approx(784.0)
    with pytest.raises(ValueError):
        default_reference(0)


# --------------------------------------------------------------------------- constraints


def test_qualifies_and_misses():
    p = P(0.912, 41.2)
    assert misses(p, max_latency_ms=33, min_iou=0.95) == ["latency 41.2 ms > 33 ms", "IoU 0.912 < 0.95"]
    assert not qualifies(p, max_latency_ms=33, min_iou=0.95)
    assert misses(p, max_latency_ms=33) == ["latency 41.2 ms > 33 ms"]
    assert misses(p, min_iou=0.95) == ["IoU 0.912 < 0.95"]
    assert qualifies(p, max_latency_ms=50, min_iou=0.9)
    assert qualifies(p)  # no constraint, nothing to miss
    # Bounds are inclusive.
    assert qualifies(P(0.95, 33.0), max_latency_ms=33, min_iou=0.95)
    # Enough decimals that the reason never reads "33.0 > 33".
    assert misses(P(0.9, 33.04), max_latency_ms=33) == ["latency 33.04 ms > 33 ms"]
    assert misses(P(0.9499, 10), min_iou=0.95) == ["IoU 0.9499 < 0.95"]
    # Unknown values miss a constraint on them.
    assert not qualifies({"iou": 0.99}, max_latency_ms=33)
    assert "latency unknown" in misses({"iou": 0.99}, max_latency_ms=33)[0]
    assert qualifies({"iou": 0.99}, min_iou=0.9)


# --------------------------------------------------------------------------- reports

ROWS = [
    {"name": "mid", "iou": 0.90, "latency_ms": 20.0, "params_total": 1_200_000, "macs": 2_500_000, "seed": 1},
    {"name": "fast", "iou": 0.80, "latency_ms": 10.0, "fps": 100.0},
    {"name": "slowbad", "iou": 0.85, "latency_ms": 30.0, "zeta": "z", "alpha": 3},  # dominated by mid
    {"name": "best", "iou": 0.95, "latency_ms": 40.0},
    {"name": "broken", "iou": None, "latency_ms": 5.0},
]


def test_front_table_order_columns_and_flags():
    text = front_table(ROWS, Requirement(25, 0.85))
    lines = text.splitlines()
    header = lines[0].split()
    assert header[:3] == ["name", "iou", "latency_ms"] and "qualifies" in header and header[-1] == "pareto"
    body = lines[2:]
    names = [line.split()[0] for line in body]
    assert names == ["best", "mid", "slowbad", "fast", "broken"]  # best IoU first, missing last
    by_name = dict(zip(names, body))
    assert by_name["mid"].split()[-2:] == ["yes", "*"]  # 20 ms <= 25, 0.90 >= 0.85, on the front
    assert by_name["best"].split()[-2:] == ["no", "*"]  # 40 ms > 25
    assert by_name["slowbad"].split()[-1] == "no"  # dominated: no star
    assert by_name["fast"].split()[-2:] == ["no", "*"]  # 0.80 < 0.85
    assert "1,200,000" in by_name["mid"] and "2.50" in by_name["mid"]  # params, macs (M)
    assert "50.0" in by_name["mid"]  # fps = 1000 / 20
    assert len({len(line) for line in lines[:2]}) == 1  # header and rule aligned
    # Without constraints there is no qualifies column.
    assert "qualifies" not in front_table(ROWS).splitlines()[0]
    assert "(no candidates)" in front_table([])


def test_write_front_csv(tmp_path):
    path = write_front_csv(ROWS, tmp_path / "sub" / "front.csv")
    with path.open() as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        columns = reader.fieldnames
    # name, the objectives, the rest sorted, pareto last.
    assert columns == ["name", "iou", "latency_ms", "alpha", "fps", "macs", "params_total", "seed", "zeta", "pareto"]
    flags = {r["name"]: r["pareto"] for r in rows}
    # Front: best (0.95, 40), mid (0.90, 20), fast (0.80, 10); slowbad dominated; broken incomplete.
    assert flags == {"mid": "1", "fast": "1", "slowbad": "0", "best": "1", "broken": "0"}
    assert [r["name"] for r in rows] == [r["name"] for r in ROWS]  # input order
    assert rows[4]["iou"] == "" and rows[1]["seed"] == ""  # missing -> empty cell


def _is_png(path) -> bool:
    data = path.read_bytes()
    return len(data) > 1000 and data[:8] == PNG_SIGNATURE


def test_plot_front_writes_png(tmp_path):
    out = plot_front(ROWS, tmp_path / "front.png", title="test search")
    assert out == tmp_path / "front.png" and _is_png(out)
    out = plot_front(ROWS, tmp_path / "c" / "front_constrained.png", requirement=Requirement(25, 0.85))
    assert _is_png(out)
    assert _is_png(plot_front(ROWS, tmp_path / "iou_only.png", requirement=Requirement(min_iou=0.85)))
    assert _is_png(plot_front(ROWS[:1], tmp_path / "single.png", requirement=Requirement(33, 0.9)))
    assert _is_png(plot_front([ROWS[4]], tmp_path / "none_valid.png"))  # only a skipped row
    dup = [ROWS[0], dict(ROWS[0], name="mid-copy")]
    assert _is_png(plot_front(dup, tmp_path / "dup.png"))


def test_plot_hypervolume_writes_png(tmp_path):
    history = [(1, 10.0), (2, 30.0), (3, 30.0), (4, 45.5)]
    out = plot_hypervolume(history, tmp_path / "hv.png")
    assert out == tmp_path / "hv.png" and _is_png(out)
    assert _is_png(plot_hypervolume([(0.0, 12.0)], tmp_path / "hv1.png", xlabel="minutes"))
    assert _is_png(plot_hypervolume([], tmp_path / "hv0.png"))


def test_objectives_constant_is_what_the_defaults_use():
    # The defaults follow raysearch.records.names: iou max, latency_ms min.
    assert [(o.name, o.mode) for o in OBJECTIVES] == [("iou", "max"), ("latency_ms", "min")]


def test_the_default_reference_spans_what_the_search_measured():
    assert default_reference(None, [0.2, None, "x", 0.09, math.nan]) == {"iou": 0.0, "latency_ms": 0.2}
    assert default_reference(33, [0.2, 50]) == {"iou": 0.0, "latency_ms": 33.0}  # a budget wins
    assert default_reference(None, []) == {"iou": 0.0, "latency_ms": DEFAULT_REF_LATENCY_MS}


def test_normalized_hypervolume_by_hand():
    ref = {"iou": 0.0, "latency_ms": 10.0}
    # one point (0.5, 4 ms): (0.5 - 0) x (10 - 4) = 3 of a 1 x 10 box
    assert normalized_hypervolume([P(0.5, 4.0)], ref) == pytest.approx(0.3)
    # two steps: (0.9, 8) and (0.6, 2): 0.9 x 2 + 0.6 x 6 = 5.4 -> 0.54; a duplicate adds nothing
    pts = [P(0.9, 8.0), P(0.6, 2.0), P(0.6, 2.0)]
    assert hypervolume(pts, ref) == pytest.approx(5.4) and normalized_hypervolume(pts, ref) == pytest.approx(0.54)
    # outside the box (slower than the reference, or exactly at it) counts nothing
    assert normalized_hypervolume([P(0.99, 12.0), P(0.99, 10.0)], ref) == 0.0
    # the reference from the data: the slowest point sits on the box's edge
    data = [P(0.9, 0.21), P(0.8, 0.09)]
    auto = default_reference(None, [p["latency_ms"] for p in data])
    assert normalized_hypervolume(data, auto) == pytest.approx(0.8 * (0.21 - 0.09) / 0.21)
    # and the old 1000 ms box could not see latency: both points nearly the same area
    far = {"iou": 0.0, "latency_ms": 1000.0}
    assert normalized_hypervolume(data, far) == pytest.approx((0.9 * (1000 - 0.21) + 0.8 * 0.12) / 1000)


def test_one_dominance_rule_on_costs_for_the_pareto_code_and_the_schedulers():
    from raysearch.records.names import LATENCY_MS, VAL_IOU
    from raysearch.records.pareto import as_costs, costs_dominate
    from raysearch.search.scheduler import nondominated_fronts

    assert as_costs((0.8, 3.0), (VAL_IOU, LATENCY_MS)) == (-0.8, 3.0)  # IoU maximized, latency minimized
    assert costs_dominate((-0.8, 3.0), (-0.7, 3.0)) and not costs_dominate((-0.7, 3.0), (-0.8, 3.0))
    assert not costs_dominate((-0.8, 3.0), (-0.8, 3.0))  # equal: neither
    assert not costs_dominate((-0.9, 4.0), (-0.8, 3.0)) and not costs_dominate((-0.8, 3.0), (-0.9, 4.0))
    assert costs_dominate((1, 2, 3), (1, 2, 4)) and not costs_dominate((1, 2, 3), (0, 2, 4))  # any count
    # the scheduler's fronts follow the same rule: a (0.9, 4) b (0.8, 3) c (0.7, 5): c is dominated by a
    assert nondominated_fronts({"a": (0.9, 4.0), "b": (0.8, 3.0), "c": (0.7, 5.0)}) == [["a", "b"], ["c"]]


def test_a_searchs_hypervolume_in_the_box_of_its_budget_or_of_every_latency_it_measured():
    from raysearch.records.pareto import front_hypervolume

    trained = {"iou": 0.8, "latency_ms": 2.0}
    pruned = {"latency_ms": 10.0}  # measured, never trained: it sets the box, adds no area
    hv = front_hypervolume([trained], [trained, pruned])
    assert hv.reference_latency_ms == 10.0
    assert hv.value == pytest.approx(0.8 * (10.0 - 2.0)) and hv.share == pytest.approx(6.4 / 10.0)
    budget = front_hypervolume([trained], [trained, pruned], max_latency_ms=5.0)
    assert budget.value == pytest.approx(0.8 * 3.0) and budget.share == pytest.approx(2.4 / 5.0)
