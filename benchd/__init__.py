"""benchd: on-device ONNX latency benchmark server, its client and the farm pool (issue 3).

Runs on each edge device (e.g. a Raspberry Pi 4, 64-bit OS) with onnxruntime and grpcio only:
this package never imports torch, ray, mlflow or onnx.
"""

__version__ = "0.1.0"
