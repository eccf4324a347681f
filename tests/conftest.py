"""Shared fixtures. Expensive things (datasets, trained models) are built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

REPO = Path(__file__).resolve().parents[1]
PACKAGES = Path(os.environ.get("RAYSEARCH_PACKAGES", REPO.parent / "shared" / "data" / "packages"))


@pytest.fixture(scope="session")
def packages_dir() -> Path:
    """The study's real dataset; tests using it skip with a clear message when it is absent."""
    if not (PACKAGES / "train" / "images").is_dir():
        pytest.skip(f"the study's dataset is not at {PACKAGES} (set RAYSEARCH_PACKAGES to its folder)")
    return PACKAGES


def write_pair(root: Path, stem: str, image: np.ndarray, mask: np.ndarray, ext: str = ".png") -> None:
    import cv2

    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(root / "images" / f"{stem}{ext}"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(root / "labels" / f"{stem}.png"), mask)


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
