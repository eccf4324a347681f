"""Pareto front, hypervolume, constraint checks and reports for the IoU / latency trade-off.

Directions are never hard-coded: every function takes the objectives (``OBJECTIVES`` from
:mod:`raysearch.objectives` by default) and reads each one's ``mode`` ("max" or "min").
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

Hypervolume and its fixed reference point
    The hypervolume is the area of objective space dominated by the points and bounded by a
    reference point: for IoU (max) and latency (min) the area of the union of the rectangles
    ``[ref_iou, iou] x [latency, ref_latency]``, in IoU x ms. It grows whenever a new point
    improves the front and never shrinks, which makes it the one-number progress measure of a
    multi-objective search.

    The reference point is FIXED rather than derived from the data (e.g. the worst point seen
    so far): a data-dependent reference moves as trials complete, so the hypervolume of one
    search at two moments, or of two searches, would be measured against different boxes and
    could not be compared. :func:`default_reference` gives IoU 0.0 (the worst possible IoU,
    so every model with some overlap counts) and latency = the search's latency budget
    ``max_latency_ms`` when there is one (only models that meet the budget add area), else
    ``DEFAULT_REF_LATENCY_MS`` = 1000 ms (1 frame/s, slower than any useful candidate).
    Hypervolumes are comparable between searches that use the same reference, i.e. the same
    latency budget.

Plots use matplotlib's Agg canvas directly (no pyplot, no display, no global backend change);
matplotlib is imported only by the plotting functions.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from raysearch.objectives import FPS, IOU, LATENCY_MS, OBJECTIVES, Objective

#: Latency of the reference point when the search has no latency budget (1 frame/s).
DEFAULT_REF_LATENCY_MS = 1000.0
#: IoU of the reference point: the worst possible IoU.
DEFAULT_REF_IOU = 0.0

__all__ = [
    "DEFAULT_REF_IOU",
    "DEFAULT_REF_LATENCY_MS",
    "default_reference",
    "dominates",
    "front_table",
    "hypervolume",
    "misses",
    "pareto_front",
    "plot_front",
    "plot_hypervolume",
    "qualifies",
    "write_front_csv",
]


# --------------------------------------------------------------------------- values


def _num(value: Any) -> float | None:
    """``value`` as a finite float, or None (missing, None, not a number, NaN, inf)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _get(point: Mapping[str, Any], key: str) -> float | None:
    return _num(point.get(key)) if isinstance(point, Mapping) else None


def _costs(point: Mapping[str, Any], objectives: Sequence[Objective]) -> tuple[float, ...] | None:
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


def _fps(row: Mapping[str, Any]) -> float | None:
    """Frames per second: 1000 / latency_ms when the latency is known, else the row's ``fps``."""
    lat = _get(row, LATENCY_MS.name)
    if lat is not None:
        return 1000.0 / lat if lat > 0 else None
    fps = _get(row, FPS)
    return fps if fps is not None and fps > 0 else None


# --------------------------------------------------------------------------- front


def dominates(a: Mapping[str, Any], b: Mapping[str, Any], objectives: Sequence[Objective] = OBJECTIVES) -> bool:
    """True when ``a`` is at least as good as ``b`` everywhere and strictly better somewhere.

    An incomplete point (a missing/NaN value) neither dominates nor is dominated.
    """
    objectives = _check_objectives(objectives)
    ca, cb = _costs(a, objectives), _costs(b, objectives)
    if ca is None or cb is None:
        return False
    return all(x <= y for x, y in zip(ca, cb)) and ca != cb


def pareto_front(
    points: Sequence[Mapping[str, Any]], objectives: Sequence[Objective] = OBJECTIVES
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


def default_reference(max_latency_ms: float | None = None) -> dict[str, float]:
    """The fixed reference point: IoU 0.0 and the latency budget (``DEFAULT_REF_LATENCY_MS`` if none)."""
    if max_latency_ms is None:
        latency = DEFAULT_REF_LATENCY_MS
    else:
        latency = _num(max_latency_ms)
        if latency is None or latency <= 0:
            raise ValueError(f"max_latency_ms must be a positive number, got {max_latency_ms!r}")
    return {IOU.name: DEFAULT_REF_IOU, LATENCY_MS.name: float(latency)}


def hypervolume(
    points: Sequence[Mapping[str, Any]],
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


# --------------------------------------------------------------------------- constraints


def _above(value: float, limit: float, start: int) -> str:
    """``value`` with enough decimals that the printed number is visibly > ``limit``."""
    for d in range(start, 10):
        text = f"{value:.{d}f}"
        if float(text) > limit:
            return text
    return repr(value)


def _below(value: float, limit: float, start: int) -> str:
    for d in range(start, 10):
        text = f"{value:.{d}f}"
        if float(text) < limit:
            return text
    return repr(value)


def misses(
    point: Mapping[str, Any], max_latency_ms: float | None = None, min_iou: float | None = None
) -> list[str]:
    """Why ``point`` misses the constraints, one readable reason each (empty: it qualifies).

    The bounds are inclusive: latency == max_latency_ms and IoU == min_iou qualify. A missing
    or NaN value misses the constraint on it; a constraint that is None is not checked.
    """
    reasons: list[str] = []
    if max_latency_ms is not None:
        lat = _get(point, LATENCY_MS.name)
        if lat is None:
            reasons.append(f"latency unknown (budget {max_latency_ms:g} ms)")
        elif lat > max_latency_ms:
            reasons.append(f"latency {_above(lat, max_latency_ms, 1)} ms > {max_latency_ms:g} ms")
    if min_iou is not None:
        iou = _get(point, IOU.name)
        if iou is None:
            reasons.append(f"IoU unknown (minimum {min_iou:g})")
        elif iou < min_iou:
            reasons.append(f"IoU {_below(iou, min_iou, 3)} < {min_iou:g}")
    return reasons


def qualifies(point: Mapping[str, Any], max_latency_ms: float | None = None, min_iou: float | None = None) -> bool:
    """True when the point meets every given constraint (see :func:`misses`)."""
    return not misses(point, max_latency_ms, min_iou)


# --------------------------------------------------------------------------- reports


def _best_first(rows: Sequence[Mapping[str, Any]], objectives: Sequence[Objective]) -> list[int]:
    """Row indices sorted best first by the objectives in order; rows missing the first last."""

    def key(i: int) -> tuple:
        parts = []
        for obj in objectives:
            v = _get(rows[i], obj.name)
            parts.append((1, 0.0) if v is None else (0, -v if obj.mode == "max" else v))
        return (*parts, i)

    return sorted(range(len(rows)), key=key)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def front_table(
    rows: Sequence[Mapping[str, Any]],
    max_latency_ms: float | None = None,
    min_iou: float | None = None,
    objectives: Sequence[Objective] = OBJECTIVES,
    label_key: str = "name",
) -> str:
    """Aligned plain-text table of the candidates, best IoU (first objective) first.

    Columns: name, iou, latency_ms, fps (the row's ``fps``, else 1000 / latency), params
    (``params_total``), macs (M), qualifies (yes/no, only when a constraint is given) and
    pareto (``*`` on the front). Missing values print as ``-``; other keys are ignored.
    """
    objectives = _check_objectives(objectives)
    on_front = set(pareto_front(rows, objectives))
    constrained = max_latency_ms is not None or min_iou is not None
    header = ["name", "iou", "latency_ms", "fps", "params", "macs (M)"]
    if constrained:
        header.append("qualifies")
    header.append("pareto")
    right = {"iou", "latency_ms", "fps", "params", "macs (M)"}

    lines: list[list[str]] = []
    for i in _best_first(rows, objectives):
        row = rows[i]
        name = row.get(label_key)
        fps = _get(row, FPS)
        if fps is None:
            fps = _fps(row)
        params = _get(row, "params_total")
        macs = _get(row, "macs")
        cells = [
            f"#{i}" if name is None else str(name),
            _fmt(_get(row, IOU.name), ".4f"),
            _fmt(_get(row, LATENCY_MS.name), ".2f"),
            _fmt(fps, ".1f"),
            "-" if params is None else f"{int(round(params)):,}",
            _fmt(None if macs is None else macs / 1e6, ",.2f"),
        ]
        if constrained:
            cells.append("yes" if qualifies(row, max_latency_ms, min_iou) else "no")
        cells.append("*" if i in on_front else "")
        lines.append(cells)

    widths = [max(len(h), *(len(r[c]) for r in lines)) if lines else len(h) for c, h in enumerate(header)]

    def render(cells: list[str]) -> str:
        out = [
            cell.rjust(w) if h in right else cell.ljust(w) for cell, w, h in zip(cells, widths, header)
        ]
        return "  ".join(out).rstrip()

    text = [render(header), "  ".join("-" * w for w in widths)]
    text += [render(r) for r in lines]
    if not lines:
        text.append("(no candidates)")
    return "\n".join(text)


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (Mapping, list, tuple)):
        return json.dumps(value, default=str)
    return value


def write_front_csv(
    rows: Sequence[Mapping[str, Any]], path: str | Path, objectives: Sequence[Objective] = OBJECTIVES
) -> Path:
    """Write every row (input order) to a CSV and return its path.

    Columns: the union of the rows' keys - ``name`` first (when any row has one), then the
    objectives, then the other keys sorted - and a last ``pareto`` column (1 on the front,
    else 0; a ``pareto`` key of the rows is replaced). Missing values are empty cells; dicts
    and lists are written as JSON.
    """
    objectives = _check_objectives(objectives)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = {str(k) for row in rows for k in row}
    fixed = (["name"] if "name" in keys else []) + [o.name for o in objectives]
    rest = sorted(keys - set(fixed) - {"pareto"})
    columns = fixed + rest + ["pareto"]
    on_front = set(pareto_front(rows, objectives))
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for i, row in enumerate(rows):
            cells = [_csv_cell(row.get(c)) for c in columns[:-1]]
            writer.writerow([*cells, 1 if i in on_front else 0])
    return path


# --------------------------------------------------------------------------- plots


def _figure(width: float = 8.0, height: float = 5.5):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | Path, dpi: int = 120) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, format="png")
    return path


def _padded(lo: float, hi: float, frac: float = 0.08, min_span: float = 1e-3) -> tuple[float, float]:
    """Axis limits around [lo, hi] with a margin; a single value gets +-max(min_span, 5 %)."""
    if hi - lo < min_span:
        half = max(min_span, 0.05 * abs(hi))
        mid = (lo + hi) / 2
        return mid - half, mid + half
    pad = frac * (hi - lo)
    return lo - pad, hi + pad


def _overlap(a, b) -> float:
    """Overlap area (pixels^2) of two matplotlib Bboxes."""
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return w * h if w > 0 and h > 0 else 0.0


#: Label offsets (points) tried in order: upper right first (beyond the front nothing is
#: plotted), then around the point, then further away with a leader line.
_LABEL_OFFSETS = [
    (6, 4), (6, -11), (-6, 4), (-6, -11), (0, 9), (0, -16),
    (10, 14), (10, -22), (-10, 14), (-10, -22), (14, 24), (14, -32), (-14, 24), (-14, -32),
    (18, 36), (18, -44), (-18, 36), (-18, -44),
]


def _place_labels(fig, ax, anchors, names, obstacles_xy, extra_obstacles=()) -> None:
    """Annotate ``anchors`` (data coords) with ``names`` where they overlap the least.

    Greedy: each label takes the first offset in ``_LABEL_OFFSETS`` that stays inside the axes
    and overlaps no placed label, no marker (``obstacles_xy``) and no ``extra_obstacles``
    (pixel Bboxes, e.g. the legend); failing that, the offset with the smallest overlap.
    """
    from matplotlib.transforms import Bbox

    renderer = fig.canvas.get_renderer()
    axbox = ax.get_window_extent(renderer)
    r = 4.0 * fig.dpi / 72.0  # marker half-size, pixels
    markers = [
        Bbox.from_extents(px - r, py - r, px + r, py + r) for px, py in ax.transData.transform(obstacles_xy)
    ] if len(obstacles_xy) else []
    placed: list = []
    style = {
        "textcoords": "offset points", "fontsize": 7, "color": "0.15", "zorder": 5,
        "annotation_clip": False, "va": "baseline",
        "bbox": {"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8},
    }
    for (x, y), name in zip(anchors, names):
        probe = ax.annotate(name, (x, y), xytext=(6, 4), **style)
        best = None
        for dx, dy in _LABEL_OFFSETS:
            probe.xyann = (dx, dy)
            probe.set_ha("left" if dx >= 0 else "right")
            box = probe.get_window_extent(renderer)
            outside = box.width * box.height - _overlap(box, axbox)
            cost = 1000.0 * outside
            cost += 100.0 * sum(_overlap(box, b) for b in placed)
            cost += 100.0 * sum(_overlap(box, b) for b in extra_obstacles)
            cost += sum(_overlap(box, b) for b in markers)
            cost += 0.01 * (abs(dx) + abs(dy))  # prefer near offsets among equals
            if best is None or cost < best[0]:
                best = (cost, dx, dy, box)
            if cost < 1.0:
                break
        probe.remove()
        _, dx, dy, box = best
        far = abs(dx) > 6 or abs(dy) > 11
        arrow = {"arrowstyle": "-", "color": "0.55", "linewidth": 0.5, "shrinkA": 0, "shrinkB": 3,
                 "relpos": (0.0 if dx >= 0 else 1.0, 0.5)} if far else None
        ax.annotate(name, (x, y), xytext=(dx, dy), ha="left" if dx >= 0 else "right",
                    arrowprops=arrow, **style)
        placed.append(box)


def plot_front(
    rows: Sequence[Mapping[str, Any]],
    path: str | Path,
    *,
    title: str = "",
    max_latency_ms: float | None = None,
    min_iou: float | None = None,
    label_key: str = "name",
) -> Path:
    """PNG of the candidates in fps / IoU space with the Pareto front; returns ``path``.

    x = frames per second (1000 / latency_ms), y = IoU; every candidate is a dot, the front
    (more fps and more IoU are better) a step line through its points, each labeled with
    ``row[label_key]``. With constraints, the qualifying region (fps >= 1000 / max_latency_ms,
    IoU >= min_iou) is shaded. Rows without a usable IoU or latency are skipped.
    """
    pts = []  # (fps, iou, row)
    for row in rows:
        iou, lat = _get(row, IOU.name), _get(row, LATENCY_MS.name)
        if iou is None or lat is None or lat <= 0:
            continue
        pts.append((1000.0 / lat, iou, row))

    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    ax.grid(True, color="0.88", linewidth=0.8)
    ax.set_axisbelow(True)
    ax.set_xlabel("throughput (frames per second = 1000 / latency ms)")
    ax.set_ylabel("IoU (test, foreground)")
    ax.set_title(title or "IoU vs. throughput: candidates and Pareto front")

    fps_limit = 1000.0 / max_latency_ms if max_latency_ms else None
    xs = [p[0] for p in pts] + ([fps_limit] if fps_limit else [])
    ys = [p[1] for p in pts] + ([min_iou] if min_iou is not None else [])
    if xs:
        x0, x1 = _padded(min(xs), max(xs), min_span=1.0)
        ax.set_xlim(max(0.0, x0), x1)
    if ys:
        ax.set_ylim(*_padded(min(ys), max(ys), min_span=0.01))

    if fps_limit is not None or min_iou is not None:
        (xl0, xl1), (yl0, yl1) = ax.get_xlim(), ax.get_ylim()
        rx0 = fps_limit if fps_limit is not None else xl0
        ry0 = min_iou if min_iou is not None else yl0
        parts = ([f"fps \u2265 {fps_limit:.3g} ({max_latency_ms:g} ms)"] if fps_limit is not None else []) + (
            [f"IoU \u2265 {min_iou:g}"] if min_iou is not None else []
        )
        ax.fill_between(
            [rx0, xl1], ry0, yl1, color="tab:green", alpha=0.10, linewidth=0,
            label="qualifying: " + ", ".join(parts), zorder=0,
        )
        if fps_limit is not None:
            ax.axvline(fps_limit, color="tab:green", linestyle="--", linewidth=1, alpha=0.8, zorder=1)
        if min_iou is not None:
            ax.axhline(min_iou, color="tab:green", linestyle="--", linewidth=1, alpha=0.8, zorder=1)
        ax.set_xlim(xl0, xl1)
        ax.set_ylim(yl0, yl1)

    if pts:
        ax.scatter(
            [p[0] for p in pts], [p[1] for p in pts], s=22, color="tab:blue", alpha=0.55,
            edgecolors="none", label=f"candidates ({len(pts)})", zorder=2,
        )
        # Front in fps/IoU space (both maximized) = the IoU/latency front of the same points.
        front = pareto_front([{IOU.name: p[1], LATENCY_MS.name: 1000.0 / p[0]} for p in pts])
        fpts = sorted((pts[i] for i in front), key=lambda p: (p[0], -p[1]))
        fx, fy = [p[0] for p in fpts], [p[1] for p in fpts]
        # steps-pre: from each point drop to the next point's IoU, then go right to it: the
        # boundary of the region the front dominates.
        ax.plot(fx, fy, drawstyle="steps-pre", color="tab:red", linewidth=1.6, alpha=0.9, zorder=3)
        ax.scatter(
            fx, fy, s=42, color="tab:red", edgecolors="white", linewidths=0.8,
            label=f"Pareto front ({len(fpts)})", zorder=4,
        )
        anchors, names, seen = [], [], set()
        for x, y, row in fpts:
            name = row.get(label_key)
            if name is None or (x, y) in seen:  # exact duplicates: label once
                continue
            seen.add((x, y))
            anchors.append((x, y))
            names.append(str(name))
    else:
        ax.text(0.5, 0.5, "no candidate with both IoU and latency", transform=ax.transAxes,
                ha="center", va="center", color="0.4")

    handles, _ = ax.get_legend_handles_labels()
    if handles:  # below the axes: the plot area stays free for points and labels
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.11), ncol=3, fontsize=8, frameon=False)
    fig.tight_layout()
    if pts:
        _place_labels(fig, ax, anchors, names, [(p[0], p[1]) for p in pts])
    return _save(fig, path)


def plot_hypervolume(
    history: Sequence[tuple[float, float]], path: str | Path, xlabel: str = "completed trials"
) -> Path:
    """PNG of the hypervolume over time/trials from ``(x, hypervolume)`` pairs; returns ``path``.

    Pairs with a missing/NaN value are skipped; the rest are plotted in x order.
    """
    data = sorted(
        (x, y) for x, y in ((_num(a), _num(b)) for a, b in history) if x is not None and y is not None
    )
    fig = _figure(7.0, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    ax.grid(True, color="0.88", linewidth=0.8)
    ax.set_axisbelow(True)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("hypervolume (IoU \u00d7 ms)")
    ax.set_title("Hypervolume of the Pareto front")
    if data:
        xs, ys = [d[0] for d in data], [d[1] for d in data]
        ax.plot(xs, ys, drawstyle="steps-post", color="tab:purple", linewidth=1.6)
        if len(xs) <= 80:
            ax.scatter(xs, ys, s=14, color="tab:purple", zorder=3)
        ax.set_xlim(*_padded(min(xs), max(xs), frac=0.03, min_span=1.0))
        ax.set_ylim(*_padded(min(ys), max(ys), frac=0.12, min_span=1e-6))
        ax.annotate(f"{ys[-1]:.4g}", (xs[-1], ys[-1]), xytext=(-4, -12), textcoords="offset points",
                    ha="right", fontsize=8, color="tab:purple")
    else:
        ax.text(0.5, 0.5, "no hypervolume recorded yet", transform=ax.transAxes,
                ha="center", va="center", color="0.4")
    fig.tight_layout()
    return _save(fig, path)
