"""`raysearch optimize`: a model, data, a latency and an accuracy requirement and an effort level
in; the candidate models that meet the requirement out, registered in MLflow.

The stages and what each runs are planned in :mod:`raysearch.optimize.planning`; this module runs them,
keeps the resume point, and concludes (the answer, the report, the model registry).

Every trial is timed before it trains (latency does not depend on the weights), so a candidate
over the latency requirement never trains. All stages share one results cache, so a
configuration is never trained twice.

A time budget (total over every run of the same optimization) stops the running stage like
Ctrl-C at the deadline and returns the best candidates so far; running the same command again
(with a larger budget) continues where it stopped. The optimization is identified by what
decides its outcome (model, data, requirements, effort, ...), not by the budget.
"""

from __future__ import annotations

import html
import json
import logging
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from raysearch.data import open_split
from raysearch.models import get_family
from raysearch.optimize.options import OptimizeOptions
from raysearch.optimize.planning import grid_or_search, plan, stage_space
from raysearch.records import names as obj
from raysearch.records.pareto import pareto_front
from raysearch.records.results import PRUNED, Requirement, TrialRow, candidates
from raysearch.reporting.html import write_html
from raysearch.reporting.plots import plot_front
from raysearch.reporting.tables import front_table
from raysearch.search.driver import SearchRequest, run_search
from raysearch.search.options import SearchOptions, Space
from raysearch.search.runtime import BudgetExpired, local_root, search_state_path, storage_uri
from raysearch.storage import write_atomic
from raysearch.tracking.readback import onnx_path
from raysearch.tracking.registry import register

log = logging.getLogger(__name__)


@dataclass
class OptimizeResult:
    name: str
    run_id: str  # the optimization's MLflow run (the stage searches are its children)
    candidates: list[TrialRow]  # qualifying Pareto candidates, best IoU first (with their onnx)
    closest: list[TrialRow]  # when nothing qualifies: the nearest candidates (`why_not` says what they miss)
    complete: bool  # every stage ran (False: the time budget ran out first)
    spent_s: float
    epochs: int  # training epochs of every trial together
    stages: list[str]
    registered_model: str | None = None
    report: str | None = None
    pool: list[TrialRow] = field(default_factory=list)  # every trained candidate of every stage


# ---- running it -------------------------------------------------------------------------------
@dataclass
class StageState:
    """One stage of an optimization: its search, and once done its trials and cost."""

    status: str  # "started" or "done"
    search: str  # the stage's search name
    rows: list[TrialRow] = field(default_factory=list)
    epochs: int = 0
    parent_run_id: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "search": self.search, "rows": [r.to_dict() for r in self.rows],
                "epochs": self.epochs, "parent_run_id": self.parent_run_id}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StageState:
        return cls(status=d["status"], search=d["search"], rows=[TrialRow.from_dict(r) for r in d.get("rows", [])],
                   epochs=int(d.get("epochs", 0)), parent_run_id=d.get("parent_run_id", ""))


@dataclass
class OptimizeState:
    """What has run, in a small JSON file beside the searches' own state (the resume point)."""

    path: Path
    name: str = ""
    run_id: str = ""  # the optimization's MLflow run
    started: float = 0.0
    spent_s: float = 0.0  # over every run of this optimization
    complete: bool = False
    stages: dict[str, StageState] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> OptimizeState:
        if not path.is_file():
            return cls(path)
        d = json.loads(path.read_text())
        return cls(path, name=d.get("name", ""), run_id=d.get("run_id", ""), started=float(d.get("started", 0.0)),
                   spent_s=float(d.get("spent_s", 0.0)), complete=bool(d.get("complete")),
                   stages={k: StageState.from_dict(v) for k, v in d.get("stages", {}).items()})

    def save(self) -> None:
        write_atomic(self.path, json.dumps({
            "name": self.name, "run_id": self.run_id, "started": self.started, "spent_s": self.spent_s,
            "complete": self.complete, "stages": {k: v.to_dict() for k, v in self.stages.items()}}, indent=1))


def _partial_rows(opt: OptimizeOptions, search: str) -> list[TrialRow]:
    """Finished trials of an interrupted search (from its state file)."""
    from raysearch.tracking.callback import SearchTracker

    return SearchTracker.saved_rows(search_state_path(opt.search, search))


def optimize(opt: OptimizeOptions) -> OptimizeResult:
    """Run (or continue) the optimization; see the module doc."""
    from mlflow.tracking import MlflowClient

    from raysearch.tracking.runs import ended_if_interrupted, ensure_experiment, log_params, run_in_store

    t_start = time.time()
    family = get_family(opt.model)
    sopts = opt.search
    for split in ("train", "val", "test"):  # bad data fails here, in a second, not in every trial
        open_split(sopts.data, split, seed=sopts.seed, limit=sopts.limit)
    root = local_root(sopts)
    name = opt.name or opt.ident()
    if opt.fresh and (root / "optimize" / f"{name}.json").is_file():
        name = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    state = OptimizeState.load(root / "optimize" / f"{name}.json")
    client = MlflowClient(sopts.tracking.store())
    if state.run_id and not run_in_store(client, state.run_id):
        # the saved state belongs to another tracking store: continuing would log into runs it lacks
        fresh = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
        print(f"optimization {name}: its saved state ({state.path}) names run {state.run_id}, which the "
              f"tracking store {sopts.tracking} does not have; starting afresh as {fresh}")
        name = fresh
        state = OptimizeState.load(root / "optimize" / f"{name}.json")
    spent_before = state.spent_s
    deadline = None if opt.time_budget_s is None else t_start + opt.time_budget_s - spent_before
    stages = plan(opt.effort, opt.quantize)
    if not sopts.bench.farm:
        print("latency: measured by a local benchd on THIS machine (device class 'local'), not on your edge "
              "device; pass --farm clusters/farm.yaml --device-class rpi4 for a Pi requirement")
    print(f"optimization {name}: {opt.model}, effort {opt.effort} -> stages {', '.join(stages)}"
          + (f"; time budget {opt.time_budget_s:.0f} s ({max(0.0, opt.time_budget_s - spent_before):.0f} s left)"
             if opt.time_budget_s else ""))

    results_cache = f"{storage_uri(sopts)}/results/{name}"
    complete = True
    rows_by_stage: dict[str, list[TrialRow]] = {}
    if state.run_id:
        run_id = state.run_id
        log.info("continuing optimization %s (%.0f s spent so far)", name, spent_before)
        client.update_run(run_id, status="RUNNING")  # from here on, the try below ends it
    else:
        exp_id = ensure_experiment(client, sopts.tracking.experiment, sopts.tracking.store())
        run_id = client.create_run(exp_id, run_name=name, tags={
            obj.TAG_OPTIMIZATION: name, obj.TAG_KIND: "optimization", obj.TAG_EFFORT: opt.effort,
            "model": opt.model}).info.run_id
        with ended_if_interrupted(client, run_id):  # until the try below takes over
            log_params(client, run_id, {
                "model": opt.model, obj.TAG_EFFORT: opt.effort, "max_latency_ms": sopts.max_latency_ms,
                "min_iou": sopts.min_iou, "data": sopts.data, "device_class": sopts.bench.device_class,
                "epochs": opt.train_epochs, "resolutions": ["x".join(map(str, hw)) for hw in opt.resolutions()],
                "int8": opt.quantize, "y_channel": opt.y_channel, "stages": stages, "time_budget_s": opt.time_budget_s})
            state.name, state.run_id, state.started, state.stages = name, run_id, t_start, {}
            state.save()
    try:
        try:
            _run_stages(state, opt, name, run_id, family, stages, rows_by_stage, deadline, results_cache)
        except BudgetExpired:
            complete = False
            label = stages[len(rows_by_stage)]
            search = state.stages[label].search if label in state.stages else None
            rows_by_stage[label] = [r.with_stage(label) for r in _partial_rows(opt, search)] if search else []
            print(f"\ntime budget reached during stage {label!r}; these are the best candidates so far. To "
                  f"continue, run the same command with a --time-budget above the "
                  f"{spent_before + time.time() - t_start:.0f} s spent in all.")
        spent = spent_before + time.time() - t_start
        state.spent_s, state.complete = spent, complete
        state.save()
        return _conclude(client, opt, name, run_id, rows_by_stage, stages, complete, spent, state)
    except KeyboardInterrupt:
        _end(state, client, run_id, spent_before + time.time() - t_start, "KILLED")
        raise
    except BaseException as e:
        client.set_tag(run_id, obj.TAG_ERROR, str(e)[:4000])
        _end(state, client, run_id, spent_before + time.time() - t_start, "FAILED")
        raise


def _run_stages(state: OptimizeState, opt: OptimizeOptions, name: str, run_id: str, family, stages: list[str],
                rows_by_stage: dict[str, list[TrialRow]], deadline: float | None, results_cache: str) -> None:
    for i, label in enumerate(stages, 1):
        space, weights, epochs = stage_space(label, family, opt, rows_by_stage)
        if space is None or space.size() == 0:
            print(f"[{i}/{len(stages)}] {label}: nothing left to run")
            rows_by_stage[label] = []
            continue
        rows_by_stage[label] = _run_stage(state, opt, name, run_id, label, i, len(stages), space, epochs,
                                          weights, deadline, results_cache)


def _end(state: OptimizeState, client, run_id: str, spent: float, status: str) -> None:
    state.spent_s = spent
    state.save()
    client.set_terminated(run_id, status)


def _run_stage(state: OptimizeState, opt: OptimizeOptions, name: str, run_id: str, label: str, i: int, n: int,
               space: Space, epochs: int, weights: dict | None, deadline: float | None,
               results_cache: str) -> list[TrialRow]:
    st = state.stages.get(label)
    if st is not None and st.status == "done":
        print(f"[{i}/{n}] {label}: done in an earlier run ({len(st.rows)} trials)")
        return st.rows
    if deadline is not None and time.time() >= deadline:
        raise BudgetExpired
    search = f"{name}-{label}"
    size = space.size()
    grid, trials = grid_or_search(size, opt.trials_per_stage)
    sopts = replace(opt.search, mode="grid" if grid else "search", num_samples=trials, name=search,
                    resume=st is not None)
    what = ", ".join(f"{k} {v}" for k, v in space.grid.items() if k != "model") or f"{size} models"
    print(f"\n[{i}/{n}] {label}: {what} -> {'grid of' if grid else 'search, ' + str(trials) + ' trials of'} "
          f"{size} point(s), {epochs} epochs each" + (" (continuing)" if st is not None else ""))
    state.stages[label] = StageState("started", search)
    state.save()
    outcome = run_search(SearchRequest(
        f"optimize-{label}", space, sopts, epochs, name=search, init_checkpoints=weights, deadline=deadline,
        tags={obj.TAG_OPTIMIZATION: name, obj.TAG_PARENT: run_id, obj.TAG_OPTIMIZE_STAGE: label},
        results_cache=results_cache))
    rows = [r.with_stage(label) for r in outcome.rows]
    if outcome.errors:
        failed = _first_error(sopts, outcome.parent_run_id)
        print(f"[{i}/{n}] {label}: {outcome.errors} trial(s) failed; the first error:\n{failed}")
        if not candidates(rows) and not any(r.status == PRUNED for r in rows):
            raise RuntimeError(f"stage {label}: every trial failed, so the optimization cannot go on. "
                               f"The first error:\n{failed}")
    state.stages[label] = StageState("done", search, rows, outcome.epochs_spent, outcome.parent_run_id)
    state.save()
    return rows


def _first_error(sopts: SearchOptions, parent_run_id: str) -> str:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(sopts.tracking.store())
    exp = client.get_run(parent_run_id).info.experiment_id
    failed = client.search_runs([exp], f"tags.`{obj.TAG_PARENT}` = '{parent_run_id}' and attributes.status = "
                                       "'FAILED'", max_results=1)
    text = failed[0].data.tags.get(obj.TAG_ERROR, "") if failed else ""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return "\n".join(lines[-3:]) or "(no error text; see the Ray Tune logs)"



# ---- the answer -------------------------------------------------------------------------------
def why_not(row: TrialRow, requirement: Requirement) -> list[str]:
    """What a near candidate misses; a pruned one was never trained, so only its latency counts."""
    if row.status == PRUNED:
        return [f"latency {row.latency_ms:.3g} ms > {requirement.max_latency_ms:g} ms (measured before training, "
                f"so never trained)"]
    return requirement.misses(row)


def _conclude(client, opt: OptimizeOptions, name: str, run_id: str, rows_by_stage: dict[str, list[TrialRow]],
              stages: list[str], complete: bool, spent: float, state: OptimizeState) -> OptimizeResult:
    import tempfile

    from mlflow.entities import Metric


    s, req = opt.search, opt.search.requirement
    pool = [r for rs in rows_by_stage.values() for r in candidates(rs)]
    front = sorted((pool[i] for i in pareto_front(pool)), key=lambda r: -r.known_iou)
    quals = [r for r in front if req.qualifies(r)]
    for r in quals:
        r.onnx = onnx_path(client, r)
    closest = [] if quals else _closest(pool, req)
    if not quals and not pool:  # everything was over the latency requirement before training
        closest = _fastest_pruned([r for rs in rows_by_stage.values() for r in rs])
    epochs = sum(st.epochs for st in state.stages.values())
    registered = register(client, name, quals, opt.model) if quals else None

    table = front_table(pool, req) if pool else "(no candidate trained to the end)"
    summary = summary_text(name, quals, closest, opt, complete, spent, epochs, registered)
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        (tmp / "candidates.txt").write_text(summary + "\n\nevery candidate:\n" + table + "\n")
        if pool:
            plot_front(pool, tmp / "front.png", title=f"{name}: IoU vs frames per second", requirement=req)
        report = write_html(client, s.tracking.experiment, tmp / "report.html", optimization=name, requirement=req,
                            preface=f"<h2>Optimization {name}</h2><pre>{html.escape(summary)}</pre>")
        client.log_artifacts(run_id, str(tmp))
        out = Path(local_root(s)) / "optimize" / f"{name}.html"
        write_atomic(out, report.read_bytes())
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in {
        "spent_s": spent, obj.EPOCHS_SPENT: epochs, "n_candidates": len(pool), "n_qualifying": len(quals)}.items()])
    client.set_tag(run_id, "complete", obj.flag(complete))
    if not complete:
        client.set_tag(run_id, "budget_expired", "true")
    client.set_terminated(run_id, "FINISHED" if complete else "KILLED")
    print("\n" + table + "\n\n" + summary + f"\nHTML report: {out}")
    return OptimizeResult(name, run_id, quals, closest, complete, spent, epochs,
                          [k for k in stages if k in rows_by_stage], registered, str(out), pool)


def _closest(pool: list[TrialRow], requirement: Requirement, n: int = 3) -> list[TrialRow]:
    """The candidates that miss the requirement by the least (relative shortfall)."""
    return sorted(pool, key=requirement.shortfall)[:n]


def _fastest_pruned(rows: list[TrialRow], n: int = 3) -> list[TrialRow]:
    """When nothing trained: the candidates nearest the latency requirement."""
    return sorted((r for r in rows if r.status == PRUNED and r.spec is not None), key=lambda r: r.known_latency_ms)[:n]


def summary_text(name: str, quals: list[TrialRow], closest: list[TrialRow], opt: OptimizeOptions, complete: bool,
                 spent: float, epochs: int, registered: str | None) -> str:
    s, req = opt.search, opt.search.requirement
    head = (f"{name}: {'complete' if complete else 'stopped by the time budget'} after {spent:.0f} s, "
            f"{epochs} training epochs; requirement {req.describe()} on device class {s.bench.device_class!r}")
    if quals:
        lines = [head, f"{len(quals)} candidate(s) meet the requirement, best IoU first:"]
        for i, r in enumerate(quals, 1):
            lines.append(f"{i}. {r.name}  IoU {r.iou:.4f}  {r.latency_ms:.2f} ms  ({r.stage} stage, run {r.run_id})\n"
                         f"   {r.onnx or ''}")
        if registered:
            lines.append(f"registered in MLflow as {registered!r}, aliases 'best' (highest IoU), 'fastest' and "
                         f"'rank-1'..'rank-{len(quals)}' in this order")
        return "\n".join(lines)
    lines = [head, "NOTHING QUALIFIES." + (" The closest candidates:" if closest else " No candidate was measured.")]
    for r in closest:
        iou = "" if r.status == PRUNED else f"  IoU {r.iou:.4f}"
        lines.append(f"- {r.name}{iou}  {r.latency_ms:.3g} ms: misses " + "; ".join(why_not(r, req)))
    if closest and all(r.status == PRUNED for r in closest):
        hint = "a higher --effort (narrower models)" if opt.effort != "expert" else "smaller --res"
    else:
        hint = "a higher --effort" if opt.effort != "expert" else "more --epochs or more data"
    lines.append(f"Try {hint}, or relax the requirement." + ("" if complete else
                                                              " The search did not finish: a larger --time-budget continues it."))
    return "\n".join(lines)


def result_json(res: OptimizeResult, requirement: Requirement) -> str:
    d = {f.name: getattr(res, f.name) for f in fields(res) if f.name not in ("candidates", "closest", "pool")}
    d["candidates"] = [r.summary() for r in res.candidates]
    d["closest"] = [{**r.summary(), "misses": why_not(r, requirement)} for r in res.closest]
    return json.dumps(d, indent=2)
