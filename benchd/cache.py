"""Content-addressed model cache on disk: `<dir>/models/<sha256>.onnx`, LRU-evicted to a size cap.

The last-use time is the file's mtime, so the LRU order survives a restart. A model pinned by
a running benchmark is never evicted. Uploads stream into `<dir>/tmp/` while hashing and are
renamed into place only once the size, sha256 and ONNX framing check out.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger("benchd.cache")

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class CacheError(Exception):
    """An upload was refused; `code` is the gRPC status name to answer with."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class CachedModel:
    sha256: str
    size_bytes: int
    last_used_unix_ns: int


def check_sha(sha: str) -> str:
    if not SHA256_RE.match(sha):
        raise CacheError("INVALID_ARGUMENT", f"model_sha256 must be 64 lowercase hex digits, got {sha[:80]!r}")
    return sha


def _varint(f: BinaryIO) -> int | None:
    shift = result = 0
    while True:
        b = f.read(1)
        if not b:
            return None
        result |= (b[0] & 0x7F) << shift
        if not b[0] & 0x80:
            return result
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def check_onnx_framing(path: Path) -> None:
    """Cheap structural check that a file is a serialized onnx.ModelProto.

    Walks the top-level protobuf fields (no onnx package on the device) and requires
    ir_version (field 1) and a graph (field 7). Rejects garbage bytes at upload time;
    onnxruntime still has the final word when the model is loaded.
    """
    size = path.stat().st_size
    seen: set[int] = set()
    with open(path, "rb") as f:
        try:
            while f.tell() < size:
                key = _varint(f)
                if key is None:
                    break
                field, wire = key >> 3, key & 7
                if field == 0:
                    raise ValueError("field number 0")
                if wire == 0:
                    if _varint(f) is None:
                        raise ValueError("truncated varint")
                elif wire == 1:
                    f.seek(8, os.SEEK_CUR)
                elif wire == 2:
                    length = _varint(f)
                    if length is None or f.tell() + length > size:
                        raise ValueError("length runs past the end of the file")
                    f.seek(length, os.SEEK_CUR)
                elif wire == 5:
                    f.seek(4, os.SEEK_CUR)
                else:
                    raise ValueError(f"wire type {wire}")
                if f.tell() > size:
                    raise ValueError("field runs past the end of the file")
                seen.add(field)
        except ValueError as exc:
            raise CacheError("INVALID_ARGUMENT", f"not an ONNX model (bad protobuf framing: {exc})") from None
    missing = [name for num, name in ((1, "ir_version"), (7, "graph")) if num not in seen]
    if missing:
        raise CacheError("INVALID_ARGUMENT", f"not an ONNX model (no {' or '.join(missing)} field)")


class ModelCache:
    def __init__(self, root: str | os.PathLike[str], max_bytes: int) -> None:
        self.root = Path(root).expanduser()
        self.models_dir = self.root / "models"
        self.tmp_dir = self.root / "tmp"
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._pins: dict[str, int] = {}
        for stale in self.tmp_dir.iterdir():  # uploads cut short by a previous crash
            stale.unlink(missing_ok=True)
        with self._lock:
            self._evict_locked()

    def path(self, sha: str) -> Path:
        return self.models_dir / f"{check_sha(sha)}.onnx"

    def entries(self) -> list[CachedModel]:
        out = []
        for p in self.models_dir.glob("*.onnx"):
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            out.append(CachedModel(p.stem, st.st_size, st.st_mtime_ns))
        return sorted(out, key=lambda m: m.last_used_unix_ns)

    def total_bytes(self) -> int:
        return sum(m.size_bytes for m in self.entries())

    def lookup(self, sha: str, *, touch: bool = True) -> int | None:
        """Size of a cached model (marking it recently used), or None if absent."""
        p = self.path(sha)
        with self._lock:
            try:
                size = p.stat().st_size
                if touch:
                    os.utime(p)
                return size
            except FileNotFoundError:
                return None

    @contextmanager
    def pinned(self, sha: str) -> Iterator[Path | None]:
        """Path of a cached model that cannot be evicted inside the block (None if absent)."""
        with self._lock:
            p = self.path(sha)
            if not p.exists():
                yield_path = None
            else:
                os.utime(p)
                self._pins[sha] = self._pins.get(sha, 0) + 1
                yield_path = p
        try:
            yield yield_path
        finally:
            if yield_path is not None:
                with self._lock:
                    self._pins[sha] -= 1
                    if not self._pins[sha]:
                        del self._pins[sha]

    def new_upload(self) -> tuple[BinaryIO, Path]:
        fd, name = tempfile.mkstemp(dir=self.tmp_dir, suffix=".part")
        return os.fdopen(fd, "wb"), Path(name)

    def commit_upload(self, tmp: Path, sha: str, size: int, digest: str | None = None) -> None:
        """Verify a finished upload and move it into the cache (tmp is consumed either way).

        `digest` is the sha256 the caller computed while receiving; None hashes the file.
        """
        try:
            actual_size = tmp.stat().st_size
            if actual_size != size:
                raise CacheError("INVALID_ARGUMENT", f"received {actual_size} bytes, header said {size}")
            digest = digest or sha256_file(tmp)
            if digest != sha:
                raise CacheError(
                    "INVALID_ARGUMENT", f"sha256 mismatch: header said {sha}, data hashes to {digest}"
                )
            check_onnx_framing(tmp)
            with self._lock:
                os.replace(tmp, self.path(sha))
                self._evict_locked(keep=sha)
        finally:
            tmp.unlink(missing_ok=True)

    def _evict_locked(self, keep: str | None = None) -> None:
        entries = self.entries()
        total = sum(m.size_bytes for m in entries)
        for m in entries:  # oldest first
            if total <= self.max_bytes:
                break
            if m.sha256 == keep or m.sha256 in self._pins:
                continue
            (self.models_dir / f"{m.sha256}.onnx").unlink(missing_ok=True)
            total -= m.size_bytes
            log.info("evicted %s (%d bytes) from the model cache", m.sha256[:12], m.size_bytes)
        if total > self.max_bytes:
            log.warning("model cache holds %d bytes over its cap (models in use)", total - self.max_bytes)


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
