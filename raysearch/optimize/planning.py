"""The stages of `raysearch optimize`, planned: what each stage runs, decided from what the stages
before it found. Pure functions of the family, the options and `TrialRow` records (no Ray, no
MLflow), so every decision is tested on hand-made rows.

The effort level decides the knobs (the reference study's conclusion):

| effort       | knobs                                                               |
|--------------|---------------------------------------------------------------------|
| entry        | input resolution (retrained)                                        |
| intermediate | + width multiplier ``a``                                            |
| expert       | + every knob the model family declares (Fast-SCNN: a, t, r, pp), int8 |

The stages run in order of cost, each narrowing the next, as the study's stages 2, 4-6 and 7 did:

1. ``resolution``: the family's baseline at every input size. Kept for stage 3: the sizes on the
   Pareto front and those too slow for the baseline (a narrower model may fit); a size where
   even the full model misses the IoU floor is dropped.
2. ``topology`` (intermediate, expert): the topology knobs at the most accurate size that met
   the latency requirement (the smallest size when none did).
3. ``cross``: the kept sizes x the Pareto topologies of stage 2 (what already ran is not rerun).
4. ``int8`` (expert, or ``--int8``): the Pareto candidates so far, quantized (static int8,
   calibrated on validation images) from their trained weights: measured, not retrained.

A stage with more points than ``GRID_LIMIT`` is a multi-objective search instead of a grid.
"""

from __future__ import annotations

import math

from raysearch.models import ModelFamily, ModelSpec
from raysearch.optimize.options import OptimizeOptions
from raysearch.records import names as obj
from raysearch.records.pareto import pareto_front
from raysearch.records.results import PRUNED, TrialRow, candidates
from raysearch.search.options import Space

GRID_LIMIT = 16  # a stage with more points is searched (--sampler: latency-first by default) instead of run as a grid
MAX_TOPOLOGIES = 6  # Pareto topologies carried into the cross stage (the study carried six)
MAX_INT8 = 8  # candidates quantized in the int8 stage

HW = tuple[int, int]


def plan(effort: str, quantize: bool) -> list[str]:
    stages = ["resolution"] if effort == "entry" else ["resolution", "topology", "cross"]
    return stages + (["int8"] if quantize else [])


def topology_knobs(family: ModelFamily, effort: str) -> tuple[str, ...]:
    knobs = ("a",) if effort == "intermediate" else tuple(family.knobs)
    return tuple(k for k in knobs if k in family.choices and len(family.choices[k]) > 1)


def baseline(family: ModelFamily) -> dict:
    return {"arch": family.name, **{k: v for k, v in family.baseline.items() if k != "input_hw"}}


def grid_or_search(size: int, trials_per_stage: int | None) -> tuple[bool, int]:
    """(a grid?, its number of trials): a grid up to GRID_LIMIT points, else a search of
    ``trials_per_stage`` trials (default a third of the points, at least GRID_LIMIT)."""
    if size <= GRID_LIMIT:
        return True, size
    return False, trials_per_stage or max(GRID_LIMIT, math.ceil(size / 3))


def resolution_space(family: ModelFamily, opt: OptimizeOptions) -> Space:
    grid: dict[str, list] = {"input_hw": opt.resolutions()}
    if opt.y_channel:
        grid["in_channels"] = [3, 1]
    return Space(grid, baseline(family))


def kept_resolutions(rows: list[TrialRow], min_iou: float | None) -> list[HW]:
    """Sizes worth crossing with narrower topologies: on the front, or too slow for the baseline;
    not those where the full model already misses the IoU floor (narrowing lowers IoU)."""
    done = candidates(rows)
    front = [done[i] for i in pareto_front(done)]
    keep = [r for r in front if min_iou is None or r.known_iou >= min_iou] or front
    keep += [r for r in rows if r.status == PRUNED and r.spec is not None]
    return sorted({r.known_spec.input_hw for r in keep}, reverse=True)


def topology_resolution(rows: list[TrialRow], sizes: list[HW]) -> tuple[HW, int]:
    """(input size, channels) of the topology stage: the most accurate size that met the latency
    requirement, else the smallest size."""
    done = candidates(rows)
    if done:
        best = max(done, key=lambda r: r.known_iou).known_spec
        return best.input_hw, best.in_channels
    return min(sizes), 3


def topology_space(family: ModelFamily, opt: OptimizeOptions, res_rows: list[TrialRow]) -> Space:
    hw, channels = topology_resolution(res_rows, opt.resolutions())
    knobs = topology_knobs(family, opt.effort)
    return Space({k: list(family.choices[k]) for k in knobs},
                 {**baseline(family), "input_hw": hw, "in_channels": channels})


def _named(specs: list[ModelSpec]) -> dict[str, dict]:
    """Specs as the named models of a `Space` (name -> knobs)."""
    return {s.name: {k: v for k, v in s.to_dict().items() if k != "extra"} for s in specs}


def cross_space(family: ModelFamily, opt: OptimizeOptions, res_rows: list[TrialRow], topo_rows: list[TrialRow],
                ran: list[TrialRow]) -> Space:
    """The kept sizes x the Pareto topologies (best IoU first, at most MAX_TOPOLOGIES), as named
    models, leaving out every spec that already ran in an earlier stage."""
    done = candidates(topo_rows)
    front = sorted((done[i] for i in pareto_front(done)), key=lambda r: -r.known_iou)[:MAX_TOPOLOGIES]
    seen = {r.spec for r in ran if r.spec is not None}
    specs = [spec for topo in front for hw in kept_resolutions(res_rows, opt.search.min_iou)
             if (spec := topo.known_spec.replace(input_hw=hw)) not in seen]
    models = _named(specs)
    return Space({"model": sorted(models)}, {"arch": family.name}, models=models)


def int8_space(family: ModelFamily, pool: list[TrialRow]) -> tuple[Space, dict[str, str]]:
    """The Pareto fp32 candidates, quantized from their trained weights."""
    fp32 = [r for r in candidates(pool) if r.precision == "fp32" and r.checkpoint]
    front = sorted((fp32[i] for i in pareto_front(fp32)), key=lambda r: -r.known_iou)[:MAX_INT8]
    specs = {r.known_spec.replace(precision="int8"): f"{str(r.checkpoint).rstrip('/')}/{obj.BEST_WEIGHTS}" for r in front}
    models = _named(list(specs))
    weights = {spec.name: w for spec, w in specs.items()}
    return Space({"model": sorted(models)}, {"arch": family.name}, models=models), weights


def stage_space(label: str, family: ModelFamily, opt: OptimizeOptions,
                rows: dict[str, list[TrialRow]]) -> tuple[Space | None, dict[str, str] | None, int]:
    """(space, init weights per model, epochs) of a stage, from the stages before it."""
    ran = [r for rs in rows.values() for r in rs]
    if label == "resolution":
        return resolution_space(family, opt), None, opt.train_epochs
    if label == "topology":
        if not topology_knobs(family, opt.effort):
            return None, None, 0
        return topology_space(family, opt, rows["resolution"]), None, opt.train_epochs
    if label == "cross":
        # the baseline topology ran in stage 1 (stage 2 found it in the results cache): it competes too
        hw, channels = topology_resolution(rows["resolution"], opt.resolutions())
        same_size = [r for r in candidates(rows["resolution"])
                     if (r.known_spec.input_hw, r.known_spec.in_channels) == (hw, channels)]
        topo = candidates(rows.get("topology", [])) + same_size
        if not topo:
            return None, None, 0
        return cross_space(family, opt, rows["resolution"], topo, ran), None, opt.train_epochs
    if label == "int8":
        space, weights = int8_space(family, ran)
        return space, weights, 0
    raise AssertionError(label)
