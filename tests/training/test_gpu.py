"""Runs only on a machine with CUDA: training uses the GPU, in fp32 by default and in mixed
precision with amp=True, and the exported model still matches torch."""

import pytest
import torch

from raysearch.models import ModelSpec
from raysearch.training.export import export_onnx
from raysearch.training.train import TrainConfig, pick_device, train


@pytest.mark.gpu
@pytest.mark.parametrize("amp", [False, True])
def test_cuda_training(tmp_path, tiny_folder, amp):
    from raysearch.data.folder import FolderSource

    assert pick_device("auto").type == "cuda"
    src = FolderSource(tiny_folder)
    spec = ModelSpec(a=0.125, t=2, r=1, pp=1, input_hw=32)
    res = train(spec, src, src, TrainConfig(epochs=2, batch_size=2, amp=amp, progress=False), out_dir=tmp_path)
    assert next(res.model.parameters()).device.type == "cpu" and len(res.history) == 2
    assert torch.isfinite(torch.tensor(res.best_val_loss))
    assert res.gpu_max_memory_mib is not None and res.gpu_max_memory_mib > 0
    assert export_onnx(res.model, tmp_path / "m.onnx").max_abs_diff <= 1e-4
