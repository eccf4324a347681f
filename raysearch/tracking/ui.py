"""How raysearch's experiment looks in the MLflow UI (3.x): what the store can carry, and links for the rest.

What MLflow 3.17's UI reads, and where (the bundle under ``mlflow/server/js/build/static/js``):

* The GenAI or model-training view is the browser's *workflow type*: the ``workflowType`` query
  parameter, else ``localStorage["mlflow.workflowType_v1"]``, else ``genai`` (main.*.js, module
  7975). The experiment tag ``mlflow.experimentKind`` is read only when the workflow selector is
  off (``useExperimentKind``, main.*.js module 31080 ``Fi``; its flag ``Z0``, module 89511, is on
  in 3.17), so there it decides nothing; earlier 3.x UIs read it, and the UI writes it on the
  experiments it creates. raysearch sets it (`EXPERIMENT_KIND`) and links with
  ``?workflowType=machine_learning`` (`experiment_link`).
* The runs table's columns, sort and charts are browser state too (``localStorage``
  ``MLflowLocalStorage-1.1-ExperimentPage-["ID"]-ReactComponentState``), defaulting to three
  attribute columns. What the store can carry is a *saved view*: the experiment tag
  ``mlflow.sharedViewState.KEY`` (a JSON envelope ``{name, createdAt, updatedAt, state}``, the state
  a JSON string of search facets and UI state), listed under "Views" on the Runs tab and opened by
  ``?viewStateShareKey=KEY`` (3448.*.chunk.js module 53787; 3878.*.chunk.js, the hook reading it).
  A view cannot carry which rows are expanded (``runsExpanded`` is dropped on save and on load);
  it sorts by IoU instead, and a table sorted by a metric lists child runs flat (children nest under
  their parent only when sorted by start time with no filter).
* A run's or experiment's description is its tag ``mlflow.note.content`` (markdown).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE

from raysearch.records import names as obj

if TYPE_CHECKING:  # pragma: no cover
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

NOTE = MLFLOW_RUN_NOTE  # "mlflow.note.content": the description of a run, or of an experiment
KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"  # the UI's "Machine learning" / model training kind
WORKFLOW = "machine_learning"  # the UI's workflow type for it (the GenAI one is "genai")
VIEW_KEY = "raysearch-trials"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
VIEW_NAME = "raysearch: trials by IoU"
SPEC_PARAMS = ("a", "t", "r", "pp", "input_size")  # the knobs of ModelSpec.to_params the study varies
LOCAL_UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves a local store


def _col(kind: str, key: str) -> str:
    return f"{kind}.`{key}`"


def view_state() -> dict[str, Any]:
    """The saved view: trials flat, best IoU first, with IoU, latency, the Pareto and requirement
    flags (in that order, first after the run's name and date) and the spec's knobs as columns,
    every run in the charts, and a section plotting IoU against latency, the knobs against both
    (parallel coordinates) and the validation IoU per epoch."""
    section = "raysearch-front"
    first = [_col("metrics", obj.IOU.name), _col("metrics", obj.LATENCY_MS.name), _col("tags", obj.TAG_PARETO),
             _col("tags", obj.TAG_QUALIFIES)]
    knobs = [_col("params", p) for p in SPEC_PARAMS]
    return {
        "orderByKey": _col("metrics", obj.IOU.name), "orderByAsc": False,
        "selectedColumns": first + knobs,
        # the table groups columns as metrics, params, tags, each sorted by name; an order moves them
        "columnOrder": [_col("attributes", "Run Name"), *first, *knobs],
        "runsHiddenMode": "SHOW_ALL",  # charts show every run, not the first 10
        "compareRunSections": [{"uuid": section, "name": "IoU vs latency", "display": True, "isReordered": False,
                                "deleted": False, "isGenerated": False}],
        "compareRunCharts": [
            {"type": "SCATTER", "uuid": "raysearch-iou-latency", "metricSectionId": section, "deleted": False,
             "isGenerated": False, "runsCountToCompare": 100, "displayName": "IoU vs latency (ms)",
             "xaxis": {"key": obj.LATENCY_MS.name, "type": "METRIC"}, "yaxis": {"key": obj.IOU.name, "type": "METRIC"}},
            {"type": "PARALLEL", "uuid": "raysearch-knobs", "metricSectionId": section, "deleted": False,
             "isGenerated": False, "runsCountToCompare": 100, "showAllRuns": True,
             "selectedParams": list(SPEC_PARAMS), "selectedMetrics": [obj.LATENCY_MS.name, obj.IOU.name]},
            {"type": "LINE", "uuid": "raysearch-val-iou", "metricSectionId": section, "deleted": False,
             "isGenerated": False, "runsCountToCompare": 100, "metricKey": obj.VAL_IOU.name,
             "selectedMetricKeys": [obj.VAL_IOU.name], "lineSmoothness": 0, "xAxisScaleType": "linear",
             "scaleType": "linear", "xAxisKey": "step", "selectedXAxisMetricKey": "", "yAxisKey": "metric",
             "yAxisExpressions": [], "ignoreOutliers": False, "useGlobalXaxisKey": True,
             "useGlobalLineSmoothing": True}],
    }


def view_envelope(created_ms: int) -> str:
    """The tag's value, as the UI writes it (53787 ``Ho``): the state is itself a JSON string."""
    return json.dumps({"name": VIEW_NAME, "createdAt": created_ms, "updatedAt": created_ms,
                       "state": json.dumps(view_state())})


def experiment_link(experiment_id: str, base: str = "", view: bool = True) -> str:
    """The experiment's runs in the model-training view (and in raysearch's saved view): a
    ``#/...`` link inside the UI, or with ``base`` (the server's address) a full one. Nothing else
    in the query: a view is not applied when the link also sets a sort or a filter."""
    query = {"workflowType": WORKFLOW, **({"viewStateShareKey": VIEW_KEY} if view else {})}
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?{urlencode(query)}"


def ui_hint(uri: str, experiment_id: str) -> str | None:
    """The line telling where the MLflow UI shows the experiment's trials: on the tracking server
    itself, or (a SQLite store) where `mlflow ui` serves it; None for another kind of store."""
    if uri.startswith(("http://", "https://")):
        return f"in MLflow: {experiment_link(experiment_id, uri)}"
    if uri.startswith("sqlite:"):
        return (f"in MLflow: {experiment_link(experiment_id, LOCAL_UI)} (after `mlflow ui --backend-store-uri "
                f"{uri} --workers 1`)")
    return None


def experiment_note(experiment_id: str) -> str:
    """The experiment's description: first (the line the UI shows folded) the link to the trials."""
    return (f"**[The trials, best IoU first: IoU, latency, Pareto flag]({experiment_link(experiment_id)})** "
            f"(the model-training view, and the *{VIEW_NAME}* view under *Views*). Searches by raysearch: one parent "
            f"run per search (its description sums the search up; `front.png`, `front.csv` and the hypervolume "
            f"in its artifacts), one child run per trial.")


def settle_experiment(client: MlflowClient, experiment_id: str, tags: dict[str, str]) -> None:
    """Give an experiment (new, or of an older store) what raysearch's UI needs: the model-training
    kind and the experiment's description unless it has its own, the saved view as this version
    of raysearch writes it."""
    if not tags.get(KIND_TAG):
        client.set_experiment_tag(experiment_id, KIND_TAG, EXPERIMENT_KIND)
    elif tags[KIND_TAG] != EXPERIMENT_KIND:
        log.info("experiment %s is of kind %s (set in the MLflow UI?); left as it is", experiment_id, tags[KIND_TAG])
    if not tags.get(NOTE):
        client.set_experiment_tag(experiment_id, NOTE, experiment_note(experiment_id))
    old = tags.get(VIEW_TAG)
    try:
        current = json.loads(old) if old else None
    except ValueError:
        current = None
    if not current or current.get("name") != VIEW_NAME or json.loads(current.get("state") or "null") != view_state():
        import time

        created = int(current.get("createdAt") or 0) if isinstance(current, dict) else 0
        client.set_experiment_tag(experiment_id, VIEW_TAG, view_envelope(created or int(time.time() * 1000)))


def param_text(value: Any) -> str:
    """A param as MLflow keeps it (`runs.log_params`): lists and dicts as JSON, the rest as text."""
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def grid_size(grid: str | None) -> int | None:
    """How many configurations the ``grid`` param (JSON: knob -> values) holds."""
    try:
        values = json.loads(grid or "")
        n = 1
        for v in values.values():
            n *= len(v)
        return n
    except (ValueError, AttributeError, TypeError):
        return None


def method_line(params: Mapping[str, str]) -> str:
    """How the search chose and stopped its trials, from its parent's params."""
    mode, n = params.get(obj.TAG_MODE, ""), grid_size(params.get("grid"))  # --mode: a param and a tag
    space = f" of {n} configurations" if n else ""
    if mode == "grid":
        return f"grid: every configuration{space}, each trained to the end"
    sampler, scheduler = params.get("sampler", "?"), params.get("scheduler", "?")
    line = f"search{space}: sampler `{sampler}`, scheduler `{scheduler}`"
    if scheduler not in ("none", "front", "?"):
        line += f" (grace period {params.get('grace_period', '?')}, reduction factor {params.get('reduction_factor', '?')})"
    if params.get("num_samples"):
        line += f", up to {params['num_samples']} trials"
    return line


def budget_line(params: Mapping[str, str], epochs_spent: float | None = None) -> str:
    """Epochs per trial (and trained in all, when known); the requirement, when there is one."""
    epochs = params.get("epochs", "?")
    line = f"{epochs} epoch{'' if epochs == '1' else 's'} per trial"
    if epochs_spent is not None:
        line += f", {epochs_spent:.0f} trained in all"
    need = []
    if params.get("max_latency_ms") not in (None, "None"):
        need.append(f"latency <= {params['max_latency_ms']} ms")
    if params.get("min_iou") not in (None, "None"):
        need.append(f"IoU >= {params['min_iou']}")
    return line + (f"; requirement: {', '.join(need)}" if need else "")


def opening_note(name: str, tags: Mapping[str, Any], params: Mapping[str, Any], resumed: bool = False) -> str:
    """The parent's description while its search runs (`raysearch.reporting.finish` replaces it with
    the summary when the search ends)."""
    import time

    p = {k: param_text(v) for k, v in params.items() if v is not None}
    stage = tags.get(obj.TAG_STAGE, "")
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime())
    return (f"**raysearch search `{name}`**" + (f" ({stage})" if stage else "") + ": "
            + ("resumed with --resume" if resumed else "started") + f" {when}, running. Its summary (the Pareto front, the "
            f"hypervolume, the plots) replaces this when it ends.\n\n"
            f"- Method: {method_line(p)}\n- Budget: {budget_line(p)}\n"
            f"- The trials are the child runs of this run.")


def set_note(client: MlflowClient, run_id: str, markdown: str) -> None:
    """The run's description, as the UI shows it (markdown; MLflow keeps up to 8000 characters of a run tag)."""
    client.set_tag(run_id, NOTE, markdown[:8000])
