#!/usr/bin/env python3
"""Run the bundled segmentation model on images and write their masks: what a device runs.

    python3 predict.py IMAGE [IMAGE ...] [--out-dir masks] [--threads N]

Needs numpy and onnxruntime only (a benchd install has both: /opt/benchd/venv/bin/python); no
torch, no OpenCV. IMAGE is a .npy file holding an H x W x 3 uint8 RGB image, or a .jpg / .png
read with Pillow or OpenCV where one of them is installed. Each mask is written at the image's
own size as an 8-bit PNG (255 = foreground), or as .npy with --format npy.

The preprocessing, threshold and post-processing are the ones the search evaluated the model
with, read from model.json beside this file: resize the whole image to the model's input
(bilinear, computed as OpenCV's INTER_LINEAR computes it on uint8 images: the same bytes when
shrinking an image; at most 1 level apart on a border row when enlarging one), normalize, run,
threshold the logits, resize the mask back (nearest).

(This file is `raysearch/reporting/bundle_predict.py`, copied into every bundle as predict.py.)
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import zlib
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
_COEF_BITS = 11  # OpenCV's fixed-point resize coefficients: 1/2048 steps
_COEF = 1 << _COEF_BITS


def load_config(folder: Path = HERE) -> dict[str, Any]:
    with open(folder / "model.json", encoding="utf-8") as f:
        return json.load(f)


def _decode(path: Path) -> np.ndarray:
    """A .jpg/.png as RGB, with Pillow or else OpenCV."""
    try:
        from PIL import Image
    except ImportError:
        return _decode_with_opencv(path)
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _decode_with_opencv(path: Path) -> np.ndarray:
    try:
        import cv2
    except ImportError:
        raise SystemExit(f"{path}: reading {path.suffix} needs Pillow or OpenCV (pip install pillow); "
                         f"or pass the image as .npy (H x W x 3 uint8 RGB)") from None
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise SystemExit(f"{path}: not an image OpenCV can read")
    return bgr[..., ::-1]


def read_image(path: Path) -> np.ndarray:
    """An H x W x 3 uint8 RGB image; a file that is missing or unreadable is one line naming it."""
    try:
        image = np.load(path, allow_pickle=False) if path.suffix.lower() == ".npy" else _decode(path)
    except OSError as e:  # missing, a folder, no permission (Pillow's "cannot identify" is an OSError too)
        raise SystemExit(f"{path}: cannot read it ({e.strerror or e})") from None
    except ValueError as e:  # a .npy that is not one, or that holds pickled objects
        raise SystemExit(f"{path}: not a readable .npy array ({e})") from None
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise SystemExit(f"{path}: expected an H x W x 3 uint8 RGB image, got {image.dtype} {list(image.shape)}")
    return np.ascontiguousarray(image)


def _linear_taps(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and 1/2048 weights of each output position, as OpenCV computes them."""
    scale = 1.0 / (n_out / n_in)
    f = ((np.arange(n_out) + 0.5) * scale - 0.5).astype(np.float32)
    i0 = np.floor(f).astype(np.int64)
    w = (f - i0.astype(np.float32)).astype(np.float32)
    w = np.where(i0 < 0, np.float32(0), w)
    i0 = np.maximum(i0, 0)
    w = np.where(i0 >= n_in - 1, np.float32(0), w)
    i0 = np.minimum(i0, n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    c0 = np.rint((np.float32(1) - w) * np.float32(_COEF)).astype(np.int64)
    return i0, i1, c0, _COEF - c0


def resize_linear(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a uint8 H x W x C image in OpenCV's fixed-point arithmetic."""
    h, w = hw
    y0, y1, b0, b1 = _linear_taps(h, image.shape[0])
    x0, x1, a0, a1 = _linear_taps(w, image.shape[1])
    src = image.astype(np.int64)
    rows = src[:, x0] * a0[None, :, None] + src[:, x1] * a1[None, :, None]
    top, bottom = rows[y0] >> 4, rows[y1] >> 4
    out = (((b0[:, None, None] * top) >> 16) + ((b1[:, None, None] * bottom) >> 16) + 2) >> 2
    return np.clip(out, 0, 255).astype(np.uint8)


def resize_nearest(mask: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a 2-D mask, as OpenCV's INTER_NEAREST picks its pixels."""
    h, w = hw
    ys = np.minimum(np.floor(np.arange(h) * (1.0 / (h / mask.shape[0]))).astype(np.int64), mask.shape[0] - 1)
    xs = np.minimum(np.floor(np.arange(w) * (1.0 / (w / mask.shape[1]))).astype(np.int64), mask.shape[1] - 1)
    return mask[ys][:, xs]


def to_input(image: np.ndarray, config: dict[str, Any]) -> np.ndarray:
    """A resized uint8 RGB image -> the model's (C, H, W) float32 input."""
    pre = config["preprocessing"]
    if pre["channels"] == "rgb":
        mean = np.asarray(pre["mean"], dtype=np.float32)
        std = np.asarray(pre["std"], dtype=np.float32)
        x = (image.astype(np.float32) / np.float32(255.0) - mean) / std
        return np.ascontiguousarray(x.transpose(2, 0, 1))
    # the Y of YCrCb, 0..255, in OpenCV's fixed point (BT.601 weights, 14 bits)
    r, g, b = (image[..., i].astype(np.int64) for i in range(3))
    y = (r * 4899 + g * 9617 + b * 1868 + (1 << 13)) >> 14
    return y.astype(np.float32)[None]


def foreground(logits: np.ndarray, logit_threshold: float) -> np.ndarray:
    """(C, H, W) logits -> boolean mask: one channel, logit > threshold; several, argmax != 0."""
    if logits.shape[0] == 1:
        return logits[0] > logit_threshold
    return logits.argmax(axis=0) > 0


def write_png(path: Path, mask: np.ndarray) -> None:
    """An 8-bit grayscale PNG of a boolean mask (255 = foreground), with zlib only."""
    pixels = mask.astype(np.uint8) * 255
    raw = b"".join(b"\x00" + row.tobytes() for row in pixels)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", pixels.shape[1], pixels.shape[0], 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6))
                     + chunk(b"IEND", b""))


class Model:
    """The bundled model with its preprocessing: ``mask(image)`` is what the search evaluated."""

    def __init__(self, folder: Path = HERE, threads: int = 0) -> None:
        import onnxruntime as ort

        self.config = load_config(folder)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(folder / self.config["model_file"]), options,
                                            providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.hw = tuple(self.config["input"]["hw"])
        self.threshold = float(self.config["postprocessing"]["logit_threshold"])

    def mask_at_input_size(self, image: np.ndarray) -> np.ndarray:
        x = to_input(resize_linear(image, self.hw), self.config)[None]
        logits = self.session.run(None, {self.input_name: x})[0][0]
        return foreground(logits, self.threshold)

    def mask(self, image: np.ndarray) -> np.ndarray:
        """The foreground mask at the image's own size."""
        return resize_nearest(self.mask_at_input_size(image), image.shape[:2])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="Preprocessing and threshold come from model.json beside this file.")
    parser.add_argument("images", nargs="+", type=Path, help=".npy (H x W x 3 uint8 RGB), or .jpg/.png with Pillow")
    parser.add_argument("--out-dir", type=Path, default=Path("masks"), help="where the masks go (default: masks)")
    parser.add_argument("--format", choices=("png", "npy"), default="png", help="mask file format (default: png)")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: every core)")
    args = parser.parse_args(argv)
    model = Model(threads=args.threads)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for path in args.images:
        mask = model.mask(read_image(path))
        out = args.out_dir / f"{path.stem}.{args.format}"
        if args.format == "png":
            write_png(out, mask)
        else:
            np.save(out, mask)
        print(f"{path} -> {out}  ({mask.mean():.1%} foreground, {mask.shape[1]}x{mask.shape[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
