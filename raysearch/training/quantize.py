"""int8 static quantization of an exported ONNX model with onnxruntime's quantization tools.

QDQ format (QuantizeLinear/DequantizeLinear pairs around every quantized op), int8 weights per
output channel, uint8 activations whose ranges are calibrated on real validation images fed
exactly as at inference (the test transform). The quantized file keeps the spec in its metadata,
with ``precision`` set to ``int8``, and must load in onnxruntime before it is returned.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Iterable

import numpy as np

from raysearch.data.transforms import resize_for_test, to_input
from raysearch.models import ModelSpec
from raysearch.training.evaluate import SPEC_METADATA_KEY

log = logging.getLogger(__name__)

CALIBRATION_IMAGES = 16


def calibration_inputs(source, spec: ModelSpec, n: int = CALIBRATION_IMAGES) -> list[np.ndarray]:
    """Up to ``n`` images of ``source`` (spread over it), each as a (1, C, H, W) float32 input."""

    if len(source) == 0:
        raise ValueError("int8 calibration needs at least one validation image; the split is empty")
    picks = np.unique(np.linspace(0, len(source) - 1, num=min(n, len(source))).round().astype(int))
    return [to_input(resize_for_test(source.load(int(i))[0], spec.input_hw), spec.in_channels)[None]
            for i in picks]


def quantize_int8(src: str | Path, dst: str | Path, inputs: Iterable[np.ndarray]) -> Path:
    """Quantize the fp32 model ``src`` into ``dst``, calibrating activation ranges on ``inputs``."""
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    src, dst = Path(src), Path(dst)
    model = onnx.load(str(src))
    input_name = model.graph.input[0].name
    meta = {p.key: p.value for p in model.metadata_props}
    batches = list(inputs)
    if not batches:
        raise ValueError(f"{src}: int8 calibration needs at least one input")

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(batches)

        def get_next(self):
            x = next(self._it, None)
            return None if x is None else {input_name: np.ascontiguousarray(x, dtype=np.float32)}

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="raysearch-quant-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)  # folds and infers shapes for the quantizer
        quantize_static(str(pre), str(dst), _Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    q = onnx.load(str(dst))
    if SPEC_METADATA_KEY in meta:  # the deployed artifact says what it is
        spec = ModelSpec.from_json(meta[SPEC_METADATA_KEY]).replace(precision="int8")
        meta[SPEC_METADATA_KEY] = spec.to_json()
        meta["raysearch.name"] = spec.name
    meta["raysearch.quantization"] = json.dumps({"format": "QDQ", "weights": "int8 per channel",
                                                 "activations": "uint8", "calibration_inputs": len(batches)})
    del q.metadata_props[:]
    for k, v in meta.items():
        q.metadata_props.add(key=k, value=v)
    onnx.save(q, str(dst))
    try:
        ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"])
    except Exception as e:
        raise RuntimeError(f"{dst}: the quantized model does not load in onnxruntime: {e}") from e
    log.info("quantized %s -> %s (int8, %d calibration inputs) in %.1f s", src.name, dst.name, len(batches),
             time.perf_counter() - t0)
    return dst
