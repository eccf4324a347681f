"""The end of a search, on the driver: its front, hypervolume, tables and plots logged to the parent run."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from raysearch.records import names as obj
from raysearch.records.names import LATENCY_MS
from raysearch.records.pareto import (
    dominates,
    front_hypervolume,
    pareto_front,
)
from raysearch.records.results import DUPLICATE, FAILED, PRUNED, STATUSES, STOPPED, Requirement, TrialRow, candidates
from raysearch.reporting.plots import plot_front, plot_hypervolume
from raysearch.reporting.tables import front_table, write_front_csv
from raysearch.tracking.ui import budget_line, experiment_link, method_line, set_note, ui_hint

if TYPE_CHECKING:  # pragma: no cover
    from mlflow.tracking import MlflowClient





# ---- the end of a search (on the driver) ------------------------------------------------------
def status_counts(rows: Sequence[TrialRow]) -> str:
    n = {s: sum(1 for r in rows if r.status == s) for s in STATUSES}
    return (f"{len(candidates(list(rows)))} trained to the end, {n[PRUNED]} pruned by latency before "
            f"training, {n[STOPPED]} stopped early by the scheduler, {n[DUPLICATE]} repeated "
            f"configurations (not retrained)" + (f", {n[FAILED]} failed" if n[FAILED] else ""))


def stopped_near_front(rows: Sequence[TrialRow], front: Sequence[TrialRow]) -> str:
    """How many stopped trials sit beside the final front (within its latency range), and how many
    of those the front did not dominate when they were stopped: what early stopping may have cut."""
    stopped = [r for r in rows if r.status == STOPPED and r.iou is not None and r.latency_ms is not None]
    if not stopped or not front:
        return ""
    lo, hi = min(r.latency_ms or 0.0 for r in front), max(r.latency_ms or 0.0 for r in front)
    near = [r for r in stopped if lo <= (r.latency_ms or 0.0) <= hi]
    free = [r for r in near if not any(dominates(f, r) for f in front)]
    return (f"{len(near)} of the {len(stopped)} stopped trials lie within the front's latency range "
            f"({lo:.3g}-{hi:.3g} ms); {len(free)} of them were not dominated by the front when stopped")


def finish_search(client: "MlflowClient", parent_id: str, stage: str, rows: list[TrialRow], hv_history: list,
                  requirement: Requirement, hv_latency: float | None) -> tuple[list[TrialRow], float]:
    """Tag every child (Pareto-optimal, qualifies), log the front's figures and files on the
    parent (front.csv, front.png, hypervolume.png, candidates.txt), write the parent's description
    (`search_note`), print the table and where MLflow shows the trials; returns
    (the front, best IoU first; the final hypervolume). ``hv_latency``: the reference latency
    (None: the largest measured)."""
    from mlflow.entities import Metric

    cands = candidates(rows)
    front = [cands[i] for i in pareto_front(cands)]
    front_ids = {r.run_id for r in front}
    for r in rows:
        client.set_tag(r.run_id, obj.TAG_PARETO, obj.flag(r.run_id in front_ids))
        client.set_tag(r.run_id, obj.TAG_QUALIFIES, obj.flag(r.is_candidate() and requirement.qualifies(r)))
    front_hv = front_hypervolume(cands, rows, hv_latency)
    hv, share, ref = front_hv.value, front_hv.share, front_hv.reference
    now = int(time.time() * 1000)
    client.log_batch(parent_id, metrics=[Metric(k, float(v), now, 0) for k, v in (
        (obj.FINAL_HYPERVOLUME, hv), (obj.FINAL_HYPERVOLUME_NORMALIZED, share),
        (obj.HV_REFERENCE_LATENCY, ref[LATENCY_MS.name]), (obj.N_PARETO, len(front)))])
    table = front_table(cands, requirement) if cands else "(no trial finished training)"
    table += "\n" + status_counts(rows)
    if near := stopped_near_front(rows, front):
        table += "\n" + near
    if requirement.constrained and cands and not any(requirement.qualifies(r) for r in front):
        closest = sorted(cands, key=lambda r: len(requirement.misses(r)))[:3]
        table += "\nnothing qualifies; the closest:\n" + "\n".join(
            f"  {r.name}: {', '.join(requirement.misses(r))}" for r in closest)
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        if rows:
            write_front_csv(rows, tmp / "front.csv")
            plot_front(cands or rows, tmp / "front.png", title=f"{stage}: IoU vs frames per second",
                       requirement=requirement, stopped=[r for r in rows if r.status == STOPPED],
                       hypervolume=(share, ref[LATENCY_MS.name]))
        if hv_history:
            plot_hypervolume([(h[0], h[3] if len(h) > 3 else h[2]) for h in hv_history], tmp / "hypervolume.png")
        (tmp / "candidates.txt").write_text(table)
        client.log_artifacts(parent_id, str(tmp))
        files = sorted(p.name for p in tmp.iterdir())
    front.sort(key=lambda r: -(r.iou or 0.0))
    parent = client.get_run(parent_id)
    set_note(client, parent_id, search_note(parent, stage, rows, front, share, ref[LATENCY_MS.name], requirement, files))
    print(f"\n{stage}: {len(rows)} trials, {len(front)} on the Pareto front, hypervolume {share:.3f} of the box "
          f"IoU 0..1 x latency 0..{ref[LATENCY_MS.name]:.3g} ms ({hv:.4g} IoU x ms)")
    print(table)
    if (where := ui_hint(client.tracking_uri, parent.info.experiment_id)) is not None:
        print(where)
    return front, hv


#: what each file `finish_search` logs on the parent shows
ARTIFACTS = {"front.png": "IoU against frames per second, the front marked",
             "hypervolume.png": "the front's hypervolume share as trials ended",
             "front.csv": "every trial's figures", "candidates.txt": "the table printed at the end"}


def search_note(parent, stage: str, rows: Sequence[TrialRow], front: Sequence[TrialRow], share: float,
                ref_latency: float, requirement: Requirement, files: Sequence[str]) -> str:
    """The parent run's description once its search has ended (markdown): how it searched, what it
    spent, what became of its trials, its front, its hypervolume share and where its plots are."""
    params, metrics = parent.data.params, parent.data.metrics
    n = {s: sum(1 for r in rows if r.status == s) for s in STATUSES}
    trained = len(candidates(list(rows)))
    trials = (f"{len(rows)}: {trained} trained to the end, {n[STOPPED]} stopped early by the scheduler, "
              f"{n[PRUNED]} pruned by latency before training"
              + (f", {n[DUPLICATE]} repeated configurations (not retrained)" if n[DUPLICATE] else "")
              + (f", {n[FAILED]} failed" if n[FAILED] else ""))
    lines = [f"**raysearch search `{parent.info.run_name}`** ({stage}), ended "
             f"{time.strftime('%Y-%m-%d %H:%M', time.localtime())}.", "",
             f"- Method: {method_line(params)}",
             f"- Budget: {budget_line(params, metrics.get(obj.EPOCHS_SPENT))}",
             f"- Trials: {trials}",
             f"- Hypervolume: {share:.3f} of the box IoU 0..1 x latency 0..{ref_latency:.3g} ms "
             f"(`{obj.FINAL_HYPERVOLUME_NORMALIZED}`)", ""]
    if front:
        need = requirement.constrained
        lines += [f"**Pareto front** ({len(front)}, best IoU first; the child runs tagged `{obj.TAG_PARETO}`)", "",
                  "| trial | IoU | latency (ms) |" + (" meets the requirement |" if need else ""),
                  "|---|---:|---:|" + ("---|" if need else "")]
        for r in front:
            lines.append(f"| {r.name} | {r.iou if r.iou is not None else float('nan'):.4f} | "
                         f"{r.latency_ms if r.latency_ms is not None else float('nan'):.3g} |"
                         + ((" yes |" if requirement.qualifies(r) else " no |") if need else ""))
    else:
        lines.append("**Pareto front**: empty (no trial was trained to the end).")
    lines += ["", "**Plots and files** (this run's artifacts): "
              + "; ".join(f"`{f}` ({ARTIFACTS[f]})" if f in ARTIFACTS else f"`{f}`" for f in files) + ".",
              "", f"[Every trial, best IoU first, with IoU, latency and the Pareto flag]"
                  f"({experiment_link(parent.info.experiment_id)})"]
    return "\n".join(lines)


