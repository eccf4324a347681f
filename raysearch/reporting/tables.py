"""A search's trials as tables: the console's front table, the CSV file, and the one-line counts."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raysearch.records import names as obj
from raysearch.records.names import FPS, IOU, LATENCY_MS, MACS, OBJECTIVES, PARAMS_TOTAL, Objective
from raysearch.records.pareto import pareto_front
from raysearch.records.results import Requirement, TrialRow, point_value
from raysearch.storage import write_atomic

if TYPE_CHECKING:  # pragma: no cover
    pass


_get = point_value



def _flat(row: Any) -> dict[str, Any]:
    """A row as one flat mapping (a `TrialRow`: its figures, its status and its spec's params)."""
    if not isinstance(row, TrialRow):
        return dict(row)
    spec = row.spec.to_params() if row.spec else {}
    return {"name": row.name, "run_id": row.run_id, "stage": row.stage, "status": row.status,
            obj.IOU.name: row.iou, obj.LATENCY_MS.name: row.latency_ms, **spec, **row.metrics}


# ---- tables ---------------------------------------------------------------------------------
def _best_first(rows: Sequence[Any], objectives: Sequence[Objective]) -> list[int]:
    """Row indices sorted best first by the objectives in order; rows missing the first last."""

    def key(i: int) -> tuple:
        parts = []
        for o in objectives:
            v = _get(rows[i], o.name)
            parts.append((1, 0.0) if v is None else (0, -v if o.mode == "max" else v))
        return (*parts, i)

    return sorted(range(len(rows)), key=key)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def front_table(
    rows: Sequence[Any],
    requirement: Requirement = Requirement(),
    objectives: Sequence[Objective] = OBJECTIVES,
) -> str:
    """Aligned plain-text table of the candidates, best IoU (first objective) first.

    Columns: name, iou, latency_ms, fps (the row's ``fps``, else 1000 / latency), params
    (``params_total``), macs (M), qualifies (yes/no, only with a requirement) and
    pareto (``*`` on the front). Missing values print as ``-``; other keys are ignored.
    """
    on_front = set(pareto_front(rows, objectives))
    constrained = requirement.constrained
    on_device = any(_get(row, obj.IOU_DEVICE) is not None for row in rows)  # --device-iou measured some
    header = ["name", obj.IOU.name, obj.LATENCY_MS.name, obj.FPS, "params", "macs (M)"]
    if on_device:
        header.append(IOU_FROM)
    if constrained:
        header.append(obj.TAG_QUALIFIES)
    header.append("pareto")
    right = {obj.IOU.name, obj.LATENCY_MS.name, obj.FPS, "params", "macs (M)"}

    lines: list[list[str]] = []
    for i in _best_first(rows, objectives):
        row = rows[i]
        name = _flat(row).get("name")
        fps = _get(row, FPS)
        if fps is None and (lat := _get(row, LATENCY_MS.name)):
            fps = 1000.0 / lat
        params = _get(row, PARAMS_TOTAL)
        macs = _get(row, MACS)
        cells = [
            f"#{i}" if name is None else str(name),
            _fmt(_get(row, IOU.name), ".4f"),
            _fmt(_get(row, LATENCY_MS.name), ".2f"),
            _fmt(fps, ".1f"),
            "-" if params is None else f"{int(round(params)):,}",
            _fmt(None if macs is None else macs / 1e6, ",.2f"),
        ]
        if on_device:
            cells.append(_iou_source(row))
        if constrained:
            cells.append("yes" if requirement.qualifies(row) else "no")
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
    if on_device and any(r[header.index(IOU_FROM)] == DISAGREES for r in lines):
        text.append(f"{DISAGREES}: the device's IoU differs from the host onnxruntime's past the tolerance (the "
                    f"candidate is ranked by the device's; {obj.IOU_HOST} is beside it in MLflow)")
    return "\n".join(text)


IOU_FROM = "iou from"
DISAGREES = "device (!= host)"


def _iou_source(row: Any) -> str:
    """Who computed the row's IoU: the device (benchd Predict), flagged when it disagrees, or the host."""
    if _get(row, obj.IOU_DEVICE) is None:
        return "host"
    return DISAGREES if _get(row, obj.DEVICE_IOU_DISAGREES) else "device"


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (Mapping, list, tuple)):
        return json.dumps(value, default=str)
    return value


def write_front_csv(rows: Sequence[Any], path: str | Path, objectives: Sequence[Objective] = OBJECTIVES) -> Path:
    """Write every row (input order) to a CSV and return its path.

    Columns: the union of the rows' keys - ``name`` first (when any row has one), then the
    objectives, then the other keys sorted - and a last ``pareto`` column (1 on the front,
    else 0; a ``pareto`` key of the rows is replaced). Missing values are empty cells; dicts
    and lists are written as JSON.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flat = [_flat(r) for r in rows]
    keys = {str(k) for row in flat for k in row}
    fixed = (["name"] if "name" in keys else []) + [o.name for o in objectives]
    rest = sorted(keys - set(fixed) - {"pareto"})
    columns = fixed + rest + ["pareto"]
    on_front = set(pareto_front(rows, objectives))
    f = io.StringIO(newline="")
    writer = csv.writer(f)
    writer.writerow(columns)
    for i, row in enumerate(flat):
        cells = [_csv_cell(row.get(c)) for c in columns[:-1]]
        writer.writerow([*cells, 1 if i in on_front else 0])
    write_atomic(path, f.getvalue())
    return path


