"""What people read: the tables and files of a search's end, and searches read back from MLflow
(`raysearch pick`, and `raysearch report`'s self-contained HTML page: per search, the front plot,
the table and the prediction overlays of the front, for people who would rather send a file than
open MLflow).
"""

from __future__ import annotations

import base64
import csv
import html
import json
import os
import socket
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raysearch import objectives as obj
from raysearch.models import ModelSpec
from raysearch.objectives import FPS, IOU, LATENCY_MS, MACS, OBJECTIVES, PARAMS_TOTAL, Objective
from raysearch.pareto import default_reference, dominates, hypervolume, normalized_hypervolume, pareto_front
from raysearch.plots import plot_front, plot_hypervolume
from raysearch.results import STATUSES, STOPPED, TRAINED, Requirement, TrialRow, candidates, point_value

if TYPE_CHECKING:  # pragma: no cover
    from mlflow.tracking import MlflowClient

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per run is noise here

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
    header = ["name", "iou", "latency_ms", "fps", "params", "macs (M)"]
    if constrained:
        header.append("qualifies")
    header.append("pareto")
    right = {"iou", "latency_ms", "fps", "params", "macs (M)"}

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
    return "\n".join(text)


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
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for i, row in enumerate(flat):
            cells = [_csv_cell(row.get(c)) for c in columns[:-1]]
            writer.writerow([*cells, 1 if i in on_front else 0])
    return path


# ---- the end of a search (on the driver) ------------------------------------------------------
def status_counts(rows: Sequence[TrialRow]) -> str:
    n = {s: sum(1 for r in rows if r.status == s) for s in STATUSES}
    return (f"{len(candidates(list(rows)))} trained to the end, {n['pruned_by_latency']} pruned by latency before "
            f"training, {n['stopped_early']} stopped early by the scheduler, {n['duplicate']} repeated "
            f"configurations (not retrained)" + (f", {n['failed']} failed" if n["failed"] else ""))


def stopped_near_front(rows: Sequence[TrialRow], front: Sequence[TrialRow]) -> str:
    """How many stopped trials sit beside the final front (within its latency range), and how many
    of those the front did not dominate when they were stopped: what early stopping may have cut."""
    stopped = [r for r in rows if r.status == STOPPED and r.iou is not None and r.latency_ms is not None]
    if not stopped or not front:
        return ""
    lo, hi = min(r.latency_ms for r in front), max(r.latency_ms for r in front)
    near = [r for r in stopped if lo <= r.latency_ms <= hi]
    free = [r for r in near if not any(dominates(f, r) for f in front)]
    return (f"{len(near)} of the {len(stopped)} stopped trials lie within the front's latency range "
            f"({lo:.3g}-{hi:.3g} ms); {len(free)} of them were not dominated by the front when stopped")


def finish_search(client: "MlflowClient", parent_id: str, stage: str, rows: list[TrialRow], hv_history: list,
                  requirement: Requirement, hv_latency: float | None) -> tuple[list[TrialRow], float]:
    """Tag every child (Pareto-optimal, qualifies), log the front's figures and files on the
    parent (front.csv, front.png, hypervolume.png, candidates.txt), print the table; returns
    (the front, best IoU first; the final hypervolume). ``hv_latency``: the reference latency
    (None: the largest measured)."""
    from mlflow.entities import Metric

    cands = candidates(rows)
    front = [cands[i] for i in pareto_front(cands)]
    front_ids = {r.run_id for r in front}
    for r in rows:
        client.set_tag(r.run_id, obj.TAG_PARETO, obj.flag(r.run_id in front_ids))
        client.set_tag(r.run_id, obj.TAG_QUALIFIES, obj.flag(r.is_candidate() and requirement.qualifies(r)))
    ref = default_reference(hv_latency, [r.latency_ms for r in rows])
    hv, share = hypervolume(cands, ref), normalized_hypervolume(cands, ref)
    now = int(time.time() * 1000)
    client.log_batch(parent_id, metrics=[Metric(k, float(v), now, 0) for k, v in (
        (obj.FINAL_HYPERVOLUME, hv), (obj.FINAL_HYPERVOLUME_NORMALIZED, share),
        (obj.HV_REFERENCE_LATENCY, ref[LATENCY_MS.name]), (obj.N_PARETO, len(front)))])
    table = front_table(cands, requirement) if cands else "(no trial finished training)"
    table += "\n" + status_counts(rows)
    if near := stopped_near_front(rows, front):
        table += "\n" + near
    if requirement.constrained and cands and not any(requirement.qualifies(r) for r in front):
        closest = sorted(cands, key=lambda r: len(requirement.misses(r)))[:3]
        table += "\nnothing qualifies; the closest:\n" + "\n".join(
            f"  {r.name}: {', '.join(requirement.misses(r))}" for r in closest)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if rows:
            write_front_csv(rows, tmp / "front.csv")
            plot_front(cands or rows, tmp / "front.png", title=f"{stage}: IoU vs frames per second",
                       requirement=requirement, stopped=[r for r in rows if r.status == STOPPED],
                       hypervolume=(share, ref[LATENCY_MS.name]))
        if hv_history:
            plot_hypervolume([(h[0], h[3] if len(h) > 3 else h[2]) for h in hv_history], tmp / "hypervolume.png")
        (tmp / "candidates.txt").write_text(table)
        client.log_artifacts(parent_id, str(tmp))
    print(f"\n{stage}: {len(rows)} trials, {len(front)} on the Pareto front, hypervolume {share:.3f} of the box "
          f"IoU 0..1 x latency 0..{ref[LATENCY_MS.name]:.3g} ms ({hv:.4g} IoU x ms)")
    print(table)
    front.sort(key=lambda r: -r.iou)
    return front, hv


# ---- searches read back from MLflow -----------------------------------------------------------
def searches(client: MlflowClient, experiment: str, run_id: str | None = None,
             optimization: str | None = None) -> list:
    """Parent runs (one per search) of the experiment, newest first; or the one ``run_id``; or
    the stage searches of one `raysearch optimize` run (oldest first: the order they ran)."""
    if run_id:
        return [client.get_run(run_id)]
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ValueError(f"no MLflow experiment named {experiment!r} at {client.tracking_uri}")
    if optimization:
        found = client.search_runs([exp.experiment_id], f"tags.`{obj.TAG_OPTIMIZATION}` = '{optimization}' "
                                                        f"and tags.`{obj.TAG_SEARCH}` != ''",
                                   order_by=["attributes.start_time ASC"])
        if not found:
            raise ValueError(f"no search of an optimization named {optimization!r} in experiment {experiment!r}")
        return found
    return client.search_runs([exp.experiment_id], f"tags.`{obj.TAG_SEARCH}` != ''",
                              order_by=["attributes.start_time DESC"])


def interruption(parent) -> str | None:
    """A line saying the search was interrupted (KILLED, or RUNNING with its driver gone) and how
    to resume it; None for a search that finished, or that is still running."""
    info, tags = parent.info, parent.data.tags
    if info.status == "RUNNING":
        host, _, pid = tags.get(obj.TAG_DRIVER, "").rpartition(":")
        if host != socket.gethostname() or not pid.isdigit():
            where = f" on {host}" if host else ""
            return (f"search {info.run_name} is RUNNING{where} since {_when(info.start_time)}: still running, or "
                    f"interrupted without a word (then resume it: {resume_command(parent)})")
        if _alive(int(pid)):
            return None
        what = f"interrupted (its driver, pid {pid}, is gone; the run was left RUNNING) after {_when(info.start_time)}"
    elif info.status == "KILLED":
        what = f"interrupted at {_when(info.end_time or info.start_time)}"
    else:
        return None
    return f"search {info.run_name} was {what}; its candidates so far count; resume it with: {resume_command(parent)}"


def resume_command(parent) -> str:
    """The command line that started the search, with ``--resume`` (and ``--name`` of a stage)."""
    import shlex

    tags = parent.data.tags
    name = tags.get(obj.TAG_SEARCH, parent.info.run_name)
    cmd = tags.get(obj.TAG_COMMAND)
    if not cmd:  # a search logged before the command was recorded
        return f"its command again with --resume --name {name}"
    words = [w for w in shlex.split(cmd) if w != "--resume"]
    if obj.TAG_OPTIMIZATION not in tags and "--name" not in words:  # optimize resumes by its own state
        words += ["--name", name]
    return shlex.join([*words, "--resume"])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _when(ms: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000)) if ms else "?"


def row_from_run(run, search: str = "") -> TrialRow:
    """A child run read back as the `TrialRow` the search logged (status from its tags)."""
    t, m = run.data.tags, run.data.metrics
    status = next((s for s in (obj.PRUNED, obj.STOPPED, obj.DUPLICATE) if t.get(s) == "true"), TRAINED)
    if run.info.status == "FAILED":
        status = "failed"
    try:
        spec = ModelSpec.from_params(run.data.params)
    except ValueError:  # not a trial of ours (or an invalid config): never a candidate
        spec = None
    return TrialRow(name=run.info.run_name, run_id=run.info.run_id, spec=spec, status=status,
                    iou=m.get(IOU.name), latency_ms=m.get(LATENCY_MS.name),
                    metrics={k: v for k, v in m.items() if k not in (IOU.name, LATENCY_MS.name)},
                    stage=t.get(obj.TAG_STAGE, ""), search=search, device_name=t.get(obj.TAG_DEVICE_NAME, ""),
                    device_class=t.get(obj.TAG_DEVICE_CLASS, ""), artifact_uri=run.info.artifact_uri)


def candidates_of(client: "MlflowClient", parent, device_class: str | None = None) -> list[TrialRow]:
    """The candidates of a search (trained to the end), measured on ``device_class`` when given."""
    kids = client.search_runs([parent.info.experiment_id], f"tags.`{obj.TAG_PARENT}` = '{parent.info.run_id}' "
                                                           "and attributes.status = 'FINISHED'")
    rows = [row_from_run(k, parent.info.run_name) for k in kids]
    return [r for r in rows if r.is_candidate() and (device_class is None or r.device_class == device_class)]


def search_hypervolume(parent, rows: Sequence[TrialRow]) -> tuple[float, float]:
    """(normalized hypervolume, reference latency ms) of a search: as its parent run logged them,
    else (a search logged before they were) from its candidates, in the box of their latencies."""
    m = parent.data.metrics
    if obj.FINAL_HYPERVOLUME_NORMALIZED in m and obj.HV_REFERENCE_LATENCY in m:
        return m[obj.FINAL_HYPERVOLUME_NORMALIZED], m[obj.HV_REFERENCE_LATENCY]
    ref = default_reference(None, [r.latency_ms for r in rows])
    return normalized_hypervolume(rows, ref), ref[LATENCY_MS.name]


def onnx_path(client: "MlflowClient", row: TrialRow) -> str:
    """A local path of the candidate's model.onnx (downloaded when the store is remote)."""
    uri = row.artifact_uri or client.get_run(row.run_id).info.artifact_uri
    if uri.startswith("file://") or uri.startswith("/"):
        local = Path(uri.removeprefix("file://")) / "model.onnx"
        if local.is_file():
            return str(local)
    return client.download_artifacts(row.run_id, "model.onnx")


def pick(client: "MlflowClient", experiment: str, requirement: Requirement, run_id: str | None = None,
         optimization: str | None = None, device_class: str | None = None) -> list[TrialRow]:
    """Qualifying candidates of every search (or of ``run_id``, or of one optimization; measured on
    ``device_class`` when given), Pareto-optimal among all of them, best IoU first, with the path
    of their ONNX file."""
    rows = [r for p in searches(client, experiment, run_id, optimization) for r in candidates_of(client, p, device_class)]
    ok = [r for r in rows if requirement.qualifies(r)]
    front = [ok[i] for i in pareto_front(ok)]
    for r in front:
        r.onnx = onnx_path(client, r)
    return front


def _img(path: Path, jpeg: bool = False) -> str:
    """An <img> with the file embedded; overlays go in as JPEG (a tenth of the PNG's size)."""
    if jpeg:
        import cv2

        ok, buf = cv2.imencode(".jpg", cv2.imread(str(path)), [cv2.IMWRITE_JPEG_QUALITY, 85])
        return f'<img src="data:image/jpeg;base64,{base64.b64encode(buf.tobytes()).decode()}">'
    return f'<img src="data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}">'


def write_html(client: "MlflowClient", experiment: str, out: str | Path, *, run_id: str | None = None,
               optimization: str | None = None, requirement: Requirement = Requirement(), overlays: int = 2,
               preface: str = "", device_class: str | None = None) -> Path:
    """One HTML file with everything embedded (plots and overlays as data URIs); ``preface`` is
    HTML put before the searches (an optimization's summary)."""
    out = Path(out)
    parts = [f"<h1>raysearch report: {html.escape(optimization or experiment)}</h1>",
             f"<p>MLflow: {html.escape(client.tracking_uri)}, experiment {html.escape(experiment)}"
             + (f"; requirement: {html.escape(requirement.describe())}" if requirement.constrained else "")
             + "</p>", preface]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for n, parent in enumerate(searches(client, experiment, run_id, optimization)):
            rows = candidates_of(client, parent, device_class)
            stage = parent.data.tags.get(obj.TAG_STAGE, "")
            parts.append(f"<h2>{html.escape(parent.info.run_name)} ({html.escape(stage)}, "
                         f"{html.escape(parent.data.tags.get(obj.TAG_MODE, ''))}) &mdash; {len(rows)} candidates</h2>")
            note = interruption(parent)
            if note:
                parts.append(f"<p class='warn'><b>Interrupted.</b> {html.escape(note)}</p>")
            if not rows:
                parts.append("<p>No trial of this search trained to the end.</p>")
                continue
            hv = search_hypervolume(parent, rows)
            parts.append(f"<p>Hypervolume {hv[0]:.3f} of the box IoU 0..1 &times; latency 0..{hv[1]:.3g} ms.</p>")
            png = plot_front(rows, tmp / f"front{n}.png", title=f"{parent.info.run_name}: IoU vs frames per second",
                             requirement=requirement, hypervolume=hv)
            parts.append(_img(png))
            parts.append(f"<pre>{html.escape(front_table(rows, requirement))}</pre>")
            for i in pareto_front(rows):
                r = rows[i]
                parts.append(f"<h3>{html.escape(r.name)}: IoU {r.iou:.4f}, {r.latency_ms:.2f} ms "
                             f"(run {r.run_id})</h3>")
                dst = tmp / r.run_id
                dst.mkdir()
                try:
                    files = sorted(Path(client.download_artifacts(r.run_id, "overlays", str(dst))).glob("*.png"))
                except Exception:  # an older run without overlays: the table still stands
                    files = []
                parts.extend(_img(f, jpeg=True) for f in files[:overlays])
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "img{max-width:100%;display:block;margin:.5em 0}.warn{background:#fff3cd;padding:.6em}pre{background:#f6f6f6;padding:1em;overflow-x:auto}")
    out.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>raysearch report</title>"
                   f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")
    return out


def rows_json(rows: Sequence[TrialRow]) -> str:
    return json.dumps([r.summary() for r in rows], indent=2)
