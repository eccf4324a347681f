"""What several test modules share (no test module imports another): the repository's root, the
study's dataset, tiny datasets written to disk, and the `raysearch` command run in-process. The
pytest fixtures built from them are in ``tests/conftest.py``."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
PACKAGES = Path(os.environ.get("RAYSEARCH_PACKAGES", REPO.parent / "shared" / "data" / "packages"))


def write_pair(root: Path, stem: str, image: np.ndarray, mask: np.ndarray, ext: str = ".png") -> None:
    """One image (RGB) and its mask in the folder layout: ``images/STEM.EXT``, ``labels/STEM.png``."""
    import cv2

    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(root / "images" / f"{stem}{ext}"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(root / "labels" / f"{stem}.png"), mask)


def write_boxes(root: Path, sizes: dict[str, int] | None = None) -> Path:
    """Bright boxes on a noisy dark background (96x128), split into train/val/test folders:
    learnable in a few epochs."""
    rng = np.random.default_rng(0)
    for split, n in (sizes or {"train": 24, "val": 6, "test": 6}).items():
        for i in range(n):
            img = rng.integers(0, 60, (96, 128, 3), dtype=np.uint8)
            mask = np.zeros((96, 128), np.uint8)
            y, x = rng.integers(5, 40), rng.integers(5, 60)
            h, w = rng.integers(25, 50), rng.integers(30, 60)
            img[y:y + h, x:x + w] = rng.integers(150, 255, 3)
            mask[y:y + h, x:x + w] = 255
            write_pair(root / split, f"{split}{i}", img, mask)
    return root


def run_raysearch(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """``raysearch ARGS`` in this process (the torch import is paid once): the exit code and what
    it printed."""
    from raysearch import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(list(args))
        except SystemExit as e:  # argparse: --help, a bad flag
            code = e.code if isinstance(e.code, int) else 2
    p = subprocess.CompletedProcess(["raysearch", *args], code, out.getvalue(), err.getvalue())
    if check and p.returncode != 0:
        raise AssertionError(f"raysearch {' '.join(args)} exited {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


@contextlib.contextmanager
def tmpfs(folder: Path, size: str = "300m"):
    """A filesystem of its own at ``folder`` (a tmpfs: to fill up, or to remount read-only with
    `remount_ro`); the test is skipped, saying why, without root or mount. Unmounted afterwards."""
    import shutil

    import pytest

    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a filesystem of its own (full or read-only) needs root to mount a tmpfs")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True,
                          text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def remount_ro(folder: Path) -> None:
    """Make a `tmpfs` read-only (root writes through a file's mode bits; not through this)."""
    subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
