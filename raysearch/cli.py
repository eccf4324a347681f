"""`raysearch`: the command line of the segmentation core.

    raysearch summary --a 0.125 --t 2 --r 1 --pp 0 --res 512 [--json]
    raysearch synth OUT --n 400 --seed 0
    raysearch train --data synthetic --epochs 5 --res 128 --out runs/quick
    raysearch evaluate --onnx runs/quick/model.onnx --data synthetic --split test --json
    raysearch export --checkpoint runs/quick/best.pt --out model.onnx
    raysearch report --experiment raysearch --out report.html
    raysearch pick --max-latency-ms 33 --min-iou 0.95
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from raysearch.records import names as obj  # noqa: E402
from raysearch.search.presets import QUICK, STUDY  # noqa: E402

log = logging.getLogger("raysearch")

DATA_HELP = ("dataset: a folder with <split>/images + <split>/labels (like ../shared/data/packages), a folder "
             "with images + labels, a label-studio COCO export (result.json), or 'synthetic[:N]' (the bundled "
             "generator, N samples in all, default 400)")


class Parser(argparse.ArgumentParser):
    """A usage mistake is one line (naming the flag and what it expects) and exit status 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (--help explains every option)\n")


def number(kind: type = int, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
           hi_open: bool = False, what: str = "") -> Callable[[str], Any]:
    """An argparse type: a ``kind`` number within the bounds, or a message saying what is expected."""
    span = " and ".join(x for x in (
        None if lo is None else f"{'>' if lo_open else '>='} {lo:g}",
        None if hi is None else f"{'<' if hi_open else '<='} {hi:g}") if x)
    expected = what or f"{'an integer' if kind is int else 'a number'}{' ' + span if span else ''}"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {expected}") from None
        if value != value or value in (float("inf"), float("-inf")) or \
                (lo is not None and (value <= lo if lo_open else value < lo)) or \
                (hi is not None and (value >= hi if hi_open else value > hi)):
            raise argparse.ArgumentTypeError(f"{text!r} is not {expected}")
        return value

    return parse


POSITIVE, COUNT = number(int, 1), number(int, 0)
MAX_INPUT_SIDE = 4096  # larger inputs need tens of GB to train: refused on the command line


def hw_arg(text: str) -> tuple[int, int]:
    """An input size on the command line, N or HxW: parsed here, once, into (h, w)."""
    from raysearch.models import parse_hw

    try:
        hw = parse_hw(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if not all(0 < side <= MAX_INPUT_SIDE for side in hw):
        raise argparse.ArgumentTypeError(f"input size {text!r}: each side must be in 1..{MAX_INPUT_SIDE}")
    return hw


def nonempty(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is empty")
    return text


def add_spec_args(p: argparse.ArgumentParser, res_default: str | None = None,
                  skip: tuple[str, ...] = ("precision", "extra")) -> None:
    """One flag per `ModelSpec` field (name, type, default and help from the field itself;
    ``input_hw`` is ``--res``)."""
    from dataclasses import fields

    from raysearch.models import ModelSpec

    g = p.add_argument_group("model (the fields of ModelSpec)")
    for f in fields(ModelSpec):
        if f.name in skip:
            continue
        meta = f.metadata
        flag = "--" + meta.get("flag", f.name).replace("_", "-")
        if f.name == "input_hw":
            default = hw_arg(res_default) if res_default else f.default
            g.add_argument(flag, dest=f.name, type=hw_arg, default=default,
                           help=f"{meta['help']} (default {'x'.join(map(str, default))})")
        else:
            g.add_argument(flag, dest=f.name, type=type(f.default), default=f.default, choices=meta.get("choices"),
                           help=meta["help"] + " (default %(default)s)")


def spec_from_args(args: argparse.Namespace):
    from dataclasses import fields

    from raysearch.models import ModelSpec

    return ModelSpec(**{f.name: getattr(args, f.name) for f in fields(ModelSpec) if hasattr(args, f.name)})


def add_threshold_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--threshold", type=float, default=None, metavar="P",
                   help="foreground when the probability exceeds P (default 0.5)")
    g.add_argument("--logit-threshold", type=float, default=None, metavar="L",
                   help="foreground when the raw logit exceeds L; the study's published IoUs use 0.5")


def logit_threshold(args: argparse.Namespace) -> float:
    from raysearch.training.evaluate import prob_to_logit

    if args.logit_threshold is not None:
        return args.logit_threshold
    return prob_to_logit(args.threshold if args.threshold is not None else 0.5)


# ---- commands ------------------------------------------------------------------------------------
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
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(f"{spec.name}: test IoU {test.iou:.4f} (onnxruntime, {test.n_images} images, best epoch "
          f"{result.best_epoch}/{len(result.history)}) -> {report.path}, {out / 'metrics.json'}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from raysearch.data import open_split
    from raysearch.training.evaluate import evaluate_onnx

    source = open_split(args.data, args.split, seed=args.seed, limit=args.limit)
    res = evaluate_onnx(args.onnx, source, logit_threshold=logit_threshold(args), threads=args.threads,
                        progress=not args.json)
    if args.json:
        print(res.to_json(per_image=args.per_image))
    else:
        print(f"{args.onnx} on {args.data} [{args.split}, {res.n_images} images]")
        for k, v in res.metrics().items():
            print(f"  {k:<16} {v:.4f}" if isinstance(v, float) else f"  {k:<16} {v}")
    return 0


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

    return MlflowClient(tracking_uri(args.tracking_uri))


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
    return 0


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
        return 0 if rows else 1
    if not rows:
        print("no candidate meets the requirements; `raysearch report` shows the closest", file=sys.stderr)
        return 1
    for i, r in enumerate(rows, 1):
        print(f"{i}. {r.name}  IoU {r.iou:.4f}  {r.latency_ms:.3f} ms on {r.device_class or '?'}  "
              f"({r.stage}, run {r.run_id})\n"
              f"   {r.onnx}")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from raysearch.search.replay.compare import compare, plot, text_table
    from raysearch.search.replay.methods import METHOD_KEYS
    from raysearch.search.replay.table import load

    table = _table_path(args.table)
    load(table).require_complete(args.latency_source)  # a bad or unfinished table: one line, before anything runs
    methods = [METHOD_KEYS[k] for k in args.methods] if args.methods else list(METHOD_KEYS.values())
    jobs = args.jobs or len(os.sched_getaffinity(0))
    with tqdm(total=args.seeds * len(methods), desc=f"replaying {table.name}", unit="search",
              disable=args.quiet, file=sys.stderr) as bar:
        cmp = compare(table, methods=methods, seeds=args.seeds, source=args.latency_source, workers=args.workers,
                      budgets=args.budgets, jobs=jobs, max_latency_ms=args.max_latency_ms,
                      progress=lambda n, total: bar.update(n - bar.n), cache=args.cache)
    summary = cmp.summary()
    out = plot(cmp, args.plot or f"replay-{cmp.table}-{cmp.source}.png")
    summary["plot"] = str(out)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"table {cmp.table}, latency from {cmp.source!r}, {cmp.seeds} seeds per method, {cmp.workers} "
              f"workers, the grid = {cmp.grid_epochs} epochs")
        print(text_table(summary))
        print(f"wrote {out}")
    return 0


def _table_path(text: str) -> Path:
    """A table file, or the name of one of the recorded tables in benchmarks/tables (A, B)."""
    path = Path(text)
    if not path.exists() and "/" not in text:
        bundled = Path(__file__).resolve().parents[1] / "benchmarks" / "tables" / f"{text}.jsonl.gz"
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


def add_mlflow_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--experiment", default="raysearch", help="MLflow experiment (default %(default)s)")
    p.add_argument("--run-id", help="only this search (its parent run id)")
    p.add_argument("--optimization", help="only the stage searches of this `raysearch optimize` run (its name)")
    p.add_argument("--device-class", help="only candidates measured on this device class (e.g. rpi4; a quick "
                                          "local run's are 'local')")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else runs/mlflow.db)")
    p.add_argument("--max-latency-ms", type=number(float, 0, lo_open=True), help="latency requirement")
    p.add_argument("--min-iou", type=number(float, 0, 1), help="IoU requirement")


# ---- the stage scripts (python raysearch/stageN.py) --------------------------------------------------------------------------------
def build_stage_parser(stage: int) -> argparse.ArgumentParser:
    from raysearch.search import stages
    from raysearch.search.driver import MODES

    p = Parser(
        prog=f"python raysearch/stage{stage}.py", description=stages.DESCRIPTIONS[stage] + "\n\n" + stages.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("what to run")
    g.add_argument("--mode", choices=MODES, default="grid",
                   help="grid: the study's exact grid, every trial to the end; search: a multi-objective search "
                        "over the same space, --sampler and --scheduler below (default %(default)s)")
    g.add_argument("--num-samples", type=POSITIVE, default=10, help="trials of --mode search (default %(default)s)")
    g.add_argument("--quick", action="store_true", help="small inputs, 8 epochs, 120 synthetic images: minutes on 2 CPUs")
    g.add_argument("--res", type=hw_arg, nargs="+", help="input sizes (N or HxW) to use instead of the stage's")
    g.add_argument("--epochs", type=POSITIVE, help="training epochs per trial (default 400, or 8 with --quick)")
    g.add_argument("--seed", type=COUNT, default=0)
    add_search_args(p)
    g = p.add_argument_group("this search")
    g.add_argument("--name", help="search name (default stageN-MODE-TIMESTAMP)")
    g.add_argument("--resume", action="store_true", help="continue an interrupted search: --name, or the latest "
                                                         "search of this stage and mode")
    g.add_argument("-v", "--verbose", action="store_true", help="debug logging, tracebacks, and Ray Tune's own "
                                                                 "per-trial tables instead of the concise view")
    return p


def add_search_args(p: argparse.ArgumentParser) -> None:
    """Requirements, data, latency, tracking and cluster options (the stages' and `raysearch optimize`'s)."""
    from raysearch.search.driver import SAMPLERS, SCHEDULERS

    g = p.add_argument_group("requirements (mark which candidates qualify; latency also prunes before training)")
    g.add_argument("--max-latency-ms", type=number(float, 0, lo_open=True), help="latency budget on the device; slower trials are pruned "
                                                        "before any training")
    g.add_argument("--min-iou", type=number(float, 0, 1), help="IoU floor")
    g = p.add_argument_group("data")
    g.add_argument("--data", help="dataset folder, COCO export, or synthetic[:N] (default: synthetic, "
                                  f"{QUICK.data} with --quick)")
    g.add_argument("--limit", type=POSITIVE, help="at most N images per split")
    g.add_argument("--logit-threshold", type=number(float), default=0.0,
                   help="foreground when the logit exceeds this (0 = probability 0.5; the study used 0.5)")
    g = p.add_argument_group("latency (benchd)")
    g.add_argument("--farm", help="farm inventory (clusters/farm.yaml) or HOST:PORT of one benchd "
                                  "(default: a local benchd on 127.0.0.1 for the duration)")
    g.add_argument("--device-class", default="local", help="device class to measure on (default %(default)s)")
    g.add_argument("--latency-stat", choices=("p50", "mean"), default="p50",
                   help="which figure is the latency objective: p50, or the study's mean (default %(default)s)")
    g.add_argument("--bench-runs", type=POSITIVE, help=f"timed runs per benchmark (default {STUDY.bench_runs}, "
                                                  f"{QUICK.bench_runs} with --quick)")
    g.add_argument("--bench-warmup", type=COUNT, help=f"discarded warm-up runs (default {STUDY.bench_warmup}, "
                                                    f"{QUICK.bench_warmup} with --quick)")
    g.add_argument("--bench-threads", type=COUNT, default=0,
                   help="onnxruntime intra-op threads (0: all the device's cores; 1 on the core reserved for "
                        "a local benchd)")
    g.add_argument("--bench-precision", type=number(float, 0, 1, hi_open=True), default=0.02,
                   help="after --bench-runs, keep timing until the 95%% CI of the p50 is within +-this share "
                        "of it (default %(default)s; 0: exactly --bench-runs)")
    g.add_argument("--bench-min-s", type=number(float, 0),
                   help=f"time each model at least this long, whatever the precision says (default "
                        f"{STUDY.bench_min_s:g}, {QUICK.bench_min_s:g} with --quick): the runs of a fast model "
                        f"are not independent, a window of milliseconds is precise about that moment only")
    g.add_argument("--bench-max-s", type=number(float, 0, lo_open=True), default=30.0,
                   help="stop chasing --bench-precision after this many seconds per model (default %(default)s)")
    g = p.add_argument_group("tracking and storage")
    g.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else runs/mlflow.db)")
    g.add_argument("--experiment", type=nonempty, default="raysearch", help="MLflow experiment (default %(default)s)")
    g.add_argument("--storage-path", type=nonempty, default="runs/ray", help="Ray Tune storage: a local or shared folder, or an "
                                                              "object-store URI (default %(default)s)")
    g = p.add_argument_group("cluster")
    g.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    g.add_argument("--concurrency", type=POSITIVE, help="trials at once (default: as many as resources allow)")
    g.add_argument("--cpus-per-trial", type=number(float, 0, lo_open=True), default=1.0)
    g.add_argument("--gpus-per-trial", type=number(float, 0), help="GPUs (or a fraction) per trial (default 1 when the "
                                                        "cluster has GPUs, else 0)")
    g.add_argument("--amp", action="store_true", default=None,
                   help="train trials on a GPU in mixed precision (faster, but not the study's numbers; default: "
                        "fp32, as the study trained; logged as the amp param and part of the result cache key)")
    g.add_argument("--max-failures", type=COUNT, default=1, help="retries of a failed trial (default %(default)s)")
    g = p.add_argument_group("search (--mode search)")
    g.add_argument("--sampler", choices=SAMPLERS, default="latency-first",
                   help="latency-first: measure every configuration's latency before training (seconds each on "
                        "the farm), then train next the configuration expected to add the most hypervolume to the "
                        "front, each once; it beat every other method at every budget on the recorded tables "
                        "(BENCHMARKS.md). tpe: Optuna's multi-objective TPE; gp: Optuna's Gaussian-process sampler "
                        "(LogEHVI); nsga2: a genetic algorithm, from about a hundred trials; random: the baseline "
                        "(default %(default)s; seeded by --seed)")
    g.add_argument("--scheduler", choices=SCHEDULERS, default="front",
                   help="early stopping. front: stop a trial once its validation IoU, plus the most a finished trial "
                        "gained after that epoch, cannot beat a faster trained model (the default: with latency-first "
                        "it scored best); none: every trial to the end; pareto-asha: successive halving "
                        "that ranks the trials at each rung by validation IoU and measured latency together; asha: "
                        "Ray Tune's ASHA on validation IoU only (for comparison) (default %(default)s)")
    g.add_argument("--grace-period", type=POSITIVE, default=1, help="epochs before a trial can be stopped (default "
                                                               "%(default)s); rungs at grace x factor^k epochs")
    g.add_argument("--reduction-factor", type=number(float, 1, lo_open=True), default=3.0,
                   help="of the trials reaching a rung, the best 1/factor go on (default %(default)s)")
    g.add_argument("--hv-ref-latency-ms", type=number(float, 0, lo_open=True), help="hypervolume reference latency, fixed to compare "
                                                           "searches (default: --max-latency-ms, else the "
                                                           "largest latency the search measured)")


def search_options(args: argparse.Namespace):
    from raysearch.search.driver import SearchOptions
    from raysearch.search.presets import preset

    keys = SearchOptions.__dataclass_fields__
    kw = {k: v for k, v in vars(args).items() if k in keys and v is not None}
    kw["data"] = args.data or preset(args.quick).data
    return SearchOptions(**kw)


def stage_main(stage: int, argv: list[str] | None = None) -> int:
    from raysearch.data import check_data
    from raysearch.search.presets import preset
    from raysearch.search.stages import run_stage

    args = build_stage_parser(stage).parse_args(argv)
    _logging(args.verbose)
    try:
        opts = search_options(args)
        check_data(opts.data, limit=opts.limit, seed=opts.seed)  # before anything is opened or started
        epochs = args.epochs if args.epochs is not None else preset(opts.quick).epochs
        outcome = run_stage(stage, opts, epochs, args.res)
    except Exception as e:
        line = str(e) if isinstance(e, (ValueError, FileNotFoundError)) else store_error(e, args.tracking_uri)
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:  # every run was ended before this came up
            line = f"no space left on the device while writing {e.filename or 'the search files'}; every open " \
                   f"MLflow run was ended KILLED. Free some space, then continue with --resume."
        if line is None or args.verbose:
            raise
        print(f"stage{stage}: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"stage{stage}: interrupted; every open MLflow run was ended as KILLED. Continue with --resume.",
              file=sys.stderr)
        return 130
    quals = outcome.qualifying(opts.requirement)
    if opts.requirement.constrained:
        print(f"{len(quals)} Pareto candidate(s) meet the requirements" if quals else
              "no candidate meets the requirements (see the table above for the closest)")
    print(f"MLflow parent run {outcome.parent_run_id} ({opts.tracking}, experiment {opts.experiment!r})")
    return 1 if outcome.errors else 0


OPTIMIZE_EPILOG = """\
continuing:
  An optimization is named optimize-MODEL-EFFORT-<hash of what decides its outcome: model, data,
  requirements, effort, epochs, sizes, seed, ...>, printed on the first line; its state is in
  <--storage-path>/optimize/NAME.json. Running the same command again from the same folder
  (after Ctrl-C, `kill`, `ray job stop`, a crash or an expired --time-budget) continues it;
  --fresh starts a new one (named NAME-<timestamp>; continue that one with --name).

output:
  The table of every candidate, the qualifying Pareto candidates best IoU first with their
  model.onnx, an HTML report (<--storage-path>/optimize/NAME.html, also on the optimization's
  MLflow run), and the registered model raysearch-NAME (a version per qualifying candidate;
  aliases best, fastest, rank-1, rank-2, ...). Exit status 0 when something qualifies, 1 when
  nothing does (the closest candidates and what each misses are shown), 2 on bad input.
"""


# ---- raysearch optimize -------------------------------------------------------------------------------
def parse_duration(text: str) -> float:
    """'90' (seconds), '90s', '45m', '2h', '1h30m' -> seconds."""
    import re

    t = str(text).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", t):
        return float(t)
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([hms])", t)
    if not parts or re.sub(r"(\d+(?:\.\d+)?)\s*([hms])", "", t).strip():
        raise ValueError(f"--time-budget {text!r} is not a duration: expected e.g. 90s, 45m, 2h or 1h30m")
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)


def _duration_arg(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--time-budget ")) from None


def add_optimize_args(p: argparse.ArgumentParser) -> None:
    from raysearch.optimize.options import EFFORTS
    from raysearch.optimize.planning import GRID_LIMIT

    g = p.add_argument_group("what to optimize")
    g.add_argument("--model", default="fastscnn", help="model family: fastscnn, bisenetv2, deeplabv3 or one "
                                                       "registered by --import (default %(default)s)")
    g.add_argument("--effort", choices=EFFORTS, default="intermediate",
                   help="entry: retrain the full model at each input size. intermediate: + the width multiplier a "
                        "at the best size, then the kept sizes x the best widths. expert: + every knob of the "
                        f"family (Fast-SCNN a, t, r, pp; searched when over {GRID_LIMIT} points), then int8 "
                        "(default %(default)s)")
    g.add_argument("--time-budget", type=_duration_arg, metavar="DURATION",
                   help="total for the whole optimization over all its runs (90s, 45m, 2h, 1h30m): at the deadline "
                        "it stops cleanly and reports the best so far; after a 2h budget ran out, --time-budget 3h "
                        "gives it one more hour (default: no limit)")
    g.add_argument("--epochs", type=POSITIVE, help=f"training epochs per candidate (default {STUDY.epochs}, "
                                              f"{QUICK.epochs} with --quick)")
    g.add_argument("--res", type=hw_arg, nargs="+", help="input sizes to try, N or HxW (default: the family's, "
                                                         f"{' '.join(map(str, STUDY.resolutions))} for the built-in "
                                                         f"ones; {' '.join(map(str, QUICK.resolutions))} with --quick)")
    g.add_argument("--int8", action=argparse.BooleanOptionalAction, default=None,
                   help="--int8 / --no-int8: also try int8-quantized candidates (default: only at expert)")
    g.add_argument("--y-channel", action="store_true", help="also try the Y channel of YCrCb as the only input "
                                                            "(the study found it always dominated)")
    g.add_argument("--trials-per-stage", type=POSITIVE, help="trials of a stage too big for a grid (default: a third "
                                                        f"of its points, at least {GRID_LIMIT})")
    g.add_argument("--quick", action="store_true", help="inputs 128/96/64, 8 epochs, 120 synthetic images, short "
                                                        "benchmarks: minutes on 2 CPUs")
    g.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import MODULE first (it registers your model family with register_family); repeatable")
    g.add_argument("--name", help="name of the optimization (default: derived from its settings)")
    g.add_argument("--fresh", action="store_true", help="start over instead of continuing an earlier run")
    g.add_argument("--seed", type=COUNT, default=0)
    add_search_args(p)


def optimize_options(args: argparse.Namespace):
    import importlib

    from raysearch.optimize.options import OptimizeOptions

    if args.imports and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # `--import my_models` finds ./my_models.py, as `python -m` would
    for module in args.imports:
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise ValueError(f"--import {module}: cannot import it ({e}); is it in the current folder or on "
                             f"PYTHONPATH?") from None
    return OptimizeOptions(
        model=args.model, effort=args.effort, search=search_options(args), time_budget_s=args.time_budget,
        epochs=args.epochs, res=tuple(args.res) if args.res else None, int8=args.int8, y_channel=args.y_channel,
        trials_per_stage=args.trials_per_stage, name=args.name, fresh=args.fresh)


# ---- parser --------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from raysearch.search.replay.methods import METHOD_KEYS

    p = Parser(prog="raysearch", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("summary", help="parameters, MACs and memory of a model variant",
                       description="Parameters (the study's convention and the executed ones), MACs and "
                                   "memory of a model variant, as the reference study reported them.")
    add_spec_args(s)
    s.add_argument("--json", action="store_true", help="print one JSON object (params_total, params_executed, "
                                                       "macs, input_mb, fwd_pass_mb)")
    s.set_defaults(func=cmd_summary)

    s = sub.add_parser("synth", help="write a synthetic conveyor-belt dataset",
                       description="Write a deterministic synthetic conveyor-belt dataset in the folder layout "
                                   "{train,val,test}/{images,labels} (split 75/10/15).")
    s.add_argument("out", help="output folder")
    s.add_argument("--n", type=number(int, 3), default=400, help="number of samples in all (default %(default)s)")
    s.add_argument("--seed", type=COUNT, default=0, help="seed; the same seed gives the same bytes (default %(default)s)")
    s.add_argument("--size", default="540x960", help="image size HxW (default %(default)s)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_synth)

    s = sub.add_parser("train", help="train with the study's recipe, export ONNX, measure test IoU",
                       description="Train a model with the study's recipe (BCE, Adam 0.01, batch 8, poly decay), "
                                   "keep the epoch with the lowest validation loss, export it to ONNX and measure "
                                   "its test IoU through onnxruntime. Writes best.pt, last.pt, model.onnx and "
                                   "metrics.json to --out.")
    add_spec_args(s, res_default="128")
    s.add_argument("--data", default="synthetic", help=DATA_HELP + " (default %(default)s)")
    s.add_argument("--limit", type=POSITIVE, default=None, help="use at most N samples per split")
    s.add_argument("--epochs", type=POSITIVE, default=400, help="default %(default)s (the study's)")
    s.add_argument("--batch-size", type=POSITIVE, default=8, help="default %(default)s")
    s.add_argument("--lr", type=number(float, 0, lo_open=True), default=0.01, help="Adam learning rate (default %(default)s)")
    s.add_argument("--seed", type=COUNT, default=0, help="default %(default)s")
    s.add_argument("--workers", type=COUNT, default=0, help="DataLoader workers (default %(default)s)")
    s.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default %(default)s)")
    s.add_argument("--amp", action="store_true", help="mixed precision on CUDA (default: fp32, as the study trained)")
    s.add_argument("--train-scale", type=number(float, 0, lo_open=True), default=None,
                   help="resize factor before the random crop (default: input size / 512, the study's)")
    s.add_argument("--exporter", default="torchscript", choices=("torchscript", "dynamo"), help="ONNX exporter")
    s.add_argument("--resume", action="store_true", help="continue from --out/last.pt")
    s.add_argument("--out", default="runs/train", help="output folder (default %(default)s)")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    add_threshold_args(s)
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("evaluate", help="test IoU of an ONNX model through onnxruntime",
                       description="Evaluate an ONNX model as the study did: resize each image to the model's "
                                   "input (read from the graph), threshold, resize back to the original size, "
                                   "foreground IoU per image, averaged.")
    s.add_argument("--onnx", required=True, help="the model file")
    s.add_argument("--data", default="synthetic", help=DATA_HELP + " (default %(default)s)")
    s.add_argument("--split", default="test", choices=("train", "val", "test"))
    s.add_argument("--limit", type=POSITIVE, default=None, help="evaluate at most N images")
    s.add_argument("--seed", type=COUNT, default=0, help="seed of the synthetic data (default %(default)s)")
    s.add_argument("--threads", type=POSITIVE, default=None, help="onnxruntime intra-op threads (default: all cores)")
    s.add_argument("--json", action="store_true", help="print the metrics as JSON")
    s.add_argument("--per-image", action="store_true", help="with --json: include every image's IoU")
    add_threshold_args(s)
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("export", help="export a checkpoint (or an untrained spec) to ONNX",
                       description="Export to one self-contained ONNX file (static H/W, dynamic batch, the spec in "
                                   "its metadata), checked against torch through onnxruntime.")
    s.add_argument("--checkpoint", help="a best.pt/last.pt written by `raysearch train`; without it the model "
                                        "described by the model flags is exported untrained")
    add_spec_args(s)
    s.add_argument("--exporter", default="torchscript", choices=("torchscript", "dynamo"), help="ONNX exporter")
    s.add_argument("--out", required=True, help="output .onnx path")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("report", help="Pareto tables and a self-contained HTML report of the searches",
                       description="Print each search's candidates and write one HTML file (plots and prediction "
                                   "overlays embedded) to send instead of an MLflow link.")
    add_mlflow_args(s)
    s.add_argument("--out", default="raysearch-report.html", help="HTML file to write (default %(default)s)")
    s.set_defaults(func=cmd_report)

    s = sub.add_parser("pick", help="the candidates that meet the requirements, best first",
                       description="The Pareto-optimal candidates of the experiment's searches that meet "
                                   "--max-latency-ms and --min-iou, best IoU first, with their ONNX files.")
    add_mlflow_args(s)
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=cmd_pick)

    from raysearch.optimize.options import EFFORTS

    s = sub.add_parser("optimize", help="requirements and effort in, qualifying candidate models out",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description=f"Run the optimization stages in order of cost for the effort level "
                                   f"({', '.join(EFFORTS)}) and hand back the candidates that meet --max-latency-ms "
                                   f"and --min-iou, registered in the MLflow model registry, with an HTML report. "
                                   f"Nothing qualifies: the closest candidates and what each misses.\n\n"
                                   "example:\n  raysearch optimize --model fastscnn --data DIR --max-latency-ms 33 "
                                   "--min-iou 0.95 --farm clusters/farm.yaml --device-class rpi4 --effort intermediate "
                                   "--time-budget 2h", epilog=OPTIMIZE_EPILOG)
    add_optimize_args(s)
    s.add_argument("--json", action="store_true", help="print the result as JSON at the end")
    s.set_defaults(func=cmd_optimize)
    s = sub.add_parser("replay", help="compare search methods on a recorded benchmark table, over many seeds",
                       description="Replay our own searches (the same samplers and schedulers as --mode search) "
                                   "against a table recorded by benchmarks/record_table.py instead of training: each "
                                   "method over --seeds seeds on a simulated cluster of --workers slots, its front's "
                                   "hypervolume as a share of the grid's at each budget (a share of the grid's "
                                   "training epochs), mean +- standard error, and a one-sided Mann-Whitney U test "
                                   "against random sampling without early stopping. Ends with a plot of the anytime "
                                   "curves.")
    s.add_argument("--table", required=True, help="the table file, or A / B for the recorded ones in benchmarks/tables")
    s.add_argument("--seeds", type=POSITIVE, default=20, help="replays per method (default %(default)s)")
    s.add_argument("--budgets", type=number(float, 0, 1, lo_open=True, what="a budget (a share of the grid's epochs in (0, 1])"), nargs="+", default=[0.1, 0.25, 0.5],
                   help="shares of the grid's training epochs to compare at (default %(default)s)")
    s.add_argument("--workers", type=POSITIVE, default=4, help="parallel trials of the simulated cluster "
                                                                   "(default %(default)s)")
    s.add_argument("--latency-source", default="host", help="the table's latency column (default %(default)s)")
    s.add_argument("--methods", nargs="+", choices=list(METHOD_KEYS), metavar="METHOD",
                   help="the methods to compare, of: " + ", ".join(METHOD_KEYS) + " (default: all)")
    s.add_argument("--max-latency-ms", type=number(float, 0, lo_open=True), help="latency budget: slower configurations are pruned untrained")
    s.add_argument("--jobs", type=POSITIVE, help="replays at once (default: one per CPU)")
    s.add_argument("--plot", help="the anytime-curve plot (default replay-TABLE-SOURCE.png)")
    s.add_argument("--cache", metavar="DIR", help="keep every finished replay in DIR and reuse it: a stopped "
                                                  "comparison resumes where it was (keyed by the table, method, "
                                                  "seed, settings and the Optuna and Ray versions; clear DIR after "
                                                  "changing the search code)")
    s.add_argument("--json", action="store_true", help="print one JSON document (for scripts)")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_replay)
    for s in sub.choices.values():  # `-v` after the command too (SUPPRESS: the top-level default stands)
        s.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                       help="debug logging and tracebacks")
    return p


def _logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if not verbose:  # the local benchd's per-upload lines are noise in a search's console (-v shows them)
        logging.getLogger("benchd").setLevel(logging.WARNING)
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # "Creating initial ... tables"


def store_error(e: BaseException, uri: str | None) -> str | None:
    """One line for a tracking store that cannot answer (an unknown run, a file that is not an
    MLflow database, a server that does not answer), naming the store; None for anything else."""
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError

    from raysearch.tracking.runs import tracking_uri

    if not isinstance(e, (SQLAlchemyError, MlflowException)):
        return None
    store = tracking_uri(uri)
    if isinstance(e, SQLAlchemyError):
        cause = str(getattr(e, "orig", None) or e).splitlines()[0]
        return f"the tracking store {store} is not a readable MLflow database ({cause})"
    if isinstance(e, MlflowException):
        return f"{str(e.message).splitlines()[0][:300]} (tracking store {store})"
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _logging(args.verbose)
    # reading back (pick, report): a store that does not answer is said in seconds. Only for the
    # call: this process may start searches afterwards (tests, the rehearsal), and a search must ride
    # out a tracking server that is down for a while, as MLflow's default retries do.
    quick = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"} \
        if args.command in ("pick", "report") else {}
    saved = {k: os.environ.get(k) for k in quick}
    os.environ.update({k: v for k, v in quick.items() if saved[k] is None})
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as e:  # one clear line, no traceback (-v for one)
        if args.verbose:
            raise
        print(f"raysearch {args.command}: error: {store_error(e, getattr(args, 'tracking_uri', None)) or e}",
              file=sys.stderr)
        return 2
    except Exception as e:
        line = store_error(e, getattr(args, "tracking_uri", None))
        if line is None or args.verbose:
            raise
        print(f"raysearch {args.command}: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = "; run the same command again to continue (--fresh to start over)" if args.command == "optimize" else ""
        print(f"raysearch {args.command}: interrupted{hint}", file=sys.stderr)
        return 130
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)


if __name__ == "__main__":
    sys.exit(main())
