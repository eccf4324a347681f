"""The shared files of a search: atomic writes, local folders and storage URIs, the document store
behind the latency and results caches, and the cache key of a latency."""

from __future__ import annotations

import threading

import pytest

from raysearch.models import ModelSpec
from raysearch.search.latency import BenchSettings
from raysearch.search.trial import TrialState
from raysearch.storage import DocumentStore, delete, delete_tree, exists, read_bytes, write_atomic, write_bytes


def test_atomic_write_leaves_no_temporary_file(tmp_path):
    p = write_atomic(tmp_path / "a" / "b.json", "one")
    write_atomic(p, b"two")
    assert p.read_text() == "two" and [q.name for q in p.parent.iterdir()] == ["b.json"]


def test_bytes_round_trip_on_a_folder_and_a_file_uri(tmp_path):
    write_bytes(tmp_path / "x" / "f.bin", b"\x00local")
    assert read_bytes(tmp_path / "x" / "f.bin") == b"\x00local"
    uri = (tmp_path / "y" / "g.bin").as_uri()  # the object-store path (pyarrow), here on the local disk
    write_bytes(uri, b"remote")
    assert read_bytes(uri) == b"remote" and read_bytes(tmp_path / "y" / "g.bin") == b"remote"


def test_document_store_many_writers_one_key(tmp_path):
    store = DocumentStore(tmp_path / "cache")
    assert store.get("k") is None
    threads = [threading.Thread(target=store.put, args=("k", {"v": i})) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.get("k")["v"] in range(8)  # one whole document, never a torn one
    (tmp_path / "cache" / "bad.json").write_text("{not json")
    assert store.get("bad") is None


def test_the_latency_statistic_is_part_of_the_cache_key(tmp_path):
    spec = ModelSpec(a=0.125, t=2, r=1, pp=0, input_hw=64)
    p50 = BenchSettings(farm="127.0.0.1:1", stat="p50")
    mean = BenchSettings(farm="127.0.0.1:1", stat="mean")
    assert p50.cache_key(spec) != mean.cache_key(spec)
    # a search with --latency-stat mean never reads the p50 an earlier search cached in the same storage
    store = DocumentStore(tmp_path / "latency_cache")
    store.put(p50.cache_key(spec), {"latency_ms": 1.0, "latency_ms_p50": 1.0, "latency_ms_mean": 1.5})
    assert store.get(mean.cache_key(spec)) is None
    assert p50.cache_key(spec) == BenchSettings(farm="other:2", stat="p50").cache_key(spec)  # not the address
    assert p50.cache_key(spec) != p50.cache_key(spec.replace(input_hw=96))


@pytest.mark.parametrize("uri", [False, True])
def test_a_trial_state_round_trips_and_is_replaced_whole(tmp_path, uri):
    root = f"file://{tmp_path}/states" if uri else str(tmp_path / "states")
    state = TrialState(root, "abc_00001")
    ckpt, back = tmp_path / "ckpt", tmp_path / "back"
    ckpt.mkdir(), back.mkdir()
    assert not state.restore(back) and not exists(state.uri)  # nothing saved yet: the trial starts fresh
    (ckpt / "best.pt").write_bytes(b"best-1")
    (ckpt / "last.pt").write_bytes(b"last-1")
    state.save(ckpt)
    (ckpt / "last.pt").write_bytes(b"last-2")  # a later epoch replaces the whole state
    state.save(ckpt)
    assert state.restore(back)
    assert (back / "best.pt").read_bytes() == b"best-1" and (back / "last.pt").read_bytes() == b"last-2"
    assert [p.name for p in (tmp_path / "states").iterdir()] == ["abc_00001.pt"]  # one file, no temporaries
    state.remove()
    assert not exists(state.uri) and not state.restore(tmp_path / "back")
    delete(state.uri)  # already gone: fine
    state.save(ckpt)
    delete_tree(root)  # what a finished search does with its trials' states
    assert not (tmp_path / "states").exists()
    delete_tree(root)  # already gone: fine
