"""Training on one device, fp32 and with --amp: epoch time at a resolution, IoU after N epochs, and
the export of the trained model (issue 13's GPU check; `gpu_check.sh` runs it on the GPU machine,
and the same command here gives the CPU figure to compare with).

    python benchmarks/gpu_check.py --device cuda --res 512 --epochs 10 --json gpu_train.json
    python benchmarks/gpu_check.py --device cpu --res 512 --epochs 2 --images 48    # this CPU

Data: the study's dataset when --data is a folder, else the bundled synthetic generator
(`synthetic:N`; the GPU machine has no copy of the study's dataset). Epoch time is the median of
the epochs after the first (which pays cuDNN's autotuning and the allocator's warm-up). Each
precision trains from the same seed; fp16 autocast (--amp) only changes the numbers on CUDA.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402
from raysearch.data import open_split  # noqa: E402
from raysearch.models import ModelSpec  # noqa: E402
from raysearch.training.evaluate import evaluate_onnx  # noqa: E402
from raysearch.training.export import export_onnx  # noqa: E402
from raysearch.training.train import TrainConfig, pick_device, train  # noqa: E402


def one(spec: ModelSpec, data: str, images: int | None, epochs: int, device: str, amp: bool, workers: int,
        out: Path) -> dict:
    tr = open_split(data, "train", limit=images)
    t0 = time.perf_counter()
    res = train(spec, tr, open_split(data, "val"),
                TrainConfig(epochs=epochs, seed=0, device=device, amp=amp, num_workers=workers, progress=False),
                out_dir=out)
    wall = time.perf_counter() - t0
    report = export_onnx(res.model, out / "model.onnx")  # a CUDA-trained model, moved to the CPU by train()
    test = evaluate_onnx(report.path, open_split(data, "test"))
    secs = [h.seconds for h in res.history]
    later = secs[1:] or secs
    return {"device": device, "amp": amp, "epochs": epochs, "train_images": len(tr), "wall_s": round(wall, 1),
            "first_epoch_s": round(secs[0], 3), "epoch_s_median": round(statistics.median(later), 3),
            "epoch_s_min": round(min(later), 3), "epoch_s_max": round(max(later), 3),
            "train_img_per_s": round(len(tr) / statistics.median(later), 1),
            "val_iou_last": round(res.history[-1].val_iou, 4), "best_epoch": res.best_epoch,
            "test_iou_p0.5": round(test.iou, 4), "export_max_abs_diff": report.max_abs_diff,
            **({"max_memory_mib": round(res.gpu_max_memory_mib, 1)} if res.gpu_max_memory_mib is not None else {})}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda, cpu or auto (default %(default)s)")
    ap.add_argument("--data", default="synthetic:300", help="a dataset folder or synthetic:N (default %(default)s)")
    ap.add_argument("--res", type=int, default=512)
    ap.add_argument("--a", type=float, default=1.0, help="the baseline by default: a1 t6 r3 pp1")
    ap.add_argument("--t", type=int, default=6)
    ap.add_argument("--r", type=int, default=3)
    ap.add_argument("--pp", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--images", type=int, help="train on the first N training images only")
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers (default %(default)s)")
    ap.add_argument("--precisions", nargs="+", choices=("fp32", "amp"), default=["fp32", "amp"])
    ap.add_argument("--json", metavar="PATH", help="write the figures to PATH")
    args = ap.parse_args()
    try:
        device = pick_device(args.device)
    except ValueError as e:
        print(f"gpu_check: {e}", file=sys.stderr)
        return 2
    spec = ModelSpec(a=args.a, t=args.t, r=args.r, pp=args.pp, input_hw=args.res)
    info = {"machine": machine(), "spec": spec.name, "data": args.data, "device": str(device)}
    if device.type == "cuda":
        import torch

        info["gpu"] = torch.cuda.get_device_name(device)
        info["torch"] = torch.__version__
    rows = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        for p in args.precisions:
            row = one(spec, args.data, args.images, args.epochs, args.device, p == "amp", args.workers, Path(tmp) / p)
            print(json.dumps(row), flush=True)
            rows.append(row)
    result = {**info, "runs": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
