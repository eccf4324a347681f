"""`--sampler latency-first`: the expected-hypervolume maths on hand-computed cases, the Bayesian
linear model, and the searcher's bookkeeping through Ray Tune's searcher interface."""

from __future__ import annotations

import math

import numpy as np
import pytest
from ray import tune

from raysearch.records import names as obj
from raysearch.search.latency_first import (
    BayesLinear,
    LatencyFirstSearch,
    config_key,
    expected_hv_gain,
    expected_improvement,
    grid_configs,
)


def test_expected_improvement_at_the_level_is_sd_times_phi0():
    ei = expected_improvement(np.array([0.5]), np.array([0.1]), np.array([0.5]))
    assert ei[0] == pytest.approx(0.1 / math.sqrt(2 * math.pi))
    far_above = expected_improvement(np.array([0.9]), np.array([1e-9]), np.array([0.5]))
    assert far_above[0] == pytest.approx(0.4)


@pytest.mark.parametrize("latency, iou, gain", [
    (2.0, 0.7, 0.2),             # [2,3) over 0.5 by 0.2; [3,5) under 0.8
    (0.5, 0.9, 0.45 + 0.8 + 0.2),  # [0.5,1) over 0 by 0.9; [1,3) over 0.5 by 0.4; [3,5) over 0.8 by 0.1
    (3.0, 0.8, 0.0),             # ties the front point at the same latency
    (5.0, 1.0, 0.0),             # at the box's right edge: no width
])
def test_expected_hv_gain_with_a_sure_iou_is_the_hypervolume_added(latency, iou, gain):
    front = [(1.0, 0.5), (3.0, 0.8), (4.0, 0.6)]  # (4, 0.6) is dominated: it changes nothing
    assert expected_hv_gain(latency, iou, 1e-9, front, right=5.0) == pytest.approx(gain, abs=1e-9)


def test_bayes_linear_learns_a_line_and_is_unsure_away_from_data():
    x = np.stack([np.ones(50), np.linspace(-1, 1, 50)], axis=1)
    y = 0.3 + 0.2 * x[:, 1]
    model = BayesLinear(np.zeros(2), np.ones(2), noise_sd=0.01).fit(x, y)
    assert model.mean == pytest.approx([0.3, 0.2], abs=1e-3)
    _, sd = model.predict(np.array([[1.0, 0.0], [1.0, 10.0]]))
    assert sd[0] < sd[1]
    prior_mu, prior_sd = BayesLinear(np.array([0.5]), np.array([0.3]), noise_sd=0.02).predict(np.ones((1, 1)))
    assert prior_mu[0] == 0.5 and prior_sd[0] == pytest.approx(math.hypot(0.3, 0.02))


GRID = {"a": [0.5, 0.25], "input_hw": [(64, 64), (128, 128)]}
LATENCY = {(0.5, 64): 2.0, (0.5, 128): 8.0, (0.25, 64): 1.0, (0.25, 128): 4.0}


def _searcher(**kw) -> LatencyFirstSearch:
    lat = {config_key(c): LATENCY[(c["a"], c["input_hw"][0])] for c in grid_configs(GRID)}
    s = LatencyFirstSearch(lat, seed=0, **kw)
    s.set_search_properties(None, None, {k: tune.choice(v) for k, v in GRID.items()})
    return s


def _final(iou: float, latency: float) -> dict:
    return {obj.IOU.name: iou, obj.LATENCY_MS.name: latency, obj.FINAL: 1}


def test_every_configuration_once_then_finished():
    s = _searcher()
    seen = []
    for i in range(4):
        c = s.suggest(f"t{i}")
        seen.append(config_key(c))
        s.on_trial_complete(f"t{i}", _final(0.5 + 0.1 * i, LATENCY[(c["a"], c["input_hw"][0])]))
    assert sorted(seen) == sorted(config_key(c) for c in grid_configs(GRID))
    assert s.suggest("t4") == "FINISHED"


def test_the_first_pick_without_data_is_the_fastest_and_running_trials_spread_the_next():
    s = _searcher()
    first = s.suggest("t0")
    assert (first["a"], first["input_hw"][0]) == (0.25, 64)  # the widest stretch of the box lies right of it
    second = s.suggest("t1")  # t0 counts at its predicted IoU: the next pick is not its neighbour by default
    assert config_key(second) != config_key(first)


def test_over_the_latency_budget_is_never_suggested():
    s = _searcher(max_latency_ms=3.0)
    picks = [s.suggest(f"t{i}") for i in range(3)]
    assert [p for p in picks if p != "FINISHED"] and all(
        LATENCY[(p["a"], p["input_hw"][0])] <= 3.0 for p in picks if p != "FINISHED")
    assert picks[-1] == "FINISHED"


def test_only_a_final_report_is_an_observation():
    s = _searcher()
    c0 = s.suggest("t0")
    s.on_trial_complete("t0", {obj.IOU.name: 0.1, obj.LATENCY_MS.name: 1.0, obj.EPOCH: 1})  # stopped at epoch 1
    c1 = s.suggest("t1")
    s.on_trial_complete("t1", None, error=True)
    assert s.observed == {}
    s.suggest("t2")
    s.on_trial_complete("t2", _final(0.8, 2.0))
    assert list(s.observed.values()) == [0.8]
    assert config_key(c0) != config_key(c1)  # tried, even though nothing was learnt from it


def test_points_to_evaluate_come_first_and_state_survives_save_restore(tmp_path):
    s = _searcher(points_to_evaluate=[{"a": 0.5, "input_hw": (128, 128)}])
    assert s.suggest("t0") == {"a": 0.5, "input_hw": (128, 128)}
    s.on_trial_complete("t0", _final(0.9, 8.0))
    s.save(str(tmp_path / "s.pkl"))
    again = _searcher()
    again.restore(str(tmp_path / "s.pkl"))
    assert again.observed == s.observed and again.tried == s.tried
    assert config_key(again.suggest("t1")) == config_key(s.suggest("t1"))


def test_it_survives_ray_pickling_it():
    import pickle

    from ray import cloudpickle

    s = _searcher()
    s.suggest("t0")
    copy = pickle.loads(cloudpickle.dumps(s))
    assert config_key(copy.suggest("t1")) == config_key(s.suggest("t1"))


def test_a_missing_latency_is_named():
    with pytest.raises(ValueError, match="no latency measured for 1 of 4"):
        lat = {config_key(c): 1.0 for c in grid_configs(GRID)[1:]}
        LatencyFirstSearch(lat).set_search_properties(None, None, {k: tune.choice(v) for k, v in GRID.items()})


def test_the_default_search_is_the_same_method_at_every_budget():
    """The replays found one method best at 10%, 25% and 50% of the grid: the default does not
    change with --num-samples; latency-first plans no more trials than the space holds."""
    from raysearch.records import names as obj
    from raysearch.search.methods import method_params
    from raysearch.search.options import SearchOptions, Space, planned_trials
    from raysearch.search.scheduler import FRONT_MARGIN, FRONT_MIN_FINISHED

    space = Space({"a": [0.125, 0.25], "input_hw": [[64, 64], [96, 96], [128, 128]]}, {"arch": "fastscnn"})
    for n in (1, 4, 6, 60, 5000):
        opts = SearchOptions(mode="search", num_samples=n)
        assert (opts.schedule.sampler, opts.schedule.scheduler) == ("latency-first", "none")
        assert planned_trials(space, opts) == min(n, space.size()) == min(n, 6)
        params = method_params(opts)
        assert obj.PARAM_FRONT_MARGIN not in params and params[obj.PARAM_STARTUP_TRIALS] == 0
    params = method_params(SearchOptions.from_flags(mode="search", scheduler="front"))
    assert params[obj.PARAM_FRONT_MIN_FINISHED] == FRONT_MIN_FINISHED and params[obj.PARAM_FRONT_MARGIN] == FRONT_MARGIN
