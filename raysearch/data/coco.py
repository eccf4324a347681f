"""A label-studio COCO export (``result.json``) as a source of (image, mask) pairs.

The export lists ``images`` ({id, file_name, width, height}), ``annotations`` ({image_id,
category_id, segmentation, bbox, ...}) and ``categories`` ({id, name}). A sample's mask is the
union of the polygons of the chosen categories (default: all), rasterized with cv2.fillPoly at
the image's native size; polygon coordinates are rounded to whole pixels and both edges are
inclusive (a rectangle with corners x=10..29, y=20..39 covers 20 x 20 pixels). Uncompressed RLE
({"counts": [...], "size": [h, w]}) is accepted too; an annotation with an empty segmentation
but a bbox (label-studio rectangles) contributes its box. An image without annotations is a
valid negative (all-zero mask).

Label-studio writes ``file_name`` in several ways ("images/abc.jpg", "images\\abc.jpg",
"../../label-studio/media/upload/1/abc.jpg", "/data/upload/1/abc.jpg", ...); each image is looked
for at the path as given, then relative to ``image_root`` (default: the json's folder), then at
``image_root/images/<basename>`` and ``image_root/<basename>``.

The structure and the image files' existence are checked when the source is built; each image's
size, the polygons against it and the pair are checked again on ``load``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable
from urllib.parse import unquote

import cv2
import numpy as np

from raysearch.data.sources import DataError, check_pair

__all__ = ["CocoSource"]

_REQUIRED = ("images", "annotations", "categories")


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and np.isfinite(v)


class CocoSource:
    """The images of a COCO export with masks from its polygon (or uncompressed RLE) annotations.

    ``categories``: names or ids of the categories whose annotations make the mask (default: all).
    """

    def __init__(self, json_path: str | Path, image_root: str | Path | None = None,
                 categories: Iterable[str | int] | None = None) -> None:
        self.json_path = Path(json_path)
        if self.json_path.is_dir():
            self.json_path = self.json_path / "result.json"
        self.image_root = Path(image_root) if image_root is not None else self.json_path.parent
        data = self._read_json()
        jp = self.json_path

        # categories
        cats = data["categories"]
        if not isinstance(cats, list):
            raise DataError(f"{jp}: 'categories' is {type(cats).__name__}; expected a list of {{id, name}}")
        cat_names: dict[int, str] = {}
        for k, c in enumerate(cats):
            if not isinstance(c, dict) or not _is_int(c.get("id")):
                raise DataError(f"{jp}: categories[{k}] = {c!r}: expected an object with an integer 'id' and a 'name'")
            cat_names[int(c["id"])] = str(c.get("name", c["id"]))
        self.category_names = cat_names
        self.category_ids = self._select_categories(categories, cat_names)

        # images
        imgs = data["images"]
        if not isinstance(imgs, list):
            raise DataError(f"{jp}: 'images' is {type(imgs).__name__}; expected a list of "
                            f"{{id, file_name, width, height}}")
        self._ids: list[int] = []
        self._file_names: list[str] = []
        self._sizes: list[tuple[int, int]] = []  # (width, height) as the json says
        index: dict[int, int] = {}
        for k, im in enumerate(imgs):
            if not isinstance(im, dict):
                raise DataError(f"{jp}: images[{k}] is {type(im).__name__}; expected an object "
                                f"{{id, file_name, width, height}}")
            missing = [key for key in ("id", "file_name", "width", "height") if key not in im]
            if missing:
                raise DataError(f"{jp}: images[{k}] ({im.get('file_name', 'no file_name')}) lacks "
                                f"{', '.join(repr(m) for m in missing)}; expected id, file_name, width, height")
            if not _is_int(im["id"]):
                raise DataError(f"{jp}: images[{k}] ({im['file_name']}) has id {im['id']!r}; expected an integer")
            w, h = im["width"], im["height"]
            if not (_is_int(w) and _is_int(h) and w > 0 and h > 0):
                raise DataError(f"{jp}: image {im['file_name']!r} (id {im['id']}) has width={w!r} height={h!r}; "
                                f"expected positive integers")
            if not isinstance(im["file_name"], str) or not im["file_name"].strip():
                raise DataError(f"{jp}: images[{k}] (id {im['id']}) has file_name {im['file_name']!r}; "
                                f"expected a path")
            if int(im["id"]) in index:
                raise DataError(f"{jp}: image id {im['id']} appears twice ({self._file_names[index[int(im['id'])]]} "
                                f"and {im['file_name']}); expected unique ids")
            index[int(im["id"])] = len(self._ids)
            self._ids.append(int(im["id"]))
            self._file_names.append(im["file_name"])
            self._sizes.append((int(w), int(h)))

        # annotations: grouped per image, structure checked now
        anns = data["annotations"]
        if not isinstance(anns, list):
            raise DataError(f"{jp}: 'annotations' is {type(anns).__name__}; expected a list")
        self._anns: list[list[dict]] = [[] for _ in self._ids]
        for k, a in enumerate(anns):
            if not isinstance(a, dict):
                raise DataError(f"{jp}: annotations[{k}] is {type(a).__name__}; expected an object")
            aid = a.get("id", f"#{k}")
            if not _is_int(a.get("image_id")) or int(a["image_id"]) not in index:
                raise DataError(f"{jp}: annotation {aid} refers to image_id {a.get('image_id')!r}, which is not "
                                f"among the {len(index)} images listed in 'images'")
            i = index[int(a["image_id"])]
            cid = a.get("category_id")
            if not _is_int(cid) or int(cid) not in cat_names:  # type: ignore[arg-type]  # an int when _is_int
                raise DataError(f"{jp}: annotation {aid} on {self._file_names[i]} has category_id {cid!r}, which is "
                                f"not in 'categories' (ids {sorted(cat_names)})")
            self._check_segmentation(a, aid, i)
            self._anns[i].append(a)

        # files: resolve every image now, so a missing one fails before any training starts
        self._paths = [self._resolve(fn) for fn in self._file_names]
        self._stems = self._make_stems()

    # ------------------------------------------------------------------ construction helpers

    def _read_json(self) -> dict:
        jp = self.json_path
        if not jp.is_file():
            raise DataError(f"{jp}: COCO export not found; expected label-studio's result.json "
                            f"(Export > COCO)")
        try:
            data = json.loads(jp.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise DataError(f"{jp}: not valid JSON ({e}); expected a label-studio COCO export") from None
        if not isinstance(data, dict):
            raise DataError(f"{jp}: the JSON holds a {type(data).__name__}; expected a COCO object with "
                            f"{', '.join(_REQUIRED)}")
        missing = [k for k in _REQUIRED if k not in data]
        if missing:
            raise DataError(f"{jp}: not a COCO export: missing {', '.join(repr(m) for m in missing)}; expected "
                            f"the keys {', '.join(repr(k) for k in _REQUIRED)} (label-studio: Export > COCO)")
        return data

    def _select_categories(self, categories, cat_names: dict[int, str]) -> set[int]:
        if categories is None:
            return set(cat_names)
        if isinstance(categories, (str, int)):
            categories = [categories]
        by_name: dict[str, list[int]] = {}
        for cid, name in cat_names.items():
            by_name.setdefault(name, []).append(cid)
        chosen: set[int] = set()
        for c in categories:
            if _is_int(c) and int(c) in cat_names:
                chosen.add(int(c))
            elif isinstance(c, str) and c in by_name:
                chosen.update(by_name[c])
            else:
                known = ", ".join(f"{cid}={name!r}" for cid, name in sorted(cat_names.items()))
                raise DataError(f"{self.json_path}: category {c!r} is not in the export; it has: {known or 'none'}")
        return chosen

    def _check_segmentation(self, a: dict, aid, i: int) -> None:
        where = f"{self.json_path}: annotation {aid} on {self._file_names[i]}"
        seg = a.get("segmentation")
        if seg is None or (isinstance(seg, list) and len(seg) == 0):
            bbox = a.get("bbox")
            if bbox is None:
                raise DataError(f"{where} has neither a segmentation nor a bbox")
            if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_num(v) for v in bbox)):
                raise DataError(f"{where} has bbox {bbox!r}; expected [x, y, width, height]")
            return
        if isinstance(seg, dict):
            counts, size = seg.get("counts"), seg.get("size")
            if isinstance(counts, (str, bytes)):
                raise DataError(f"{where} uses compressed RLE (a 'counts' string), which is not supported; "
                                f"export polygons instead (label-studio: polygon labels, Export > COCO)")
            if not (isinstance(counts, list) and all(_is_int(v) and v >= 0 for v in counts)):
                raise DataError(f"{where}: RLE 'counts' must be a list of non-negative integers")
            if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) and v > 0 for v in size)):
                raise DataError(f"{where}: RLE 'size' is {size!r}; expected [height, width]")
            w, h = self._sizes[i]
            if (int(size[0]), int(size[1])) != (h, w):
                raise DataError(f"{where}: RLE size is {size[1]}x{size[0]} (WxH) but the image is {w}x{h} in 'images'")
            if sum(int(v) for v in counts) != h * w:
                raise DataError(f"{where}: RLE counts add up to {sum(int(v) for v in counts)} pixels; expected "
                                f"{h}*{w} = {h * w}")
            return
        if not isinstance(seg, list):
            raise DataError(f"{where}: segmentation is {type(seg).__name__}; expected a list of polygons "
                            f"[x1, y1, x2, y2, ...] or an RLE object")
        for j, poly in enumerate(seg):
            if not isinstance(poly, list) or not all(_is_num(v) for v in poly):
                raise DataError(f"{where}: polygon {j} is not a flat list of numbers [x1, y1, x2, y2, ...]")
            if len(poly) % 2:
                raise DataError(f"{where}: polygon {j} has an odd number of coordinates ({len(poly)}); expected "
                                f"x, y pairs")
            if len(poly) < 6:
                raise DataError(f"{where}: polygon {j} has {len(poly) // 2} point(s); a polygon needs at least 3")
            w, h = self._sizes[i]
            tol = max(2.0, 0.01 * max(w, h))
            xs, ys = poly[0::2], poly[1::2]
            if min(xs) < -tol or max(xs) > w + tol or min(ys) < -tol or max(ys) > h + tol:
                raise DataError(f"{where}: polygon {j} spans x {min(xs)}..{max(xs)}, y {min(ys)}..{max(ys)}, outside "
                                f"the {w}x{h} image; expected pixel coordinates inside it")

    def _candidates(self, file_name: str) -> list[Path]:
        fn = file_name.strip().replace("\\", "/")
        names = [fn]
        if "?d=" in fn:  # label-studio local storage: /data/local-files/?d=<path>
            names.append(unquote(fn.split("?d=", 1)[1]))
        if "%" in fn:
            names.append(unquote(fn))
        root = self.image_root
        out: list[Path] = []
        for name in names:
            base = name.rsplit("/", 1)[-1]
            out += [Path(name), root / name.lstrip("/"), root / "images" / base, root / base]
        seen, uniq = set(), []
        for p in out:
            key = os.path.normpath(str(p))
            if key not in seen:
                seen.add(key)
                uniq.append(p)
        return uniq

    def _resolve(self, file_name: str) -> Path:
        tried = self._candidates(file_name)
        for p in tried:
            if p.is_file():
                return p
        raise DataError(f"{self.json_path}: image {file_name!r} not found; tried: "
                        + ", ".join(str(p) for p in tried)
                        + " (pass image_root= the folder that holds the images)")

    def _make_stems(self) -> list[str]:
        stems = [Path(p.name).stem for p in self._paths]
        count: dict[str, int] = {}
        for s in stems:
            count[s] = count.get(s, 0) + 1
        return [f"{s}_{iid}" if count[s] > 1 else s for s, iid in zip(stems, self._ids)]

    # ------------------------------------------------------------------ the source protocol

    @property
    def stems(self) -> list[str]:
        return self._stems

    @property
    def paths(self) -> list[Path]:
        return list(self._paths)

    def __len__(self) -> int:
        return len(self._ids)

    def describe(self, i: int) -> str:
        return f"{self._paths[i]} (image id {self._ids[i]} in {self.json_path})"

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        path = self._paths[i]
        where = self.describe(i)
        try:
            buf = np.fromfile(str(path), dtype=np.uint8)
        except OSError as e:
            raise DataError(f"{where}: cannot read the image file ({e})") from None
        img = cv2.imdecode(buf, cv2.IMREAD_COLOR) if buf.size else None
        if img is None:
            raise DataError(f"{where}: cannot decode this image (truncated or not an image file)")
        image = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        w, h = self._sizes[i]
        if image.shape[:2] != (h, w):
            raise DataError(f"{where}: the image is {image.shape[1]}x{image.shape[0]} (WxH) but the COCO export "
                            f"says {w}x{h} for {self._file_names[i]!r}; was it resized after annotation?")
        mask = self._mask(i)
        check_pair(image, mask, where)
        return image, mask

    def mask(self, i: int) -> np.ndarray:
        """Sample i's mask alone (no image decoding), {0, 1} uint8 at the size the json states."""
        return self._mask(i)

    def _mask(self, i: int) -> np.ndarray:
        w, h = self._sizes[i]
        mask = np.zeros((h, w), np.uint8)
        polys = []
        for a in self._anns[i]:
            if int(a["category_id"]) not in self.category_ids:
                continue
            self._check_segmentation(a, a.get("id", "?"), i)
            seg = a.get("segmentation")
            if isinstance(seg, dict):
                mask |= _decode_rle(seg["counts"], h, w)
            elif seg:
                polys += [np.round(np.asarray(p, np.float64).reshape(-1, 2)).astype(np.int32) for p in seg]
            else:
                x, y, bw, bh = (float(v) for v in a["bbox"])
                polys.append(np.round(np.array([[x, y], [x + bw, y], [x + bw, y + bh], [x, y + bh]])).astype(np.int32))
        for p in polys:  # one call per polygon: a single call would XOR overlapping polygons
            cv2.fillPoly(mask, [p], 1)
        return mask


def _decode_rle(counts: list[int], h: int, w: int) -> np.ndarray:
    """Uncompressed COCO RLE: alternating run lengths of 0s and 1s, starting with 0s, in
    column-major (Fortran) order."""
    vals = np.zeros(len(counts), np.uint8)
    vals[1::2] = 1
    flat = np.repeat(vals, np.asarray(counts, dtype=np.int64))
    return flat.reshape((h, w), order="F").copy()
