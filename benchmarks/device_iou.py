"""Test IoU on the host's onnxruntime vs on the emulated Pi's (aarch64, qemu cortex-a72), fp32 and
int8, for the study's stage-7 models, and what Predict costs (issue: what you deploy is what you
measured).

    python benchmarks/device_iou.py                       # the six stage-7 models at 128 and 256
    python benchmarks/device_iou.py --res 128 --models 0 5 # a subset (indices into the stage-6 front)

Each model is trained with the study's recipe at a reduced scale (--limit 120 train/val images,
--epochs 20, seed 0, one thread: `benchmarks/record_table.py`'s), exported, quantized to int8
(static QDQ, 16 calibration images of the validation split: what `--precision int8` does), then
evaluated on the whole test split (60 images) on this host and on the emulated Pi through benchd
Predict (`raysearch.search.device_iou`). Resumable: trained models stay in --work, finished rows in
--out. Needs root and the emulated Pi root (`clusters/pi_root.sh build`, built or reused here).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from common import machine  # noqa: E402
from raysearch.models import ModelSpec  # noqa: E402
from raysearch.search.stages import STUDY_STAGE6_FRONT  # noqa: E402

DEFAULT_DATA = str(REPO.parent / "shared" / "data" / "packages")
PI_ROOT_SH = REPO / "clusters" / "pi_root.sh"
DEVICE_CLASS = "rpi4-emulated"


def model_files(spec: ModelSpec, data: str, limit: int, epochs: int, work: Path) -> dict[str, Path]:
    """fp32 and int8 ONNX files of the spec, trained once (resumable in ``work``)."""
    import torch

    from raysearch.data import open_split
    from raysearch.training.export import export_onnx
    from raysearch.training.quantize import calibration_inputs, quantize_int8
    from raysearch.training.train import TrainConfig, train

    out = work / spec.name
    fp32, int8 = out / "fp32.onnx", out / "int8.onnx"
    if not fp32.is_file():
        torch.set_num_threads(1)
        t0 = time.perf_counter()
        result = train(spec, open_split(data, "train", limit=limit), open_split(data, "val", limit=limit),
                       TrainConfig(epochs=epochs, seed=0, progress=False), out_dir=out, resume=True)
        export_onnx(result.model, fp32)
        print(f"  trained {spec.name} in {time.perf_counter() - t0:.0f} s (best epoch {result.best_epoch})", flush=True)
    if not int8.is_file():
        quantize_int8(fp32, int8, calibration_inputs(open_split(data, "val", limit=limit), spec))
    return {"fp32": fp32, "int8": int8}


def evaluate_row(evaluate_on_device, farm, path: Path, test, name: str, precision: str) -> dict:
    """The study's evaluation on the emulated Pi and on this host: IoU, gaps, Predict's cost."""
    t0 = time.perf_counter()
    cmp = evaluate_on_device(path, test, farm, device_class=DEVICE_CLASS, timeout_s=1800)
    return {"model": name, "precision": precision, "images": cmp.device.n_images,
            "iou_host": cmp.host.iou, "iou_device": cmp.device.iou, "iou_gap": cmp.iou_gap,
            "max_image_iou_gap": cmp.max_iou_gap, "worst_image": cmp.worst_image,
            "max_pixel_disagreement": cmp.max_pixel_disagreement,
            "mean_pixel_disagreement": cmp.mean_pixel_disagreement, "predict_calls": cmp.calls,
            "bytes_sent": cmp.bytes_sent, "bytes_received": cmp.bytes_received,
            "predict_wall_s": round(cmp.wall_s, 2), "device_run_s": round(cmp.device_run_s, 2),
            "evaluation_s": round(time.perf_counter() - t0, 2)}


LOGIT_IMAGES = 8


def logit_difference(farm, path: Path, test) -> dict:
    """The logits themselves (Predict's raw encoding) of the first test images, device vs host: the
    masks can agree while the numbers differ."""
    import numpy as np

    from benchd.predict import PredictParams
    from raysearch.data.transforms import resize_for_test, to_input
    from raysearch.training.evaluate import OnnxPredictor

    host = OnnxPredictor(path)
    x = np.stack([to_input(resize_for_test(test.load(i)[0], host.input_hw), host.in_channels)
                  for i in range(min(LOGIT_IMAGES, len(test)))])
    device = farm.predict(str(path), x, PredictParams(encoding="raw"), device_class=DEVICE_CLASS, timeout_s=1800)
    diff = np.abs(device.output - host(x))
    return {"max_abs_logit_diff": float(diff.max()), "logits_differing": float((diff > 0).mean()),
            "logit_images": len(x)}


def serve_emulated_pi() -> dict[str, str]:
    """benchd in the emulated Pi root (built or reused): pid, address, token_file, log."""
    build = subprocess.run(["bash", str(PI_ROOT_SH), "--device-class", DEVICE_CLASS, "build"], text=True,
                           capture_output=True, timeout=3600)
    if build.returncode:
        sys.exit(f"pi_root.sh build failed:\n{build.stderr[-3000:]}")
    serve = subprocess.run(["bash", str(PI_ROOT_SH), "--device-class", DEVICE_CLASS, "--port", "0", "serve"],
                           text=True, capture_output=True, timeout=900)
    if serve.returncode:
        sys.exit(f"pi_root.sh serve failed:\n{serve.stderr[-3000:]}")
    return dict(kv.split("=", 1) for kv in serve.stdout.split())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--res", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--models", type=int, nargs="+", default=list(range(len(STUDY_STAGE6_FRONT))),
                    help="indices into the study's stage-6 front (0: a=1 t=6 r=1 ... 5: a=0.125 t=2 r=1)")
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--limit", type=int, default=120, help="train/val images (the test split is whole)")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--work", type=Path, default=Path("/var/tmp/raysearch-device-iou"))
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "device-iou.json")
    args = ap.parse_args()

    from benchd.client import BenchClient
    from benchd.farm import BenchFarm
    from raysearch.data import open_split
    from raysearch.search.device_iou import evaluate_on_device

    doc = json.loads(args.out.read_text()) if args.out.is_file() else {"rows": []}
    done = {(r["model"], r["precision"]) for r in doc["rows"] if "max_abs_logit_diff" in r}
    specs = [ModelSpec(**STUDY_STAGE6_FRONT[i], input_hw=r) for r in args.res for i in args.models]
    files = {}
    for spec in specs:  # training first, nothing emulated running meanwhile
        if any((spec.name, p) not in done for p in ("fp32", "int8")):
            files[spec.name] = model_files(spec, args.data, args.limit, args.epochs, args.work)
    if not files:
        print(f"every row is in {args.out}")
        return 0
    pi = serve_emulated_pi()
    test = open_split(args.data, "test")
    try:
        inventory = args.work / "farm.yaml"
        inventory.write_text(f"devices:\n  - {{name: pi4-emulated, address: '{pi['address']}', class: {DEVICE_CLASS}, "
                             f"token_file: {pi['token_file']}}}\n")
        with BenchClient(pi["address"], token_file=pi["token_file"], timeout_s=60) as c:
            deadline = time.monotonic() + 600  # the worker's onnxruntime version is known once it is up
            while c.health(timeout_s=10) != "SERVING" and time.monotonic() < deadline:
                time.sleep(1)
            info = c.info()
        doc["device"] = {"emulator": info.emulator, "cpu_features": list(info.cpu_features),
                         "onnxruntime": info.onnxruntime_version, "host_cpu": info.host_cpu_model}
        import onnxruntime

        from benchd.sysinfo import cpu_features
        doc["host"] = {"machine": machine(), "onnxruntime": onnxruntime.__version__, "cpu_features": cpu_features()}
        with BenchFarm.from_file(inventory) as farm:
            for name, paths in files.items():
                for precision, path in paths.items():
                    if (name, precision) in done:
                        continue
                    row = next((r for r in doc["rows"] if (r["model"], r["precision"]) == (name, precision)), None)
                    if row is None:
                        row = evaluate_row(evaluate_on_device, farm, path, test, name, precision)
                        doc["rows"].append(row)
                    row.update(logit_difference(farm, path, test))
                    args.out.parent.mkdir(parents=True, exist_ok=True)
                    args.out.write_text(json.dumps(doc, indent=2) + "\n")
                    print(f"{name:40s} {precision}: IoU host {row['iou_host']:.4f} device {row['iou_device']:.4f} "
                          f"(gap {row['iou_gap']:+.4f}, per image <= {row['max_image_iou_gap']:.4f}, pixels <= "
                          f"{row['max_pixel_disagreement']:.3%}); logits differ by <= {row['max_abs_logit_diff']:.2e} "
                          f"(on {row['logits_differing']:.2%} of them); Predict {row['predict_wall_s']:.1f} s, "
                          f"{row['bytes_sent'] / 2**20:.1f} MiB out, {row['bytes_received'] / 2**10:.0f} KiB back",
                          flush=True)
    finally:
        subprocess.run(["bash", str(PI_ROOT_SH), "stop", pi["pid"]], capture_output=True, timeout=180)
    doc["provenance"] = {"data": args.data, "limit": args.limit, "epochs": args.epochs, "seed": 0,
                         "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "pid": os.getpid()}
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
