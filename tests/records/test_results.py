"""The records that cross modules: `TrialRow` (one definition of "trained to the end") and
`Requirement` (one definition of "meets it"), on tiny hand-made cases."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
from matplotlib import image as mpimg

from raysearch.models import ModelSpec
from raysearch.records.pareto import hypervolume, pareto_front
from raysearch.records.results import (
    DUPLICATE,
    FAILED,
    PRUNED,
    STOPPED,
    TRAINED,
    Requirement,
    TrialRow,
    candidates,
    point_value,
)
from raysearch.reporting.finish import status_counts
from raysearch.reporting.plots import plot_front
from raysearch.reporting.tables import front_table, write_front_csv


def row(name: str, status: str = TRAINED, iou: float | None = 0.9, lat: float | None = 10.0, hw: int = 96,
        **metrics) -> TrialRow:
    return TrialRow(name=name, run_id=f"run-{name}", spec=ModelSpec(input_hw=hw), status=status, iou=iou,
                    latency_ms=lat, metrics=metrics)


def test_only_trials_trained_to_the_end_with_both_figures_are_candidates():
    rows = [row("ok"), row("pruned", PRUNED, iou=0.0), row("stopped", STOPPED), row("dup", DUPLICATE),
            row("failed", FAILED, iou=None, lat=None), row("nan", iou=math.nan), row("nolat", lat=None),
            TrialRow(name="nospec", run_id="x", spec=None, iou=0.9, latency_ms=1.0)]
    assert [r.name for r in candidates(rows)] == ["ok"]
    assert rows[5].iou is None  # NaN is no figure


def test_a_row_round_trips_through_json_and_reads_its_figures():
    r = row("a", iou=0.8, lat=4.0, params_total=1234.0)
    r.checkpoint = "/ckpt/a"
    back = TrialRow.from_dict(r.to_dict())
    assert back == r and back.spec == ModelSpec(input_hw=96)
    assert point_value(r, "iou") == 0.8 and point_value(r, "fps") == 250.0 and r.value("params_total") == 1234.0
    assert point_value({"iou": "0.5"}, "iou") == 0.5 and point_value({"iou": True}, "iou") is None


def test_pareto_and_hypervolume_read_rows_like_mappings():
    rows = [row("a", iou=0.9, lat=20.0), row("b", iou=0.8, lat=10.0), row("c", iou=0.7, lat=30.0)]  # c dominated
    assert pareto_front(rows) == [0, 1]
    # by hand: (0.9 - 0) x (40 - 20) + (0.8 - 0) x (20 - 10) = 18 + 8
    assert hypervolume(rows, {"iou": 0.0, "latency_ms": 40.0}) == pytest.approx(26.0)


def test_tables_csv_and_plots_take_rows(tmp_path):
    rows = [row("a", iou=0.9, lat=20.0, macs=2e6), row("b", PRUNED, iou=None, lat=50.0)]
    text = front_table(rows, Requirement(max_latency_ms=25))
    assert text.splitlines()[2].split()[0] == "a" and "yes" in text.splitlines()[2]
    path = write_front_csv(rows, tmp_path / "f.csv")
    got = list(csv.DictReader(path.open()))
    assert [r["status"] for r in got] == [TRAINED, PRUNED] and got[0]["input_size"] == "96"
    assert got[0]["pareto"] == "1" and got[1]["pareto"] == "0"
    img = mpimg.imread(plot_front(rows, tmp_path / "f.png"))
    assert img.ndim == 3 and min(img.shape[:2]) > 200  # a real figure ...
    assert len(np.unique(img.reshape(-1, img.shape[2]), axis=0)) > 20  # ... with something drawn on it
    assert status_counts(rows).startswith("1 trained to the end, 1 pruned by latency")


def test_requirement_checks_its_bounds_and_describes_itself():
    req = Requirement(max_latency_ms=10, min_iou=0.9)
    assert req.constrained and not Requirement().constrained
    assert req.describe() == "latency <= 10 ms and IoU >= 0.9" and Requirement().describe() == "none"
    assert req.qualifies(row("a", iou=0.9, lat=10.0))  # inclusive bounds
    assert req.misses(row("b", iou=0.85, lat=12.0)) == ["latency 12.0 ms > 10 ms", "IoU 0.850 < 0.9"]
    # relative shortfalls added: 20 % over the latency, (0.9 - 0.85) / 0.9 under the IoU
    assert req.shortfall(row("b", iou=0.85, lat=12.0)) == pytest.approx(0.2 + 0.05 / 0.9)
    assert req.shortfall(row("c", iou=0.95, lat=5.0)) == 0.0


@pytest.mark.parametrize("kw,match", [(dict(max_latency_ms=0), "--max-latency-ms 0 must be > 0"),
                                      (dict(max_latency_ms=math.nan), "--max-latency-ms nan"),
                                      (dict(min_iou=1.5), "--min-iou 1.5 must be between 0 and 1"),
                                      (dict(min_iou="x"), "--min-iou x")])
def test_a_bad_requirement_names_the_value(kw, match):
    with pytest.raises(ValueError, match=match):
        Requirement(**kw)


def test_the_front_table_says_whose_iou_each_candidate_has():
    from raysearch.reporting.tables import DISAGREES, front_table

    rows = [{"name": "fp32", "iou": 0.9, "latency_ms": 9.0},
            {"name": "int8-same", "iou": 0.8, "latency_ms": 5.0, "iou_device": 0.8, "iou_host": 0.8,
             "device_iou_disagrees": 0.0},
            {"name": "int8-off", "iou": 0.7, "latency_ms": 4.0, "iou_device": 0.7, "iou_host": 0.75,
             "device_iou_disagrees": 1.0}]
    lines = front_table(rows).splitlines()
    assert "iou from" in lines[0]
    by_name = {line.split()[0]: line for line in lines[2:5]}
    assert by_name["fp32"].rstrip(" *").endswith("host") and "device" in by_name["int8-same"]
    assert DISAGREES in by_name["int8-off"] and lines[-1].startswith(DISAGREES)
    assert "iou from" not in front_table(rows[:1])  # nothing measured on a device: no column
