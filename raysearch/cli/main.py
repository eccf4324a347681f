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
import logging
import os
import sys

from benchd.errors import BenchError, FarmError
from raysearch.cli.commands import (
    cmd_evaluate,
    cmd_export,
    cmd_latency,
    cmd_optimize,
    cmd_pick,
    cmd_replay,
    cmd_report,
    cmd_summary,
    cmd_synth,
    cmd_train,
)
from raysearch.cli.options import (
    COUNT,
    DATA_HELP,
    OPTIMIZE_EPILOG,
    POSITIVE,
    Parser,
    add_mlflow_args,
    add_optimize_args,
    add_spec_args,
    add_threshold_args,
    number,
)

log = logging.getLogger("raysearch")

MAX_REPLAY_SEEDS = 1000  # a replay's results are held in memory: 10^12 seeds grew to 24 GB before the kernel stepped in


def build_parser() -> argparse.ArgumentParser:
    from raysearch.cli.commands import DEFAULT_REPLAY_CACHE, duration
    from raysearch.replay.methods import (
        DEFAULT_METHODS,
        METHOD_GROUPS,
        METHOD_KEYS,
        SLOW_METHODS,
        seconds_per_seed,
    )
    from raysearch.search.device_iou import DEFAULT_TOLERANCE

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
    g = s.add_argument_group("on the device (benchd Predict: the device's own onnxruntime computes the masks)")
    g.add_argument("--farm", help="farm inventory (clusters/farm.yaml) or HOST:PORT of one benchd: evaluate there, "
                                  "and on this host beside it, and say where they disagree")
    g.add_argument("--device-class", default="local", help="device class to evaluate on (default %(default)s)")
    g.add_argument("--tolerance", type=number(float, 0), default=DEFAULT_TOLERANCE,
                   help="flag a device IoU that differs from the host's by more than this (default %(default)s); "
                        "the exit status is 3 when it does")
    g.add_argument("--timeout-s", type=number(float, 0, lo_open=True), default=600.0,
                   help="give up when no device has run a batch within this many seconds (default %(default)s)")
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

    s = sub.add_parser("latency", help="what the latency cache holds and how well the latency model predicts it",
                       description="The latencies searches measured (the latency cache), by device class and "
                                   "benchmark settings, and the error of the latency model that latency-first fits on "
                                   "them: each measurement predicted from the others (5-fold), against the measured.")
    s.add_argument("--cache", default="runs/ray/latency_cache",
                   help="the latency cache: STORAGE/latency_cache of the searches (default %(default)s)")
    s.add_argument("--device-class", help="only this device class")
    s.set_defaults(func=cmd_latency)

    s = sub.add_parser("report", help="Pareto tables and a self-contained HTML report of the searches",
                       description="Print each search's candidates and write one HTML file (plots and prediction "
                                   "overlays embedded) to send instead of an MLflow link.")
    add_mlflow_args(s)
    s.add_argument("--out", default="raysearch-report.html", help="HTML file to write (default %(default)s)")
    s.add_argument("--front", metavar="HTML",
                   help="the interactive page of every trial (plotly: hover for a configuration, click for its "
                        "MLflow run, the requirement as sliders, parallel coordinates, which knob drives IoU and "
                        "latency; default: beside --out, as NAME-front.html)")
    s.set_defaults(func=cmd_report)

    s = sub.add_parser("pick", help="the candidates that meet the requirements, best first",
                       description="The Pareto-optimal candidates of the experiment's searches that meet "
                                   "--max-latency-ms and --min-iou, best IoU first, with their ONNX files.")
    add_mlflow_args(s)
    s.add_argument("--json", action="store_true", help="print JSON")
    s.add_argument("--bundle", metavar="DIR",
                   help="write what a device needs to run the best candidate into DIR: its ONNX file, model.json "
                        "(spec, preprocessing, threshold, measured figures) and a runnable predict.py (numpy + "
                        "onnxruntime only)")
    s.add_argument("--bundle-rank", type=POSITIVE, default=1, metavar="N",
                   help="bundle the N-th candidate of the list instead of the first (default %(default)s)")
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
    s.add_argument("--seeds", type=number(int, 1, MAX_REPLAY_SEEDS), default=20,
                   help=f"replays per method, at most {MAX_REPLAY_SEEDS} (default %(default)s)")
    s.add_argument("--budgets", type=number(float, 0, 1, lo_open=True, what="a budget (a share of the grid's epochs in (0, 1])"), nargs="+", default=[0.1, 0.25, 0.5],
                   help="shares of the grid's training epochs to compare at (default %(default)s)")
    s.add_argument("--workers", type=POSITIVE, default=4, help="parallel trials of the simulated cluster "
                                                                   "(default %(default)s)")
    s.add_argument("--latency-source", default="host", help="the table's latency column (default %(default)s)")
    s.add_argument("--methods", nargs="+", choices=[*METHOD_KEYS, *METHOD_GROUPS], metavar="METHOD",
                   help="the methods to compare (keys, or the groups 'default' and 'all'). Default: the fast "
                        "ones, " + ", ".join(m.key for m in DEFAULT_METHODS) + " (table A's 20 seeds: "
                        "about a minute on 2 cores). Slow, on request (an estimate is printed first): "
                        + ", ".join(f"{m.key} (~{duration(seconds_per_seed(m))} per seed on table A)"
                                    for m in SLOW_METHODS) + "; e.g. --methods default gp, or --methods all")
    s.add_argument("--max-latency-ms", type=number(float, 0, lo_open=True), help="latency budget: slower configurations are pruned untrained")
    s.add_argument("--jobs", type=POSITIVE, help="replays at once (default: one per CPU)")
    s.add_argument("--plot", help="the anytime-curve plot (default replay-TABLE-SOURCE.png)")
    kept = s.add_mutually_exclusive_group()
    kept.add_argument("--cache", metavar="DIR", help="keep every finished replay in DIR and reuse it: a stopped "
                                                     "comparison (Ctrl-C) resumes where it was (keyed by the table, "
                                                     "method, seed, settings and the Optuna and Ray versions; clear "
                                                     f"DIR after changing the search code; default {DEFAULT_REPLAY_CACHE})")
    kept.add_argument("--no-cache", action="store_true", help="keep no replay and read none back")
    s.add_argument("--json", action="store_true", help="print one JSON document (for scripts)")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_replay)
    for s in sub.choices.values():  # `-v` after the command too (SUPPRESS: the top-level default stands)
        s.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                       help="debug logging and tracebacks")
    return p


def configure_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if not verbose:  # the local benchd's per-upload lines are noise in a search's console (-v shows them)
        logging.getLogger("benchd").setLevel(logging.WARNING)
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # "Creating initial ... tables"
        logging.getLogger("raysearch.training.export").setLevel(logging.WARNING)  # a line per export in a sweep


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
        if "locked" in cause or "busy" in cause:
            return f"the tracking store {store} is busy: another process holds its lock ({cause}); try again"
        return f"the tracking store {store} is not a readable MLflow database ({cause})"
    if isinstance(e, MlflowException):
        return f"{str(e.message).splitlines()[0][:300]} (tracking store {store})"
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    # reading back (pick, report): a store that does not answer is said in seconds. Only for the
    # call: this process may start searches afterwards (tests, the rehearsal), and a search must ride
    # out a tracking server that is down for a while, as MLflow's default retries do.
    quick = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"} \
        if args.command in ("pick", "report") else {}
    saved = {k: os.environ.get(k) for k in quick}
    os.environ.update({k: v for k, v in quick.items() if saved[k] is None})
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError, BenchError, FarmError) as e:  # one line (-v: a traceback)
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

