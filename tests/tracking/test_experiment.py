"""The experiment as the MLflow UI opens it, without a browser (a real SQLite store): the
model-training kind and the saved trials view on new and older experiments, the parent run's
description while the search runs and once it ended, and a store that keeps its artifacts when its
folder is copied elsewhere (tests/tracking/test_mlflow_ui.py renders all of it in Chromium)."""

from __future__ import annotations

import json
import shutil

import pytest
from mlflow.tracking import MlflowClient

from raysearch.models import ModelSpec
from raysearch.records import names as obj
from raysearch.records.results import PRUNED, STOPPED, TRAINED, Requirement, TrialRow
from raysearch.reporting.finish import finish_search
from raysearch.tracking import relocate, ui
from raysearch.tracking.runs import ensure_experiment, open_parent

PARAMS = {"mode": "search", "sampler": "latency-first", "scheduler": "front", "epochs": 8, "num_samples": 6,
          "grid": json.dumps({"input_size": [64, 96, 128], "a": [0.25, 0.5]}), "max_latency_ms": 30.0, "min_iou": None}


def _store(folder):
    folder.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    return uri, MlflowClient(uri)


def test_a_new_experiment_is_model_training_with_the_trials_view(tmp_path):
    uri, client = _store(tmp_path / "runs")
    exp = client.get_experiment(ensure_experiment(client, "raysearch", uri))
    assert exp.tags[ui.KIND_TAG] == "custom_model_development"
    assert exp.artifact_location == (tmp_path / "runs" / "mlartifacts").resolve().as_uri()
    view = json.loads(exp.tags["mlflow.sharedViewState.raysearch-trials"])
    state = json.loads(view["state"])  # as the UI saves one: a JSON string inside the envelope
    assert view["name"] == ui.VIEW_NAME and isinstance(view["createdAt"], int)
    assert {"metrics.`iou`", "metrics.`latency_ms`", "tags.`pareto_optimal`"} <= set(state["selectedColumns"])
    assert state["columnOrder"][1:4] == ["metrics.`iou`", "metrics.`latency_ms`", "tags.`pareto_optimal`"]
    assert (state["orderByKey"], state["orderByAsc"]) == ("metrics.`iou`", False)  # flat: children not folded
    assert "runsExpanded" not in state  # the UI drops it from a view
    (scatter,) = [c for c in state["compareRunCharts"] if c["type"] == "SCATTER"]
    assert (scatter["xaxis"]["key"], scatter["yaxis"]["key"]) == ("latency_ms", "iou")
    link = f"#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning&viewStateShareKey=raysearch-trials"
    assert link in exp.tags[ui.NOTE]
    assert ui.experiment_link(exp.experiment_id, "http://h:5000/") == f"http://h:5000/{link}"
    assert ui.ui_hint("http://h:5000", exp.experiment_id) == f"in MLflow: http://h:5000/{link}"
    assert ui.ui_hint("databricks", exp.experiment_id) is None
    assert ensure_experiment(client, "raysearch", uri) == exp.experiment_id  # again: nothing rewritten
    assert client.get_experiment(exp.experiment_id).tags[ui.VIEW_TAG] == exp.tags[ui.VIEW_TAG]


def test_an_older_experiment_gets_the_kind_and_the_view_but_keeps_its_own_choices(tmp_path):
    uri, client = _store(tmp_path)
    old = client.create_experiment("raysearch")  # as raysearch created it before
    mine = client.create_experiment("mine", tags={ui.KIND_TAG: "genai_development", ui.NOTE: "my notes",
                                                  ui.VIEW_TAG: json.dumps({"name": "stale", "createdAt": 5,
                                                                           "state": "{}"})})
    assert ensure_experiment(client, "raysearch", uri) == old
    tags = client.get_experiment(old).tags
    assert tags[ui.KIND_TAG] == "custom_model_development" and ui.VIEW_TAG in tags and ui.NOTE in tags
    ensure_experiment(client, "mine", uri)
    tags = client.get_experiment(mine).tags
    assert tags[ui.KIND_TAG] == "genai_development" and tags[ui.NOTE] == "my notes"  # set in the UI: left
    view = json.loads(tags[ui.VIEW_TAG])  # raysearch's own view: brought up to date, its creation kept
    assert view["createdAt"] == 5 and json.loads(view["state"]) == ui.view_state()


def _rows(parent: str, client: MlflowClient, exp: str) -> list[TrialRow]:
    rows = []
    for size, status, iou, lat in ((64, TRAINED, 0.81, 2.0), (96, TRAINED, 0.9, 4.0), (128, TRAINED, 0.85, 9.0),
                                   (32, STOPPED, 0.5, 3.0), (160, PRUNED, None, 40.0)):
        spec = ModelSpec(input_hw=size)
        run = client.create_run(exp, run_name=spec.name, tags={obj.TAG_PARENT: parent})
        rows.append(TrialRow(spec.name, run.info.run_id, spec, status, iou=iou, latency_ms=lat))
    return rows


def test_the_parent_says_what_the_search_is_and_then_what_it_found(tmp_path, capsys):
    uri, client = _store(tmp_path / "runs")
    exp, parent = open_parent(client, "raysearch", uri, tmp_path / "state.json", "stage7-search-1",
                              tags={obj.TAG_STAGE: "stage7"}, params=PARAMS)
    note = client.get_run(parent).data.tags[ui.NOTE]
    assert "`stage7-search-1`" in note and "(stage7)" in note and "running" in note
    assert "sampler `latency-first`, scheduler `front`" in note and "of 6 configurations" in note
    assert "8 epochs per trial" in note and "latency <= 30.0 ms" in note and "IoU >=" not in note
    client.log_metric(parent, obj.EPOCHS_SPENT, 29, step=5)
    rows = _rows(parent, client, exp)
    front, _ = finish_search(client, parent, "stage7", rows, [[1, 8, 0.1, 0.2], [5, 29, 0.3, 0.6]],
                             Requirement(max_latency_ms=5.0), None)
    assert [r.spec.height for r in front] == [96, 64]  # 128 is dominated by 96
    note = client.get_run(parent).data.tags[ui.NOTE]
    assert "ended" in note and "running" not in note
    assert "sampler `latency-first`, scheduler `front`" in note and "8 epochs per trial, 29 trained in all" in note
    assert "5: 3 trained to the end, 1 stopped early by the scheduler, 1 pruned by latency" in note
    lines = note.splitlines()
    for r in front:  # each member of the front, with its figures
        assert any(r.name in line and f"{r.iou:.4f}" in line and f"{r.latency_ms:.3g}" in line for line in lines)
    share = client.get_run(parent).data.metrics[obj.FINAL_HYPERVOLUME_NORMALIZED]
    assert f"Hypervolume: {share:.3f} of the box" in note
    for f in ("front.png", "hypervolume.png", "front.csv", "candidates.txt"):
        assert f"`{f}`" in note
        assert f in {a.path for a in client.list_artifacts(parent)}
    assert ui.experiment_link(exp) in note
    out = capsys.readouterr().out
    assert f"in MLflow: http://127.0.0.1:5000/#/experiments/{exp}/runs?workflowType=machine_learning" in out
    assert f"mlflow ui --backend-store-uri {uri}" in out


def test_a_resumed_parent_says_so(tmp_path):
    uri, client = _store(tmp_path)
    state = tmp_path / "state.json"
    _, parent = open_parent(client, "raysearch", uri, state, "s", tags={}, params={"mode": "grid", "epochs": 3,
                                                                                   "grid": '{"a": [1, 2]}'})
    assert "grid: every configuration of 2 configurations" in client.get_run(parent).data.tags[ui.NOTE]
    state.write_text(json.dumps({"parent": parent}))
    open_parent(client, "raysearch", uri, state, "s", tags={}, params={"mode": "grid", "epochs": 3})
    assert "resumed" in client.get_run(parent).data.tags[ui.NOTE]


def _log_file(client: MlflowClient, run_id: str, tmp_path, name: str) -> None:
    src = tmp_path / name
    src.write_text(name)
    client.log_artifact(run_id, str(src))


def test_a_copied_store_reads_and_writes_its_artifacts_where_it_now_is(tmp_path):
    uri, client = _store(tmp_path / "a" / "runs")
    exp = ensure_experiment(client, "raysearch", uri)
    run = client.create_run(exp, run_name="trial").info.run_id
    _log_file(client, run, tmp_path, "model.onnx")
    client.set_terminated(run)
    shutil.copytree(tmp_path / "a" / "runs", tmp_path / "b" / "runs")
    shutil.rmtree(tmp_path / "a")
    uri, client = _store(tmp_path / "b" / "runs")  # the copy, opened as a search opens its store
    assert ensure_experiment(client, "raysearch", uri) == exp
    copy = (tmp_path / "b" / "runs" / "mlartifacts").resolve()
    assert client.get_experiment(exp).artifact_location == copy.as_uri()
    assert client.get_run(run).info.artifact_uri.startswith(copy.as_uri() + "/")
    got = client.download_artifacts(run, "model.onnx", str(tmp_path / "down"))
    assert open(got).read() == "model.onnx"
    _log_file(client, run, tmp_path, "later.txt")  # an artifact logged now lands in the copy
    new = client.create_run(exp, run_name="next").info.run_id
    _log_file(client, new, tmp_path, "next.txt")
    assert len(list(copy.rglob("later.txt"))) == 1 and len(list(copy.rglob("next.txt"))) == 1
    assert not (tmp_path / "a").exists()


def test_a_store_copied_without_its_artifacts_is_left_pointing_at_them(tmp_path, capsys):
    uri, client = _store(tmp_path / "a")
    exp = ensure_experiment(client, "raysearch", uri)
    _log_file(client, client.create_run(exp).info.run_id, tmp_path, "x.txt")
    (tmp_path / "b").mkdir()
    shutil.copy(tmp_path / "a" / "mlflow.db", tmp_path / "b" / "mlflow.db")  # the database alone
    (said,) = relocate.follow_moved_store(f"sqlite:///{tmp_path / 'b' / 'mlflow.db'}")
    assert "copied without them" in said and str(tmp_path / "a" / "mlartifacts") in said
    uri_b = f"sqlite:///{tmp_path / 'b' / 'mlflow.db'}"
    assert MlflowClient(uri_b).get_experiment(exp).artifact_location == relocate.artifact_root(tmp_path / "a" / "mlflow.db")
    shutil.copytree(tmp_path / "a" / "mlartifacts", tmp_path / "b" / "mlartifacts")  # the README's fix
    assert relocate.main([str(tmp_path / "b" / "mlflow.db")]) == 0
    assert "was moved" in capsys.readouterr().out
    assert MlflowClient(uri_b).get_experiment(exp).artifact_location == relocate.artifact_root(tmp_path / "b" / "mlflow.db")
    assert relocate.main([str(tmp_path / "b" / "mlflow.db")]) == 0  # again: nothing to do
    assert "already" in capsys.readouterr().out


@pytest.mark.parametrize("old, value, new", [
    ("file:///x/runs/mlartifacts", "file:///x/runs/mlartifacts/1/abc/artifacts", "file:///y/mlartifacts/1/abc/artifacts"),
    ("file:///x/runs/mlartifacts", "/x/runs/mlartifacts/1", "/y/mlartifacts/1"),  # a plain path
    ("file:///x/runs/mlartifacts", "file:///x/runs/mlartifacts2/1", "file:///x/runs/mlartifacts2/1"),  # not under it
])
def test_rebase_rewrites_only_what_lies_under_the_old_folder(tmp_path, old, value, new):
    uri, client = _store(tmp_path)
    exp = client.create_experiment("e", artifact_location=value)
    relocate.rebase(tmp_path / "mlflow.db", old, "file:///y/mlartifacts")
    assert client.get_experiment(exp).artifact_location == new
