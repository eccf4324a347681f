"""A live search on a space no sweep covers (issue 31): stage 4's knobs with the width continuous,
the input size in steps of 32, expansion, repetitions and pyramid pooling, run for real by the
product (`python raysearch/stage4.py --mode search`, a local Ray, the local benchd on its reserved
core), for several seeds: how many configurations the latency model had measured on the farm
against how many it predicted, what the search trained, its hypervolume, and where the time went.

    python benchmarks/live_continuous.py                          # latency-first, seeds 0 1 2
    python benchmarks/live_continuous.py --samplers latency-first random --seeds 0

Latency-first lists the continuous width at its evenly spaced values (`CONTINUOUS_LEVELS`): 9 widths x
7 sizes x 3 x 3 x 2 = 1,134 configurations, predicted by the latency model (``--latency-sweep auto``
does not sweep the values of a continuous knob); Optuna's samplers draw any width. The scale is the
quick preset's (120 synthetic images) with 2 epochs a trial: the point is the latency model's work on
a large space, not the front's IoU. Each search has a storage (and so a latency cache) of its own: each
seed starts cold. Runs go to `runs/live-continuous/`, figures to
`benchmarks/results/live-continuous.json`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402
from raysearch.records import names as obj  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "runs" / "live-continuous"
OUT = REPO / "benchmarks" / "results" / "live-continuous.json"
SPACE = ["a=0.125:1", "res=64:256:32", "t=6,4,2", "r=3,2,1", "pp=0,1"]


def run(sampler: str, seed: int, trials: int, epochs: int) -> dict:
    from mlflow.tracking import MlflowClient

    name = f"{sampler}-seed{seed}"
    uri = f"sqlite:///{WORK / 'mlflow.db'}"
    cmd = [sys.executable, str(REPO / "raysearch" / "stage4.py"), "--quick", "--mode", "search", "--sampler", sampler,
           "--num-samples", str(trials), "--epochs", str(epochs), "--seed", str(seed), "--name", name,
           "--tracking-uri", uri, "--storage-path", str(WORK / name), "--concurrency", "1",
           *[arg for knob in SPACE for arg in ("--space", knob)]]
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.time() - t0
    if proc.returncode != 0:
        sys.exit(f"{name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("raysearch")
    (parent,) = client.search_runs([exp.experiment_id], f"tags.`{obj.TAG_SEARCH}` = '{name}' and "
                                                        f"tags.{obj.TAG_STAGE} = 'stage4'", max_results=1)
    kids = client.search_runs([exp.experiment_id], f"tags.`{obj.TAG_PARENT}` = '{parent.info.run_id}'")
    m = parent.data.metrics
    log = proc.stdout + proc.stderr
    measuring = sum(1 for line in log.splitlines() if "latency measured for the search" in line)
    return {"sampler": sampler, "seed": seed, "trials": len(kids), "wall_s": round(wall, 1),
            "measured": m.get(obj.LATENCY_MEASURED), "predicted": m.get(obj.LATENCY_PREDICTED),
            "measure_lines": measuring, "hv_normalized": m.get(obj.FINAL_HYPERVOLUME_NORMALIZED),
            "widths": sorted(float(k.data.params["a"]) for k in kids),
            "sizes": sorted(int(k.data.params["input_h"]) for k in kids)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samplers", nargs="+", default=["latency-first"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    done = json.loads(OUT.read_text()) if OUT.exists() else {"runs": []}
    have = {(r["sampler"], r["seed"]) for r in done["runs"]}
    for sampler in args.samplers:
        for seed in args.seeds:
            if (sampler, seed) in have:
                continue
            row = run(sampler, seed, args.trials, args.epochs)
            print(json.dumps({k: v for k, v in row.items() if k not in ("widths", "sizes")}), flush=True)
            done["runs"].append(row)
            done.update(machine=machine(), space=SPACE, trials=args.trials, epochs=args.epochs)
            OUT.write_text(json.dumps(done, indent=1) + "\n")
    for r in done["runs"]:
        print(f"{r['sampler']:14s} seed {r['seed']}: {r['trials']} trials in {r['wall_s']:.0f} s, latency measured "
              f"{r['measured']} / predicted {r['predicted']}, hypervolume share of its box {r['hv_normalized']}")


if __name__ == "__main__":
    main()
