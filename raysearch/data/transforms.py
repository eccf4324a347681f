"""The study's augmentation pipelines (albumentations), driven by the spec's input size/channels,
and the one function that turns an RGB uint8 image into the network's input.

Train: (images are pre-scaled by the resolution factor, see `SegDataset`) pad if needed, random
crop at the input size, the study's shift-scale-rotate (`ShiftScaleRotate` below: albumentations
1.x semantics, p=0.5), RGB shift 15 (p=0.3), random brightness/contrast (p=0.3).
Val: center crop. Test: resize the whole image to the input size.
Then `to_input`: ImageNet normalization for RGB, or channel 0 of YCrCb unnormalized (0..255).
"""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # it phones home on import otherwise

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
KINDS = ("train", "val", "test")


class ShiftScaleRotate(A.DualTransform):
    """albumentations 1.x's ``ShiftScaleRotate`` as the study ran it (2.x deprecates it, and its
    ``Affine`` differs): one isotropic scale in [1 - scale, 1 + scale], a rotation in
    [-rotate, rotate] degrees about the image centre and sub-pixel shifts of up to ``shift`` of the
    width and height, all drawn uniformly; what the warp uncovers is filled by reflection
    (``BORDER_REFLECT_101``), never black. Images are interpolated bilinearly, masks nearest."""

    def __init__(self, shift: float = 0.05, scale: float = 0.05, rotate: float = 15.0, p: float = 0.5) -> None:
        super().__init__(p=p)
        for name, value in (("shift", shift), ("scale", scale), ("rotate", rotate)):
            if not 0 <= value < (180 if name == "rotate" else 1):
                raise ValueError(f"ShiftScaleRotate {name}={value!r} is out of range")
        self.shift, self.scale, self.rotate = shift, scale, rotate

    def get_params(self) -> dict:
        r = self.py_random
        return {"angle": r.uniform(-self.rotate, self.rotate), "scale": r.uniform(1 - self.scale, 1 + self.scale),
                "dx": r.uniform(-self.shift, self.shift), "dy": r.uniform(-self.shift, self.shift)}

    def apply(self, img: np.ndarray, angle: float, scale: float, dx: float, dy: float, **_) -> np.ndarray:
        return shift_scale_rotate(img, angle, scale, dx, dy, cv2.INTER_LINEAR)

    def apply_to_mask(self, mask: np.ndarray, angle: float, scale: float, dx: float, dy: float, **_) -> np.ndarray:
        return shift_scale_rotate(mask, angle, scale, dx, dy, cv2.INTER_NEAREST)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("shift", "scale", "rotate")


def shift_scale_rotate(img: np.ndarray, angle: float, scale: float, dx: float, dy: float,
                       interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """Rotate by ``angle`` degrees (counter-clockwise) and scale by ``scale`` about the image centre,
    then shift by ``dx`` widths and ``dy`` heights; uncovered pixels reflect (BORDER_REFLECT_101)."""
    h, w = img.shape[:2]
    matrix = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle, scale)
    matrix[0, 2] += dx * w
    matrix[1, 2] += dy * h
    out = cv2.warpAffine(img, matrix, (w, h), flags=interpolation, borderMode=cv2.BORDER_REFLECT_101)
    return out.reshape(img.shape)  # cv2 drops a trailing channel axis of 1


def build_transform(kind: str, input_hw: tuple[int, int], seed: int | None = None) -> A.Compose:
    """Geometric + photometric augmentation of RGB uint8 (image, mask) for ``kind``."""
    h, w = input_hw
    pad = A.PadIfNeeded(min_height=h, min_width=w, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0)
    if kind == "train":
        steps = [
            pad,
            A.RandomCrop(h, w),
            ShiftScaleRotate(shift=0.05, scale=0.05, rotate=15, p=0.5),
            A.RGBShift(r_shift_limit=15, g_shift_limit=15, b_shift_limit=15, p=0.3),
            A.RandomBrightnessContrast(p=0.3),
        ]
    elif kind == "val":
        steps = [pad, A.CenterCrop(h, w)]
    elif kind == "test":
        steps = [A.Resize(h, w, interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST)]
    else:
        raise ValueError(f"transform kind {kind!r} is not one of {KINDS}")
    return A.Compose(steps, seed=seed)


def to_input(image: np.ndarray, in_channels: int) -> np.ndarray:
    """RGB uint8 HxWx3 -> float32 CxHxW network input (one image)."""
    if in_channels == 3:
        x = (image.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
        return np.ascontiguousarray(x.transpose(2, 0, 1))
    if in_channels == 1:
        y = cv2.cvtColor(image, cv2.COLOR_RGB2YCrCb)[..., 0]
        return y.astype(np.float32)[None]
    raise ValueError(f"in_channels={in_channels} must be 3 (RGB) or 1 (Y channel)")


def resize_for_test(image: np.ndarray, input_hw: tuple[int, int]) -> np.ndarray:
    """The test transform (resize the whole image to the input size), for the image only."""
    h, w = input_hw
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
