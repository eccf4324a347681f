"""Real-data reproduction of one of the study's rows: train a Fast-SCNN variant on the study's
dataset with the study's recipe, export it, and measure test IoU through onnxruntime.

    python benchmarks/reproduce_study.py                      # a0.125 t2 r1 pp0 at 128, 400 epochs
    python benchmarks/reproduce_study.py --epochs 50 --res 96

Prints one JSON object (also written to --out/result.json) with the IoU at the default threshold
(probability 0.5) and at the study's raw-logit threshold 0.5, next to the study's figure.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from pathlib import Path

from raysearch.data import open_split
from raysearch.evaluate import evaluate_onnx
from raysearch.export import export_onnx
from raysearch.models import ModelSpec
from raysearch.train import TrainConfig, train

STUDY_IOU = {("0.125", 2, 1, 0, 128): 0.9300, ("0.125", 2, 1, 0, 96): 0.9054, ("0.125", 2, 1, 0, 512): 0.9677}
DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "packages"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--a", type=float, default=0.125)
    ap.add_argument("--t", type=int, default=2)
    ap.add_argument("--r", type=int, default=1)
    ap.add_argument("--pp", type=int, default=0)
    ap.add_argument("--res", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/reproduce")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    spec = ModelSpec(a=args.a, t=args.t, r=args.r, pp=args.pp, input_hw=args.res)
    out = Path(args.out) / spec.name
    t0 = time.perf_counter()
    result = train(spec, open_split(args.data, "train"), open_split(args.data, "val"),
                   TrainConfig(epochs=args.epochs, seed=args.seed, progress=False), out_dir=out)
    train_s = time.perf_counter() - t0
    report = export_onnx(result.model, out / "model.onnx")
    test = open_split(args.data, "test")
    default = evaluate_onnx(report.path, test)
    study_thr = evaluate_onnx(report.path, test, logit_threshold=0.5)
    row = {
        "spec": spec.name, "epochs": args.epochs, "best_epoch": result.best_epoch,
        "test_iou_p0.5": round(default.iou, 4), "test_iou_logit0.5": round(study_thr.iou, 4),
        "study_iou": STUDY_IOU.get((f"{args.a:g}", args.t, args.r, args.pp, args.res)),
        "train_wall_s": round(train_s, 1), "total_wall_s": round(time.perf_counter() - t0, 1),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, {platform.processor() or 'cpu'}",
    }
    (out / "result.json").write_text(json.dumps(row, indent=2))
    print(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
