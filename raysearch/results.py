"""The Python API to what searches logged: searches and their trials as pandas DataFrames, and the
candidates `raysearch pick` would offer, read from the MLflow store (the same `TrialRow` records
`pick` and `report` use).

    from raysearch.results import load_searches, load_trials, pick

    searches = load_searches()                      # one row per search, newest first
    trials = load_trials()                          # every trial of every search of the experiment
    trials = load_trials(search="stage7-search-20261207-141500")   # one search, by name or run id
    front = trials[trials.pareto]                   # its Pareto front
    best = pick(max_latency_ms=2.0, min_iou=0.8)    # the qualifying candidates, best IoU first
    best[0].onnx                                    # the path of the first one's model.onnx

The store is ``tracking_uri`` (default: ``$MLFLOW_TRACKING_URI``, else ``runs/mlflow.db``), never
created by reading; the experiment is ``experiment`` (default "raysearch").
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from raysearch.records import names as obj
from raysearch.records.pareto import pareto_front
from raysearch.records.results import Requirement, TrialRow, candidates

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from mlflow.tracking import MlflowClient

__all__ = ["SearchRecord", "load_searches", "load_trials", "pick", "search_records", "trial_rows", "trials_frame"]

DEFAULT_EXPERIMENT = "raysearch"


@dataclass(frozen=True)
class SearchRecord:
    """A search as its parent run recorded it."""

    name: str
    run_id: str
    stage: str
    mode: str
    status: str  # the parent run's: FINISHED, KILLED (interrupted), FAILED, RUNNING
    sampler: str
    scheduler: str
    epochs: int | None
    hypervolume_share: float | None  # the front's share of the hypervolume box (0..1)
    started_ms: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _client(tracking_uri: str | None) -> MlflowClient:
    from mlflow.tracking import MlflowClient

    from raysearch.tracking.runs import tracking_uri as resolve
    from raysearch.tracking.store import check_store

    uri = resolve(tracking_uri)
    check_store(uri, write=False)  # reading never creates a store
    return MlflowClient(uri)


def _parents(client: MlflowClient, experiment: str, search: str | None) -> list:
    from raysearch.tracking.readback import searches

    parents = searches(client, experiment)
    if search is None:
        return parents
    found = [p for p in parents if search in (p.info.run_id, p.info.run_name, p.data.tags.get(obj.TAG_SEARCH))]
    if not found:
        names = ", ".join(p.info.run_name for p in parents[:5]) or "none"
        raise ValueError(f"no search named {search!r} in experiment {experiment!r} (the newest: {names})")
    return found


def _record(parent: Any) -> SearchRecord:
    p, m, t = parent.data.params, parent.data.metrics, parent.data.tags
    epochs = p.get("epochs")
    return SearchRecord(
        name=parent.info.run_name, run_id=parent.info.run_id, stage=t.get(obj.TAG_STAGE, ""),
        mode=t.get(obj.TAG_MODE, ""), status=parent.info.status, sampler=p.get("sampler", ""),
        scheduler=p.get("scheduler", ""), epochs=int(epochs) if epochs and epochs.isdigit() else None,
        hypervolume_share=m.get(obj.FINAL_HYPERVOLUME_NORMALIZED), started_ms=parent.info.start_time or 0)


def search_records(experiment: str = DEFAULT_EXPERIMENT, tracking_uri: str | None = None) -> list[SearchRecord]:
    """Every search of the experiment, newest first."""
    client = _client(tracking_uri)
    return [_record(p) for p in _parents(client, experiment, None)]


def trial_rows(search: str | None = None, experiment: str = DEFAULT_EXPERIMENT,
               tracking_uri: str | None = None) -> list[TrialRow]:
    """Every trial (``TrialRow``) of one search (its name or parent run id) or of all of them."""
    from raysearch.tracking.readback import row_from_run

    client = _client(tracking_uri)
    rows = []
    for parent in _parents(client, experiment, search):
        kids = client.search_runs([parent.info.experiment_id], f"tags.`{obj.TAG_PARENT}` = '{parent.info.run_id}'")
        rows += [row_from_run(k, parent.info.run_name) for k in kids]
    return rows


def trials_frame(rows: list[TrialRow]) -> pd.DataFrame:
    """Trials as a DataFrame: search, stage, name, run_id, status, iou, latency_ms, pareto (on its
    search's front of trained trials), device, the spec's knobs, then every other final metric."""
    import pandas as pd

    on_front: set[str] = set()
    for search in {r.search for r in rows}:
        cands = candidates([r for r in rows if r.search == search])
        on_front |= {cands[i].run_id for i in pareto_front(cands)}
    records = []
    for r in rows:
        knobs = {} if r.spec is None else {k: _number(v) for k, v in r.spec.to_params().items()}
        records.append({"search": r.search, "stage": r.stage, "name": r.name, "run_id": r.run_id,
                        "status": str(r.status), obj.IOU.name: r.iou, obj.LATENCY_MS.name: r.latency_ms,
                        "pareto": r.run_id in on_front, "device_class": r.device_class,
                        "device_name": r.device_name, **knobs, **r.metrics})
    fixed = ["search", "stage", "name", "run_id", "status", obj.IOU.name, obj.LATENCY_MS.name, "pareto"]
    frame = pd.DataFrame.from_records(records, columns=None if records else fixed)
    return frame[fixed + [c for c in frame.columns if c not in fixed]]


def _number(text: str) -> Any:
    try:
        return json.loads(text) if text[:1] in "-0123456789" else text
    except ValueError:
        return text


def load_trials(search: str | None = None, experiment: str = DEFAULT_EXPERIMENT,
                tracking_uri: str | None = None) -> pd.DataFrame:
    """Every trial of one search (name or run id) or of all searches of the experiment, one row
    each (see `trials_frame` for the columns)."""
    return trials_frame(trial_rows(search, experiment, tracking_uri))


def load_searches(experiment: str = DEFAULT_EXPERIMENT, tracking_uri: str | None = None) -> pd.DataFrame:
    """One row per search of the experiment, newest first (`SearchRecord`'s fields)."""
    import pandas as pd

    records = search_records(experiment, tracking_uri)
    columns = list(SearchRecord.__dataclass_fields__)
    return pd.DataFrame.from_records([r.to_dict() for r in records], columns=columns)


def pick(max_latency_ms: float | None = None, min_iou: float | None = None, search: str | None = None,
         experiment: str = DEFAULT_EXPERIMENT, tracking_uri: str | None = None,
         device_class: str | None = None) -> list[TrialRow]:
    """What `raysearch pick` offers: the qualifying candidates of every search (or one), Pareto-
    optimal among them, best IoU first, each with ``onnx`` the local path of its model."""
    from raysearch.tracking.readback import pick as pick_rows

    client = _client(tracking_uri)
    run_id = _parents(client, experiment, search)[0].info.run_id if search else None
    return pick_rows(client, experiment, Requirement(max_latency_ms, min_iou), run_id, None, device_class)
