"""Latency of onnxruntime vs PyTorch eager on this CPU, batch 1, same thread count, for the
baseline and the study's stage-7 models at their resolutions (the study found onnxruntime about
2x faster on the Raspberry Pi 4).

    python benchmarks/ort_vs_torch.py [--threads 2] [--runs 30] [--markdown]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from common import machine, stats_ms, time_calls
from raysearch.models import ModelSpec, build_model
from raysearch.training.export import export_onnx

# The baseline and the models of the study's reference table (stage 7 and its inputs).
MODELS = [
    ("baseline a1 t6 r3 pp1", dict(a=1, t=6, r=3, pp=1), 512),
    ("a0.125 t2 r1 pp0", dict(a=0.125, t=2, r=1, pp=0), 512),
    ("a1 t6 r3 pp0", dict(a=1, t=6, r=3, pp=0), 256),
    ("a1 t6 r3 pp0", dict(a=1, t=6, r=3, pp=0), 96),
    ("a0.125 t2 r1 pp0", dict(a=0.125, t=2, r=1, pp=0), 128),
    ("a0.125 t2 r1 pp0", dict(a=0.125, t=2, r=1, pp=0), 96),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--min-seconds", type=float, default=2.0)
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, knobs, res in MODELS:
            spec = ModelSpec(input_hw=res, **knobs)
            model = build_model(spec).eval()
            path = export_onnx(model, Path(tmp) / f"{spec.name}.onnx").path
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = args.threads
            opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            x = np.random.default_rng(0).standard_normal(spec.input_shape).astype(np.float32)
            xt = torch.from_numpy(x)
            ort_t = stats_ms(time_calls(lambda sess=sess, x=x: sess.run(None, {"input": x}), runs=args.runs,
                                        min_seconds=args.min_seconds))
            with torch.inference_mode():
                pt_t = stats_ms(time_calls(lambda model=model, xt=xt: model(xt), runs=args.runs,
                                           min_seconds=args.min_seconds))
            rows.append({"model": label, "res": res, "ort_p50_ms": round(ort_t["p50_ms"], 3),
                         "torch_p50_ms": round(pt_t["p50_ms"], 3), "ort_mean_ms": round(ort_t["mean_ms"], 3),
                         "torch_mean_ms": round(pt_t["mean_ms"], 3),
                         "speedup": round(pt_t["p50_ms"] / ort_t["p50_ms"], 2)})
            print(json.dumps(rows[-1]), flush=True)
    if args.markdown:
        print(f"\nMachine: {machine()}; threads {args.threads}; torch {torch.__version__}, onnxruntime {ort.__version__}\n")
        print("| model | res | onnxruntime p50 ms | torch eager p50 ms | torch / ort |")
        print("|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['model']} | {r['res']} | {r['ort_p50_ms']:.2f} | {r['torch_p50_ms']:.2f} | {r['speedup']:.2f}x |")


if __name__ == "__main__":
    main()
