"""Metric names and their directions: the one place the search, the Pareto code, the MLflow
logging and the reports read them from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Mode = Literal["max", "min"]


@dataclass(frozen=True)
class Objective:
    name: str
    mode: Mode
    description: str

    def better(self, a: float, b: float) -> bool:
        return a > b if self.mode == "max" else a < b


#: Test IoU through onnxruntime (the study's per-image foreground IoU).
IOU = Objective("iou", "max", "test IoU of the exported ONNX model (onnxruntime)")
#: Measured latency on the benchmark device (p50 by default, the study's mean on request).
LATENCY_MS = Objective("latency_ms", "min", "latency on the benchmark device, ms")
#: The multi-objective search optimizes these (in this order).
OBJECTIVES: tuple[Objective, ...] = (IOU, LATENCY_MS)

#: ASHA early stopping watches this one (its own metric, reported every epoch).
VAL_IOU = Objective("val_iou", "max", "validation IoU of the current epoch")
VAL_LOSS = Objective("val_loss", "min", "validation loss of the current epoch")

# Other names reported by trials.
FPS = "fps"
EPOCH = "epoch"
PRUNED = "pruned_by_latency"
HYPERVOLUME = "hypervolume"


def metric_names() -> list[str]:
    return [o.name for o in OBJECTIVES]


def metric_modes() -> list[Mode]:
    return [o.mode for o in OBJECTIVES]
