"""Training and evaluation throughput (images/s) at 128, 256 and 512 for the baseline and the
smallest model, and where an epoch's time goes (data pipeline vs compute).

    python benchmarks/train_throughput.py [--data ../shared/data/packages] [--markdown]

data   : augmentation + normalization of one training item from the in-memory cache (1 process)
train  : forward + backward + Adam step on batches of 8 already in memory
epoch  : a real DataLoader epoch (workers 0) over --images training images: data + compute
eval   : `evaluate` through onnxruntime, including resizing back and IoU, images/s
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from common import machine
from raysearch.data import Subset, open_split
from raysearch.data.dataset import SegDataset
from raysearch.models import ModelSpec, build_model
from raysearch.training.evaluate import evaluate_onnx
from raysearch.training.export import export_onnx

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "packages"
MODELS = [("baseline a1 t6 r3 pp1", dict(a=1, t=6, r=3, pp=1)), ("smallest a0.125 t2 r1 pp0", dict(a=0.125, t=2, r=1, pp=0))]


def rate(n: int, seconds: float) -> float:
    return round(n / seconds, 1)


def measure(spec: ModelSpec, train_src, test_src, images: int) -> dict:
    ds = SegDataset(Subset(train_src, list(range(min(images, len(train_src))))), spec, "train", seed=0)
    t0 = time.perf_counter()
    for i in range(len(ds)):
        ds[i]
    data_s = time.perf_counter() - t0

    model = build_model(spec).train()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    x, y = torch.randn(8, *spec.input_shape[1:]), (torch.rand(8, 1, *spec.input_hw) > 0.5).float()
    steps = max(2, min(10, int(2e9 / max(1, spec.height * spec.width * 8 * 1000))))

    def step():
        opt.zero_grad()
        F.binary_cross_entropy_with_logits(model(x), y).backward()
        opt.step()

    step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    compute_s = (time.perf_counter() - t0) / (steps * 8)

    loader = DataLoader(ds, 8, shuffle=True, drop_last=True)
    t0 = time.perf_counter()
    seen = 0
    for xb, yb in loader:
        opt.zero_grad()
        F.binary_cross_entropy_with_logits(model(xb), yb).backward()
        opt.step()
        seen += xb.shape[0]
    epoch_s = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model.eval(), Path(tmp) / "m.onnx").path
        t0 = time.perf_counter()
        res = evaluate_onnx(path, test_src)
        eval_s = time.perf_counter() - t0
    data_per_img = data_s / len(ds)
    return {
        "data_img_s": rate(len(ds), data_s), "train_img_s": round(1 / compute_s, 1),
        "epoch_img_s": rate(seen, epoch_s), "data_share": round(data_per_img / (data_per_img + compute_s), 3),
        "eval_img_s": rate(res.n_images, eval_s),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA) if DEFAULT_DATA.is_dir() else "synthetic")
    ap.add_argument("--images", type=int, default=48, help="training images per measured epoch")
    ap.add_argument("--res", type=int, nargs="+", default=[128, 256, 512])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    train_src, test_src = open_split(args.data, "train"), open_split(args.data, "test", limit=20)
    rows = []
    for label, knobs in MODELS:
        for res in args.res:
            row = {"model": label, "res": res, **measure(ModelSpec(input_hw=res, **knobs), train_src, test_src, args.images)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.markdown:
        print(f"\nMachine: {machine()}; torch threads {args.threads}; data {args.data}\n")
        print("| model | res | data img/s | train img/s (compute) | epoch img/s | data share | eval img/s (ORT) |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['model']} | {r['res']} | {r['data_img_s']} | {r['train_img_s']} | {r['epoch_img_s']} | "
                  f"{r['data_share']:.0%} | {r['eval_img_s']} |")


if __name__ == "__main__":
    main()
