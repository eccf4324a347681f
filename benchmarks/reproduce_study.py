"""Real-data reproduction of one of the study's rows over several seeds: train a Fast-SCNN variant
on the study's dataset with the study's recipe (fp32), export it, and measure test IoU through
onnxruntime at the study's raw-logit threshold 0.5 and at probability 0.5.

    python benchmarks/reproduce_study.py --res 128 --seeds 0 1 2 3 4   # a0.125 t2 r1 pp0, 400 epochs
    python benchmarks/reproduce_study.py --res 96 --seeds 0 1 2
    python benchmarks/reproduce_study.py --res 128 --seeds 0 1 2 3 4 --summary   # the table only
    python benchmarks/reproduce_study.py --res 128 --seeds 0 1 2 3 4 --train-jpeg-quality 75

Each seed is written to OUT/SPEC/seedN/result.json as it finishes, and a seed already there is not
trained again and a seed stopped half-way continues from its last.pt, so an interrupted series
continues where it stopped (train_wall_s then counts only the last part). The last line printed (and
OUT/SPEC/summary.json) is the series: per seed, mean, sample sd and the 95% interval of the mean,
next to the study's figure and the band its own a=0.125 models span at that size.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import scipy.stats

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402
from raysearch.data import SegSource, open_split  # noqa: E402
from raysearch.models import ModelSpec  # noqa: E402
from raysearch.training.evaluate import evaluate_onnx  # noqa: E402
from raysearch.training.export import export_onnx  # noqa: E402
from raysearch.training.train import TrainConfig, train  # noqa: E402

#: the study's test IoU at logit 0.5 for (a, t, r, pp, input), one unseeded run each
STUDY_IOU = {("0.125", 2, 1, 0, 128): 0.9300, ("0.125", 2, 1, 0, 96): 0.9054, ("0.125", 2, 1, 0, 512): 0.9677}
#: the span of the study's a=0.125 models at that input (logit 0.5), from its own notebooks
STUDY_BAND = {128: (0.9125, 0.9300)}
DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "packages"


class Reencoded:
    """A source whose images come back through one more JPEG encoding at ``quality`` (OpenCV's
    defaults otherwise), masks untouched: how much does the study's IoU depend on compression?"""

    def __init__(self, source: SegSource, quality: int) -> None:
        self.source, self.quality = source, quality
        self.stems = source.stems

    def __len__(self) -> int:
        return len(self.source)

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        image, mask = self.source.load(i)
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        assert ok, "OpenCV failed to encode a uint8 image as JPEG"
        return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB), mask

    def describe(self, i: int) -> str:
        return f"{self.source.describe(i)} (re-encoded as JPEG at quality {self.quality})"


def jpeg_quality(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 100:
        raise argparse.ArgumentTypeError(f"{text!r} is not a JPEG quality (an integer 1-100)")
    return int(text)


def run_seed(args: argparse.Namespace, spec: ModelSpec, seed: int, out: Path) -> dict:
    t0 = time.perf_counter()
    train_src, val_src = open_split(args.data, "train"), open_split(args.data, "val")
    if args.train_jpeg_quality:
        train_src, val_src = Reencoded(train_src, args.train_jpeg_quality), Reencoded(val_src, args.train_jpeg_quality)
    result = train(spec, train_src, val_src,
                   TrainConfig(epochs=args.epochs, seed=seed, amp=args.amp, progress=False), out_dir=out,
                   resume=True)  # a seed interrupted half-way continues from its last.pt
    train_s = time.perf_counter() - t0
    report = export_onnx(result.model, out / "model.onnx")
    test = open_split(args.data, "test")
    return {"seed": seed, "epochs": args.epochs, "best_epoch": result.best_epoch,
            "test_iou_logit0.5": round(evaluate_onnx(report.path, test, logit_threshold=0.5).iou, 4),
            "test_iou_p0.5": round(evaluate_onnx(report.path, test).iou, 4),
            "train_wall_s": round(train_s, 1), "amp": args.amp, "train_jpeg_quality": args.train_jpeg_quality}


def spread(values: list[float]) -> dict:
    """Mean, sample sd, min and max; from two values on also the standard error of the mean and its
    two-sided 95% Student-t interval (what a target on the mean is to be compared with)."""
    mean = statistics.fmean(values)
    out = {"mean": round(mean, 4), "sd": None, "min": min(values), "max": max(values)}
    if len(values) > 1:
        sd = statistics.stdev(values)
        se = sd / math.sqrt(len(values))
        half = float(scipy.stats.t.ppf(0.975, len(values) - 1)) * se
        out.update(sd=round(sd, 4), se=round(se, 4), ci95=[round(mean - half, 4), round(mean + half, 4)])
    return out


def summarize(spec: ModelSpec, key: tuple, rows: list[dict]) -> dict:
    def of(name: str) -> dict:
        return spread([r[name] for r in rows])

    return {"spec": spec.name, "seeds": [r["seed"] for r in rows], "per_seed": rows,
            "test_iou_logit0.5": of("test_iou_logit0.5"), "test_iou_p0.5": of("test_iou_p0.5"),
            "study_iou_logit0.5": STUDY_IOU.get(key), "study_band_logit0.5": STUDY_BAND.get(spec.input_hw[0]),
            "train_wall_s": of("train_wall_s"), "machine": machine()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--a", type=float, default=0.125)
    ap.add_argument("--t", type=int, default=2)
    ap.add_argument("--r", type=int, default=1)
    ap.add_argument("--pp", type=int, default=0)
    ap.add_argument("--res", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=400)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--amp", action="store_true", help="mixed precision on CUDA (not the study's recipe)")
    ap.add_argument("--train-jpeg-quality", type=jpeg_quality, metavar="Q",
                    help="re-encode the train and val images once more as JPEG at quality Q (test images "
                         "untouched): the sensitivity of the result to compression; a series of its own")
    ap.add_argument("--summary", action="store_true", help="train nothing: summarize the seeds already done")
    ap.add_argument("--out", default="runs/reproduce")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    spec = ModelSpec(a=args.a, t=args.t, r=args.r, pp=args.pp, input_hw=args.res)
    key = (f"{args.a:g}", args.t, args.r, args.pp, args.res)
    base = Path(args.out) / (spec.name + (f"-trainjpeg{args.train_jpeg_quality}" if args.train_jpeg_quality else ""))
    rows = []
    for seed in args.seeds:
        path = base / f"seed{seed}" / "result.json"
        if path.is_file():
            row = json.loads(path.read_text())
            if (row.get("epochs"), row.get("amp", False), row.get("train_jpeg_quality")) == (
                    args.epochs, args.amp, args.train_jpeg_quality):
                rows.append(row)
                continue
        if args.summary:
            continue
        logging.info("training %s seed %d (%d epochs)", spec.name, seed, args.epochs)
        row = run_seed(args, spec, seed, path.parent)
        path.write_text(json.dumps(row, indent=2))
        logging.info("seed %d: %s", seed, json.dumps(row))
        rows.append(row)
    if not rows:
        sys.exit(f"no finished seed of {spec.name} under {base}")
    summary = summarize(spec, key, rows)
    (base / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
