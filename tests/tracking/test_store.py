"""The tracking store as raysearch opens it (`raysearch.tracking.store`): real SQLite files, real
MLflow, real locks held by another connection or process."""

from __future__ import annotations

import multiprocessing as mp
import shutil
import sqlite3
import threading
import time

import pytest
from mlflow.tracking import MlflowClient

from raysearch.tracking.store import StoreError, check_store
from tests.helpers import remount_ro, tmpfs


def _new_store(tmp_path, name="m.db"):
    uri = f"sqlite:///{tmp_path / name}"
    check_store(uri, write=True)
    return uri


def test_a_reader_never_creates_a_store(tmp_path):
    for path in (tmp_path / "m.db", tmp_path / "no" / "such" / "dir" / "m.db"):
        with pytest.raises(StoreError, match=f"no tracking store at {path}: no search has logged there"):
            check_store(f"sqlite:///{path}", write=False)
    assert list(tmp_path.iterdir()) == []


def test_a_folder_is_refused_at_once(tmp_path):
    t0 = time.monotonic()
    with pytest.raises(StoreError, match=f"{tmp_path} is a folder; expected an SQLite file"):
        check_store(f"sqlite:///{tmp_path}", write=False)
    assert time.monotonic() - t0 < 5  # was: 105 s of MLflow's retries


def test_a_writer_creates_the_store_with_its_schema(tmp_path):
    uri = _new_store(tmp_path, "sub/m.db")
    check_store(uri, write=False)
    assert MlflowClient(uri).get_experiment_by_name("Default") is not None


def _create(uri: str, barrier) -> str:
    barrier.wait()
    try:
        check_store(uri, write=True)
        MlflowClient(uri).search_experiments()
        return "ok"
    except Exception as e:  # the race's message, for the assertion
        return f"{type(e).__name__}: {e}"


def test_processes_creating_one_new_store_at_once_all_succeed(tmp_path):
    """Was: one of two `raysearch` processes failed 3 times in 3 ("table alembic_version already
    exists"); now the creation is serialized."""
    uri = f"sqlite:///{tmp_path / 'n.db'}"
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(3)
        with ctx.Pool(3) as pool:
            got = pool.starmap(_create, [(uri, barrier)] * 3)
    assert got == ["ok"] * 3


def _hold_lock(path, seconds: float, taken: threading.Event) -> None:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("BEGIN EXCLUSIVE")
    taken.set()
    time.sleep(seconds)
    db.execute("ROLLBACK")
    db.close()


def test_a_busy_store_is_waited_for_then_said_busy(tmp_path, caplog):
    uri = _new_store(tmp_path)
    taken = threading.Event()
    holder = threading.Thread(target=_hold_lock, args=(tmp_path / "m.db", 1.5, taken))
    holder.start()
    taken.wait()
    t0 = time.monotonic()
    with caplog.at_level("WARNING"):
        check_store(uri, write=False)  # waits for the lock to go
    holder.join()
    assert 1.0 < time.monotonic() - t0 < 10
    assert [r.message for r in caplog.records if "busy" in r.message] == [
        f"the tracking store {uri} is busy (another process holds its lock); waiting up to 60 s"]

    taken.clear()
    holder = threading.Thread(target=_hold_lock, args=(tmp_path / "m.db", 3, taken))
    holder.start()
    taken.wait()
    with pytest.raises(StoreError, match=f"the tracking store {uri} is busy: another process has held its lock for "
                                         "over 1 s"):
        check_store(uri, write=True, wait_s=1)
    holder.join()


def test_mlflow_rides_out_a_lock_longer_than_sqlites_default(tmp_path):
    """pysqlite gives up after 5 s; a search's MLflow calls now wait (a lock held 25 s aborted one)."""
    uri = _new_store(tmp_path)
    client = MlflowClient(uri)
    taken = threading.Event()
    holder = threading.Thread(target=_hold_lock, args=(tmp_path / "m.db", 6, taken))
    holder.start()
    taken.wait()
    assert client.create_experiment("waited")
    holder.join()


def test_a_read_only_store_is_readable_not_writable(tmp_path):
    made = _new_store(tmp_path)  # made here: this process's MLflow keeps it open, and a busy mount stays rw
    with tmpfs(tmp_path / "ro", size="50m") as folder:
        shutil.copy(made.removeprefix("sqlite:///"), folder / "m.db")
        uri = f"sqlite:///{folder / 'm.db'}"
        remount_ro(folder)
        check_store(uri, write=False)
        with pytest.raises(StoreError, match=f"the tracking store {uri} cannot be written: its folder {folder} is not "
                                             r"writable \(Read-only file system\)"):
            check_store(uri, write=True)
