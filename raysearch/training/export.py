"""ONNX export: one self-contained file, static H/W, dynamic batch, the spec in the metadata,
checked by `onnx.checker` and against torch through onnxruntime before it is returned.

Static H/W is not a style choice: adaptive pooling with dynamic H/W exports wrong numbers with no
error, so every export is verified against torch at its own (only) size.
"""

from __future__ import annotations

import io
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from raysearch.models import ModelSpec, spec_of
from raysearch.storage import write_atomic
from raysearch.training.evaluate import SPEC_METADATA_KEY

log = logging.getLogger(__name__)

MAX_ABS_DIFF = 1e-4
INPUT_NAME, OUTPUT_NAME = "input", "logits"
EXPORTERS = ("torchscript", "dynamo")


class ExportError(RuntimeError):
    """The exported graph is invalid or disagrees with torch."""


@dataclass(frozen=True)
class ExportReport:
    path: Path
    spec: ModelSpec
    input_name: str
    input_shape: tuple  # ("batch", C, H, W) as read back from the graph
    size_bytes: int
    max_abs_diff: float
    seconds: float


def export_onnx(model: torch.nn.Module, path: str | Path, *, exporter: str = "torchscript", opset: int = 18,
                tolerance: float = MAX_ABS_DIFF, check_batch: int = 2) -> ExportReport:
    """Export ``model`` (built by `build_model`, so it carries ``.spec``) to ``path``.

    exporter: "torchscript" (default: ~10x faster to export, the same graph for these models) or
    "dynamo" (torch's default exporter; needs onnxscript). Raises ExportError when the ONNX output
    differs from torch by more than ``tolerance`` on a random batch of ``check_batch`` images.
    """
    import onnx

    if exporter not in EXPORTERS:
        raise ValueError(f"exporter={exporter!r} is not one of {EXPORTERS}")
    spec = spec_of(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model = model.eval()
    device = next(model.parameters()).device
    if device.type != "cpu":
        model = model.to("cpu")
    dummy = torch.zeros(spec.input_shape)
    buf = _export_bytes(model, dummy, exporter, opset)

    proto = onnx.load_from_string(buf)
    del proto.metadata_props[:]
    for key, value in ((SPEC_METADATA_KEY, spec.to_json()), ("raysearch.name", spec.name)):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = f"raysearch {spec.name}"
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as e:
        raise ExportError(f"{spec.name}: exported graph fails onnx.checker: {e}") from e
    data = proto.SerializeToString()
    write_atomic(path, data)

    diff, shape = _compare(model, path, spec, check_batch)
    if device.type != "cpu":
        model.to(device)
    if not diff <= tolerance:
        raise ExportError(f"{path}: onnxruntime output differs from torch by {diff:.3g} (> {tolerance:g}) for {spec.name}")
    report = ExportReport(path, spec, INPUT_NAME, shape, len(data), diff, time.perf_counter() - t0)
    log.info("exported %s to %s (%.1f MB, max |onnx - torch| = %.2g, %.1f s)", spec.name, path,
             len(data) / 1e6, diff, report.seconds)
    return report


def _export_bytes(model: torch.nn.Module, dummy: torch.Tensor, exporter: str, opset: int) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "torchscript":
            f = io.BytesIO()
            torch.onnx.export(model, (dummy,), f, dynamo=False, opset_version=opset,  # type: ignore[arg-type]
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],  # (a file object is fine)
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
            return f.getvalue()
        for name in ("onnx_ir", "onnxscript", "torch.onnx"):  # very chatty at INFO
            logging.getLogger(name).setLevel(logging.WARNING)
        batch = torch.export.Dim("batch", min=1, max=1024)
        program = torch.onnx.export(model, (dummy,), dynamo=True, opset_version=opset, input_names=[INPUT_NAME],
                                    output_names=[OUTPUT_NAME], dynamic_shapes=({0: batch},), external_data=False,
                                    verbose=False)
        assert program is not None, "the dynamo exporter returns its program"
        return program.model_proto.SerializeToString()


def _compare(model: torch.nn.Module, path: Path, spec: ModelSpec, batch: int) -> tuple[float, tuple]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    x = torch.randn((batch,) + spec.input_shape[1:], generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = model(x).numpy()
    got = session.run(None, {inp.name: x.numpy()})[0]
    if got.shape != expected.shape:
        raise ExportError(f"{path}: onnxruntime output shape {got.shape} != torch {expected.shape} for {spec.name}")
    return float(np.abs(got - expected).max()), tuple(inp.shape)


def read_spec(path: str | Path) -> ModelSpec | None:
    """The spec stored in an exported model's metadata (None for foreign ONNX files)."""
    import onnxruntime as ort

    meta = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
    text = meta.get(SPEC_METADATA_KEY)
    return ModelSpec.from_json(text) if text else None
