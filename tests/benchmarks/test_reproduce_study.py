"""The statistics of benchmarks/reproduce_study.py (hand-computed), and its --summary mode on
seed results written as a series leaves them."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from tests.helpers import REPO

_spec = importlib.util.spec_from_file_location("reproduce_study", REPO / "benchmarks" / "reproduce_study.py")
reproduce = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reproduce)


def test_spread_of_three_values_by_hand():
    # mean 0.92, sd 0.02, se 0.02/sqrt(3) = 0.011547; t(0.975, df=2) = 4.302653 -> half-width 0.049683
    s = reproduce.spread([0.90, 0.92, 0.94])
    assert s["mean"] == 0.92 and s["sd"] == 0.02 and s["se"] == 0.0115
    assert s["ci95"] == [0.8703, 0.9697]
    assert (s["min"], s["max"]) == (0.90, 0.94)


def test_spread_of_one_value_has_no_interval():
    assert reproduce.spread([0.9]) == {"mean": 0.9, "sd": None, "min": 0.9, "max": 0.9}


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "benchmarks" / "reproduce_study.py"), *args],
                          capture_output=True, text=True, timeout=120)


def test_summary_reads_the_finished_seeds_and_skips_other_recipes(tmp_path):
    base = tmp_path / "fastscnn-a0.125-t2-r1-pp0-128x128-c3"
    for seed, iou, amp in ((0, 0.92, False), (1, 0.93, False), (2, 0.99, True)):
        (base / f"seed{seed}").mkdir(parents=True)
        (base / f"seed{seed}" / "result.json").write_text(json.dumps(
            {"seed": seed, "epochs": 400, "best_epoch": 390, "test_iou_logit0.5": iou, "test_iou_p0.5": iou - 0.01,
             "train_wall_s": 300.0, "amp": amp}))
    done = _run("--res", "128", "--seeds", "0", "1", "2", "3", "--summary", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["seeds"] == [0, 1]  # seed 2 trained with --amp (another recipe), seed 3 never ran
    assert summary["test_iou_logit0.5"]["mean"] == pytest.approx(0.925)
    assert summary["study_iou_logit0.5"] == 0.93 and summary["study_band_logit0.5"] == [0.9125, 0.93]
    assert json.loads((base / "summary.json").read_text()) == summary


def test_summary_without_any_finished_seed_says_where_it_looked(tmp_path):
    done = _run("--res", "96", "--seeds", "0", "--summary", "--out", str(tmp_path))
    assert done.returncode != 0
    assert "no finished seed of fastscnn-a0.125-t2-r1-pp0-96x96-c3" in done.stderr and str(tmp_path) in done.stderr
    assert "Traceback" not in done.stderr


def test_reencoded_source_compresses_images_and_keeps_masks():
    from raysearch.data import open_split

    source = open_split("synthetic:6", "train")
    again = reproduce.Reencoded(source, 75)
    (image, mask), (image2, mask2) = source.load(0), again.load(0)
    assert image2.shape == image.shape and image2.dtype == image.dtype
    assert (mask2 == mask).all()  # masks are labels: never compressed
    mse = ((image2.astype(float) - image) ** 2).mean()
    assert 0 < mse < 255**2 / 10**3  # changed by the encoding, but by less than 30 dB PSNR allows
    assert len(again) == len(source) and list(again.stems) == list(source.stems)
    assert "quality 75" in again.describe(0)


@pytest.mark.parametrize("bad", ["0", "101", "high", "7.5"])
def test_a_bad_jpeg_quality_is_refused_by_name(bad, tmp_path):
    done = _run("--train-jpeg-quality", bad, "--summary", "--out", str(tmp_path))
    assert done.returncode == 2 and f"{bad!r} is not a JPEG quality" in done.stderr
