"""The latency model (`raysearch.search.latency_model`) on hand-made latencies where the answer is
known, its graph features derived from the knobs, and latency-first's rule for what to measure."""

from __future__ import annotations

import math

import numpy as np
import pytest
from ray import tune

from raysearch.models import ModelSpec
from raysearch.search.latency_first import LatencyFirstSearch, LatencyOracle, grid_configs
from raysearch.search.latency_model import (
    FEATURES,
    LatencyModel,
    LatencyPrediction,
    class_model,
    graph_features,
    model_error,
)

SPECS = [ModelSpec(a=0.25, t=2, r=1, pp=0, input_hw=hw) for hw in range(64, 513, 32)]  # 15 input sizes


def side(spec: ModelSpec) -> tuple[float]:
    """One feature: the log of the input side."""
    return (math.log(spec.height),)


def test_graph_features_follow_the_input_size_and_the_width():
    small, big = (graph_features(ModelSpec(a=0.25, t=2, r=1, pp=0, input_hw=hw)) for hw in (64, 128))
    f = dict(zip(FEATURES, np.subtract(big, small)))
    # without pyramid pooling every convolution runs at a fixed share of the input: MACs and the
    # elements written grow with the pixels (x4), the weights do not
    assert f["log_macs"] == pytest.approx(math.log(4)) and f["log_activations"] == pytest.approx(math.log(4))
    assert f["log_pixels"] == pytest.approx(math.log(4)) and f["log_params"] == 0
    wide = graph_features(ModelSpec(a=0.5, t=2, r=1, pp=0, input_hw=64))
    assert wide[0] > small[0] and wide[1] > small[1]  # twice the channels: more MACs and weights


def test_a_power_law_is_learnt_from_a_few_measurements():
    truth = {s: 0.002 * s.height ** 2 for s in SPECS}  # a cost per pixel
    model = LatencyModel("host", features=side)
    model.update((s, truth[s]) for s in SPECS[::4])  # 4 of 15
    rest = [s for s in SPECS if s not in model.measured]
    pred = model.predict(rest)
    assert pred.ms == pytest.approx([truth[s] for s in rest], rel=0.02)
    err = model_error(pred, [truth[s] for s in rest])
    assert err.within_10pct == 1.0 and err.spearman == pytest.approx(1.0)


def test_measured_configurations_are_known_exactly_and_uncertainty_shrinks_where_measured():
    truth = {s: 0.05 + 1e-5 * s.height ** 2 for s in SPECS}  # a fixed cost per call, then per pixel
    model = LatencyModel("host", features=side)
    model.update((s, truth[s]) for s in SPECS[:3])  # only small inputs
    pred = model.predict(SPECS)
    assert list(pred.measured[:3]) == [True] * 3 and list(pred.log_sd[:3]) == [0.0] * 3
    assert list(pred.ms[:3]) == [truth[s] for s in SPECS[:3]]
    near, far = pred.log_sd[3], pred.log_sd[-1]  # next to what was measured, and 10 steps away
    assert near < far
    model.add(SPECS[-1], truth[SPECS[-1]])
    assert model.predict([SPECS[-2]]).log_sd[0] < far  # measuring the far end made its neighbour surer


def test_bad_measurements_are_refused():
    with pytest.raises(ValueError, match="-1.0 is not a positive time"):
        LatencyModel("host").add(SPECS[0], -1.0)


def test_a_new_device_class_borrows_the_rank_of_another():
    host = {s: 0.05 + 1e-5 * s.height ** 2 for s in SPECS}
    pi = {s: 3.0 * v ** 0.9 for s, v in host.items()}  # another class: slower, not proportional
    reference = LatencyModel("host", features=side)
    reference.update(host.items())
    new = LatencyModel("pi", features=side, reference=reference)
    assert new.predict(SPECS).ms == pytest.approx(list(host.values()))  # nothing of its own yet: the reference's
    new.update((s, pi[s]) for s in SPECS[1::5])  # 3 of its own
    rest = [s for s in SPECS if s not in new.measured]
    err = model_error(new.predict(rest), [pi[s] for s in rest])
    assert err.spearman == pytest.approx(1.0) and err.within_10pct == 1.0


def test_a_class_the_cache_knows_little_of_reads_the_best_known_other_class():
    host = [(s, 0.05 + 1e-5 * s.height ** 2) for s in SPECS]
    groups = {("host", "k1"): host, ("host", "k0"): host[:4], ("pi", "k2"): [(s, 3.0 * v) for s, v in host[::7]]}
    pi = class_model("pi", "k2", groups)  # 3 of its own: the richest other group, host under k1, is its reference
    assert len(pi) == 3 and pi.reference is not None and len(pi.reference) == len(SPECS)
    assert pi.reference.device_class == "host"
    assert class_model("host", "k1", groups).reference is None  # the best known class needs no other
    assert class_model("new", "k9", {}).reference is None and len(class_model("new", "k9", {})) == 0


# ---- latency-first's rule: measure what could change the next choice -------------------------------------
class Fixed(LatencyModel):
    """Predictions set by hand (median ms, log sd) per input side; what is measured becomes exact."""

    def __init__(self, guess: dict[int, tuple[float, float]], truth: dict[int, float]) -> None:
        super().__init__("host", features=side)
        self.guess, self.truth = guess, truth

    def __len__(self) -> int:
        return 99  # as if earlier searches had measured plenty: no initial design

    def predict(self, specs):
        ms = [self.measured.get(s, self.guess[s.height][0]) for s in specs]
        sd = [0.0 if s in self.measured else self.guess[s.height][1] for s in specs]
        return LatencyPrediction(np.array(ms), np.array(sd), np.array([s in self.measured for s in specs]))


def test_it_measures_an_uncertain_contender_and_not_a_sure_loser():
    # 64: a sure guess at 2 ms; 96: 1 ms but very unsure (it could be the fastest by far, adding half
    # as much again as 64 would to the box that ends at the slowest, 160); 160: 5 ms, unsure too, but
    # even its fast end is slower than 64's slow end: it cannot be trained next
    guess = {64: (2.0, 0.001), 96: (1.0, 0.5), 160: (5.0, 0.1)}
    truth = {64: 2.0, 96: 3.0, 160: 5.0}
    measured: list[int] = []

    def measure(configs):
        measured.extend(c["input_hw"][0] for c in configs)
        return [truth[c["input_hw"][0]] for c in configs]

    grid = {"input_hw": [(64, 64), (96, 96), (160, 160)]}
    oracle = LatencyOracle(Fixed(guess, truth), lambda c: ModelSpec(a=0.25, t=2, r=1, pp=0, input_hw=c["input_hw"]),
                           measure)
    s = LatencyFirstSearch(oracle=oracle, seed=0)
    s.set_search_properties(None, None, {k: tune.choice(v) for k, v in grid.items()})
    first = s.suggest("t1")
    assert measured == [96]  # measured: 3 ms, so 64 (2 ms) is the fastest and is trained first
    assert first["input_hw"] == (64, 64) and oracle.measured == 1
    assert s.latency_counts() == (1, 2)
    s.on_trial_complete("t1", {"iou": 0.5, "latency_ms": 2.0, "final": 1})
    assert s.latency_counts() == (2, 1)  # the trained one's latency, from its trial
    assert 160 not in measured


def test_a_searcher_with_a_real_model_over_a_grid_measures_part_and_finishes(tmp_path):
    truth = {s.height: 0.05 + 1e-5 * s.height ** 2 for s in SPECS}
    grid = {"input_hw": [(s.height, s.width) for s in SPECS]}
    asked: list[int] = []

    def measure(configs):
        asked.extend(c["input_hw"][0] for c in configs)
        return [truth[c["input_hw"][0]] for c in configs]

    oracle = LatencyOracle(LatencyModel("host", features=side),
                           lambda c: ModelSpec(a=0.25, t=2, r=1, pp=0, input_hw=c["input_hw"]), measure)
    s = LatencyFirstSearch(oracle=oracle, seed=0)
    s.set_search_properties(None, None, {k: tune.choice(v) for k, v in grid.items()})
    seen = []
    for n in range(len(SPECS)):
        config = s.suggest(f"t{n}")
        seen.append(config["input_hw"][0])
        s.on_trial_complete(f"t{n}", {"iou": 0.5 + config["input_hw"][0] / 1000, "latency_ms": truth[seen[-1]],
                                      "final": 1})
    assert sorted(seen) == sorted(truth) and s.suggest("again") == LatencyFirstSearch.FINISHED
    assert len(set(asked)) == len(asked) < len(SPECS)  # each measured once at most, not all of them
    s.save(str(tmp_path / "state.pkl"))
    again = LatencyFirstSearch(oracle=LatencyOracle(LatencyModel("host", features=side), oracle.to_spec, measure),
                               seed=0)
    again.restore(str(tmp_path / "state.pkl"))
    assert again.oracle.measure is measure and len(again.oracle.model) == len(SPECS)
    assert grid_configs(grid) == again.configs
