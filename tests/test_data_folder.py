"""Folder loader, split resolution, transforms and the dataset, with the bad-data errors."""


import cv2
import numpy as np
import pytest

from raysearch.data import DataError, open_split
from raysearch.data.dataset import SegDataset, resolution_factor
from raysearch.data.folder import FolderSource
from raysearch.data.transforms import IMAGENET_MEAN, IMAGENET_STD, to_input
from raysearch.models import ModelSpec

from conftest import write_pair


def test_folder_loads_binary_masks(tiny_folder):
    src = FolderSource(tiny_folder)
    assert src.stems == ["s0", "s1", "s2"]
    img, mask = src.load(0)
    assert img.shape == (64, 96, 3) and img.dtype == np.uint8
    assert set(np.unique(mask)) == {0, 1} and mask.sum() == 30 * 50


def test_missing_mask_names_the_image(tiny_folder):
    (tiny_folder / "labels" / "s1.png").unlink()
    with pytest.raises(DataError, match="no mask for 1 image.*s1"):
        FolderSource(tiny_folder)


def test_extra_mask_names_it(tiny_folder):
    (tiny_folder / "images" / "s2.png").unlink()
    with pytest.raises(DataError, match="no image for 1 mask.*s2"):
        FolderSource(tiny_folder)


def test_size_mismatch_names_the_file(tiny_folder):
    cv2.imwrite(str(tiny_folder / "labels" / "s0.png"), np.zeros((32, 32), np.uint8))
    with pytest.raises(DataError, match=r"s0\.png.*96x64.*32x32"):
        FolderSource(tiny_folder).load(0)


def test_unreadable_image_names_the_file(tiny_folder):
    (tiny_folder / "images" / "s0.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"s0\.png.*cannot read"):
        FolderSource(tiny_folder).load(0)


def test_non_binary_mask_names_the_file_and_values(tiny_folder):
    mask = np.zeros((64, 96), np.uint8)
    mask[:10] = 128
    mask[10:20] = 255
    cv2.imwrite(str(tiny_folder / "labels" / "s2.png"), mask)
    with pytest.raises(DataError, match=r"s2\.png.*not binary.*128"):
        FolderSource(tiny_folder).load(2)


def test_missing_folders(tmp_path):
    with pytest.raises(DataError, match="images"):
        FolderSource(tmp_path)
    with pytest.raises(DataError, match="not a dataset"):
        open_split(tmp_path, "train")
    with pytest.raises(DataError, match="no such folder"):
        open_split(tmp_path / "nope", "train")


def test_split_layout_and_hash_split(tmp_path):
    rng = np.random.default_rng(1)
    for split in ("train", "val", "test"):
        write_pair(tmp_path / "split" / split, f"{split}0", rng.integers(0, 255, (32, 32, 3), dtype=np.uint8),
                   np.zeros((32, 32), np.uint8))
    assert open_split(tmp_path / "split", "val").stems == ["val0"]
    flat = tmp_path / "flat"
    for i in range(40):
        write_pair(flat, f"img{i:02d}", rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), np.zeros((32, 32), np.uint8))
    parts = {s: set(open_split(flat, s).stems) for s in ("train", "val", "test")}
    assert sum(map(len, parts.values())) == 40
    assert not (parts["train"] & parts["val"]) and not (parts["train"] & parts["test"])
    assert len(parts["train"]) > len(parts["test"])  # 75/10/15 by hash
    assert open_split(flat, "train").stems == open_split(flat, "train").stems  # deterministic


def test_to_input_rgb_and_y():
    img = np.full((2, 3, 3), 255, np.uint8)
    x = to_input(img, 3)
    assert x.shape == (3, 2, 3) and x.dtype == np.float32
    assert np.allclose(x[:, 0, 0], (1 - IMAGENET_MEAN) / IMAGENET_STD)
    y = to_input(img, 1)
    assert y.shape == (1, 2, 3) and np.allclose(y, 255)  # Y channel, unnormalized 0..255


@pytest.mark.parametrize("kind", ["train", "val", "test"])
@pytest.mark.parametrize("in_channels", [1, 3])
def test_dataset_items_follow_the_spec(tiny_folder, kind, in_channels):
    spec = ModelSpec(a=0.125, input_hw="32x64", in_channels=in_channels)
    ds = SegDataset(FolderSource(tiny_folder), spec, kind, seed=0)
    x, y = ds[0]
    assert tuple(x.shape) == (in_channels, 32, 64)
    assert tuple(y.shape) == (1, 32, 64) and set(y.unique().tolist()) <= {0.0, 1.0}


def test_resolution_factor_prescales_train_images(tiny_folder):
    assert resolution_factor(ModelSpec(input_hw=512)) == 1.0
    assert resolution_factor(ModelSpec(input_hw=128)) == 0.25
    ds = SegDataset(FolderSource(tiny_folder), ModelSpec(input_hw=32), "train", scale=0.5)
    assert ds._cache[0][0].shape == (32, 48, 3)  # 64x96 resized by 0.5 once, then cropped
    # never below the crop: 0.125 would give 8x12, so the image is resized to fit 32x32 instead
    ds = SegDataset(FolderSource(tiny_folder), ModelSpec(input_hw=32), "train", scale=0.125)
    assert ds._cache[0][0].shape == (32, 48, 3)


def test_real_dataset_layout(packages_dir):
    counts = {s: len(open_split(packages_dir, s)) for s in ("train", "val", "test")}
    assert counts == {"train": 300, "val": 40, "test": 60}
    img, mask = open_split(packages_dir, "test").load(0)
    assert img.shape == (540, 960, 3) and mask.shape == (540, 960) and set(np.unique(mask)) == {0, 1}
