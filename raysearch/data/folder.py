"""A folder of ``images/`` + ``labels/`` with matching stems (the layout of the study's dataset)."""

from __future__ import annotations

import errno
import io
from pathlib import Path

import cv2
import numpy as np

from raysearch.data.sources import DataError, check_pair

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def _index(folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    unreadable: list[str] = []
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() not in IMAGE_EXTS:
            continue
        try:
            p.stat()  # follows links: a dangling link or a loop raises here
        except OSError as e:
            unreadable.append(f"{p.name} ({'a symlink loop' if e.errno == errno.ELOOP else e.strerror})")
            continue
        if p.is_file():
            if p.stem in found:
                raise DataError(f"{folder}: two files share the stem {p.stem!r}: {found[p.stem].name} and {p.name}")
            found[p.stem] = p
    if unreadable:  # dropping them would quietly shrink the data set and pair the rest differently
        raise DataError(f"{shown(folder)}: {len(unreadable)} file(s) cannot be read: {_preview(unreadable)}")
    return found


def _preview(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f" (and {len(names) - 5} more)" if len(names) > 5 else "")


#: the largest image accepted (a 20000 x 20000 image with its mask trained at 2.5 GB): 8K x 5K
MAX_PIXELS = 8192 * 5120


def shown(path: Path) -> str:
    """A path fit for a message, whatever bytes its name holds (not UTF-8: shown escaped)."""
    return str(path).encode("utf-8", "backslashreplace").decode("utf-8")


def decode(path: Path, flags: int, what: str) -> np.ndarray:
    """Decode an image file: the bytes read by Python (OpenCV's imread crashed on a name that is
    not UTF-8), its size checked from the header before any pixel is decoded, a JPEG without its
    end marker refused (libjpeg decodes a truncated file silently, gray at the bottom)."""
    from PIL import Image, UnidentifiedImageError

    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"{shown(path)}: cannot read this {what} ({e.strerror})") from None
    bomb_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # only the header is read: ours is checked below
    try:
        with Image.open(io.BytesIO(data)) as probe:
            w, h = probe.size
            kind = probe.format
    except (UnidentifiedImageError, OSError, ValueError):
        raise DataError(f"{shown(path)}: cannot read this {what} (not an image file, or a damaged one)") from None
    finally:
        Image.MAX_IMAGE_PIXELS = bomb_limit
    if w * h > MAX_PIXELS:
        raise DataError(f"{shown(path)}: {what} is {w}x{h} ({w * h / 1e6:.0f} Mpixels); the limit is "
                        f"{MAX_PIXELS / 1e6:.0f} Mpixels: resize it first")
    if kind == "JPEG" and not data.rstrip(b"\x00\r\n ").endswith(b"\xff\xd9"):
        raise DataError(f"{shown(path)}: truncated JPEG (no end-of-image marker): re-export or remove it")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if img is None:
        raise DataError(f"{shown(path)}: cannot read this {what} (missing, truncated or not an image file)")
    return img


def read_image_rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(decode(path, cv2.IMREAD_COLOR, "image"), cv2.COLOR_BGR2RGB)


def read_mask(path: Path) -> np.ndarray:
    """A binary mask as {0, 1}; accepts 0/255 or 0/1 grayscale (or identical-channel color) PNGs."""
    m = decode(path, cv2.IMREAD_UNCHANGED, "mask")
    if m.ndim == 3:
        if m.shape[2] == 4:
            m = m[..., :3]
        if not (m == m[..., :1]).all():
            raise DataError(f"{shown(path)}: mask is a color image with differing channels; expected a grayscale 0/255 mask")
        m = m[..., 0]
    values = np.unique(m)
    if set(values.tolist()) <= {0, 255}:
        return (m == 255).astype(np.uint8)
    if set(values.tolist()) <= {0, 1}:
        return m.astype(np.uint8)
    first = values[:8].tolist()
    raise DataError(
        f"{shown(path)}: mask is not binary: it holds the values {first}{' ...' if len(values) > 8 else ''}; "
        f"expected only 0 and 255 (or 0 and 1). Was it saved as JPEG or resized with interpolation?"
    )


class FolderSource:
    """``root/images/<stem>.<ext>`` with ``root/labels/<stem>.png``; every image needs exactly one
    mask and every mask an image (checked at construction, so a bad folder fails before training)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        img_dir, lab_dir = self.root / "images", self.root / "labels"
        for d in (img_dir, lab_dir):
            if not d.is_dir():
                raise DataError(f"{d}: folder not found; expected {self.root}/images and {self.root}/labels")
        images, labels = _index(img_dir), _index(lab_dir)
        missing = sorted(set(images) - set(labels))
        extra = sorted(set(labels) - set(images))
        if missing:
            raise DataError(f"{lab_dir}: no mask for {len(missing)} image(s): {_preview(missing)}")
        if extra:
            raise DataError(f"{img_dir}: no image for {len(extra)} mask(s): {_preview(extra)}")
        if not images:
            raise DataError(f"{img_dir}: no images found (extensions {', '.join(IMAGE_EXTS)})")
        self._stems = sorted(images)
        self._images = [images[s] for s in self._stems]
        self._labels = [labels[s] for s in self._stems]

    @property
    def stems(self) -> list[str]:
        return self._stems

    def __len__(self) -> int:
        return len(self._stems)

    def describe(self, i: int) -> str:
        return f"{self._images[i]} (mask {self._labels[i]})"

    def check_sizes(self, indices: list[int] | None = None) -> None:
        """Every image and its mask have the same size, read from the files' headers (milliseconds
        a pair): what a search checks before it starts Ray. A header PIL cannot read is left to
        `load`, which names the file."""
        from PIL import Image

        for i in range(len(self)) if indices is None else indices:
            try:
                with Image.open(self._images[i]) as im, Image.open(self._labels[i]) as lab:
                    image_size, mask_size = im.size, lab.size
            except (OSError, SyntaxError, ValueError):
                continue
            if image_size != mask_size:
                raise DataError(f"{shown(self._images[i])}: image is {image_size[0]}x{image_size[1]} but its mask "
                                f"{shown(self._labels[i])} is {mask_size[0]}x{mask_size[1]} (WxH); they must be the "
                                "same size")

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        image, mask = read_image_rgb(self._images[i]), read_mask(self._labels[i])
        check_pair(image, mask, str(self._images[i]))
        return image, mask
