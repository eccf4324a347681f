"""ONNX models and server helpers for the benchd tests (built with onnx.helper, no torch)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = [helper.make_opsetid("", 17)]


def stop_process(proc: subprocess.Popen | None, timeout: float = 10) -> None:
    """Terminate a child process, kill it if it does not exit within ``timeout`` seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _save(model: onnx.ModelProto, path: Path) -> Path:
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


def conv_model(path: Path, channels: int = 8, hw: int = 32, seed: int = 0) -> Path:
    """Tiny conv net: dynamic batch, static 3 x hw x hw input (like raysearch's exports)."""
    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array(rng.standard_normal((channels, 3, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((1, channels, 1, 1)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("Conv", ["input", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes, "conv",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, hw, hw])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 1, hw, hw])],
        initializer=[w1, w2],
    )
    return _save(helper.make_model(graph, opset_imports=OPSET), path)


def big_model(path: Path, mib: float = 6.0) -> Path:
    """MatMul with a large initializer: a file over gRPC's 4 MiB message limit, cheap to run."""
    cols = int(mib * 2**20 / 4 / 1024)
    w = numpy_helper.from_array(np.full((1024, cols), 0.001, dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1024])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", cols])],
        initializer=[w],
    )
    return _save(helper.make_model(graph, opset_imports=OPSET), path)


def dynamic_hw_model(path: Path) -> Path:
    """Relu over an input whose H and W are dynamic (needs input_shapes)."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "dyn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3, "h", "w"])],
    )
    return _save(helper.make_model(graph, opset_imports=OPSET), path)


def string_input_model(path: Path) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["s"], ["t"])], "str",
        [helper.make_tensor_value_info("s", TensorProto.STRING, [1])],
        [helper.make_tensor_value_info("t", TensorProto.STRING, [1])],
    )
    return _save(helper.make_model(graph, opset_imports=OPSET), path)


def unloadable_model(path: Path) -> Path:
    """Well-formed protobuf, but an operator onnxruntime does not know: fails at session creation."""
    graph = helper.make_graph(
        [helper.make_node("NoSuchOperator", ["x"], ["y"])], "bad",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    return _save(helper.make_model(graph, opset_imports=OPSET), path)


def run_failure_model(path: Path) -> Path:
    """Loads, but Reshape of a [batch, 3] tensor to [7] fails inside session.run."""
    shape = numpy_helper.from_array(np.array([7], dtype=np.int64), "shape")
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])], "runfail",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [7])],
        initializer=[shape],
    )
    return _save(helper.make_model(graph, opset_imports=OPSET), path)


def memory_hog_model(path: Path, gib: float = 2.0) -> Path:
    """Expand a [1] input to `gib` GiB of floats at run time (no initializer, tiny file)."""
    n = int(gib * 2**30 / 4)
    shape = numpy_helper.from_array(np.array([n], dtype=np.int64), "shape")
    graph = helper.make_graph(
        [helper.make_node("Expand", ["x", "shape"], ["big"]),
         helper.make_node("ReduceSum", ["big"], ["y"], keepdims=0)],
        "hog",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])],
        initializer=[shape],
    )
    return _save(helper.make_model(graph, opset_imports=OPSET), path)


def slow_model(path: Path, hw: int = 96, layers: int = 6) -> Path:
    """A conv stack that takes a few milliseconds per run (for overlap and farm tests)."""
    rng = np.random.default_rng(1)
    inits, nodes, prev = [], [], "input"
    for i in range(layers):
        cin = 3 if i == 0 else 32
        inits.append(numpy_helper.from_array(rng.standard_normal((32, cin, 3, 3)).astype(np.float32) * 0.1, f"w{i}"))
        nodes.append(helper.make_node("Conv", [prev, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        prev = f"r{i}"
    nodes.append(helper.make_node("Identity", [prev], ["output"]))
    graph = helper.make_graph(
        nodes, "slow",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, hw, hw])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 32, hw, hw])],
        initializer=inits,
    )
    return _save(helper.make_model(graph, opset_imports=OPSET), path)


def wait_serving(client: Any, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if client.health(timeout_s=2) == "SERVING":
                return
        except Exception:
            pass
        time.sleep(0.05)
    raise TimeoutError("server never became SERVING")


@contextlib.contextmanager
def serve_subprocess(tmp: Path, name: str, *extra: str) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """`benchd serve` in its own process on 127.0.0.1:0 (so a test can SIGKILL it)."""
    port_file = tmp / f"{name}.port"
    cmd = [sys.executable, "-m", "benchd.cli", "serve", "--port", "0", "--port-file", str(port_file),
           "--device-name", name, "--device-class", "test", "--cache-dir", str(tmp / f"cache-{name}"),
           "--monitor-interval-s", "0", *extra]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"benchd serve {name} did not start (exit {proc.poll()})")
            time.sleep(0.05)
        yield proc, int(port_file.read_text())
    finally:
        stop_process(proc, timeout=10)


def make_tls(tmp: Path) -> dict[str, Path]:
    """A throw-away CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
        return path

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("benchd test CA")).issuer_name(name("benchd test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    out = {"ca": tmp / "ca.pem"}
    out["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for role, san in (("server", [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                      ("client", [x509.DNSName("benchd-client")])):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(name(f"benchd {role}")).issuer_name(ca.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName(san), critical=False)
                .sign(ca_key, hashes.SHA256()))
        out[f"{role}_cert"] = tmp / f"{role}.pem"
        out[f"{role}_cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        out[f"{role}_key"] = write_key(key, tmp / f"{role}.key")
    return out
