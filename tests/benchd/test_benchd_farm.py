"""BenchFarm and the `benchd` CLI against real `benchd serve` processes on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from benchd.client import BenchClient, BenchResult
from benchd.errors import FarmError
from benchd.farm import BenchFarm, FarmConfigError, load_inventory
from tests.helpers import REPO as ROOT
from tests.helpers import benchd_fixtures as fx

pytestmark = pytest.mark.timeout(180)

# A second caller in another process, like a Ray trial on another node.
_OTHER_PROCESS = """
import json, sys
from benchd.farm import BenchFarm
with BenchFarm.from_file(sys.argv[1], probe_after_s=30) as farm:
    for _ in range(int(sys.argv[3])):
        r = farm.benchmark(sys.argv[2], runs=1, warmup_runs=0, min_duration_s=0.25, intra_op_threads=1,
                           device_class="test", timeout_s=120)
        print(json.dumps(r.to_dict()), flush=True)
"""


@pytest.fixture(scope="module")
def farm_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, subprocess.Popen[bytes]]]]:
    tmp = tmp_path_factory.mktemp("farm")
    with ExitStack() as stack:
        procs, lines = {}, ["# test farm", "devices:"]
        for name in ("pi-a", "pi-b", "pi-c"):
            proc, port = stack.enter_context(fx.serve_subprocess(tmp, name, "--worker-memory-mb", "1024"))
            procs[name] = proc
            lines += [f"  - name: {name}", f"    address: 127.0.0.1:{port}", "    class: test",
                      "    labels: {site: lab}"]
        lines += ["  - name: other-class", "    address: 127.0.0.1:1", "    class: jetson"]
        inventory = tmp / "farm.yaml"
        inventory.write_text("\n".join(lines) + "\n")
        for d in load_inventory(inventory)[:3]:
            with BenchClient(d.address) as c:
                fx.wait_serving(c)
        yield inventory, procs


def test_farm_survives_a_device_killed_mid_run(farm_servers: tuple[Path, dict[str, subprocess.Popen[bytes]]],
                                               tmp_path: Path) -> None:
    inventory, procs = farm_servers
    model = fx.slow_model(tmp_path / "slow.onnx", hw=48, layers=3)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    other = subprocess.Popen([sys.executable, "-c", _OTHER_PROCESS, str(inventory), str(model), "4"],
                             env=env, stdout=subprocess.PIPE, text=True)
    results: list[BenchResult] = []
    failures: list[BaseException] = []
    with BenchFarm.from_file(inventory, probe_after_s=30) as farm:

        def caller() -> None:
            for _ in range(3):
                try:
                    results.append(farm.benchmark(model, runs=1, warmup_runs=0, min_duration_s=0.25,
                                                  intra_op_threads=1, device_class="test", labels={"site": "lab"},
                                                  timeout_s=120))
                except BaseException as exc:  # pragma: no cover - reported below
                    failures.append(exc)

        threads = [threading.Thread(target=caller) for _ in range(3)]
        for t in threads:
            t.start()
        # Kill pi-b while it is timing someone's model.
        victim = next(d for d in farm.devices if d.name == "pi-b")
        with BenchClient(victim.address) as c:
            deadline = time.monotonic() + 60
            while not c.status().busy:
                assert time.monotonic() < deadline, "pi-b never got a job"
                time.sleep(0.01)
        procs["pi-b"].send_signal(signal.SIGKILL)
        procs["pi-b"].wait()
        for t in threads:
            t.join()
        out, _ = other.communicate(timeout=120)
    assert other.returncode == 0
    results += [BenchResult(**{**d, "inputs": tuple(d["inputs"]), "samples_ms": tuple(d["samples_ms"])})
                for d in map(json.loads, out.splitlines())]
    assert not failures, failures
    assert len(results) == 13  # every job finished
    assert any(r.attempts > 1 for r in results), "the job on the killed device should have been rerun"
    assert {r.farm_device for r in results} <= {"pi-a", "pi-b", "pi-c"}
    assert all(r.farm_device == r.device_name for r in results)  # tagged with the measuring device
    # Never two timing runs on one device at once, across threads and processes.
    by_device = defaultdict(list)
    for r in results:
        by_device[r.farm_device].append((r.timing_start_unix_ns, r.timing_end_unix_ns))
    for windows in by_device.values():
        windows.sort()
        for (_, end), (start, _) in zip(windows, windows[1:]):
            assert start >= end
    # Both survivors worked (the farm spread the load).
    assert {"pi-a", "pi-c"} <= {r.farm_device for r in results}

    # `benchd farm status` shows the dead device as DOWN.
    status = subprocess.run([sys.executable, "-m", "benchd.cli", "farm", "status", str(inventory), "--json"],
                            env=env, capture_output=True, text=True, timeout=60)
    rows = {row["device"]: row for row in json.loads(status.stdout)}
    assert status.returncode == 1
    assert rows["pi-a"]["health"] == "SERVING" and rows["pi-b"]["health"] == "DOWN"
    assert rows["pi-a"]["busy"] is False and rows["pi-a"]["class"] == "test"
    table = subprocess.run([sys.executable, "-m", "benchd.cli", "farm", "status", str(inventory)],
                           env=env, capture_output=True, text=True, timeout=60).stdout
    assert table.splitlines()[0].split()[:4] == ["DEVICE", "CLASS", "ADDRESS", "HEALTH"]
    assert "pi-b" in table and "DOWN" in table


def test_farm_class_selection_and_errors(farm_servers: tuple[Path, dict[str, subprocess.Popen[bytes]]],
                                         tmp_path: Path) -> None:
    inventory, _ = farm_servers
    model = fx.conv_model(tmp_path / "conv.onnx")
    with BenchFarm.from_file(inventory, probe_after_s=30) as farm:
        with pytest.raises(FarmError, match="no device of class 'tpu'"):
            farm.benchmark(model, device_class="tpu")
        with pytest.raises(FarmError, match="no device could run"):  # the jetson entry is not listening
            farm.benchmark(model, device_class="jetson", timeout_s=1.0)


def test_cli_bench_target_local_and_info(farm_servers: tuple[Path, dict[str, subprocess.Popen[bytes]]],
                                         tmp_path: Path) -> None:
    inventory, _ = farm_servers
    address = load_inventory(inventory)[0].address
    model = fx.conv_model(tmp_path / "conv.onnx")
    env = dict(os.environ, PYTHONPATH=str(ROOT))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "benchd.cli", *args], env=env, capture_output=True,
                              text=True, timeout=60)

    remote = cli("bench", str(model), "--target", address, "--runs", "3", "--warmup", "1", "--precision", "0", "--json")
    assert remote.returncode == 0, remote.stderr
    assert json.loads(remote.stdout)["runs"] == 3
    # the flags under the BenchmarkRequest fields' names (above: the first names, still aliases)
    local = cli("bench", str(model), "--local", "--runs", "3", "--intra-op-threads", "1", "--target-rel-ci", "0", "--json")
    assert local.returncode == 0, local.stderr
    assert json.loads(local.stdout)["intra_op_threads"] == 1
    human = cli("bench", str(model), "--target", address, "--runs", "2")
    assert "latency_ms_p50" in human.stdout
    info = cli("info", "--target", address, "--json")
    assert json.loads(info.stdout)["device"]["name"] == "pi-a"
    bad = cli("bench", str(tmp_path / "missing.onnx"), "--target", address)
    assert bad.returncode != 0 and "missing.onnx" in bad.stderr
    assert "--farm" in cli("bench", "--help").stdout


def test_inventory_validation_names_entry_and_line(tmp_path: Path) -> None:
    cases = {
        "devices:\n  - name: a\n    address: h:1\n    class: x\n  - name: b\n    class: x\n":
            r"farm.yaml:5: device #2 \('b'\): 'address' is missing",
        "devices:\n  - name: a\n    address: nohost\n    class: x\n":
            r":2: device #1 \('a'\): address nohost: expected HOST:PORT",
        "devices:\n  - {name: a, address: 'h:1', class: x}\n  - {name: a, address: 'h:2', class: x}\n":
            "duplicate name",
        "devices:\n  - {name: a, address: 'h:1', class: x, colour: red}\n": r"unknown key\(s\) \['colour'\]",
        "devices:\n  - {name: a, address: 'h:1', class: x, labels: [1]}\n": "labels",
        "devices: [\n": "invalid YAML",
        "hosts: []\n": "'devices' list",
    }
    path = tmp_path / "farm.yaml"
    for text, pattern in cases.items():
        path.write_text(text)
        with pytest.raises(FarmConfigError, match=pattern):
            load_inventory(path)
    path.write_text("defaults: {token_file: tok}\ndevices:\n  - {name: a, address: 'h:1', class: x}\n")
    (device,) = load_inventory(path)
    assert device.token_file == str(tmp_path / "tok") and device.line == 3


def test_shipped_inventory_is_valid() -> None:
    devices = load_inventory(ROOT / "clusters" / "farm.yaml")
    assert devices and all(d.device_class for d in devices)


def test_a_device_that_refuses_our_token_ends_the_benchmark_at_once(tmp_path: Path) -> None:
    """A permanent refusal (UNAUTHENTICATED) is not worth waiting out: with no other device, the
    farm says so at once instead of retrying for the whole timeout (1800 s by default)."""
    from benchd.farm import FarmDevice
    from benchd.server import ServerConfig, create_server

    server, port = create_server("127.0.0.1:0", ServerConfig(cache_dir=str(tmp_path / "cache"), token="right-token"))
    wrong = tmp_path / "token"
    wrong.write_text("wrong-token\n")
    wrong.chmod(0o600)
    farm = BenchFarm([FarmDevice("pi-a", f"127.0.0.1:{port}", "rpi4", token_file=str(wrong))])
    try:
        t0 = time.monotonic()
        with pytest.raises(FarmError, match=r"refused it: \{'pi-a': .*token"):
            farm.benchmark(fx.conv_model(tmp_path / "m.onnx"), device_class="rpi4", runs=3, timeout_s=600)
        assert time.monotonic() - t0 < 60
    finally:
        farm.close()
        server.stop(grace=1)


def test_a_device_with_a_missing_tls_file_is_down_and_the_rest_serve(tmp_path: Path) -> None:
    from benchd.farm import FarmDevice
    from benchd.security import ClientTls
    from benchd.server import ServerConfig, create_server

    server, port = create_server("127.0.0.1:0", ServerConfig(cache_dir=str(tmp_path / "cache")))
    farm = BenchFarm([FarmDevice("broken", "127.0.0.1:1", "rpi4", tls=ClientTls(str(tmp_path / "no-ca.pem"))),
                      FarmDevice("good", f"127.0.0.1:{port}", "rpi4")])
    try:
        with BenchClient(f"127.0.0.1:{port}") as c:
            fx.wait_serving(c)
        broken, good = farm.status()
        assert broken.health == "DOWN" and "no-ca.pem: cannot read" in broken.error
        assert good.health == "SERVING"
        result = farm.benchmark(fx.conv_model(tmp_path / "m.onnx"), device_class="rpi4", runs=3, timeout_s=120)
        assert result.farm_device == "good"
    finally:
        farm.close()
        server.stop(grace=1)


def test_bench_on_a_farm_with_no_device_up_is_bounded_and_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Every device unreachable or silent and no --timeout-s: `benchd bench --farm` retried for
    1800 s without a word. Now it looks for a device for `FARM_WAIT_S` (--timeout-s if given),
    says now and then what it waits for, and ends in one line naming the farm and each failure."""
    from benchd import cli
    from benchd.farm import FarmDevice

    assert cli._parser().parse_args(["bench", "m.onnx", "--farm", "farm.yaml"]).timeout_s is None
    assert cli.FARM_WAIT_S == 120  # what bounds it then: a person is waiting
    model = fx.conv_model(tmp_path / "conv.onnx")
    inventory = tmp_path / "farm.yaml"
    with socket.socket() as refused, socket.socket() as silent:
        refused.bind(("127.0.0.1", 0))  # bound, not listening: the connection is refused
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # connected by the kernel, never answered
        devices = {"pi-refused": refused.getsockname()[1], "pi-silent": silent.getsockname()[1]}
        inventory.write_text("devices:\n" + "".join(f"  - {{name: {name}, address: '127.0.0.1:{port}', class: rpi4}}\n"
                                                      for name, port in devices.items()))
        end = (f"benchd bench: farm {inventory}: no device could run the benchmark within 3 s (class 'rpi4'): "
               f"pi-refused (127.0.0.1:{devices['pi-refused']}) unreachable: Connection refused; "
               f"pi-silent (127.0.0.1:{devices['pi-silent']}) silent: no answer within 2 s")
        t0 = time.monotonic()
        p = subprocess.run([sys.executable, "-m", "benchd.cli", "bench", str(model), "--farm", str(inventory),
                            "--class", "rpi4", "--timeout-s", "3"], env=dict(os.environ, PYTHONPATH=str(ROOT)),
                           capture_output=True, text=True, timeout=60)
        assert time.monotonic() - t0 < 30
        assert p.returncode == 1, p.stderr
        *progress, last = p.stderr.strip().splitlines()
        assert last == end
        assert progress and progress[0].startswith(f"benchd bench: farm {inventory}: waiting for a device of class "
                                                   "'rpi4': 1 silent, 1 unreachable, retrying ("), p.stderr
        assert all(line.endswith(" s of 3 s)") for line in progress), p.stderr
        # the same without --timeout-s: FARM_WAIT_S bounds it (made short here: the real one is 120 s)
        monkeypatch.setattr(cli, "FARM_WAIT_S", 3.0)
        try:
            assert cli.main(["bench", str(model), "--farm", str(inventory), "--class", "rpi4"]) == 1
        finally:
            logging.getLogger("benchd.farm").setLevel(logging.NOTSET)
        assert capsys.readouterr().err.strip().splitlines()[-1] == end
        # the library: `wait_s` bounds the search for a device, whatever the job's own deadline
        lines: list[str] = []
        with BenchFarm([FarmDevice(n, f"127.0.0.1:{port}", "rpi4") for n, port in devices.items()]) as farm:
            t0 = time.monotonic()
            with pytest.raises(FarmError, match=r"^no device could run the benchmark within 3 s \(class 'rpi4'\): "
                                                "pi-refused"):
                farm.benchmark(model, device_class="rpi4", timeout_s=1800, wait_s=3, progress=lines.append)
            assert time.monotonic() - t0 < 15 and lines[0].startswith("waiting for a device of class 'rpi4': ")


def test_a_bad_inventory_is_one_line_naming_it(tmp_path: Path) -> None:
    """Invalid YAML took five lines (PyYAML's own, with a caret under an excerpt); an address whose
    port gRPC would wrap (70000 is 4464 to it) was taken."""
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("devices: [\n  - {name: a\n")
    wraps = tmp_path / "wraps.yaml"
    wraps.write_text("devices:\n  - {name: a, address: '127.0.0.1:70000', class: rpi4}\n"
                     "  - {name: b, address: '[::1]:50051', class: rpi4}\n")
    says = {bad_yaml: f"{bad_yaml}:2:3: invalid YAML: expected the node content, but found '-' "
                      "(while parsing a flow node)",
            wraps: f"{wraps}:2: device #1 ('a'): address 127.0.0.1:70000: port 70000 is outside 1-65535"}
    model = fx.conv_model(tmp_path / "conv.onnx")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for path, message in says.items():
        with pytest.raises(FarmConfigError) as e:
            load_inventory(path)
        assert str(e.value) == message
        for command, args in (("bench", [str(model), "--farm", str(path)]), ("farm status", [str(path)])):
            p = subprocess.run([sys.executable, "-m", "benchd.cli", *command.split(), *args], env=env,
                               capture_output=True, text=True, timeout=60)
            assert p.returncode == 2 and p.stderr.strip() == f"benchd {command}: {message}", p.stderr
    wraps.write_text("devices:\n  - {name: b, address: '[::1]:50051', class: rpi4}\n")
    assert load_inventory(wraps)[0].address == "[::1]:50051"  # IPv6 in brackets still works
