"""The stages' spaces, derived from the study's tables (no training)."""

from __future__ import annotations

from raysearch.search.options import SearchOptions
from raysearch.search.presets import QUICK
from raysearch.search.stages import STUDY_STAGE7_RES, stage7_space

#: the six stage-6 models the study combined with its resolutions in stage 7 (its section 4.5.1,
#: Tables 4.20-4.23), all without pyramid pooling
STUDY_STAGE7_MODELS = {(1.0, 6, 1), (0.25, 6, 1), (0.125, 6, 2), (0.125, 4, 2), (0.125, 2, 2), (0.125, 2, 1)}


def _models(space) -> set[tuple]:
    assert all(m["pp"] == 0 for m in space.models.values())
    return {(m["a"], m["t"], m["r"]) for m in space.models.values()}


def test_stage7_without_a_stage6_search_is_the_studys_grid(tmp_path):
    opts = SearchOptions.from_flags(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    space = stage7_space(opts, None)
    assert _models(space) == STUDY_STAGE7_MODELS
    assert space.grid["input_hw"] == [(r, r) for r in sorted(STUDY_STAGE7_RES, reverse=True)]
    assert space.size() == len(STUDY_STAGE7_MODELS) * len(STUDY_STAGE7_RES) == 36


def test_stage7_quick_takes_three_of_the_studys_models(tmp_path):
    opts = SearchOptions.from_flags(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", quick=True)
    space = stage7_space(opts, None)
    assert len(_models(space)) == 3 and _models(space) < STUDY_STAGE7_MODELS
    assert space.size() == 3 * len(QUICK.resolutions)
