"""Metric, tag and file names, and the objectives' directions: the one place the search, the
Pareto code, the MLflow logging and the reports read them from (`tests/repo/test_lint.py` fails on
such a name written as a literal anywhere else in raysearch)."""

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

# ---- every other metric and tag name, here and nowhere else as a literal ----------------------
# Metrics a trial reports (and the driver logs).
FPS = "fps"
EPOCH = "epoch"
FINAL = "final"  # 1 on a trial's last report (its final figures), 0 on the per-epoch ones
EPOCHS_TRAINED = "epochs_trained"
GPU_MAX_MEMORY_MIB = "gpu_max_memory_mib"  # a trial trained on CUDA: the peak memory torch allocated
LATENCY_UNTRAINED = "latency_ms_untrained"  # measured before training (the pruning decision)
# How precise the latency is (benchd's reply): the p50's 95% CI, its half-width as a share, the
# runs it took, whether the target was met, and the drift (p50 of the first / last tenth of runs).
LATENCY_PRECISION = {
    "latency_ms_p50_ci_low": "latency_ms_p50_ci_low",
    "latency_ms_p50_ci_high": "latency_ms_p50_ci_high",
    "latency_p50_rel_ci": "p50_rel_ci",
    "latency_precision_met": "precision_met",
    "latency_runs": "runs",
    "latency_ms_p50_first_tenth": "latency_ms_p50_first_tenth",
    "latency_ms_p50_last_tenth": "latency_ms_p50_last_tenth",
}  # metric name -> the reply's field
# Test IoU computed by the device's own onnxruntime (benchd Predict). Where it is measured (--device-iou)
# it is the trial's IOU objective (a candidate is ranked by the IoU it gets where it runs); the host
# onnxruntime's figure is kept as IOU_HOST.
DEVICE_IOU_MODES = ("off", "int8", "all")  # which candidates --device-iou measures on the device
IOU_DEVICE = "iou_device"
IOU_HOST = "iou_host"
DEVICE_IOU_DISAGREES = "device_iou_disagrees"  # flag (metric 1/0 and tag): device and host IoU differ past the tolerance
IOU_DEVICE_GAP = "iou_device_gap"  # iou_device - iou
IOU_DEVICE_MAX_IMAGE_GAP = "iou_device_max_image_gap"  # the largest per-image |device - host| IoU
PIXEL_DISAGREEMENT_MAX = "mask_disagreement_max"  # the largest per-image share of pixels whose masks differ
PARAMS_TOTAL = "params_total"
PARAMS_EXECUTED = "params_executed"  # parameters of the modules the forward pass calls
MACS = "macs"
# Flags a trial reports (1/0) that are also tags of its MLflow run ("true"/"false").
PRUNED = "pruned_by_latency"  # over the latency budget: measured, never trained
STOPPED = "stopped_early"  # stopped by the scheduler before its last epoch
DUPLICATE = "duplicate"  # a configuration that already ran: its figures, nothing trained
REPLAYED = "replayed"  # 1 on an epoch report sent again after a restore (trained before, not again)
# Metrics of a search's parent run.
HYPERVOLUME = "hypervolume"  # IoU x ms
HYPERVOLUME_NORMALIZED = "hypervolume_normalized"  # the share (0..1) of its box: IoU 0..1 x latency 0..ref
FINAL_HYPERVOLUME = "final_hypervolume"
FINAL_HYPERVOLUME_NORMALIZED = "final_hypervolume_normalized"
HV_REFERENCE_LATENCY = "hv_reference_latency_ms"
# on a search's parent run (--mode search): how its searcher works
PARAM_STARTUP_TRIALS = "startup_trials"  # trials proposed before the searcher's model is used
PARAM_STOPPED_TRIALS = "stopped_trials_tell_searcher"  # what a trial stopped early tells the searcher
PARAM_SEARCHER_PRIOR = "searcher_prior"
PARAM_FRONT_MARGIN = "front_margin"  # --scheduler front: the IoU margin of its stopping rule
PARAM_FRONT_MIN_FINISHED = "front_min_finished"  # --scheduler front: finished trials before it stops any
N_PARETO = "n_pareto"
LATENCY_MEASURED = "latency_configs_measured"  # latency-first with a latency model: measured for the search
LATENCY_PREDICTED = "latency_configs_predicted"  # ... and the configurations of the space it predicted only
EPOCHS_SPENT = "epochs_spent"

# Tags of the MLflow runs.
TAG_PARENT = "mlflow.parentRunId"  # MLflow's own: nests a child under its parent in the UI
TAG_STAGE = "stage"
TAG_MODE = "mode"
TAG_SEARCH = "raysearch.search"  # on a search's parent run: the search's name
TAG_STORAGE = "raysearch.storage"  # on a search's parent run: its Ray Tune experiment path
TAG_DRIVER = "raysearch.driver"  # on a search's parent run: HOST:PID of the process running it
TAG_COMMAND = "raysearch.command"  # on a search's parent run: the command line that started it
TAG_OPTIMIZATION = "raysearch.optimization"  # on an optimization's run and its stage searches
TAG_KIND = "raysearch.kind"
TAG_SPEC = "raysearch.spec"  # on a child run: the spec's short name
TAG_TRIAL_ID = "trial_id"
TAG_DEVICE_NAME = "device_name"
TAG_DEVICE_CLASS = "device_class"
TAG_PARETO = "pareto_optimal"
TAG_QUALIFIES = "qualifies"
TAG_STOPPED_AT = "stopped_at_epoch"
TAG_ERROR = "error"
TAG_RESUMED = "resumed"
TAG_RETRIED = "retried"
TAG_TRIAL_ERRORS = "trial_errors"
TAG_EFFORT = "effort"  # on an optimization's run: --effort
TAG_OPTIMIZE_STAGE = "optimize_stage"  # on an optimization's stage searches: the stage's label

# Files a trial writes (its folder, the artifacts of its MLflow run).
MODEL_FILE = "model.onnx"  # the exported model
BENCHMARK_FILE = "benchmark.json"  # benchd's reply for it
BEST_WEIGHTS = "best.pt"  # the weights of the best epoch by validation loss
LAST_WEIGHTS = "last.pt"  # the newest epoch's weights, optimizer and history: what a resumed trial continues


def flag(value: object) -> str:
    """A boolean as an MLflow tag value."""
    return "true" if value else "false"


def metric_names() -> list[str]:
    return [o.name for o in OBJECTIVES]


def metric_modes() -> list[Mode]:
    return [o.mode for o in OBJECTIVES]
