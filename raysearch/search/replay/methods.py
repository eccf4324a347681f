"""The search methods `raysearch replay` compares: our samplers with our schedulers, and the peer.
Light to import (the command line's ``--methods`` choices come from here; the search code is
imported only when a method's options are built)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from raysearch.search.driver import SearchOptions

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
    peer: str | None = None  # a peer's own search (`raysearch.search.replay.peers`) instead of sampler + scheduler

    def options(self, seed: int, num_samples: int, max_latency_ms: float | None = None) -> "SearchOptions":
        from raysearch.search.driver import SearchOptions

        tuned = {k: v for k, v in (("grace_period", self.grace_period), ("reduction_factor", self.reduction_factor))
                 if v is not None}
        return SearchOptions.from_flags(mode="search", sampler=self.sampler, scheduler=self.scheduler, seed=seed,
                                        num_samples=num_samples, max_latency_ms=max_latency_ms, **tuned)

    def is_default(self) -> bool:
        """Whether this is what `--mode search` runs when nothing else is asked."""
        from raysearch.search.driver import SearchOptions

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
    Method("random-front", "random + front stopping", "random", "front"),
    Method("moasha", "Syne Tune MOASHA (peer)", "random", "none", peer="moasha"),
)
METHOD_KEYS = {m.key: m for m in METHODS}


def default_label(methods: Sequence[Method] = METHODS) -> str | None:
    """The label of the method `--mode search` runs when nothing else is asked."""
    return next((m.label for m in methods if m.is_default()), None)
