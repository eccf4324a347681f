"""What a search saved against training its whole grid: the epochs it trained of the grid's,
what it measured, stopped and pruned, and - when the same store holds a finished grid search of
the same space and epochs - the share of that grid's hypervolume its front reaches."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

from raysearch.records import names as obj
from raysearch.records.pareto import default_reference, hypervolume
from raysearch.records.results import DUPLICATE, PRUNED, STOPPED, TrialRow, candidates

if TYPE_CHECKING:  # pragma: no cover
    from mlflow.tracking import MlflowClient


def grid_search_of(client: MlflowClient, experiment_id: str, stage: str, grid: str, epochs: int,
                   exclude: str = "") -> tuple[str, list[TrialRow]] | None:
    """(name, every trial) of the newest finished grid search of ``stage`` over the same grid and
    epochs in the experiment; None when there is none."""
    from raysearch.tracking.readback import row_from_run

    parents = client.search_runs([experiment_id], f"tags.{obj.TAG_STAGE} = '{stage}' and tags.{obj.TAG_MODE} = 'grid' "
                                                  "and attributes.status = 'FINISHED'",
                                 order_by=["attributes.start_time DESC"], max_results=50)
    for p in parents:
        if p.info.run_id == exclude or p.data.params.get("epochs") != str(epochs):
            continue
        if _same_grid(p.data.params.get("grid", ""), grid):
            kids = client.search_runs([experiment_id], f"tags.`{obj.TAG_PARENT}` = '{p.info.run_id}'")
            return p.info.run_name, [row_from_run(k, p.info.run_name) for k in kids]
    return None


def _same_grid(a: str, b: str) -> bool:
    try:
        return bool(json.loads(a) == json.loads(b))
    except ValueError:
        return False


def share_of_grid(rows: Sequence[TrialRow], grid_rows: Sequence[TrialRow]) -> float:
    """The hypervolume of ``rows``' front over the grid's, both in the box the grid's latencies set."""
    lats = [r.latency_ms for r in grid_rows if r.latency_ms is not None]
    ref = default_reference(max(lats))
    grid_hv = hypervolume(candidates(list(grid_rows)), ref)
    return hypervolume(candidates(list(rows)), ref) / grid_hv if grid_hv > 0 else 0.0


def savings_lines(client: MlflowClient, parent_id: str, stage: str, rows: Sequence[TrialRow], *, epochs_spent: int,
                  space_size: int, epochs: int, measured_first: int, grid: str) -> list[str]:
    """The lines the stage prints after a search (not after a grid: it is the reference)."""
    n = {s: sum(1 for r in rows if r.status == s) for s in (PRUNED, STOPPED, DUPLICATE)}
    grid_epochs = space_size * epochs
    lines = [f"saved: {epochs_spent} epochs trained of the {grid_epochs} a grid of these {space_size} configurations "
             f"takes ({epochs_spent / grid_epochs:.0%})" if grid_epochs else f"{epochs_spent} epochs trained",
             f"       {len(candidates(list(rows)))} trained to the end, {n[STOPPED]} stopped early, {n[PRUNED]} pruned "
             f"by latency untrained, {n[DUPLICATE]} repeats not retrained"
             + (f"; {measured_first} configurations' latency measured before training" if measured_first else "")]
    if not space_size:
        return lines + ["       the space is continuous: there is no grid to compare with"]
    exp_id = client.get_run(parent_id).info.experiment_id
    found = grid_search_of(client, exp_id, stage, grid, epochs, exclude=parent_id)
    if found is None:
        lines.append("       the whole grid was not trained in this store: run the same stage with --mode grid "
                     "(the same --epochs) once, and every later search reports its share of the grid's hypervolume")
    else:
        name, grid_rows = found
        lats = [r.latency_ms for r in grid_rows if r.latency_ms is not None]
        if lats:
            lines.append(f"       its front reaches {share_of_grid(rows, grid_rows):.1%} of the hypervolume of the "
                         f"grid search {name} ({len(grid_rows)} configurations, box IoU 0..1 x latency 0.."
                         f"{max(lats):.3g} ms)")
    return lines
