"""Training recipe, checkpoints/resume, and evaluation on torch and ONNX (real, tiny)."""

import math

import numpy as np
import pytest
import torch

from raysearch.data.folder import FolderSource
from raysearch.models import ModelSpec
from raysearch.training.evaluate import TorchPredictor, evaluate, evaluate_onnx, prob_to_logit
from raysearch.training.export import export_onnx
from raysearch.training.train import TrainConfig, load_checkpoint, train
from tests.helpers import write_boxes

SPEC = ModelSpec(a=0.125, t=2, r=1, pp=0, input_hw=64)


@pytest.fixture(scope="module")
def boxes(tmp_path_factory):
    root = write_boxes(tmp_path_factory.mktemp("boxes"))
    return {s: FolderSource(root / s) for s in ("train", "val", "test")}


def test_poly_schedule_hand_computed():
    # the study's: set once per epoch e = 1..E to (0.01 - 1e-4) (1 - e/E)^0.9 + 1e-4
    cfg = TrainConfig(epochs=10)
    assert cfg.lr_at(0) == pytest.approx(0.0099 * 0.9 ** 0.9 + 1e-4)
    assert cfg.lr_at(4) == pytest.approx(0.0099 * 0.5 ** 0.9 + 1e-4)
    assert cfg.lr_at(9) == pytest.approx(1e-4)  # the last epoch runs at the floor
    assert TrainConfig(epochs=400).lr_at(0) == pytest.approx(0.0099 * (399 / 400) ** 0.9 + 1e-4)


@pytest.mark.parametrize("kwargs", [dict(epochs=0), dict(batch_size=0), dict(lr=0), dict(num_workers=-1),
                                    dict(min_lr=0.1)])
def test_bad_config(kwargs):
    with pytest.raises(ValueError, match=list(kwargs)[0]):
        TrainConfig(**kwargs)


def test_training_learns_and_keeps_the_best_epoch(boxes, tmp_path):
    seen = []
    cfg = TrainConfig(epochs=12, batch_size=4, progress=False)
    res = train(SPEC, boxes["train"], boxes["val"], cfg, out_dir=tmp_path, on_epoch=seen.append)
    assert [m.epoch for m in seen] == list(range(1, 13)) and len(res.history) == 12
    losses = [m.val_loss for m in res.history]
    assert res.best_epoch == int(np.argmin(losses)) + 1 and res.best_val_loss == min(losses)
    assert [m.lr for m in res.history] == [cfg.lr_at(e) for e in range(12)]
    assert res.history[-1].train_loss < res.history[0].train_loss
    assert res.gpu_max_memory_mib is None  # trained on the CPU: no GPU figure (tests/training/test_gpu.py has it on CUDA)
    # the returned model is the best epoch's, and so is best.pt
    reloaded = load_checkpoint(tmp_path / "best.pt")
    for a, b in zip(res.model.state_dict().values(), reloaded.state_dict().values()):
        assert torch.equal(a, b)

    torch_eval = evaluate(TorchPredictor(res.model), boxes["test"], input_hw=SPEC.input_hw, in_channels=3)
    assert torch_eval.iou > 0.5, torch_eval  # it learned the boxes
    onnx_path = export_onnx(res.model, tmp_path / "m.onnx").path
    onnx_eval = evaluate_onnx(onnx_path, boxes["test"])
    assert onnx_eval.iou == pytest.approx(torch_eval.iou, abs=1e-3)
    assert set(onnx_eval.per_image) == set(boxes["test"].stems)


def test_callback_stops_and_resume_continues(boxes, tmp_path):
    cfg = TrainConfig(epochs=4, batch_size=8, progress=False)
    first = train(SPEC, boxes["train"], boxes["val"], cfg, out_dir=tmp_path, on_epoch=lambda m: m.epoch < 2)
    assert len(first.history) == 2 and first.stopped_early
    second = train(SPEC, boxes["train"], boxes["val"], cfg, out_dir=tmp_path, resume=True)
    assert [m.epoch for m in second.history] == [1, 2, 3, 4] and not second.stopped_early
    assert second.history[:2] == first.history
    with pytest.raises(ValueError, match="was trained for"):
        train(SPEC.replace(a=0.25), boxes["train"], boxes["val"], cfg, out_dir=tmp_path, resume=True)


@pytest.mark.parametrize("batch_size,steps", [(10, 3), (23, 1)])
def test_the_last_partial_batch_is_kept_unless_it_holds_one_image(boxes, tmp_path, batch_size, steps):
    # 24 images: batch 10 gives 10 + 10 + 4 (the study kept its 300 % 8 = 4), batch 23 gives 23 + 1,
    # and one image alone cannot train batch norm on a 1x1 pooled map, so that one is dropped
    train(SPEC, boxes["train"], boxes["val"], TrainConfig(epochs=1, batch_size=batch_size, progress=False),
          out_dir=tmp_path)
    adam = torch.load(tmp_path / "last.pt", weights_only=False)["optimizer"]["state"]
    assert {int(st["step"]) for st in adam.values()} == {steps}


def test_seeded_training_is_reproducible(boxes):
    cfg = TrainConfig(epochs=1, batch_size=8, progress=False, seed=3)
    a = train(SPEC, boxes["train"], boxes["val"], cfg)
    b = train(SPEC, boxes["train"], boxes["val"], cfg)
    assert a.history[0].train_loss == b.history[0].train_loss


def test_thresholds_and_the_round_trip(boxes):
    src = boxes["test"]
    def gt_everywhere(x):  # logit 3 everywhere
        return np.full((x.shape[0], 1, *x.shape[2:]), 3.0, np.float32)

    hi = evaluate(gt_everywhere, src, input_hw=(64, 64), in_channels=3, logit_threshold=5.0)
    assert hi.iou == 0.0  # nothing predicted, every image has a box
    lo = evaluate(gt_everywhere, src, input_hw=(64, 64), in_channels=3, logit_threshold=prob_to_logit(0.5))
    # everything predicted: IoU = box area / image area, per image
    expected = np.mean([src.load(i)[1].mean() for i in range(len(src))])
    assert lo.iou_native_gt == pytest.approx(expected, abs=1e-9)
    assert prob_to_logit(0.5) == 0.0 and prob_to_logit(1 / (1 + math.exp(-0.5))) == pytest.approx(0.5)
