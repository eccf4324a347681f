"""`benchd` command line: serve, bench, info, farm status."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchd import __version__
from benchd.runner import DEFAULTS

# How long `benchd bench --farm` looks for a device that takes the model when --timeout-s is not
# given: a person is waiting (the library's own default, for the search, is its whole 1800 s).
FARM_WAIT_S = 120.0

_EPILOG = """examples:
  benchd serve --device-class rpi4                       # loopback only, port 50051
  benchd serve --address 0.0.0.0 --token-file ~/.config/benchd/token --device-class rpi4
  benchd bench model.onnx --target pi4-01.lan:50051 --token-file ~/.config/benchd/token
  benchd bench model.onnx --farm clusters/farm.yaml --class rpi4 --json
  benchd bench model.onnx --local --intra-op-threads 4 --runs 50
  benchd info --target pi4-01.lan:50051
  benchd farm status clusters/farm.yaml
"""


def _add_connection_args(p: argparse.ArgumentParser, timeout_help: str = "deadline of the whole call "
                         "(default: generous)") -> None:
    g = p.add_argument_group("connection (with --target)")
    g.add_argument("--token-file", help="file holding the server's bearer token")
    g.add_argument("--tls-ca", help="CA bundle that signed the server certificate (enables TLS)")
    g.add_argument("--tls-cert", help="client certificate, for mutual TLS")
    g.add_argument("--tls-key", help="client private key, for mutual TLS")
    g.add_argument("--tls-server-name", help="name expected in the server certificate, if not the host")
    g.add_argument("--timeout-s", type=float, default=None, help=timeout_help)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="benchd",
        description="Measure ONNX model latency on edge devices (e.g. Raspberry Pi 4) over gRPC.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"benchd {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("serve", help="run the benchmark server on this device",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    s.add_argument("--address", default="127.0.0.1",
                   help="interface to bind; anything but loopback needs --token-file or --insecure")
    s.add_argument("--port", type=int, default=50051, help="port (0: any free port)")
    s.add_argument("--port-file", help="write the bound port to this file once serving")
    s.add_argument("--device-name", default=socket.gethostname(), help="name reported with every result")
    s.add_argument("--device-class", default="unknown", help="device class reported, e.g. rpi4")
    s.add_argument("--cache-dir", default="~/.cache/benchd", help="model cache directory (survives restarts)")
    s.add_argument("--cache-max-mb", type=float, default=2048, help="model cache cap (LRU eviction)")
    s.add_argument("--max-model-mb", type=float, default=256, help="largest model accepted")
    s.add_argument("--queue-size", type=int, default=8,
                   help="benchmarks that may wait while one runs; more are refused (RESOURCE_EXHAUSTED)")
    s.add_argument("--max-runs", type=int, default=10_000, help="largest runs / warmup_runs accepted")
    s.add_argument("--max-duration-s", type=float, default=300,
                   help="longest benchmark (and largest min_duration_s): past it a watchdog kills the worker")
    s.add_argument("--max-load-s", type=float, default=120,
                   help="longest onnxruntime session creation before the watchdog kills the worker")
    s.add_argument("--max-predict-mb", type=float, default=3,
                   help="Predict: input data and output data per call, each (clients split larger sets into calls)")
    s.add_argument("--max-predict-batch", type=int, default=64, help="Predict: images per call")
    s.add_argument("--max-uploads", type=int, default=4,
                   help="uploads received at once (more are refused as busy; health never starves)")
    s.add_argument("--upload-idle-s", type=float, default=30, help="cancel an upload stream silent this long")
    s.add_argument("--worker-memory-mb", type=float, default=None,
                   help="address-space limit of the benchmark worker (default: 80%% of RAM; 0: none)")
    s.add_argument("--worker-prefix", default="", help="command prefix for the worker, e.g. 'nice -n -5'")
    s.add_argument("--worker-cpus", default="", metavar="LIST",
                   help="pin the worker to these CPUs, e.g. '3' or '2,3' (keep them free of other work)")
    s.add_argument("--token-file", help="require this bearer token (file content) on every call")
    s.add_argument("--insecure", action="store_true", help="allow a non-loopback bind without a token")
    s.add_argument("--tls-cert", help="server certificate (PEM); enables TLS with --tls-key")
    s.add_argument("--tls-key", help="server private key (PEM)")
    s.add_argument("--tls-client-ca", help="require client certificates signed by this CA (mutual TLS)")
    s.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus /metrics on this port")
    s.add_argument("--metrics-address", default="127.0.0.1", help="interface for the metrics endpoint")
    s.add_argument("--unhealthy-when-throttled", action="store_true",
                   help="report NOT_SERVING while the CPU is throttled")
    s.add_argument("--monitor-interval-s", type=float, default=10, help="sensor polling period")

    b = sub.add_parser("bench", help="benchmark a model remotely, on a farm, or locally",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    b.add_argument("model", help="ONNX file")
    where = b.add_mutually_exclusive_group(required=True)
    where.add_argument("--target", help="HOST:PORT of one benchd server")
    where.add_argument("--farm", help="farm inventory (clusters/farm.yaml)")
    where.add_argument("--local", action="store_true", help="time in this process (no server)")
    b.add_argument("--class", dest="device_class", help="with --farm: device class to use")
    b.add_argument("--label", action="append", default=[], metavar="K=V", help="with --farm: required label")
    b.add_argument("--runs", type=int, default=DEFAULTS.runs, help="minimum timed runs (default %(default)s)")
    # each timing flag is named for the BenchmarkRequest field it sets (raysearch's --bench-X too);
    # the first names benchd had stay as aliases
    b.add_argument("--warmup-runs", "--warmup", dest="warmup_runs", type=int, default=DEFAULTS.warmup_runs,
                   help="discarded runs after the cold first run (default %(default)s)")
    b.add_argument("--min-duration-s", type=float, default=0.0, help="keep timing at least this long")
    b.add_argument("--target-rel-ci", "--precision", dest="target_rel_ci", type=float, default=DEFAULTS.target_rel_ci,
                   help="then keep timing until the 95%% CI of the p50 is within +-this share of it "
                        "(0: exactly --runs; default %(default)s)")
    b.add_argument("--max-runs", type=int, default=DEFAULTS.max_runs,
                   help="stop chasing --target-rel-ci after this many timed runs")
    b.add_argument("--intra-op-threads", "--threads", dest="intra_op_threads", type=int, default=0,
                   help="intra-op threads (0: all cores of the device)")
    b.add_argument("--batch-size", type=int, default=1, help="for a dynamic batch dimension")
    b.add_argument("--shape", action="append", default=[], metavar="NAME=1x3xHxW",
                   help="full shape of an input with dynamic non-batch dimensions")
    b.add_argument("--graph-optimization", choices=("disable", "basic", "extended", "all"), default="all")
    b.add_argument("--samples", action="store_true", help="include every timed latency")
    b.add_argument("--json", action="store_true", help="print the result as JSON")
    _add_connection_args(b, f"deadline of the whole call; with --farm also how long to look for a device "
                            f"(default: generous, and {FARM_WAIT_S:g} s to find a device)")

    i = sub.add_parser("info", help="show a server's device, runtime and cache")
    i.add_argument("--target", required=True, help="HOST:PORT")
    i.add_argument("--json", action="store_true")
    _add_connection_args(i)

    f = sub.add_parser("farm", help="farm inventory commands")
    fsub = f.add_subparsers(dest="farm_command", required=True, metavar="SUBCOMMAND")
    fs = fsub.add_parser("status", help="table of every device: class, health, busy, temperature")
    fs.add_argument("file", help="farm inventory (clusters/farm.yaml)")
    fs.add_argument("--json", action="store_true")
    fs.add_argument("--timeout-s", type=float, default=3.0, help="per-device probe deadline")
    return parser


def _cpus(text: str) -> tuple[int, ...]:
    try:
        cpus = tuple(int(c) for c in text.split(",") if c.strip())
    except ValueError:
        raise SystemExit(f"benchd serve: --worker-cpus {text!r}: expected CPU numbers like '3' or '2,3'") from None
    unknown = set(cpus) - os.sched_getaffinity(0)
    if unknown:
        raise SystemExit(f"benchd serve: --worker-cpus {text!r}: CPU(s) {sorted(unknown)} are not available here "
                         f"(available: {sorted(os.sched_getaffinity(0))})")
    return cpus


def _mb(value: float) -> int:
    return int(value * 2**20)


def _serve(args: argparse.Namespace) -> int:
    import shlex

    from benchd.security import ServerTls, parse_address, read_token_file
    from benchd.server import ServerConfig, create_server

    if bool(args.tls_cert) != bool(args.tls_key):
        raise SystemExit("benchd serve: --tls-cert and --tls-key go together")
    host = f"[{args.address}]" if ":" in args.address else args.address
    parse_address(f"{host}:{args.port}", "listen address (--address, --port)", any_port=True)
    if args.metrics_port is not None:
        metrics_host = f"[{args.metrics_address}]" if ":" in args.metrics_address else args.metrics_address
        parse_address(f"{metrics_host}:{args.metrics_port}", "metrics address (--metrics-address, --metrics-port)",
                      any_port=True)
    cfg = ServerConfig(
        device_name=args.device_name,
        device_class=args.device_class,
        cache_dir=args.cache_dir,
        cache_max_bytes=_mb(args.cache_max_mb),
        max_model_bytes=_mb(args.max_model_mb),
        queue_size=args.queue_size,
        max_runs=args.max_runs,
        max_duration_s=args.max_duration_s,
        max_load_s=args.max_load_s,
        max_predict_bytes=_mb(args.max_predict_mb),
        max_predict_batch=args.max_predict_batch,
        max_uploads=args.max_uploads,
        upload_idle_s=args.upload_idle_s,
        worker_memory_bytes=None if args.worker_memory_mb is None else _mb(args.worker_memory_mb),
        worker_prefix=tuple(shlex.split(args.worker_prefix)),
        worker_cpus=_cpus(args.worker_cpus),
        token=read_token_file(args.token_file) if args.token_file else None,
        insecure=args.insecure,
        tls=ServerTls(args.tls_cert, args.tls_key, args.tls_client_ca) if args.tls_cert else None,
        metrics_port=args.metrics_port,
        metrics_address=args.metrics_address,
        unhealthy_when_throttled=args.unhealthy_when_throttled,
        monitor_interval_s=args.monitor_interval_s,
    )
    server, port = create_server(f"{host}:{args.port}", cfg)
    if args.port_file:
        Path(args.port_file).write_text(f"{port}\n")
    print(f"benchd {__version__} listening on {host}:{port}"
          + (f", metrics on :{server.metrics_port}" if server.metrics_port else ""), flush=True)
    done = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    done.wait()
    server.stop(grace=5)
    return 0


def _client(args: argparse.Namespace) -> Any:
    from benchd.client import BenchClient
    from benchd.security import ClientTls, parse_address

    parse_address(args.target, "--target")
    tls = None
    if args.tls_ca or args.tls_cert:
        tls = ClientTls(args.tls_ca, args.tls_cert, args.tls_key, args.tls_server_name)
    return BenchClient(args.target, token_file=args.token_file, tls=tls)


def _shapes(specs: Sequence[str]) -> dict[str, list[int]]:
    out = {}
    for spec in specs:
        name, _, dims = spec.partition("=")
        try:
            out[name] = [int(d) for d in dims.lower().split("x")]
        except ValueError:
            raise SystemExit(f"benchd bench: bad --shape {spec!r}; expected NAME=1x3x512x512") from None
    return out


_TABLE_KEYS = ("latency_ms_mean", "latency_ms_std", "latency_ms_min", "latency_ms_p50", "latency_ms_p90",
               "latency_ms_p95", "latency_ms_p99", "latency_ms_max", "latency_cv", "session_create_ms",
               "latency_ms_p50_first_tenth", "latency_ms_p50_last_tenth",
               "first_run_ms", "peak_rss_bytes", "throttled", "cpu_temperature_c_before",
               "cpu_temperature_c_after", "cpu_freq_mhz_before", "cpu_freq_mhz_after")


def _print_result(result: dict[str, Any]) -> None:
    who = result.get("farm_device") or result.get("device_name") or "local"
    print(f"model    {result['model_sha256'][:16]}  on {who} ({result.get('device_class', '')}), "
          f"onnxruntime {result['onnxruntime_version']}, {result['intra_op_threads']} threads, "
          f"batch {result['batch_size']}")
    print(f"runs     {result['runs']} timed after {result['warmup_runs']} warm-up")
    target = result.get("target_rel_ci") or 0
    if target > 0:
        rel = result.get("p50_rel_ci", -1)
        got = f"+-{100 * rel:.1f}%" if rel >= 0 else "unbounded (too few runs)"
        verdict = "met" if result.get("precision_met") else "NOT met (a cap stopped the timing)"
        print(f"p50 95% CI [{result['latency_ms_p50_ci_low']:.4f}, {result['latency_ms_p50_ci_high']:.4f}] ms: "
              f"{got}, target +-{100 * target:.1f}% {verdict}")
    for key in _TABLE_KEYS:
        value = result.get(key)
        if value is None:
            value = "unknown"
        elif isinstance(value, float):
            value = f"{value:.4f}"
        print(f"{key:26s} {value}")


def _bench(args: argparse.Namespace) -> int:
    from benchd.errors import BenchError, FarmError
    from benchd.runner import BenchParams

    params = BenchParams(
        warmup_runs=args.warmup_runs, runs=args.runs, min_duration_s=args.min_duration_s,
        intra_op_threads=args.intra_op_threads, batch_size=args.batch_size, graph_optimization=args.graph_optimization,
        input_shapes=_shapes(args.shape), return_samples=args.samples, target_rel_ci=args.target_rel_ci,
        max_runs=args.max_runs,
    )
    if args.local:
        from benchd.cache import sha256_file
        from benchd.runner import BenchmarkError, run_benchmark

        try:
            result = run_benchmark(args.model, params)
        except BenchmarkError as exc:
            print(f"benchd bench: {exc}", file=sys.stderr)
            return 1
        result.update(model_sha256=sha256_file(args.model), device_name="local", device_class="local")
    else:
        try:
            if args.farm:
                from benchd.farm import BenchFarm

                labels = dict(lbl.split("=", 1) for lbl in args.label)
                if not args.verbose:  # the progress lines say what its warnings would, once in a while
                    logging.getLogger("benchd.farm").setLevel(logging.ERROR)
                with BenchFarm.from_file(args.farm) as farm:
                    res = farm.benchmark(args.model, params, device_class=args.device_class, labels=labels,
                                         timeout_s=args.timeout_s or 1800.0, wait_s=args.timeout_s or FARM_WAIT_S,
                                         progress=lambda line: print(f"benchd bench: {line}", file=sys.stderr,
                                                                     flush=True))
            else:
                with _client(args) as client:
                    res = client.benchmark(args.model, params, timeout_s=args.timeout_s)
        except (BenchError, FarmError) as exc:
            print(f"benchd bench: {exc}", file=sys.stderr)
            return 1
        result = res.to_dict()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print_result(result)
    return 0


def _info(args: argparse.Namespace) -> int:
    from google.protobuf.json_format import MessageToDict

    from benchd.errors import BenchError

    try:
        with _client(args) as client:
            info = MessageToDict(client.info(), preserving_proto_field_name=True)
    except BenchError as exc:
        print(f"benchd info: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    models = info.pop("cached_models", [])
    for key, value in info.items():
        print(f"{key:24s} {value}")
    for m in models:
        print(f"  cached {m['model_sha256'][:16]}  {int(m['size_bytes']) / 2**20:8.2f} MiB")
    return 0


def _farm_status(args: argparse.Namespace) -> int:
    from benchd.farm import BenchFarm, FarmConfigError

    try:
        farm = BenchFarm.from_file(args.file)
    except FarmConfigError as exc:
        print(f"benchd farm status: {exc}", file=sys.stderr)
        return 2
    with farm:
        rows = farm.status(timeout_s=args.timeout_s)
    if args.json:
        print(json.dumps([
            {"device": r.device.name, "address": r.device.address, "class": r.device.device_class,
             "health": r.health, "busy": r.busy, "queue_depth": r.queue_depth,
             "temperature_c": r.temperature_c, "throttled": r.throttled, "error": r.error} for r in rows
        ], indent=2))
        return 0 if all(r.health == "SERVING" for r in rows) else 1
    table = [("DEVICE", "CLASS", "ADDRESS", "HEALTH", "BUSY", "QUEUE", "TEMP_C", "THROTTLED")]
    for r in rows:
        def fmt(v: Any) -> str:
            return "-" if v is None else ("yes" if v is True else "no" if v is False else str(v))

        temp = "-" if r.temperature_c is None else f"{r.temperature_c:.1f}"
        health = r.health if not r.error else f"{r.health} ({r.error[:60]})"
        table.append((r.device.name, r.device.device_class, r.device.address, health, fmt(r.busy),
                      fmt(r.queue_depth), temp, fmt(r.throttled)))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return 0 if all(r.health == "SERVING" for r in rows) else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO if args.command == "serve" else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "bench":
            return _bench(args)
        if args.command == "info":
            return _info(args)
        return _farm_status(args)
    except (ValueError, OSError) as exc:
        print(f"benchd {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
