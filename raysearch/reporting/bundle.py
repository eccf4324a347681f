"""A deployable bundle of a picked candidate: what a Pi needs to run it, nothing it does not.

    DIR/model.onnx     the candidate's ONNX file, as benchmarked
    DIR/model.json     its spec, input, preprocessing, threshold, measured figures and provenance
    DIR/predict.py     a runnable example (numpy + onnxruntime: a benchd install has both)
    DIR/README.md      how to run it on the device

The example (`bundle_predict.py`, copied) applies the preprocessing the search evaluated the model
with, read from model.json; `tests/deploy/test_pi_emulated.py` runs it inside the emulated Pi root.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from raysearch.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from raysearch.records import names as obj
from raysearch.records.results import TrialRow
from raysearch.reporting import bundle_predict

FORMAT = "raysearch-bundle/1"
MODEL_FILE = obj.MODEL_FILE
CONFIG_FILE = "model.json"
EXAMPLE_FILE = "predict.py"


class BundleError(ValueError):
    """The bundle cannot be written (the folder is not ours to fill, the model is missing)."""


def bundle_config(row: TrialRow, *, model_sha256: str, logit_threshold: float,
                  provenance: dict[str, Any]) -> dict[str, Any]:
    """model.json: everything that defines what the model computes and how it was measured."""
    spec = row.spec
    assert spec is not None, "a picked candidate has a spec"
    h, w = spec.input_hw
    rgb = spec.in_channels == 3
    preprocessing: dict[str, Any] = {
        "resize": f"the whole image to {h}x{w}, bilinear (OpenCV INTER_LINEAR on uint8)",
        "channels": "rgb" if rgb else "y",
    }
    if rgb:
        preprocessing.update(scale=1 / 255, mean=IMAGENET_MEAN.tolist(), std=IMAGENET_STD.tolist(),
                             formula="(rgb / 255 - mean) / std, channels first")
    else:
        preprocessing.update(formula="the Y of YCrCb (BT.601), 0..255, unscaled")
    measured = {obj.IOU.name: row.iou, obj.LATENCY_MS.name: row.latency_ms, obj.TAG_DEVICE_CLASS: row.device_class,
                obj.TAG_DEVICE_NAME: row.device_name}
    measured.update({k: v for k, v in sorted(row.metrics.items())
                     if k in (obj.IOU_DEVICE, obj.IOU_DEVICE_GAP, obj.IOU_DEVICE_MAX_IMAGE_GAP, obj.FPS,
                              obj.PARAMS_TOTAL, obj.MACS, *obj.LATENCY_PRECISION)})
    return {
        "format": FORMAT,
        "name": row.name,
        "model_file": MODEL_FILE,
        "model_sha256": model_sha256,
        "spec": spec.to_dict(),
        "input": {"layout": "NCHW", "dtype": "float32", "hw": [h, w], "channels": spec.in_channels},
        "preprocessing": preprocessing,
        "postprocessing": {
            "output": "logits (N, classes, H, W)",
            "foreground": "one class: logit > logit_threshold; several: argmax over classes != 0",
            "logit_threshold": logit_threshold,
            "resize_back": "the mask to the image's size, nearest",
        },
        "measured": measured,
        "provenance": {**provenance, "raysearch_version": metadata.version("raysearch"),
                       "bundled_unix_s": int(time.time())},
    }


_README = """# {name}

Picked by `raysearch pick`: test IoU {iou:.4f}, {latency:.3f} ms on {device} ({device_class}).
`model.json` holds its spec, preprocessing, threshold and every measured figure.

Run it on the device with benchd's Python (numpy and onnxruntime, no torch):

    /opt/benchd/venv/bin/python predict.py IMAGE.npy [--out-dir masks]

IMAGE is a .npy of an H x W x 3 uint8 RGB image, or a .jpg/.png where Pillow is installed
(`pip install pillow`). Each mask is written at the image's size, 255 = foreground.
The example preprocesses exactly as the search evaluated the model (see predict.py's docstring).
"""


def write_bundle(row: TrialRow, folder: str | Path, *, logit_threshold: float, provenance: dict[str, Any],
                 force: bool = False) -> Path:
    """Write the bundle of ``row`` (its ``onnx`` looked up) into ``folder``: a new or empty folder,
    or a bundle written before (replaced); anything else is refused unless ``force``. Written whole
    or not at all: the files go to a hidden folder beside it, renamed into place once complete."""
    out = Path(folder)
    if row.onnx is None or not Path(row.onnx).is_file():
        raise BundleError(f"the ONNX file of {row.name} (run {row.run_id}) is missing: {row.onnx}")
    try:
        return _write_bundle(row, out, logit_threshold, provenance, force)
    except OSError as e:  # read-only, under a file, a symlink loop, a full disk: nothing half-written is left
        raise BundleError(f"--bundle {out}: cannot write the bundle there ({e.strerror or e})") from None


def _write_bundle(row: TrialRow, out: Path, logit_threshold: float, provenance: dict[str, Any], force: bool) -> Path:
    if out.is_symlink() and not out.exists():
        raise BundleError(f"--bundle {out}: a dangling or looping symbolic link")
    if out.exists() and not out.is_dir():
        raise BundleError(f"--bundle {out}: exists and is not a folder")
    above = next((p for p in out.parents if p.exists()), None)
    if above is not None and not above.is_dir():
        raise BundleError(f"--bundle {out}: {above} is a file, not a folder")
    ours = {MODEL_FILE, CONFIG_FILE, EXAMPLE_FILE, "README.md"}
    others = sorted(p.name for p in out.iterdir() if p.name not in ours) if out.is_dir() else []
    if others and not force:
        raise BundleError(f"--bundle {out}: the folder holds other files ({', '.join(others[:5])}); "
                          f"give a new or empty folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".part", dir=out.parent))
    try:
        data = Path(row.onnx or "").read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        (tmp / MODEL_FILE).write_bytes(data)
        config = bundle_config(row, model_sha256=sha, logit_threshold=logit_threshold, provenance=provenance)
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        shutil.copyfile(bundle_predict.__file__, tmp / EXAMPLE_FILE)
        (tmp / "README.md").write_text(_README.format(
            name=row.name, iou=row.iou or 0.0, latency=row.latency_ms or 0.0, device=row.device_name or "?",
            device_class=row.device_class or "?"))
        tmp.chmod(0o755)  # mkdtemp's 0700 would hide the bundle from the device's user
        if out.is_dir():  # an earlier bundle or an empty folder: ours go in, what else it held stays (--force)
            for name in ours:
                os.replace(tmp / name, out / name)
        else:
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
