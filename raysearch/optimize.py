"""`raysearch optimize`: a model, data, a latency and an accuracy requirement and an effort level
in; the candidate models that meet the requirement out, registered in MLflow.

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

Every trial is timed before it trains (latency does not depend on the weights), so a candidate
over the latency requirement never trains. A stage with more points than ``GRID_LIMIT`` is a
multi-objective search with ASHA instead of a grid. All stages share one results cache, so a
configuration is never trained twice.

A time budget (total over every run of the same optimization) stops the running stage like
Ctrl-C at the deadline and returns the best candidates so far; running the same command again
(with a larger budget) continues where it stopped. The optimization is identified by what
decides its outcome (model, data, requirements, effort, ...), not by the budget.
"""

from __future__ import annotations

import hashlib
import html
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from raysearch import objectives as obj
from raysearch.models import ModelSpec
from raysearch.pareto import front_table, misses, pareto_front, plot_front, qualifies
from raysearch.search import (BudgetExpired, SearchOptions, Space, local_root, run_search, search_state_path,
                              storage_uri)

log = logging.getLogger(__name__)

EFFORTS = ("entry", "intermediate", "expert")
EPILOG = """\
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
GRID_LIMIT = 16  # a stage with more points is searched (Optuna + ASHA) instead of run as a grid
MAX_TOPOLOGIES = 6  # Pareto topologies carried into the cross stage (the study carried six)
MAX_INT8 = 8  # candidates quantized in the int8 stage
OPT_TAG = "raysearch.optimization"
PARENT_TAG = "mlflow.parentRunId"
QUICK_RES = (128, 96, 64)
QUICK_EPOCHS = 8


@dataclass
class OptimizeOptions:
    """What to optimize and how hard (``search``: data, farm, tracking, cluster, requirements)."""

    model: str = "fastscnn"
    effort: str = "intermediate"
    search: SearchOptions = field(default_factory=SearchOptions)
    time_budget_s: float | None = None
    epochs: int | None = None  # None: 400, or 8 with search.quick
    res: tuple[int, ...] | None = None  # None: the family's (or 128/96/64 with search.quick)
    int8: bool | None = None  # None: on at expert effort
    y_channel: bool = False
    trials_per_stage: int | None = None  # searched stages; None: a third of the stage's points, >= GRID_LIMIT
    name: str | None = None  # None: derived from what decides the outcome
    fresh: bool = False  # start over even when an earlier run of this optimization exists

    def __post_init__(self) -> None:
        from raysearch.models import get_family

        if self.effort not in EFFORTS:
            raise ValueError(f"--effort {self.effort!r} is not one of {EFFORTS}")
        get_family(self.model)  # names the known families when unknown
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            raise ValueError(f"--time-budget {self.time_budget_s} s must be > 0")
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"--epochs {self.epochs} must be >= 1")
        if self.trials_per_stage is not None and self.trials_per_stage < 1:
            raise ValueError(f"--trials-per-stage {self.trials_per_stage} must be >= 1")
        if self.search.max_latency_ms is None and self.search.min_iou is None:
            raise ValueError("give a requirement: --max-latency-ms and/or --min-iou")
        for r in self.res or ():
            ModelSpec(arch=self.model, input_hw=r)  # a bad size is named before anything runs

    @property
    def quantize(self) -> bool:
        return self.effort == "expert" if self.int8 is None else self.int8

    @property
    def train_epochs(self) -> int:
        return self.epochs or (QUICK_EPOCHS if self.search.quick else 400)

    def ident(self) -> str:
        """A name for the optimization from everything that decides its outcome (not the budget)."""
        s = self.search
        data = str(Path(s.data).resolve()) if Path(s.data).exists() else s.data  # ./data/x == data/x
        key = [self.model, self.effort, data, s.limit, s.seed, s.max_latency_ms, s.min_iou, s.device_class,
               s.latency_stat, s.logit_threshold, s.quick, self.train_epochs, self.resolutions(), self.quantize,
               self.y_channel, self.trials_per_stage]
        return f"optimize-{self.model}-{self.effort}-{hashlib.sha256(json.dumps(key).encode()).hexdigest()[:8]}"

    def resolutions(self) -> list[int]:
        from raysearch.models import get_family

        res = self.res or (QUICK_RES if self.search.quick else get_family(self.model).resolutions)
        return sorted({int(r) for r in res}, reverse=True)


@dataclass
class OptimizeResult:
    name: str
    run_id: str  # the optimization's MLflow run (the stage searches are its children)
    candidates: list[dict]  # qualifying Pareto candidates, best IoU first (with "onnx")
    closest: list[dict]  # when nothing qualifies: the nearest candidates, with "misses"
    complete: bool  # every stage ran (False: the time budget ran out first)
    spent_s: float
    epochs: int  # training epochs of every trial together
    stages: list[str]
    registered_model: str | None = None
    report: str | None = None
    pool: list[dict] = field(default_factory=list)  # every trained candidate of every stage


# ---- the stages (pure: they describe what to run from what ran) ----------------------------------
def plan(effort: str, quantize: bool) -> list[str]:
    stages = ["resolution"] if effort == "entry" else ["resolution", "topology", "cross"]
    return stages + (["int8"] if quantize else [])


def topology_knobs(family, effort: str) -> tuple[str, ...]:
    knobs = ("a",) if effort == "intermediate" else tuple(family.knobs)
    return tuple(k for k in knobs if k in family.choices and len(family.choices[k]) > 1)


def baseline(family) -> dict:
    return {"arch": family.name, **{k: v for k, v in family.baseline.items() if k != "input_hw"}}


def resolution_space(family, opt: OptimizeOptions) -> Space:
    grid: dict[str, list] = {"input_hw": opt.resolutions()}
    if opt.y_channel:
        grid["in_channels"] = [3, 1]
    return Space(grid, baseline(family))


def trained(rows: list[dict]) -> list[dict]:
    """Rows of trials that trained to the end (not pruned, stopped early or repeated)."""
    return [r for r in rows if not r.get(obj.PRUNED) and not r.get("stopped_early") and not r.get("duplicate")
            and r.get(obj.IOU.name) is not None and r.get(obj.LATENCY_MS.name) is not None and r.get("spec")]


def kept_resolutions(rows: list[dict], min_iou: float | None) -> list[tuple[int, int]]:
    """Sizes worth crossing with narrower topologies: on the front, or too slow for the baseline;
    not those where the full model already misses the IoU floor (narrowing lowers IoU)."""
    done = trained(rows)
    front = [done[i] for i in pareto_front(done)]
    keep = [r for r in front if min_iou is None or r[obj.IOU.name] >= min_iou] or front
    keep += [r for r in rows if r.get(obj.PRUNED) and r.get("spec")]
    return sorted({tuple(r["spec"]["input_hw"]) for r in keep}, reverse=True)


def topology_resolution(rows: list[dict], sizes: list[int]) -> tuple[list[int], int]:
    """(input size, channels) of the topology stage: the most accurate size that met the latency
    requirement, else the smallest size."""
    done = trained(rows)
    if done:
        best = max(done, key=lambda r: r[obj.IOU.name])
        return list(best["spec"]["input_hw"]), int(best["spec"]["in_channels"])
    return [min(sizes), min(sizes)], 3


def topology_space(family, opt: OptimizeOptions, res_rows: list[dict]) -> Space:
    hw, channels = topology_resolution(res_rows, opt.resolutions())
    knobs = topology_knobs(family, opt.effort)
    return Space({k: list(family.choices[k]) for k in knobs},
                 {**baseline(family), "input_hw": hw, "in_channels": channels})


def _spec_key(spec: dict) -> str:
    return ModelSpec.from_dict(spec, strict=True).to_json()


def cross_space(family, opt: OptimizeOptions, res_rows: list[dict], topo_rows: list[dict],
                ran: list[dict]) -> Space:
    """The kept sizes x the Pareto topologies (best IoU first, at most MAX_TOPOLOGIES), as named
    models, leaving out every spec that already ran in an earlier stage."""
    done = trained(topo_rows)
    front = sorted((done[i] for i in pareto_front(done)), key=lambda r: -r[obj.IOU.name])[:MAX_TOPOLOGIES]
    seen = {_spec_key(r["spec"]) for r in ran if r.get("spec")}
    models: dict[str, dict] = {}
    for topo in front:
        for hw in kept_resolutions(res_rows, opt.search.min_iou):
            spec = ModelSpec.from_dict({**topo["spec"], "input_hw": list(hw)}, strict=True)
            if spec.to_json() not in seen:
                models[spec.name] = {k: v for k, v in spec.to_dict().items() if k != "extra"}
    return Space({"model": sorted(models)}, {"arch": family.name}, models=models)


def int8_space(family, pool: list[dict]) -> tuple[Space, dict[str, str]]:
    """The Pareto fp32 candidates, quantized from their trained weights."""
    fp32 = [r for r in pool if r["spec"].get("precision", "fp32") == "fp32" and r.get("checkpoint")]
    front = sorted((fp32[i] for i in pareto_front(fp32)), key=lambda r: -r[obj.IOU.name])[:MAX_INT8]
    models, weights = {}, {}
    for r in front:
        spec = ModelSpec.from_dict({**r["spec"], "precision": "int8"}, strict=True)
        models[spec.name] = {k: v for k, v in spec.to_dict().items() if k != "extra"}
        weights[spec.name] = f"{r['checkpoint'].rstrip('/')}/best.pt"
    return Space({"model": sorted(models)}, {"arch": family.name}, models=models), weights


# ---- running it -------------------------------------------------------------------------------
class _State:
    """What has run, in a small JSON file beside the searches' own state (the resume point)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
        self.data.setdefault("stages", {})
        self.data.setdefault("spent_s", 0.0)

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        tmp.replace(self.path)

    def stage(self, label: str) -> dict:
        return self.data["stages"].get(label, {})


def _partial_rows(opt: OptimizeOptions, search: str) -> list[dict]:
    """Finished trials of an interrupted search (from its state file)."""
    path = search_state_path(opt.search, search)
    try:
        return list(json.loads(path.read_text()).get("finals", {}).values())
    except (FileNotFoundError, json.JSONDecodeError):
        return []


def optimize(opt: OptimizeOptions) -> OptimizeResult:
    """Run (or continue) the optimization; see the module doc."""
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient

    from raysearch.data import open_split
    from raysearch.models import get_family
    from raysearch.search import ensure_experiment

    t_start = time.time()
    family = get_family(opt.model)
    sopts = opt.search
    for split in ("train", "val", "test"):  # bad data fails here, in a second, not in every trial
        open_split(sopts.data, split, seed=sopts.seed, limit=sopts.limit)
    root = local_root(sopts)
    name = opt.name or opt.ident()
    if opt.fresh and (root / "optimize" / f"{name}.json").is_file():
        name = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    state = _State(root / "optimize" / f"{name}.json")
    spent_before = float(state.data["spent_s"])
    deadline = None if opt.time_budget_s is None else t_start + opt.time_budget_s - spent_before
    client = MlflowClient(sopts.tracking)
    stages = plan(opt.effort, opt.quantize)
    if state.data.get("run_id"):
        run_id = state.data["run_id"]
        client.update_run(run_id, status="RUNNING")
        log.info("continuing optimization %s (%.0f s spent so far)", name, spent_before)
    else:
        exp_id = ensure_experiment(client, sopts.experiment, sopts.tracking)
        run_id = client.create_run(exp_id, run_name=name, tags={
            OPT_TAG: name, "raysearch.kind": "optimization", "effort": opt.effort, "model": opt.model}).info.run_id
        params = {"model": opt.model, "effort": opt.effort, "max_latency_ms": sopts.max_latency_ms,
                  "min_iou": sopts.min_iou, "data": sopts.data, "device_class": sopts.device_class,
                  "epochs": opt.train_epochs, "resolutions": json.dumps(opt.resolutions()), "int8": opt.quantize,
                  "y_channel": opt.y_channel, "stages": json.dumps(stages), "time_budget_s": opt.time_budget_s}
        client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
        state.data.update(name=name, run_id=run_id, started=t_start, stages={})
        state.save()
    if not sopts.farm:
        print("latency: measured by a local benchd on THIS machine (device class 'local'), not on your edge "
              "device; pass --farm clusters/farm.yaml --device-class rpi4 for a Pi requirement")
    print(f"optimization {name}: {opt.model}, effort {opt.effort} -> stages {', '.join(stages)}"
          + (f"; time budget {opt.time_budget_s:.0f} s ({max(0.0, opt.time_budget_s - spent_before):.0f} s left)"
             if opt.time_budget_s else ""))

    results_cache = f"{storage_uri(sopts)}/results/{name}"
    complete = True
    rows_by_stage: dict[str, list[dict]] = {}
    try:
        try:
            _run_stages(state, opt, name, run_id, family, stages, rows_by_stage, deadline, results_cache)
        except BudgetExpired:
            complete = False
            label = stages[len(rows_by_stage)]
            search = state.stage(label).get("search")
            rows_by_stage[label] = [{**r, "stage": label} for r in _partial_rows(opt, search)] if search else []
            print(f"\ntime budget reached during stage {label!r}; these are the best candidates so far. To "
                  f"continue, run the same command with a --time-budget above the "
                  f"{spent_before + time.time() - t_start:.0f} s spent in all.")
        spent = spent_before + time.time() - t_start
        state.data.update(spent_s=spent, complete=complete)
        state.save()
        return _conclude(client, opt, name, run_id, rows_by_stage, stages, complete, spent, state)
    except KeyboardInterrupt:
        _end(state, client, run_id, spent_before + time.time() - t_start, "KILLED")
        raise
    except BaseException as e:
        client.set_tag(run_id, "error", str(e)[:4000])
        _end(state, client, run_id, spent_before + time.time() - t_start, "FAILED")
        raise


def _run_stages(state: _State, opt: OptimizeOptions, name: str, run_id: str, family, stages: list[str],
                rows_by_stage: dict[str, list[dict]], deadline: float | None, results_cache: str) -> None:
    for i, label in enumerate(stages, 1):
        space, weights, epochs = _space_for(label, family, opt, rows_by_stage)
        if space is None or space.size() == 0:
            print(f"[{i}/{len(stages)}] {label}: nothing left to run")
            rows_by_stage[label] = []
            continue
        rows_by_stage[label] = _run_stage(state, opt, name, run_id, label, i, len(stages), space, epochs,
                                          weights, deadline, results_cache)


def _end(state: _State, client, run_id: str, spent: float, status: str) -> None:
    state.data["spent_s"] = spent
    state.save()
    client.set_terminated(run_id, status)


def _space_for(label: str, family, opt: OptimizeOptions, rows: dict[str, list[dict]]):
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
        same_size = [r for r in trained(rows["resolution"])
                     if list(r["spec"]["input_hw"]) == hw and r["spec"]["in_channels"] == channels]
        topo = trained(rows.get("topology", [])) + same_size
        if not topo:
            return None, None, 0
        return cross_space(family, opt, rows["resolution"], topo, ran), None, opt.train_epochs
    if label == "int8":
        space, weights = int8_space(family, trained(ran))
        return space, weights, 0
    raise AssertionError(label)


def _run_stage(state: _State, opt: OptimizeOptions, name: str, run_id: str, label: str, i: int, n: int,
               space: Space, epochs: int, weights: dict | None, deadline: float | None,
               results_cache: str) -> list[dict]:
    st = state.stage(label)
    if st.get("status") == "done":
        print(f"[{i}/{n}] {label}: done in an earlier run ({len(st['rows'])} trials)")
        return st["rows"]
    if deadline is not None and time.time() >= deadline:
        raise BudgetExpired
    search = f"{name}-{label}"
    size = space.size()
    grid = size <= GRID_LIMIT
    trials = size if grid else (opt.trials_per_stage or max(GRID_LIMIT, math.ceil(size / 3)))
    sopts = replace(opt.search, mode="grid" if grid else "search", num_samples=trials, name=search,
                    resume=bool(st))
    what = ", ".join(f"{k} {v}" for k, v in space.grid.items() if k != "model") or f"{size} models"
    print(f"\n[{i}/{n}] {label}: {what} -> {'grid of' if grid else 'search, ' + str(trials) + ' trials of'} "
          f"{size} point(s), {epochs} epochs each" + (" (continuing)" if st else ""))
    state.data["stages"][label] = {"status": "started", "search": search}
    state.save()
    outcome = run_search(f"optimize-{label}", space, sopts, epochs=epochs, name=search,
                         tags={OPT_TAG: name, PARENT_TAG: run_id, "optimize_stage": label},
                         init_checkpoints=weights, deadline=deadline, results_cache=results_cache)
    rows = [{**r, "stage": label} for r in outcome.rows]
    if outcome.errors:
        failed = _first_error(sopts, outcome.parent_run_id)
        print(f"[{i}/{n}] {label}: {outcome.errors} trial(s) failed; the first error:\n{failed}")
        if not trained(rows) and not any(r.get(obj.PRUNED) for r in rows):
            raise RuntimeError(f"stage {label}: every trial failed, so the optimization cannot go on. "
                               f"The first error:\n{failed}")
    state.data["stages"][label] = {"status": "done", "search": search, "rows": rows,
                                   "epochs": outcome.epochs_spent, "parent_run_id": outcome.parent_run_id}
    state.save()
    return rows


def _first_error(sopts: SearchOptions, parent_run_id: str) -> str:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(sopts.tracking)
    exp = client.get_run(parent_run_id).info.experiment_id
    failed = client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent_run_id}' and attributes.status = "
                                       "'FAILED'", max_results=1)
    text = failed[0].data.tags.get("error", "") if failed else ""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return "\n".join(lines[-3:]) or "(no error text; see the Ray Tune logs)"


# ---- the answer -------------------------------------------------------------------------------
def _conclude(client, opt: OptimizeOptions, name: str, run_id: str, rows_by_stage: dict[str, list[dict]],
              stages: list[str], complete: bool, spent: float, state: _State) -> OptimizeResult:
    import tempfile

    from raysearch.report import write_html

    s = opt.search
    pool = [{**r, "stage": r.get("stage", label)} for label, rs in rows_by_stage.items() for r in trained(rs)]
    for r in pool:
        r["precision"] = r["spec"].get("precision", "fp32")
    front = sorted((pool[i] for i in pareto_front(pool)), key=lambda r: -r[obj.IOU.name])
    quals = [r for r in front if qualifies(r, s.max_latency_ms, s.min_iou)]
    for r in quals:
        r["onnx"] = _onnx_path(client, r["run_id"])
    closest = [] if quals else _closest(pool, s.max_latency_ms, s.min_iou)
    if not quals and not pool:  # everything was over the latency requirement before training
        closest = _fastest_pruned([r for rs in rows_by_stage.values() for r in rs], s.max_latency_ms)
    epochs = sum(int(st.get("epochs", 0)) for st in state.data["stages"].values())
    registered = _register(client, name, quals, opt) if quals else None

    table = front_table(pool, max_latency_ms=s.max_latency_ms, min_iou=s.min_iou) if pool else \
        "(no candidate trained to the end)"
    summary = summary_text(name, quals, closest, opt, complete, spent, epochs, registered)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "candidates.txt").write_text(summary + "\n\nevery candidate:\n" + table + "\n")
        if pool:
            plot_front(pool, tmp / "front.png", title=f"{name}: IoU vs frames per second",
                       max_latency_ms=s.max_latency_ms, min_iou=s.min_iou)
        report = write_html(client, s.experiment, tmp / "report.html", optimization=name,
                            max_latency_ms=s.max_latency_ms, min_iou=s.min_iou,
                            preface=f"<h2>Optimization {name}</h2><pre>{html.escape(summary)}</pre>")
        client.log_artifacts(run_id, str(tmp))
        out = Path(local_root(s)) / "optimize" / f"{name}.html"
        out.write_bytes(report.read_bytes())
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in {
        "spent_s": spent, "epochs_spent": epochs, "n_candidates": len(pool), "n_qualifying": len(quals)}.items()])
    client.set_tag(run_id, "complete", str(complete).lower())
    if not complete:
        client.set_tag(run_id, "budget_expired", "true")
    client.set_terminated(run_id, "FINISHED" if complete else "KILLED")
    print("\n" + table + "\n\n" + summary + f"\nHTML report: {out}")
    return OptimizeResult(name, run_id, quals, closest, complete, spent, epochs,
                          [k for k in stages if k in rows_by_stage], registered, str(out), pool)


def _closest(pool: list[dict], max_latency_ms: float | None, min_iou: float | None, n: int = 3) -> list[dict]:
    """The candidates that miss the requirements by the least (relative shortfall), with why."""
    def shortfall(r: dict) -> float:
        lat = 0.0 if max_latency_ms is None else max(0.0, r[obj.LATENCY_MS.name] / max_latency_ms - 1)
        iou = 0.0 if min_iou is None else max(0.0, (min_iou - r[obj.IOU.name]) / max(min_iou, 1e-9))
        return lat + iou

    near = sorted(pool, key=shortfall)[:n]
    return [{**r, "misses": misses(r, max_latency_ms, min_iou)} for r in near]


def _fastest_pruned(rows: list[dict], max_latency_ms: float | None, n: int = 3) -> list[dict]:
    """When nothing trained: the candidates nearest the latency requirement, with by how much."""
    pruned = sorted((r for r in rows if r.get(obj.PRUNED) and r.get("spec")), key=lambda r: r[obj.LATENCY_MS.name])
    return [{**r, "misses": [f"latency {r[obj.LATENCY_MS.name]:.3g} ms > {max_latency_ms:g} ms (measured before "
                             f"training, so never trained)"]} for r in pruned[:n]]


def summary_text(name: str, quals: list[dict], closest: list[dict], opt: OptimizeOptions, complete: bool,
                 spent: float, epochs: int, registered: str | None) -> str:
    s = opt.search
    req = " and ".join(x for x in (f"latency <= {s.max_latency_ms:g} ms" if s.max_latency_ms else "",
                                   f"IoU >= {s.min_iou:g}" if s.min_iou is not None else "") if x)
    head = (f"{name}: {'complete' if complete else 'stopped by the time budget'} after {spent:.0f} s, "
            f"{epochs} training epochs; requirement {req} on device class {s.device_class!r}")
    if quals:
        lines = [head, f"{len(quals)} candidate(s) meet the requirement, best IoU first:"]
        for i, r in enumerate(quals, 1):
            lines.append(f"{i}. {r['name']}  IoU {r[obj.IOU.name]:.4f}  {r[obj.LATENCY_MS.name]:.2f} ms  "
                         f"({r['stage']} stage, run {r['run_id']})\n   {r.get('onnx', '')}")
        if registered:
            lines.append(f"registered in MLflow as {registered!r}, aliases 'best' (highest IoU), 'fastest' and "
                         f"'rank-1'..'rank-{len(quals)}' in this order")
        return "\n".join(lines)
    lines = [head, "NOTHING QUALIFIES." + (" The closest candidates:" if closest else " No candidate was measured.")]
    for r in closest:
        iou = "" if r.get(obj.PRUNED) else f"  IoU {r[obj.IOU.name]:.4f}"
        lines.append(f"- {r['name']}{iou}  {r[obj.LATENCY_MS.name]:.3g} ms: misses " + "; ".join(r["misses"]))
    if closest and all(r.get(obj.PRUNED) for r in closest):
        hint = "a higher --effort (narrower models)" if opt.effort != "expert" else "smaller --res"
    else:
        hint = "a higher --effort" if opt.effort != "expert" else "more --epochs or more data"
    lines.append(f"Try {hint}, or relax the requirement." + ("" if complete else
                                                              " The search did not finish: a larger --time-budget continues it."))
    return "\n".join(lines)


def _onnx_path(client, run_id: str) -> str:
    from raysearch.report import onnx_path

    return onnx_path(client, {"run_id": run_id, "artifact_uri": client.get_run(run_id).info.artifact_uri})


MLFLOW_MODEL_DIR = "mlflow_model"


def _log_mlflow_model(client, row: dict) -> None:
    """The candidate's ONNX file as an MLflow model (the onnx flavor) in its run, so that
    ``models:/NAME@best`` downloads (and ``mlflow.pyfunc.load_model`` loads) it."""
    import tempfile

    import mlflow.onnx
    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        mlflow.onnx.save_model(onnx.load(row["onnx"]), f"{tmp}/model", save_as_external_data=False,
                               onnx_execution_providers=["CPUExecutionProvider"],
                               pip_requirements=["onnxruntime", "numpy"])
        client.log_artifacts(row["run_id"], f"{tmp}/model", artifact_path=MLFLOW_MODEL_DIR)


def _register(client, name: str, quals: list[dict], opt: OptimizeOptions) -> str:
    """One registered model per optimization; a version per qualifying candidate (best first),
    aliases ``best`` (highest IoU), ``fastest`` and ``rank-N``. A candidate registered by an
    earlier run of the same optimization keeps its version; versions no longer qualifying on the
    front are tagged ``current=false``."""
    from mlflow.exceptions import MlflowException

    model = f"raysearch-{name}"
    try:
        client.get_registered_model(model)
    except MlflowException:
        client.create_registered_model(model, tags={OPT_TAG: name, "arch": opt.model},
                                       description=f"Candidates of `raysearch optimize` {name} that meet the "
                                                   f"requirement, as ONNX files.")
    versions = client.search_model_versions(f"name='{model}'")
    existing = {v.run_id: v.version for v in versions}
    current = {r["run_id"] for r in quals}
    for v in versions:  # an earlier run's candidate that a better one has since pushed off the front
        if v.run_id not in current:
            client.set_model_version_tag(model, v.version, "current", "false")
    for alias in set(client.get_registered_model(model).aliases) - {"best", "fastest"}:
        client.delete_registered_model_alias(model, alias)
    for rank, r in enumerate(quals, 1):
        version = existing.get(r["run_id"])
        if version is None:
            _log_mlflow_model(client, r)
            mv = client.create_model_version(
                model, source=f"runs:/{r['run_id']}/{MLFLOW_MODEL_DIR}", run_id=r["run_id"],
                tags={"iou": f"{r[obj.IOU.name]:.4f}", "latency_ms": f"{r[obj.LATENCY_MS.name]:.3f}",
                      "spec": r["name"], "precision": r["precision"], "stage": r["stage"]},
                description=f"{r['name']}: IoU {r[obj.IOU.name]:.4f}, {r[obj.LATENCY_MS.name]:.2f} ms")
            version = mv.version
        r["model_version"] = int(version)
        client.set_model_version_tag(model, version, "current", "true")
        client.set_registered_model_alias(model, f"rank-{rank}", version)
    client.set_registered_model_alias(model, "best", quals[0]["model_version"])
    fastest = min(quals, key=lambda r: r[obj.LATENCY_MS.name])
    client.set_registered_model_alias(model, "fastest", fastest["model_version"])
    return model


# ---- command line -------------------------------------------------------------------------------
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
    import argparse

    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--time-budget ")) from None


def add_arguments(p) -> None:
    import argparse

    from raysearch.stages import add_search_args

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
    g.add_argument("--epochs", type=int, help="training epochs per candidate (default 400, 8 with --quick)")
    g.add_argument("--res", type=int, nargs="+", help="input sizes to try (default: the family's, 512 256 224 "
                                                      "192 160 128 96 for the built-in ones; 128 96 64 with --quick)")
    g.add_argument("--int8", action=argparse.BooleanOptionalAction, default=None,
                   help="--int8 / --no-int8: also try int8-quantized candidates (default: only at expert)")
    g.add_argument("--y-channel", action="store_true", help="also try the Y channel of YCrCb as the only input "
                                                            "(the study found it always dominated)")
    g.add_argument("--trials-per-stage", type=int, help="trials of a stage too big for a grid (default: a third "
                                                        f"of its points, at least {GRID_LIMIT})")
    g.add_argument("--quick", action="store_true", help="inputs 128/96/64, 8 epochs, 120 synthetic images, short "
                                                        "benchmarks: minutes on 2 CPUs")
    g.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import MODULE first (it registers your model family with register_family); repeatable")
    g.add_argument("--name", help="name of the optimization (default: derived from its settings)")
    g.add_argument("--fresh", action="store_true", help="start over instead of continuing an earlier run")
    g.add_argument("--seed", type=int, default=0)
    add_search_args(p)


def options_from_args(args) -> OptimizeOptions:
    import importlib
    import os
    import sys

    from raysearch.stages import options_from_args as search_options

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


def result_json(res: OptimizeResult) -> str:
    keep = ("name", "run_id", "stage", "precision", obj.IOU.name, obj.LATENCY_MS.name, "fps", "params_total", "macs",
            "onnx", "model_version", "misses", "spec")
    d = asdict(res)
    d["candidates"] = [{k: r.get(k) for k in keep if k in r} for r in res.candidates]
    d["closest"] = [{k: r.get(k) for k in keep if k in r} for r in res.closest]
    d.pop("pool")
    return json.dumps(d, indent=2)
