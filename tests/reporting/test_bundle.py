"""`raysearch pick --bundle`'s writer on hostile folders: a bundle is written whole or not at all,
and every way the folder can be wrong is one `BundleError` naming it."""

from __future__ import annotations

import json

import pytest

from raysearch.models import ModelSpec
from raysearch.records.results import TrialRow
from raysearch.reporting.bundle import CONFIG_FILE, MODEL_FILE, BundleError, write_bundle
from tests.helpers import remount_ro, tmpfs

MODEL_BYTES = bytes(range(256)) * 400  # 100 KiB standing in for model.onnx (the writer copies bytes)


@pytest.fixture()
def row(tmp_path) -> TrialRow:
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(MODEL_BYTES)
    spec = ModelSpec(a=0.25, t=2, r=1, pp=0, input_hw=96)
    return TrialRow(spec.name, "run1", spec, iou=0.8, latency_ms=1.5, onnx=str(onnx), device_class="host")


def _write(row: TrialRow, folder) -> None:
    write_bundle(row, folder, logit_threshold=0.0, provenance={"run_id": row.run_id})


def test_a_bundle_is_complete_and_replaces_an_earlier_one(tmp_path, row):
    out = tmp_path / "b"
    _write(row, out)
    _write(row, out)  # an earlier bundle: replaced
    assert (out / MODEL_FILE).read_bytes() == MODEL_BYTES
    assert json.loads((out / CONFIG_FILE).read_text())["name"] == row.name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "model.onnx"]  # no temporary folder left


@pytest.mark.parametrize("make, says", [
    ("file", "exists and is not a folder"),
    ("under-a-file", "f is a file, not a folder"),
    ("loop", "a dangling or looping symbolic link"),
])
def test_a_folder_that_cannot_hold_a_bundle_is_one_error(tmp_path, row, make, says):
    target = tmp_path / "b"
    if make == "file":
        target.write_text("x")
    elif make == "under-a-file":
        (tmp_path / "f").write_text("x")
        target = tmp_path / "f" / "b"
    else:
        target.symlink_to(target)
    with pytest.raises(BundleError, match=f"--bundle {target}: .*{says.replace('(', '.').replace(')', '.')}"):
        _write(row, target)


def test_a_read_only_or_full_disk_leaves_nothing_half_written(tmp_path, row):
    with tmpfs(tmp_path / "disk", size="64k") as disk:  # smaller than the model: the disk fills mid-copy
        with pytest.raises(BundleError, match=f"--bundle {disk / 'b'}: cannot write the bundle there "
                                              r"\(No space left on device\)"):
            _write(row, disk / "b")
        assert list(disk.iterdir()) == []  # was: a truncated model.onnx in the bundle
        remount_ro(disk)
        with pytest.raises(BundleError, match=r"cannot write the bundle there \(Read-only file system\)"):
            _write(row, disk / "b")


@pytest.mark.parametrize("make, says", [
    ("missing.npy", "cannot read it (No such file or directory)"),
    ("garbage.npy", "not a readable .npy array"),
    ("garbage.png", "cannot read it (cannot identify image file"),
])
def test_the_bundles_example_says_a_bad_input_in_one_line(tmp_path, row, make, says):
    import subprocess
    import sys

    from raysearch.models import build_model
    from raysearch.reporting.bundle import EXAMPLE_FILE
    from raysearch.training.export import export_onnx

    assert row.spec is not None and row.onnx is not None
    export_onnx(build_model(row.spec), row.onnx)  # a real model: the example loads it before reading images
    _write(row, tmp_path / "b")
    path = tmp_path / make
    if make.startswith("garbage"):
        path.write_bytes(b"\x00garbage" * 10)
    p = subprocess.run([sys.executable, str(tmp_path / "b" / EXAMPLE_FILE), str(path)], capture_output=True,
                       text=True, cwd=tmp_path, timeout=120)
    assert p.returncode == 1 and p.stderr.strip().startswith(f"{path}: {says}"), p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
