"""benchmarks/stopping_epochs.py: the epochs to each share of the grid's hypervolume, on a hand-made table."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from tests.helpers import REPO
from tests.helpers.replay_tables import make_table

_spec = importlib.util.spec_from_file_location("stopping_epochs", REPO / "benchmarks" / "stopping_epochs.py")
stopping = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(stopping)  # type: ignore[union-attr]

# fast (1 ms, 0.5), mid (2 ms, 0.8), slow (4 ms, 0.9), 2 epochs each; the box is IoU 0..1 x 0..4 ms, so
# the grid's hypervolume is (2 - 1) * 0.5 + (4 - 2) * 0.8 = 2.1: mid alone 1.6 / 2.1 = 0.76, fast alone
# 0.71, slow alone 0; 0.9 of it needs fast and mid both
POINTS = {"fast": ({"a": 0.125}, 1.0, [[0.4, 0.5]], [0.5]), "mid": ({"a": 0.25}, 2.0, [[0.7, 0.8]], [0.8]),
          "slow": ({"a": 0.5}, 4.0, [[0.8, 0.9]], [0.9])}


def test_a_target_never_reached_counts_as_the_whole_grid():
    runs = [{"epochs_to": {t: 4 for t in stopping.TARGETS}, "shares": [0.5, 0.8, 1.0], "trials": 3, "stopped": 0,
             "final": 1.0, "spent": 6},
            {"epochs_to": {t: None for t in stopping.TARGETS}, "shares": [0.5, 0.7, 0.9], "trials": 3, "stopped": 1,
             "final": 0.9, "spent": 5}]
    out = stopping.summarize(runs, grid_epochs=6)
    cell = out["epochs_to_0.9"]
    assert cell["values"] == [4, 6] and cell["mean"] == 5 and cell["reached"] == 1
    assert cell["se"] == pytest.approx(1.0)  # stdev 1.414 / sqrt(2)
    assert out["spent"] == 5.5 and out["stopped"] == 0.5 and out["share_at_0.25"]["mean"] == pytest.approx(0.75)


def test_a_search_without_stopping_ends_with_the_whole_grid(tmp_path):
    table = make_table(tmp_path / "t.jsonl.gz", POINTS, epochs=2)
    r = stopping.one((str(table), "latency-first", 0, 1))
    assert r["final"] == pytest.approx(1.0) and r["spent"] == 6 and r["trials"] == 3 and r["stopped"] == 0
    assert r["epochs_to"][0.9] in (4, 6)  # once fast and mid are both trained: the 2nd or the 3rd trial


def test_the_script_writes_its_document(tmp_path):
    table = make_table(tmp_path / "t.jsonl.gz", POINTS, epochs=2)
    out = tmp_path / "doc.json"
    p = subprocess.run([sys.executable, str(REPO / "benchmarks" / "stopping_epochs.py"), "--tables", str(table),
                        "--seeds", "2", "--workers", "1", "--jobs", "1", "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert [(r["without"], r["with"]) for r in doc["results"]] == [tuple(x.split(":")) for x in stopping.PAIRS]
    assert "90.0% of the grid's HV" in p.stdout
    bad = subprocess.run([sys.executable, str(REPO / "benchmarks" / "stopping_epochs.py"), "--pairs", "random:nope"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "no such method nope" in bad.stderr
