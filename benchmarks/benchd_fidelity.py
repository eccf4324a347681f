"""How faithful and how cheap is a latency measured through benchd? (issue 3)

Measures, on this machine, with real benchd servers on 127.0.0.1:
  1. p50 through benchd vs. an in-process onnxruntime loop (same model, same SessionOptions and
     thread count, interleaved so both see the same machine noise) - target: within 2%;
  2. coefficient of variation of p50 over repeated calls - target: <= 2% on an idle machine;
  3. per-call overhead beyond the timed runs, HasModel round trip, and upload throughput;
  4. farm throughput (jobs/s) with 1 and 2 devices, several concurrent callers.

The model is the study's Fast-SCNN baseline (a=1 t=6 r=3 pp=1, 512x512) exported by raysearch
when the search extra is installed, else an onnx.helper conv stack of similar cost.

    python benchmarks/benchd_fidelity.py [--threads 1 2] [--repeats 5] [--runs 50] [--json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchd.client import BenchClient  # noqa: E402
from benchd.farm import BenchFarm, FarmDevice  # noqa: E402
from benchd.runner import session_options  # noqa: E402
from benchd.server import ServerConfig, create_server  # noqa: E402


def build_model(tmp: Path) -> tuple[Path, str]:
    """(path, description) of a Fast-SCNN-sized ONNX model."""
    path = tmp / "fastscnn.onnx"
    try:
        from raysearch.models import ModelSpec
        from raysearch.models import build_model as build
        from raysearch.training.export import export_onnx

        export_onnx(build(ModelSpec()), path)
        return path, "Fast-SCNN baseline a=1 t=6 r=3 pp=1, 1x3x512x512 (raysearch export)"
    except Exception as exc:  # search extra missing or core not ready: similar-cost stand-in
        logging.warning("raysearch export unavailable (%s); using an onnx.helper conv stack", exc)
    return _conv_stack(path), "onnx.helper conv stack (~0.8 GMAC), 1x3x512x512"


def _conv_stack(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    # (cin, cout, stride, groups): a stride-2 stem, depthwise-separable stages like Fast-SCNN's.
    layers = [(3, 32, 2, 1), (32, 32, 2, 32), (32, 48, 1, 1), (48, 48, 2, 48), (48, 64, 1, 1),
              (64, 384, 1, 1), (384, 384, 2, 384), (384, 64, 1, 1), (64, 384, 1, 1), (384, 384, 1, 384),
              (384, 96, 1, 1), (96, 576, 1, 1), (576, 576, 1, 576), (576, 128, 1, 1), (128, 128, 1, 1)]
    nodes, inits, prev = [], [], "input"
    for i, (cin, cout, stride, groups) in enumerate(layers):
        k = 1 if groups == 1 and cin != 3 else 3
        w = (rng.standard_normal((cout, cin // groups, k, k)) * 0.05).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("Conv", [prev, f"w{i}"], [f"c{i}"], strides=[stride, stride],
                                      pads=[k // 2] * 4, group=groups))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        prev = f"r{i}"
    nodes.append(helper.make_node("Resize", [prev, "", "scales"], ["output"], mode="linear"))
    inits.append(numpy_helper.from_array(np.array([1, 1, 32, 32], dtype=np.float32), "scales"))
    graph = helper.make_graph(
        nodes, "stand_in",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 512, 512])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def blob_model(path: Path, mib: int) -> Path:
    """A valid ONNX file of about `mib` MiB (random initializer) for the upload measurement."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    n = mib * 2**20 // 4
    w = numpy_helper.from_array(np.random.default_rng(int(time.time())).random(n, dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "blob",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n])], initializer=[w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def inprocess_p50(model: Path, threads: int, runs: int, warmup: int) -> float:
    """The reference: a plain onnxruntime loop in this process, same options, same input."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model), session_options(threads), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    x = np.random.default_rng(0).random([1, *inp.shape[1:]], dtype=np.float32)
    feeds, outs = {inp.name: x}, [o.name for o in sess.get_outputs()]
    sess.run(outs, feeds)
    for _ in range(warmup):
        sess.run(outs, feeds)
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        sess.run(outs, feeds)
        samples.append(time.perf_counter_ns() - t0)
    return float(np.percentile(samples, 50)) / 1e6


def cv(values: list[float]) -> float:
    return statistics.stdev(values) / statistics.mean(values) if len(values) > 1 else 0.0


def fidelity(client: BenchClient, model: Path, threads: int, args: argparse.Namespace) -> dict[str, Any]:
    bench, local, overhead, window_overhead, create = [], [], [], [], []
    for _ in range(args.repeats):  # interleaved: both see the same background load
        # a fixed count, like the in-process loop (target_rel_ci=0): the same number of runs on both sides
        r = client.benchmark(model, runs=args.runs, warmup_runs=args.warmup, intra_op_threads=threads, target_rel_ci=0)
        bench.append(r.latency_ms_p50)
        overhead.append((r.call_wall_s - r.timed_total_s) * 1e3)
        window_overhead.append((r.call_wall_s - (r.timing_end_unix_ns - r.timing_start_unix_ns) / 1e9) * 1e3)
        create.append(r.session_create_ms)
        local.append(inprocess_p50(model, threads, args.runs, args.warmup))
    b, loc = statistics.median(bench), statistics.median(local)
    ratios = [x / y for x, y in zip(bench, local)]  # round by round: both saw the same moment's load
    return {
        "threads": threads,
        "ratio_median": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "benchd_p50_ms": b,
        "inprocess_p50_ms": loc,
        "delta_pct": (b - loc) / loc * 100,
        "benchd_p50_cv_pct": cv(bench) * 100,
        "inprocess_p50_cv_pct": cv(local) * 100,
        "overhead_beyond_timed_runs_ms": statistics.median(overhead),
        "overhead_beyond_device_window_ms": statistics.median(window_overhead),
        "session_create_ms": statistics.median(create),
        "benchd_p50s": bench,
        "inprocess_p50s": local,
    }


def upload_and_lookup(client: BenchClient, tmp: Path, mib: int) -> dict[str, float]:
    blob = blob_model(tmp / "blob.onnx", mib)
    t0 = time.perf_counter()
    assert client.upload(blob).uploaded
    seconds = time.perf_counter() - t0
    sha = client.upload(blob).sha256  # hashing cost excluded from the lookup timing below
    lookups = []
    for _ in range(20):
        t0 = time.perf_counter()
        client.has_model(sha)
        lookups.append((time.perf_counter() - t0) * 1e3)
    return {"upload_mib": mib, "upload_mb_per_s": blob.stat().st_size / 1e6 / seconds,
            "has_model_ms": statistics.median(lookups)}


def farm_throughput(model: Path, n_devices: int, tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    servers, devices = [], []
    for i in range(n_devices):
        cfg = ServerConfig(device_name=f"dev{i}", device_class="bench", cache_dir=str(tmp / f"farm{n_devices}-{i}"),
                           monitor_interval_s=0)
        srv, port = create_server("127.0.0.1:0", cfg)
        servers.append(srv)
        devices.append(FarmDevice(f"dev{i}", f"127.0.0.1:{port}", "bench"))
    try:
        with BenchFarm(devices) as farm:
            for d in devices:  # upload once per device, outside the measurement
                farm.client(d).ensure_model(model)
                while farm.client(d).health() != "SERVING":
                    time.sleep(0.05)
            jobs = list(range(args.farm_jobs))
            lock = threading.Lock()
            used: dict[str, int] = {}

            def caller() -> None:
                while True:
                    with lock:
                        if not jobs:
                            return
                        jobs.pop()
                    r = farm.benchmark(model, runs=args.farm_runs, warmup_runs=2, intra_op_threads=1)
                    with lock:
                        used[r.farm_device or ""] = used.get(r.farm_device or "", 0) + 1

            t0 = time.perf_counter()
            threads = [threading.Thread(target=caller) for _ in range(args.farm_callers)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            seconds = time.perf_counter() - t0
    finally:
        for srv in servers:
            srv.stop(0)
    return {"devices": n_devices, "jobs": args.farm_jobs, "seconds": seconds,
            "jobs_per_s": args.farm_jobs / seconds, "jobs_per_device": used}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=5, help="benchd calls (and in-process loops) per setting")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--upload-mib", type=int, default=64)
    parser.add_argument("--farm-jobs", type=int, default=16)
    parser.add_argument("--farm-runs", type=int, default=10)
    parser.add_argument("--farm-callers", type=int, default=4)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    machine = f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}"
    with tempfile.TemporaryDirectory(prefix="benchd-fidelity-") as tmpdir:
        tmp = Path(tmpdir)
        model, description = build_model(tmp)
        srv, port = create_server("127.0.0.1:0", ServerConfig(device_name="local", cache_dir=str(tmp / "cache"),
                                                                 monitor_interval_s=0))
        try:
            with BenchClient(f"127.0.0.1:{port}") as client:
                while client.health() != "SERVING":
                    time.sleep(0.05)
                client.ensure_model(model)
                rows = [fidelity(client, model, t, args) for t in args.threads]
                io = upload_and_lookup(client, tmp, args.upload_mib)
        finally:
            srv.stop(0)
        farm = [farm_throughput(model, n, tmp, args) for n in (1, 2)]

    report = {"machine": machine, "model": description, "runs": args.runs, "warmup": args.warmup,
              "repeats": args.repeats, "fidelity": rows, "io": io, "farm": farm}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"machine: {machine}\nmodel:   {description}\n"
          f"each call: {args.warmup} warm-up + {args.runs} timed runs; {args.repeats} calls per setting\n")
    print("| threads | benchd p50 ms | in-process p50 ms | delta | ratio per round: median (min-max) "
          "| CV of p50 (benchd / in-process) "
          "| overhead beyond timed runs ms | beyond device window ms | session create ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['threads']} | {r['benchd_p50_ms']:.3f} | {r['inprocess_p50_ms']:.3f} | {r['delta_pct']:+.2f}% "
              f"| {r['ratio_median']:.3f} ({r['ratio_min']:.3f}-{r['ratio_max']:.3f}) "
              f"| {r['benchd_p50_cv_pct']:.2f}% / {r['inprocess_p50_cv_pct']:.2f}% "
              f"| {r['overhead_beyond_timed_runs_ms']:.1f} | {r['overhead_beyond_device_window_ms']:.1f} "
              f"| {r['session_create_ms']:.1f} |")
    print(f"\nupload {io['upload_mib']} MiB over loopback: {io['upload_mb_per_s']:.0f} MB/s; "
          f"HasModel round trip: {io['has_model_ms']:.2f} ms\n")
    print("| devices | jobs | seconds | jobs/s | jobs per device |")
    print("|---|---|---|---|---|")
    for f in farm:
        print(f"| {f['devices']} | {f['jobs']} | {f['seconds']:.2f} | {f['jobs_per_s']:.2f} | {f['jobs_per_device']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
