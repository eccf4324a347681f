"""The interactive front: one HTML page (plotly) with every trial of one or several searches.

- IoU against latency (log scale), one colour per search, a marker per outcome (trained, stopped
  early, repeated); the front of the trained trials drawn; hovering shows a trial's configuration,
  and a click opens its MLflow run (when the page knows the MLflow UI's address);
- the requirement as shaded region, with two sliders to move the latency budget and the minimum
  IoU and see what qualifies;
- parallel coordinates of the knobs, latency and IoU of the trained trials;
- which knob drives IoU and latency: the share of each objective's variance its values explain
  (the correlation ratio, eta squared; over the trained trials, latency on a log scale).

`raysearch report` writes it beside its HTML report, every search logs it on its parent run
(``front.html``), and a running search rewrites it in its local folder after every trial (the
page reloads itself while the search runs).
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from raysearch.records.names import IOU, LATENCY_MS
from raysearch.records.pareto import pareto_front
from raysearch.records.results import DUPLICATE, STOPPED, TRAINED, Requirement, TrialRow, candidates
from raysearch.storage import write_atomic

if TYPE_CHECKING:  # pragma: no cover
    from raysearch.tracking.callback import SearchTracker

MARKERS = {TRAINED: "circle", STOPPED: "x", DUPLICATE: "diamond-open"}
_CLICK = """
var plot = document.getElementById('{id}');
plot.on('plotly_click', function(data) {{
  var url = data.points[0].customdata && data.points[0].customdata[0];
  if (url) {{ window.open(url, '_blank'); }}
}});
"""


MLFLOW_UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves a local store


def ui_address(tracking_uri: str) -> str:
    """The MLflow UI that shows a store's runs: a tracking server itself, else `mlflow ui`'s default."""
    return tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else MLFLOW_UI


def run_url(ui: str | None, experiment_id: str, run_id: str) -> str:
    """The MLflow UI's page of a run ('' without the UI's address)."""
    return f"{ui.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}" if ui else ""


def knob_table(rows: Sequence[TrialRow]) -> dict[str, list[Any]]:
    """The knobs that vary among ``rows`` (the spec's params), one list per knob."""
    params = [r.spec.to_params() if r.spec else {} for r in rows]
    keys = sorted({k for p in params for k in p})
    if all("input_size" in p for p in params):  # square inputs: one knob, not three equal ones
        keys = [k for k in keys if k not in ("input_h", "input_w")]
    out: dict[str, list[Any]] = {}
    for k in keys:
        values = [_value(p.get(k, "")) for p in params]
        if len(set(map(str, values))) > 1:
            out[k] = values
    return out


def _value(text: str) -> Any:
    try:
        return float(text)
    except ValueError:
        return text


def knob_importance(rows: Sequence[TrialRow]) -> dict[str, dict[str, float]]:
    """{knob: {IoU's name: eta², "latency": eta²}} over the trained trials: the share of the objective's
    variance explained by the knob's values (1: the knob alone decides it; 0: it changes nothing)."""
    cands = candidates(list(rows))
    if len(cands) < 3:
        return {}
    knobs = knob_table(cands)
    objectives = {IOU.name: np.array([r.known_iou for r in cands]),
                  "latency": np.log(np.array([r.known_latency_ms for r in cands]))}
    out: dict[str, dict[str, float]] = {}
    for knob, values in knobs.items():
        labels = [str(v) for v in values]
        out[knob] = {name: _eta_squared(y, labels) for name, y in objectives.items()}
    return out


def _eta_squared(y: np.ndarray, labels: Sequence[str]) -> float:
    total = float(((y - y.mean()) ** 2).sum())
    if total == 0.0:
        return 0.0
    between = 0.0
    for label in set(labels):
        group = y[[lab == label for lab in labels]]
        between += len(group) * float((group.mean() - y.mean()) ** 2)
    return between / total


def _hover(r: TrialRow) -> str:
    knobs = ", ".join(f"{k}={v}" for k, v in (r.spec.to_params().items() if r.spec else ()))
    iou = f"{r.iou:.4f}" if r.iou is not None else "-"
    lat = f"{r.latency_ms:.3g} ms" if r.latency_ms is not None else "-"
    return (f"<b>{html.escape(r.name)}</b><br>{html.escape(r.search)} · {r.status}<br>IoU {iou}, {lat}"
            f"<br>{html.escape(knobs)}")


def front_figures(rows: Sequence[TrialRow], requirement: Requirement = Requirement(),
                  urls: dict[str, str] | None = None, title: str = "") -> list[Any]:
    """The page's figures: the front with its sliders, parallel coordinates, knob importance."""
    import plotly.graph_objects as go

    urls = urls or {}
    shown = [r for r in rows if r.status in MARKERS and r.iou is not None and r.latency_ms is not None]
    fig = go.Figure()
    for search in sorted({r.search for r in shown}):
        for status, symbol in MARKERS.items():
            pts = [r for r in shown if r.search == search and r.status == status]
            if not pts:
                continue
            fig.add_trace(go.Scatter(
                x=[r.latency_ms for r in pts], y=[r.iou for r in pts], mode="markers",
                name=f"{search}: {status}", legendgroup=search, marker={"symbol": symbol, "size": 9},
                customdata=[[urls.get(r.run_id, "")] for r in pts], text=[_hover(r) for r in pts],
                hovertemplate="%{text}<extra></extra>"))
    cands = candidates(list(rows))
    front = sorted((cands[i] for i in pareto_front(cands)), key=lambda r: r.known_latency_ms)
    if front:
        fig.add_trace(go.Scatter(
            x=[r.known_latency_ms for r in front], y=[r.known_iou for r in front], mode="lines+markers",
            name="Pareto front", line={"shape": "hv", "width": 2, "color": "black"},
            marker={"size": 13, "symbol": "circle-open", "color": "black"},
            customdata=[[urls.get(r.run_id, "")] for r in front], text=[_hover(r) for r in front],
            hovertemplate="%{text}<extra>front</extra>"))
    lats = [r.latency_ms for r in shown if r.latency_ms]
    ious = [r.iou for r in shown if r.iou is not None]
    if lats and ious:
        _requirement_sliders(fig, requirement, sorted(lats), sorted(ious))
    fig.update_layout(title=title or "IoU against latency: every trial (click a point to open its MLflow run)",
                      xaxis={"title": f"{LATENCY_MS.name} (log)", "type": "log"}, yaxis={"title": IOU.name},
                      height=640, hovermode="closest", legend={"groupclick": "toggleitem"})
    figures = [fig]
    knobs = knob_table(cands)
    if len(cands) >= 2:
        dims = [_dimension(k, v) for k, v in knobs.items()]
        dims += [{"label": "log10 latency_ms", "values": [math.log10(r.known_latency_ms) for r in cands]},
                 {"label": IOU.name, "values": [r.known_iou for r in cands]}]
        figures.append(go.Figure(go.Parcoords(line={"color": [r.known_iou for r in cands], "colorscale": "Viridis",
                                                    "showscale": True}, dimensions=dims),
                                 layout={"title": "Trained trials: knobs, latency and IoU (drag along an axis "
                                                  "to filter)", "height": 480}))
    importance = knob_importance(rows)
    if importance:
        names = list(importance)
        figures.append(go.Figure(
            [go.Bar(name=obj, x=names, y=[importance[k][obj] for k in names]) for obj in (IOU.name, "latency")],
            layout={"title": "Which knob drives IoU and latency: share of variance its values explain",
                    "barmode": "group", "yaxis": {"range": [0, 1]}, "height": 400}))
    return figures


def _dimension(knob: str, values: list[Any]) -> dict[str, Any]:
    if all(isinstance(v, float) for v in values):
        return {"label": knob, "values": values}
    labels = sorted({str(v) for v in values})  # words (the architecture): one tick each
    return {"label": knob, "values": [labels.index(str(v)) for v in values],
            "tickvals": list(range(len(labels))), "ticktext": labels}


def _requirement_sliders(fig: Any, requirement: Requirement, lats: list[float], ious: list[float]) -> None:
    """Two shaded bands (latency <= budget, IoU >= minimum) and a slider for each."""
    budget = requirement.max_latency_ms or lats[-1]
    floor = requirement.min_iou if requirement.min_iou is not None else 0.0
    fig.add_shape(type="rect", xref="x", yref="paper", x0=lats[0] / 2, x1=budget, y0=0, y1=1,
                  fillcolor="green", opacity=0.07, line={"width": 0}, layer="below")
    fig.add_shape(type="rect", xref="paper", yref="y", x0=0, x1=1, y0=floor, y1=1.0,
                  fillcolor="green", opacity=0.07, line={"width": 0}, layer="below")
    budgets = sorted({*np.geomspace(lats[0], lats[-1], 25).round(6).tolist(), budget})
    floors = sorted({*np.linspace(0.0, 1.0, 41).round(3).tolist(), round(floor, 4)})
    fig.update_layout(sliders=[
        {"active": budgets.index(budget), "currentvalue": {"prefix": "latency budget (ms): "}, "pad": {"t": 60},
         "steps": [{"label": f"{b:.3g}", "method": "relayout", "args": [{"shapes[0].x1": b}]} for b in budgets]},
        {"active": floors.index(round(floor, 4)), "currentvalue": {"prefix": "minimum IoU: "}, "pad": {"t": 130},
         "steps": [{"label": f"{f:.3g}", "method": "relayout", "args": [{"shapes[1].y0": f}]} for f in floors]},
    ])


def write_front_page(rows: Sequence[TrialRow], path: str | Path, *, requirement: Requirement = Requirement(),
                     urls: dict[str, str] | None = None, title: str = "", refresh_s: int | None = None,
                     inline_js: bool = True) -> Path:
    """Write the page (whole or not at all). ``refresh_s``: the page reloads itself that often (a
    running search's live view); ``inline_js``: plotly.js inside the file (self-contained, ~4 MB),
    else in a ``plotly.min.js`` beside it (written once)."""
    import plotly.io as pio

    path = Path(path)
    figures = front_figures(rows, requirement, urls, title)
    if not inline_js:
        path.parent.mkdir(parents=True, exist_ok=True)
        js = path.parent / "plotly.min.js"
        if not js.is_file():
            from plotly.offline import get_plotlyjs

            write_atomic(js, get_plotlyjs())
    parts = []
    for i, fig in enumerate(figures):
        div = f"raysearch-plot-{i}"
        parts.append(pio.to_html(fig, full_html=False, div_id=div, post_script=_CLICK.format(id=div),
                                 include_plotlyjs=(True if inline_js else "plotly.min.js") if i == 0 else False))
    refresh = f"<meta http-equiv='refresh' content='{refresh_s}'>" if refresh_s else ""
    n = len(rows)
    head = (f"<!doctype html><html><head><meta charset='utf-8'>{refresh}<title>{html.escape(title or 'raysearch')}"
            f"</title></head><body style='font-family:sans-serif;margin:1em 2em'>"
            f"<h2>{html.escape(title or 'raysearch: every trial')}</h2><p>{n} trials"
            + (f"; requirement: {html.escape(requirement.describe())}" if requirement.constrained else "")
            + (f"; this page reloads every {refresh_s} s while the search runs" if refresh_s else "") + "</p>")
    return write_atomic(path, head + "".join(parts) + "</body></html>")


LIVE_REFRESH_S = 15  # how often a running search's page reloads itself


def search_page(tracker: SearchTracker, live: bool = True) -> Path | None:
    """Rewrite a search's page (beside its state file) with every trial concluded so far: while it
    runs the page reloads itself (plotly.js in a file beside it), at the end it is self-contained
    (the parent run's ``front.html``). A page that cannot be written is a warning, never a lost
    search. The `SearchTracker`'s ``on_trial_end``."""
    import dataclasses
    import logging

    rows = [dataclasses.replace(r, search=tracker.stage) for r in tracker.state.finals.values()]
    ui = ui_address(tracker.client.tracking_uri)
    path = tracker.state_path.with_name("front.html")
    try:
        write_front_page(rows, path, urls={r.run_id: run_url(ui, tracker.experiment_id, r.run_id) for r in rows},
                         refresh_s=LIVE_REFRESH_S if live else None, inline_js=not live,
                         title=f"{tracker.stage}: {len(rows)} trials" + (" so far (running)" if live else ""))
    except Exception as e:  # a picture must never end a search
        logging.getLogger(__name__).warning("could not write the interactive front %s: %s", path, e)
        return None
    if live and not tracker.page_announced:
        tracker.page_announced = True
        print(f"[{tracker.stage}] live front: {path} (reloads every {LIVE_REFRESH_S} s)", flush=True)
    return path
