"""The search methods `raysearch replay` compares: our samplers with our schedulers, and the peer.
Light to import (the command line's ``--methods`` choices come from here; the search code is
imported only when a method's options are built)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from raysearch.search.options import SearchOptions

BASELINE = "random, no stopping"


@dataclass(frozen=True)
class Method:
    """A search method: the product's options that make it (the rest are `SearchOptions`'s defaults)."""

    key: str  # for the command line (`raysearch replay --methods`)
    label: str
    sampler: str
    scheduler: str
    grace_period: int | None = None
    reduction_factor: float | None = None
    peer: str | None = None  # a peer's own search (`raysearch.replay.peers`) instead of sampler + scheduler
    latency_sweep: str | None = None  # latency-first: "needed" predicts with a latency model (None: the default)

    def options(self, seed: int, num_samples: int, max_latency_ms: float | None = None) -> "SearchOptions":
        from raysearch.search.options import SearchOptions

        tuned = {k: v for k, v in (("grace_period", self.grace_period), ("reduction_factor", self.reduction_factor),
                                   ("latency_sweep", self.latency_sweep)) if v is not None}
        return SearchOptions.from_flags(mode="search", sampler=self.sampler, scheduler=self.scheduler, seed=seed,
                                        num_samples=num_samples, max_latency_ms=max_latency_ms, **tuned)

    def is_default(self) -> bool:
        """Whether this is what `--mode search` runs when nothing else is asked."""
        from raysearch.search.options import SearchOptions

        return self.options(seed=0, num_samples=1).schedule == SearchOptions().schedule


METHODS = (
    Method("random", BASELINE, "random", "none"),
    Method("random-pasha", "random + Pareto-ASHA", "random", "pareto-asha"),
    Method("tpe-asha", "TPE + ASHA(IoU)", "tpe", "asha"),
    Method("tpe-pasha", "TPE + Pareto-ASHA", "tpe", "pareto-asha"),
    Method("nsga2-pasha", "NSGA-II + Pareto-ASHA", "nsga2", "pareto-asha"),
    Method("gp", "GP, no stopping", "gp", "none"),
    Method("gp-pasha", "GP + Pareto-ASHA", "gp", "pareto-asha"),
    Method("latency-first", "latency-first, no stopping", "latency-first", "none"),
    Method("latency-first-front", "latency-first + front stopping", "latency-first", "front"),
    Method("latency-first-model", "latency-first (latency model), no stopping", "latency-first", "none",
           latency_sweep="needed"),
    Method("latency-first-front-model", "latency-first (latency model) + front stopping", "latency-first",
           "front", latency_sweep="needed"),
    Method("random-front", "random + front stopping", "random", "front"),
    Method("moasha", "Syne Tune MOASHA (peer)", "random", "none", peer="moasha"),
)
METHOD_KEYS = {m.key: m for m in METHODS}

# Seconds per replay (one seed) on table A (36 configurations; 4 simulated workers, budgets up to
# 50% of the grid's epochs), one process, measured on the 2-core development VM beside a nice-19
# background job (2026-12-07, Optuna 5.1 and Ray 2.60; issue 33): the median over 3 seeds without a
# process's first replay (its imports); gp-pasha one seed (23 minutes: nearly all of its 360
# proposals are configurations already trained, each a GP fit and an acquisition optimization).
# What `raysearch replay` estimates a comparison's time from, and what makes a method slow.
SECONDS_PER_SEED = {
    "random": 0.01, "random-pasha": 0.13, "tpe-asha": 0.8, "tpe-pasha": 0.8, "nsga2-pasha": 0.17,
    "gp": 16.0, "gp-pasha": 1400.0, "latency-first": 0.03, "latency-first-front": 0.03, "random-front": 0.02,
    "latency-first-model": 1.2, "latency-first-front-model": 1.2,  # 2026-12-07, AMD EPYC VM (issue 31)
    "moasha": 1.5,
}
ESTIMATE_CONFIGS = 36  # table A's configurations, where SECONDS_PER_SEED was measured
SLOW_SECONDS = 10.0  # a method slower than this per seed on table A is left out unless asked for


def is_slow(method: Method) -> bool:
    """GP-based (a GP refit per proposal: minutes per replay) or measured above SLOW_SECONDS."""
    from raysearch.search.methods import SAMPLER_TABLE

    return SAMPLER_TABLE[method.sampler].slow or SECONDS_PER_SEED.get(method.key, math.inf) > SLOW_SECONDS


DEFAULT_METHODS = tuple(m for m in METHODS if not is_slow(m))  # what `raysearch replay` compares unless asked
SLOW_METHODS = tuple(m for m in METHODS if is_slow(m))  # on request: `--methods gp ...` or `--methods all`
METHOD_GROUPS = {"default": DEFAULT_METHODS, "all": METHODS}  # names `--methods` takes besides the keys


def select(names: Sequence[str]) -> list[Method]:
    """The methods of ``--methods``: keys and group names (`METHOD_GROUPS`), in the order given,
    each once. A name that is neither: ValueError."""
    chosen: dict[str, Method] = {}
    for name in names:
        group = METHOD_GROUPS.get(name)
        if group is None and name not in METHOD_KEYS:
            raise ValueError(f"--methods {name}: no such method (one of {', '.join([*METHOD_KEYS, *METHOD_GROUPS])})")
        for m in group if group is not None else (METHOD_KEYS[name],):
            chosen.setdefault(m.key, m)
    return list(chosen.values())


def seconds_per_seed(method: Method, configs: int = ESTIMATE_CONFIGS) -> float:
    """One replay's rough cost in seconds of one core, on a table of ``configs`` configurations:
    table A's measurement (SECONDS_PER_SEED) scaled by the table's size, linearly for the fast
    methods, quadratically for the slow ones (a GP is refitted on every trial told so far for each
    proposal, and proposals grow with the table: GP + Pareto-ASHA took about 2 hours a seed on
    table B's 162, BENCHMARKS.md)."""
    base = SECONDS_PER_SEED.get(method.key, SLOW_SECONDS if is_slow(method) else 1.0)
    return base * (configs / ESTIMATE_CONFIGS) ** (2 if is_slow(method) else 1)


def estimate_seconds(replays: Sequence[Method], jobs: int, configs: int = ESTIMATE_CONFIGS) -> float:
    """Rough wall time of ``replays`` (one entry per replay to run) on ``jobs`` processes: their
    cores' seconds shared among the jobs, never less than the longest single replay."""
    costs = [seconds_per_seed(m, configs) for m in replays]
    if not costs:
        return 0.0
    return max(sum(costs) / max(1, min(jobs, len(costs))), max(costs))


def default_label(methods: Sequence[Method] = METHODS) -> str | None:
    """The label of the method `--mode search` runs when nothing else is asked."""
    return next((m.label for m in methods if m.is_default()), None)
