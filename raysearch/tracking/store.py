"""The tracking store as raysearch opens it: an SQLite store is checked before anything else
starts (a folder, a read-only file, a busy lock, a file that is not a database: one line each),
read-only commands never create one, and a new store is created by one process at a time (two
processes creating the same new store raced on MLflow's schema). A server store is MLflow's to
retry."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)

#: how long a busy (locked) SQLite store is waited for, by the check and by every MLflow call
BUSY_WAIT_S = 60.0


class StoreError(ValueError):
    """A tracking store raysearch cannot use, said in one line naming it."""


def sqlite_path(uri: str) -> Path | None:
    """The database file of an ``sqlite:///`` URI; None for any other store."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):].split("?", 1)[0])


def wait_when_busy() -> None:
    """Every SQLite connection SQLAlchemy opens in this process (MLflow's included) waits up to
    `BUSY_WAIT_S` for a lock another process holds, instead of pysqlite's 5 s: a store locked
    for a while (a backup, a second reader's long query) no longer aborts a search."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    if event.contains(Engine, "connect", _busy_timeout):
        return
    event.listen(Engine, "connect", _busy_timeout)


def _busy_timeout(dbapi_connection: object, _record: object) -> None:
    if isinstance(dbapi_connection, sqlite3.Connection):
        dbapi_connection.execute(f"PRAGMA busy_timeout = {int(BUSY_WAIT_S * 1000)}")


def check_store(uri: str, *, write: bool, wait_s: float = BUSY_WAIT_S) -> None:
    """The store at ``uri`` can be read (and written, with ``write``) now; else `StoreError`.

    A missing SQLite file is created (schema included, under a lock on its folder) only with
    ``write``; a read-only command is told that no search has logged there. A busy store is waited
    for up to ``wait_s``, saying so once."""
    path = sqlite_path(uri)
    if path is None:
        return
    wait_when_busy()
    if path.is_dir():
        raise StoreError(f"the tracking store {uri}: {path} is a folder; expected an SQLite file "
                         f"(e.g. sqlite:///{path / 'mlflow.db'})")
    if not path.exists():
        if not write:
            raise StoreError(f"no tracking store at {path}: no search has logged there (give the --tracking-uri "
                             "the search used)")
        _create(uri, path)
        return
    _probe(uri, path, write, wait_s)
    if write:  # SQLite writes its journal beside the database
        _check_folder(path)
    if write and not _has_schema(path):  # an empty file: MLflow would create its tables here
        _create(uri, path)


def _create(uri: str, path: Path) -> None:
    folder = path.parent
    _check_folder(path)
    with _folder_lock(folder):
        if path.exists() and _has_schema(path):  # another process made it while we waited
            return
        from mlflow.tracking import MlflowClient

        MlflowClient(uri).search_experiments(max_results=1)  # MLflow creates and migrates its schema here
        log.info("created the tracking store %s", path)


def _check_folder(path: Path) -> None:
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".raysearch-write-check-"):
            pass
    except OSError as e:
        raise StoreError(f"the tracking store sqlite:///{path} cannot be written: its folder {folder} is not writable "
                         f"({e.strerror or e})") from None


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """An advisory lock on the store's folder itself (no lock file left behind)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # drops the lock


def _has_schema(path: Path) -> bool:
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=BUSY_WAIT_S)) as db:
        return db.execute("SELECT 1 FROM sqlite_master WHERE name = 'alembic_version'").fetchone() is not None


def _probe(uri: str, path: Path, write: bool, wait_s: float) -> None:
    """Read (and, with ``write``, take the write lock of) the database once, without waiting;
    retried while it is busy."""
    deadline, said = time.monotonic() + wait_s, False
    while True:
        try:
            mode = "rw" if write else "ro"
            with contextlib.closing(sqlite3.connect(f"file:{path}?mode={mode}", uri=True, timeout=0,
                                                    isolation_level=None)) as db:
                db.execute("SELECT count(*) FROM sqlite_master").fetchone()
                if write:
                    db.execute("BEGIN IMMEDIATE")  # the write lock a search's first update takes
                    db.execute("ROLLBACK")
            return
        except sqlite3.OperationalError as e:
            cause = str(e)
            if "locked" in cause or "busy" in cause:
                if time.monotonic() >= deadline:
                    raise StoreError(f"the tracking store {uri} is busy: another process has held its lock for "
                                     f"over {wait_s:g} s; try again when it is done") from None
                if not said:
                    log.warning("the tracking store %s is busy (another process holds its lock); waiting up to "
                                "%g s", uri, wait_s)
                    said = True
                time.sleep(0.25)
                continue
            if "readonly" in cause or "read-only" in cause:
                raise StoreError(f"the tracking store {uri} is read-only ({cause}); a search writes its runs "
                                 "there: give a writable --tracking-uri") from None
            raise StoreError(f"the tracking store {uri} cannot be opened ({cause})") from None
        except sqlite3.DatabaseError as e:  # "file is not a database"
            raise StoreError(f"the tracking store {uri} is not a readable MLflow database ({e})") from None

