"""Test IoU computed by a device (benchd Predict) beside the host's: a real benchd on loopback,
a tiny model trained for real, fp32 and int8, through the library and `raysearch evaluate --farm`."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from benchd.farm import BenchFarm, FarmDevice
from benchd.server import ServerConfig, create_server
from raysearch.data.folder import FolderSource
from raysearch.search.device_iou import DeviceComparison, evaluate_on_device
from raysearch.training.evaluate import EvalResult

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def device(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    cfg = ServerConfig(device_name="native", device_class="host", cache_dir=str(tmp_path_factory.mktemp("cache")),
                       monitor_interval_s=0, max_predict_bytes=100 << 10)  # 2 images (48 KiB each) per call
    server, port = create_server("127.0.0.1:0", cfg)
    yield f"127.0.0.1:{port}"
    server.stop(0)


def compare(model: Path, data: Path, address: str) -> DeviceComparison:
    with BenchFarm([FarmDevice("native", address, "host")]) as farm:
        return evaluate_on_device(model, FolderSource(data / "test"), farm, device_class="host")


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_the_native_device_computes_the_hosts_iou(trained_boxes: dict[str, Path], device: str,
                                                  precision: str) -> None:
    cmp = compare(trained_boxes[precision], trained_boxes["data"], device)
    assert cmp.host.iou > 0.5  # a model that learned something: the masks are not trivial
    # the same onnxruntime on the same CPU: the same masks, not merely close
    assert cmp.device.per_image == cmp.host.per_image and cmp.iou_gap == 0.0
    assert cmp.max_iou_gap == 0.0 and cmp.max_pixel_disagreement == 0.0 and not cmp.disagrees()
    n = cmp.device.n_images
    assert n == 6 and cmp.calls == 3  # 6 images of 3x64x64 float32 (48 KiB each), 2 per call
    assert cmp.bytes_sent == n * 3 * 64 * 64 * 4 and cmp.bytes_received == n * 64 * 64 // 8
    assert cmp.device_name == "native"


def test_a_disagreement_is_measured_per_image() -> None:
    def result(per_image: dict[str, float]) -> EvalResult:
        return EvalResult(iou=float(np.mean(list(per_image.values()))), iou_native_gt=0, pooled_iou=0, miou=0,
                          n_images=len(per_image), logit_threshold=0.0, per_image=per_image)

    host, dev = result({"a": 0.8, "b": 0.6}), result({"a": 0.8, "b": 0.5})
    cmp = DeviceComparison(device=dev, host=host, device_name="pi", onnxruntime_version="1", max_iou_gap=0.1,
                           worst_image="b", max_pixel_disagreement=0.02, mean_pixel_disagreement=0.01, calls=1,
                           bytes_sent=0, bytes_received=0, device_run_s=0, wall_s=0)
    assert cmp.iou_gap == pytest.approx(-0.05) and cmp.disagrees(0.01) and not cmp.disagrees(0.06)
    assert cmp.to_dict()["device"]["iou"] == pytest.approx(0.65)


def test_raysearch_evaluate_on_a_farm(trained_boxes: dict[str, Path], device: str, tmp_path: Path) -> None:
    exe = str(Path(sys.executable).parent / "raysearch")
    args = [exe, "evaluate", "--onnx", str(trained_boxes["int8"]), "--data", str(trained_boxes["data"]),
            "--farm", device, "--device-class", "host"]
    p = subprocess.run([*args, "--json", "--per-image"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["device"]["iou"] == doc["host"]["iou"] > 0.5 and doc["disagrees"] is False
    assert doc["device_per_image"] == doc["host_per_image"] and len(doc["device_per_image"]) == 6
    p = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "device - host IoU +0.0000" in p.stdout and "Predict call(s)" in p.stdout
    inventory = tmp_path / "farm.yaml"
    inventory.write_text(f"devices:\n  - {{name: native, address: '{device}', class: host}}\n")
    p = subprocess.run([*args[:-4], "--farm", str(inventory), "--device-class", "rpi4"], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 2 and "has no device of class 'rpi4'" in p.stderr and "Traceback" not in p.stderr
