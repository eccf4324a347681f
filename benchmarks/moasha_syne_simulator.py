"""The peer on its own ground: Syne Tune's MOASHA run on our recorded tables through Syne Tune's own
tabulated-blackbox simulator (`UserBlackboxBackend` + `SimulatorCallback`), scored exactly as
`raysearch replay` scores every method, as a cross-check of `raysearch replay --methods moasha`
(which drives the same MOASHA through our simulator).

    python benchmarks/moasha_syne_simulator.py                 # tables A and B, 20 seeds, 4 workers
    python benchmarks/moasha_syne_simulator.py --tables A --seeds 5

The table as a Syne Tune `BlackboxTabular`: two categorical hyperparameters, the model (a, t, r,
pp) and the input size (MOASHA samples each uniformly: uniform over the configurations, as over the
knobs' product, since the tables are full grids); fidelity: the epoch 1..E; per (configuration, training seed, epoch) the objectives
validation IoU (negated: MOASHA minimizes every metric), latency (the configuration's, from the chosen source), elapsed time (the recorded
epoch times summed, plus the trial's fixed cost at its last epoch) and the test IoU a trial
trained to the end reports. MOASHA ranks its rungs on (validation IoU max, latency min), grace 1,
factor 3, one bracket, max_t = E.

Time and workers, ours against Syne Tune's: both simulate N workers, each trial taking its recorded
epoch times; a freed worker starts the next trial at once. Differences: Syne Tune's backend draws
a trial's training seed with NumPy's global generator (seeded here by the replay seed), ours with
its own seeded generator; Syne Tune adds its fixed cost only at the last epoch as we do; Syne
Tune counts every reported epoch as an evaluation (our "epochs spent"). The budget is counted in
reported epochs, the front is made of trials that reported epoch E, the box and the grid's
reference are `raysearch.replay.simulator`'s (`hv_box`, `grid_hypervolume`).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from raysearch.records.pareto import hypervolume
from raysearch.replay.simulator import grid_hypervolume, hv_box
from raysearch.replay.table import load

REPO = Path(__file__).resolve().parents[1]
BUDGETS = (0.1, 0.25, 0.5)
# MOASHA minimizes every metric (do_minimize): the table holds the validation IoU negated
OBJECTIVES = ["neg_val_iou", "latency_ms", "elapsed_time", "test_iou"]


def blackbox(table, source: str):
    import pandas as pd
    from syne_tune.blackbox_repository.blackbox_tabular import BlackboxTabular
    from syne_tune.config_space import choice, randint

    ids = sorted(table.configs)
    e = table.epochs
    values = np.zeros((len(ids), len(table.seeds), e, len(OBJECTIVES)))
    for i, cid in enumerate(ids):
        latency = table.latency_ms(cid, source)
        for j, seed in enumerate(table.seeds):
            run = table.runs[(cid, seed)]
            elapsed = np.cumsum([ep.seconds for ep in run.curve])
            elapsed[-1] += run.fixed_s
            for k, ep in enumerate(run.curve):
                values[i, j, k] = (-ep.val_iou, latency, elapsed[k], run.test_iou)
    hps = pd.DataFrame([split(cid) for cid in ids])
    space = {k: choice(sorted(set(hps[k]))) for k in hps.columns}
    assert math.prod(len(v.categories) for v in space.values()) == len(ids), "the table is not a full grid"
    return BlackboxTabular(hyperparameters=hps, configuration_space=space, fidelity_space={"epoch": randint(1, e)},
                           objectives_evaluations=values, fidelity_values=np.arange(1, e + 1),
                           objectives_names=OBJECTIVES), space


def split(cid: str) -> dict[str, str]:
    """A configuration id (`record_table.config_id`: a-t-r-pp-input) as two hyperparameters, the
    model and the input (Syne Tune's table index needs two columns or more)."""
    model, _, size = cid.rpartition("-")
    return {"model": model, "input": size}


def one_seed(table, bb, space: dict, seed: int, workers: int, source: str) -> dict:
    from syne_tune import Tuner
    from syne_tune.backend.simulator_backend.simulator_callback import SimulatorCallback
    from syne_tune.blackbox_repository.simulated_tabular_backend import UserBlackboxBackend
    from syne_tune.optimizer.schedulers.multiobjective.moasha import MOASHA
    from syne_tune.tuner_callback import TunerCallback

    ref, grid_hv = hv_box(table, source), grid_hypervolume(table, source)
    top = max(BUDGETS) * table.grid_epochs

    class Trace(TunerCallback):
        """(epochs spent, share) after every trial that reported its last epoch, in simulated order."""

        def __init__(self) -> None:
            self.spent, self.points, self.trace, self.trials, self.stopped = 0, [], [], set(), 0

        def on_trial_result(self, trial, status, result, decision) -> None:
            self.spent += 1
            self.trials.add(trial.trial_id)
            if int(result["epoch"]) == table.epochs:
                self.points.append({"iou": result["test_iou"], "latency_ms": result["latency_ms"]})
                self.trace.append((self.spent, hypervolume(self.points, ref) / grid_hv))
            elif decision == "STOP":
                self.stopped += 1

    np.random.seed(seed)  # the backend's draw of each trial's training seed; MOASHA's own sampling
    trace = Trace()
    scheduler = MOASHA(space, metrics=["neg_val_iou", "latency_ms"], do_minimize=True,
                       time_attr="epoch", max_t=table.epochs, grace_period=1, reduction_factor=3, random_seed=seed)
    backend = UserBlackboxBackend(blackbox=bb, elapsed_time_attr="elapsed_time")
    tuner = Tuner(trial_backend=backend, scheduler=scheduler, n_workers=workers, sleep_time=0,
                  stop_criterion=lambda status: trace.spent > top,  # our budget: reported epochs
                  callbacks=[SimulatorCallback(), trace], results_update_interval=1e9, print_update_interval=1e9,
                  save_tuner=False, tuner_name=f"moasha-{table.name}-{seed}", suffix_tuner_name=True)
    tuner.run()
    shares = []
    for b in BUDGETS:
        reached = [s for spent, s in trace.trace if spent <= b * table.grid_epochs]
        shares.append(reached[-1] if reached else 0.0)
    return {"shares": shares, "trials": len(trace.trials), "stopped": trace.stopped, "epochs": trace.spent}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tables", nargs="+", default=["A", "B"])
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--source", default="host")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "moasha-syne-simulator.json"))
    args = p.parse_args()
    logging.getLogger("syne_tune").setLevel(logging.ERROR)
    os.environ.setdefault("SYNETUNE_FOLDER", tempfile.mkdtemp(prefix="syne-tune-"))  # its experiment files
    doc = {"workers": args.workers, "seeds": args.seeds, "budgets": list(BUDGETS), "tables": {}}
    for name in args.tables:
        table = load(REPO / "benchmarks" / "tables" / f"{name}.jsonl.gz")
        bb, space = blackbox(table, args.source)
        t0 = time.time()
        runs = [one_seed(table, bb, space, s, args.workers, args.source) for s in range(args.seeds)]
        cells = {}
        for i, b in enumerate(BUDGETS):
            vals = [r["shares"][i] for r in runs]
            cells[f"{b:g}"] = {"hv_share_mean": round(statistics.fmean(vals), 4),
                               "hv_share_se": round(statistics.stdev(vals) / len(vals) ** 0.5, 4),
                               "hv_shares": [round(v, 4) for v in vals]}
        doc["tables"][name] = {"budgets": cells, "trials_mean": round(statistics.fmean(r["trials"] for r in runs), 1),
                               "stopped_mean": round(statistics.fmean(r["stopped"] for r in runs), 1),
                               "seconds": round(time.time() - t0, 1)}
        print(f"table {name}: " + " / ".join(f"{c['hv_share_mean']:.3f} +- {c['hv_share_se']:.3f}"
                                             for c in cells.values())
              + f" at {' / '.join(f'{b:.0%}' for b in BUDGETS)}; {doc['tables'][name]['trials_mean']} trials, "
                f"{doc['tables'][name]['stopped_mean']} stopped; {time.time() - t0:.0f} s", flush=True)
    Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
