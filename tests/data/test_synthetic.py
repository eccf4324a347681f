"""The synthetic conveyor-belt generator: determinism, splits, masks, the on-disk layout."""

from __future__ import annotations

import re

import cv2
import numpy as np
import pytest

from raysearch.data.sources import SegSource
from raysearch.data.synthetic import (
    SPLIT_FRACTIONS,
    SyntheticSource,
    render_sample,
    sample_seed,
    split_counts,
    write_synthetic,
)

SEEDS = range(24)


@pytest.fixture(scope="module")
def samples():
    """A couple of dozen rendered samples, shared by the tests below (rendering is the slow part)."""
    return {s: render_sample(s) for s in SEEDS}


def test_same_seed_gives_identical_bytes(samples):
    img, mask, meta = render_sample(5)
    img0, mask0, meta0 = samples[5]
    assert img.tobytes() == img0.tobytes()
    assert mask.tobytes() == mask0.tobytes()
    assert meta == meta0


def test_different_seeds_differ(samples):
    assert samples[1][0].tobytes() != samples[2][0].tobytes()
    assert samples[1][1].tobytes() != samples[2][1].tobytes()


def test_split_counts():
    assert split_counts(400) == {"train": 300, "val": 40, "test": 60}
    assert list(split_counts(10)) == list(SPLIT_FRACTIONS) == ["train", "val", "test"]
    for n in list(range(0, 60)) + [101, 399, 401, 1000, 12345]:
        c = split_counts(n)
        assert sum(c.values()) == n and min(c.values()) >= 0, (n, c)
        if n >= 3:
            assert min(c.values()) >= 1, (n, c)
        if n >= 20:
            for k, frac in SPLIT_FRACTIONS.items():
                assert abs(c[k] - n * frac) <= 1, (n, c)
    with pytest.raises(ValueError):
        split_counts(-1)


def test_masks_binary_nonempty_and_plausible(samples):
    for s, (img, mask, meta) in samples.items():
        assert img.shape == (540, 960, 3) and img.dtype == np.uint8
        assert mask.shape == (540, 960) and mask.dtype == np.uint8
        assert set(np.unique(mask).tolist()) == {0, 1}, s
        frac = mask.mean()
        assert 0.03 <= frac <= 0.70, (s, frac)
        assert meta["mask_area"] == int(mask.sum())
        assert meta["view"] in ("top", "side")


def test_package_pixels_differ_from_background(samples):
    # the mask marks something visible: the package differs from the belt around it
    for s, (img, mask, _) in list(samples.items())[:8]:
        inside = img[mask == 1].reshape(-1, 3).mean(0)
        ring = cv2.dilate(mask, np.ones((25, 25), np.uint8)) - mask
        outside = img[ring == 1].reshape(-1, 3).mean(0)
        assert np.abs(inside - outside).max() > 8, (s, inside, outside)


def test_both_views_occur(samples):
    views = {meta["view"] for _, _, meta in samples.values()}
    assert views == {"top", "side"}
    assert render_sample(3, view="top")[2]["view"] == "top"
    assert render_sample(3, view="side")[2]["view"] == "side"
    with pytest.raises(ValueError):
        render_sample(3, view="front")


def test_torn_corners_remove_part_of_the_box(samples):
    torn = [(s, mask, meta) for s, (_, mask, meta) in samples.items() if meta["torn"]]
    intact = [(s, mask, meta) for s, (_, mask, meta) in samples.items() if not meta["torn"]]
    assert torn and intact
    for s, mask, meta in torn:
        assert meta["damaged"]
        assert 0 < int(mask.sum()) < meta["box_area"], s
        # the bite is inside the box outline: the mask is the outline minus the bite
        outline = np.zeros_like(mask)
        cv2.fillPoly(outline, [np.round(np.array(meta["box_polygon"]) * 16).astype(np.int32)], 1, cv2.LINE_8, 4)
        assert not np.any(mask & (1 - outline)), s
    for s, mask, meta in intact:
        assert int(mask.sum()) == meta["box_area"], s


def test_damage_occurs(samples):
    metas = [meta for _, _, meta in samples.values()]
    assert any(m["damaged"] for m in metas) and not all(m["damaged"] for m in metas)
    assert any(m["dents"] for m in metas)


def test_other_sizes():
    img, mask, meta = render_sample(11, hw=(180, 320))
    assert img.shape == (180, 320, 3) and mask.shape == (180, 320)
    assert 0.01 < mask.mean() < 0.7
    img, mask, _ = render_sample(11, hw=(128, 128))
    assert img.shape == (128, 128, 3) and mask.any()


def test_source_protocol():
    src = SyntheticSource(6, seed=0, split="train", hw=(180, 320))
    assert isinstance(src, SegSource)
    assert len(src) == 6 and len(src.stems) == 6
    assert src.stems[0] == "synth_train_00000_top" and src.stems[1] == "synth_train_00001_side"
    assert all(re.fullmatch(r"synth_train_\d{5}_(top|side)", s) for s in src.stems)
    assert src.describe(3) == "synthetic sample train/3 (seed 0)"
    img, mask = src.load(3)
    assert img.shape == (180, 320, 3) and mask.shape == (180, 320)
    assert src.render(3)[2]["view"] == "side"
    with pytest.raises(IndexError):
        src.load(6)


def test_sample_does_not_depend_on_n_and_splits_do_not_share():
    a = SyntheticSource(3, seed=0, split="val", hw=(90, 160)).load(2)
    b = SyntheticSource(9, seed=0, split="val", hw=(90, 160)).load(2)
    assert a[0].tobytes() == b[0].tobytes() and a[1].tobytes() == b[1].tobytes()
    c = SyntheticSource(3, seed=0, split="test", hw=(90, 160)).load(2)
    d = SyntheticSource(3, seed=1, split="val", hw=(90, 160)).load(2)
    assert c[0].tobytes() != a[0].tobytes() and d[0].tobytes() != a[0].tobytes()
    seeds = {sp: {sample_seed(0, sp, i) for i in range(400)} for sp in SPLIT_FRACTIONS}
    assert all(len(v) == 400 for v in seeds.values())
    assert not (seeds["train"] & seeds["val"]) and not (seeds["train"] & seeds["test"])
    assert not (seeds["val"] & seeds["test"])


def test_write_synthetic_layout(tmp_path):
    counts = write_synthetic(tmp_path, n=20, seed=0, progress=False)
    assert counts == split_counts(20) == {"train": 15, "val": 2, "test": 3}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test", "train", "val"]
    for split, k in counts.items():
        d = tmp_path / split
        assert sorted(p.name for p in d.iterdir()) == ["images", "labels"]
        images = sorted((d / "images").iterdir())
        labels = sorted((d / "labels").iterdir())
        assert all(p.suffix == ".jpg" for p in images) and all(p.suffix == ".png" for p in labels)
        stems = [p.stem for p in images]
        assert stems == [p.stem for p in labels] == sorted(SyntheticSource(k, split=split).stems)
        for ip, lp in zip(images, labels):
            img = cv2.imread(str(ip), cv2.IMREAD_COLOR)
            lab = cv2.imread(str(lp), cv2.IMREAD_UNCHANGED)
            assert img is not None and img.shape == (540, 960, 3)
            assert lab.ndim == 2 and lab.dtype == np.uint8 and lab.shape == img.shape[:2]
            assert set(np.unique(lab).tolist()) == {0, 255}

    # the PNG is the rendered mask exactly; the JPEG is the image (RGB written as BGR) up to compression
    src = SyntheticSource(counts["val"], split="val")
    img, mask = src.load(1)
    lab = cv2.imread(str(tmp_path / "val" / "labels" / f"{src.stems[1]}.png"), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(lab, mask * 255)
    jpg = cv2.cvtColor(cv2.imread(str(tmp_path / "val" / "images" / f"{src.stems[1]}.jpg")), cv2.COLOR_BGR2RGB)
    assert np.abs(jpg.astype(int) - img.astype(int)).mean() < 3

    # a smaller rerun leaves exactly its own samples
    write_synthetic(tmp_path, n=8, seed=0, progress=False)
    assert len(list((tmp_path / "train" / "images").iterdir())) == split_counts(8)["train"]
    assert len(list((tmp_path / "train" / "labels").iterdir())) == split_counts(8)["train"]
