"""Files the search shares between the driver and its trials: a local or shared folder, or an
object-store URI (s3://, gs://, file://) on a cluster without a shared filesystem.

Every whole-file write goes through here and is atomic (a temporary name in the same folder,
then a move), so a reader never sees half a file, whatever crashes.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Iterator


def write_atomic(path: str | Path, data: bytes | str) -> Path:
    """Write a local file at once: readers see the old content or the new, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def is_uri(location: str | Path) -> bool:
    return "://" in str(location)


def storage_fs(location: str | Path):
    """(pyarrow filesystem, path) for a local folder or a storage URI."""
    import pyarrow.fs as pafs  # comes with ray; only the search side needs it

    text = str(location)
    if is_uri(text):
        return pafs.FileSystem.from_uri(text)
    return pafs.LocalFileSystem(), str(Path(text).resolve())


def read_bytes(location: str | Path) -> bytes:
    if not is_uri(location):
        return Path(location).read_bytes()
    fs, path = storage_fs(location)
    with fs.open_input_stream(path) as f:
        return f.read()


def write_bytes(location: str | Path, data: bytes) -> None:
    """Write a whole file at once, locally or on an object store (temporary name, then a move)."""
    if not is_uri(location):
        write_atomic(location, data)
        return
    fs, path = storage_fs(location)
    parent = path.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    tmp = f"{parent}/.{uuid.uuid4().hex}.tmp"
    with fs.open_output_stream(tmp) as f:
        f.write(data)
    fs.move(tmp, path)


def exists(location: str | Path) -> bool:
    """Whether a file is there (an object store answers a missing key with a generic OSError)."""
    if not is_uri(location):
        return Path(location).is_file()
    import pyarrow.fs as pafs

    fs, path = storage_fs(location)
    return fs.get_file_info(path).type == pafs.FileType.File


def delete(location: str | Path) -> None:
    """Remove a file; one already gone is fine."""
    if not is_uri(location):
        Path(location).unlink(missing_ok=True)
    elif exists(location):
        fs, path = storage_fs(location)
        fs.delete_file(path)


def delete_tree(location: str | Path) -> None:
    """Remove a folder and everything under it, locally or on an object store; a missing one is fine."""
    import pyarrow.fs as pafs

    fs, path = storage_fs(location)
    if fs.get_file_info(path).type == pafs.FileType.Directory:
        fs.delete_dir(path)


def publish_tree(folder: Path, location: str) -> int:
    """Copy a local folder's files (recursively) under ``location``."""
    n = 0
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            write_bytes(f"{location.rstrip('/')}/{p.relative_to(folder).as_posix()}", p.read_bytes())
            n += 1
    return n


def fetch_tree(location: str, folder: Path) -> int:
    """Copy every file under ``location`` into the local ``folder``; 0 when there is none."""
    import pyarrow.fs as pafs

    fs, root = storage_fs(location)
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        return 0
    n = 0
    for info in fs.get_file_info(pafs.FileSelector(root, recursive=True)):
        if info.type == pafs.FileType.File:
            dest = folder / info.path[len(root.rstrip("/")) + 1:]
            dest.parent.mkdir(parents=True, exist_ok=True)
            with fs.open_input_stream(info.path) as f:
                dest.write_bytes(f.read())
            n += 1
    return n


class DocumentStore:
    """Small JSON documents by key in a folder every trial can reach (local, shared, or a URI).

    Serves as the latency cache (measured replies by architecture, input size, device and
    benchmark settings) and as the results cache (finished trials by everything that decides
    their outcome): one file per key, written atomically, so many processes on many nodes can
    share it without a lock."""

    def __init__(self, root: str | Path) -> None:
        self.root = str(root).rstrip("/")

    def get(self, key: str) -> dict | None:
        try:
            return json.loads(read_bytes(f"{self.root}/{key}.json"))
        except (FileNotFoundError, OSError, json.JSONDecodeError):
            return None

    def put(self, key: str, value: dict) -> None:
        write_bytes(f"{self.root}/{key}.json", json.dumps(value).encode())

    def documents(self) -> Iterator[dict]:
        """Every document (none when the folder does not exist; an unreadable one is skipped)."""
        import pyarrow.fs as pafs

        fs, root = storage_fs(self.root)
        if fs.get_file_info(root).type != pafs.FileType.Directory:
            return
        for info in fs.get_file_info(pafs.FileSelector(root)):
            if info.type == pafs.FileType.File and info.base_name.endswith(".json") and not info.base_name.startswith("."):
                try:
                    with fs.open_input_stream(info.path) as f:
                        doc = json.loads(f.read())
                except (OSError, json.JSONDecodeError):
                    continue
                if isinstance(doc, dict):
                    yield doc
