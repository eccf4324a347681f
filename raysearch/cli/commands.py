"""What each `raysearch` subcommand does (`cmd_NAME`, given its parsed arguments)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import raysearch
from raysearch.cli.options import logit_threshold, optimize_options, spec_from_args
from raysearch.records import names as obj
from raysearch.storage import write_atomic

if TYPE_CHECKING:
    from raysearch.replay.compare import ReplayCache

# Each command imports what it runs inside its function: torch, Ray, MLflow and Optuna stay out of
# `raysearch --help` and of the commands that do not need them (a fraction of a second to start).

log = logging.getLogger("raysearch")


def cmd_summary(args: argparse.Namespace) -> int:
    from raysearch.training.model_summary import summarize

    spec = spec_from_args(args)
    s = summarize(spec)
    if args.json:
        print(s.to_json())
        return 0
    print(f"{spec.name}")
    print(f"  params_total     {s.params_total:>14,}   (every parameter, the study's convention)")
    print(f"  params_executed  {s.params_executed:>14,}   (parameters the forward pass uses)")
    print(f"  macs             {s.macs / 1e6:>14,.2f} M")
    print(f"  input_mb         {s.input_mb:>14.2f}")
    print(f"  fwd_pass_mb      {s.fwd_pass_mb:>14.2f}")
    return 0


def cmd_latency(args: argparse.Namespace) -> int:
    from raysearch.search.latency_model import cross_validated
    from raysearch.search.trial import cached_latencies

    cache = Path(args.cache)
    if not cache.is_dir():
        log.error("%s: no latency cache there (a search keeps one in STORAGE/latency_cache; --storage-path "
                  "runs/ray by default)", cache)
        return 2
    groups = cached_latencies(str(cache))
    if args.device_class:
        groups = {k: v for k, v in groups.items() if k[0] == args.device_class}
    if not groups:
        print(f"{cache}: no latency measured" + (f" on device class {args.device_class!r}" if args.device_class else ""))
        return 0
    for (device_class, timing), measured in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        ms = sorted(m for _, m in measured)
        print(f"device class {device_class!r} (benchmark settings {timing[:8]}): {len(measured)} configurations "
              f"measured, {ms[0]:.3g} to {ms[-1]:.3g} ms")
        err = cross_validated(measured)
        print("  the latency model, each predicted from the others (5-fold): "
              + (err.describe() if err else "needs 6 measurements or more"))
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from raysearch.data.synthetic import write_synthetic
    from raysearch.models import parse_hw

    counts = write_synthetic(args.out, n=args.n, seed=args.seed, hw=parse_hw(args.size), progress=not args.quiet)
    log.info("wrote %s to %s", ", ".join(f"{k}: {v}" for k, v in counts.items()), args.out)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from raysearch.data import open_split
    from raysearch.training.evaluate import evaluate_onnx
    from raysearch.training.export import export_onnx
    from raysearch.training.model_summary import summarize
    from raysearch.training.train import TrainConfig, train

    spec = spec_from_args(args)
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                      num_workers=args.workers, device=args.device, train_scale=args.train_scale, amp=args.amp,
                      progress=not args.quiet)
    out = Path(args.out)
    sources = {s: open_split(args.data, s, seed=args.seed, limit=args.limit) for s in ("train", "val", "test")}
    log.info("data %s: %s", args.data, ", ".join(f"{k} {len(v)}" for k, v in sources.items()))
    result = train(spec, sources["train"], sources["val"], cfg, out_dir=out, resume=args.resume)
    report = export_onnx(result.model, out / obj.MODEL_FILE, exporter=args.exporter)
    thr = logit_threshold(args)
    test = evaluate_onnx(report.path, sources["test"], logit_threshold=thr, progress=not args.quiet)
    metrics = {
        "spec": spec.to_dict(), "name": spec.name, "data": str(args.data), "train_config": asdict(cfg),
        "train": result.summary(), "test": test.metrics(), "summary": summarize(spec).to_dict(),
        "onnx": {"path": str(report.path), "size_bytes": report.size_bytes, "max_abs_diff": report.max_abs_diff},
        "history": [h.to_dict() for h in result.history],
    }
    write_atomic(out / "metrics.json", json.dumps(metrics, indent=2))
    print(f"{spec.name}: test IoU {test.iou:.4f} (onnxruntime, {test.n_images} images, best epoch "
          f"{result.best_epoch}/{len(result.history)}) -> {report.path}, {out / 'metrics.json'}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from raysearch.data import open_split
    from raysearch.training.evaluate import evaluate_onnx

    source = open_split(args.data, args.split, seed=args.seed, limit=args.limit)
    if args.farm:
        return _evaluate_on_device(args, source)
    res = evaluate_onnx(args.onnx, source, logit_threshold=logit_threshold(args), threads=args.threads,
                        progress=not args.json)
    if args.json:
        print(res.to_json(per_image=args.per_image))
    else:
        print(f"{args.onnx} on {args.data} [{args.split}, {res.n_images} images]")
        for k, v in res.metrics().items():
            print(f"  {k:<16} {v:.4f}" if isinstance(v, float) else f"  {k:<16} {v}")
    return 0


def _evaluate_on_device(args: argparse.Namespace, source) -> int:
    from benchd.errors import FarmError
    from raysearch.search.device_iou import evaluate_on_device
    from raysearch.search.latency import open_farm

    with open_farm(args.farm, args.device_class) as farm:
        states = [s for s in farm.status() if s.device.device_class == args.device_class]
        if not states:
            raise FarmError(f"--farm {args.farm} has no device of class {args.device_class!r} (--device-class)")
        if all(s.health == "DOWN" for s in states):  # the farm would wait for them: say it now
            raise FarmError(f"no device of class {args.device_class!r} answers: "
                            + "; ".join(f"{s.device.name}: {s.error}" for s in states))
        cmp = evaluate_on_device(args.onnx, source, farm, device_class=args.device_class,
                                 logit_threshold=logit_threshold(args), progress=not args.json,
                                 timeout_s=args.timeout_s)
    disagrees = cmp.disagrees(args.tolerance)
    if args.json:
        doc = cmp.to_dict()
        if args.per_image:
            doc["device_per_image"], doc["host_per_image"] = cmp.device.per_image, cmp.host.per_image
        print(json.dumps({**doc, "tolerance": args.tolerance, "disagrees": disagrees}, indent=2))
    else:
        print(f"{args.onnx} on {args.data} [{args.split}, {cmp.device.n_images} images], "
              f"on {cmp.device_name} (onnxruntime {cmp.onnxruntime_version}) and on this host")
        print(f"  {'':<16} {'device':>8} {'host':>8}")
        for k, v in cmp.device.metrics().items():
            if isinstance(v, float) and k != "logit_threshold":
                print(f"  {k:<16} {v:8.4f} {cmp.host.metrics()[k]:8.4f}")
        print(f"  device - host IoU {cmp.iou_gap:+.4f}; largest per-image gap {cmp.max_iou_gap:.4f} "
              f"({cmp.worst_image}); masks differ on at most {cmp.max_pixel_disagreement:.2%} of an image's pixels")
        print(f"  {cmp.calls} Predict call(s), {cmp.bytes_sent / 2**20:.1f} MiB sent, "
              f"{cmp.bytes_received / 2**10:.0f} KiB back, {cmp.wall_s:.2f} s ({cmp.device_run_s:.2f} s running)")
        if disagrees:
            print(f"  the device's IoU differs from the host's by more than {args.tolerance} (--tolerance): "
                  f"rank this model by the device's figure")
    return 3 if disagrees else 0


def cmd_export(args: argparse.Namespace) -> int:
    from raysearch.training.export import export_onnx
    from raysearch.training.train import load_checkpoint

    if args.checkpoint:
        model = load_checkpoint(args.checkpoint)
    else:
        from raysearch.models import build_model

        model = build_model(spec_from_args(args))  # untrained: what latency-first benchmarking measures
    r = export_onnx(model, args.out, exporter=args.exporter)
    print(f"{r.path}: {r.spec.name}, input {r.input_name} {list(r.input_shape)}, {r.size_bytes / 1e6:.2f} MB, "
          f"max |onnxruntime - torch| = {r.max_abs_diff:.2g}")
    return 0


def _client(args: argparse.Namespace):
    from mlflow.tracking import MlflowClient

    from raysearch.tracking.runs import tracking_uri
    from raysearch.tracking.store import check_store

    uri = tracking_uri(args.tracking_uri)
    check_store(uri, write=False)  # pick and report only read: they never create a store
    return MlflowClient(uri)


def _requirement(args: argparse.Namespace):
    from raysearch.records.results import Requirement

    return Requirement(args.max_latency_ms, args.min_iou)


def cmd_report(args: argparse.Namespace) -> int:
    from raysearch.reporting.html import write_html
    from raysearch.reporting.tables import front_table
    from raysearch.tracking.readback import candidates_of, interruption, search_hypervolume, searches

    client, req = _client(args), _requirement(args)
    for parent in searches(client, args.experiment, args.run_id, args.optimization):
        rows = candidates_of(client, parent, args.device_class)
        print(f"{parent.info.run_name} ({parent.data.tags.get(obj.TAG_STAGE, '')}): {len(rows)} candidates")
        note = interruption(parent)
        if note:
            print(f"  note: {note}")
        if rows:
            share, ref_ms = search_hypervolume(parent, rows)
            print(f"hypervolume {share:.3f} of the box IoU 0..1 x latency 0..{ref_ms:.3g} ms")
            print(front_table(rows, req))
        print()
    out = write_html(client, args.experiment, args.out, run_id=args.run_id, optimization=args.optimization,
                     requirement=req, device_class=args.device_class)
    print(f"wrote {out}")
    page = _interactive_front(client, args, req)
    print(f"wrote {page} (interactive: every trial, the front, parallel coordinates; click a point for its "
          "MLflow run)")
    return 0


def _interactive_front(client, args: argparse.Namespace, req) -> Path:
    from raysearch.reporting.interactive import run_url, ui_address, write_front_page
    from raysearch.tracking.readback import row_from_run, searches

    rows, urls = [], {}
    ui = ui_address(client.tracking_uri)
    for parent in searches(client, args.experiment, args.run_id, args.optimization):
        kids = client.search_runs([parent.info.experiment_id], f"tags.`{obj.TAG_PARENT}` = '{parent.info.run_id}'")
        for k in kids:
            row = row_from_run(k, parent.info.run_name)
            if args.device_class is None or row.device_class == args.device_class:
                rows.append(row)
                urls[row.run_id] = run_url(ui, k.info.experiment_id, row.run_id)
    out = Path(args.front or Path(args.out).with_name(Path(args.out).stem + "-front.html"))
    return write_front_page(rows, out, requirement=req, urls=urls,
                            title=f"raysearch: experiment {args.experiment}, {len(rows)} trials")


def cmd_pick(args: argparse.Namespace) -> int:
    from raysearch.reporting.html import rows_json
    from raysearch.tracking.readback import interruption, pick, searches

    client = _client(args)
    rows = pick(client, args.experiment, _requirement(args), args.run_id, args.optimization, args.device_class)
    for parent in searches(client, args.experiment, args.run_id, args.optimization):
        note = interruption(parent)
        if note:  # the pick is over what the search measured so far: say so
            print(f"note: {note}", file=sys.stderr)
    if args.json:
        print(rows_json(rows))
    elif rows:
        for i, r in enumerate(rows, 1):
            print(f"{i}. {r.name}  IoU {r.iou:.4f}  {r.latency_ms:.3f} ms on {r.device_class or '?'}  "
                  f"({r.stage}, run {r.run_id})\n"
                  f"   {r.onnx}")
            if r.device_iou_note():
                print(f"   {r.device_iou_note()}")
    else:
        print("no candidate meets the requirements; `raysearch report` shows the closest", file=sys.stderr)
    if not rows:
        return 1
    if args.bundle:
        if args.bundle_rank > len(rows):
            print(f"--bundle-rank {args.bundle_rank}: only {len(rows)} candidate(s) qualify", file=sys.stderr)
            return 2
        folder = _bundle(client, rows[args.bundle_rank - 1], args)
        print(f"bundle of candidate {args.bundle_rank} written to {folder}/ (run: python predict.py IMAGE)",
              file=sys.stderr if args.json else sys.stdout)
    return 0


def _bundle(client, row, args: argparse.Namespace) -> Path:
    from raysearch.reporting.bundle import write_bundle

    parent_id = client.get_run(row.run_id).data.tags.get(obj.TAG_PARENT)
    params = client.get_run(parent_id).data.params if parent_id else {}
    provenance = {"run_id": row.run_id, "search_run_id": parent_id, obj.TAG_STAGE: row.stage, "search": row.search,
                  "experiment": args.experiment}
    # a search's parent run logs its options' fields as params: the threshold it evaluated with
    threshold = float(params.get("logit_threshold", 0.0))
    return write_bundle(row, args.bundle, logit_threshold=threshold, provenance=provenance)


DEFAULT_REPLAY_CACHE = "runs/replay-cache"  # under the working folder, as the tracking store's runs/mlflow.db


def duration(seconds: float) -> str:
    """A rough duration for people: 40 s, 12 min, 3.5 h."""
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def _replay_cache(args: argparse.Namespace, table: Path) -> ReplayCache | None:
    """The folder that keeps finished replays: --cache DIR, else runs/replay-cache; None with
    --no-cache, or (a warning) where the default folder cannot be made."""
    from raysearch.replay.compare import ReplayCache

    if args.no_cache:
        return None
    if args.cache is not None:
        return ReplayCache(args.cache, table)  # cannot be used: one line, before any replay
    try:
        Path(DEFAULT_REPLAY_CACHE).mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a read-only working folder, a file named runs: the replay goes on, keeping nothing
        print(f"raysearch replay: warning: cannot keep replays in {DEFAULT_REPLAY_CACHE} ({e.strerror or e}); "
              "going on without (--cache DIR: elsewhere)", file=sys.stderr)
        return None
    return ReplayCache(DEFAULT_REPLAY_CACHE, table)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM stops a replay as Ctrl-C does: workers terminated, cache kept


def cmd_replay(args: argparse.Namespace) -> int:
    import signal
    import threading

    from tqdm.auto import tqdm

    from raysearch.replay.compare import compare, plot, text_table
    from raysearch.replay.methods import DEFAULT_METHODS, Method, estimate_seconds, is_slow, select
    from raysearch.replay.table import load

    table = _table_path(args.table)
    loaded = load(table)
    loaded.require_complete(args.latency_source)  # a bad or unfinished table: one line, before anything runs
    methods = select(args.methods) if args.methods else list(DEFAULT_METHODS)
    jobs = args.jobs or len(os.sched_getaffinity(0))
    store = _replay_cache(args, table)
    where = f"finished replays are kept in {store.folder}" if store is not None else "--no-cache: nothing kept"
    counts = {"finished": 0, "to_run": 0}

    def plan(replays: list[Method]) -> None:
        counts["to_run"] = len(replays)
        slow = [m for m in dict.fromkeys(replays) if is_slow(m)]
        if slow:
            n = len(loaded.configs)
            bar.write(f"raysearch replay: {len(replays)} replays to run on {min(jobs, len(replays))} processes, "
                      f"about {duration(estimate_seconds(replays, jobs, n))} (slow: "
                      + ", ".join(f"{m.key} ~{duration(estimate_seconds([m], 1, n))} a seed" for m in slow)
                      + f", measured on table A on 2 cores); {where}; Ctrl-C stops", file=sys.stderr)

    def progress(n: int, total: int) -> None:
        counts["finished"] = n
        bar.update(n - bar.n)

    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_interrupt) if main else None
    try:
        with tqdm(total=args.seeds * len(methods), desc=f"replaying {table.name}", unit="search",
                  disable=args.quiet, file=sys.stderr) as bar:
            cmp = compare(table, methods=methods, seeds=args.seeds, source=args.latency_source, workers=args.workers,
                          budgets=args.budgets, jobs=jobs, max_latency_ms=args.max_latency_ms, progress=progress,
                          cache=store, plan=plan)
        summary = cmp.summary()
        out = plot(cmp, args.plot or f"replay-{cmp.table}-{cmp.source}.png")
    except KeyboardInterrupt:
        kept = (f"kept in {store.folder}, run the same command to continue" if store is not None
                else "not kept (--no-cache)")
        print(f"raysearch replay: interrupted; {counts['finished']} finished replays {kept}", file=sys.stderr)
        return 130
    finally:
        if main:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
    summary["plot"] = str(out)
    total = args.seeds * len(methods)
    summary["cache"] = None if store is None else {"folder": str(store.folder), "read_back": total - counts["to_run"],
                                                   "run_now": counts["to_run"]}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"table {cmp.table}, latency from {cmp.source!r}, {cmp.seeds} seeds per method, {cmp.workers} "
              f"workers, the grid = {cmp.grid_epochs} epochs")
        print(text_table(summary))
        print(f"wrote {out}")
        if store is not None:
            print(f"replays kept in {store.folder} ({total - counts['to_run']} of {total} read back from there; "
                  "--no-cache: keep none)")
        else:
            print("replays not kept (--no-cache)")
    return 0


RECORDED_TABLES = Path(raysearch.__file__).resolve().parents[1] / "benchmarks" / "tables"  # A and B, in the repository


def _table_path(text: str) -> Path:
    """A table file, or the name of one of the recorded tables in benchmarks/tables (A, B)."""
    path = Path(text)
    if not path.exists() and "/" not in text:
        bundled = RECORDED_TABLES / f"{text}.jsonl.gz"
        if bundled.is_file():
            return bundled
    if not path.is_file():
        raise FileNotFoundError(f"--table {text}: no such table file (a .jsonl[.gz] recorded by "
                                "benchmarks/record_table.py, or A / B for the recorded ones)")
    return path


def cmd_optimize(args: argparse.Namespace) -> int:
    from raysearch.optimize.driver import optimize, result_json

    opts = optimize_options(args)
    res = optimize(opts)
    if args.json:
        print(result_json(res, opts.search.requirement))
    return 0 if res.candidates else 1
