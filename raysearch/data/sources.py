"""Where images and masks come from.

A *source* is a sized, indexable collection of (image, mask) pairs with stable names:

    len(source)            number of samples
    source.stems           list of sample names (file stems), index-aligned
    source.load(i)         (image RGB uint8 HxWx3, mask uint8 HxW with values {0, 1})
    source.describe(i)     a string naming where sample i comes from (for error messages)

Folders of images/labels, label-studio COCO exports and the synthetic generator all implement it,
so the dataset, training and evaluation code never care where the pixels came from.
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import numpy as np


class DataError(ValueError):
    """Bad input data; the message names the offending file and what was expected."""


@runtime_checkable
class SegSource(Protocol):
    @property
    def stems(self) -> Sequence[str]: ...

    def __len__(self) -> int: ...

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]: ...

    def describe(self, i: int) -> str: ...


def check_pair(image: np.ndarray, mask: np.ndarray, where: str) -> None:
    """Shared sanity checks for one loaded pair; raise DataError naming ``where``."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise DataError(f"{where}: image has shape {image.shape} dtype {image.dtype}; expected HxWx3 uint8")
    if mask.ndim != 2:
        raise DataError(f"{where}: mask has shape {mask.shape}; expected a single-channel HxW mask")
    if image.shape[:2] != mask.shape:
        raise DataError(
            f"{where}: image is {image.shape[1]}x{image.shape[0]} but its mask is "
            f"{mask.shape[1]}x{mask.shape[0]} (WxH); they must be the same size"
        )
