"""Reading searches back from MLflow: the candidates of an experiment (`raysearch pick`) and a
self-contained HTML report (`raysearch report`) for people who would rather send a file than
open MLflow: per stage, the front plot, the table and the prediction overlays of the front.
"""

from __future__ import annotations

import base64
import html
import json
import os
import tempfile
from pathlib import Path

from mlflow.tracking import MlflowClient

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per run is noise here

from raysearch import objectives as obj
from raysearch.pareto import front_table, pareto_front, plot_front, qualifies

_PARAMS = ("arch", "a", "t", "r", "pp", "input_hw", "in_channels", "precision")


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
        found = client.search_runs([exp.experiment_id], f"tags.`raysearch.optimization` = '{optimization}' "
                                                        "and tags.`raysearch.search` != ''",
                                   order_by=["attributes.start_time ASC"])
        if not found:
            raise ValueError(f"no search of an optimization named {optimization!r} in experiment {experiment!r}")
        return found
    return client.search_runs([exp.experiment_id], "tags.`raysearch.search` != ''",
                              order_by=["attributes.start_time DESC"])


def candidates(client: MlflowClient, parent, device_class: str | None = None) -> list[dict]:
    """Trials of a search that trained to the end (not pruned, not stopped, not repeats), measured
    on ``device_class`` when given."""
    kids = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    rows = []
    for k in kids:
        t, m = k.data.tags, k.data.metrics
        if k.info.status != "FINISHED" or obj.IOU.name not in m or obj.LATENCY_MS.name not in m:
            continue
        if t.get("pruned_by_latency") == "true" or t.get("stopped_early") == "true" or t.get("duplicate") == "true":
            continue
        if device_class is not None and t.get("device_class") != device_class:
            continue
        row = {"name": k.info.run_name, "run_id": k.info.run_id, "stage": t.get("stage", ""),
               "search": parent.info.run_name, "device": t.get("device_name", ""),
               "device_class": t.get("device_class", ""), **m}
        row.update({p: k.data.params.get(p) for p in _PARAMS})
        row["artifact_uri"] = k.info.artifact_uri
        rows.append(row)
    return rows


def onnx_path(client: MlflowClient, row: dict) -> str:
    """A local path of the candidate's model.onnx (downloaded when the store is remote)."""
    uri = row["artifact_uri"]
    if uri.startswith("file://") or uri.startswith("/"):
        local = Path(uri.removeprefix("file://")) / "model.onnx"
        if local.is_file():
            return str(local)
    return client.download_artifacts(row["run_id"], "model.onnx")


def pick(client: MlflowClient, experiment: str, max_latency_ms: float | None, min_iou: float | None,
         run_id: str | None = None, optimization: str | None = None, device_class: str | None = None) -> list[dict]:
    """Qualifying candidates of every search (or of ``run_id``, or of one optimization; measured on
    ``device_class`` when given), Pareto-optimal among all of them, best IoU first, with the path
    of their ONNX file."""
    rows = [r for p in searches(client, experiment, run_id, optimization) for r in candidates(client, p, device_class)]
    ok = [r for r in rows if qualifies(r, max_latency_ms, min_iou)]
    front = [ok[i] for i in pareto_front(ok)]
    for r in front:
        r["onnx"] = onnx_path(client, r)
    return front


def _img(path: Path, jpeg: bool = False) -> str:
    """An <img> with the file embedded; overlays go in as JPEG (a tenth of the PNG's size)."""
    if jpeg:
        import cv2

        ok, buf = cv2.imencode(".jpg", cv2.imread(str(path)), [cv2.IMWRITE_JPEG_QUALITY, 85])
        return f'<img src="data:image/jpeg;base64,{base64.b64encode(buf.tobytes()).decode()}">'
    return f'<img src="data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}">'


def write_html(client: MlflowClient, experiment: str, out: str | Path, *, run_id: str | None = None,
               optimization: str | None = None, max_latency_ms: float | None = None, min_iou: float | None = None,
               overlays: int = 2, preface: str = "", device_class: str | None = None) -> Path:
    """One HTML file with everything embedded (plots and overlays as data URIs); ``preface`` is
    HTML put before the searches (an optimization's summary)."""
    out = Path(out)
    parts = [f"<h1>raysearch report: {html.escape(optimization or experiment)}</h1>",
             f"<p>MLflow: {html.escape(client.tracking_uri)}, experiment {html.escape(experiment)}"
             + (f"; requirements: latency &le; {max_latency_ms} ms" if max_latency_ms else "")
             + (f", IoU &ge; {min_iou}" if min_iou else "") + "</p>", preface]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for n, parent in enumerate(searches(client, experiment, run_id, optimization)):
            rows = candidates(client, parent, device_class)
            stage = parent.data.tags.get("stage", "")
            parts.append(f"<h2>{html.escape(parent.info.run_name)} ({html.escape(stage)}, "
                         f"{html.escape(parent.data.tags.get('mode', ''))}) &mdash; {len(rows)} candidates</h2>")
            if not rows:
                parts.append("<p>No trial of this search trained to the end.</p>")
                continue
            png = plot_front(rows, tmp / f"front{n}.png", title=f"{parent.info.run_name}: IoU vs frames per second",
                             max_latency_ms=max_latency_ms, min_iou=min_iou)
            parts.append(_img(png))
            parts.append(f"<pre>{html.escape(front_table(rows, max_latency_ms=max_latency_ms, min_iou=min_iou))}</pre>")
            for i in pareto_front(rows):
                r = rows[i]
                parts.append(f"<h3>{html.escape(r['name'])}: IoU {r[obj.IOU.name]:.4f}, "
                             f"{r[obj.LATENCY_MS.name]:.2f} ms (run {r['run_id']})</h3>")
                dst = tmp / r["run_id"]
                dst.mkdir()
                try:
                    files = sorted(Path(client.download_artifacts(r["run_id"], "overlays", str(dst))).glob("*.png"))
                except Exception:  # an older run without overlays: the table still stands
                    files = []
                parts.extend(_img(f, jpeg=True) for f in files[:overlays])
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "img{max-width:100%;display:block;margin:.5em 0}pre{background:#f6f6f6;padding:1em;overflow-x:auto}")
    out.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>raysearch report</title>"
                   f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")
    return out


def rows_json(rows: list[dict]) -> str:
    keep = ("name", "run_id", "stage", "iou", "latency_ms", "fps", "params_total", "macs", "onnx", "device",
            "device_class") + _PARAMS
    return json.dumps([{k: r.get(k) for k in keep} for r in rows], indent=2)
