"""Every conversion between the wire (benchd/v1 protobuf messages) and benchd's Python values, in
one place: the server, the client and the farm call these and never read enum numbers
themselves."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias, TypeVar

from benchd.predict import ENCODINGS, PredictParams
from benchd.runner import DEFAULTS, GRAPH_OPTIMIZATIONS, BenchParams, ModelInputError
from benchd.v1 import benchd_pb2 as pb

GraphOptimization: TypeAlias = pb.GraphOptimization  # the enum types (the generated stubs: int subclasses)
ThrottleState: TypeAlias = pb.ThrottleState
OutputEncoding: TypeAlias = pb.OutputEncoding
E = TypeVar("E", bound=int)  # one of the enum types

_GRAPH_OPT: dict[str, GraphOptimization] = {"disable": pb.GRAPH_OPTIMIZATION_DISABLE, "basic": pb.GRAPH_OPTIMIZATION_BASIC,
              "extended": pb.GRAPH_OPTIMIZATION_EXTENDED, "all": pb.GRAPH_OPTIMIZATION_ALL}
_GRAPH_OPT_NAME = {v: k for k, v in _GRAPH_OPT.items()} | {pb.GRAPH_OPTIMIZATION_UNSPECIFIED: "all"}
_THROTTLE: dict[ThrottleState, bool | None] = {pb.THROTTLE_STATE_UNKNOWN: None, pb.THROTTLE_STATE_NOT_THROTTLED: False,
             pb.THROTTLE_STATE_THROTTLED: True}
_ENCODING: dict[str, OutputEncoding] = {"mask": pb.OUTPUT_ENCODING_MASK, "raw": pb.OUTPUT_ENCODING_RAW}
_ENCODING_NAME = {v: k for k, v in _ENCODING.items()} | {pb.OUTPUT_ENCODING_UNSPECIFIED: "mask"}
assert set(_GRAPH_OPT) == set(GRAPH_OPTIMIZATIONS) and set(_ENCODING) == set(ENCODINGS)


def _number_of(table: Mapping[str, E], name: str, field: str, choices: Sequence[str]) -> E:
    try:
        return table[name]
    except KeyError:
        raise ModelInputError(f"{field} must be one of {tuple(choices)}, got {name!r}") from None


def _name_of(table: Mapping[E, str], value: E, field: str, enum: str) -> str:
    """A name for an enum number from the wire; a number outside the enum is refused, never read as
    the default."""
    try:
        return table[value]
    except KeyError:
        raise ModelInputError(f"{field}={value} is not one of the {enum} values {sorted(table)}") from None


def graph_optimization_enum(name: str) -> GraphOptimization:
    return _number_of(_GRAPH_OPT, name, "graph_optimization", GRAPH_OPTIMIZATIONS)


def graph_optimization_name(value: GraphOptimization) -> str:
    """The level a request asks for (UNSPECIFIED: onnxruntime's default, all)."""
    return _name_of(_GRAPH_OPT_NAME, value, "graph_optimization", "GraphOptimization")


def throttle_enum(state: bool | None) -> ThrottleState:
    return next(k for k, v in _THROTTLE.items() if v is state)


def throttle_state(value: ThrottleState) -> bool | None:
    """True / False, or None when the device cannot tell."""
    return _THROTTLE.get(value)


def benchmark_request(params: BenchParams, sha: str, reject_if_busy: bool = False) -> pb.BenchmarkRequest:
    req = pb.BenchmarkRequest(
        model_sha256=sha, warmup_runs=params.warmup_runs, runs=params.runs, min_duration_s=params.min_duration_s,
        intra_op_threads=params.intra_op_threads, batch_size=params.batch_size,
        graph_optimization=graph_optimization_enum(params.graph_optimization),
        input_shapes=[pb.InputShape(name=k, dims=list(v)) for k, v in params.input_shapes.items()],
        return_samples=params.return_samples, reject_if_busy=reject_if_busy,
        target_rel_ci=params.target_rel_ci, max_runs=params.max_runs)
    if params.max_duration_s != DEFAULTS.max_duration_s:  # else the server's own cap
        req.max_duration_s = params.max_duration_s
    return req


def params_of(request: pb.BenchmarkRequest, *, max_runs: int, max_duration_s: float) -> BenchParams:
    """The request's knobs (the defaults where it leaves them out); the caps (``max_runs``,
    ``max_duration_s``) are the smaller of the request's and the server's. Not validated:
    `BenchParams.validate` does that."""
    def given(name: str, default: Any) -> Any:
        return getattr(request, name) if request.HasField(name) else default

    runs = given("runs", DEFAULTS.runs)
    return BenchParams(
        warmup_runs=given("warmup_runs", DEFAULTS.warmup_runs),
        runs=runs,
        min_duration_s=request.min_duration_s,
        max_duration_s=min(given("max_duration_s", max_duration_s), max_duration_s),
        intra_op_threads=request.intra_op_threads,
        batch_size=request.batch_size or 1,
        graph_optimization=graph_optimization_name(request.graph_optimization),
        input_shapes={s.name: list(s.dims) for s in request.input_shapes},
        return_samples=request.return_samples,
        target_rel_ci=given("target_rel_ci", DEFAULTS.target_rel_ci),
        # a client that never sends max_runs (older ones) asking for more runs than its default
        # gets those runs: the cap is for the precision chase, not a limit on what was asked
        max_runs=min(given("max_runs", max(DEFAULTS.max_runs, runs)), max_runs),
    )


def benchmark_response(result: dict[str, Any], device: pb.Device, version: str) -> pb.BenchmarkResponse:
    """A runner's result (`run_benchmark`'s dict) as the reply; None (an unknown sensor reading)
    leaves the optional field unset."""
    resp = pb.BenchmarkResponse(device=device, benchd_version=version)
    for key, value in result.items():
        if value is None:
            continue
        if key == "inputs":
            resp.inputs.extend(pb.TensorInfo(**i) for i in value)
        elif key == "samples_ms":
            resp.samples_ms.extend(value)
        elif key == "throttled":
            resp.throttled = throttle_enum(value)
        elif key == "graph_optimization":
            resp.graph_optimization = graph_optimization_enum(value)
        else:
            setattr(resp, key, value)
    return resp


def inputs_of(resp: pb.BenchmarkResponse) -> tuple[dict[str, Any], ...]:
    return tuple({"name": i.name, "element_type": i.element_type, "graph_dims": list(i.graph_dims),
                  "dims": list(i.dims)} for i in resp.inputs)


def optional(msg: Any, name: str) -> Any:
    """An ``optional`` field's value, or None when the sender left it out."""
    return getattr(msg, name) if msg.HasField(name) else None


def encoding_enum(name: str) -> OutputEncoding:
    return _number_of(_ENCODING, name, "encoding", ENCODINGS)


def encoding_name(value: OutputEncoding) -> str:
    """The encoding a Predict request asks for (UNSPECIFIED: mask)."""
    return _name_of(_ENCODING_NAME, value, "encoding", "OutputEncoding")


def predict_request(sha: str, batch: Any, params: PredictParams, reject_if_busy: bool = False) -> pb.PredictRequest:
    """A Predict call for one batch (a float32 numpy array, sent little-endian in C order)."""
    import numpy as np

    data = np.ascontiguousarray(batch, dtype="<f4")
    return pb.PredictRequest(model_sha256=sha, input_dims=list(data.shape), input_data=data.tobytes(),
                             encoding=encoding_enum(params.encoding), logit_threshold=params.logit_threshold,
                             intra_op_threads=params.intra_op_threads, reject_if_busy=reject_if_busy)


def predict_params_of(request: pb.PredictRequest) -> PredictParams:
    """The request's knobs; not validated (`PredictParams.validate` does that)."""
    return PredictParams(encoding=encoding_name(request.encoding), logit_threshold=request.logit_threshold,
                         intra_op_threads=request.intra_op_threads)
