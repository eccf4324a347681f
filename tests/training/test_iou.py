import numpy as np
import pytest

from raysearch.training.iou import IoUAccumulator, foreground_iou


def m(rows):
    return np.array(rows, dtype=bool)


def test_hand_computed_iou():
    pred = m([[1, 1, 0], [0, 0, 0]])
    gt = m([[0, 1, 1], [0, 0, 0]])
    assert foreground_iou(pred, gt) == pytest.approx(1 / 3)
    assert foreground_iou(gt, gt) == 1.0
    assert foreground_iou(m([[0, 0]]), m([[0, 0]])) == 1.0  # both empty
    assert foreground_iou(m([[1, 0]]), m([[0, 0]])) == 0.0


def test_accumulator_per_image_pooled_and_miou():
    acc = IoUAccumulator()
    acc.add(m([[1, 1, 0, 0]]), m([[1, 0, 0, 0]]))  # tp1 fp1 fn0 tn2 -> 1/2
    acc.add(m([[1, 1, 1, 1]]), m([[1, 1, 1, 0]]))  # tp3 fp1 fn0 tn0 -> 3/4
    assert acc.per_image == [0.5, 0.75]
    assert acc.mean_iou == pytest.approx(0.625)
    assert acc.pooled_iou == pytest.approx(4 / 6)  # tp 4 / (tp 4 + fp 2)
    assert acc.background_iou == pytest.approx(2 / 4)  # tn 2 / (tn 2 + fp 2)
    assert acc.miou == pytest.approx((4 / 6 + 0.5) / 2)
