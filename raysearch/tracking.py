"""MLflow logging of a search, from the driver (one writer to the tracking store).

A search is one *parent* run (tags: stage, mode; params: the search settings); every trial is a
*child* run (``mlflow.parentRunId``) whose params are the trial's `ModelSpec`, with per-epoch
metrics, final metrics, artifacts (``model.onnx``, ``benchmark.json``, overlays) and tags
(stage, device, pruned, Pareto-optimal). Runs always end with a status: FINISHED, FAILED (with
the reason) or KILLED; none is left RUNNING, even when the search is interrupted.

The trial -> run mapping is saved next to the Ray Tune experiment, so ``--resume`` continues the
same parent and child runs.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from raysearch import objectives as obj
from raysearch.models import ModelSpec
from raysearch.pareto import hypervolume

log = logging.getLogger(__name__)

PARENT_TAG = "mlflow.parentRunId"
STATE_FILE = "raysearch_state.json"
_EPOCH_METRICS = ("val_iou", "val_loss", "train_loss", "lr", "epoch_seconds")
_FINAL_SKIP = {"final", "device_name", "device_class", "epoch", "should_checkpoint", "done", "training_iteration"}


def _num(v: Any) -> float | None:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)) and math.isfinite(v):
        return float(v)
    return None


def checkpoint_uri(checkpoint) -> str:
    """Where a Ray Tune checkpoint lives: a local path, or a URI on an object store."""
    fs = getattr(checkpoint, "filesystem", None)
    kind = getattr(fs, "type_name", "local")
    return checkpoint.path if kind == "local" else f"{kind}://{checkpoint.path}"


class SearchTracker(Callback):
    """Ray Tune callback: child runs per trial, hypervolume on the parent after every trial."""

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, stage: str,
                 state_path: Path, to_spec: Callable[[dict], ModelSpec], hv_reference: dict) -> None:
        self._args = (tracking_uri, experiment_id, parent_run_id, stage, state_path, to_spec, hv_reference)
        self.client = MlflowClient(tracking_uri)
        self.experiment_id, self.parent = experiment_id, parent_run_id
        self.stage, self.state_path, self.to_spec, self.hv_reference = stage, state_path, to_spec, hv_reference
        state = json.loads(state_path.read_text()) if state_path.is_file() else {}
        self.runs: dict[str, str] = state.get("runs", {})
        self.finals: dict[str, dict] = state.get("finals", {})
        self.names: dict[str, str] = state.get("names", {})
        self.hv_history: list[list[float]] = state.get("hv_history", [])
        self.epochs_spent: int = state.get("epochs_spent", 0)
        self.done: set[str] = set(state.get("done", []))
        self.ended = False  # on_experiment_end ran: every trial concluded (not interrupted)

    # ---- state ---------------------------------------------------------------------------
    # Ray Tune pickles callbacks into its experiment state and `Tuner.restore` brings back that
    # copy: rebuild from the constructor arguments so the state file (not the pickle) is the truth.
    def __getstate__(self) -> dict:
        return {"args": self._args}

    def __setstate__(self, state: dict) -> None:
        self.__init__(*state["args"])

    @staticmethod
    def ended_cleanly(state_path: Path) -> bool:
        """Whether the last run of the search saw every trial conclude (not interrupted)."""
        try:
            return bool(json.loads(state_path.read_text()).get("ended"))
        except (FileNotFoundError, json.JSONDecodeError):
            return False

    def _save(self) -> None:
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"parent": self.parent, "runs": self.runs, "finals": self.finals, "names": self.names,
                                   "hv_history": self.hv_history, "epochs_spent": self.epochs_spent,
                                   "done": sorted(self.done), "ended": self.ended}))
        tmp.replace(self.state_path)

    def _run_for(self, trial) -> str:
        tid = trial.trial_id
        if tid in self.runs:
            return self.runs[tid]
        try:
            spec = self.to_spec(trial.config)
            name, knobs = spec.name, spec.to_dict()
        except ValueError:  # the trial itself will fail with the message; log what it was given
            name, knobs = f"invalid-{tid}", dict(trial.config)
        run = self.client.create_run(self.experiment_id, run_name=name, tags={
            PARENT_TAG: self.parent, "stage": self.stage, "trial_id": tid, "raysearch.spec": name})
        params = [Param(k, json.dumps(v) if isinstance(v, (list, dict)) else str(v)) for k, v in knobs.items()]
        self.client.log_batch(run.info.run_id, params=params)
        self.runs[tid], self.names[tid] = run.info.run_id, name
        self._save()
        return run.info.run_id

    # ---- Ray Tune hooks ------------------------------------------------------------------
    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        run_id = self._run_for(trial)
        self.client.update_run(run_id, status="RUNNING")

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        run_id = self._run_for(trial)
        ts = int(time.time() * 1000)
        if not result.get("final"):
            step = int(result.get(obj.EPOCH, 0))
            self.epochs_spent += 1
            metrics = [Metric(k, float(result[k]), ts, step) for k in _EPOCH_METRICS if _num(result.get(k)) is not None]
            metrics.append(Metric(obj.LATENCY_MS.name + "_untrained", float(result[obj.LATENCY_MS.name]), ts, step))
            self.client.log_batch(run_id, metrics=metrics)
            return
        final = {k: v for k, v in result.items() if k not in _FINAL_SKIP and _num(v) is not None
                 and not k.startswith(("time_this", "time_since", "timestamp", "iterations_", "pid", "node_ip"))}
        self.finals[trial.trial_id] = {"name": self.names.get(trial.trial_id, trial.trial_id), "run_id": run_id,
                                       "spec": self._spec_dict(trial), **final}
        tags = [RunTag("pruned_by_latency", str(bool(result.get(obj.PRUNED))).lower())]
        if result.get("duplicate"):
            tags.append(RunTag("duplicate", "true"))
        for k in ("device_name", "device_class"):
            if result.get(k):
                tags.append(RunTag(k, str(result[k])))
        step = int(result.get(obj.EPOCH, 0))  # at the last epoch's step, so it is the figure MLflow shows
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), ts, step) for k, v in final.items()], tags=tags)
        self._save()

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        run_id = self._run_for(trial)
        if trial.checkpoint is not None and trial.trial_id in self.finals:
            self.finals[trial.trial_id]["checkpoint"] = checkpoint_uri(trial.checkpoint)
            try:
                with trial.checkpoint.as_directory() as d:
                    for p in sorted(Path(d).iterdir()):
                        if p.name in ("best.pt", "last.pt"):
                            continue
                        if p.is_dir():
                            self.client.log_artifacts(run_id, str(p), artifact_path=p.name)
                        else:
                            self.client.log_artifact(run_id, str(p))
            except Exception as e:  # artifacts are a convenience: never lose the run over them
                log.warning("could not log the artifacts of %s: %s", trial.trial_id, e)
        stopped = trial.trial_id not in self.finals
        self.client.set_tag(run_id, "stopped_early", str(stopped).lower())
        if stopped:  # stopped by the scheduler: its last validation figures are what it has
            last = trial.last_result or {}
            self.finals[trial.trial_id] = {"name": self.names.get(trial.trial_id), "run_id": run_id, "stopped_early": 1,
                                           "spec": self._spec_dict(trial),
                                           **{k: last[k] for k in (obj.IOU.name, obj.LATENCY_MS.name, obj.VAL_IOU.name)
                                              if _num(last.get(k)) is not None}}
        self.client.set_terminated(run_id, "FINISHED")
        self.done.add(trial.trial_id)
        self._log_hypervolume()
        self._save()

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        run_id = self._run_for(trial)
        reason = ""
        try:
            reason = Path(trial.error_file).read_text()[-4000:] if trial.error_file else ""
        except OSError:
            pass
        self.client.set_tag(run_id, "error", reason or "trial failed (see the Ray Tune logs)")
        self.client.set_terminated(run_id, "FAILED")
        self.done.add(trial.trial_id)
        self._save()

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        run_id = self._run_for(trial)
        self.client.set_tag(run_id, "retried", "true")

    def on_experiment_end(self, trials, **info) -> None:
        # Ray Tune also ends the experiment when Ctrl-C (or our deadline's SIGINT) stops it early:
        # only a run where every trial concluded ended cleanly
        self.ended = all(t.status in ("TERMINATED", "ERROR") for t in trials)
        self.close("KILLED")

    # ---- helpers -------------------------------------------------------------------------
    def _spec_dict(self, trial) -> dict | None:
        try:
            return self.to_spec(trial.config).to_dict()
        except ValueError:
            return None

    def _log_hypervolume(self) -> None:
        points = [f for f in self.finals.values() if not f.get(obj.PRUNED)]
        hv = hypervolume(points, self.hv_reference)
        step = len(self.done)
        self.hv_history.append([step, self.epochs_spent, hv])
        self.client.log_metric(self.parent, obj.HYPERVOLUME, hv, step=step)
        self.client.log_metric(self.parent, "epochs_spent", self.epochs_spent, step=step)

    def close(self, status: str) -> None:
        """End every child run still open with ``status`` (the search ended or was interrupted)."""
        for tid, run_id in self.runs.items():
            if tid in self.done:
                continue
            try:
                if self.client.get_run(run_id).info.status in ("RUNNING", "SCHEDULED"):
                    self.client.set_terminated(run_id, status)
            except Exception as e:
                log.warning("could not end run %s: %s", run_id, e)
        self._save()
