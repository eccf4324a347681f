"""Shared fixtures (the helpers they use are in ``tests/helpers``). Expensive things (datasets,
trained models) are built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import PACKAGES, write_boxes, write_pair

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def packages_dir() -> Path:
    """The study's real dataset; tests using it skip with a clear message when it is absent."""
    if not (PACKAGES / "train" / "images").is_dir():
        pytest.skip(f"the study's dataset is not at {PACKAGES} (set RAYSEARCH_PACKAGES to its folder)")
    return PACKAGES


@pytest.fixture
def tiny_folder(tmp_path: Path) -> Path:
    """A 3-image dataset (64x96) in the folder layout, masks 0/255: a rectangle per image."""
    rng = np.random.default_rng(0)
    root = tmp_path / "tiny"
    for i in range(3):
        img = rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)
        mask = np.zeros((64, 96), np.uint8)
        mask[10 + i:40, 20:70 - i] = 255
        write_pair(root, f"s{i}", img, mask)
    return root


def pytest_collection_modifyitems(config, items):
    """`gpu` tests run only where torch sees a CUDA device."""
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def trained_boxes(tmp_path_factory) -> dict[str, Path]:
    """A tiny Fast-SCNN trained on the boxes (64x64), exported: ``fp32`` and ``int8`` ONNX files, and
    the dataset's folder (``data``)."""
    from raysearch.data.folder import FolderSource
    from raysearch.models import ModelSpec
    from raysearch.training.export import export_onnx
    from raysearch.training.quantize import calibration_inputs, quantize_int8
    from raysearch.training.train import TrainConfig, train

    root = tmp_path_factory.mktemp("trained-boxes")
    data = write_boxes(root / "data")
    spec = ModelSpec(a=0.125, t=2, r=1, pp=0, input_hw=64)
    train_src, val_src = FolderSource(data / "train"), FolderSource(data / "val")
    res = train(spec, train_src, val_src, TrainConfig(epochs=25, batch_size=4, progress=False), out_dir=root / "train")
    fp32 = export_onnx(res.model, root / "fp32.onnx").path
    int8 = quantize_int8(fp32, root / "int8.onnx", calibration_inputs(val_src, spec))
    return {"fp32": fp32, "int8": int8, "data": data}
