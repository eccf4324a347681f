"""Each configuration trained once, whatever the sampler: a wrapper around a Ray Tune searcher
(Optuna's samplers behind `OptunaSearch`) for finite spaces.

Why: Optuna's samplers propose configurations already tried (a GP's acquisition keeps returning to
its best guess, TPE and random draw with replacement); the product answered them from the
results cache, but each one was a trial, so ``--num-samples`` counted answers the user already had
(1,469 of 1,620 proposals of GP + Pareto-ASHA on table B).

The rule: a proposal of a configuration already proposed is not a trial. The sampler is told
that configuration's outcome under an id of its own (its final result, or the last report of a
stopped trial, as `OptunaSearch` tells any completed trial; when the first trial of it is still
running, as soon as that one ends) and asked again, up to `MAX_ASKS` times for one trial. The
search ends (FINISHED, said once in the log) when every configuration of the space has been
proposed, or when the sampler proposed nothing new in `MAX_ASKS` asks in a row.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import tempfile
from typing import Any, cast

from ray.tune.search import Searcher

from raysearch.search.latency_first import config_key
from raysearch.storage import write_atomic

log = logging.getLogger(__name__)

MAX_ASKS = 50  # proposals for one trial before the sampler is deemed to have nothing new to offer


class DistinctSearch(Searcher):
    """``inner``, asked again while it proposes a configuration already proposed (see the module's doc)."""

    def __init__(self, inner: Searcher, max_asks: int = MAX_ASKS) -> None:
        super().__init__(metric=inner.metric, mode=inner.mode)
        self.inner = inner
        self.max_asks = max_asks
        self.size = math.inf  # configurations in the space (set_search_properties)
        self.first: dict[str, str] = {}  # config key -> the trial that was proposed it
        self.trial_config: dict[str, str] = {}  # trial id -> config key
        self.inner_id: dict[str, str] = {}  # trial id -> the id the sampler proposed its config under
        self.outcome: dict[str, tuple[dict[str, Any] | None, bool]] = {}  # config key -> (result, error)
        self.waiting: dict[str, list[str]] = {}  # config key -> repeat ids to tell when its trial ends
        self.repeats = 0  # proposals answered without a trial
        self.ended: str | None = None  # why the search ended, once it did

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict[str, Any],
                              **spec: Any) -> bool:
        sizes = [len(v.categories) if hasattr(v, "categories") else (1 if not hasattr(v, "sample") else math.inf)
                 for v in config.values()]
        self.size = math.prod(sizes) if sizes else math.inf
        return bool(self.inner.set_search_properties(metric, mode, config, **spec))

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        # Ray types suggest() as a dict or None, and answers "no more trials" with the string FINISHED
        finished = cast("dict[str, Any]", Searcher.FINISHED)
        if self.ended:
            return finished
        for ask in range(self.max_asks):
            if len(self.first) >= self.size:
                self._end(f"every one of the space's {len(self.first)} configurations was proposed: the space is "
                          "exhausted")
                return finished
            ask_id = trial_id if ask == 0 else f"{trial_id}~repeat{ask}"
            config = self.inner.suggest(ask_id)
            if config is None or config == finished:
                return config
            key = config_key(config)
            if key not in self.first:
                self.first[key] = trial_id
                self.trial_config[trial_id] = key
                self.inner_id[trial_id] = ask_id
                return config
            self.repeats += 1
            if key in self.outcome:
                result, error = self.outcome[key]
                self.inner.on_trial_complete(ask_id, result=result, error=error)
            else:  # its trial is still running: told when it ends
                self.waiting.setdefault(key, []).append(ask_id)
        self._end(f"the sampler proposed only configurations already tried in {self.max_asks} asks in a row "
                  f"({len(self.first)} distinct configurations proposed)")
        return finished

    def _end(self, why: str) -> None:
        self.ended = why
        log.info("search ended: %s", why)

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        self.inner.on_trial_result(self.inner_id.get(trial_id, trial_id), result)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        self.inner.on_trial_complete(self.inner_id.get(trial_id, trial_id), result=result, error=error)
        key = self.trial_config.get(trial_id)
        if key is None:
            return
        self.outcome[key] = (result, error)
        for ask_id in self.waiting.pop(key, []):
            self.inner.on_trial_complete(ask_id, result=result, error=error)

    # ---- Ray Tune's checkpoint of the search: ours and the sampler's ---------------------------
    def save(self, checkpoint_path: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            self.inner.save(os.path.join(tmp, "inner.pkl"))
            with open(os.path.join(tmp, "inner.pkl"), "rb") as f:
                inner = f.read()
        own = {k: v for k, v in self.__dict__.items() if k != "inner"}
        write_atomic(checkpoint_path, pickle.dumps({"own": own, "inner": inner}))

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            state = pickle.load(f)
        self.__dict__.update(state["own"])
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "inner.pkl")
            with open(path, "wb") as f:
                f.write(state["inner"])
            self.inner.restore(path)
