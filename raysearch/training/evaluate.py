"""Evaluation as the study measured it, on a torch model or an ONNX file (onnxruntime).

For each image: resize to the network input (the test transform), predict, threshold, resize the
prediction back to the original size (nearest), and compare with the ground truth. The predictor is
the host's onnxruntime or torch, or a device's onnxruntime through benchd's Predict, which
returns the thresholded masks (`raysearch.search.device_iou`). The study's
ground truth made the same round trip (nearest to the input size and back): that is ``iou``.
``iou_native_gt`` compares with the untouched original mask instead.

Threshold: a pixel is foreground when its logit exceeds ``logit_threshold``. The default 0.0 is a
probability of 0.5; the study's published IoUs threshold the raw logit at 0.5 (probability
~0.62): pass ``logit_threshold=0.5`` to reproduce them.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
from tqdm.auto import tqdm

from benchd.predict import foreground
from raysearch.data.sources import SegSource
from raysearch.data.transforms import resize_for_test, to_input
from raysearch.training.iou import IoUAccumulator

#: (N, C, H, W) float32 inputs -> (N, classes, H, W) float32 logits
Predictor = Callable[[np.ndarray], np.ndarray]
#: (N, C, H, W) float32 inputs -> (N, H, W) boolean foreground at the input size
MaskPredictor = Callable[[np.ndarray], np.ndarray]

SPEC_METADATA_KEY = "raysearch.spec"


def prob_to_logit(p: float) -> float:
    if not 0 < p < 1:
        raise ValueError(f"probability threshold {p!r} must be strictly between 0 and 1")
    return math.log(p / (1 - p))


@dataclass
class EvalResult:
    iou: float  # mean per-image foreground IoU vs the round-tripped ground truth (the study's)
    iou_native_gt: float  # the same against the original masks
    pooled_iou: float  # foreground IoU over all pixels of the split
    miou: float  # mean of background and foreground pooled IoU
    n_images: int
    logit_threshold: float
    per_image: dict[str, float] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        return {k: v for k, v in asdict(self).items() if k != "per_image"}

    def to_json(self, per_image: bool = False) -> str:
        d = asdict(self) if per_image else self.metrics()
        return json.dumps(d, indent=2)


class OnnxPredictor:
    """An ONNX model through onnxruntime; input name, channels and size are read from the graph."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: ONNX model not found")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types
            raise ValueError(f"{self.path}: onnxruntime cannot load this model: {e}") from e
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        shape = inp.shape
        if len(shape) != 4 or not all(isinstance(d, int) for d in shape[1:]):
            raise ValueError(f"{self.path}: input {inp.name!r} has shape {shape}; expected (N, C, H, W) with static C, H, W")
        self.in_channels, self.input_hw = shape[1], (shape[2], shape[3])
        self.batch = shape[0] if isinstance(shape[0], int) else None  # None: dynamic
        meta = self.session.get_modelmeta().custom_metadata_map
        self.spec_json = meta.get(SPEC_METADATA_KEY)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.batch is not None and x.shape[0] != self.batch:
            return np.concatenate([self(x[i:i + self.batch]) for i in range(0, x.shape[0], self.batch)])
        return self.session.run(None, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})[0]


class TorchPredictor:
    def __init__(self, model, device: str | None = None) -> None:
        import torch

        self.torch = torch
        self.model = model.eval()
        self.device = device or next(model.parameters()).device

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            return self.model(self.torch.from_numpy(x).to(self.device)).float().cpu().numpy()


def thresholded(predict: Predictor, logit_threshold: float) -> MaskPredictor:
    """The foreground masks of ``predict``'s logits (benchd's rule, the one a device's Predict applies)."""
    return lambda x: foreground(predict(x), logit_threshold)


def evaluate(predict: Predictor | None, source: SegSource, *, input_hw: tuple[int, int], in_channels: int,
             logit_threshold: float = 0.0, batch_size: int = 8, progress: bool = False,
             on_prediction: Callable[[int, np.ndarray, np.ndarray, np.ndarray], None] | None = None,
             masks: MaskPredictor | None = None) -> EvalResult:
    """Evaluate ``predict`` on every sample of ``source`` (see the module doc for the protocol).
    ``on_prediction(i, image, gt, pred)`` sees each native-size result (e.g. to draw overlays).
    ``masks``: take the foreground masks from it instead of thresholding ``predict``'s logits
    (a device that thresholds with ``logit_threshold`` itself)."""
    if masks is None:
        if predict is None:
            raise ValueError("evaluate needs a predictor of logits or of masks")
        masks = thresholded(predict, logit_threshold)
    h, w = input_hw
    study, native = IoUAccumulator(), IoUAccumulator()
    per_image: dict[str, float] = {}
    stems = list(source.stems)
    bar = tqdm(total=len(source), desc="evaluating", disable=not progress, leave=False)
    for start in range(0, len(source), batch_size):
        idx = range(start, min(start + batch_size, len(source)))
        pairs = [source.load(i) for i in idx]
        x = np.stack([to_input(resize_for_test(img, (h, w)), in_channels) for img, _ in pairs])
        for i, (img, gt), fg in zip(idx, pairs, masks(x)):
            H, W = gt.shape
            pred = cv2.resize(fg.astype(np.uint8), (W, H), interpolation=cv2.INTER_NEAREST)
            gt_rt = cv2.resize(cv2.resize(gt, (w, h), interpolation=cv2.INTER_NEAREST), (W, H), interpolation=cv2.INTER_NEAREST)
            per_image[stems[i]] = study.add(pred, gt_rt)
            native.add(pred, gt)
            if on_prediction is not None:
                on_prediction(i, img, gt, pred)
        bar.update(len(idx))
    bar.close()
    return EvalResult(
        iou=study.mean_iou, iou_native_gt=native.mean_iou, pooled_iou=study.pooled_iou, miou=study.miou,
        n_images=len(per_image), logit_threshold=logit_threshold, per_image=per_image,
    )


def evaluate_onnx(path: str | Path, source: SegSource, *, logit_threshold: float = 0.0, threads: int | None = None,
                  batch_size: int = 8, progress: bool = False) -> EvalResult:
    p = OnnxPredictor(path, threads=threads)
    return evaluate(p, source, input_hw=p.input_hw, in_channels=p.in_channels, logit_threshold=logit_threshold,
                    batch_size=batch_size, progress=progress)
