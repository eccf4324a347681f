"""Every --sampler survives what Ray Tune does with it (pickling the searcher) and keeps working."""

from __future__ import annotations

import pickle

import optuna
import pytest
from ray import cloudpickle

from raysearch.search.samplers import OPTUNA_SAMPLERS, make_sampler


@pytest.mark.parametrize("name", OPTUNA_SAMPLERS)
def test_each_sampler_pickles_and_still_samples(name):
    sampler = make_sampler(name, seed=0, num_samples=12, startup_trials=2)
    copy = pickle.loads(cloudpickle.dumps(sampler))  # Optuna 5.1's NSGA-II held a threading.Lock here
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=copy)
    for i in range(5):
        trial = study.ask()
        x = trial.suggest_categorical("x", [1, 2, 3, 4])
        study.tell(trial, [x / 4, float(x + i % 2)])
    assert len(study.trials) == 5 and all(t.state.name == "COMPLETE" for t in study.trials)
    assert pickle.loads(pickle.dumps(copy)) is not None  # and again, after it ran


def test_unknown_sampler_is_named():
    with pytest.raises(ValueError, match="'cmaes' is not one of Optuna's samplers"):
        make_sampler("cmaes", seed=0, num_samples=3)


def test_what_optuna_is_told_of_a_trial_the_scheduler_stopped():
    """Ray Tune hands a stopped trial's last report to `OptunaSearch.on_trial_complete`, which tells
    Optuna the trial COMPLETED with those values: an epoch-1 validation IoU stands in the study as a
    final result (why `--sampler latency-first` fits only final reports)."""
    from raysearch.records import names as obj
    from raysearch.search.methods import make_searcher
    from raysearch.search.options import SearchOptions, Space, param_space

    searcher = make_searcher(SearchOptions.from_flags(mode="search", sampler="tpe", num_samples=3))
    searcher.set_search_properties(None, None, param_space(Space({"a": [0.5, 0.25]}), "search"))
    searcher.suggest("t0")
    searcher.on_trial_complete("t0", {obj.IOU.name: 0.0, obj.LATENCY_MS.name: 2.0, obj.EPOCH: 1})  # stopped at epoch 1
    (trial,) = searcher.inner._ot_study.trials
    assert trial.state == optuna.trial.TrialState.COMPLETE and trial.values == [0.0, 2.0]
