"""Pareto-ASHA's rung decisions and front stopping's, on hand-made records (the Ray Tune side is in
test_search.py and test_replay.py)."""

from __future__ import annotations

import math
import pickle

import pytest
from ray.tune.schedulers import TrialScheduler

from raysearch.search.runtime import start_local_ray
from raysearch.search.scheduler import (
    FRONT_MARGIN,
    FRONT_MIN_FINISHED,
    FrontStopping,
    ParetoASHA,
    crowding_distance,
    front_level,
    keeps,
    nondominated_fronts,
    pareto_order,
    rung_milestones,
)

CONTINUE, STOP = TrialScheduler.CONTINUE, TrialScheduler.STOP


def test_fronts_by_hand():
    pts = {"a": (0.9, 10.0), "b": (0.8, 5.0), "c": (0.7, 8.0), "d": (0.6, 20.0), "e": (0.8, 5.0)}
    # c is dominated by b (and e, equal to b); d by everything; equal points share a front
    assert nondominated_fronts(pts) == [["a", "b", "e"], ["c"], ["d"]]
    assert nondominated_fronts({}) == []


def test_crowding_distance_by_hand():
    pts = {"w": (0.9, 10.0), "x": (0.8, 6.0), "y": (0.7, 4.0), "z": (0.5, 1.0)}
    d = crowding_distance(pts, list(pts))
    assert d["w"] == d["z"] == math.inf  # the most accurate and the fastest
    assert d["x"] == pytest.approx((0.9 - 0.7) / 0.4 + (10 - 4) / 9)  # neighbours w and y
    assert d["y"] == pytest.approx((0.8 - 0.5) / 0.4 + (6 - 1) / 9)  # neighbours x and z
    assert pareto_order(pts) == ["w", "z", "y", "x"]  # ends first, then the least crowded


def test_a_fast_inaccurate_trial_goes_on_where_asha_on_iou_would_stop_it():
    rung = {"slow1": (0.90, 10.0), "slow2": (0.85, 12.0), "fast": (0.50, 1.0)}
    # on IoU alone "fast" is the worst of three (eta 3 keeps one); by both objectives it is on
    # the front, at its fast end, so it ranks with the most accurate one
    assert keeps(rung, "fast", 3) and not keeps(rung, "slow2", 3)
    assert pareto_order(rung)[:2] == ["fast", "slow1"]  # both ends of front 0, then front 1
    # two ends of a front and one place: the tie goes to the trial being decided
    assert pareto_order(rung, favour="slow1")[0] == "slow1" and keeps(rung, "slow1", 3)
    assert keeps({"only": (0.1, 99.0)}, "only", 3)  # the first at a rung always goes on


def test_milestones():
    assert rung_milestones(1, 3, 10) == [1, 3, 9]
    assert rung_milestones(1, 3, 9) == [1, 3]  # never at the last epoch: that trial is fully trained
    assert rung_milestones(2, 2, 9) == [2, 4, 8]
    assert rung_milestones(1, 3, 1) == []


def test_decisions_are_asynchronous_and_stopped_trials_stay_recorded(tmp_path):
    s = ParetoASHA(epochs=8, grace_period=1, reduction_factor=3, state_path=tmp_path / "sched.json")
    assert s.milestones == [1, 3]
    # each trial's latency comes from its first report, before training
    assert s.decide("a", 1, 0.80, 10.0) == CONTINUE  # first at rung 1
    assert s.decide("b", 1, 0.70, 12.0) == STOP  # dominated by a, ceil(2/3) = 1 place
    assert s.decide("c", 1, 0.40, 2.0) == CONTINUE  # fast: on the front with a, at its end
    assert s.decide("a", 2, 0.85, None) == CONTINUE  # between rungs: nothing to decide
    assert s.decide("a", 3, 0.88, None) == CONTINUE  # first at rung 3
    assert s.decide("c", 3, 0.45, 99.0) == CONTINUE  # the latency stays the first one measured: 2 ms
    assert s.rungs[3]["c"] == (0.45, 2.0) and s.stopped == {"b": 1}
    assert set(s.rungs[1]) == {"a", "b", "c"}  # b's record stays: later arrivals meet it
    assert s.decide("a", 8, 0.9, None) == CONTINUE  # its last epoch: no rung there
    # restored with the experiment (Ray Tune unpickles the object it saved at the start)
    again = pickle.loads(pickle.dumps(ParetoASHA(epochs=8, grace_period=1, reduction_factor=3,
                                                 state_path=tmp_path / "sched.json")))
    assert again.rungs == s.rungs and again.latency == s.latency and again.stopped == s.stopped
    assert again.decide("d", 1, 0.1, 50.0) == STOP  # dominated by what was recorded before the restart


def test_final_and_pruned_reports_are_never_decided():
    s = ParetoASHA(epochs=8)
    trial = type("T", (), {"trial_id": "t"})()
    assert s.on_trial_result(None, trial, {"epoch": 0, "final": 1, "val_iou": 0.0, "latency_ms": 9.0}) == CONTINUE
    assert s.on_trial_result(None, trial, {"epoch": 3, "final": 1, "val_iou": 0.1, "latency_ms": 9.0}) == CONTINUE
    assert all(not r for r in s.rungs.values())


def test_bad_settings_name_the_value():
    with pytest.raises(ValueError, match="reduction factor > 1 \\(got 1\\)"):
        ParetoASHA(epochs=8, reduction_factor=1)


# ---- under a real Ray Tune -------------------------------------------------------------------
EPOCHS = 9
# (IoU at the end, latency ms): three slow, accurate models and one fast, less accurate one
MODELS = {"a": (0.90, 10.0), "b": (0.88, 12.0), "c": (0.86, 11.0), "fast": (0.60, 1.0)}


def _curve(config):
    from ray import tune

    iou, lat = MODELS[config["model"]]
    for e in range(1, EPOCHS + 1):  # every report carries the latency, measured before training
        tune.report({"epoch": e, "val_iou": iou * e / EPOCHS, "latency_ms": lat})


@pytest.mark.slow
def test_asha_on_iou_stops_the_fast_model_and_pareto_asha_keeps_it(tmp_path):
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    def run(scheduler, name):
        tuner = tune.Tuner(_curve, param_space={"model": tune.grid_search(list(MODELS))},
                           tune_config=tune.TuneConfig(scheduler=scheduler, max_concurrent_trials=1),
                           run_config=tune.RunConfig(name=name, storage_path=str(tmp_path), verbose=0))
        return {r.config["model"]: r.metrics["epoch"] for r in tuner.fit()}

    import sys

    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
    start_local_ray(num_cpus=2)  # ours, even beside a `ray start` head
    try:
        asha = run(ASHAScheduler(time_attr="epoch", metric="val_iou", mode="max", max_t=EPOCHS + 1,
                                 grace_period=1, reduction_factor=3), "asha")
        pareto = run(ParetoASHA(epochs=EPOCHS, grace_period=1, reduction_factor=3,
                                state_path=tmp_path / "pareto.json"), "pareto")
    finally:
        ray.shutdown()
    assert asha["fast"] == 1  # the lowest IoU at the first rung: stopped there
    assert pareto["fast"] == EPOCHS  # on the front at every rung (the fast end): trained to the end
    assert pareto["a"] == EPOCHS and pareto["b"] < EPOCHS  # b is dominated by a at every rung


def _finish(s: FrontStopping, trial_id: str, curve: list[float], final: float, latency: float) -> None:
    for epoch, v in enumerate(curve, 1):
        assert s.decide(trial_id, epoch, v, latency) == CONTINUE
    s._finish(trial_id, {"final": 1, "iou": final, "latency_ms": latency})


def test_front_level_is_the_best_iou_at_most_that_slow():
    finished = [(0.6, 1.0), (0.8, 2.0), (0.7, 3.0)]
    assert front_level(finished, 0.5) == 0.0 and front_level(finished, 1.0) == 0.6
    assert front_level(finished, 2.5) == 0.8 and front_level(finished, 9.0) == 0.8


def test_front_stopping_waits_for_enough_finished_trials_then_stops_what_cannot_reach_the_front(tmp_path):
    s = FrontStopping(state_path=tmp_path / "front.json")
    # finished trials at 1, 2, 3, ... ms, each gaining 0.1 + k/100 from epoch 1 to its final IoU
    for k in range(FRONT_MIN_FINISHED - 1):
        _finish(s, f"f{k}", [0.5, 0.6], 0.6 + k / 100, latency=1.0 + k)
    level = front_level(list(s.finished.values()), 10.0)
    assert level == pytest.approx(0.6 + (FRONT_MIN_FINISHED - 2) / 100)
    hopeless = 0.1  # far below the level even after the largest gain
    assert s.decide("x", 1, hopeless, 10.0) == CONTINUE  # one finished trial too few: no evidence yet
    _finish(s, "last", [0.5, 0.6], 0.6, latency=0.5)
    gain = s.gain(1)
    assert gain == pytest.approx(0.1 + (FRONT_MIN_FINISHED - 2) / 100)  # the largest gain seen
    assert s.decide("y", 1, hopeless, 10.0) == STOP and s.stopped == {"y": 1}
    # just within the margin: goes on; the fastest trial goes on whatever its IoU (nothing faster)
    assert s.decide("z", 1, level - gain - FRONT_MARGIN + 1e-6, 10.0) == CONTINUE
    assert s.decide("fastest", 1, 0.0, 0.1) == CONTINUE
    # its state survives the pickling Ray Tune does on restore (from the state file)
    back = pickle.loads(pickle.dumps(s))
    assert back.finished == s.finished and back.stopped == s.stopped and back.gain(1) == pytest.approx(gain)


def test_front_stopping_decides_on_the_best_validation_iou_so_far():
    """A one-epoch dip of a noisy validation curve does not stop a trial that was on course:
    finished trials gain 0.1 from epoch 2's best to their final IoU; the level at 10 ms is 0.8."""
    s = FrontStopping()
    for k in range(FRONT_MIN_FINISHED):
        _finish(s, f"f{k}", [0.6, 0.7], 0.8 - k / 100, latency=1.0 + k)  # gains from epoch 2: 0.1 - k/100
    assert s.gain(2) == pytest.approx(0.1)
    assert s.decide("dip", 1, 0.75, 10.0) == CONTINUE
    # epoch 2 reads 0.5, yet its best so far (0.75) + 0.1 + the margin reaches the level 0.8: on course
    assert s.decide("dip", 2, 0.5, 10.0) == CONTINUE and s.curves["dip"][2] == 0.75
    # a trial whose best so far is 0.6: 0.6 + 0.1 + 0.01 < 0.8, stopped
    assert s.decide("low", 1, 0.6, 10.0) == CONTINUE and s.decide("low", 2, 0.55, 10.0) == STOP
    # a finished trial's gain is read from its best so far too: 0.9 -> 0.8 after a peak of 0.9 gains 0
    # (its epoch-2 reading, 0.8, taken alone would have gained 0.1 + 0.05)
    t = FrontStopping()
    for k in range(FRONT_MIN_FINISHED):
        _finish(t, f"g{k}", [0.9, 0.8], 0.85, latency=1.0 + k)
    assert t.gain(2) == pytest.approx(-0.05) and t.curves["g0"] == {1: 0.9, 2: 0.9}


def test_front_stopping_keeps_a_running_trials_best_through_a_restore_and_a_retry(tmp_path):
    s = FrontStopping(state_path=tmp_path / "front.json")
    for k in range(FRONT_MIN_FINISHED):
        _finish(s, f"f{k}", [0.6, 0.7, 0.7], 0.8 - k / 100, latency=1.0 + k)  # gain from epoch 3's best: 0.1
    assert s.decide("t", 1, 0.78, 10.0) == CONTINUE and s.decide("t", 2, 0.5, 10.0) == CONTINUE
    back = pickle.loads(pickle.dumps(s))  # what Ray Tune restores: rebuilt from the state file
    assert back.curves["t"][1] == 0.78
    assert back.decide("t", 3, 0.55, 10.0) == CONTINUE  # its best, 0.78 + 0.1, still reaches the level 0.8
    # retried from its epoch-1 checkpoint: epoch 2 again, and a later epoch of the first attempt does not count
    s.curves["t"][3] = 0.95
    s.decide("t", 2, 0.6, 10.0)
    assert s.curves["t"][2] == 0.78
