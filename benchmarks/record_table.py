"""Record a benchmark table of a search space (`raysearch.replay.table`): train every configuration
with the study's recipe at a reduced scale for several seeds, keep each epoch's validation IoU,
loss and wall time, the test IoU through onnxruntime of the weights a finished trial would export
(the best epoch by validation loss), the trial's fixed cost, and each configuration's latency by
source. `raysearch replay` then compares search methods on the table in minutes.

    python benchmarks/record_table.py --space A                   # the study's stage 7: 36 x 3 seeds
    python benchmarks/record_table.py --space B                   # a wider space: 162 x 2 seeds
    python benchmarks/record_table.py --space L                   # A's 36 on long curves: 100 epochs x 1 seed
    python benchmarks/record_table.py --space C                   # 2304 configurations, 6 epochs at --limit 60
    python benchmarks/record_table.py --space A --status          # what is done, what is left
    python benchmarks/record_table.py --space A --latency-only    # (re)measure the host latency only
    python benchmarks/record_table.py --space B --latency-only --latency-source host-int8  # another device class
    python benchmarks/record_table.py --space mine --grid a=0.25,0.125 t=6,2 r=1 pp=0 input_hw=64,96 \\
        --data DIR --seeds 0 1 --epochs 10 --out my-table.jsonl.gz # your own space and data

Resumable: the table is rewritten after every (configuration, seed) that finishes, and a run
interrupted half-way continues from its last epoch (its work folder, `--work`, on this machine).
A table still missing runs says so (`--status`); comparisons refuse it until it is complete.

Latency source `host`: a benchd on this machine with its worker on a reserved core, 1 intra-op
thread, timed until the p50's 95% interval is within +-1% (at least 2 s, at most 30 s), in
`--latency-passes` separate passes over the whole space (the median is the table's figure, the
passes its spread). It is measured before any training starts, with nothing else running.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import itertools
import logging
import multiprocessing as mp
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402
from raysearch.models import ModelSpec  # noqa: E402
from raysearch.replay.table import FORMAT, VERSION, Epoch, Latency, Run, Table, TableError, load  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "packages"
TABLES = REPO / "benchmarks" / "tables"

#: the study's stage 7 exactly: its six resolutions x the six stage-6 models it combined them with
SPACE_A = {"input_hw": [512, 256, 192, 160, 128, 96],
           "model": [(1.0, 6, 1), (0.25, 6, 1), (0.125, 6, 2), (0.125, 4, 2), (0.125, 2, 2), (0.125, 2, 1)]}
#: a wider space where a searcher must search: Fast-SCNN's knobs x small inputs (3*3*3*2*3 = 162)
SPACE_B = {"a": [0.5, 0.25, 0.125], "t": [6, 4, 2], "r": [3, 2, 1], "pp": [0, 1], "input_hw": [64, 96, 128]}
#: out of sample for the latency model and the stopping settings (issue 31): inputs in steps of 32 and widths
#: between and beyond the study's, 8 x 4 x 4 x 2 x 9 = 2304 configurations, at a small scale (see DEFAULT_*)
SPACE_C = {"a": [0.125, 0.1875, 0.25, 0.3125, 0.375, 0.5, 0.625, 0.75], "t": [2, 3, 4, 6], "r": [1, 2, 3, 4],
           "pp": [0, 1], "input_hw": list(range(64, 321, 32))}
SPACES = {"A": (SPACE_A, [0, 1, 2]), "B": (SPACE_B, [0, 1]), "L": (SPACE_A, [0]), "C": (SPACE_C, [0])}
#: epochs per trial where a space's default is not 20: L is A's space on curves five times longer (issue 32),
#: C is 2304 configurations, each trained (hours of CPU even so)
DEFAULT_EPOCHS = {"L": 100, "C": 6}
#: images per split where a space's default is not 120
DEFAULT_LIMIT = {"C": 60}
#: a space whose configurations are another table's reuses that table's host latencies (measured once, quietly)
LATENCY_FROM = {"L": "A"}

log = logging.getLogger("record_table")


def config_id(spec: ModelSpec) -> str:
    return f"a{spec.a:g}-t{spec.t}-r{spec.r}-pp{spec.pp}-{spec.height}"


def space_specs(grid: dict) -> list[ModelSpec]:
    if "model" in grid:  # named (a, t, r) models x inputs, without pyramid pooling
        return [ModelSpec(a=a, t=t, r=r, pp=0, input_hw=res) for (a, t, r) in grid["model"] for res in grid["input_hw"]]
    keys = list(grid)
    return [ModelSpec.from_dict(dict(zip(keys, values)), strict=True) for values in itertools.product(*grid.values())]


def search_space(grid: dict) -> dict:
    """The space a live search of these configurations searches (`raysearch.search.options.Space` as
    JSON): named models x inputs for A (as stage 7 searches it), else the knobs' values."""
    hws = [[r, r] if isinstance(r, int) else list(r) for r in grid["input_hw"]]
    if "model" in grid:
        models = {f"a{a:g}-t{t}-r{r}-pp0": {"a": a, "t": t, "r": r, "pp": 0} for (a, t, r) in grid["model"]}
        return {"grid": {"input_hw": hws, "model": sorted(models)}, "fixed": {"arch": "fastscnn"}, "models": models}
    return {"grid": {**{k: v for k, v in grid.items() if k != "input_hw"}, "input_hw": hws},
            "fixed": {"arch": "fastscnn"}, "models": {}}


def parse_grid(items: list[str]) -> dict:
    grid = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not values:
            raise SystemExit(f"--grid {item!r}: expected KNOB=V1,V2,... (e.g. a=0.25,0.125)")
        grid[key] = [float(v) if "." in v else int(v) for v in values.split(",")]
    return grid


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def new_table(args: argparse.Namespace, grid: dict, specs: list[ModelSpec], seeds: list[int]) -> Table:
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    meta = {"format": FORMAT, "version": VERSION, "space": args.space, "epochs": args.epochs, "seeds": seeds,
            "scale": {"data": str(args.data_label), "limit": args.limit, "epochs": args.epochs, "batch_size": 8,
                      "recipe": "the study's (BCE, Adam 0.01, poly 0.9 over the epochs, fp32, best epoch by val loss)",
                      "threads_per_training": 1, "parallel_trainings": args.jobs},
            "search_space": search_space(grid), "latency_sources": {}, "provenance": {"commit": commit(), "machine": machine(), "created": now}}
    return Table(meta=meta, configs={config_id(s): s.to_dict() for s in specs})


# ---- training (in worker processes, one thread each) -------------------------------------------
def train_one(spec_dict: dict, seed: int, data: str, limit: int | None, epochs: int, work: str) -> Run:
    import torch

    from raysearch.data import open_split
    from raysearch.training.evaluate import evaluate_onnx
    from raysearch.training.export import export_onnx
    from raysearch.training.train import TrainConfig, train

    torch.set_num_threads(1)
    spec = ModelSpec.from_dict(spec_dict)
    out = Path(work)
    result = train(spec, open_split(data, "train", limit=limit), open_split(data, "val", limit=limit),
                   TrainConfig(epochs=epochs, seed=seed, progress=False), out_dir=out, resume=True)
    t0 = time.perf_counter()
    path = export_onnx(result.model, out / "model.onnx").path
    test = open_split(data, "test", limit=limit)
    iou = evaluate_onnx(path, test, threads=1).iou  # what a trial does: probability 0.5, one thread
    fixed = time.perf_counter() - t0
    iou_study = evaluate_onnx(path, test, threads=1, logit_threshold=0.5).iou
    curve = tuple(Epoch(round(h.val_iou, 6), round(h.val_loss, 6), round(h.seconds, 3)) for h in result.history)
    return Run(config_id(spec), seed, curve, result.best_epoch, round(iou, 6), round(iou_study, 6), round(fixed, 3))


# ---- latency -------------------------------------------------------------------------------------
# the latency sources a table can hold: the host as the tables' latency (`host`), and the same machine
# as other device classes (a new class for the latency model, issue 31 item 3)
LATENCY_SOURCES = {
    "host": dict(what="a local benchd on this machine, its worker on a reserved core", precision="fp32",
                 intra_op_threads=1, reserved=True),
    "host-int8": dict(what="the int8 (static QDQ) model of each configuration, a local benchd on a reserved core",
                      precision="int8", intra_op_threads=1, reserved=True),
    "host-2threads": dict(what="a local benchd with both cores, 2 intra-op threads", precision="fp32",
                          intra_op_threads=2, reserved=False),
    "pi-emulated": dict(what="benchd in the Debian arm64 root of clusters/pi_root.sh (a Cortex-A72 under qemu-user): "
                             "emulated, so not a Pi's latency, but another instruction set and other kernels",
                        precision="fp32", intra_op_threads=1, reserved=False, emulated=True),
}


@contextlib.contextmanager
def emulated_benchd(work: Path) -> Iterator[str]:
    """`clusters/pi_root.sh serve` (the root built by `pi_root.sh build`), as a farm inventory with its token."""
    script = Path(__file__).resolve().parents[1] / "clusters" / "pi_root.sh"
    p = subprocess.run(["bash", str(script), "--device-class", "pi-emulated", "--port", "0", "--start-timeout-s", "900",
                        "serve"], capture_output=True, text=True, timeout=1000)
    if p.returncode != 0:
        sys.exit(f"record_table: pi_root.sh serve failed (build the root first: sudo bash {script} build):\n"
                 f"{p.stdout}{p.stderr}")
    fields = dict(kv.split("=", 1) for kv in p.stdout.split())
    try:
        token = work.resolve() / "pi-token"
        token.write_text(Path(fields["token_file"]).read_text())
        token.chmod(0o600)
        farm = work / "pi-farm.yaml"
        farm.write_text(f"defaults:\n  token_file: {token}\n"
                        f"devices:\n  - {{name: pi-emulated, address: '{fields['address']}', class: pi-emulated}}\n")
        yield str(farm)
    finally:
        subprocess.run(["bash", str(script), "stop", fields["pid"]], capture_output=True, timeout=300)


def measure_latency(table: Table, passes: int, work: Path, source: str = "host", data: str = "") -> None:
    import dataclasses

    import torch

    from raysearch.data import open_split
    from raysearch.models import build_model
    from raysearch.search.latency import BenchSettings, local_benchd, measure, reserve_cpu
    from raysearch.training.export import export_onnx
    from raysearch.training.quantize import calibration_inputs, quantize_int8

    kind = LATENCY_SOURCES[source]
    torch.set_num_threads(1)
    reservation = reserve_cpu() if kind["reserved"] else None
    todo = [c for c in table.configs if (c, source) not in table.latencies]
    if not todo:
        return
    paths = {}
    val = open_split(data, "val", seed=0, limit=16) if kind["precision"] == "int8" else None
    for cid in todo:
        spec = dataclasses.replace(ModelSpec.from_dict(table.configs[cid]), precision=str(kind["precision"]))
        fp32 = export_onnx(build_model(spec), work / f"{cid}.onnx").path
        if val is not None:  # calibrated on validation images, as a trial's int8 model is
            fp32 = quantize_int8(fp32, work / f"{cid}.int8.onnx", calibration_inputs(val, spec))
        paths[cid] = fp32
    settings = dict(runs=50, warmup_runs=10, intra_op_threads=int(kind["intra_op_threads"]), min_duration_s=2.0,
                    target_rel_ci=0.01, max_duration_s=30.0)
    table.meta["latency_sources"][source] = {
        "what": kind["what"], "precision": kind["precision"], "passes": passes, **settings,
        "machine": machine(), "measured": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    got: dict[str, list[float]] = {c: [] for c in todo}
    serve = emulated_benchd(work) if kind.get("emulated") else local_benchd(
        source, cpus=reservation.benchd if reservation else ())
    with serve as target:
        bench = BenchSettings(farm=target, device_class=source, **settings)
        for p in range(passes):
            for i, cid in enumerate(todo, 1):
                got[cid].append(round(measure(paths[cid], bench).result.latency_ms_p50, 6))
                log.info("%s latency pass %d/%d, %d/%d %s: %.4f ms", source, p + 1, passes, i, len(todo), cid,
                         got[cid][-1])
    for cid, values in got.items():
        table.latencies[(cid, source)] = Latency(cid, source, tuple(values))


def copy_latency(table: Table, source: Path) -> None:
    """Take the host latencies of the same configurations from another table (same machine kind)."""
    other = load(source)
    if not set(table.configs) <= set(other.configs) or "host" not in other.sources():
        sys.exit(f"record_table: {source} does not hold the host latency of every configuration of this space")
    table.meta["latency_sources"]["host"] = {**other.meta["latency_sources"]["host"], "copied_from": source.name}
    for cid in table.configs:
        table.latencies[(cid, "host")] = other.latencies[(cid, "host")]
    log.info("host latencies of %d configurations copied from %s", len(table.configs), source)


# ---- the driver ----------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--space", required=True, help="A, B, or a name of your own with --grid")
    ap.add_argument("--grid", nargs="+", metavar="KNOB=V1,V2", help="your own space: ModelSpec knobs and values")
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--limit", type=int, help="images per split at most (default 60 for C, else 120)")
    ap.add_argument("--epochs", type=int, help="epochs per trial, the LR schedule spanning them (default 100 for L, "
                    "else 20)")
    ap.add_argument("--seeds", type=int, nargs="+", help="training seeds (default: 0 1 2 for A, 0 1 for B)")
    ap.add_argument("--jobs", type=int, default=2, help="trainings at once, one thread each (default %(default)s)")
    ap.add_argument("--latency-passes", type=int, default=3)
    ap.add_argument("--latency-only", action="store_true", help="measure the missing latencies, train nothing")
    ap.add_argument("--latency-source", choices=sorted(LATENCY_SOURCES), default="host",
                    help="which latency --latency-only and --remeasure-latency measure: host (the table's), or the "
                         "same machine as another device class: host-int8 (each configuration's int8 model), "
                         "host-2threads (both cores), pi-emulated (the arm64 root of clusters/pi_root.sh under qemu) (default "
                         "%(default)s)")
    ap.add_argument("--remeasure-latency", action="store_true",
                    help="drop the table's host latencies and measure them all again (on an idle machine)")
    ap.add_argument("--skip-latency", action="store_true",
                    help="train now, measure the host latency later with --latency-only on an idle machine")
    ap.add_argument("--status", action="store_true", help="say what is done and what is left, then stop")
    ap.add_argument("--out", help="the table (default benchmarks/tables/SPACE.jsonl.gz)")
    ap.add_argument("--work", default="runs/record", help="work folders of runs in progress")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    if args.grid:
        grid, default_seeds = parse_grid(args.grid), [0]
    elif args.space in SPACES:
        grid, default_seeds = SPACES[args.space]
    else:
        ap.error(f"--space {args.space!r}: not one of {sorted(SPACES)}; give --grid for a space of your own")
    seeds = args.seeds or default_seeds
    args.epochs = args.epochs or DEFAULT_EPOCHS.get(args.space, 20)
    args.limit = args.limit or DEFAULT_LIMIT.get(args.space, 120)
    data = Path(args.data)
    args.data_label = data.name if data.is_dir() else args.data
    out = Path(args.out) if args.out else TABLES / f"{args.space}.jsonl.gz"
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(args.work) / args.space
    work.mkdir(parents=True, exist_ok=True)
    specs = space_specs(grid)

    if out.is_file():
        try:
            table = load(out)
        except TableError as e:
            sys.exit(f"record_table: {e}")
        if set(table.configs) != {config_id(s) for s in specs} or table.epochs != args.epochs:
            sys.exit(f"record_table: {out} holds another space or scale; give another --out")
        table.meta["seeds"] = sorted(set(table.seeds) | set(seeds))
        table.meta["search_space"] = search_space(grid)
    else:
        table = new_table(args, grid, specs, seeds)
        table.save(out)

    if args.status:
        missing = table.missing("host")
        print(f"{out}: {len(table.configs)} configurations x {len(table.seeds)} seeds, {len(table.runs)} runs done, "
              f"{len(missing)} missing" + (f" (e.g. {missing[0]})" if missing else " - complete"))
        return
    if args.space in LATENCY_FROM and "host" not in table.sources():
        copy_latency(table, TABLES / f"{LATENCY_FROM[args.space]}.jsonl.gz")
        table.save(out)
    if args.remeasure_latency:
        table.latencies = {k: v for k, v in table.latencies.items() if k[1] != args.latency_source}
        table.meta["latency_sources"].pop(args.latency_source, None)
    source = args.latency_source
    if not args.skip_latency and (source not in table.sources() or table.missing(source)):
        measure_latency(table, args.latency_passes, work, source, args.data)
        table.save(out)
    if args.latency_only:
        return

    todo = [(cid, s) for s in table.seeds for cid in table.configs if (cid, s) not in table.runs]
    log.info("%s: %d runs to train (%d configurations x %d seeds, %d done)", out, len(todo), len(table.configs),
             len(table.seeds), len(table.runs))
    t_start = time.time()
    with cf.ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn")) as pool:
        futures = {pool.submit(train_one, table.configs[cid], seed, args.data, args.limit, args.epochs,
                               str(work / f"{cid}-seed{seed}")): (cid, seed) for cid, seed in todo}
        for n, fut in enumerate(cf.as_completed(futures), 1):
            cid, seed = futures[fut]
            run = fut.result()
            table.runs[(cid, seed)] = run
            table.meta["provenance"]["updated"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
            table.meta["provenance"]["core_seconds"] = round(
                table.meta["provenance"].get("core_seconds", 0) + sum(e.seconds for e in run.curve) + run.fixed_s, 1)
            table.save(out)
            shutil.rmtree(work / f"{cid}-seed{seed}", ignore_errors=True)  # its checkpoints: the table holds the run
            elapsed = time.time() - t_start
            log.info("[%d/%d] %s seed %d: test IoU %.4f, %d epochs in %.0f s (ETA %.1f h)", n, len(todo), cid, seed,
                     run.test_iou, len(run.curve), sum(e.seconds for e in run.curve),
                     elapsed / n * (len(todo) - n) / 3600)
    log.info("%s: complete=%s", out, table.complete("host"))


if __name__ == "__main__":
    main()
