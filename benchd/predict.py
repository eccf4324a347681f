"""Run a model on inputs a client sent: accuracy as the device's own onnxruntime computes it.

Pure code, no gRPC: the worker keeps one `SessionCache` and calls `predict`; the client and
raysearch use the same `foreground` and mask packing, so that a mask means one thing everywhere.

Why masks: what accuracy needs from a segmentation model is its foreground mask at the input
size (the host path thresholds there, then resizes the mask to the image). One bit per pixel is
32x smaller than float32 logits; `raw` returns the first output itself, to compare logits.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from benchd.runner import (
    MemoryLimitError,
    ModelInputError,
    ModelLoadError,
    ModelRunError,
    clip,
    is_memory_error,
    read_verified,
    resolved_threads,
    session_options,
)

ENCODINGS = ("mask", "raw")
MAX_RANK = 8


@dataclass(frozen=True)
class PredictParams:
    """One Predict call's knobs (the batch itself travels beside them)."""

    encoding: str = "mask"
    logit_threshold: float = 0.0
    intra_op_threads: int = 0

    def validate(self) -> None:
        if self.encoding not in ENCODINGS:
            raise ModelInputError(f"encoding must be one of {ENCODINGS}, got {clip(self.encoding)}")
        if not math.isfinite(self.logit_threshold):
            raise ModelInputError(f"logit_threshold must be a finite number, got {self.logit_threshold}")
        if not 0 <= self.intra_op_threads <= 256:
            raise ModelInputError(f"intra_op_threads must be in 0..256, got {self.intra_op_threads}")


def check_dims(dims: Sequence[int], nbytes: int, *, max_batch: int) -> tuple[int, ...]:
    """The batch's shape, checked against the bytes that came with it and the batch limit."""
    dims = tuple(int(d) for d in dims)
    if not 1 <= len(dims) <= MAX_RANK:
        raise ModelInputError(f"input_dims must have 1 to {MAX_RANK} dimensions (the batch first: N, C, H, W ...), "
                              f"got {len(dims)}")
    if any(d < 1 for d in dims):
        raise ModelInputError(f"input_dims must all be >= 1, got {clip(str(list(dims)), 80)}")
    if dims[0] > max_batch:
        raise ModelInputError(f"a batch of {dims[0]} images exceeds this server's limit of {max_batch} per call "
                              "(--max-predict-batch); send them in several calls")
    want = math.prod(dims) * 4
    if want != nbytes:
        raise ModelInputError(f"input_dims {clip(str(list(dims)), 80)} need {want} bytes of float32; "
                              f"input_data has {nbytes}")
    return dims


def decode(data: bytes, dims: Sequence[int]) -> np.ndarray:
    """float32 little-endian C-order bytes -> an array of ``dims`` (a copy: the bytes may go)."""
    return np.frombuffer(data, dtype="<f4").reshape(tuple(dims)).astype(np.float32)


def foreground(output: np.ndarray, logit_threshold: float = 0.0) -> np.ndarray:
    """(N, C, H, W) logits -> (N, H, W) boolean foreground: one channel, logit > threshold;
    several, the argmax over channels is not the background (0)."""
    if output.ndim != 4:
        raise ModelRunError(f"mask encoding needs a (N, C, H, W) first output, the model gives shape {list(output.shape)}")
    if output.shape[1] == 1:
        return output[:, 0] > logit_threshold
    return output.argmax(axis=1) > 0


def pack_mask(mask: np.ndarray) -> bytes:
    return np.packbits(mask.astype(bool), axis=None).tobytes()


def unpack_mask(data: bytes, dims: Sequence[int]) -> np.ndarray:
    """`pack_mask`'s inverse: (N, H, W) booleans; refuses data of the wrong length."""
    count = math.prod(dims)
    if len(data) != (count + 7) // 8:
        raise ValueError(f"a packed mask of shape {list(dims)} needs {(count + 7) // 8} bytes, got {len(data)}")
    return np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=count).astype(bool).reshape(tuple(dims))


class SessionCache:
    """The last model's onnxruntime session, kept between calls: a data set sent as many calls
    loads its model once. `drop` frees it (before a benchmark, which must time a cold load)."""

    def __init__(self) -> None:
        self._key: tuple[str, int] | None = None
        self._session: Any = None

    def get(self, model_path: str, sha256: str | None, threads: int) -> tuple[Any, bool]:
        """(session, reused) for the model at ``model_path`` (verified against ``sha256``)."""
        key = (sha256 or model_path, threads)
        if self._key == key:
            return self._session, True
        self.drop()
        import onnxruntime as ort

        data = read_verified(model_path, sha256)
        try:
            session = ort.InferenceSession(data, sess_options=session_options(threads),
                                           providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own pybind exception types
            if is_memory_error(exc):
                raise MemoryLimitError(f"out of memory while loading the model: {exc}") from exc
            raise ModelLoadError(f"onnxruntime could not load the model: {exc}") from exc
        self._key, self._session = key, session
        return session, False

    def drop(self) -> None:
        self._key, self._session = None, None


def _check_input(session: Any, x: np.ndarray) -> str:
    """The one float32 input's name; the batch must fit its graph shape."""
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ModelInputError(f"Predict feeds models with one input; this one has {len(inputs)}")
    inp = inputs[0]
    if inp.type != "tensor(float)":
        raise ModelInputError(f"input {clip(inp.name)} is {inp.type[:40]}; Predict feeds float32 inputs only")
    if len(inp.shape) != x.ndim:
        raise ModelInputError(f"input {clip(inp.name)} has rank {len(inp.shape)} ({inp.shape}); "
                              f"the batch has shape {list(x.shape)}")
    for axis, (want, got) in enumerate(zip(inp.shape, x.shape)):
        if isinstance(want, int) and want > 0 and want != got:
            raise ModelInputError(f"input {clip(inp.name)} is {inp.shape} in the graph; the batch has shape "
                                  f"{list(x.shape)} (axis {axis}: {got} instead of {want})")
    return str(inp.name)


def predict(session: Any, x: np.ndarray, params: PredictParams, *, max_output_bytes: int) -> dict[str, Any]:
    """Run the batch; returns ``dims``, ``data`` (encoded as asked) and ``run_ms``."""
    params.validate()
    name = _check_input(session, x)
    t0 = time.perf_counter_ns()
    try:
        output = np.asarray(session.run(None, {name: x})[0])
    except Exception as exc:
        if is_memory_error(exc):
            raise MemoryLimitError(f"out of memory while running the model: {exc}") from exc
        raise ModelRunError(f"onnxruntime failed to run the model: {exc}") from exc
    run_ms = (time.perf_counter_ns() - t0) / 1e6
    if params.encoding == "mask":
        mask = foreground(output, params.logit_threshold)
        dims, data = list(mask.shape), pack_mask(mask)
    else:
        dims, data = list(output.shape), np.ascontiguousarray(output, dtype="<f4").tobytes()
    if len(data) > max_output_bytes:
        raise ModelInputError(f"the {params.encoding} output of this batch is {len(data)} bytes; this server returns "
                              f"at most {max_output_bytes} per call: send fewer images per call"
                              + (" or ask for masks" if params.encoding == "raw" else ""))
    return {"dims": dims, "data": data, "run_ms": run_ms}


def run_predict(cache: SessionCache, model_path: str, sha256: str | None, x: np.ndarray, params: PredictParams,
                *, max_output_bytes: int, on_loaded: Callable[[], object] | None = None) -> dict[str, Any]:
    """Load (or reuse) the model's session and run one batch (what the worker does per call).
    ``on_loaded()`` is called once the session exists (the server's watchdog then allows the run)."""
    import onnxruntime as ort

    params.validate()
    session, reused = cache.get(model_path, sha256, resolved_threads(params.intra_op_threads))
    if on_loaded is not None:
        on_loaded()
    out = predict(session, x, params, max_output_bytes=max_output_bytes)
    return {**out, "session_reused": reused, "onnxruntime_version": ort.__version__}
