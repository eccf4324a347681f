"""The table of search methods (`raysearch.search.methods`): every sampler and scheduler builds,
logs what it is, and is what the command line offers."""

from __future__ import annotations

import pytest
from ray.tune.schedulers import ASHAScheduler

from raysearch.records import names as obj
from raysearch.search.distinct import DistinctSearch
from raysearch.search.latency_first import LatencyFirstSearch
from raysearch.search.methods import (
    SAMPLER_TABLE,
    SAMPLERS,
    SCHEDULER_TABLE,
    SCHEDULERS,
    make_scheduler,
    make_searcher,
    method_params,
    needs_latency_first,
)
from raysearch.search.options import SearchOptions
from raysearch.search.samplers import OPTUNA_SAMPLERS
from raysearch.search.scheduler import FrontStopping, ParetoASHA

BUILT = {"pareto-asha": ParetoASHA, "front": FrontStopping, "asha": ASHAScheduler, "none": type(None)}


@pytest.mark.parametrize("name", SCHEDULERS)
def test_every_scheduler_builds_and_logs_its_settings(name, tmp_path):
    opts = SearchOptions.from_flags(mode="search", scheduler=name, grace_period=2)
    built = make_scheduler(opts, epochs=9, state_path=tmp_path / "state.json")
    assert isinstance(built, BUILT[name])
    params = method_params(opts)
    assert (obj.PARAM_FRONT_MARGIN in params) == (name == "front")
    if name == "pareto-asha":
        assert built.milestones == [2, 6]  # grace 2 x 3^k below the 9th epoch


@pytest.mark.parametrize("name", SAMPLERS)
def test_every_sampler_builds_its_searcher_and_says_what_it_needs(name):
    opts = SearchOptions.from_flags(mode="search", sampler=name, num_samples=4)
    assert needs_latency_first(opts) == (name == "latency-first")
    assert not needs_latency_first(SearchOptions.from_flags(mode="grid", sampler=name))
    if name == "latency-first":
        with pytest.raises(ValueError, match="--sampler latency-first needs"):
            make_searcher(opts)
        assert isinstance(make_searcher(opts, latencies={}), LatencyFirstSearch)
    else:
        assert isinstance(make_searcher(opts), DistinctSearch)
    params = method_params(opts)
    assert params[obj.PARAM_STARTUP_TRIALS] == SAMPLER_TABLE[name].startup_trials
    assert (obj.PARAM_SEARCHER_PRIOR in params) == (name == "latency-first")


def test_the_tables_are_the_command_lines_choices():
    from raysearch import cli

    actions = {a.dest: a for a in cli.build_stage_parser(7)._actions}
    assert tuple(actions["sampler"].choices) == SAMPLERS and tuple(actions["scheduler"].choices) == SCHEDULERS
    assert actions["sampler"].default == SearchOptions().schedule.sampler
    assert actions["scheduler"].default == SearchOptions().schedule.scheduler == "none"
    assert set(SAMPLERS) == {"latency-first", *OPTUNA_SAMPLERS} and set(SCHEDULER_TABLE) == set(BUILT)
    assert [n for n, s in SAMPLER_TABLE.items() if s.slow] == ["gp"]  # what the replay leaves out unless asked
