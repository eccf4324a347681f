"""Searches read back from MLflow: a search's parent and its trials as records, whether it was interrupted and how to resume it, and the candidates `raysearch pick` offers."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from raysearch.models import ModelSpec
from raysearch.records import names as obj
from raysearch.records.names import IOU, LATENCY_MS
from raysearch.records.pareto import front_hypervolume, pareto_front
from raysearch.records.results import DUPLICATE, FAILED, PRUNED, STOPPED, TRAINED, Requirement, TrialRow

if TYPE_CHECKING:  # pragma: no cover
    from mlflow.tracking import MlflowClient





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
    status = next((s for s in (PRUNED, STOPPED, DUPLICATE) if t.get(s) == "true"), TRAINED)  # tags named as statuses
    if run.info.status == "FAILED":
        status = FAILED
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
    front = front_hypervolume(rows, rows)
    return front.share, front.reference_latency_ms


def onnx_path(client: "MlflowClient", row: TrialRow) -> str:
    """A local path of the candidate's model.onnx (downloaded when the store is remote)."""
    uri = row.artifact_uri or client.get_run(row.run_id).info.artifact_uri
    if uri.startswith("file://") or uri.startswith("/"):
        local = Path(uri.removeprefix("file://")) / obj.MODEL_FILE
        if local.is_file():
            return str(local)
    return client.download_artifacts(row.run_id, obj.MODEL_FILE)


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


