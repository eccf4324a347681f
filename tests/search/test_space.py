"""A search space's knobs (`raysearch.search.options`): listed values, every step of a range, or any
number in it, and what each sampler gets of them."""

from __future__ import annotations

import numpy as np
import pytest

from raysearch.search.methods import CONTINUOUS_LEVELS, SAMPLERS, make_searcher, searched_space, sweeps_all
from raysearch.search.options import Range, SearchOptions, Space, param_space, parse_knob, planned_trials


def test_a_stepped_range_lists_every_step_and_a_continuous_one_evenly_spaced_values():
    sizes = Range.parse("64:512:32")
    assert sizes.values() == list(range(64, 513, 32)) and len(sizes.values()) == 15 and sizes.integer
    assert Range.parse("0.5:1:0.25").values() == [0.5, 0.75, 1.0] and not Range.parse("0.5:1:0.25").integer
    width = Range.parse("0.125:1")
    assert width.continuous and width.values(8) == [0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0]
    assert width.text() == "0.125:1" and sizes.text() == "64:512:32"


@pytest.mark.parametrize("text, says", [
    ("1:0.5", "the range 1:0.5 is empty"), ("64:500:32", "must be > 0 and divide 500 - 64"),
    ("1:2:0", "the step 0 must be > 0"), ("1:2:3:4", "is not a range"), ("a:b", "is not a range"),
    ("0:inf", "is empty"),
])
def test_a_bad_range_names_itself(text, says):
    with pytest.raises(ValueError, match=says.replace("(", r"\(")):
        Range.parse(text)


def test_knobs_from_the_command_line():
    assert parse_knob("t=6,4,2") == ("t", [6, 4, 2])
    assert parse_knob("precision=fp32,int8") == ("precision", ["fp32", "int8"])
    assert parse_knob("res=64:128:32") == ("input_hw", Range(64, 128, 32))  # --res's knob
    assert parse_knob(" a = 0.125:1") == ("a", Range(0.125, 1))
    for bad in ("a", "=1,2", "a="):
        with pytest.raises(ValueError, match="is not KNOB=VALUES"):
            parse_knob(bad)


def test_sizes_counts_and_the_grid_param():
    space = Space({"a": Range(0.125, 1), "t": [6, 2]}, {"r": 2, "input_hw": 64})
    assert space.size() == 0 and space.continuous == ["a"]  # no finite size
    assert space.finite(CONTINUOUS_LEVELS).size() == CONTINUOUS_LEVELS * 2
    stepped = Space({"input_hw": Range(64, 512, 32), "t": [6, 2]})
    assert stepped.size() == 15 * 2 and not stepped.continuous
    assert space.describe() == {"a": "0.125:1", "t": [6, 2]}
    moved = space.with_knobs({"r": [1, 2]})  # a fixed knob becomes searched
    assert moved.grid["r"] == [1, 2] and "r" not in moved.fixed and moved.fixed["input_hw"] == 64
    opts = SearchOptions.from_flags(mode="search", num_samples=7)
    assert planned_trials(space, opts) == 7 and planned_trials(Space({"t": [6, 2]}), opts) == 2


def test_a_grid_must_be_finite_and_every_end_is_a_valid_model():
    Space({"input_hw": Range(64, 128, 32)}).check("grid")
    with pytest.raises(ValueError, match="a is continuous"):
        Space({"a": Range(0.125, 1)}).check("grid")
    with pytest.raises(ValueError, match="a=0.0 must be > 0"):  # the low end is checked
        Space({"a": Range(0, 1)}).check("search")


def test_tune_domains():
    space = Space({"a": Range(0.125, 1), "input_hw": Range(64, 512, 32), "t": [6, 2]})
    domains = param_space(space, "search")
    assert (domains["a"].lower, domains["a"].upper) == (0.125, 1)
    assert (domains["input_hw"].lower, domains["input_hw"].upper, domains["input_hw"].sampler.q) == (64, 512, 32)
    assert domains["t"].categories == [6, 2]
    grid = param_space(Space({"input_hw": Range(64, 128, 32)}), "grid")
    assert grid["input_hw"] == {"grid_search": [64, 96, 128]}


@pytest.mark.parametrize("sampler", [s for s in SAMPLERS if s != "latency-first"])
def test_optuna_samplers_draw_any_number_of_a_range(sampler):
    """The real OptunaSearch behind each sampler: widths anywhere in the range, sizes on its steps."""
    space = Space({"a": Range(0.125, 1), "input_hw": Range(64, 512, 32)})
    opts = SearchOptions.from_flags(mode="search", sampler=sampler, num_samples=12, seed=3)
    searcher = make_searcher(opts)
    searcher.set_search_properties(None, None, param_space(searched_space(opts, space), "search"))
    configs = [searcher.suggest(f"t{i}") for i in range(12)]
    widths = [c["a"] for c in configs]
    assert all(0.125 <= a <= 1 for a in widths) and len(set(widths)) == 12
    assert not set(np.round(widths, 6)) <= set(Range(0.125, 1).values(CONTINUOUS_LEVELS))
    assert all(c["input_hw"] in range(64, 513, 32) for c in configs)


def test_latency_first_searches_a_continuous_knob_on_evenly_spaced_values():
    space = Space({"a": Range(0.125, 1), "input_hw": Range(64, 128, 32)})
    lf = searched_space(SearchOptions.from_flags(mode="search", sampler="latency-first"), space)
    assert lf.grid == {"a": Range(0.125, 1).values(CONTINUOUS_LEVELS), "input_hw": [64, 96, 128]}
    assert searched_space(SearchOptions.from_flags(mode="search", sampler="tpe"), space) is space
    # --latency-sweep auto sweeps a listed space, not the values a continuous knob was listed at
    auto = SearchOptions.from_flags(mode="search", sampler="latency-first")
    assert lf.levels == CONTINUOUS_LEVELS and not sweeps_all(auto, lf)
    stepped = searched_space(auto, Space({"input_hw": Range(64, 128, 32)}))
    assert stepped.levels == 0 and sweeps_all(auto, stepped)
    assert sweeps_all(SearchOptions.from_flags(mode="search", sampler="latency-first", latency_sweep="all"), lf)
