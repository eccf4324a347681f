"""The records that cross modules: a trial's outcome (`TrialRow`) and what the user requires of
a model (`Requirement`). "Trained to the end" and "meets the requirement" are decided here and
nowhere else."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Mapping

from raysearch.models import ModelSpec
from raysearch.records import names as obj


class TrialStatus(StrEnum):
    """What became of a trial (a str: it is written as is to JSON, CSV and the state files)."""

    TRAINED = "trained"  # trained to the end, exported, evaluated and measured: a candidate
    # the three below are also the names of the flag a trial reports and of its run's tag
    PRUNED = obj.PRUNED  # over the latency budget before training: measured, never trained
    STOPPED = obj.STOPPED  # stopped by the scheduler: partly trained
    DUPLICATE = obj.DUPLICATE  # a configuration that already ran: the figures of that run, nothing trained
    FAILED = "failed"


TRAINED, PRUNED, STOPPED, DUPLICATE, FAILED = TrialStatus  # the short names the modules use
STATUSES = tuple(TrialStatus)


def finite(value: Any) -> float | None:
    """``value`` as a finite float, or None (missing, None, not a number, NaN, inf, a bool)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


@dataclass
class TrialRow:
    """One trial's final figures. ``metrics`` holds the other final metrics (fps, params_total,
    macs, val_iou, ...); ``stage`` the stage (or optimization stage) it ran in."""

    name: str
    run_id: str
    spec: ModelSpec | None
    status: TrialStatus = TRAINED
    iou: float | None = None
    latency_ms: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    stage: str = ""
    search: str = ""
    device_name: str = ""
    device_class: str = ""
    checkpoint: str | None = None  # the trial's final checkpoint (its best.pt), a path or a URI
    artifact_uri: str = ""
    onnx: str | None = None  # a local path of its model.onnx, once looked up
    model_version: int | None = None  # its version in the MLflow model registry, once registered

    def __post_init__(self) -> None:
        self.status = TrialStatus(self.status)  # a status read back from a state file is its str
        self.iou, self.latency_ms = finite(self.iou), finite(self.latency_ms)

    def is_candidate(self) -> bool:
        """Trained to the end with both objectives measured: what fronts, picks and reports use."""
        return self.status == TRAINED and self.spec is not None and self.iou is not None \
            and self.latency_ms is not None

    # a candidate's figures, typed as what they are: every candidate has all three (`is_candidate`),
    # a trial pruned by latency its spec and latency
    @property
    def known_spec(self) -> ModelSpec:
        assert self.spec is not None, f"trial {self.name} has no spec"
        return self.spec

    @property
    def known_iou(self) -> float:
        assert self.iou is not None, f"trial {self.name} has no IoU"
        return self.iou

    @property
    def known_latency_ms(self) -> float:
        assert self.latency_ms is not None, f"trial {self.name} has no latency"
        return self.latency_ms

    def value(self, name: str) -> float | None:
        """A figure by metric name (the Pareto code reads objectives through this)."""
        if name == obj.IOU.name:
            return self.iou
        if name == obj.LATENCY_MS.name:
            return self.latency_ms
        if name == obj.FPS and self.latency_ms:
            return 1000.0 / self.latency_ms
        return finite(self.metrics.get(name))

    @property
    def precision(self) -> str:
        return self.spec.precision if self.spec else ""

    def device_iou_note(self) -> str:
        """Where the device computed the IoU (--device-iou): the host's beside it, and whether they
        disagree past the tolerance; "" otherwise."""
        host = self.value(obj.IOU_HOST)
        if self.value(obj.IOU_DEVICE) is None or host is None:
            return ""
        note = f"IoU computed on the device (the host's onnxruntime: {host:.4f})"
        if self.metrics.get(obj.DEVICE_IOU_DISAGREES):
            note += f"; DISAGREES: largest per-image gap {self.value(obj.IOU_DEVICE_MAX_IMAGE_GAP) or 0:.4f}"
        return note

    def with_stage(self, stage: str) -> "TrialRow":
        return replace(self, stage=stage)

    # ---- JSON (state files) ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["spec"] = self.spec.to_dict() if self.spec else None
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrialRow":
        d = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        spec = d.get("spec")
        d["spec"] = ModelSpec.from_dict(spec, strict=True) if isinstance(spec, Mapping) else None
        return cls(**d)

    def summary(self) -> dict[str, Any]:
        """The figures a user reads (`--json` outputs)."""
        return {"name": self.name, "run_id": self.run_id, "stage": self.stage, "status": self.status,
                "precision": self.precision, obj.IOU.name: self.iou, obj.LATENCY_MS.name: self.latency_ms,
                obj.FPS: self.value(obj.FPS), obj.PARAMS_TOTAL: self.value(obj.PARAMS_TOTAL),
                obj.MACS: self.value(obj.MACS), "device": self.device_name, "device_class": self.device_class,
                "onnx": self.onnx, "model_version": self.model_version,
                "spec": self.spec.to_dict() if self.spec else None}


def candidates(rows: list[TrialRow]) -> list[TrialRow]:
    return [r for r in rows if r.is_candidate()]


def point_value(point: Any, name: str) -> float | None:
    """A figure of a `TrialRow` or of a mapping of metric names to values."""
    if isinstance(point, TrialRow):
        return point.value(name)
    return finite(point.get(name)) if isinstance(point, Mapping) else None


def _above(value: float, limit: float, start: int) -> str:
    """``value`` with enough decimals that the printed number is visibly > ``limit``."""
    for d in range(start, 10):
        text = f"{value:.{d}f}"
        if float(text) > limit:
            return text
    return repr(value)


def _below(value: float, limit: float, start: int) -> str:
    for d in range(start, 10):
        text = f"{value:.{d}f}"
        if float(text) < limit:
            return text
    return repr(value)


@dataclass(frozen=True)
class Requirement:
    """What a model must meet on the device: latency <= ``max_latency_ms`` and IoU >=
    ``min_iou`` (inclusive bounds; None: not required)."""

    max_latency_ms: float | None = None
    min_iou: float | None = None

    def __post_init__(self) -> None:
        lat, iou = finite(self.max_latency_ms), finite(self.min_iou)
        if self.max_latency_ms is not None and (lat is None or lat <= 0):
            raise ValueError(f"--max-latency-ms {self.max_latency_ms} must be > 0")
        if self.min_iou is not None and (iou is None or not 0 <= iou <= 1):
            raise ValueError(f"--min-iou {self.min_iou} must be between 0 and 1")

    @property
    def constrained(self) -> bool:
        return self.max_latency_ms is not None or self.min_iou is not None

    def misses(self, point: TrialRow | Mapping[str, Any]) -> list[str]:
        """Why ``point`` misses the requirement, one readable reason each (empty: it qualifies).
        A missing or NaN value misses the constraint on it."""
        reasons: list[str] = []
        if self.max_latency_ms is not None:
            lat = point_value(point, obj.LATENCY_MS.name)
            if lat is None:
                reasons.append(f"latency unknown (budget {self.max_latency_ms:g} ms)")
            elif lat > self.max_latency_ms:
                reasons.append(f"latency {_above(lat, self.max_latency_ms, 1)} ms > {self.max_latency_ms:g} ms")
        if self.min_iou is not None:
            iou = point_value(point, obj.IOU.name)
            if iou is None:
                reasons.append(f"IoU unknown (minimum {self.min_iou:g})")
            elif iou < self.min_iou:
                reasons.append(f"IoU {_below(iou, self.min_iou, 3)} < {self.min_iou:g}")
        return reasons

    def qualifies(self, point: TrialRow | Mapping[str, Any]) -> bool:
        return not self.misses(point)

    def shortfall(self, row: TrialRow) -> float:
        """How far a candidate is from qualifying: the relative shortfalls added (0: it qualifies)."""
        assert row.latency_ms is not None and row.iou is not None, "a candidate has both objectives"
        lat = 0.0 if self.max_latency_ms is None else max(0.0, row.latency_ms / self.max_latency_ms - 1)
        iou = 0.0 if self.min_iou is None else max(0.0, (self.min_iou - row.iou) / max(self.min_iou, 1e-9))
        return lat + iou

    def describe(self) -> str:
        parts = ([f"latency <= {self.max_latency_ms:g} ms"] if self.max_latency_ms is not None else []) + \
                ([f"IoU >= {self.min_iou:g}"] if self.min_iou is not None else [])
        return " and ".join(parts) or "none"
