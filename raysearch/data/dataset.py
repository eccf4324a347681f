"""Torch dataset over a source: decoded (and pre-scaled) images are cached in memory once, so an
epoch costs augmentation + compute, not JPEG decoding."""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from raysearch.data.sources import SegSource
from raysearch.data.transforms import build_transform, to_input
from raysearch.models import ModelSpec

#: The study cropped 512x512 at native scale; a smaller input first resizes the image by
#: input / 512 (the "resolution factor") so that a crop sees the same field of view.
BASE_RESOLUTION = 512


def resolution_factor(spec: ModelSpec, base: int = BASE_RESOLUTION) -> float:
    return min(1.0, min(spec.input_hw) / base)


class SegDataset(Dataset):
    """Items: (input float32 CxHxW, mask float32 1xHxW in {0,1}) at ``spec.input_hw``.

    kind "train" augments randomly, "val" center-crops, "test" resizes the whole image. Train and
    val images are resized once by ``scale`` (default: the resolution factor) before cropping, but
    never below the crop size (an image smaller than the crop is padded).
    """

    def __init__(self, source: SegSource, spec: ModelSpec, kind: str, *, scale: float | None = None,
                 seed: int | None = None, progress: bool = False) -> None:
        self.source, self.spec, self.kind = source, spec, kind
        self.scale = resolution_factor(spec) if scale is None else float(scale)
        if not 0 < self.scale <= 4:
            raise ValueError(f"scale={scale!r} must be in (0, 4] (the resize factor applied before cropping)")
        self.transform = build_transform(kind, spec.input_hw, seed=seed)
        self._cache: list[tuple[np.ndarray, np.ndarray]] = []
        items = range(len(source))
        for i in tqdm(items, desc=f"loading {kind} ({len(source)} images)", disable=not progress, leave=False):
            self._cache.append(self._prepare(*source.load(i)))

    def _prepare(self, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.kind == "test" or self.scale == 1.0:
            return image, mask
        h, w = mask.shape
        ch, cw = self.spec.input_hw
        fits = h >= ch and w >= cw  # never below the crop size: an image that holds a crop is cropped, not padded
        scale = max(self.scale, ch / h, cw / w) if fits else self.scale
        # the study's size: int(scale * side), truncated (960x540 -> 300x168 at 160, not 169)
        nw, nh = max(1, int(w * scale)), max(1, int(h * scale))
        if fits:  # (ch / h) * h may truncate to ch - 1
            nw, nh = max(nw, cw), max(nh, ch)
        if (nw, nh) == (w, h):
            return image, mask
        size = (nw, nh)
        interp = cv2.INTER_LINEAR  # as albumentations' Resize, and as the test transform resizes
        return cv2.resize(image, size, interpolation=interp), cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST)

    def __len__(self) -> int:
        return len(self._cache)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self._cache[i]
        out = self.transform(image=image, mask=mask)
        x = to_input(out["image"], self.spec.in_channels)
        y = out["mask"].astype(np.float32)[None]
        return torch.from_numpy(x), torch.from_numpy(y)


def seed_worker(worker_id: int) -> None:
    """DataLoader worker init: give each worker's albumentations pipeline its own stream."""
    info = torch.utils.data.get_worker_info()
    if info is not None and hasattr(info.dataset, "transform"):
        info.dataset.transform.set_random_seed(int(torch.initial_seed() % 2**31))
