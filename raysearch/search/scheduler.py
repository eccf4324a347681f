"""Pareto-aware early stopping: asynchronous successive halving that ranks the trials at a rung
by both objectives (validation IoU, maximized; measured latency, minimized).

ASHA on IoU alone stops the narrow, fast models first, since they are less accurate at every
rung: exactly the models an edge user came for. Here a trial's latency is known before its
first epoch (it is measured on the untrained model), so every rung can rank by both.

The rule (asynchronous, like ASHA): rungs sit at ``grace_period * eta**k`` epochs, below the
last epoch (a trial that trained every epoch is worth its export and evaluation). When a trial
first reaches a rung, its (IoU, latency) is recorded there and the rung's records are ranked by
non-dominated sorting (front 0 first, then front 1, ...); inside a front, by crowding distance,
largest first; a tie goes to the arriving trial. The trial goes on when its place in that
order is within the top ``ceil(n / eta)`` of the ``n`` records, else it stops. Its records stay (they are real
observations of a partly trained model), so later arrivals are measured against them.

Why crowding distance for the ties inside a front: it needs no reference point (a
hypervolume contribution would need one, and the search's latency range is only known as it
goes), and it gives the two ends of every front an infinite distance, so the fastest and the
most accurate trial of a front always rank first: the fast end of the front is never cut for
its IoU. Background: Schmucker et al. 2021 and Salinas et al. 2021 (multi-objective ASHA).

The state (every rung's records, each trial's latency) is written to a small JSON file after
every decision and read back when the scheduler is restored with the experiment
(`Tuner.restore`, ``--resume``): Ray Tune pickles the scheduler only as it was when the search
started. An errored or retried trial keeps its records (they were real observations); rungs it
already passed are not decided again when it resumes from its checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from raysearch.records import names as obj
from raysearch.records.pareto import as_costs, costs_dominate
from raysearch.records.results import finite
from raysearch.storage import write_atomic

if TYPE_CHECKING:
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.experiment import Trial

log = logging.getLogger(__name__)

Point = tuple[float, float]  # (iou, latency_ms)
FRONT_MARGIN = 0.01  # `FrontStopping`: IoU a trial may fall short by and still go on
FRONT_MIN_FINISHED = 4  # `FrontStopping`: finished trials before anything is stopped (its docstring says why)


# ---- the maths (pure) --------------------------------------------------------------------------
_DECIDED_ON = (obj.VAL_IOU, obj.LATENCY_MS)  # what a `Point` holds: the rung's validation IoU, the latency


def nondominated_fronts(points: Mapping[str, Point]) -> list[list[str]]:
    """The keys of ``points`` sorted into fronts: front 0 is dominated by nothing, front 1 only by
    front 0, and so on (IoU maximized, latency minimized; equal points share a front)."""
    left = {k: as_costs(p, _DECIDED_ON) for k, p in points.items()}
    fronts = []
    while left:
        front = sorted(k for k, c in left.items() if not any(costs_dominate(d, c) for d in left.values()))
        fronts.append(front)
        for k in front:
            del left[k]
    return fronts


def crowding_distance(points: Mapping[str, Point], front: Sequence[str]) -> dict[str, float]:
    """NSGA-II's crowding distance of each point of one front: the sum over the objectives of the
    gap between its two neighbours, divided by the front's range; the ends are infinite."""
    dist = {k: 0.0 for k in front}
    if len(front) <= 2:
        return {k: math.inf for k in front}
    for m in range(2):
        ranked = sorted(front, key=lambda k: (points[k][m], k))
        lo, hi = points[ranked[0]][m], points[ranked[-1]][m]
        dist[ranked[0]] = dist[ranked[-1]] = math.inf
        if hi == lo:
            continue
        for prev, k, nxt in zip(ranked, ranked[1:], ranked[2:]):
            dist[k] += (points[nxt][m] - points[prev][m]) / (hi - lo)
    return dist


def pareto_order(points: Mapping[str, Point], favour: str | None = None) -> list[str]:
    """Every key, best first: by front, then by crowding distance (largest first); a tie goes to
    ``favour`` (the trial being decided, as ASHA lets a trial equal to its cutoff go on), then
    to the smaller key."""
    order = []
    for front in nondominated_fronts(points):
        dist = crowding_distance(points, front)
        order += sorted(front, key=lambda k: (-dist[k], k != favour, k))
    return order


def keeps(points: Mapping[str, Point], key: str, eta: float) -> bool:
    """Whether ``key``, just recorded, is within the top ``ceil(n / eta)`` of the rung's ``n``
    records."""
    return pareto_order(points, favour=key).index(key) < math.ceil(len(points) / eta)


def rung_milestones(grace_period: int, eta: float, epochs: int) -> list[int]:
    """Epochs at which trials are compared: grace_period * eta**k below the last epoch."""
    out: list[int] = []
    k = 0
    while (m := int(round(grace_period * eta ** k))) < epochs:
        if not out or m > out[-1]:
            out.append(m)
        k += 1
    return out


# ---- the Ray Tune schedulers ------------------------------------------------------------------
class _StatefulScheduler(FIFOScheduler):
    """A scheduler whose decisions depend on what it saw. Its state lives in a JSON file
    (``state_path``; None: in memory only) rewritten after every change: Ray Tune pickles a
    scheduler into the experiment when the search starts and brings back that copy on restore, so
    the copy is rebuilt from its arguments and its state file. Subclasses give ``_state`` and ``_load``."""

    def __init__(self, args: dict[str, Any]) -> None:
        super().__init__()
        self._args = args
        state_path = args.get("state_path")
        self.state_path = None if state_path is None else Path(state_path)

    def _restore_file(self) -> None:
        if self.state_path is not None and self.state_path.is_file():
            self._load(json.loads(self.state_path.read_text()))

    def __getstate__(self) -> dict[str, Any]:
        return {"args": self._args, "state": self._state()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state["args"])  # type: ignore[misc]  # rebuilt by the subclass's own __init__
        if self.state_path is None:
            self._load(state["state"])

    def _state(self) -> dict[str, Any]:
        raise NotImplementedError

    def _load(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def _save(self) -> None:
        if self.state_path is not None:
            write_atomic(self.state_path, json.dumps(self._state()))

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return True  # it decides by its own metrics, whatever single metric Tune passes


class ParetoASHA(_StatefulScheduler):
    """Asynchronous successive halving on (validation IoU, latency); see the module doc.

    ``epochs``: the trials' training epochs (no rung at or past the last one; the trial ends by
    itself after it). ``state_path``: where the rung records live (None: in memory only)."""

    def __init__(self, *, epochs: int, grace_period: int = 1, reduction_factor: float = 3.0,
                 time_attr: str = obj.EPOCH, iou_metric: str = obj.VAL_IOU.name,
                 latency_metric: str = obj.LATENCY_MS.name, state_path: str | Path | None = None) -> None:
        if grace_period < 1 or reduction_factor <= 1 or epochs < 1:
            raise ValueError(f"pareto-asha: need grace_period >= 1 (got {grace_period}), reduction factor > 1 "
                             f"(got {reduction_factor}) and epochs >= 1 (got {epochs})")
        super().__init__(dict(epochs=epochs, grace_period=grace_period, reduction_factor=reduction_factor,
                              time_attr=time_attr, iou_metric=iou_metric, latency_metric=latency_metric,
                              state_path=None if state_path is None else str(state_path)))
        self.eta, self.time_attr = reduction_factor, time_attr
        self.iou_metric, self.latency_metric = iou_metric, latency_metric
        self.milestones = rung_milestones(grace_period, reduction_factor, epochs)
        self.rungs: dict[int, dict[str, Point]] = {m: {} for m in self.milestones}
        self.latency: dict[str, float] = {}
        self.stopped: dict[str, int] = {}  # trial id -> the epoch it was stopped at
        self._restore_file()

    def _state(self) -> dict[str, Any]:
        return {"rungs": {str(m): {k: list(p) for k, p in r.items()} for m, r in self.rungs.items()},
                "latency": self.latency, "stopped": self.stopped}

    def _load(self, state: dict[str, Any]) -> None:
        for m, recorded in state.get("rungs", {}).items():
            self.rungs.setdefault(int(m), {}).update({k: (p[0], p[1]) for k, p in recorded.items()})
        self.latency.update(state.get("latency", {}))
        self.stopped.update(state.get("stopped", {}))

    # ---- decisions -------------------------------------------------------------------------
    def decide(self, trial_id: str, epoch: float, iou: float | None, latency: float | None) -> str:
        """CONTINUE or STOP for a trial that reports ``iou`` at ``epoch`` (pure bookkeeping; the
        Ray Tune hooks call this)."""
        if latency is not None and trial_id not in self.latency:
            self.latency[trial_id] = latency  # the first report's: measured before training
        latency = self.latency.get(trial_id)
        if iou is None or latency is None:
            return TrialScheduler.CONTINUE
        action = TrialScheduler.CONTINUE
        for m in self.milestones:  # the lowest rung reached that does not hold the trial yet
            if epoch < m:
                break
            if trial_id in self.rungs[m]:
                continue
            self.rungs[m][trial_id] = (iou, latency)
            if not keeps(self.rungs[m], trial_id, self.eta):
                action = TrialScheduler.STOP
                self.stopped[trial_id] = int(epoch)
            self._save()
            break
        return action

    def on_trial_result(self, tune_controller: TuneController, trial: Trial, result: dict[str, Any]) -> str:
        if result.get(obj.FINAL) or self.time_attr not in result:  # a final report: the trial is done
            return TrialScheduler.CONTINUE
        return self.decide(trial.trial_id, result[self.time_attr], finite(result.get(self.iou_metric)),
                           finite(result.get(self.latency_metric)))

    def debug_string(self) -> str:
        return "Pareto-ASHA: " + ", ".join(f"epoch {m}: {len(r)} recorded" for m, r in self.rungs.items()) + \
            f"; {len(self.stopped)} stopped"


# ---- stopping what cannot reach the front --------------------------------------------------------
def front_level(finished: Sequence[Point], latency: float) -> float:
    """The front's IoU at ``latency``: the best final IoU of the trials at most that slow (0: none)."""
    return max((iou for iou, lat in finished if lat <= latency), default=0.0)


class FrontStopping(_StatefulScheduler):
    """``--scheduler front``: stop a trial once it cannot join the front.

    A trial's latency is known before its first epoch, so the IoU it must beat is known too: the
    best final IoU among the finished trials at most as slow (`front_level`). Whether it can still
    get there is read from the trials that finished: the most any of them gained from its best
    validation IoU up to this epoch to its final test IoU (``gain``). A trial whose best
    validation IoU so far plus that gain plus ``margin`` is below the level stops. The best so far,
    not the last: on long, noisy curves (table L, 100 epochs on a small validation split) a dip
    of one epoch stopped trials that would have joined the front (BENCHMARKS.md, "Early stopping"). Until ``min_finished`` trials have
    finished with a validation IoU at this epoch, nothing stops (no evidence of the gain yet); the
    fast end of the front is never cut, since nothing faster has to be beaten there.

    Why 4 finished trials: the largest gain of two trials underestimates what a third may gain,
    and a front point stopped by mistake is lost for good (the searcher does not propose it
    again). On the recorded tables 2 lost up to 0.008 of the grid's hypervolume against no
    stopping where 4 lost at most 0.0012 (1, 4 and 16 workers); the sweep of margin and count is
    `benchmarks/front_stopping_sweep.py` (BENCHMARKS.md). Chosen on those tables: in-sample.

    Unlike successive halving it keeps no quota: a search of promising configurations (what
    `raysearch.search.latency_first` proposes) loses none of them, and a dominated one is stopped at its
    first decision. The state (finished points, every trial's validation curve) is written to
    ``state_path`` after every finished trial and read back on restore, as `ParetoASHA` does."""

    def __init__(self, *, grace_period: int = 1, margin: float = FRONT_MARGIN, min_finished: int = FRONT_MIN_FINISHED,
                 state_path: str | Path | None = None) -> None:
        if grace_period < 1 or margin < 0 or min_finished < 1:
            raise ValueError(f"front: need grace_period >= 1 (got {grace_period}), margin >= 0 (got {margin}), "
                             f"min_finished >= 1 (got {min_finished})")
        super().__init__(dict(grace_period=grace_period, margin=margin, min_finished=min_finished,
                              state_path=None if state_path is None else str(state_path)))
        self.grace_period, self.margin, self.min_finished = grace_period, margin, min_finished
        self.curves: dict[str, dict[int, float]] = {}  # trial id -> epoch -> best validation IoU up to it
        self.latency: dict[str, float] = {}
        self.finished: dict[str, Point] = {}  # trial id -> (final test IoU, latency)
        self.stopped: dict[str, int] = {}
        self._restore_file()

    def _state(self) -> dict[str, Any]:
        return {"curves": {k: {str(e): v for e, v in c.items()} for k, c in self.curves.items()},
                "latency": self.latency, "finished": {k: list(p) for k, p in self.finished.items()},
                "stopped": self.stopped}

    def _load(self, state: dict[str, Any]) -> None:
        self.curves.update({k: {int(e): v for e, v in c.items()} for k, c in state.get("curves", {}).items()})
        self.latency.update(state.get("latency", {}))
        self.finished.update({k: (p[0], p[1]) for k, p in state.get("finished", {}).items()})
        self.stopped.update(state.get("stopped", {}))

    def gain(self, epoch: int) -> float | None:
        """The most a finished trial gained from its best validation IoU up to ``epoch`` to its final IoU
        (None: fewer than ``min_finished`` finished trials reported that epoch)."""
        gains = [self.finished[k][0] - self.curves[k][epoch] for k in self.finished
                 if epoch in self.curves.get(k, {})]
        return max(gains) if len(gains) >= self.min_finished else None

    def decide(self, trial_id: str, epoch: int, iou: float | None, latency: float | None) -> str:
        if latency is not None:
            self.latency.setdefault(trial_id, latency)
        latency = self.latency.get(trial_id)
        if iou is None or latency is None:
            return TrialScheduler.CONTINUE
        curve = self.curves.setdefault(trial_id, {})
        # the best so far (a dip never stops it), of the epochs up to this one: a trial retried from a
        # checkpoint reports some epochs again, and what its first attempt reported after them is gone
        before = max((v for e, v in curve.items() if e < epoch), default=None)
        best = curve[epoch] = iou if before is None else max(before, iou)
        if before is None or iou > before:  # a new best: kept in the state file, so a restore knows it
            self._save()
        if epoch < self.grace_period or (gain := self.gain(epoch)) is None:
            return TrialScheduler.CONTINUE
        if best + gain + self.margin < front_level(list(self.finished.values()), latency):
            self.stopped[trial_id] = epoch
            self._save()
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def on_trial_result(self, tune_controller: TuneController, trial: Trial, result: dict[str, Any]) -> str:
        if result.get(obj.FINAL):
            self._finish(trial.trial_id, result)
            return TrialScheduler.CONTINUE
        if obj.EPOCH not in result:
            return TrialScheduler.CONTINUE
        return self.decide(trial.trial_id, int(result[obj.EPOCH]), finite(result.get(obj.VAL_IOU.name)),
                           finite(result.get(obj.LATENCY_MS.name)))

    def on_trial_complete(self, tune_controller: TuneController, trial: Trial, result: dict[str, Any]) -> None:
        if result and result.get(obj.FINAL):
            self._finish(trial.trial_id, result)

    def _finish(self, trial_id: str, result: dict[str, Any]) -> None:
        iou, latency = finite(result.get(obj.IOU.name)), finite(result.get(obj.LATENCY_MS.name))
        if iou is not None and latency is not None and not result.get(obj.PRUNED) and trial_id not in self.finished:
            self.finished[trial_id] = (iou, latency)
            self._save()

    def debug_string(self) -> str:
        return f"front stopping: {len(self.finished)} finished, {len(self.stopped)} stopped"
