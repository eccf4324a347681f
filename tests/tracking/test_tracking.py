"""The MLflow side without Ray: the parent run tied to its store, child runs read back as
`TrialRow`s, the concise console lines (a real SQLite MLflow store)."""

from __future__ import annotations

import json
import time

import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from raysearch.models import ModelSpec
from raysearch.records import names as obj
from raysearch.records.results import PRUNED, STOPPED, TRAINED, TrialRow
from raysearch.tracking.callback import progress_line
from raysearch.tracking.readback import candidates_of, row_from_run
from raysearch.tracking.runs import log_params, open_parent, run_in_store


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return uri, MlflowClient(uri)


def test_a_saved_state_from_another_store_is_one_clear_error(store, tmp_path):
    uri, client = store
    state = tmp_path / "state" / "raysearch_state.json"
    exp, parent = open_parent(client, "raysearch", uri, state, "s", tags={}, params={"grid": [1, 2], "x": None})
    assert client.get_run(parent).data.params == {"grid": "[1, 2]"}  # lists as JSON, None left out
    state.parent.mkdir(parents=True)
    state.write_text(json.dumps({"parent": parent}))
    assert open_parent(client, "raysearch", uri, state, "s", tags={}, params={}) == (exp, parent)  # resumed
    assert client.get_run(parent).data.tags[obj.TAG_RESUMED] == "true" and run_in_store(client, parent)
    other = MlflowClient(f"sqlite:///{tmp_path / 'other.db'}")  # e.g. runs/mlflow.db deleted, or another URI
    assert not run_in_store(other, parent)
    with pytest.raises(ValueError, match=f"parent run {parent}, which the tracking store .* does not have"):
        open_parent(other, "raysearch", f"sqlite:///{tmp_path / 'other.db'}", state, "s", tags={}, params={})


class _Raises:
    """A param value whose text raises: a Ctrl-C (or an error) landing while the parent is filled in."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def __str__(self) -> str:
        raise self.exc


@pytest.mark.parametrize("exc, status", [(KeyboardInterrupt(), "KILLED"), (ValueError("bad param"), "FAILED")])
def test_a_parent_interrupted_while_it_opens_is_not_left_running(store, tmp_path, exc, status):
    uri, client = store
    with pytest.raises(type(exc)):
        open_parent(client, "raysearch", uri, tmp_path / "state.json", "s", tags={}, params={"x": _Raises(exc)})
    (run,) = client.search_runs([client.get_experiment_by_name("raysearch").experiment_id])
    assert run.info.status == status and run.info.end_time is not None


def _child(client, exp, parent, spec: ModelSpec, iou: float, lat: float, **tags) -> str:
    run = client.create_run(exp, run_name=spec.name, tags={obj.TAG_PARENT: parent, obj.TAG_STAGE: "stage2",
                                                          obj.TAG_DEVICE_CLASS: "rpi4", **tags})
    log_params(client, run.info.run_id, spec.to_params())
    client.log_batch(run.info.run_id, metrics=[Metric(obj.IOU.name, iou, 0, 0), Metric(obj.LATENCY_MS.name, lat, 0, 0),
                                               Metric(obj.PARAMS_TOTAL, 4519, 0, 0)])
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def test_child_runs_read_back_as_rows_with_their_status(store):
    uri, client = store
    exp = client.create_experiment("raysearch")
    parent = client.create_run(exp, run_name="p", tags={obj.TAG_SEARCH: "p"})
    spec = ModelSpec(a=0.125, t=2, r=1, pp=0, input_hw=96)
    ok = _child(client, exp, parent.info.run_id, spec, 0.9, 3.0)
    _child(client, exp, parent.info.run_id, spec.replace(input_hw=128), 0.0, 9.0, **{obj.PRUNED: "true"})
    _child(client, exp, parent.info.run_id, spec.replace(input_hw=64), 0.5, 2.0, **{obj.STOPPED: "true"})
    rows = {r.spec.height: r for r in map(row_from_run, client.search_runs([exp])) if r.spec}
    assert rows[96].status == TRAINED and rows[128].status == PRUNED and rows[64].status == STOPPED
    assert rows[96].spec == spec and rows[96].value(obj.PARAMS_TOTAL) == 4519 and rows[96].device_class == "rpi4"
    got = candidates_of(client, client.get_run(parent.info.run_id))
    assert [r.run_id for r in got] == [ok] and candidates_of(client, client.get_run(parent.info.run_id), "local") == []


def test_the_console_says_what_became_of_each_trial():
    spec = ModelSpec(input_hw=96)
    trained = progress_line(TrialRow(spec.name, "r", spec, TRAINED, iou=0.91234, latency_ms=2.5))
    assert spec.name in trained and "IoU 0.9123" in trained and "2.5 ms" in trained
    assert "not trained" in progress_line(TrialRow(spec.name, "r", spec, PRUNED, iou=0.0, latency_ms=40.0))
    assert "at epoch 3" in progress_line(TrialRow(spec.name, "r", spec, STOPPED, iou=0.5, latency_ms=2.0), 3)


def test_the_status_line_counts_a_reused_trial_as_the_best(tmp_path, capsys):
    """`raysearch optimize` reuses trials of earlier stages (repeated configurations): the status
    line's best IoU is theirs when they are best (was: 0.7912 shown while a reused one had 0.8091)."""
    from types import SimpleNamespace

    from raysearch.models import ModelSpec
    from raysearch.records.results import DUPLICATE, STOPPED, TRAINED, TrialRow
    from raysearch.tracking import callback
    from raysearch.tracking.callback import SearchTracker

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("x")
    parent = client.create_run(exp).info.run_id
    tracker = SearchTracker(uri, exp, parent, "stage7", tmp_path / "state.json", lambda c: None, None)
    spec = ModelSpec(a=0.25, t=6, r=1, pp=0, input_hw=64)
    tracker.state.finals = {
        "t1": TrialRow("trained", "r1", spec, TRAINED, iou=0.7912, latency_ms=1.0),
        "t2": TrialRow("reused", "r2", spec, DUPLICATE, iou=0.8091, latency_ms=2.0),
        "t3": TrialRow("stopped", "r3", spec, STOPPED, iou=0.95, latency_ms=0.5),  # a validation IoU: not a result
    }
    tracker._last_status = time.time() - callback.STATUS_EVERY_S - 1
    tracker.on_step_end(0, [SimpleNamespace(status="TERMINATED")] * 3)
    assert "best IoU 0.8091 (reused, 2 ms)" in capsys.readouterr().out
