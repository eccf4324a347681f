"""Content-addressed model cache on disk: `<dir>/models/<sha256>.onnx`, LRU-evicted to a size cap.

The last-use time is the file's mtime, so the LRU order survives a restart. A model pinned by
a running benchmark is never evicted. Uploads stream into `<dir>/tmp/` while hashing and are
renamed into place only once the size, sha256 and ONNX framing check out.

A cached file is trusted only while it still hashes to its name: every file is hashed at start-up,
and again whenever its stat signature (size, mtime, inode, ctime) differs from the one seen at
its last check, so a file corrupted, replaced or planted on disk is removed and reported absent
(the client then uploads it again) instead of being benchmarked as the model asked for. The worker
hashes the bytes it loads as well, which closes the gap between that check and the load.

A read-only cache (a read-only mount, a directory the server may not write) serves the models it
holds: their last-use times are left as they are, nothing is removed or evicted, and an upload is
refused (FAILED_PRECONDITION) naming the directory.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger("benchd.cache")

SHA256_RE = re.compile(r"[0-9a-f]{64}")
# what a write to a read-only mount, or to a directory that is not ours, fails with
READ_ONLY_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM)


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
    if not SHA256_RE.fullmatch(sha):
        raise CacheError("INVALID_ARGUMENT", f"model_sha256 must be 64 lowercase hex digits, got {sha[:80]!r}"
                         + (f" ({len(sha)} characters)" if len(sha) > 80 else ""))
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


def _signature(st: os.stat_result) -> tuple[int, int, int, int]:
    # ctime changes on any write, rename or utime, and cannot be set back by a user
    return st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns


class ModelCache:
    def __init__(self, root: str | os.PathLike[str], max_bytes: int) -> None:
        self.root = Path(root).expanduser()
        self.models_dir = self.root / "models"
        self.tmp_dir = self.root / "tmp"
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._pins: dict[str, int] = {}
        self._verified: dict[str, tuple[int, int, int, int]] = {}  # sha -> stat signature when it last hashed right
        self.read_only = not self._writable()
        if not self.read_only:
            for stale in self.tmp_dir.iterdir():  # uploads cut short by a previous crash
                stale.unlink(missing_ok=True)
        with self._lock:
            for p in self.models_dir.iterdir():  # anything planted or corrupted while we were down
                if not (p.suffix == ".onnx" and SHA256_RE.fullmatch(p.stem) and p.is_file()):
                    if not self.read_only:
                        log.warning("removed %s from the model cache: not a <sha256>.onnx file", p.name[:80])
                        _remove(p)
                else:
                    self._check_locked(p.stem)
            if not self.read_only:
                self._evict_locked()
        if self.read_only:
            log.warning("model cache %s is read-only: serving only the %d model(s) it holds, refusing uploads",
                        self.root, len(self._verified))

    def _writable(self) -> bool:
        """Whether uploads can be stored: a file can be made in the cache's folders (a write is tried:
        root passes every permission check, not a read-only mount). A cache that is not there and
        cannot be made is an error: there is nothing to serve."""
        try:
            self.models_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OSError(f"cannot create the model cache {self.models_dir}: {exc.strerror}") from None
        try:
            self.tmp_dir.mkdir(exist_ok=True)
            for folder in (self.tmp_dir, self.models_dir):
                fd, name = tempfile.mkstemp(dir=folder, prefix=".probe-")
                os.close(fd)
                os.unlink(name)
        except OSError as exc:
            if exc.errno not in READ_ONLY_ERRNOS:
                raise
            return False
        return True

    def _read_only_error(self) -> CacheError:
        return CacheError("FAILED_PRECONDITION", f"the model cache {self.root} is read-only: this device serves only "
                                                 f"the models it holds and cannot store new ones")

    def path(self, sha: str) -> Path:
        return self.models_dir / f"{check_sha(sha)}.onnx"

    def _check_locked(self, sha: str) -> int | None:
        """Size of the cached file if it still hashes to ``sha``; a file that does not is removed."""
        p = self.path(sha)
        try:
            st = p.stat()
        except FileNotFoundError:
            self._verified.pop(sha, None)
            return None
        if self._verified.get(sha) == _signature(st):
            return st.st_size
        try:
            digest = sha256_file(p)
        except OSError:
            digest = ""
        if digest != sha:
            log.warning("%s cached model %s: its file hashes to %s (corrupted or replaced on disk)",
                        "ignored (read-only cache)" if self.read_only else "removed", sha[:12],
                        digest[:12] or "nothing readable")
            self._forget_locked(sha)
            return None
        self._verified[sha] = _signature(st)
        return st.st_size

    def _forget_locked(self, sha: str) -> None:
        self._verified.pop(sha, None)
        if not self.read_only:  # a bad file in a read-only cache stays, and is never served
            _remove(self.path(sha))

    def _touch_locked(self, sha: str) -> None:
        p = self.path(sha)
        try:
            os.utime(p)
        except OSError as exc:  # best effort: the LRU order is a nicety, serving the model is not
            if exc.errno not in READ_ONLY_ERRNOS:
                raise
            return
        self._verified[sha] = _signature(p.stat())  # our own touch keeps the file verified

    def discard(self, sha: str) -> None:
        """Remove a cached file found bad elsewhere (the worker hashed what it loaded)."""
        with self._lock:
            log.warning("removed cached model %s: the worker found its content does not match", sha[:12])
            self._forget_locked(sha)

    def entries(self) -> list[CachedModel]:
        """Valid cached models only, least recently used first."""
        out = []
        with self._lock:
            for p in self.models_dir.glob("*.onnx"):
                if not SHA256_RE.fullmatch(p.stem) or self._check_locked(p.stem) is None:
                    continue
                try:
                    st = p.stat()
                except FileNotFoundError:
                    continue
                out.append(CachedModel(p.stem, st.st_size, st.st_mtime_ns))
        return sorted(out, key=lambda m: m.last_used_unix_ns)

    def total_bytes(self) -> int:
        total = 0
        for p in self.models_dir.glob("*.onnx"):
            try:
                total += p.stat().st_size
            except FileNotFoundError:
                continue
        return total

    def lookup(self, sha: str, *, touch: bool = True) -> int | None:
        """Size of a valid cached model (marking it recently used), or None if absent or bad."""
        with self._lock:
            size = self._check_locked(check_sha(sha))
            if size is not None and touch:
                try:
                    self._touch_locked(sha)
                except FileNotFoundError:
                    return None
            return size

    @contextmanager
    def pinned(self, sha: str) -> Iterator[Path | None]:
        """Path of a cached model that cannot be evicted inside the block (None if absent)."""
        with self._lock:
            p = self.path(sha)
            if self._check_locked(sha) is None:
                yield_path = None
            else:
                self._touch_locked(sha)
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
        if self.read_only:
            raise self._read_only_error()
        try:
            fd, name = tempfile.mkstemp(dir=self.tmp_dir, suffix=".part")
        except OSError as exc:  # remounted read-only since start-up
            if exc.errno in READ_ONLY_ERRNOS:
                raise self._read_only_error() from None
            raise
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
                try:
                    os.replace(tmp, self.path(sha))
                except OSError as exc:
                    if exc.errno in READ_ONLY_ERRNOS:
                        raise self._read_only_error() from None
                    raise
                self._verified[sha] = _signature(self.path(sha).stat())
                self._evict_locked(keep=sha)
        finally:
            tmp.unlink(missing_ok=True)

    def _evict_locked(self, keep: str | None = None) -> None:
        entries = []
        for p in self.models_dir.glob("*.onnx"):
            try:
                entries.append(CachedModel(p.stem, p.stat().st_size, p.stat().st_mtime_ns))
            except FileNotFoundError:
                continue
        entries.sort(key=lambda m: m.last_used_unix_ns)
        total = sum(m.size_bytes for m in entries)
        for m in entries:  # oldest first
            if total <= self.max_bytes:
                break
            if m.sha256 == keep or m.sha256 in self._pins:
                continue
            (self.models_dir / f"{m.sha256}.onnx").unlink(missing_ok=True)
            self._verified.pop(m.sha256, None)
            total -= m.size_bytes
            log.info("evicted %s (%d bytes) from the model cache", m.sha256[:12], m.size_bytes)
        if total > self.max_bytes:
            log.warning("model cache holds %d bytes over its cap (models in use)", total - self.max_bytes)


def _remove(p: Path) -> None:
    try:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)
    except OSError as exc:
        log.error("cannot remove %s from the model cache: %s", p, exc)


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
