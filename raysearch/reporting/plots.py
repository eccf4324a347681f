"""The pictures people look at instead of reading: the IoU / throughput front of a search and
its hypervolume over the trials.

matplotlib's Agg canvas directly (no pyplot, no display, no global backend change); matplotlib is
imported only inside the functions.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from raysearch.records.names import IOU, LATENCY_MS
from raysearch.records.pareto import pareto_front
from raysearch.records.results import Requirement, finite, point_value
from raysearch.storage import write_atomic


def _fps_iou(rows: Sequence[Any]) -> list[tuple[float, float, Any]]:
    """(fps, IoU, row) of the rows with a usable IoU and latency."""
    out = []
    for row in rows:
        iou, lat = point_value(row, IOU.name), point_value(row, LATENCY_MS.name)
        if iou is not None and lat is not None and lat > 0:
            out.append((1000.0 / lat, iou, row))
    return out


def _name(row: Any) -> str | None:
    return row.get("name") if isinstance(row, dict) else getattr(row, "name", None)


def new_figure(width: float = 8.0, height: float = 5.5):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: str | Path, dpi: int = 120) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format="png")
    return write_atomic(path, buf.getvalue())  # a full disk leaves the old picture, not half of a new one


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
        assert best is not None  # the offsets tried are not empty
        _, dx, dy, box = best
        far = abs(dx) > 6 or abs(dy) > 11
        arrow = {"arrowstyle": "-", "color": "0.55", "linewidth": 0.5, "shrinkA": 0, "shrinkB": 3,
                 "relpos": (0.0 if dx >= 0 else 1.0, 0.5)} if far else None
        ax.annotate(name, (x, y), xytext=(dx, dy), ha="left" if dx >= 0 else "right",
                    arrowprops=arrow, **style)
        placed.append(box)


def plot_front(
    rows: Sequence[Any],
    path: str | Path,
    *,
    title: str = "",
    requirement: Requirement = Requirement(),
    stopped: Sequence[Any] = (),
    hypervolume: tuple[float, float] | None = None,
) -> Path:
    """PNG of the candidates in fps / IoU space with the Pareto front; returns ``path``.

    x = frames per second (1000 / latency_ms), y = IoU; every candidate is a dot, the front
    (more fps and more IoU are better) a step line through its points, each labeled with
    its name. With a requirement, the qualifying region (fps >= 1000 / max_latency_ms,
    IoU >= min_iou) is shaded. ``stopped``: trials stopped early, drawn as their own marker at
    their IoU when stopped (not part of the front). ``hypervolume``: (normalized share, reference
    latency ms), written in a corner. Rows without a usable IoU or latency are skipped.
    """
    max_latency_ms, min_iou = requirement.max_latency_ms, requirement.min_iou
    pts, stop_pts = _fps_iou(rows), _fps_iou(stopped)

    fig = new_figure()
    ax = fig.add_subplot(1, 1, 1)
    ax.grid(True, color="0.88", linewidth=0.8)
    ax.set_axisbelow(True)
    ax.set_xlabel("throughput (frames per second = 1000 / latency ms)")
    ax.set_ylabel("IoU (test, foreground)")
    ax.set_title(title or "IoU vs. throughput: candidates and Pareto front")

    fps_limit = 1000.0 / max_latency_ms if max_latency_ms else None
    xs = [p[0] for p in pts + stop_pts] + ([fps_limit] if fps_limit else [])
    ys = [p[1] for p in pts + stop_pts] + ([min_iou] if min_iou is not None else [])
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
            name = _name(row)
            if name is None or (x, y) in seen:  # exact duplicates: label once
                continue
            seen.add((x, y))
            anchors.append((x, y))
            names.append(str(name))
    else:
        ax.text(0.5, 0.5, "no candidate with both IoU and latency", transform=ax.transAxes,
                ha="center", va="center", color="0.4")

    if stop_pts:
        ax.scatter([p[0] for p in stop_pts], [p[1] for p in stop_pts], s=26, marker="x", color="0.45",
                   linewidths=1.0, label=f"stopped early ({len(stop_pts)}; IoU when stopped)", zorder=2)
    if hypervolume is not None:
        share, ref_ms = hypervolume
        ax.text(0.99, 0.02, f"hypervolume {share:.3f} of IoU 0..1 \u00d7 latency 0..{ref_ms:.3g} ms",
                transform=ax.transAxes, ha="right", va="bottom", fontsize=8, color="0.3")
    handles, _ = ax.get_legend_handles_labels()
    if handles:  # below the axes: the plot area stays free for points and labels
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.11), ncol=3, fontsize=8, frameon=False)
    fig.tight_layout()
    if pts:
        _place_labels(fig, ax, anchors, names, [(p[0], p[1]) for p in pts])
    return save_figure(fig, path)


def plot_hypervolume(
    history: Sequence[tuple[float, float]], path: str | Path, xlabel: str = "completed trials",
    ylabel: str = "hypervolume (share of its box)",
) -> Path:
    """PNG of the hypervolume over time/trials from ``(x, hypervolume)`` pairs; returns ``path``.

    Pairs with a missing/NaN value are skipped; the rest are plotted in x order.
    """
    data = sorted(
        (x, y) for x, y in ((finite(a), finite(b)) for a, b in history) if x is not None and y is not None
    )
    fig = new_figure(7.0, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    ax.grid(True, color="0.88", linewidth=0.8)
    ax.set_axisbelow(True)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
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
    return save_figure(fig, path)
