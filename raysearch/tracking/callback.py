"""MLflow logging of a search, from the driver (one writer to the tracking store).

A search is one *parent* run (tags: stage, mode; params: the search settings); every trial is a
*child* run (``mlflow.parentRunId``) whose params are the trial's `ModelSpec` (`to_params`), with
per-epoch metrics, final metrics, artifacts (``model.onnx``, ``benchmark.json``, overlays) and
tags (stage, device, pruned, stopped early, Pareto-optimal). Runs always end with a status:
FINISHED, FAILED (with the reason) or KILLED; none is left RUNNING, even when the search is
interrupted.

The trial -> run mapping and every trial's `TrialRow` are saved in a state file next to the
search, so ``--resume`` continues the same parent and child runs.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

from mlflow.entities import Metric, RunTag
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from raysearch.models import ModelSpec
from raysearch.records import names as obj
from raysearch.records.pareto import front_hypervolume
from raysearch.records.results import DUPLICATE, FAILED, PRUNED, STOPPED, TRAINED, TrialRow, TrialStatus, candidates
from raysearch.tracking.runs import SearchState, checkpoint_uri, log_params

log = logging.getLogger(__name__)
#: what this process could not write of a search's state (a full disk): the first stops the search
#: as Ctrl-C does, and the driver then reports it in one line instead of "interrupted"
WRITE_ERRORS: list[OSError] = []

_EPOCH_METRICS = (obj.VAL_IOU.name, obj.VAL_LOSS.name, "train_loss", "lr", "epoch_seconds")
_FINAL_SKIP = {obj.FINAL, obj.REPLAYED, obj.TAG_DEVICE_NAME, obj.TAG_DEVICE_CLASS, obj.EPOCH, "should_checkpoint",
               "done", "training_iteration"}
STATUS_EVERY_S = 30.0  # the compact progress line, at most this often



def _num(v: Any) -> float | None:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)) and math.isfinite(v):
        return float(v)
    return None


def _status_of(result: dict) -> TrialStatus:
    if result.get(obj.PRUNED):
        return PRUNED
    return DUPLICATE if result.get(obj.DUPLICATE) else TRAINED


def progress_line(row: TrialRow, epochs: int | None = None) -> str:
    """One line of the concise console view for a trial that ended."""
    lat = f"{row.latency_ms:.3g} ms" if row.latency_ms is not None else "latency ?"
    iou = f"IoU {row.iou:.4f}" if row.iou is not None else ""
    what = {TRAINED: f"trained     {iou}  {lat}", PRUNED: f"pruned      {lat} over the latency budget, not trained",
            STOPPED: f"stopped     {iou} (validation) {lat}" + (f" at epoch {epochs}" if epochs else ""),
            DUPLICATE: f"repeated    {iou}  {lat} (ran before: not retrained)", FAILED: "FAILED (see its MLflow run)"}
    return f"  {row.name}: {what[row.status]}"


class SearchTracker(Callback):
    """Ray Tune callback: child runs per trial, hypervolume on the parent after every trial, and the
    concise console view (one line per trial that starts or ends, a status line now and then)."""

    def __init__(self, tracking: str, experiment_id: str, parent_run_id: str, stage: str,
                 state_path: Path, to_spec: Callable[[dict], ModelSpec], hv_latency: float | None,
                 expected_trials: int = 0, on_trial_end: Callable[[SearchTracker], Any] | None = None) -> None:
        self._args = (tracking, experiment_id, parent_run_id, stage, state_path, to_spec, hv_latency, expected_trials,
                      on_trial_end)
        self.on_trial_end = on_trial_end  # a module-level function (pickled by name, as Ray Tune pickles this)
        self.expected_trials = expected_trials  # the grid's points or --num-samples
        self.client = MlflowClient(tracking)
        self.experiment_id = experiment_id
        self.stage, self.state_path, self.to_spec, self.hv_latency = stage, state_path, to_spec, hv_latency
        self.state = SearchState.load(state_path)  # what earlier runs of this search recorded, kept up to date
        self.state.parent = parent_run_id
        self.state.ended = False  # on_experiment_end ran: every trial concluded (not interrupted)
        self._last_status = time.time()
        self.page_announced = False  # the live view's address was printed

    # ---- state ---------------------------------------------------------------------------
    # Ray Tune pickles callbacks into its experiment state and `Tuner.restore` brings back that
    # copy: rebuild from the constructor arguments so the state file (not the pickle) is the truth.
    def __getstate__(self) -> dict:
        return {"args": self._args}

    def __setstate__(self, state: dict) -> None:
        SearchTracker.__init__(self, *state["args"])

    def reload(self) -> "SearchTracker":
        """A tracker with what the state file holds now (what Ray Tune's copy of it recorded)."""
        return SearchTracker(*self._args)

    @staticmethod
    def ended_cleanly(state_path: Path) -> bool:
        """Whether the last run of the search saw every trial conclude (not interrupted)."""
        try:
            return SearchState.load(state_path).ended
        except json.JSONDecodeError:
            return False

    @staticmethod
    def saved_rows(state_path: Path) -> list[TrialRow]:
        """The finished trials a search's state file holds (an interrupted search's so far)."""
        try:
            return list(SearchState.load(state_path).finals.values())
        except json.JSONDecodeError:
            return []

    def _save(self, stop: bool = True) -> None:
        try:
            self.state.save(self.state_path)
        except OSError as e:  # said once, never a traceback from inside Ray Tune's loop
            if WRITE_ERRORS:
                return
            WRITE_ERRORS.append(e)
            log.warning("cannot write the search state %s (%s)%s", self.state_path, e.strerror or e,
                        ": stopping the search" if stop else "")
            if stop and threading.current_thread() is threading.main_thread():
                os.kill(os.getpid(), signal.SIGINT)  # Ray Tune stops, saving its state; every run ends KILLED

    def _spec(self, trial) -> ModelSpec | None:
        try:
            return self.to_spec(trial.config)
        except ValueError:  # the trial itself will fail with the message
            return None

    def _run_for(self, trial) -> str:
        tid = trial.trial_id
        if tid in self.state.runs:
            return self.state.runs[tid]
        spec = self._spec(trial)
        name = spec.name if spec else f"invalid-{tid}"
        run = self.client.create_run(self.experiment_id, run_name=name, tags={
            obj.TAG_PARENT: self.state.parent, obj.TAG_STAGE: self.stage, obj.TAG_TRIAL_ID: tid, obj.TAG_SPEC: name})
        log_params(self.client, run.info.run_id, spec.to_params() if spec else dict(trial.config))
        self.state.runs[tid], self.state.names[tid] = run.info.run_id, name
        self._save()
        return run.info.run_id

    def _row(self, trial, status: TrialStatus, values: dict, **kw) -> TrialRow:
        return TrialRow(name=self.state.names.get(trial.trial_id, trial.trial_id), run_id=self.state.runs[trial.trial_id],
                        spec=self._spec(trial), status=status, iou=values.get(obj.IOU.name),
                        latency_ms=values.get(obj.LATENCY_MS.name), stage=self.stage, **kw)

    # ---- Ray Tune hooks ------------------------------------------------------------------
    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        run_id = self._run_for(trial)
        self.client.update_run(run_id, status="RUNNING")
        print(f"  {self.state.names[trial.trial_id]}: started", flush=True)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        run_id = self._run_for(trial)
        ts = int(time.time() * 1000)
        if not result.get(obj.FINAL):
            step = int(result.get(obj.EPOCH, 0))
            new = step > self.state.last_epoch.get(trial.trial_id, 0)
            # a restored trial sends its earlier epochs again (replayed): spent once, when first seen
            # (the driver may have died before it saw them); an epoch trained again after a restore
            # (since the trial's last saved state) is spent again. Either way its step is logged once.
            if new or not result.get(obj.REPLAYED):
                self.state.epochs_spent += 1
            if new:
                metrics = [Metric(k, float(result[k]), ts, step) for k in _EPOCH_METRICS
                           if _num(result.get(k)) is not None]
                metrics.append(Metric(obj.LATENCY_UNTRAINED, float(result[obj.LATENCY_MS.name]), ts, step))
                self.client.log_batch(run_id, metrics=metrics)
                self.state.last_epoch[trial.trial_id] = step
            self._save()  # the count survives a driver that dies before the trial's end
            return
        final = {k: v for k, v in result.items() if k not in _FINAL_SKIP and _num(v) is not None
                 and not k.startswith(("time_this", "time_since", "timestamp", "iterations_", "pid", "node_ip"))}
        row = self._row(trial, _status_of(result), final, device_name=str(result.get(obj.TAG_DEVICE_NAME) or ""),
                        device_class=str(result.get(obj.TAG_DEVICE_CLASS) or ""),
                        metrics={k: float(v) for k, v in final.items() if k not in (obj.IOU.name, obj.LATENCY_MS.name)})
        self.state.finals[trial.trial_id] = row
        tags = [RunTag(obj.PRUNED, obj.flag(row.status == PRUNED))]
        if row.status == DUPLICATE:
            tags.append(RunTag(obj.DUPLICATE, "true"))
        if obj.DEVICE_IOU_DISAGREES in result:  # measured on the device: whether its IoU is the host's
            tags.append(RunTag(obj.DEVICE_IOU_DISAGREES, obj.flag(result[obj.DEVICE_IOU_DISAGREES])))
        tags += [RunTag(k, str(result[k])) for k in (obj.TAG_DEVICE_NAME, obj.TAG_DEVICE_CLASS) if result.get(k)]
        step = int(result.get(obj.EPOCH, 0))  # at the last epoch's step, so it is the figure MLflow shows
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), ts, step) for k, v in final.items()], tags=tags)
        self._save()

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        run_id = self._run_for(trial)
        row = self.state.finals.get(trial.trial_id)
        if trial.checkpoint is not None and row is not None:
            row.checkpoint = checkpoint_uri(trial.checkpoint)
            try:
                with trial.checkpoint.as_directory() as d:
                    for p in sorted(Path(d).iterdir()):
                        if p.name in (obj.BEST_WEIGHTS, obj.LAST_WEIGHTS):
                            continue
                        if p.is_dir():
                            self.client.log_artifacts(run_id, str(p), artifact_path=p.name)
                        else:
                            self.client.log_artifact(run_id, str(p))
            except Exception as e:  # artifacts are a convenience: never lose the run over them
                log.warning("could not log the artifacts of %s: %s", trial.trial_id, e)
        stopped_at = None
        if row is None:  # stopped by the scheduler: its last validation figures are what it has
            last = trial.last_result or {}
            stopped_at = int(last.get(obj.EPOCH, 0))
            row = self._row(trial, STOPPED, {k: last.get(k) for k in (obj.IOU.name, obj.LATENCY_MS.name)},
                            metrics={obj.VAL_IOU.name: v} if (v := _num(last.get(obj.VAL_IOU.name))) is not None else {})
            self.state.finals[trial.trial_id] = row
            self.client.set_tag(run_id, obj.TAG_STOPPED_AT, str(stopped_at))
        self.client.set_tag(run_id, obj.STOPPED, obj.flag(row.status == STOPPED))
        self.client.set_terminated(run_id, "FINISHED")
        self.state.done.add(trial.trial_id)
        print(progress_line(row, stopped_at), flush=True)
        self._log_hypervolume()
        self._save()
        if self.on_trial_end is not None:  # the search's live view (its interactive front)
            self.on_trial_end(self)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        run_id = self._run_for(trial)
        reason = ""
        try:
            reason = Path(trial.error_file).read_text()[-4000:] if trial.error_file else ""
        except OSError:
            pass
        self.client.set_tag(run_id, obj.TAG_ERROR, reason or "trial failed (see the Ray Tune logs)")
        self.client.set_terminated(run_id, "FAILED")
        self.state.finals[trial.trial_id] = row = self._row(trial, FAILED, {})
        self.state.done.add(trial.trial_id)
        print(progress_line(row), flush=True)
        self._save()

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        run_id = self._run_for(trial)
        self.client.set_tag(run_id, obj.TAG_RETRIED, "true")

    def on_step_end(self, iteration, trials, **info) -> None:
        if time.time() - self._last_status < STATUS_EVERY_S:
            return
        self._last_status = time.time()
        counts: dict[str, int] = {}
        for t in trials:
            counts[t.status] = counts.get(t.status, 0) + 1
        # a repeated (reused) configuration's figures are a trained model's too: the best may be one
        finished = [r for r in self.state.finals.values() if r.status in (TRAINED, DUPLICATE) and r.iou is not None]
        best = max(finished, key=lambda r: r.iou if r.iou is not None else -math.inf, default=None)
        print(f"[{self.stage}] " + ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items()))
              + f"; {self.state.epochs_spent} epochs trained"
              + (f"; best IoU {best.iou:.4f} ({best.name}, {best.latency_ms:.3g} ms)" if best else ""), flush=True)

    def on_experiment_end(self, trials, **info) -> None:
        # Ray Tune also ends the experiment when Ctrl-C (or our deadline's SIGINT) stops it early:
        # only a run where every trial it was to run exists and concluded ended cleanly (a stop
        # before the first trial, or between two, leaves none or fewer, all concluded)
        self.state.ended = len(trials) >= max(1, self.expected_trials) and all(
            t.status in ("TERMINATED", "ERROR") for t in trials)
        self.close("KILLED")

    # ---- helpers -------------------------------------------------------------------------
    def _log_hypervolume(self) -> None:
        # the candidates only, as the final figure counts them (not stopped, repeated or pruned
        # trials), in the box of the budget or of every latency measured so far
        rows = list(self.state.finals.values())
        front = front_hypervolume(candidates(rows), rows, self.hv_latency)
        hv, share = front.value, front.share
        step = len(self.state.done)
        self.state.hv_history.append([step, self.state.epochs_spent, hv, share])
        self.client.log_batch(self.state.parent, metrics=[
            Metric(k, float(v), int(time.time() * 1000), step) for k, v in
            ((obj.HYPERVOLUME, hv), (obj.HYPERVOLUME_NORMALIZED, share), (obj.EPOCHS_SPENT, self.state.epochs_spent))])

    def close(self, status: str) -> None:
        """End every child run still open with ``status`` (the search ended or was interrupted)."""
        for tid, run_id in self.state.runs.items():
            if tid in self.state.done:
                continue
            try:
                if self.client.get_run(run_id).info.status in ("RUNNING", "SCHEDULED"):
                    self.client.set_terminated(run_id, status)
            except Exception as e:
                log.warning("could not end run %s: %s", run_id, e)
        self._save(stop=False)  # the runs have ended whatever happens here
