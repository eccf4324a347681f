"""The search methods of ``--mode search``, one object each: the samplers (``--sampler``) and the
schedulers (``--scheduler``). Each knows how to build itself for Ray Tune, what it needs before
the search starts, and what it logs on the parent run; the command line's choices, the driver and
the replay (`raysearch.replay`) all read these tables, so no code outside this module
compares a method's name.

| sampler       | what it is                                                  | latency first |
|---------------|-------------------------------------------------------------|---------------|
| latency-first | `LatencyFirstSearch`: the largest expected hypervolume gain | yes           |
| tpe, gp, nsga2, random | Optuna's, behind Ray Tune's `OptunaSearch`, each configuration once (`DistinctSearch`) | no |

| scheduler   | what it is                                                                  |
|-------------|-----------------------------------------------------------------------------|
| none        | every trial to the end (the default: BENCHMARKS.md, "Early stopping on long curves") |
| front       | `FrontStopping`: stop what can no longer join the front                     |
| pareto-asha | `ParetoASHA`: successive halving ranked by (validation IoU, latency)        |
| asha        | Ray Tune's `ASHAScheduler` on validation IoU alone (for comparison)         |

Light to import: Ray, Optuna and the searchers are imported when a method is built.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raysearch.records import names as obj

if TYPE_CHECKING:
    from ray.tune.schedulers import TrialScheduler
    from ray.tune.search import Searcher

    from raysearch.search.latency_first import LatencyOracle
    from raysearch.search.options import SearchOptions, Space

log = logging.getLogger(__name__)

SWEEP_LIMIT = 2000  # configurations --latency-sweep all measures before training (seconds each on a device)
# latency-first: measure what could change a choice (a latency model), every configuration first, or
# auto: all in a listed space of up to SWEEP_LIMIT (it scored higher on the recorded tables), needed
# beyond and for a continuous knob
LATENCY_SWEEPS = ("auto", "needed", "all")
# latency-first ranks a finite set of configurations: a continuous knob at this many values, ends included
CONTINUOUS_LEVELS = 9


# ---- samplers ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sampler:
    """A ``--sampler``: builds the Ray Tune searcher and says what it needs and logs."""

    name: str
    latency_first: bool  # needs every configuration's latency, or a latency model, before training
    startup_trials: int  # random proposals before the model-based ones (a parent-run param)
    slow: bool = False  # refits a model for every proposal: minutes per search (replays on request only)
    levels: int = 0  # searches a continuous knob at this many evenly spaced values (0: any number in its range)

    def searcher(self, opts: SearchOptions, first: list[dict[str, Any]] | None = None,
                 latencies: dict[str, float] | None = None, oracle: LatencyOracle | None = None) -> Searcher:
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        """What the parent run logs about how this sampler works (beside ``sampler``)."""
        raise NotImplementedError


@dataclass(frozen=True)
class LatencyFirstSampler(Sampler):
    def searcher(self, opts: SearchOptions, first: list[dict[str, Any]] | None = None,
                 latencies: dict[str, float] | None = None, oracle: LatencyOracle | None = None) -> Searcher:
        from raysearch.search.latency_first import LatencyFirstSearch

        if latencies is None and oracle is None:
            raise ValueError(f"--sampler {self.name} needs every configuration's latency or a latency model")
        return LatencyFirstSearch(latencies, oracle=oracle, seed=opts.seed, max_latency_ms=opts.max_latency_ms,
                                  points_to_evaluate=first)

    def params(self) -> dict[str, Any]:
        from raysearch.search import latency_first as lf

        return {obj.PARAM_STARTUP_TRIALS: self.startup_trials, obj.PARAM_STOPPED_TRIALS: "marked tried, not fitted",
                obj.PARAM_SEARCHER_PRIOR: f"intercept {lf.PRIOR_INTERCEPT}, knob {lf.PRIOR_KNOB}, log latency "
                                          f"{lf.PRIOR_LOG_LATENCY}, noise {lf.NOISE_SD}"}


@dataclass(frozen=True)
class OptunaSampler(Sampler):
    """Optuna's sampler behind Ray Tune's `OptunaSearch`, told the objectives (metric/mode only
    here: TuneConfig(metric=...) would make it single-objective); a trial the scheduler stops is
    told to it with its last report. `DistinctSearch` around it: a repeat is told its known
    outcome and the sampler asked again."""

    def searcher(self, opts: SearchOptions, first: list[dict[str, Any]] | None = None,
                 latencies: dict[str, float] | None = None, oracle: LatencyOracle | None = None) -> Searcher:
        from ray.tune.search.optuna import OptunaSearch

        from raysearch.search.distinct import DistinctSearch
        from raysearch.search.samplers import make_sampler

        sampler = make_sampler(self.name, seed=opts.seed, num_samples=opts.num_samples)
        return DistinctSearch(OptunaSearch(metric=obj.metric_names(), mode=list[str](obj.metric_modes()),
                                           sampler=sampler, points_to_evaluate=first))

    def params(self) -> dict[str, Any]:
        return {obj.PARAM_STARTUP_TRIALS: self.startup_trials,
                obj.PARAM_STOPPED_TRIALS: "COMPLETE with its last report (OptunaSearch)"}


# startup 10: Optuna's default n_startup_trials for TPE and GP
SAMPLER_TABLE: dict[str, Sampler] = {s.name: s for s in (
    LatencyFirstSampler("latency-first", latency_first=True, startup_trials=0, levels=CONTINUOUS_LEVELS),
    OptunaSampler("tpe", latency_first=False, startup_trials=10),
    OptunaSampler("gp", latency_first=False, startup_trials=10, slow=True),
    OptunaSampler("nsga2", latency_first=False, startup_trials=0),
    OptunaSampler("random", latency_first=False, startup_trials=0),
)}
SAMPLERS = tuple(SAMPLER_TABLE)


# ---- schedulers --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Scheduler:
    """A ``--scheduler``: builds the Ray Tune scheduler (None: Tune's FIFO, every trial to the end)."""

    name: str

    def make(self, opts: SearchOptions, epochs: int, state_path: Path | None) -> TrialScheduler | None:
        return None

    def params(self) -> dict[str, Any]:
        """What the parent run logs about this scheduler's settings (beside ``scheduler``)."""
        return {}


@dataclass(frozen=True)
class FrontScheduler(Scheduler):
    def make(self, opts: SearchOptions, epochs: int, state_path: Path | None) -> TrialScheduler | None:
        from raysearch.search.scheduler import FrontStopping

        return FrontStopping(grace_period=opts.schedule.grace_period, state_path=state_path)

    def params(self) -> dict[str, Any]:
        from raysearch.search.scheduler import FRONT_MARGIN, FRONT_MIN_FINISHED

        return {obj.PARAM_FRONT_MARGIN: FRONT_MARGIN, obj.PARAM_FRONT_MIN_FINISHED: FRONT_MIN_FINISHED}


@dataclass(frozen=True)
class ParetoASHAScheduler(Scheduler):
    def make(self, opts: SearchOptions, epochs: int, state_path: Path | None) -> TrialScheduler | None:
        from raysearch.search.scheduler import ParetoASHA

        return ParetoASHA(epochs=max(1, epochs), grace_period=opts.schedule.grace_period,
                          reduction_factor=opts.schedule.reduction_factor, state_path=state_path)


@dataclass(frozen=True)
class RayASHAScheduler(Scheduler):
    def make(self, opts: SearchOptions, epochs: int, state_path: Path | None) -> TrialScheduler | None:
        from ray.tune.schedulers import ASHAScheduler

        # +1: reaching max_t stops a trial, and its last epoch must still export/evaluate
        return ASHAScheduler(time_attr=obj.EPOCH, metric=obj.VAL_IOU.name, mode=obj.VAL_IOU.mode, max_t=epochs + 1,
                             grace_period=opts.schedule.grace_period, reduction_factor=opts.schedule.reduction_factor)


SCHEDULER_TABLE: dict[str, Scheduler] = {s.name: s for s in (
    ParetoASHAScheduler("pareto-asha"), FrontScheduler("front"), RayASHAScheduler("asha"), Scheduler("none"))}
SCHEDULERS = tuple(SCHEDULER_TABLE)


# ---- what the driver and the replay ask ------------------------------------------------------
def sampler_of(opts: SearchOptions) -> Sampler:
    return SAMPLER_TABLE[opts.schedule.sampler]


def searched_space(opts: SearchOptions, space: Space) -> Space:
    """The space the sampler searches: ``space``, or listed where the sampler ranks a finite set of
    configurations (latency-first): every step of a range, a continuous knob at evenly spaced values."""
    levels = sampler_of(opts).levels if opts.mode == "search" else 0
    if not (levels and space.ranges):
        return space
    if space.continuous:
        ranges = space.describe()
        log.info("--sampler %s searches %s at %d evenly spaced values (give a step, LOW:HIGH:STEP, for others)",
                 opts.schedule.sampler, ", ".join(f"{k}={ranges[k]}" for k in space.continuous), levels)
    return space.finite(levels)


def make_searcher(opts: SearchOptions, first: list[dict[str, Any]] | None = None,
                  latencies: dict[str, float] | None = None, oracle: LatencyOracle | None = None) -> Searcher:
    """The searcher of ``--mode search``, each configuration proposed once. A latency-first sampler
    takes ``latencies`` (`config_key` -> ms, every configuration's, measured before the search:
    ``--latency-sweep all``) or ``oracle`` (a latency model, measuring what it needs).
    ``first``: configs to try before the sampler's own (Optuna's enqueued trials)."""
    return sampler_of(opts).searcher(opts, first, latencies, oracle)


def make_scheduler(opts: SearchOptions, epochs: int, state_path: Path | None) -> TrialScheduler | None:
    """The scheduler of ``--scheduler`` (None: every trial to the end)."""
    return SCHEDULER_TABLE[opts.schedule.scheduler].make(opts, epochs, state_path)


def method_params(opts: SearchOptions) -> dict[str, Any]:
    """How ``--mode search``'s searcher works, for the parent run's params (beside ``sampler``,
    ``scheduler``, ``grace_period`` and ``reduction_factor``, logged from the options)."""
    if opts.mode != "search":
        return {}
    return {**SCHEDULER_TABLE[opts.schedule.scheduler].params(), **sampler_of(opts).params()}


def needs_latency_first(opts: SearchOptions) -> bool:
    """Whether the search learns latencies before training (a latency-first sampler)."""
    return opts.mode == "search" and sampler_of(opts).latency_first


def sweeps_all(opts: SearchOptions, space: Space) -> bool:
    """Whether a latency-first search measures every configuration before training (``--latency-sweep``):
    ``auto`` sweeps a listed space of up to `SWEEP_LIMIT`, not the values a continuous knob was listed at."""
    sweep = opts.schedule.latency_sweep
    return sweep == "all" or (sweep == "auto" and space.size() <= SWEEP_LIMIT and not space.levels)
