"""ONNX export: one file, static H/W, dynamic batch, spec in metadata, checked against torch."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from raysearch.models import ModelSpec, build_model, families
from raysearch.training.export import ExportError, export_onnx, read_spec


@pytest.mark.parametrize("hw", [512, 256, 224, 160, 96, "64x128"])
def test_fastscnn_every_resolution(tmp_path, hw):
    spec = ModelSpec(a=0.25, t=2, r=1, pp=1, input_hw=hw)
    torch.manual_seed(0)
    r = export_onnx(build_model(spec), tmp_path / "m.onnx")
    assert r.max_abs_diff <= 1e-4
    assert r.input_shape[1:] == (3, *spec.input_hw) and not isinstance(r.input_shape[0], int)  # dynamic batch
    assert list(tmp_path.iterdir()) == [tmp_path / "m.onnx"]  # no external-data side file
    assert read_spec(r.path) == spec


@pytest.mark.parametrize("arch", sorted(families()))
def test_every_family_exports(tmp_path, arch):
    spec = ModelSpec(arch=arch, a=0.25, t=2, r=1, input_hw="64x96", in_channels=1)
    r = export_onnx(build_model(spec), tmp_path / f"{arch}.onnx")
    assert r.max_abs_diff <= 1e-4 and r.input_shape[1:] == (1, 64, 96)


def test_dynamo_exporter_too(tmp_path):
    spec = ModelSpec(a=0.125, t=2, r=1, pp=1, input_hw=96)
    r = export_onnx(build_model(spec), tmp_path / "d.onnx", exporter="dynamo")
    assert r.max_abs_diff <= 1e-4 and read_spec(r.path) == spec
    onnx.checker.check_model(onnx.load(str(r.path)))


def test_batch_is_dynamic(tmp_path):
    spec = ModelSpec(a=0.125, t=2, r=1, pp=0, input_hw=64)
    r = export_onnx(build_model(spec), tmp_path / "m.onnx")
    s = ort.InferenceSession(str(r.path), providers=["CPUExecutionProvider"])
    for n in (1, 3):
        assert s.run(None, {"input": np.zeros((n, 3, 64, 64), np.float32)})[0].shape == (n, 1, 64, 64)


def test_disagreement_fails_loudly(tmp_path):
    class Drifting(torch.nn.Module):  # a model whose output changes between calls
        def __init__(self, spec):
            super().__init__()
            self.spec, self.conv, self.calls = spec, torch.nn.Conv2d(3, 1, 1), 0

        def forward(self, x):
            self.calls += 1
            return self.conv(x) + (self.calls if not torch.jit.is_tracing() else 0)

    with pytest.raises(ExportError, match="differs from torch"):
        export_onnx(Drifting(ModelSpec(input_hw=32)), tmp_path / "bad.onnx")
