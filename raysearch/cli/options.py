"""The flags shared by raysearch's commands and the stage scripts, and their checks: every value is checked when parsed (argparse types that name the flag and what was expected), before anything starts."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import TYPE_CHECKING, Any, Callable

from raysearch.records import names as obj
from raysearch.search.presets import QUICK, STUDY, preset

if TYPE_CHECKING:
    from raysearch.search.options import SearchOptions

# The option checks import the model and search modules inside the functions that need them:
# building a parser must not import Ray or Optuna (`raysearch --help` starts in a fraction of a second).

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


def knob_arg(text: str) -> tuple[str, Any]:
    """``--space KNOB=VALUES``: a knob and its listed values or range (`raysearch.search.options.parse_knob`)."""
    from raysearch.search.options import parse_knob

    try:
        return parse_knob(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


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
            default: tuple[int, int] = hw_arg(res_default) if res_default else f.default  # type: ignore[assignment]
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


def add_search_args(p: argparse.ArgumentParser) -> None:
    """Requirements, data, latency, tracking and cluster options (the stages' and `raysearch optimize`'s)."""
    from raysearch.search.methods import LATENCY_SWEEPS, SAMPLERS, SCHEDULERS

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
    # each --bench-X is benchd's BenchmarkRequest.X (the older short flags stay as aliases)
    g.add_argument("--bench-runs", type=POSITIVE, help=f"timed runs per benchmark (default {STUDY.bench_runs}, "
                                                  f"{QUICK.bench_runs} with --quick)")
    g.add_argument("--bench-warmup-runs", "--bench-warmup", type=COUNT,
                   help=f"discarded warm-up runs (default {STUDY.bench_warmup_runs}, {QUICK.bench_warmup_runs} with "
                        "--quick)")
    g.add_argument("--bench-intra-op-threads", "--bench-threads", type=COUNT, default=0,
                   help="onnxruntime intra-op threads (0: all the device's cores; 1 on the core reserved for "
                        "a local benchd)")
    g.add_argument("--bench-target-rel-ci", "--bench-precision", type=number(float, 0, 1, hi_open=True), default=0.02,
                   help="after --bench-runs, keep timing until the 95%% CI of the p50 is within +-this share "
                        "of it (default %(default)s; 0: exactly --bench-runs)")
    g.add_argument("--bench-min-duration-s", "--bench-min-s", type=number(float, 0),
                   help=f"time each model at least this long, whatever the precision says (default "
                        f"{STUDY.bench_min_duration_s:g}, {QUICK.bench_min_duration_s:g} with --quick): the runs of a "
                        "fast model are not independent, a window of milliseconds is precise about that moment only")
    g.add_argument("--bench-max-duration-s", "--bench-max-s", type=number(float, 0, lo_open=True), default=30.0,
                   help="stop chasing --bench-target-rel-ci after this many seconds per model (default %(default)s)")
    g.add_argument("--device-iou", choices=obj.DEVICE_IOU_MODES, default="int8",
                   help="whose test IoU the device computes with its own onnxruntime (benchd Predict), beside the "
                        "host's: int8 candidates (their kernels differ by CPU), all, or off; where measured, the "
                        "device's IoU is the one candidates are ranked by (default %(default)s)")
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
                   help="latency-first: know every configuration's latency before training (see "
                        "--latency-sweep), then train next the configuration expected to add the most hypervolume to the "
                        "front, each once; it beat every other method at every budget on the recorded tables "
                        "(BENCHMARKS.md). tpe: Optuna's multi-objective TPE; gp: Optuna's Gaussian-process sampler "
                        "(LogEHVI); nsga2: a genetic algorithm, from about a hundred trials; random: the baseline "
                        "(default %(default)s; seeded by --seed)")
    g.add_argument("--scheduler", choices=SCHEDULERS, default="none",
                   help="early stopping. none: every trial to the end (the default: on the recorded tables, 100-epoch "
                        "curves included, no rule reached the front with fewer epochs and every one lost some of it, "
                        "BENCHMARKS.md); front: stop a trial once its best validation IoU, plus the most a finished "
                        "trial gained after that epoch, cannot beat a faster trained model (a sixth to a third fewer "
                        "epochs when a search trains its whole space); pareto-asha: successive halving "
                        "that ranks the trials at each rung by validation IoU and measured latency together; asha: "
                        "Ray Tune's ASHA on validation IoU only (for comparison) (default %(default)s)")
    g.add_argument("--latency-sweep", choices=LATENCY_SWEEPS, default="auto",
                   help="how latency-first learns latencies before training. all: measure every configuration "
                        "first (at most 2,000; seconds each on the farm); needed: a latency model of the device "
                        "class (fitted on what the latency cache holds) predicts every latency with an uncertainty, "
                        "and the farm measures only the configurations whose latency could change which one is "
                        "trained next (any space size; on the recorded tables it measured about a quarter of the "
                        "space and scored 0.004 lower early on, BENCHMARKS.md); auto: all in a listed space of up to "
                        "2,000 configurations, needed beyond and for a continuous knob (default %(default)s)")
    g.add_argument("--grace-period", type=POSITIVE, default=1, help="epochs before a trial can be stopped (default "
                                                               "%(default)s); rungs at grace x factor^k epochs")
    g.add_argument("--reduction-factor", type=number(float, 1, lo_open=True), default=3.0,
                   help="of the trials reaching a rung, the best 1/factor go on (default %(default)s)")
    g.add_argument("--hv-ref-latency-ms", type=number(float, 0, lo_open=True), help="hypervolume reference latency, fixed to compare "
                                                           "searches (default: --max-latency-ms, else the "
                                                           "largest latency the search measured)")


def search_options(args: argparse.Namespace) -> SearchOptions:
    """The flags' values, grouped (a flag left out keeps the option's default)."""
    from raysearch.search.options import SearchOptions

    keys = SearchOptions().flags()
    kw = {k: v for k, v in vars(args).items() if k in keys and v is not None}
    kw["data"] = args.data or preset(args.quick).data
    return SearchOptions.from_flags(**kw)


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
