"""The simulator is the product: a tiny table replayed through the real driver (`run_search` on a
real local Ray, with a trainable that reports the table instead of training, one trial at a time)
and through the simulator with the same seed gives the same trials, the same stop decisions and
the same front."""

from __future__ import annotations

import logging

import pytest

from raysearch.models import ModelSpec
from raysearch.records.pareto import pareto_front
from raysearch.records.results import DUPLICATE, STOPPED, TRAINED
from raysearch.replay.simulator import simulate, table_space, table_trial
from raysearch.replay.table import load
from raysearch.search.driver import SearchRequest, run_search
from raysearch.search.methods import SAMPLERS
from raysearch.search.options import SearchOptions
from raysearch.search.runtime import start_local_ray
from tests.helpers.replay_tables import make_table

pytestmark = pytest.mark.slow

OUTCOME = {TRAINED: "finished", STOPPED: "stopped", DUPLICATE: "duplicate"}


@pytest.mark.parametrize("scheduler", ["pareto-asha", "asha"])
def test_the_driver_and_the_simulator_make_the_same_search(tmp_path, scheduler):
    import ray

    # 6 configurations x 4 epochs, one seed; rungs at epochs 1 and 3 (grace 1, factor 3)
    points = {}
    for i, (a, res) in enumerate((a, res) for a in (0.125, 0.25, 0.5) for res in (64, 96)):
        q = 0.4 + 0.1 * i * (1 if i % 2 else -0.5)
        points[f"a{a:g}-{res}"] = ({"a": a, "input_hw": res}, a * res / 8,
                                   [[q, q + 0.05, q + 0.07, q + 0.08]], [q + 0.1])
    path = make_table(tmp_path / "tiny.jsonl", points, epochs=4)
    table = load(path)
    opts = SearchOptions.from_flags(mode="search", sampler="tpe", scheduler=scheduler, num_samples=8, seed=5, concurrency=1,
                         data="synthetic:30", bench_runs=3, storage_path=str(tmp_path / "ray"),
                         tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        live = run_search(SearchRequest("replay", table_space(table), opts, table.epochs, trial_fn=table_trial(str(path))))
    finally:
        ray.shutdown()
    sim = simulate(table, opts, workers=1)

    by_spec = {ModelSpec.from_dict(s).to_json(): cid for cid, s in table.configs.items()}
    live_trials = [(by_spec[r.spec.to_json()], OUTCOME[r.status]) for r in live.rows]
    assert live_trials == [(t.config, t.outcome) for t in sim.trials]
    assert live.epochs_spent == sim.epochs_spent
    finished = [t for t in sim.trials if t.outcome == "finished"]
    sim_front = [finished[i].config for i in pareto_front([{"iou": t.iou, "latency_ms": t.latency_ms} for t in finished])]
    assert sorted(by_spec[r.spec.to_json()] for r in live.front) == sorted(sim_front)
    assert any(outcome == "stopped" for _, outcome in live_trials)  # the scheduler had decisions to make


@pytest.fixture(scope="module")
def local_ray():
    import ray

    start_local_ray(num_cpus=2)
    yield
    ray.shutdown()


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_a_configuration_is_never_charged_twice(tmp_path, local_ray, sampler, caplog):
    """A grid of 4 configurations and --num-samples 10 on real Ray: 4 trials, each configuration
    once, and the search ends saying the space is exhausted, whatever the sampler."""
    points = {f"a{a:g}-{res}": ({"a": a, "input_hw": res}, a * res / 8, [[0.4 + a, 0.5 + a]], [0.6 + a])
              for a in (0.125, 0.25) for res in (64, 96)}
    table = load(make_table(tmp_path / "four.jsonl", points, epochs=2))
    opts = SearchOptions.from_flags(mode="search", sampler=sampler, scheduler="none", num_samples=10, seed=0,
                                    concurrency=1, data="synthetic:30", bench_runs=3, storage_path=str(tmp_path / "ray"),
                                    tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    with caplog.at_level(logging.INFO, logger="raysearch.search"):
        live = run_search(SearchRequest("replay", table_space(table), opts, table.epochs,
                                        trial_fn=table_trial(str(tmp_path / "four.jsonl"))))
    assert len(live.rows) == 4 and all(r.status == TRAINED for r in live.rows)
    assert len({r.spec.to_json() for r in live.rows}) == 4
    assert "the space is exhausted" in caplog.text
