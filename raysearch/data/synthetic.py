"""The synthetic conveyor-belt dataset: splits like the study's, a source that renders each sample
on demand, and a writer of the folder layout. The scenes themselves are drawn by
:mod:`raysearch.data.scene` (its docstring says what they show); everything is seeded by the
sample's seed, so the same seed gives the same bytes on every run.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import cv2
import numpy as np

from raysearch.data.scene import VIEWS, render_sample
from raysearch.data.sources import check_pair
from raysearch.storage import write_atomic

__all__ = [
    "SPLIT_FRACTIONS",
    "SyntheticSource",
    "render_sample",
    "sample_seed",
    "split_counts",
    "write_synthetic",
]

#: The reference study's split of its 400 images: 300 / 40 / 60.
SPLIT_FRACTIONS = {"train": 0.75, "val": 0.10, "test": 0.15}


# --------------------------------------------------------------------------- splits and the source


def split_counts(n: int) -> dict[str, int]:
    """Integer sample counts per split that sum to ``n`` (400 -> 300/40/60); every split gets at
    least one sample once n >= 3."""
    n = int(n)
    if n < 0:
        raise ValueError(f"n={n}: expected a non-negative number of samples")
    names = list(SPLIT_FRACTIONS)
    exact = [n * SPLIT_FRACTIONS[k] for k in names]
    counts = [int(np.floor(e + 1e-9)) for e in exact]
    order = sorted(range(len(names)), key=lambda j: (-(exact[j] - counts[j]), j))
    for j in order[: n - sum(counts)]:
        counts[j] += 1
    if n >= len(names):
        for j in range(len(names)):
            if counts[j] == 0:
                counts[int(np.argmax(counts))] -= 1
                counts[j] = 1
    return dict(zip(names, counts))


def sample_seed(seed: int, split: str, i: int) -> int:
    """The render seed of sample ``i`` of ``split`` under the dataset seed ``seed``."""
    if int(seed) < 0 or int(i) < 0:
        raise ValueError(f"seed={seed}, i={i}: expected non-negative integers")
    ss = np.random.SeedSequence([int(seed), zlib.crc32(split.encode("utf-8")), int(i)])
    a, b = ss.generate_state(2, dtype=np.uint32)
    return (int(a) << 32) | int(b)


class SyntheticSource:
    """``n`` synthetic samples of ``split``; sample i is rendered from sample_seed(seed, split, i),
    so splits never share samples and sample i does not depend on n. Even indices are top views,
    odd ones side views."""

    def __init__(self, n: int, seed: int = 0, split: str = "train", hw: tuple[int, int] = (540, 960)) -> None:
        if int(n) < 0:
            raise ValueError(f"n={n}: expected a non-negative number of samples")
        if int(seed) < 0:
            raise ValueError(f"seed={seed}: expected a non-negative integer")
        if not split or any(c in split for c in "/\\ "):
            raise ValueError(f"split={split!r}: expected a plain name such as 'train'")
        self.n, self.seed, self.split, self.hw = int(n), int(seed), str(split), (int(hw[0]), int(hw[1]))
        self._stems = [f"synth_{self.split}_{i:05d}_{self.view(i)}" for i in range(self.n)]

    @staticmethod
    def view(i: int) -> str:
        return VIEWS[i % 2]

    @property
    def stems(self) -> list[str]:
        return self._stems

    def __len__(self) -> int:
        return self.n

    def _index(self, i: int) -> int:
        if not 0 <= int(i) < self.n:
            raise IndexError(f"sample {i} out of range for {self.n} synthetic {self.split} samples")
        return int(i)

    def describe(self, i: int) -> str:
        return f"synthetic sample {self.split}/{i} (seed {self.seed})"

    def render(self, i: int) -> tuple[np.ndarray, np.ndarray, dict]:
        i = self._index(i)
        return render_sample(sample_seed(self.seed, self.split, i), self.hw, self.view(i))

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        image, mask, _ = self.render(i)
        check_pair(image, mask, self.describe(i))
        return image, mask


# --------------------------------------------------------------------------- writing to disk


def _jpeg_params() -> list[int]:
    params = [cv2.IMWRITE_JPEG_QUALITY, 95]
    if hasattr(cv2, "IMWRITE_JPEG_SAMPLING_FACTOR") and hasattr(cv2, "IMWRITE_JPEG_SAMPLING_FACTOR_444"):
        params += [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
    return params


def write_synthetic(out_dir: str | Path, n: int = 400, seed: int = 0, hw: tuple[int, int] = (540, 960),
                    progress: bool = True) -> dict[str, int]:
    """Write ``n`` samples as ``{train,val,test}/images/<stem>.jpg`` (JPEG q95) and
    ``{train,val,test}/labels/<stem>.png`` (0/255), the layout of the study's dataset.

    Each file is written to a temporary name and renamed, so an interrupted run never leaves a
    half-written image. Synthetic files of an earlier, larger run (``synth_<split>_*``) that are
    not part of this one are removed. Returns the counts per split.
    """
    out = Path(out_dir)
    counts = split_counts(n)
    sources = {sp: SyntheticSource(k, seed=seed, split=sp, hw=hw) for sp, k in counts.items()}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(counts.values()), desc="synthetic data", unit="img")
    jpeg = _jpeg_params()
    try:
        for sp, src in sources.items():
            img_dir, lab_dir = out / sp / "images", out / sp / "labels"
            img_dir.mkdir(parents=True, exist_ok=True)
            lab_dir.mkdir(parents=True, exist_ok=True)
            for i, stem in enumerate(src.stems):
                image, mask = src.load(i)
                ok1, jpg = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), jpeg)
                ok2, png = cv2.imencode(".png", mask * np.uint8(255))
                if not (ok1 and ok2):
                    raise RuntimeError(f"{src.describe(i)}: OpenCV could not encode the image or mask")
                write_atomic(img_dir / f"{stem}.jpg", jpg.tobytes())
                write_atomic(lab_dir / f"{stem}.png", png.tobytes())
                if bar is not None:
                    bar.update(1)
            keep = set(src.stems)
            for d, ext in ((img_dir, ".jpg"), (lab_dir, ".png")):
                for p in d.glob(f"synth_{sp}_*{ext}"):
                    if p.stem not in keep:
                        p.unlink()
    finally:
        if bar is not None:
            bar.close()
    return counts
