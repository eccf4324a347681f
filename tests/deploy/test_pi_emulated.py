"""The Pi's real software stack, emulated: benchd installed by clusters/setup_pi.sh into a Debian
bookworm arm64 root (what Raspberry Pi OS 64-bit is built on) run through qemu-user, serving on
127.0.0.1, driven from here through the farm client like a real Pi of the farm.

What this proves: the Pi's install works (aarch64 wheels of onnxruntime, grpcio, numpy and
protobuf resolve and import; the venv has neither torch nor ray; the user, token and unit are
set up), and the wire protocol works across architectures (upload, benchmark, GetInfo, bearer
token). What it does NOT prove: anything about latency. Emulated timings are ~7x slower than a
real Raspberry Pi 4 and distorted (operators slow down unevenly under emulation): the latency
checked here only has to be positive, and must never be read as a Pi latency.

The root is built once per session by `clusters/pi_root.sh build` (7-12 min the first time on
2 cores; reused afterwards, benchd reinstalled in it only when its sources changed), in
$RAYSEARCH_PI_ROOT or /var/tmp/raysearch-pi-root. Without root, debootstrap, qemu-user-static,
binfmt-support or binfmt_misc the tests skip, saying which; in CI (CI=true) a missing package that
could have been installed (root with apt-get: scripts/system_deps.sh installs them) fails them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from benchd.client import BenchClient
from benchd.errors import BenchAuthError
from benchd.farm import BenchFarm
from tests.helpers import REPO

pytestmark = [pytest.mark.pi_emulated, pytest.mark.timeout(3600)]

SCRIPT = REPO / "clusters" / "pi_root.sh"
SETUP = REPO / "clusters" / "setup_pi.sh"
PI_ROOT = Path(os.environ.get("RAYSEARCH_PI_ROOT", "/var/tmp/raysearch-pi-root"))
DEVICE_NAME = "pi4-emulated"
DEVICE_CLASS = "rpi4-emulated"
VENV_PYTHON = "/opt/benchd/venv/bin/python"
# check-host's exit statuses (clusters/pi_root.sh)
E_MISSING_PACKAGES, E_NOT_POSSIBLE = 3, 4
BUILD_TIMEOUT_S = 2700  # 7-12 min from scratch here; a slow mirror or CI runner gets slack
SERVING_TIMEOUT_S = 600  # emulated Python imports onnxruntime slowly

_FACTS_PY = """
import importlib.util, json, platform, sys
import benchd, grpc, onnxruntime
print(json.dumps({
    "machine": platform.machine(), "python": platform.python_version(), "prefix": sys.prefix,
    "benchd": benchd.__version__, "onnxruntime": onnxruntime.__version__, "grpcio": grpc.__version__,
    "torch": importlib.util.find_spec("torch") is not None, "ray": importlib.util.find_spec("ray") is not None,
}))
"""


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def pi_root_sh(*args: str, timeout: float, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), "--root", str(PI_ROOT), *args], capture_output=True,
                          text=True, timeout=timeout, check=False, **kwargs)


@dataclass(frozen=True)
class EmulatedPi:
    pid: int
    address: str
    token_file: Path  # a 0600 copy of the root's /etc/benchd/token, as a submitting machine keeps it
    log: Path
    facts: dict  # what the root's venv reports (platform, versions, torch/ray importable)


@pytest.fixture(scope="session")
def pi_root(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The emulated Pi's root, built or reused once per session; returns the root venv's facts."""
    check = pi_root_sh("check-host", timeout=120)
    if check.returncode:
        reason = check.stderr.strip().splitlines()[-1] if check.stderr.strip() else f"exit {check.returncode}"
        could_install = (check.returncode == E_MISSING_PACKAGES and os.geteuid() == 0
                         and shutil.which("apt-get") is not None)
        if _in_ci() and could_install:
            pytest.fail(f"CI=true and the emulated Pi's packages could have been installed "
                        f"(bash scripts/system_deps.sh does it), but: {reason}")
        pytest.skip(f"no emulated Raspberry Pi on this machine: {reason}")
    log = tmp_path_factory.mktemp("pi-root") / "build.log"
    t0 = time.monotonic()
    with log.open("w") as out:
        build = subprocess.run(["bash", str(SCRIPT), "--root", str(PI_ROOT), "--device-name", DEVICE_NAME,
                                "--device-class", DEVICE_CLASS, "build"],
                               stdout=out, stderr=subprocess.STDOUT, text=True, timeout=BUILD_TIMEOUT_S, check=False)
    text = log.read_text()
    assert build.returncode == 0, f"pi_root.sh build failed (exit {build.returncode}):\n{text[-4000:]}"
    print(f"\nemulated Pi root ready in {time.monotonic() - t0:.0f} s:\n{text.strip()}")
    facts = pi_root_sh("exec", VENV_PYTHON, "-c", _FACTS_PY, timeout=600)
    assert facts.returncode == 0, facts.stderr
    return json.loads(facts.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def emulated_pi(pi_root: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatedPi]:
    """`benchd serve` inside the root on a free port of 127.0.0.1, stopped by PID in teardown."""
    p = pi_root_sh("--device-name", DEVICE_NAME, "--device-class", DEVICE_CLASS, "--port", "0",
                   "--start-timeout-s", str(SERVING_TIMEOUT_S), "serve", timeout=SERVING_TIMEOUT_S + 60)
    assert p.returncode == 0, f"pi_root.sh serve failed:\n{p.stdout}\n{p.stderr}"
    fields = dict(kv.split("=", 1) for kv in p.stdout.split())
    pid = int(fields["pid"])
    try:
        assert os.getpgid(pid) == pid, "benchd should lead its own process group"
        token = tmp_path_factory.mktemp("pi-token") / "token"
        token.write_text(Path(fields["token_file"]).read_text())
        token.chmod(0o600)
        pi = EmulatedPi(pid, fields["address"], token, Path(fields["log"]), pi_root)
        with BenchClient(pi.address, token_file=token, timeout_s=60) as client:
            deadline = time.monotonic() + SERVING_TIMEOUT_S
            while True:
                try:
                    if client.health(timeout_s=10) == "SERVING":
                        break
                except Exception:
                    pass
                assert time.monotonic() < deadline, f"never SERVING:\n{pi.log.read_text()[-3000:]}"
                time.sleep(0.5)
        yield pi
    finally:
        stop = pi_root_sh("stop", str(pid), timeout=180)
        try:  # whatever survived: its process group (never a name: other benchd/ray run here)
            if os.getpgid(pid) == pid:
                os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        assert stop.returncode == 0, stop.stderr


# --- the scripts themselves (no root needed, seconds) ------------------------------------------

def test_pi_root_script_parses_and_documents_its_commands() -> None:
    assert subprocess.run(["bash", "-n", str(SCRIPT)], check=False, timeout=30).returncode == 0
    p = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True, timeout=30, check=False)
    assert p.returncode == 0
    for word in ("build", "serve", "stop PID", "exec", "status", "check-host", "remove", "--root", "--device-class",
                 "--port", "RAYSEARCH_PI_ROOT", "not Pi latencies"):
        assert word in p.stdout, word
    bad = subprocess.run(["bash", str(SCRIPT), "--frobnicate"], capture_output=True, text=True, timeout=30,
                         check=False)
    assert bad.returncode == 2 and "unknown option" in bad.stderr


def test_setup_pi_no_systemd_skips_only_systemd_and_the_governor(tmp_path: Path) -> None:
    """What pi_root.sh runs inside the root: the Pi's plan minus systemctl and the CPU governor."""
    def plan(*extra: str) -> list[str]:
        p = subprocess.run(["bash", str(SETUP), "--dry-run", "--device-class", DEVICE_CLASS, *extra],
                           capture_output=True, text=True, timeout=30, check=False)
        assert p.returncode == 0, p.stderr
        return [ln for ln in p.stdout.splitlines() if ln and not ln.startswith("#")]

    full, chroot = plan(), plan("--no-systemd")
    assert not [c for c in chroot if c.startswith("systemctl") or "scaling_governor" in c]
    assert [c for c in full if c.startswith("systemctl")]  # the real Pi's plan still has them
    dropped = [c for c in full if c not in chroot]
    assert all(c.startswith("systemctl") or "scaling_governor" in c for c in dropped), dropped
    added = [c for c in chroot if c not in full]
    assert all(c == "install -d -m 0755 /etc/systemd/system" for c in added), added
    assert any(c.startswith("/opt/benchd/venv/bin/pip install ") for c in chroot)
    assert any(c.endswith("> /etc/systemd/system/benchd.service") for c in chroot)


def test_stop_refuses_a_process_that_is_not_its_benchd() -> None:
    """`stop PID` only stops a benchd serve of the root: never this process, whatever the PID."""
    p = pi_root_sh("stop", str(os.getpid()), timeout=30)
    assert p.returncode == 2
    assert ("not a benchd serve" in p.stderr) if os.geteuid() == 0 else ("not root" in p.stderr)


# --- the emulated Pi ------------------------------------------------------------------------------

def test_the_root_is_a_pi_install_without_torch_or_ray(pi_root: dict) -> None:
    """setup_pi.sh ran inside: an aarch64 venv in /opt/benchd with benchd's runtime only."""
    assert pi_root["machine"] == "aarch64"
    assert pi_root["prefix"] == "/opt/benchd/venv"
    assert pi_root["torch"] is False and pi_root["ray"] is False
    assert pi_root["python"].startswith("3.11.")  # bookworm's, like Raspberry Pi OS
    from benchd import __version__

    assert pi_root["benchd"] == __version__
    # what the Pi's script leaves behind, besides the venv: token and (not enabled) unit
    token = PI_ROOT / "etc/benchd/token"
    assert oct(token.stat().st_mode & 0o777) == "0o640" and token.stat().st_uid == 0
    unit = (PI_ROOT / "etc/systemd/system/benchd.service").read_text()
    assert f"--device-class {DEVICE_CLASS} " in unit and f"--device-name {DEVICE_NAME} " in unit


def test_get_info_reports_the_emulated_pi(emulated_pi: EmulatedPi) -> None:
    with BenchClient(emulated_pi.address, token_file=emulated_pi.token_file, timeout_s=60) as client:
        info = client.info()
    assert info.architecture == "aarch64"
    assert info.onnxruntime_version == emulated_pi.facts["onnxruntime"] != ""
    assert "CPUExecutionProvider" in info.onnxruntime_providers
    assert info.device.device_class == DEVICE_CLASS and info.device.name == DEVICE_NAME
    assert info.benchd_version == emulated_pi.facts["benchd"]
    assert info.python_version == emulated_pi.facts["python"]
    assert info.ready


def test_the_token_setup_pi_made_is_required(emulated_pi: EmulatedPi) -> None:
    with BenchClient(emulated_pi.address, token="not-the-token", timeout_s=60, retries=0) as client:
        with pytest.raises(BenchAuthError):
            client.info()


def test_a_fast_scnn_benchmarked_through_the_farm(emulated_pi: EmulatedPi, tmp_path: Path) -> None:
    """A small Fast-SCNN (64x64) exported here, uploaded to and timed on the emulated Pi by the farm
    client. The latency only has to be positive: it is an emulated one, not a Pi's."""
    import torch

    from raysearch.models import ModelSpec, build_model
    from raysearch.training.export import export_onnx

    spec = ModelSpec(arch="fastscnn", a=0.125, t=2, r=1, pp=0, input_hw=64)
    torch.manual_seed(0)
    onnx_path = export_onnx(build_model(spec), tmp_path / "fastscnn-64.onnx").path
    sha = hashlib.sha256(Path(onnx_path).read_bytes()).hexdigest()
    inventory = tmp_path / "farm.yaml"
    inventory.write_text(
        f"defaults:\n  token_file: {emulated_pi.token_file}\n"
        f"devices:\n  - name: {DEVICE_NAME}\n    address: {emulated_pi.address}\n    class: {DEVICE_CLASS}\n"
        f"    labels: {{emulated: true}}\n"
    )
    with BenchFarm.from_file(inventory) as farm:
        r = farm.benchmark(onnx_path, device_class=DEVICE_CLASS, runs=5, warmup_runs=1, intra_op_threads=1,
                           timeout_s=900)
    assert r.latency_ms_p50 > 0 and r.latency_ms_mean > 0 and r.latency_ms_min > 0
    assert r.runs >= 5 and r.warmup_runs == 1
    assert r.farm_device == DEVICE_NAME == r.device_name and r.device_class == DEVICE_CLASS
    assert r.model_sha256 == sha  # the model measured is the one sent
    assert r.onnxruntime_version == emulated_pi.facts["onnxruntime"]
    assert [i["dims"] for i in r.inputs] == [[1, 3, 64, 64]]
    print(f"\nemulated (NOT a Pi latency): p50 {r.latency_ms_p50:.2f} ms, mean {r.latency_ms_mean:.2f} ms "
          f"over {r.runs} runs, session {r.session_create_ms:.0f} ms")


def test_get_info_says_the_device_is_emulated_and_which_cpu_it_emulates(emulated_pi: EmulatedPi) -> None:
    with BenchClient(emulated_pi.address, token_file=emulated_pi.token_file, timeout_s=60) as client:
        info = client.info()
    assert info.emulated and info.emulator == "qemu-user, cpu cortex-a72"
    assert info.cpu_model == "cortex-a72 (emulated)" and info.host_cpu_model  # the host's CPU, named as such
    # the Pi 4's instruction set: NEON, but no int8 dot product (what picks onnxruntime's int8 kernels)
    assert "asimd" in info.cpu_features and "asimddp" not in info.cpu_features and "i8mm" not in info.cpu_features


def _emulated_farm(emulated_pi: EmulatedPi, tmp_path: Path) -> BenchFarm:
    inventory = tmp_path / "farm.yaml"
    inventory.write_text(f"defaults:\n  token_file: {emulated_pi.token_file}\n"
                         f"devices:\n  - {{name: {DEVICE_NAME}, address: '{emulated_pi.address}', "
                         f"class: {DEVICE_CLASS}}}\n")
    return BenchFarm.from_file(inventory)


def test_test_iou_computed_on_the_emulated_device(emulated_pi: EmulatedPi, trained_boxes: dict,
                                                  tmp_path: Path) -> None:
    """Predict end to end on aarch64: the fp32 model's device IoU is the host's to rounding; the int8
    model is judged by the device's own kernels (the figures are printed, not assumed equal)."""
    from raysearch.data.folder import FolderSource
    from raysearch.search.device_iou import evaluate_on_device

    source = FolderSource(trained_boxes["data"] / "test")
    with _emulated_farm(emulated_pi, tmp_path) as farm:
        got = {p: evaluate_on_device(trained_boxes[p], source, farm, device_class=DEVICE_CLASS, timeout_s=900)
               for p in ("fp32", "int8")}
    fp32, int8 = got["fp32"], got["int8"]
    assert fp32.device_name == DEVICE_NAME and fp32.onnxruntime_version == emulated_pi.facts["onnxruntime"]
    assert fp32.host.iou > 0.5 and abs(fp32.iou_gap) < 1e-3 and fp32.max_pixel_disagreement < 1e-3
    assert 0 < int8.device.iou <= 1 and int8.device.n_images == int8.host.n_images == 6
    for p, c in got.items():
        print(f"\n{p}: IoU device {c.device.iou:.5f} host {c.host.iou:.5f} (gap {c.iou_gap:+.5f}, largest per "
              f"image {c.max_iou_gap:.5f}), masks differ on at most {c.max_pixel_disagreement:.3%} of the pixels")


def test_the_bundle_example_runs_inside_the_root_and_masks_as_the_host_does(emulated_pi: EmulatedPi,
                                                                           trained_boxes: dict) -> None:
    """`pick --bundle`'s output, run by the Pi's own Python (numpy + onnxruntime, no torch, no
    OpenCV) inside the root: the mask equals the host's prediction of the same image."""
    import numpy as np

    from raysearch.data.folder import FolderSource
    from raysearch.models import ModelSpec
    from raysearch.records.results import TrialRow
    from raysearch.reporting import bundle_predict
    from raysearch.reporting.bundle import write_bundle

    inside = Path("/tmp") / f"bundle-test-{os.getpid()}"
    folder = PI_ROOT / inside.relative_to("/")
    shutil.rmtree(folder, ignore_errors=True)
    try:
        row = TrialRow(name="boxes-64", run_id="r1", spec=ModelSpec(a=0.125, t=2, r=1, pp=0, input_hw=64),
                       iou=0.9, latency_ms=1.0, device_class=DEVICE_CLASS, onnx=str(trained_boxes["fp32"]))
        write_bundle(row, folder, logit_threshold=0.0, provenance={"run_id": "r1"})
        image, _ = FolderSource(trained_boxes["data"] / "test").load(0)
        np.save(folder / "image.npy", image)
        ran = pi_root_sh("exec", VENV_PYTHON, str(inside / "predict.py"), str(inside / "image.npy"),
                         "--format", "npy", "--out-dir", str(inside / "masks"), timeout=600)
        assert ran.returncode == 0, ran.stderr[-3000:]
        assert "image.npy -> " in ran.stdout
        on_device = np.load(folder / "masks" / "image.npy")
        on_host = bundle_predict.Model(folder).mask(image)
        assert on_device.shape == image.shape[:2] and on_device.any()
        assert np.array_equal(on_device, on_host)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
