"""The stage scripts' command line (`python raysearch/stageN.py ...`): the flags, then the search, one line for a user's mistake."""

from __future__ import annotations

import argparse
import errno
import logging
import sys

from raysearch.cli.main import configure_logging, store_error
from raysearch.cli.options import COUNT, POSITIVE, Parser, add_search_args, hw_arg, knob_arg, search_options

# The stages and the search are imported when a stage runs, not when its parser is built (--help).

log = logging.getLogger("raysearch")


def build_stage_parser(stage: int) -> argparse.ArgumentParser:
    from raysearch.search import stages
    from raysearch.search.options import MODES

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
    g.add_argument("--space", type=knob_arg, action="append", metavar="KNOB=VALUES",
                   help="search KNOB over VALUES instead of the stage's (stages 2-6; repeat for more knobs): a list "
                        "(t=6,4,2), every step of a range (input_hw=64:512:32) or, with --mode search, any number "
                        "in a range (a=0.125:1; latency-first takes 9 evenly spaced values of it)")
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


def _print_savings(opts, stage: int, outcome) -> None:
    """What the search saved against the whole grid (and its share of a grid trained before)."""
    from mlflow.tracking import MlflowClient

    from raysearch.reporting.savings import savings_lines

    try:
        lines = savings_lines(MlflowClient(opts.tracking.store()), outcome.parent_run_id, f"stage{stage}", outcome.rows,
                              epochs_spent=outcome.epochs_spent, space_size=outcome.space_size, epochs=outcome.epochs,
                              measured_first=outcome.measured_first, grid=outcome.grid)
    except Exception as e:  # a summary must never turn a finished search into an error
        log.warning("could not compare the search with its grid: %s", e)
        return
    print("\n".join(lines))


def stage_main(stage: int, argv: list[str] | None = None) -> int:
    from raysearch.search.presets import preset
    from raysearch.search.runtime import preflight
    from raysearch.search.stages import run_stage

    args = build_stage_parser(stage).parse_args(argv)
    configure_logging(args.verbose)
    try:
        opts = search_options(args)
        preflight(opts)  # before anything is opened or started (stage 7 reads the store to plan)
        epochs = args.epochs if args.epochs is not None else preset(opts.quick).epochs
        outcome = run_stage(stage, opts, epochs, args.res, dict(args.space or []))
    except Exception as e:
        line = str(e) if isinstance(e, (ValueError, FileNotFoundError)) else store_error(e, args.tracking_uri)
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:  # every run was ended before this came up
            line = f"no space left on the device while writing {e.filename or 'the search files'}; every open " \
                   f"MLflow run was ended KILLED. Free some space, then continue with --resume."
        elif isinstance(e, OSError) and e.filename:
            line = f"cannot write {e.filename} ({e.strerror}); every open MLflow run was ended KILLED. Fix it, then " \
                   "continue with --resume."
        if line is None or args.verbose:
            raise
        print(f"stage{stage}: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"stage{stage}: interrupted; every open MLflow run was ended as KILLED. Continue with --resume.",
              file=sys.stderr)
        return 130
    if opts.mode == "search" and stage != 1:
        _print_savings(opts, stage, outcome)
    quals = outcome.qualifying(opts.requirement)
    if opts.requirement.constrained:
        print(f"{len(quals)} Pareto candidate(s) meet the requirements" if quals else
              "no candidate meets the requirements (see the table above for the closest)")
    print(f"MLflow parent run {outcome.parent_run_id} ({opts.tracking.store()}, experiment {opts.tracking.experiment!r})")
    return 1 if outcome.errors else 0
