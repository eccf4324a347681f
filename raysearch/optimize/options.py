"""What `raysearch optimize` is asked to do: the model, the effort, the requirement and the search's
settings (`OptimizeOptions`), checked when made, and the name that identifies an optimization."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from raysearch.models import ModelSpec, get_family, parse_hw
from raysearch.search.options import SearchOptions
from raysearch.search.presets import preset

EFFORTS = ("entry", "intermediate", "expert")


@dataclass
class OptimizeOptions:
    """What to optimize and how hard (``search``: data, farm, tracking, cluster, requirements)."""

    model: str = "fastscnn"
    effort: str = "intermediate"
    search: SearchOptions = field(default_factory=SearchOptions)
    time_budget_s: float | None = None
    epochs: int | None = None  # None: the preset's (400, or 8 with search.quick)
    res: tuple | None = None  # input sizes (N or (h, w)); None: the family's (the quick preset's with search.quick)
    int8: bool | None = None  # None: on at expert effort
    y_channel: bool = False
    trials_per_stage: int | None = None  # searched stages; None: a third of the stage's points, >= GRID_LIMIT
    name: str | None = None  # None: derived from what decides the outcome
    fresh: bool = False  # start over even when an earlier run of this optimization exists

    def __post_init__(self) -> None:

        if self.effort not in EFFORTS:
            raise ValueError(f"--effort {self.effort!r} is not one of {EFFORTS}")
        get_family(self.model)  # names the known families when unknown
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            raise ValueError(f"--time-budget {self.time_budget_s} s must be > 0")
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"--epochs {self.epochs} must be >= 1")
        if self.trials_per_stage is not None and self.trials_per_stage < 1:
            raise ValueError(f"--trials-per-stage {self.trials_per_stage} must be >= 1")
        if not self.search.requirement.constrained:
            raise ValueError("give a requirement: --max-latency-ms and/or --min-iou")
        for r in self.res or ():
            ModelSpec(arch=self.model, input_hw=r)  # a bad size is named before anything runs

    @property
    def quantize(self) -> bool:
        return self.effort == "expert" if self.int8 is None else self.int8

    @property
    def train_epochs(self) -> int:
        return self.epochs or preset(self.search.quick).epochs

    def ident(self) -> str:
        """A name for the optimization from everything that decides its outcome (not the budget)."""
        s = self.search
        data = str(Path(s.data).resolve()) if Path(s.data).exists() else s.data  # ./data/x == data/x
        key = [self.model, self.effort, data, s.limit, s.seed, s.max_latency_ms, s.min_iou, s.bench.device_class,
               s.bench.latency_stat, s.logit_threshold, s.quick, self.train_epochs,
               [h if h == w else f"{h}x{w}" for h, w in self.resolutions()],  # as before sizes became (h, w)
               self.quantize,
               self.y_channel, self.trials_per_stage]
        return f"optimize-{self.model}-{self.effort}-{hashlib.sha256(json.dumps(key).encode()).hexdigest()[:8]}"

    def resolutions(self) -> list[tuple[int, int]]:
        """The input sizes to try, largest first."""

        res = self.res or (preset(True).resolutions if self.search.quick else get_family(self.model).resolutions)
        return sorted({parse_hw(r) for r in res}, reverse=True)
