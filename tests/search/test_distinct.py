"""`DistinctSearch`: each configuration proposed once, whatever the sampler proposes; a repeat told
its known outcome under an id of its own; the search ends when the space is exhausted."""

from __future__ import annotations

import optuna
from ray import tune
from ray.tune.search import Searcher

from raysearch.search.distinct import DistinctSearch
from raysearch.search.methods import make_searcher
from raysearch.search.options import SearchOptions, Space, param_space


class Scripted(Searcher):
    """Proposes the configurations it is given, in order; records what it is told."""

    def __init__(self, proposals):
        super().__init__(metric="iou", mode="max")
        self.proposals = list(proposals)
        self.asked, self.told = [], []

    def suggest(self, trial_id):
        self.asked.append(trial_id)
        return {"a": self.proposals.pop(0)} if self.proposals else Searcher.FINISHED

    def on_trial_complete(self, trial_id, result=None, error=False):
        self.told.append((trial_id, result["iou"] if result else None, error))


def test_a_repeat_is_told_its_outcome_under_its_own_id_and_the_trial_keeps_the_new_one():
    inner = Scripted([0.5, 0.5, 0.25, 0.25, 0.5])
    s = DistinctSearch(inner)
    s.set_search_properties(None, None, {"a": tune.choice([0.5, 0.25, 0.125])})
    assert s.suggest("t0") == {"a": 0.5}
    s.on_trial_complete("t0", {"iou": 0.7})
    assert s.suggest("t1") == {"a": 0.25}  # 0.5 again: told 0.7 under t1's first ask, asked again
    assert inner.asked == ["t0", "t1", "t1~repeat1"] and inner.told == [("t0", 0.7, False), ("t1", 0.7, False)]
    # 0.25 again while t1 runs (told later), 0.5 again (told 0.7 at once), then the sampler has nothing
    assert s.suggest("t2") == Searcher.FINISHED
    assert inner.asked[3:] == ["t2", "t2~repeat1", "t2~repeat2"] and inner.told[-1] == ("t2~repeat1", 0.7, False)
    s.on_trial_complete("t1", {"iou": 0.6})  # t1's result reaches the sampler under the id it proposed it
    assert inner.told[-2:] == [("t1~repeat1", 0.6, False), ("t2", 0.6, False)]  # and the waiting repeat
    assert s.repeats == 3 and len(s.first) == 2


def test_the_search_ends_when_the_space_is_exhausted(caplog):
    s = make_searcher(SearchOptions.from_flags(mode="search", sampler="tpe", num_samples=10, seed=0))
    assert isinstance(s, DistinctSearch)
    s.set_search_properties(None, None, param_space(Space({"a": [0.5, 0.25], "r": [1, 2]}), "search"))
    seen = []
    for n in range(10):
        config = s.suggest(f"t{n}")
        if config == Searcher.FINISHED:
            break
        seen.append((config["a"], config["r"]))
        s.on_trial_complete(f"t{n}", {"iou": 0.5, "latency_ms": 1.0 + n})
    assert sorted(seen) == sorted({(a, r) for a in (0.5, 0.25) for r in (1, 2)})
    assert "the space is exhausted" in (s.ended or "")
    # every proposal reached Optuna as a finished trial: the distinct ones and the repeats
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in s.inner._ot_study.trials)
    assert len(s.inner._ot_study.trials) == 4 + s.repeats
