"""The study's seven stages as searches (their command line is `raysearch.cli.stage_main`).

| stage | what varies                                         | study grid                          |
|-------|-----------------------------------------------------|-------------------------------------|
| 1     | input resolution, no retraining (one 512 baseline)  | 512 256 224 192 160 128 96          |
| 2     | input resolution, retrained (a1 t6 r3 pp0)          | same                                |
| 3     | input resolution with the Y channel only            | same, 1 channel                     |
| 4     | width a x expansion t (512)                         | a .75 .5 .25 .125, t 6 4 2          |
| 5     | repetitions r x pyramid pooling pp (512)            | r 3 2 1, pp 1 0                     |
| 6     | a x t x r, pp=0 (512)                               | a .25 .125, t 6 4 2, r 2 1          |
| 7     | resolution x the Pareto models of stage 6           | 6 res x 6 models                    |

``--quick`` shrinks every stage to run in minutes on 2 CPU cores (`raysearch.search.presets.QUICK`).
Input sizes are (h, w) tuples here as everywhere (`sizes`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from raysearch.models import ModelSpec, get_family, parse_hw
from raysearch.records import names as obj
from raysearch.search.driver import SearchOutcome, SearchRequest, run_search, search_name
from raysearch.search.options import Knob, SearchOptions, Space
from raysearch.search.presets import preset
from raysearch.storage import read_bytes, storage_fs, write_bytes
from raysearch.tracking.readback import row_from_run

log = logging.getLogger("raysearch.stages")

#: The study's baseline, Fast-SCNN a1 t6 r3 pp1: the family's declared baseline.
BASELINE = {"arch": "fastscnn", **get_family("fastscnn").baseline}
# Stage 7 without a stage-6 front in MLflow: the six stage-6 models the study combined with its
# resolutions (its section 4.5.1, Tables 4.20-4.23; the first two are not real-time, kept to see how
# resolution interacts with topology).
STUDY_STAGE6_FRONT = [dict(a=1.0, t=6, r=1, pp=0), dict(a=0.25, t=6, r=1, pp=0), dict(a=0.125, t=6, r=2, pp=0),
                      dict(a=0.125, t=4, r=2, pp=0), dict(a=0.125, t=2, r=2, pp=0), dict(a=0.125, t=2, r=1, pp=0)]
# --quick: one wide, one deep and the smallest of them (minutes on 2 cores)
QUICK_STAGE6_FRONT = [STUDY_STAGE6_FRONT[i] for i in (1, 3, 5)]
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


SizeArg = int | str | tuple[int, int]  # an input size as given: N, "HxW" or (h, w)


def model_key(k: dict[str, Any]) -> str:
    return f"a{k['a']:g}-t{k['t']}-r{k['r']}-pp{k['pp']}"


def sizes(res: Iterable[SizeArg]) -> list[tuple[int, int]]:
    """Input sizes as (h, w), largest first (a stage's grid, from N or (h, w) values)."""
    return sorted({parse_hw(r) for r in res}, reverse=True)


def stage_space(stage: int, opts: SearchOptions, res: Sequence[SizeArg] | None = None) -> Space:
    quick = opts.quick
    res = sizes(res or preset(quick).resolutions)
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


def _front_from_mlflow(opts: SearchOptions, stage: int) -> list[ModelSpec]:
    """The specs of the Pareto-optimal children of the latest finished search of ``stage``."""
    from mlflow.tracking import MlflowClient


    client = MlflowClient(opts.tracking.store())
    exp = client.get_experiment_by_name(opts.tracking.experiment)
    if exp is None:
        return []
    parents = client.search_runs([exp.experiment_id], f"tags.{obj.TAG_STAGE} = 'stage{stage}' and "
                                                      "attributes.status = 'FINISHED'",
                                 order_by=["attributes.start_time DESC"], max_results=20)
    for parent in parents:
        kids = client.search_runs([exp.experiment_id], f"tags.`{obj.TAG_PARENT}` = '{parent.info.run_id}' "
                                                       f"and tags.{obj.TAG_PARETO} = 'true'")
        specs = [r.spec for r in map(row_from_run, kids) if r.spec is not None]
        if specs:
            return specs
    return []


def stage7_space(opts: SearchOptions, res: Sequence[SizeArg] | None) -> Space:
    models6 = _front_from_mlflow(opts, 6)
    front2 = _front_from_mlflow(opts, 2)
    if models6:
        models = [dict(a=m.a, t=m.t, r=m.r, pp=m.pp) for m in models6][:6]
        log.info("stage 7: %d models from the stage-6 front in MLflow", len(models))
    else:
        models = QUICK_STAGE6_FRONT if opts.quick else STUDY_STAGE6_FRONT
        log.info("stage 7: no finished stage-6 search in MLflow; using the study's stage-6 front")
    if res is None and front2:
        res = sorted({m.input_hw for m in front2}, reverse=True)[:6]
        log.info("stage 7: resolutions %s from the stage-2 front in MLflow", res)
    res = sizes(res or (preset(True).resolutions if opts.quick else STUDY_STAGE7_RES))
    named = {model_key(m): m for m in models}
    return Space({"input_hw": res, "model": sorted(named)}, {"arch": "fastscnn"}, models=named)


def run_stage(stage: int, opts: SearchOptions, epochs: int, res: Sequence[SizeArg] | None = None,
              knobs: Mapping[str, Knob] | None = None) -> SearchOutcome:
    """Run ``stage``; ``knobs`` (``--space``) replace or add knobs of the plain spaces (stages 2-6)."""
    label = f"stage{stage}"
    if knobs and stage in (1, 7):
        raise ValueError(f"--space changes the knobs of stages 2-6; stage {stage} searches "
                         + ("one baseline" if stage == 1 else "the models of the stage-6 front"))
    if stage == 1:
        return run_stage1(opts, epochs, res)
    space = stage7_space(opts, res) if stage == 7 else stage_space(stage, opts, res).with_knobs(dict(knobs or {}))
    size = f"{space.size()} configurations" if space.size() else f"continuous in {', '.join(space.continuous)}"
    log.info("%s (%s): %s, %s", label, opts.mode, size, DESCRIPTIONS[stage])
    return run_search(SearchRequest(label, space, opts, epochs))


def run_stage1(opts: SearchOptions, epochs: int, res: Sequence[SizeArg] | None) -> SearchOutcome:
    """Train the baseline once at the largest input, then evaluate those weights at every input
    (epochs=0: export, test IoU, latency) - both phases under one MLflow parent run."""
    from mlflow.tracking import MlflowClient

    res = sizes(res or preset(opts.quick).resolutions)
    # the two phases are searches NAME-train and NAME-eval; --resume finds NAME from either
    name = search_name("stage1", opts).removesuffix("-train").removesuffix("-eval")
    fixed = dict(BASELINE)  # the study's baseline (pp=1: our pyramid pooling adapts to every input size)
    base = run_search(SearchRequest("stage1", Space({"input_hw": [max(res)]}, fixed), opts, epochs, name=f"{name}-train",
                                    keep_parent_open=True))
    # the trained weights go where every node can read them: the search's storage
    weights = f"{base.experiment_path}/stage1_weights.pt"
    write_bytes(weights, read_bytes(_checkpoint_of(base)))
    client = MlflowClient(opts.tracking.store())
    exp_id = client.get_run(base.parent_run_id).info.experiment_id
    eval_opts = dataclasses.replace(opts, mode="grid")  # evaluation only: nothing to search
    return run_search(SearchRequest("stage1", Space({"input_hw": res}, fixed), eval_opts, 0, name=f"{name}-eval",
                                    init_checkpoint=weights, parent=(client, exp_id, base.parent_run_id)))


def _checkpoint_of(outcome: SearchOutcome) -> str:
    """best.pt of the (single) trial of a finished search, in its Ray Tune storage (folder or URI)."""
    import pyarrow.fs as pafs

    fs, root = storage_fs(outcome.experiment_path)
    found = [i for i in fs.get_file_info(pafs.FileSelector(root, recursive=True))
             if i.base_name == obj.BEST_WEIGHTS and "/checkpoint_" in i.path]
    if not found:
        raise RuntimeError(f"stage 1: no trained weights (best.pt) under {outcome.experiment_path}")
    best: str = max(found, key=lambda i: i.mtime_ns or 0).path
    return best if "://" not in outcome.experiment_path else outcome.experiment_path.split("://")[0] + "://" + best
