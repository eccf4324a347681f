"""Test IoU measured by the device: the model runs on a benchd device's own onnxruntime (Predict).

Latency was always the device's; IoU was the host's onnxruntime. For fp32 the two agree to
rounding; for int8 they need not: onnxruntime's quantized kernels differ by architecture (x86
VNNI / u8s8 paths, ARM NEON with or without dot product), and a device may run another version.
`evaluate_on_device` runs the study's evaluation with the device's masks and the host's side by
side: the device's IoU, the host's, and where they disagree (per image: the IoU gap and the share
of pixels whose mask differs, at the model's input size).

The preprocessing (resize, normalization) is the host's, sent as float32; the device thresholds
the logits itself (`benchd.predict.foreground`, the rule the host applies) and returns 1-bit masks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from benchd.predict import PredictParams, foreground

if TYPE_CHECKING:  # cv2 and onnxruntime stay out of `raysearch --help`, which reads the tolerance
    from raysearch.data.sources import SegSource
    from raysearch.training.evaluate import EvalResult, OnnxPredictor

#: Above this gap between the device's and the host's IoU (absolute), a candidate is flagged.
DEFAULT_TOLERANCE = 0.005


@dataclass(frozen=True)
class DeviceComparison:
    """One model evaluated on a device and on the host."""

    device: EvalResult
    host: EvalResult
    device_name: str  # the device that computed it (farm inventory name or benchd's)
    onnxruntime_version: str  # the device's
    max_iou_gap: float  # the largest per-image |device IoU - host IoU|
    worst_image: str  # ... on this image
    max_pixel_disagreement: float  # the largest per-image share of pixels whose masks differ
    mean_pixel_disagreement: float
    calls: int  # Predict calls
    bytes_sent: int
    bytes_received: int
    device_run_s: float  # session.run on the device
    wall_s: float  # the Predict calls, client-side

    @property
    def iou_gap(self) -> float:
        """Device IoU minus host IoU (the study's mean per-image IoU)."""
        return self.device.iou - self.host.iou

    def disagrees(self, tolerance: float = DEFAULT_TOLERANCE) -> bool:
        return bool(abs(self.iou_gap) > tolerance or self.max_iou_gap > 4 * tolerance)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["device"], d["host"] = self.device.metrics(), self.host.metrics()
        d["iou_gap"] = self.iou_gap
        return d


class _DeviceMasks:
    """The evaluation's mask predictor: the device's masks, compared with the host's batch by batch."""

    def __init__(self, farm: Any, onnx_path: Path, device_class: str, logit_threshold: float,
                 host: OnnxPredictor, timeout_s: float) -> None:
        self.farm, self.path, self.device_class = farm, onnx_path, device_class
        self.params = PredictParams(logit_threshold=logit_threshold)
        self.host, self.threshold, self.timeout_s = host, logit_threshold, timeout_s
        self.disagreement: list[float] = []
        self.calls = self.sent = self.received = 0
        self.run_ms = self.wall_s = 0.0
        self.device_name = self.ort_version = ""

    def __call__(self, x: np.ndarray) -> np.ndarray:
        got = self.farm.predict(str(self.path), x, self.params, device_class=self.device_class,
                                timeout_s=self.timeout_s)
        self.calls += got.calls
        self.sent += got.bytes_sent
        self.received += got.bytes_received
        self.run_ms += got.run_ms
        self.wall_s += got.call_wall_s
        self.device_name = got.farm_device or got.device_name
        self.ort_version = got.onnxruntime_version
        host = foreground(self.host(x), self.threshold)
        self.disagreement.extend(float(v) for v in (got.output != host).mean(axis=(1, 2)))
        masks: np.ndarray = got.output
        return masks


def evaluate_on_device(onnx_path: str | Path, source: SegSource, farm: Any, *, device_class: str,
                       logit_threshold: float = 0.0, batch_size: int = 8, timeout_s: float = 1800.0,
                       progress: bool = False, on_host: EvalResult | None = None) -> DeviceComparison:
    """The study's evaluation of ``onnx_path`` on ``source``, with the masks computed by a device of
    ``device_class`` of ``farm`` (a `benchd.farm.BenchFarm`), and the same on the host (``on_host``:
    that evaluation, when the caller has it already)."""
    from raysearch.training.evaluate import OnnxPredictor, evaluate

    path = Path(onnx_path)
    host = OnnxPredictor(path)
    kw: dict[str, Any] = {"input_hw": host.input_hw, "in_channels": host.in_channels,
                          "logit_threshold": logit_threshold, "batch_size": batch_size}
    device_masks = _DeviceMasks(farm, path, device_class, logit_threshold, host, timeout_s)
    on_device = evaluate(None, source, masks=device_masks, progress=progress, **kw)
    on_host = on_host or evaluate(host, source, **kw)
    gaps = {stem: abs(iou - on_host.per_image[stem]) for stem, iou in on_device.per_image.items()}
    worst = max(gaps, key=gaps.__getitem__) if gaps else ""
    pixels = device_masks.disagreement
    return DeviceComparison(
        device=on_device, host=on_host, device_name=device_masks.device_name,
        onnxruntime_version=device_masks.ort_version, max_iou_gap=gaps.get(worst, 0.0), worst_image=worst,
        max_pixel_disagreement=max(pixels, default=0.0), mean_pixel_disagreement=float(np.mean(pixels)) if pixels else 0.0,
        calls=device_masks.calls, bytes_sent=device_masks.sent, bytes_received=device_masks.received,
        device_run_s=device_masks.run_ms / 1e3, wall_s=device_masks.wall_s)
