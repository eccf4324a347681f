"""`raysearch report`: one self-contained HTML page per experiment (per search: the front plot, the table and the prediction overlays of the front), for people who would rather send a file than open MLflow."""

from __future__ import annotations

import base64
import html
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from raysearch.records import names as obj
from raysearch.records.pareto import pareto_front
from raysearch.records.results import Requirement, TrialRow
from raysearch.reporting.plots import plot_front
from raysearch.reporting.tables import front_table
from raysearch.storage import write_atomic
from raysearch.tracking.readback import candidates_of, interruption, search_hypervolume, searches

if TYPE_CHECKING:  # pragma: no cover
    from mlflow.tracking import MlflowClient





def _img(path: Path, jpeg: bool = False) -> str:
    """An <img> with the file embedded; overlays go in as JPEG (a tenth of the PNG's size)."""
    if jpeg:
        import cv2

        image = cv2.imread(str(path))
        assert image is not None, f"{path}: an overlay this search wrote"
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 85])
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
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
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
    write_atomic(out, f"<!doctype html><html><head><meta charset='utf-8'><title>raysearch report</title>"
                   f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")
    return out


def rows_json(rows: Sequence[TrialRow]) -> str:
    return json.dumps([r.summary() for r in rows], indent=2)
