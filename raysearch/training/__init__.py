"""Training and judging one model: `train`, `evaluate` (test IoU through onnxruntime), `iou`, `export` (ONNX), `quantize` (int8), `model_summary` (parameters and MACs)."""
