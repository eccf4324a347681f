"""The study's seven stages as searches, and the command line every `raysearch/stageN.py` shares.

| stage | what varies                                         | study grid                          |
|-------|-----------------------------------------------------|-------------------------------------|
| 1     | input resolution, no retraining (one 512 baseline)  | 512 256 224 192 160 128 96          |
| 2     | input resolution, retrained (a1 t6 r3 pp0)          | same                                |
| 3     | input resolution with the Y channel only            | same, 1 channel                     |
| 4     | width a x expansion t (512)                         | a .75 .5 .25 .125, t 6 4 2          |
| 5     | repetitions r x pyramid pooling pp (512)            | r 3 2 1, pp 1 0                     |
| 6     | a x t x r, pp=0 (512)                               | a .25 .125, t 6 4 2, r 2 1          |
| 7     | resolution x the Pareto models of stage 6           | 6 res x 6 models                    |

``--quick`` shrinks every stage to run in minutes on 2 CPU cores: inputs 128/96/64, 8 epochs,
120 synthetic images, short benchmarks.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from raysearch.latency import read_bytes, storage_fs, write_bytes
from raysearch.search import MODES, SearchOptions, Space, run_search, search_name

log = logging.getLogger("raysearch.stages")

STUDY_RES = [512, 256, 224, 192, 160, 128, 96]
QUICK_RES = [128, 96, 64]
BASELINE = dict(arch="fastscnn", a=1.0, t=6, r=3, pp=1)
QUICK_DATA = "synthetic:120"
QUICK_EPOCHS = 8
# Stage 7 without a stage-6 front in MLflow: the study's six Pareto models of stage 6.
STUDY_STAGE6_FRONT = [dict(a=0.25, t=6, r=2, pp=0), dict(a=0.25, t=4, r=1, pp=0), dict(a=0.25, t=2, r=1, pp=0),
                      dict(a=0.125, t=6, r=2, pp=0), dict(a=0.125, t=4, r=1, pp=0), dict(a=0.125, t=2, r=1, pp=0)]
STUDY_STAGE7_RES = [512, 256, 192, 160, 128, 96]

DESCRIPTIONS = {
    1: "Stage 1: one model trained at the largest input, evaluated at every smaller input without retraining.",
    2: "Stage 2: input resolution, retrained at every size (Fast-SCNN a1 t6 r3, no pyramid pooling).",
    3: "Stage 3: input resolution with the Y channel of YCrCb as the only input channel.",
    4: "Stage 4: width multiplier a x expansion rate t.",
    5: "Stage 5: block repetitions r x pyramid pooling pp.",
    6: "Stage 6: a x t x r without pyramid pooling.",
    7: "Stage 7: input resolution x the Pareto models of stage 6 (read from MLflow when stages 2 and 6 ran).",
}


def model_key(k: dict) -> str:
    return f"a{k['a']:g}-t{k['t']}-r{k['r']}-pp{k['pp']}"


def stage_space(stage: int, opts: SearchOptions, res: list[int] | None = None) -> Space:
    quick = opts.quick
    res = res or (QUICK_RES if quick else STUDY_RES)
    top = [max(res)]
    if stage == 2:
        return Space({"input_hw": res}, {**BASELINE, "pp": 0})
    if stage == 3:
        return Space({"input_hw": res}, {**BASELINE, "pp": 0, "in_channels": 1})
    if stage == 4:
        return Space({"a": [0.5, 0.25, 0.125] if quick else [0.75, 0.5, 0.25, 0.125], "t": [6, 2] if quick else [6, 4, 2]},
                     {**BASELINE, "input_hw": top[0]})
    if stage == 5:
        return Space({"r": [2, 1] if quick else [3, 2, 1], "pp": [1, 0]}, {**BASELINE, "input_hw": top[0]})
    if stage == 6:
        return Space({"a": [0.25, 0.125], "t": [6, 2] if quick else [6, 4, 2], "r": [2, 1]},
                     {**BASELINE, "pp": 0, "input_hw": top[0]})
    raise ValueError(f"stage {stage} has no plain search space")


def _front_from_mlflow(opts: SearchOptions, stage: int) -> list[dict]:
    """The Pareto-optimal children of the latest finished search of ``stage`` in the experiment."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(opts.tracking)
    exp = client.get_experiment_by_name(opts.experiment)
    if exp is None:
        return []
    parents = client.search_runs([exp.experiment_id], f"tags.stage = 'stage{stage}' and attributes.status = 'FINISHED'",
                                 order_by=["attributes.start_time DESC"], max_results=20)
    for parent in parents:
        kids = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' "
                                                       f"and tags.pareto_optimal = 'true'")
        if kids:
            return [{k: json.loads(v) if v.startswith("[") else v for k, v in r.data.params.items()} for r in kids]
    return []


def stage7_space(opts: SearchOptions, res: list[int] | None) -> Space:
    models6 = _front_from_mlflow(opts, 6)
    front2 = _front_from_mlflow(opts, 2)
    if models6:
        models = [dict(a=float(m["a"]), t=int(m["t"]), r=int(m["r"]), pp=int(m["pp"])) for m in models6][:6]
        log.info("stage 7: %d models from the stage-6 front in MLflow", len(models))
    else:
        models = [STUDY_STAGE6_FRONT[i] for i in (0, 2, 5)] if opts.quick else STUDY_STAGE6_FRONT
        log.info("stage 7: no finished stage-6 search in MLflow; using the study's stage-6 front")
    if res is None and front2:
        res = sorted({int(m["input_hw"][0]) for m in front2}, reverse=True)[:6]
        log.info("stage 7: resolutions %s from the stage-2 front in MLflow", res)
    res = res or (QUICK_RES if opts.quick else STUDY_STAGE7_RES)
    named = {model_key(m): m for m in models}
    return Space({"input_hw": res, "model": sorted(named)}, {"arch": "fastscnn"}, models=named)


def run_stage(stage: int, opts: SearchOptions, epochs: int, res: list[int] | None = None):
    label = f"stage{stage}"
    if stage == 1:
        return run_stage1(opts, epochs, res)
    space = stage7_space(opts, res) if stage == 7 else stage_space(stage, opts, res)
    log.info("%s (%s): %d grid points, %s", label, opts.mode, space.size(), DESCRIPTIONS[stage])
    return run_search(label, space, opts, epochs=epochs)


def run_stage1(opts: SearchOptions, epochs: int, res: list[int] | None):
    """Train the baseline once at the largest input, then evaluate those weights at every input
    (epochs=0: export, test IoU, latency) - both phases under one MLflow parent run."""
    from mlflow.tracking import MlflowClient

    res = res or (QUICK_RES if opts.quick else STUDY_RES)
    name = search_name("stage1", opts)
    fixed = dict(BASELINE)  # the study's baseline (pp=1: our pyramid pooling adapts to every input size)
    base = run_search("stage1", Space({"input_hw": [max(res)]}, fixed), opts, epochs=epochs, name=f"{name}-train",
                      keep_parent_open=True)
    # the trained weights go where every node can read them: the search's storage
    weights = f"{base.experiment_path}/stage1_weights.pt"
    write_bytes(weights, read_bytes(_checkpoint_of(base)))
    client = MlflowClient(opts.tracking)
    exp_id = client.get_run(base.parent_run_id).info.experiment_id
    eval_opts = SearchOptions(**{**opts.__dict__, "mode": "grid"})  # evaluation only: nothing to search
    return run_search("stage1", Space({"input_hw": res}, fixed), eval_opts, epochs=0, name=f"{name}-eval",
                      init_checkpoint=weights, parent=(client, exp_id, base.parent_run_id))


def _checkpoint_of(outcome) -> str:
    """best.pt of the (single) trial of a finished search, in its Ray Tune storage (folder or URI)."""
    import pyarrow.fs as pafs

    fs, root = storage_fs(outcome.experiment_path)
    found = [i for i in fs.get_file_info(pafs.FileSelector(root, recursive=True))
             if i.base_name == "best.pt" and "/checkpoint_" in i.path]
    if not found:
        raise RuntimeError(f"stage 1: no trained weights (best.pt) under {outcome.experiment_path}")
    best = max(found, key=lambda i: i.mtime_ns or 0).path
    return best if "://" not in outcome.experiment_path else outcome.experiment_path.split("://")[0] + "://" + best


# ---- command line --------------------------------------------------------------------------------
def build_parser(stage: int) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"python raysearch/stage{stage}.py", description=DESCRIPTIONS[stage] + "\n\n" + __doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("what to run")
    g.add_argument("--mode", choices=MODES, default="grid",
                   help="grid: the study's exact grid, every trial to the end; search: multi-objective Optuna "
                        "search over the same space with ASHA early stopping (default %(default)s)")
    g.add_argument("--num-samples", type=int, default=10, help="trials of --mode search (default %(default)s)")
    g.add_argument("--quick", action="store_true", help="small inputs, 8 epochs, 120 synthetic images: minutes on 2 CPUs")
    g.add_argument("--res", type=int, nargs="+", help="input resolutions to use instead of the stage's")
    g.add_argument("--epochs", type=int, help="training epochs per trial (default 400, or 8 with --quick)")
    g.add_argument("--seed", type=int, default=0)
    add_search_args(p)
    g = p.add_argument_group("this search")
    g.add_argument("--name", help="search name (default stageN-MODE-TIMESTAMP)")
    g.add_argument("--resume", action="store_true", help="continue an interrupted search: --name, or the latest "
                                                         "search of this stage and mode")
    g.add_argument("-v", "--verbose", action="store_true")
    return p


def add_search_args(p: argparse.ArgumentParser) -> None:
    """Requirements, data, latency, tracking and cluster options (the stages' and `raysearch optimize`'s)."""
    g = p.add_argument_group("requirements (mark which candidates qualify; latency also prunes before training)")
    g.add_argument("--max-latency-ms", type=float, help="latency budget on the device; slower trials are pruned "
                                                        "before any training")
    g.add_argument("--min-iou", type=float, help="IoU floor")
    g = p.add_argument_group("data")
    g.add_argument("--data", help="dataset folder, COCO export, or synthetic[:N] (default: synthetic, "
                                  f"{QUICK_DATA} with --quick)")
    g.add_argument("--limit", type=int, help="at most N images per split")
    g.add_argument("--logit-threshold", type=float, default=0.0,
                   help="foreground when the logit exceeds this (0 = probability 0.5; the study used 0.5)")
    g = p.add_argument_group("latency (benchd)")
    g.add_argument("--farm", help="farm inventory (clusters/farm.yaml) or HOST:PORT of one benchd "
                                  "(default: a local benchd on 127.0.0.1 for the duration)")
    g.add_argument("--device-class", default="local", help="device class to measure on (default %(default)s)")
    g.add_argument("--latency-stat", choices=("p50", "mean"), default="p50",
                   help="which figure is the latency objective: p50, or the study's mean (default %(default)s)")
    g.add_argument("--bench-runs", type=int, help="timed runs per benchmark (default 50, 10 with --quick)")
    g.add_argument("--bench-warmup", type=int, help="discarded warm-up runs (default 10, 2 with --quick)")
    g.add_argument("--bench-threads", type=int, default=0, help="onnxruntime intra-op threads (0: its default)")
    g = p.add_argument_group("tracking and storage")
    g.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else runs/mlflow.db)")
    g.add_argument("--experiment", default="raysearch", help="MLflow experiment (default %(default)s)")
    g.add_argument("--storage-path", default="runs/ray", help="Ray Tune storage: a local or shared folder, or an "
                                                              "object-store URI (default %(default)s)")
    g = p.add_argument_group("cluster")
    g.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    g.add_argument("--concurrency", type=int, help="trials at once (default: as many as resources allow)")
    g.add_argument("--cpus-per-trial", type=float, default=1.0)
    g.add_argument("--gpus-per-trial", type=float, help="GPUs (or a fraction) per trial (default 1 when the "
                                                        "cluster has GPUs, else 0)")
    g.add_argument("--max-failures", type=int, default=1, help="retries of a failed trial (default %(default)s)")
    g.add_argument("--grace-period", type=int, default=1, help="ASHA: epochs before a trial can be stopped")
    g.add_argument("--reduction-factor", type=float, default=3.0, help="ASHA reduction factor (default %(default)s)")
    g.add_argument("--hv-ref-latency-ms", type=float, help="hypervolume reference latency (default: "
                                                           "--max-latency-ms, else 1000 ms)")


def options_from_args(args: argparse.Namespace) -> SearchOptions:
    keys = SearchOptions.__dataclass_fields__
    kw = {k: v for k, v in vars(args).items() if k in keys and v is not None and k != "verbose"}
    kw["data"] = args.data or (QUICK_DATA if args.quick else "synthetic")
    return SearchOptions(**kw)


def main(stage: int, argv: list[str] | None = None) -> int:
    args = build_parser(stage).parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        opts = options_from_args(args)
        epochs = args.epochs if args.epochs is not None else (QUICK_EPOCHS if opts.quick else 400)
        outcome = run_stage(stage, opts, epochs, args.res)
    except (ValueError, FileNotFoundError) as e:
        if args.verbose:
            raise
        print(f"stage{stage}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"stage{stage}: interrupted; every open MLflow run was ended as KILLED. Continue with --resume.",
              file=sys.stderr)
        return 130
    quals = outcome.qualifying(opts.max_latency_ms, opts.min_iou)
    if opts.max_latency_ms is not None or opts.min_iou is not None:
        print(f"{len(quals)} Pareto candidate(s) meet the requirements" if quals else
              "no candidate meets the requirements (see the table above for the closest)")
    print(f"MLflow parent run {outcome.parent_run_id} ({opts.tracking}, experiment {opts.experiment!r})")
    return 1 if outcome.errors else 0
