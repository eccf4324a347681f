"""A search's MLflow runs: the tracking store and experiment, the parent run, parameters, and the command line and checkpoint locations logged with them."""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from mlflow.entities import Param
from mlflow.tracking import MlflowClient

from raysearch.records import names as obj
from raysearch.records.results import TrialRow
from raysearch.storage import write_atomic
from raysearch.tracking import ui
from raysearch.tracking.relocate import artifact_root, follow_moved_store
from raysearch.tracking.store import sqlite_path

log = logging.getLogger(__name__)

STATE_FILE = "raysearch_state.json"



# ---- the tracking store, the experiment, the parent run ------------------------------------------
def tracking_uri(explicit: str | None = None) -> str:
    """--tracking-uri, else $MLFLOW_TRACKING_URI, else the SQLite file runs/mlflow.db (created by
    `store.check_store` for a command that writes, never for one that reads)."""
    if explicit:
        return explicit
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{Path('runs/mlflow.db').resolve()}"


def ensure_experiment(client: MlflowClient, experiment: str, uri: str) -> str:
    """The experiment's id, creating it (artifacts beside a SQLite database, not in the CWD), with
    what the MLflow UI needs to show it as model training (`ui.settle_experiment`; an experiment of
    an older store gets it too). A SQLite store that was moved or copied with its artifacts
    reads and writes them in its new folder from here on (`relocate.follow_moved_store`)."""
    from mlflow.exceptions import MlflowException

    for line in follow_moved_store(uri):
        log.warning("%s", line)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        db = sqlite_path(uri)
        try:
            exp_id = client.create_experiment(experiment, artifact_location=artifact_root(db) if db else None,
                                              tags={ui.KIND_TAG: ui.EXPERIMENT_KIND})
            tags = {ui.KIND_TAG: ui.EXPERIMENT_KIND}
        except MlflowException:  # another process created it meanwhile
            exp = client.get_experiment_by_name(experiment)
            if exp is None:
                raise
            exp_id, tags = exp.experiment_id, dict(exp.tags)
    else:
        exp_id, tags = exp.experiment_id, dict(exp.tags)
    ui.settle_experiment(client, exp_id, tags)
    return exp_id


def log_params(client: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    """Params as MLflow shows them: lists and dicts as JSON, the rest as text; None left out."""
    client.log_batch(run_id, params=[Param(k, ui.param_text(v)) for k, v in params.items() if v is not None])


def run_in_store(client: MlflowClient, run_id: str | None) -> bool:
    """Whether the tracking store holds the run (a saved state may name a run of another store)."""
    if not run_id:
        return False
    from mlflow.exceptions import MlflowException

    try:
        client.get_run(run_id)
        return True
    except MlflowException:
        return False


@dataclass
class SearchState:
    """What a search's state file holds (beside the search, rewritten whole after every change; see
    `SearchTracker`): its parent run, each trial's run and name, the finished trials, the
    hypervolume history, the epochs trained, and whether the last run of it saw every trial end."""

    parent: str = ""
    runs: dict[str, str] = field(default_factory=dict)  # trial id -> MLflow run id
    finals: dict[str, TrialRow] = field(default_factory=dict)  # trial id -> its final figures
    names: dict[str, str] = field(default_factory=dict)  # trial id -> the spec's short name
    hv_history: list[list[float]] = field(default_factory=list)  # [trials done, epochs, hv, share]
    epochs_spent: int = 0  # every epoch trained, redone ones too
    done: set[str] = field(default_factory=set)  # trials concluded
    ended: bool = False  # every trial concluded (the search was not interrupted)
    last_epoch: dict[str, int] = field(default_factory=dict)  # trial id -> last epoch logged

    @classmethod
    def load(cls, path: Path) -> SearchState:
        """The state in ``path``; an empty one when there is no file yet."""
        if not path.is_file():
            return cls()
        d = json.loads(path.read_text())
        return cls(parent=d.get("parent", ""), runs=d.get("runs", {}),
                   finals={k: TrialRow.from_dict(v) for k, v in d.get("finals", {}).items()},
                   names=d.get("names", {}), hv_history=d.get("hv_history", []), epochs_spent=d.get("epochs_spent", 0),
                   done=set(d.get("done", [])), ended=bool(d.get("ended")), last_epoch=d.get("last_epoch", {}))

    def save(self, path: Path) -> None:
        write_atomic(path, json.dumps({
            "parent": self.parent, "runs": self.runs, "finals": {k: r.to_dict() for k, r in self.finals.items()},
            "names": self.names, "hv_history": self.hv_history, "epochs_spent": self.epochs_spent,
            "done": sorted(self.done), "ended": self.ended, "last_epoch": self.last_epoch}))


def open_parent(client: MlflowClient, experiment: str, uri: str, state_path: Path, run_name: str, tags: dict,
                params: dict) -> tuple[str, str]:
    """(experiment id, parent run id): the saved parent on resume, else a new run; its description
    (``mlflow.note.content``) says what the search is, until `finish_search` sums it up."""
    exp_id = ensure_experiment(client, experiment, uri)
    driver = {obj.TAG_DRIVER: f"{socket.gethostname()}:{os.getpid()}", obj.TAG_COMMAND: command_line()}
    if state_path.is_file():
        parent = SearchState.load(state_path).parent
        if not run_in_store(client, parent):
            raise ValueError(f"{state_path} continues parent run {parent}, which the tracking store {uri} does not "
                             f"have (another --tracking-uri, or its database was removed); pass the store it ran "
                             f"with, or start a new search with --name")
        client.update_run(parent, status="RUNNING")
        with ended_if_interrupted(client, parent):
            client.set_tag(parent, obj.TAG_RESUMED, "true")
            for key, value in driver.items():
                client.set_tag(parent, key, value)
            ui.set_note(client, parent, ui.opening_note(run_name, tags, params, resumed=True))
        return exp_id, parent
    run = client.create_run(exp_id, run_name=run_name, tags={**tags, **driver})
    with ended_if_interrupted(client, run.info.run_id):
        log_params(client, run.info.run_id, params)
        ui.set_note(client, run.info.run_id, ui.opening_note(run_name, tags, params))
    return exp_id, run.info.run_id


@contextmanager
def ended_if_interrupted(client: MlflowClient, run_id: str) -> Iterator[None]:
    """A run being filled in when a Ctrl-C (KILLED) or an error (FAILED) lands is ended here: its
    caller never gets the id, so nothing else could end it."""
    try:
        yield
    except BaseException as e:
        client.set_terminated(run_id, "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        raise


def command_line() -> str:
    """How this process was started, as a shell line (what `--resume` repeats)."""
    import shlex

    argv = list(sys.argv)
    if argv and argv[0].endswith(".py"):
        argv = ["python", *argv]
    elif argv:
        argv[0] = os.path.basename(argv[0])
    return shlex.join(argv)[:4000]




def checkpoint_uri(checkpoint) -> str:
    """Where a Ray Tune checkpoint lives: a local path, or a URI on an object store."""
    fs = getattr(checkpoint, "filesystem", None)
    kind = getattr(fs, "type_name", "local")
    return checkpoint.path if kind == "local" else f"{kind}://{checkpoint.path}"


