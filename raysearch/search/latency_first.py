"""``--sampler latency-first``: a searcher that knows every configuration's latency before it trains
anything, and trains next the configuration expected to add the most to the front.

Why: a point's latency costs seconds on the farm (measured on the untrained model), its IoU costs
a training. With every latency of a finite space measured first (`raysearch.latency_sweep`), the
front's latency axis is known in advance and a configuration can join the front only where its IoU
beats that of every faster configuration already trained. Optuna's samplers and Syne Tune's MOASHA
treat latency as unknown until a trial reports it.

How: the front is the 2-D staircase of (latency, test IoU) of the trials trained to the end. A
candidate at latency ``l`` with IoU ``V`` adds ``integral over x in [l, L] of max(0, V - f(x)) dx``
to the hypervolume (``f``: the staircase, ``L``: the slowest configuration, IoU 0 the bottom: the
box `raysearch replay` scores with). ``V`` is predicted by a Bayesian linear model of the test IoU
on the knobs (one-hot per value) and the log latency, so the expectation has a closed form per
segment of the staircase: ``E[max(0, V - c)] = (mu - c) Phi(z) + sigma phi(z)``, ``z = (mu - c) /
sigma``. The candidate with the largest expected improvement is trained next (ties: seeded).
Running trials count at their predicted IoU (a "kriging believer"), so parallel workers spread
along the latency axis instead of piling onto one region. A configuration is suggested once: a
finite space is exhausted, never repeated (the searcher then says FINISHED).

Latencies without a sweep (`LatencyOracle`: ``--latency-sweep needed``, and ``auto`` beyond 2,000
configurations): a latency model (`raysearch.search.latency_model`) predicts every configuration's
latency with an uncertainty from what the farm measured. The searcher first measures
`INITIAL_MEASURED` configurations spread over the space's sizes (MACs), then before each choice
measures the configurations whose latency could still change it: a candidate is a contender when
its expected gain at the fast end of its latency interval (``Z_MEASURE`` sd) beats by
`GAIN_TOLERANCE` the best gain any candidate is sure of (at the slow end of its own interval); while
contenders remain that are unmeasured and not already predicted within `SURE_LOG_SD`, up to
`MEASURE_BATCH` of them (the most promising first) are measured and the model refitted. Every
latency a trial reports joins the model too.

What a trial tells it: a trial trained to the end (its final report) is an observation of its test
IoU; a trial stopped early, pruned over ``--max-latency-ms`` or failed is only marked tried (an
early-epoch validation IoU is not a final test IoU, so it is not fitted as one).

The priors (in IoU units, so the same for every dataset whose IoU is in 0..1): intercept 0.5 +- 0.3,
each knob value's effect 0 +- 0.1, the effect of one standard deviation of log latency
0.03 +- 0.1 (slower models tend to be more accurate, weakly), observation noise 0.02 (the recorded
seed-to-seed spread: median 0.009, max 0.038 on table A).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
from ray.tune.search import Searcher

from raysearch.records import names as obj
from raysearch.storage import write_atomic

if TYPE_CHECKING:
    from raysearch.models import ModelSpec
    from raysearch.search.latency_model import LatencyModel

log = logging.getLogger(__name__)

PRIOR_INTERCEPT = (0.5, 0.3)  # (mean, sd)
PRIOR_KNOB = (0.0, 0.1)
PRIOR_LOG_LATENCY = (0.03, 0.1)
NOISE_SD = 0.02
INITIAL_MEASURED = 5  # configurations measured before the first choice, at quantiles of their MACs
Z_MEASURE = 2.0  # the latency interval (in sd of log latency) within which a contender is measured
GAIN_TOLERANCE = 0.1  # a contender must be able to beat the sure gain by this share to be worth measuring
MEASURE_BATCH = 4  # configurations measured per round
SURE_LOG_SD = 0.025  # a prediction this sure (+-2.5%, about a measurement's repeatability) is not measured
MAX_ROUNDS = 8  # rounds of measurement before one choice at most


@dataclass
class LatencyOracle:
    """Latencies for a search without a full sweep: ``model`` (one device class) predicts them,
    ``measure`` measures configurations on the farm (the live search) or reads them from a table
    (the replay), ``to_spec`` turns a searched config into its `ModelSpec`."""

    model: LatencyModel
    to_spec: Callable[[dict[str, Any]], ModelSpec]
    measure: Callable[[list[dict[str, Any]]], list[float]]
    measured: int = 0  # configurations measured for the searcher (not counting the trials' own)


def config_key(config: Mapping[str, Any]) -> str:
    """A configuration as a stable string (the key of the latencies measured before the search)."""
    return json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}, sort_keys=True)


def grid_configs(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every configuration of a finite space, in a fixed order."""
    keys = sorted(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(list(grid[k]) for k in keys))]


class BayesLinear:
    """Bayesian linear regression with a Gaussian prior and known noise: the posterior in closed form."""

    def __init__(self, prior_mean: np.ndarray, prior_sd: np.ndarray, noise_sd: float) -> None:
        self.m0, self.p0 = prior_mean, np.diag(1.0 / prior_sd**2)
        self.noise = noise_sd**2
        self.mean, self.cov = prior_mean.copy(), np.diag(prior_sd**2)

    def fit(self, x: np.ndarray, y: np.ndarray) -> "BayesLinear":
        precision = self.p0 + x.T @ x / self.noise
        self.cov = np.linalg.inv(precision)
        self.mean = self.cov @ (self.p0 @ self.m0 + x.T @ y / self.noise)
        return self

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Predictive mean and standard deviation of a new observation at each row of ``x``."""
        var = np.einsum("ij,jk,ik->i", x, self.cov, x) + self.noise
        return x @ self.mean, np.sqrt(var)


def expected_improvement(mu: np.ndarray, sd: np.ndarray, level: np.ndarray) -> np.ndarray:
    """E[max(0, V - level)] for V ~ N(mu, sd^2), elementwise."""
    from scipy.special import ndtr

    z = (mu - level) / sd
    gain: np.ndarray = (mu - level) * ndtr(z) + sd * np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    return gain


def expected_hv_gain(latency: float, mu: float, sd: float, front: Sequence[tuple[float, float]],
                     right: float) -> float:
    """The expected hypervolume a point at ``latency`` with IoU ~ N(mu, sd^2) adds to ``front``
    ((latency, IoU) points; IoU maximized, latency minimized; the box ends at latency ``right``)."""
    if latency >= right:
        return 0.0
    level = max([iou for lat, iou in front if lat <= latency], default=0.0)
    edges, levels = [latency], [level]
    for lat, iou in sorted(p for p in front if latency < p[0] < right):
        if iou > level:
            level = iou
            edges.append(lat)
            levels.append(level)
    widths = np.diff(np.array(edges + [right]))
    gains = expected_improvement(np.full(len(levels), mu), np.full(len(levels), sd), np.array(levels))
    return float(widths @ gains)


class LatencyFirstSearch(Searcher):
    """A Ray Tune searcher over a finite space whose latencies were either all measured before any
    training (``latencies``: `config_key` -> ms) or are predicted and measured as needed (``oracle``).
    See the module's docstring."""

    def __init__(self, latencies: Mapping[str, float] | None = None, *, oracle: LatencyOracle | None = None,
                 seed: int = 0, max_latency_ms: float | None = None,
                 points_to_evaluate: Sequence[dict[str, Any]] | None = None) -> None:
        super().__init__(metric=obj.IOU.name, mode=obj.IOU.mode)
        if (latencies is None) == (oracle is None):
            raise ValueError("latency-first needs either every configuration's latency or a latency oracle")
        self.latencies = dict(latencies or {})
        self.oracle = oracle
        self.max_latency_ms = max_latency_ms
        self.first = [dict(p) for p in points_to_evaluate or ()]
        self.rng = np.random.default_rng(seed)
        self.configs: list[dict[str, Any]] = []
        self.observed: dict[int, float] = {}  # config index -> test IoU (trained to the end)
        self.pending: dict[str, int] = {}  # trial id -> config index
        self.tried: set[int] = set()
        self.said_exhausted = False

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict[str, Any],
                              **spec: Any) -> bool:
        """Tune hands over the param_space: one ``tune.choice`` (or a constant) per knob."""
        grid = {k: list(v.categories) if hasattr(v, "categories") else [v] for k, v in config.items()}
        self._set_space(grid)
        return True

    def _set_space(self, grid: Mapping[str, Sequence[Any]]) -> None:
        configs = grid_configs(grid)
        self.configs = configs
        if self.oracle is None:
            missing = [c for c in configs if config_key(c) not in self.latencies]
            if missing:
                raise ValueError(f"latency-first: no latency measured for {len(missing)} of {len(configs)} "
                                 f"configurations (first: {missing[0]})")
            self.latency = np.array([self.latencies[config_key(c)] for c in configs], dtype=float)
            self.latency_hi = self.latency_lo = self.latency
            self.is_measured = np.ones(len(configs), bool)
        else:
            self.specs = [self.oracle.to_spec(c) for c in configs]
            self._measure_initial()
        # features: intercept, one-hot per value of every knob that varies, then the standardized log latency
        columns = [np.ones(len(configs))]
        prior_mean, prior_sd = [PRIOR_INTERCEPT[0]], [PRIOR_INTERCEPT[1]]
        for k in sorted(grid):
            values = list(dict.fromkeys(map(repr, grid[k])))
            if len(values) < 2:
                continue
            for v in values:
                columns.append(np.array([repr(c[k]) == v for c in configs], dtype=float))
                prior_mean.append(PRIOR_KNOB[0])
                prior_sd.append(PRIOR_KNOB[1])
        prior_mean.append(PRIOR_LOG_LATENCY[0])
        prior_sd.append(PRIOR_LOG_LATENCY[1])
        self.knob_columns = np.stack(columns, axis=1)
        self.prior = (np.array(prior_mean), np.array(prior_sd))
        self.index = {config_key(c): i for i, c in enumerate(configs)}
        self._latencies_changed()

    def _latencies_changed(self) -> None:
        """The box, the pruned configurations and the IoU model's latency column, from ``self.latency``."""
        lat = self.latency
        allowed = self.latency_lo <= self.max_latency_ms if self.max_latency_ms is not None else np.ones(len(lat), bool)
        self.tried |= {i for i in range(len(lat)) if not allowed[i]}  # pruned anyway: never trained
        self.right = float(lat[allowed].max()) if allowed.any() else float(lat.max())
        log_lat = np.log(lat)
        spread = log_lat.std()
        column = (log_lat - log_lat.mean()) / spread if spread > 0 else np.zeros(len(lat))
        self.features = np.concatenate([self.knob_columns, column[:, None]], axis=1)

    # ---- latencies without a sweep ------------------------------------------------------------
    def _predict_latency(self) -> None:
        assert self.oracle is not None
        pred = self.oracle.model.predict(self.specs)
        self.latency, self.is_measured, self.log_sd = pred.ms, pred.measured, pred.log_sd
        self.latency_lo, self.latency_hi = pred.bounds(Z_MEASURE)

    def _measure(self, idx: Sequence[int]) -> None:
        assert self.oracle is not None
        idx = [i for i in idx if not self.is_measured[i]]
        if not idx:
            return
        for i, ms in zip(idx, self.oracle.measure([self.configs[i] for i in idx])):
            self.oracle.model.add(self.specs[i], ms)
        self.oracle.measured += len(idx)

    def _measure_initial(self) -> None:
        """`INITIAL_MEASURED` configurations at quantiles of the first feature (log MACs), the
        smallest and the largest among them, unless the model already knows that many."""
        assert self.oracle is not None
        n = len(self.configs)
        if len(self.oracle.model) < INITIAL_MEASURED:
            size = np.array([self.oracle.model.features(s)[0] for s in self.specs])
            order = np.argsort(size, kind="stable")
            picks = sorted({int(order[round(q * (n - 1))]) for q in np.linspace(0, 1, INITIAL_MEASURED)})
            self._predict_latency()
            self._measure(picks)
        self._predict_latency()

    def _measure_needed(self, left: list[int]) -> None:
        """Measure the contenders whose latency could change the next choice (see the module's doc)."""
        for _ in range(MAX_ROUNDS):
            left = [i for i in left if i not in self.tried]
            if not left:
                return
            mu, sd = self.model().predict(self.features)
            front = self._front(mu)
            g_fast = np.array([expected_hv_gain(self.latency_lo[i], mu[i], sd[i], front, self.right) for i in left])
            g_slow = np.array([expected_hv_gain(self.latency_hi[i], mu[i], sd[i], front, self.right) for i in left])
            bar = g_slow.max() * (1 + GAIN_TOLERANCE)
            best = left[int(np.argmax(g_slow))]
            contenders = [best] + [left[j] for j in np.argsort(-g_fast, kind="stable") if g_fast[j] > bar
                                   and left[j] != best]
            todo = [i for i in contenders if not self.is_measured[i] and self.log_sd[i] > SURE_LOG_SD]
            if len(contenders) <= 1 or not todo:
                return
            self._measure(todo[:MEASURE_BATCH])
            self._predict_latency()
            self._latencies_changed()

    def _learn_latency(self, trial_id: str, result: dict[str, Any] | None) -> None:
        """A latency a trial measured (every trained configuration's) joins the model."""
        i = self.pending.get(trial_id)
        if self.oracle is None or i is None or not result or self.is_measured[i]:
            return
        ms = result.get(obj.LATENCY_MS.name)
        if isinstance(ms, (int, float)) and math.isfinite(ms) and ms > 0:
            self.oracle.model.add(self.specs[i], float(ms))
            self.is_measured[i] = True

    def latency_counts(self) -> tuple[int, int]:
        """(configurations whose latency is known from a measurement, configurations predicted)."""
        known = int(self.is_measured.sum())
        return known, len(self.configs) - known

    # ---- Ray Tune's searcher interface --------------------------------------------------------
    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        assert self.configs, "set_search_properties first"
        while self.first:
            i = self.index.get(config_key(self.first.pop(0)))
            if i is not None and i not in self.tried:
                return self._start(trial_id, i)
        left = [i for i in range(len(self.configs)) if i not in self.tried]
        best = self._best(left) if left else -1
        if best < 0:
            if not self.said_exhausted:
                self.said_exhausted = True
                log.info("search ended: every one of the space's %d configurations was tried or pruned: the space "
                         "is exhausted", len(self.configs))
            return Searcher.FINISHED  # type: ignore[return-value]  # Ray Tune's "space exhausted" answer
        return self._start(trial_id, best)

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        self._learn_latency(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        self._learn_latency(trial_id, result)
        i = self.pending.pop(trial_id, None)
        if i is None or error or not result:
            return
        if result.get(obj.FINAL) and not result.get(obj.PRUNED) and result.get(obj.IOU.name) is not None:
            iou = float(result[obj.IOU.name])
            if math.isfinite(iou):
                self.observed[i] = iou

    def save(self, checkpoint_path: str) -> None:
        state = dict(self.__dict__)
        if self.oracle is not None:  # what was measured, not how to measure (closures over this process)
            state["oracle"] = (self.oracle.model, self.oracle.measured)
        write_atomic(checkpoint_path, pickle.dumps(state))

    def restore(self, checkpoint_path: str) -> None:
        live = self.oracle  # Ray Tune restores this object first (with its callables), then the state
        with open(checkpoint_path, "rb") as f:
            state = pickle.load(f)
        saved = state.get("oracle")
        if isinstance(saved, tuple):
            if live is None:
                raise ValueError("latency-first: this saved search measured latencies as it went; restore it into "
                                 "a searcher given a latency oracle")
            state["oracle"] = LatencyOracle(saved[0], live.to_spec, live.measure, measured=saved[1])
        self.__dict__.update(state)

    # ---- the choice ---------------------------------------------------------------------------
    def _start(self, trial_id: str, i: int) -> dict[str, Any]:
        self.tried.add(i)
        self.pending[trial_id] = i
        return dict(self.configs[i])

    def model(self) -> BayesLinear:
        fitted = BayesLinear(*self.prior, NOISE_SD)
        if self.observed:
            idx = np.array(sorted(self.observed))
            fitted.fit(self.features[idx], np.array([self.observed[i] for i in idx]))
        return fitted

    def _front(self, mu: np.ndarray) -> list[tuple[float, float]]:
        front = [(self.latency[i], iou) for i, iou in self.observed.items()]
        return front + [(self.latency[i], float(mu[i])) for i in self.pending.values()]  # running: at their prediction

    def _best(self, left: list[int]) -> int:
        if self.oracle is not None:  # what trials measured since the last choice, then what is needed
            self._predict_latency()
            self._latencies_changed()
            self._measure_needed(left)
            left = [i for i in left if i not in self.tried]  # measured over --max-latency-ms
            if not left:
                return -1
        mu, sd = self.model().predict(self.features)
        front = self._front(mu)
        gains = np.array([expected_hv_gain(self.latency[i], mu[i], sd[i], front, self.right) for i in left])
        best = np.flatnonzero(gains >= gains.max() - 1e-12)
        return left[int(self.rng.choice(best))]
