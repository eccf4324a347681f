"""Data: sources (folder, label-studio COCO, synthetic), the study's transforms, the dataset.

`open_split(data, split)` is the one entry point the CLI, training and search use:

* ``"synthetic"`` or ``"synthetic:N"``: the bundled generator, N samples in all (default 400)
  split 75/10/15 like the study's dataset;
* a folder with ``<split>/images`` + ``<split>/labels`` (the layout of the study's dataset);
* a folder with ``images`` + ``labels`` and no splits, or a label-studio COCO export (a
  ``result.json`` or its folder): split deterministically 75/10/15 by a hash of each stem,
  so a sample never moves between splits when others are added.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from raysearch.data.sources import DataError, SegSource, check_pair

__all__ = ["DataError", "SegSource", "Subset", "check_data", "check_pair", "open_split", "prepare_data", "SPLITS"]

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
_SPLIT_EDGES = {"train": (0.0, 0.75), "val": (0.75, 0.85), "test": (0.85, 1.0)}
DEFAULT_SYNTHETIC_N = 400


class Subset:
    """The samples of a source whose indices are given (same protocol)."""

    def __init__(self, source: SegSource, indices: list[int]) -> None:
        self.source, self.indices = source, list(indices)

    @property
    def stems(self) -> list[str]:
        return [self.source.stems[i] for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def load(self, i: int):
        return self.source.load(self.indices[i])

    def describe(self, i: int) -> str:
        return self.source.describe(self.indices[i])


def hash_split(source: SegSource, split: str) -> Subset:
    lo, hi = _SPLIT_EDGES[split]
    keep = []
    for i, stem in enumerate(source.stems):
        # surrogateescape: a file name that is not UTF-8 hashes as its own bytes
        u = int.from_bytes(hashlib.sha1(stem.encode("utf-8", "surrogateescape")).digest()[:8], "big") / 2**64
        if lo <= u < hi:
            keep.append(i)
    return Subset(source, keep)


def open_split(data: str | Path, split: str, *, seed: int = 0, limit: int | None = None) -> SegSource:
    """The ``split`` of the dataset named by ``data``; ``limit`` keeps the first N samples."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {SPLITS}")
    source = _open(str(data), split, seed)
    if len(source) == 0:
        raise DataError(f"{data}: the {split!r} split is empty")
    if limit is not None and limit < len(source):
        source = Subset(source, list(range(limit)))
    return source


def check_data(data: str | Path, *, limit: int | None = None, seed: int = 0) -> None:
    """Every split opens and holds samples (`DataError` naming the data otherwise): what a search
    checks before it starts Ray."""
    from raysearch.data.folder import FolderSource

    for split in SPLITS:
        source = open_split(data, split, seed=seed, limit=limit)
        indices = None
        while isinstance(source, Subset):  # a limit over a hash split: the indices of the files used
            indices = [source.indices[i] for i in (range(len(source)) if indices is None else indices)]
            source = source.source
        if isinstance(source, FolderSource):
            source.check_sizes(indices)


def _open(data: str, split: str, seed: int) -> SegSource:
    if data == "synthetic" or data.startswith("synthetic:"):
        from raysearch.data.synthetic import SyntheticSource, split_counts

        _, _, n = data.partition(":")
        try:
            total = int(n) if n else DEFAULT_SYNTHETIC_N
        except ValueError:
            raise DataError(f"--data {data!r}: expected 'synthetic' or 'synthetic:N' with N an integer") from None
        if total < 3:
            raise DataError(f"--data {data!r}: need at least 3 synthetic samples (one per split)")
        return SyntheticSource(split_counts(total)[split], seed=seed, split=split)

    from raysearch.data.folder import FolderSource

    path = Path(data)
    if path.suffix.lower() == ".json":
        from raysearch.data.coco import CocoSource

        return hash_split(CocoSource(path), split)
    if not path.is_dir():
        raise DataError(f"--data {data!r}: no such folder or file; expected a dataset folder, a COCO "
                        f"result.json, or 'synthetic'")
    if (path / split / "images").is_dir():
        return FolderSource(path / split)
    if (path / "images").is_dir():
        return hash_split(FolderSource(path), split)
    if (path / "result.json").is_file():
        from raysearch.data.coco import CocoSource

        return hash_split(CocoSource(path / "result.json"), split)
    raise DataError(
        f"{path}: not a dataset: expected {path}/{split}/images + labels, {path}/images + labels, "
        f"or a label-studio COCO export ({path}/result.json)"
    )


def prepare_data(data: str, storage: Path | None, seed: int) -> str:
    """What trials should open: synthetic data is written once to the (local or shared) storage
    folder so trials read files instead of rendering; with an object store (``storage`` None)
    every trial renders the same deterministic images itself. A folder becomes absolute (trials
    run in folders of their own)."""
    if not (data == "synthetic" or data.startswith("synthetic:")):
        return str(Path(data).resolve()) if Path(data).exists() else data
    if storage is None:
        return data
    from raysearch.data.synthetic import write_synthetic

    n = int(data.partition(":")[2] or DEFAULT_SYNTHETIC_N)
    out = storage / "data" / f"synthetic-{n}-seed{seed}"
    if not (out / ".complete").is_file():
        log.info("writing %d synthetic images to %s", n, out)
        write_synthetic(out, n=n, seed=seed, progress=True)
        (out / ".complete").write_text("ok")
    return str(out)
