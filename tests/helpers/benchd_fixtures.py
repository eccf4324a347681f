"""ONNX models and server helpers for the benchd tests (built with onnx.helper, no torch)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from benchd import errors

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


def model_of(nodes: list[Any], inputs: list[Any], outputs: list[Any], path: Path, initializer: list[Any] = (),
             opset: int = 17) -> Path:
    graph = helper.make_graph(nodes, "hostile", inputs, outputs, initializer=list(initializer))
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    path.write_bytes(m.SerializeToString())
    return path


def _field(number: int, payload: bytes | int) -> bytes:
    """One protobuf field: varint for an int, length-delimited for bytes."""
    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
            n >>= 7
            if not n:
                return bytes(out)

    if isinstance(payload, int):
        return varint(number << 3) + varint(payload)
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def deep_model(path: Path, depth: int) -> Path:
    """If inside If, ``depth`` levels (written by hand: the protobuf library itself refuses to
    build past ~100 levels, which is the point)."""
    def value_info(name: str) -> bytes:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 4]).SerializeToString()

    def graph(nodes: bytes, name: str, out: str) -> bytes:  # GraphProto: node=1, name=2, output=12
        return _field(1, nodes) + _field(2, name.encode()) + _field(12, value_info(out))

    def if_node(out: str, then: bytes, other: bytes) -> bytes:  # NodeProto: input=1, output=2, op_type=4, attribute=5
        attrs = b"".join(_field(5, _field(1, key.encode()) + _field(20, 5) + _field(6, g))  # name, type GRAPH, g
                         for key, g in (("then_branch", then), ("else_branch", other)))
        return _field(1, b"c") + _field(2, out.encode()) + _field(4, b"If") + attrs

    leaf = helper.make_graph([helper.make_node("Identity", ["x"], ["leaf"])], "leaf", [],
                             [helper.make_tensor_value_info("leaf", TensorProto.FLOAT, [1, 4])]).SerializeToString()
    body = leaf
    for level in range(depth):
        body = graph(if_node("leaf", body, leaf), f"g{level}", "leaf")
    top = (graph(if_node("y", body, leaf), "deep", "y")
           + _field(11, helper.make_tensor_value_info("c", TensorProto.BOOL, []).SerializeToString())
           + _field(11, value_info("x")))
    opset = helper.make_opsetid("", 17).SerializeToString()
    path.write_bytes(_field(1, 8) + _field(8, opset) + _field(7, top))  # ir_version, opset_import, graph
    return path


def loop_model(path: Path, trips: int = 2**40) -> Path:
    """A Loop with a huge trip count: one session.run would take hours."""
    f = TensorProto.FLOAT
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Relu", ["v_in"], ["v_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", f, [1])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", f, [1])])
    inits = [numpy_helper.from_array(np.array(trips, dtype=np.int64), "M"),
             numpy_helper.from_array(np.array(True), "cond")]
    return model_of([helper.make_node("Loop", ["M", "cond", "x"], ["y"], body=body)],
                    [helper.make_tensor_value_info("x", f, [1])], [helper.make_tensor_value_info("y", f, [1])],
                    path, initializer=inits)


def hostile_models(tmp: Path) -> dict[str, tuple[Path, type[errors.BenchError], str]]:
    """Models a device cannot feed, load or afford: (file, the error, words of its message)."""
    f = TensorProto.FLOAT
    seq = model_of([helper.make_node("SequenceLength", ["s"], ["n"])],
                   [helper.make_tensor_sequence_value_info("s", f, [1])],
                   [helper.make_tensor_value_info("n", TensorProto.INT64, [])], tmp / "seq.onnx")
    bf16 = model_of([helper.make_node("Identity", ["x"], ["y"])],
                    [helper.make_tensor_value_info("x", TensorProto.BFLOAT16, [1, 4])],
                    [helper.make_tensor_value_info("y", TensorProto.BFLOAT16, [1, 4])], tmp / "bf16.onnx")
    opset = model_of([helper.make_node("Relu", ["x"], ["y"])],
                     [helper.make_tensor_value_info("x", f, [1, 4])],
                     [helper.make_tensor_value_info("y", f, [1, 4])], tmp / "opset.onnx", opset=999)
    # an initializer whose data lives "beside the model" in /etc/passwd
    ext = TensorProto(name="w", data_type=f, dims=[4], data_location=TensorProto.EXTERNAL)
    for k, v in (("location", "/etc/passwd"), ("offset", "0"), ("length", "16")):
        ext.external_data.add(key=k, value=v)
    external = model_of([helper.make_node("Add", ["x", "w"], ["y"])],
                        [helper.make_tensor_value_info("x", f, [1, 4])],
                        [helper.make_tensor_value_info("y", f, [1, 4])], tmp / "ext.onnx", initializer=[ext])
    deep = deep_model(tmp / "deep.onnx", 150)
    return {
        "string input": (string_input_model(tmp / "str.onnx"), errors.BenchInvalidArgument, "unsupported type"),
        "sequence input": (seq, errors.BenchInvalidArgument, "unsupported type"),
        "bf16 input": (bf16, errors.BenchInvalidArgument, "unsupported type"),
        "unknown op": (unloadable_model(tmp / "op.onnx"), errors.BenchInvalidArgument, "could not load"),
        "unknown opset": (opset, errors.BenchInvalidArgument, "could not load"),
        "external data": (external, errors.BenchInvalidArgument, "could not load"),
        "deep nesting": (deep, errors.BenchInvalidArgument, "could not load"),
        "huge output": (memory_hog_model(tmp / "hog.onnx", gib=4.0), errors.BenchResourceExhausted, "memory"),
    }


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
def serve_subprocess(tmp: Path, name: str, *extra: str, prefix: Sequence[str] = (),
                     log: Path | None = None) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """`benchd serve` in its own process on 127.0.0.1:0 (so a test can SIGKILL it), run under
    ``prefix`` (e.g. `read_only_prefix`'s), its stderr (the server's log) into ``log``."""
    port_file = tmp / f"{name}.port"
    cmd = [*prefix, sys.executable, "-m", "benchd.cli", "serve", "--port", "0", "--port-file", str(port_file),
           "--device-name", name, "--device-class", "test", "--cache-dir", str(tmp / f"cache-{name}"),
           "--monitor-interval-s", "0", *extra]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    with open(log, "wb") if log is not None else contextlib.nullcontext(subprocess.DEVNULL) as stderr:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=stderr)  # the child has its own copy
    try:
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"benchd serve {name} did not start (exit {proc.poll()})")
            time.sleep(0.05)
        yield proc, int(port_file.read_text())
    finally:
        stop_process(proc, timeout=10)


def read_only_prefix(folder: Path) -> tuple[list[str] | None, str]:
    """A command prefix that runs a command with ``folder`` mounted read-only (a bind mount in a
    mount namespace of its own: nothing to undo, even if the test dies), and why there is none.
    Tests run as root, whom a chmod 0555 does not stop; only a read-only mount does."""
    if shutil.which("unshare") is None:
        return None, "no unshare(1) to make a private read-only mount"
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
    for unshare in (["unshare", "--mount", "--propagation", "private"], ["unshare", "--map-root-user", "--mount"]):
        prefix = [*unshare, "sh", "-c", script, str(folder)]
        probe = subprocess.run([*prefix, "sh", "-c", 'touch "$0/.probe" 2>/dev/null || echo read-only', str(folder)],
                               capture_output=True, text=True, timeout=30)
        if probe.returncode == 0 and probe.stdout.strip() == "read-only":
            return prefix, ""
    return None, f"mounting {folder} read-only is not permitted here ({probe.stderr.strip()[:200]})"


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
