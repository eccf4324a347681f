"""Intersection-over-union, the way the study measured it and the usual pooled variants."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def foreground_iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """IoU of the foreground of two boolean masks; 1.0 when both are empty (nothing to find,
    nothing found)."""
    pred, gt = pred.astype(bool), gt.astype(bool)
    union = np.count_nonzero(pred | gt)
    if union == 0:
        return 1.0
    return np.count_nonzero(pred & gt) / union


@dataclass
class IoUAccumulator:
    """Per-image foreground IoU (averaged: the study's figure) plus pooled pixel counts for the
    dataset-level foreground IoU and the two-class (background, foreground) mean IoU."""

    per_image: list[float] = field(default_factory=list)
    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def add(self, pred: np.ndarray, gt: np.ndarray) -> float:
        pred, gt = pred.astype(bool), gt.astype(bool)
        tp = int(np.count_nonzero(pred & gt))
        fp = int(np.count_nonzero(pred & ~gt))
        fn = int(np.count_nonzero(~pred & gt))
        self.tp, self.fp, self.fn = self.tp + tp, self.fp + fp, self.fn + fn
        self.tn += pred.size - tp - fp - fn
        iou = 1.0 if tp + fp + fn == 0 else tp / (tp + fp + fn)
        self.per_image.append(iou)
        return iou

    @property
    def mean_iou(self) -> float:
        return float(np.mean(self.per_image)) if self.per_image else float("nan")

    @property
    def pooled_iou(self) -> float:
        denom = self.tp + self.fp + self.fn
        return 1.0 if denom == 0 else self.tp / denom

    @property
    def background_iou(self) -> float:
        denom = self.tn + self.fp + self.fn
        return 1.0 if denom == 0 else self.tn / denom

    @property
    def miou(self) -> float:
        return (self.pooled_iou + self.background_iou) / 2
