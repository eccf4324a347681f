"""Folder loader, split resolution, transforms and the dataset, with the bad-data errors."""


import cv2
import numpy as np
import pytest

from raysearch.data import DataError, check_data, open_split
from raysearch.data.dataset import SegDataset, resolution_factor
from raysearch.data.folder import FolderSource
from raysearch.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ShiftScaleRotate,
    build_transform,
    shift_scale_rotate,
    to_input,
)
from raysearch.models import ModelSpec
from tests.helpers import write_pair


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


def test_prescale_truncates_as_the_study(tmp_path):
    # the study resized to int(m * 540) x int(m * 960): at m = 0.3125 (160 of 512) 168.75 -> 168, not 169
    img = np.zeros((540, 960, 3), np.uint8)
    write_pair(tmp_path, "a", img, np.zeros((540, 960), np.uint8))
    ds = SegDataset(FolderSource(tmp_path), ModelSpec(input_hw=160), "train")
    assert ds.scale == 0.3125 and ds._cache[0][0].shape == (168, 300, 3)


def _ramps(h: int, w: int) -> np.ndarray:
    """Channel 0 = x, channel 1 = y (float32), so a warp's geometry can be read off the pixels."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.dstack([xx, yy, np.zeros_like(xx)])


def test_shift_scale_rotate_scales_isotropically():
    s, h, w = 1.05, 48, 64
    out = shift_scale_rotate(_ramps(h, w), angle=0, scale=s, dx=0, dy=0)
    inner = (slice(8, -8), slice(8, -8))  # away from the reflected border
    # out(p) = c + (p - c) / s on both axes: one scale, no cross terms
    assert np.allclose(np.diff(out[..., 0][inner], axis=1), 1 / s, atol=1e-3)
    assert np.allclose(np.diff(out[..., 1][inner], axis=0), 1 / s, atol=1e-3)
    assert np.allclose(np.diff(out[..., 0][inner], axis=0), 0, atol=1e-3)
    assert np.allclose(out[h // 2, w // 2, :2], [(w - 1) / 2 + (w // 2 - (w - 1) / 2) / s,
                                                 (h - 1) / 2 + (h // 2 - (h - 1) / 2) / s], atol=1e-3)


def test_shift_scale_rotate_shifts_by_sub_pixels_and_reflects_the_border():
    h, w = 20, 40
    ramps = _ramps(h, w)
    # dx = 0.05 of 40 px = 2 px right: column j shows column j - 2, so columns 0 and 1 show the
    # reflections (BORDER_REFLECT_101) of columns -2 and -1, i.e. 2 and 1
    out = shift_scale_rotate(ramps, angle=0, scale=1, dx=0.05, dy=0)
    assert np.allclose(out[:, 2:, 0], ramps[:, :-2, 0]) and np.allclose(out[:, :2, 0], [2, 1])
    # dx = 0.0125 of 40 px = half a pixel: not rounded to a whole one
    half = shift_scale_rotate(ramps, angle=0, scale=1, dx=0.0125, dy=0)
    assert np.allclose(half[:, 5:-5, 0], ramps[:, 5:-5, 0] - 0.5, atol=1e-2)
    # nothing goes black: a constant image and a full mask stay constant under any warp
    flat = np.full((h, w, 3), 200, np.uint8)
    assert (shift_scale_rotate(flat, 15, 0.95, 0.05, -0.05) == 200).all()
    full = np.ones((h, w), np.uint8)
    assert (shift_scale_rotate(full, -15, 1.05, -0.05, 0.05, cv2.INTER_NEAREST) == 1).all()


def test_shift_scale_rotate_draws_within_the_study_ranges_and_is_seeded():
    t = ShiftScaleRotate(shift=0.05, scale=0.05, rotate=15, p=1)
    t.set_random_seed(0)
    draws = [t.get_params() for _ in range(500)]
    for key, lo, hi in (("angle", -15, 15), ("scale", 0.95, 1.05), ("dx", -0.05, 0.05), ("dy", -0.05, 0.05)):
        values = [d[key] for d in draws]
        assert lo <= min(values) < lo + 0.1 * (hi - lo) and hi - 0.1 * (hi - lo) < max(values) <= hi, key
    img = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    mask = (img[..., 0] > 127).astype(np.uint8)
    a = build_transform("train", (32, 32), seed=5)(image=img, mask=mask)
    b = build_transform("train", (32, 32), seed=5)(image=img, mask=mask)
    assert np.array_equal(a["image"], b["image"]) and np.array_equal(a["mask"], b["mask"])
    assert set(np.unique(a["mask"])) <= {0, 1}
    with pytest.raises(ValueError, match="scale=1.5"):
        ShiftScaleRotate(scale=1.5)


def test_real_dataset_layout(packages_dir):
    counts = {s: len(open_split(packages_dir, s)) for s in ("train", "val", "test")}
    assert counts == {"train": 300, "val": 40, "test": 60}
    img, mask = open_split(packages_dir, "test").load(0)
    assert img.shape == (540, 960, 3) and mask.shape == (540, 960) and set(np.unique(mask)) == {0, 1}


def test_check_data_reads_every_pairs_size_from_the_headers(tmp_path):
    """A mask of the wrong size is found by `check_data` (what a search runs before Ray starts),
    naming both files, and the limit's files are the ones checked."""
    rng = np.random.default_rng(2)
    for split in ("train", "val", "test"):
        for i in range(3):
            write_pair(tmp_path / split, f"{split}{i}", rng.integers(0, 255, (32, 48, 3), dtype=np.uint8),
                       np.zeros((32, 48), np.uint8))
    check_data(tmp_path)
    cv2.imwrite(str(tmp_path / "val" / "labels" / "val2.png"), np.zeros((32, 40), np.uint8))
    check_data(tmp_path, limit=2)  # val2 is not among the files a --limit 2 search reads
    with pytest.raises(DataError, match=r"val2\.png.*48x32.*val2\.png is 40x32"):
        check_data(tmp_path)


def test_self_looping_symlinks_are_named_not_dropped(tiny_folder):
    for sub in ("images", "labels"):
        link = tiny_folder / sub / "loop.png"
        link.symlink_to(link)
    (tiny_folder / "images" / "gone.png").symlink_to(tiny_folder / "nowhere.png")
    with pytest.raises(DataError, match=r"images: 2 file\(s\) cannot be read: gone\.png \(No such file.*loop\.png "
                                        r"\(a symlink loop\)"):
        FolderSource(tiny_folder)
