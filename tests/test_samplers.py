"""Every --sampler survives what Ray Tune does with it (pickling the searcher) and keeps working."""

from __future__ import annotations

import pickle

import optuna
import pytest
from ray import cloudpickle

from raysearch.samplers import OPTUNA_SAMPLERS, make_sampler


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
