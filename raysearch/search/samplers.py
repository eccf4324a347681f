"""The Optuna samplers behind ``--sampler``, built so that Ray Tune can ship them.

Ray Tune pickles its searcher (and with it the sampler) when the Tuner is created and at every
experiment snapshot. Optuna 5.1's genetic samplers (`NSGAIISampler`, via `BaseGASampler`) hold a
``threading.Lock``, which does not pickle: `--sampler nsga2` crashed on a fresh install. The lock
only guards a cache of the sampler's own, so a copy gets a fresh lock.

| name   | Optuna sampler                        | when it pays off                                 |
|--------|---------------------------------------|--------------------------------------------------|
| tpe    | TPESampler (multivariate; MOTPE)      | tens to hundreds of trials                       |
| gp     | GPSampler (LogEHVI with 2 objectives) | tens of trials (a GP fit per trial: slower)      |
| nsga2  | NSGAIISampler                         | generations of a population: ~100+ trials        |
| random | RandomSampler                         | the baseline; a tiny space                       |
"""

from __future__ import annotations

import threading
from typing import Any

import optuna

OPTUNA_SAMPLERS = ("tpe", "gp", "nsga2", "random")  # what `make_sampler` builds (`raysearch.search.methods`'s table)


class _FreshLocks:
    """Pickles without its locks and gets new ones when unpickled (they guard in-process caches)."""

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if not isinstance(v, type(threading.Lock()))}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._thread_lock = threading.Lock()


class PicklableNSGAIISampler(_FreshLocks, optuna.samplers.NSGAIISampler):
    """`optuna.samplers.NSGAIISampler` that survives pickling (Ray Tune's searcher snapshots)."""


def make_sampler(name: str, *, seed: int, num_samples: int, startup_trials: int | None = None) -> optuna.samplers.BaseSampler:
    """The Optuna sampler ``name`` (one of `OPTUNA_SAMPLERS`), seeded. ``startup_trials``: random trials before
    the model-based ones (TPE, GP; Optuna's default 10 when None)."""
    if name not in OPTUNA_SAMPLERS:
        raise ValueError(f"{name!r} is not one of Optuna's samplers {OPTUNA_SAMPLERS}")
    startup: dict[str, Any] = {} if startup_trials is None else {"n_startup_trials": startup_trials}
    if name == "nsga2":  # generations of a small population: tens of trials make a few
        return PicklableNSGAIISampler(seed=seed, population_size=max(4, min(50, num_samples // 3)))
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, **startup)
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, **startup)  # MOTPE with two objectives
