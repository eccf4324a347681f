"""A latency model per device class: a configuration's latency predicted, with its uncertainty,
from cheap features of its graph and from what the farm has measured.

Why: latency-first needs every candidate's latency before it trains anything, and measuring every
configuration on the farm first caps the space (hours of a Pi for 2,000 configurations, nothing
for a continuous knob). The farm is in the loop, so the model only has to be good enough to say
which configurations *could* change the next choice; those are measured (`measure_needed`).

Inputs (`config_features`): from the model built on torch's meta device (no weights, no export, a
few milliseconds: `graph_features`) log MACs of the convolutions, log parameters, log of the
elements every convolution writes (the memory traffic small models are bound by), log input
pixels; and the spec's knobs (log width, expansion, repetitions, pyramid pooling), which carry
what the runtime does per layer that the sizes miss. `benchmarks/latency_model.py` compares the
graph's features, the knobs and both on the recorded tables (BENCHMARKS.md): both together
predicted best on table B.

Model: a Gaussian process on log latency, kernel = bias + linear (latency grows as a power of
the sizes) + squared exponential (what the power law misses: a small model's fixed cost per
call), hyperparameters by maximum marginal likelihood, noise at least `NOISE_FLOOR` (the
measurement's own repeatability). A device class with few measurements of its own borrows the
predicted log latency of a *reference* class as one more input (`LatencyModel(reference=...)`):
with 10 measurements the linear part learns the map between the two classes.

A measured configuration is known exactly (its measured figure, uncertainty 0).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from raysearch.models import ModelSpec

FEATURES = ("log_macs", "log_params", "log_activations", "log_pixels")  # of the graph (`graph_features`)
KNOBS = ("log_a", "t", "r", "pp")  # and the spec's own knobs (`config_features`)
NOISE_FLOOR = 0.01  # sd of log latency: a 1% repeatability (table A's passes: median 1.0%)
MAX_FIT_POINTS = 400  # the O(n^3) fit on a seeded subsample beyond this; measured points stay exact anyway


@functools.lru_cache(maxsize=65536)
def graph_features(spec: ModelSpec) -> tuple[float, ...]:
    """``FEATURES`` of a configuration: shapes only (torch's meta device), a few ms each, cached."""
    import torch
    import torch.nn as nn

    from raysearch.models import build_model

    macs = activations = 0
    with torch.device("meta"):
        model = build_model(spec).eval()

    def count(module: nn.Module, _inputs: object, out: torch.Tensor) -> None:
        nonlocal macs, activations
        assert isinstance(module, nn.Conv2d)
        k = module.kernel_size[0] * module.kernel_size[1]
        macs += out.numel() * (module.in_channels // module.groups) * k
        activations += out.numel()

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            model(torch.empty(spec.input_shape, device="meta"))
    finally:
        for h in hooks:
            h.remove()
    params = sum(p.numel() for p in model.parameters())
    pixels = spec.height * spec.width
    return tuple(math.log(max(v, 1)) for v in (macs, params, activations, pixels))


def config_features(spec: ModelSpec) -> tuple[float, ...]:
    """The model's inputs: `graph_features` and the spec's knobs (``KNOBS``). The graph's sizes alone
    miss what the runtime does per layer; the knobs alone miss what two architectures share."""
    return (*graph_features(spec), math.log(spec.a), float(spec.t), float(spec.r), float(spec.pp))


@dataclass(frozen=True)
class LatencyPrediction:
    """Predicted latencies of a list of configurations: the median in ms, the sd of the log (0 where
    measured), and which were measured."""

    ms: np.ndarray
    log_sd: np.ndarray
    measured: np.ndarray

    def bounds(self, z: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
        """A ``z``-sd interval in ms (multiplicative: the model works on log latency)."""
        return self.ms * np.exp(-z * self.log_sd), self.ms * np.exp(z * self.log_sd)


class _GP:
    """A Gaussian process on rows of log sizes: kernel bias^2 + lin^2 x.x' + amp^2 exp(-|x-x'|^2 / 2 ell^2),
    plus noise^2 on the diagonal; the inputs centred on the training mean."""

    BOUNDS = ((-3.0, 3.0), (-6.0, 1.5), (-3.0, 3.5), (math.log(NOISE_FLOOR), 0.0))  # log lin, amp, ell, noise

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.centre = x.mean(axis=0)
        self.x = x - self.centre
        self.y_mean = float(y.mean())
        self.y = y - self.y_mean
        self.theta = self._fit()
        k = self._kernel(self.x, self.x, self.theta) + np.exp(2 * self.theta[3]) * np.eye(len(self.y))
        self.chol = np.linalg.cholesky(k)
        self.alpha = np.linalg.solve(self.chol.T, np.linalg.solve(self.chol, self.y))

    @staticmethod
    def _kernel(a: np.ndarray, b: np.ndarray, theta: np.ndarray) -> np.ndarray:
        lin, amp, ell = np.exp(2 * theta[0]), np.exp(2 * theta[1]), np.exp(theta[2])
        d2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
        k: np.ndarray = 1.0 + lin * a @ b.T + amp * np.exp(-0.5 * d2 / ell**2)
        return k

    def _nll(self, theta: np.ndarray) -> float:
        k = self._kernel(self.x, self.x, theta) + np.exp(2 * theta[3]) * np.eye(len(self.y))
        try:
            chol = np.linalg.cholesky(k)
        except np.linalg.LinAlgError:
            return 1e10
        alpha = np.linalg.solve(chol.T, np.linalg.solve(chol, self.y))
        return float(0.5 * self.y @ alpha + np.log(np.diag(chol)).sum())

    def _fit(self) -> np.ndarray:
        from scipy.optimize import minimize

        starts = [np.array([0.0, -2.0, 0.5, -3.0]), np.array([-1.0, -1.0, 1.5, -4.0])]
        best = min((minimize(self._nll, s, method="L-BFGS-B", bounds=self.BOUNDS) for s in starts),
                   key=lambda r: r.fun)
        return np.asarray(best.x)

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and sd of a new measurement's log latency at each row of ``x``."""
        xs = x - self.centre
        ks = self._kernel(xs, self.x, self.theta)
        mean = self.y_mean + ks @ self.alpha
        v = np.linalg.solve(self.chol, ks.T)
        prior = 1.0 + np.exp(2 * self.theta[0]) * (xs**2).sum(1) + np.exp(2 * self.theta[1])
        var = np.maximum(prior - (v**2).sum(0), 0.0) + np.exp(2 * self.theta[3])
        return mean, np.sqrt(var)


class LatencyModel:
    """The latency of configurations on one device class: measured ones exactly, the others predicted.

    ``features``: a configuration's inputs (default `graph_features`); ``reference``: another class's
    model whose predicted log latency becomes one more input (a new class with few measurements)."""

    def __init__(self, device_class: str, *, features: Callable[[ModelSpec], Sequence[float]] = config_features,
                 reference: LatencyModel | None = None, seed: int = 0) -> None:
        self.device_class = device_class
        self.features = features
        self.reference = reference
        self.seed = seed
        self.measured: dict[ModelSpec, float] = {}
        self._gp: _GP | None = None
        self._fitted_on = -1

    def __len__(self) -> int:
        return len(self.measured)

    def add(self, spec: ModelSpec, latency_ms: float) -> None:
        """A measurement on this class (the figure the search reads: the p50, or the mean)."""
        if not (latency_ms > 0 and math.isfinite(latency_ms)):
            raise ValueError(f"latency of {spec.name} on {self.device_class!r}: {latency_ms!r} is not a positive time")
        self.measured[spec] = float(latency_ms)

    def update(self, measured: Iterable[tuple[ModelSpec, float]]) -> None:
        for spec, ms in measured:
            self.add(spec, ms)

    def _inputs(self, specs: Sequence[ModelSpec]) -> np.ndarray:
        x = np.array([self.features(s) for s in specs], dtype=float).reshape(len(specs), -1)
        if self.reference is not None:
            ref = np.log(self.reference.predict(specs).ms)
            x = np.concatenate([ref[:, None], x], axis=1)
        return x

    def _model(self) -> _GP | None:
        if len(self.measured) < 2:
            return None
        if self._fitted_on != len(self.measured):
            specs = list(self.measured)
            if len(specs) > MAX_FIT_POINTS:
                pick = np.random.default_rng(self.seed).choice(len(specs), MAX_FIT_POINTS, replace=False)
                specs = [specs[i] for i in sorted(pick)]
            self._gp = _GP(self._inputs(specs), np.log([self.measured[s] for s in specs]))
            self._fitted_on = len(self.measured)
        return self._gp

    def predict(self, specs: Sequence[ModelSpec]) -> LatencyPrediction:
        """Every configuration's latency: measured exactly, else the model's median and log sd (with
        fewer than 2 measurements: the reference's prediction, else 1 ms +- a factor e^3)."""
        specs = list(specs)
        measured = np.array([s in self.measured for s in specs], dtype=bool)
        ms = np.ones(len(specs))
        log_sd = np.full(len(specs), 3.0)
        gp = self._model()
        todo = [i for i in range(len(specs)) if not measured[i]]
        if todo and gp is not None:
            mean, sd = gp.predict(self._inputs([specs[i] for i in todo]))
            ms[todo], log_sd[todo] = np.exp(mean), sd
        elif todo and self.reference is not None:
            ref = self.reference.predict([specs[i] for i in todo])
            ms[todo], log_sd[todo] = ref.ms, np.sqrt(ref.log_sd**2 + 1.0)
        done = np.flatnonzero(measured)
        ms[done] = [self.measured[specs[i]] for i in done]
        log_sd[done] = 0.0
        return LatencyPrediction(ms, log_sd, measured)


def class_model(device_class: str, timing: str,
                groups: Mapping[tuple[str, str], Sequence[tuple[ModelSpec, float]]]) -> LatencyModel:
    """The model of ``device_class`` from what a latency cache holds (``groups``: (class, timing key)
    -> measurements): its own measurements under ``timing``, and, while another group knows more
    configurations, that group's model as the reference (a new class predicted from a handful of
    its measurements plus the shape the other class measured)."""
    own = list(groups.get((device_class, timing), ()))
    richer = [(len(g), key) for key, g in groups.items() if key != (device_class, timing) and len(g) > len(own)]
    reference = None
    if richer:
        _, key = max(richer)
        reference = LatencyModel(key[0])
        reference.update(groups[key])
    model = LatencyModel(device_class, reference=reference)
    model.update(own)
    return model


@dataclass(frozen=True)
class ModelError:
    """How a model's predictions compare with measurements it was not fitted on."""

    n: int
    within_10pct: float  # share of |predicted / measured - 1| <= 10%
    median_abs_pct: float
    spearman: float
    covered_2sd: float  # share of measurements inside the predicted 2-sd interval

    def describe(self) -> str:
        return (f"{self.n} configurations predicted: {self.within_10pct:.1%} within +-10% of the measured, "
                f"median error {self.median_abs_pct:.1f}%, Spearman {self.spearman:.3f}, "
                f"{self.covered_2sd:.0%} inside the 2-sd interval")


def model_error(predicted: LatencyPrediction, measured_ms: Sequence[float]) -> ModelError:
    from scipy.stats import spearmanr

    truth = np.asarray(measured_ms, dtype=float)
    rel = np.abs(predicted.ms / truth - 1)
    lo, hi = predicted.bounds(2.0)
    rho = float(spearmanr(predicted.ms, truth).statistic) if len(truth) > 2 else float("nan")
    return ModelError(len(truth), float((rel <= 0.10).mean()), float(np.median(rel) * 100), rho,
                      float(((truth >= lo) & (truth <= hi)).mean()))


def cross_validated(measured: Sequence[tuple[ModelSpec, float]], folds: int = 5, seed: int = 0) -> ModelError | None:
    """The error of predicting each measurement from the others (``folds``-fold); None below 6 measurements."""
    if len(measured) < 6:
        return None
    order = np.random.default_rng(seed).permutation(len(measured))
    pred_ms, pred_sd, truth = [], [], []
    for k in range(folds):
        held = set(order[k::folds].tolist())
        model = LatencyModel("cv", seed=seed)
        model.update(m for i, m in enumerate(measured) if i not in held)
        p = model.predict([measured[i][0] for i in sorted(held)])
        pred_ms += list(p.ms)
        pred_sd += list(p.log_sd)
        truth += [measured[i][1] for i in sorted(held)]
    return model_error(LatencyPrediction(np.array(pred_ms), np.array(pred_sd), np.zeros(len(truth), bool)), truth)
