"""The label-studio COCO export loader: masks from polygons/RLE, path forms, errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from raysearch.data.coco import CocoSource
from raysearch.data.sources import DataError, SegSource

CATEGORIES = [{"id": 1, "name": "package"}, {"id": 2, "name": "damage"}]

# cv2.fillPoly rasterizes with both edges inclusive: the rectangle with corners x 10..29, y 20..39
# covers columns 10..29 and rows 20..39, i.e. 20 x 20 = 400 pixels.
RECT_A = [10, 20, 29, 20, 29, 39, 10, 39]  # 400 px
RECT_B = [20, 30, 39, 30, 39, 45, 20, 45]  # x 20..39 (20) x y 30..45 (16) = 320 px; overlap with A: 10 x 10
UNION_AB = 400 + 320 - 100
# right triangle (10,10) (30,10) (10,30): row y holds x = 10 .. 30 - (y - 10), i.e. 21 - (y - 10) pixels
TRIANGLE = [10, 10, 30, 10, 10, 30]  # 21 + 20 + ... + 1 = 231 px
SQUARE = [0, 0, 9, 0, 9, 9, 0, 9]  # 100 px


def _write_image(path: Path, w: int, h: int, bgr=(40, 90, 160)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.zeros((h, w, 3), np.uint8)
    img[:] = bgr
    assert cv2.imwrite(str(path), img)


def _export(root: Path, images, annotations, categories=CATEGORIES, name="result.json") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for k, a in enumerate(annotations):
        a.setdefault("id", k + 1)
        a.setdefault("bbox", [0, 0, 1, 1])
        a.setdefault("iscrowd", 0)
    data = {"images": images, "annotations": annotations, "categories": categories,
            "info": {"description": "label-studio-like test export"}}
    p = root / name
    p.write_text(json.dumps(data))
    return p


@pytest.fixture
def export(tmp_path):
    """Three images referenced the ways label-studio writes them; c.jpg has no annotations."""
    root = tmp_path / "export"
    _write_image(root / "images" / "a.jpg", 64, 48)
    _write_image(root / "images" / "b.png", 50, 40, bgr=(0, 0, 255))  # pure red in RGB
    _write_image(root / "images" / "c.jpg", 30, 30)
    images = [
        {"id": 1, "file_name": "images/a.jpg", "width": 64, "height": 48},
        {"id": 2, "file_name": "images\\b.png", "width": 50, "height": 40},
        {"id": 3, "file_name": "../../label-studio/media/upload/1/c.jpg", "width": 30, "height": 30},
    ]
    anns = [
        {"image_id": 1, "category_id": 1, "segmentation": [RECT_A]},
        {"image_id": 1, "category_id": 1, "segmentation": [RECT_B]},
        {"image_id": 2, "category_id": 2, "segmentation": [SQUARE]},
        {"image_id": 2, "category_id": 1, "segmentation": [TRIANGLE]},
    ]
    return _export(root, images, anns)


def _with(export: Path, mutate) -> Path:
    data = json.loads(export.read_text())
    mutate(data)
    export.write_text(json.dumps(data))
    return export


def test_loads_masks_as_union_of_polygons(export):
    src = CocoSource(export)
    assert isinstance(src, SegSource)
    assert len(src) == 3 and src.stems == ["a", "b", "c"]
    img, mask = src.load(0)
    assert img.shape == (48, 64, 3) and img.dtype == np.uint8
    assert mask.shape == (48, 64) and mask.dtype == np.uint8
    assert set(np.unique(mask).tolist()) == {0, 1}
    assert int(mask.sum()) == UNION_AB
    assert mask[20:40, 10:30].all() and mask[30:46, 20:40].all()
    assert "a.jpg" in src.describe(0) and "result.json" in src.describe(0)


def test_single_polygon_counts_and_rgb_order(export):
    img, mask = CocoSource(export).load(1)
    assert int(mask.sum()) == 100 + 231  # the square and the triangle do not overlap
    assert mask[0:10, 0:10].all() and mask[10, 10:31].all() and mask[30, 10] == 1 and mask[30, 11] == 0
    assert (img[..., 0] == 255).all() and (img[..., 1:] == 0).all()  # RGB, not BGR


def test_category_filter(export):
    assert int(CocoSource(export, categories=["damage"]).load(1)[1].sum()) == 100
    assert int(CocoSource(export, categories=[2]).load(1)[1].sum()) == 100
    assert int(CocoSource(export, categories="package").load(1)[1].sum()) == 231
    assert int(CocoSource(export, categories=["damage"]).load(0)[1].sum()) == 0
    with pytest.raises(DataError, match=r"result\.json.*'nope'"):
        CocoSource(export, categories=["nope"])


def test_image_without_annotations_is_a_negative(export):
    img, mask = CocoSource(export).load(2)
    assert img.shape == (30, 30, 3) and mask.shape == (30, 30) and not mask.any()


def test_folder_path_image_root_and_absolute_paths(export, tmp_path):
    assert CocoSource(export.parent).stems == ["a", "b", "c"]  # the folder holding result.json
    # images elsewhere: image_root names that folder
    other = tmp_path / "elsewhere"
    other.mkdir()
    moved = other / "result.json"
    moved.write_text(export.read_text())
    with pytest.raises(DataError, match=r"a\.jpg.*tried"):
        CocoSource(moved)
    assert len(CocoSource(moved, image_root=export.parent)) == 3
    # an absolute file_name is used as given
    absolute = str(export.parent / "images" / "a.jpg")
    _with(export, lambda d: d["images"][0].update(file_name=absolute))
    assert int(CocoSource(export).load(0)[1].sum()) == UNION_AB


def test_bbox_fallback_and_uncompressed_rle(tmp_path):
    root = tmp_path / "x"
    _write_image(root / "images" / "r.png", 6, 4)
    _write_image(root / "images" / "s.png", 20, 20)
    # column-major runs: 5 zeros, 3 ones, 16 zeros -> flat (Fortran) indices 5, 6, 7 = column 1, rows 1..3
    rle = {"counts": [5, 3, 16], "size": [4, 6]}
    p = _export(root, [{"id": 7, "file_name": "images/r.png", "width": 6, "height": 4},
                       {"id": 8, "file_name": "images/s.png", "width": 20, "height": 20}],
                [{"image_id": 7, "category_id": 1, "segmentation": rle},
                 {"image_id": 8, "category_id": 1, "segmentation": [], "bbox": [5, 5, 10, 10]}])
    src = CocoSource(p)
    mask = src.load(0)[1]
    expected = np.zeros((4, 6), np.uint8)
    expected[1:4, 1] = 1
    assert np.array_equal(mask, expected)
    assert int(src.load(1)[1].sum()) == 11 * 11  # corners 5..15 inclusive, like a polygon


def test_compressed_rle_is_refused(export):
    _with(export, lambda d: d["annotations"][0].update(segmentation={"counts": "PPYo0", "size": [48, 64]}))
    with pytest.raises(DataError, match=r"a\.jpg.*compressed RLE.*polygons"):
        CocoSource(export)


# ---------------------------------------------------------------------------------------- errors


def test_missing_json(tmp_path):
    with pytest.raises(DataError, match=re.escape("result.json")):
        CocoSource(tmp_path / "result.json")


def test_not_json(tmp_path):
    p = tmp_path / "result.json"
    p.write_text("{not json")
    with pytest.raises(DataError, match=re.escape("result.json")):
        CocoSource(p)


def test_not_coco(tmp_path):
    p = tmp_path / "result.json"
    p.write_text(json.dumps({"images": []}))
    with pytest.raises(DataError, match=r"result\.json.*'annotations'.*'categories'"):
        CocoSource(p)
    p.write_text(json.dumps([1, 2]))
    with pytest.raises(DataError, match=re.escape("result.json")):
        CocoSource(p)


def test_image_not_found_lists_paths_tried(export):
    _with(export, lambda d: d["images"][1].update(file_name="images/zzz.jpg"))
    with pytest.raises(DataError, match=re.escape("zzz.jpg")) as e:
        CocoSource(export)
    assert "tried" in str(e.value) and str(export.parent / "images" / "zzz.jpg") in str(e.value)


def test_unreadable_image(export):
    (export.parent / "images" / "a.jpg").write_bytes(b"this is not a jpeg")
    src = CocoSource(export)  # it exists: construction is fine
    with pytest.raises(DataError, match=re.escape("a.jpg")):
        src.load(0)
    assert src.load(1)[0].shape == (40, 50, 3)


def test_size_differs_from_json(export):
    _write_image(export.parent / "images" / "a.jpg", 60, 48)
    with pytest.raises(DataError, match=r"a\.jpg.*60x48.*64x48"):
        CocoSource(export).load(0)


@pytest.mark.parametrize("poly, why", [
    ([10, 20, 29, 20, 29, 39, 10], "odd number"),
    ([10, 20, 29, 20], "at least 3"),
    ([10, 20, 29, 20, 29, 390, 10, 390], "outside"),
])
def test_bad_polygon(export, poly, why):
    _with(export, lambda d: d["annotations"][0].update(segmentation=[RECT_A, poly]))
    with pytest.raises(DataError, match=re.escape("a.jpg") + ".*" + why):
        CocoSource(export)


def test_unknown_image_id(export):
    _with(export, lambda d: d["annotations"].append(
        {"id": 77, "image_id": 99, "category_id": 1, "segmentation": [RECT_A], "bbox": [0, 0, 1, 1]}))
    with pytest.raises(DataError, match=r"result\.json.*annotation 77.*image_id 99"):
        CocoSource(export)


def test_bad_image_entry(export):
    _with(export, lambda d: d["images"][0].pop("height"))
    with pytest.raises(DataError, match=r"result\.json.*a\.jpg.*'height'"):
        CocoSource(export)
