"""Peers replayed beside our own methods, on the same tables and the same simulated cluster.

``moasha``: Syne Tune's MOASHA (`syne_tune.optimizer.schedulers.multiobjective.MOASHA`, the
installed version; install with ``pip install -e '.[peers]'``): asynchronous successive halving
whose rungs rank (validation IoU, latency) by its default priority (non-dominated sorting, an
epsilon-net inside a front, not crowding distance), proposing configurations uniformly at random;
one bracket, grace period 1 and reduction factor 3 (its defaults, and ours for Pareto-ASHA). Syne Tune drives a scheduler that both proposes and stops;
`simulate` drives a searcher and a scheduler as Ray Tune does, so one MOASHA object plays both
parts here: `suggest` is its ``suggest()``, every report goes to its ``on_trial_result`` (with the
validation IoU negated: it minimizes every metric), an ended trial to its ``on_trial_complete``.
It sees what our schedulers see: the latency from the first report on, measured before training,
but treats it as one more metric, unknown until reported.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from raysearch.records import names as obj
from raysearch.search.options import Space

PEERS = ("moasha",)
NEG_VAL_IOU = "neg_val_iou"


class SyneTuneMOASHA:
    """One Syne Tune MOASHA as the searcher and the scheduler of `simulate`."""

    def __init__(self, space: Space, *, epochs: int, seed: int, grace_period: int = 1,
                 reduction_factor: float = 3.0) -> None:
        import numpy as np

        try:
            from syne_tune.backend.trial_status import Trial
            from syne_tune.config_space import choice
            from syne_tune.optimizer.schedulers.multiobjective.moasha import MOASHA
        except ImportError as e:
            raise RuntimeError(f"the peer moasha needs Syne Tune: pip install -e '.[peers]' ({e})") from None
        np.random.seed(seed)  # its sampling and bracket choice use NumPy's global generator
        self._trial = Trial
        # +1: reaching max_t stops a trial, and the last epoch must still report its final figures
        self.moasha = MOASHA({k: choice(v) for k, v in space.lists().items()},
                             metrics=[NEG_VAL_IOU, obj.LATENCY_MS.name], do_minimize=True, time_attr=obj.EPOCH,
                             max_t=epochs + 1, grace_period=grace_period, reduction_factor=reduction_factor,
                             random_seed=seed)
        self.trials: dict[str, Any] = {}

    def suggest(self, trial_id: str) -> dict[str, Any]:
        config = self.moasha.suggest().config
        self.trials[trial_id] = self._trial(trial_id=trial_id, config=config, creation_time=datetime.now())
        self.moasha.on_trial_add(self.trials[trial_id])
        return dict(config)

    def scheduler_result(self, trial: Any, result: dict[str, Any]) -> str:
        if result.get(obj.FINAL) or obj.VAL_IOU.name not in result:
            return "CONTINUE"  # the final report (test IoU) is not a rung observation
        decision: str = self.moasha.on_trial_result(self.trials[trial.trial_id], self._metrics(result))
        return decision

    def complete(self, trial_id: str, result: dict[str, Any]) -> None:
        if obj.VAL_IOU.name in result and obj.EPOCH in result and trial_id in self.moasha.trial_info:
            self.moasha.on_trial_complete(self.trials[trial_id], self._metrics(result))
        self.moasha.trial_info.pop(trial_id, None)

    @staticmethod
    def _metrics(result: dict[str, Any]) -> dict[str, Any]:
        return {**result, NEG_VAL_IOU: -float(result[obj.VAL_IOU.name])}


class _SchedulerView:
    """The scheduler face of a `SyneTuneMOASHA` (Ray Tune's scheduler calls)."""

    def __init__(self, peer: SyneTuneMOASHA) -> None:
        self.peer = peer

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        pass

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        return self.peer.scheduler_result(trial, result)

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> None:
        pass  # the searcher face passes it on, once


class _SearcherView:
    def __init__(self, peer: SyneTuneMOASHA) -> None:
        self.peer = peer

    def set_search_properties(self, *args: Any, **kwargs: Any) -> bool:
        return True

    def suggest(self, trial_id: str) -> dict[str, Any]:
        return self.peer.suggest(trial_id)

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        pass

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        self.peer.complete(trial_id, result or {})


def make_peer(name: str, space: Space, *, epochs: int, seed: int) -> tuple[Any, Any]:
    """(searcher, scheduler) for `simulate` of the peer ``name`` (one of `PEERS`)."""
    if name != "moasha":
        raise ValueError(f"unknown peer {name!r}; peers: {PEERS}")
    peer = SyneTuneMOASHA(space, epochs=epochs, seed=seed)
    return _SearcherView(peer), _SchedulerView(peer)
