"""The production rehearsal (benchmarks/rehearsal.py): two Ray nodes, an MLflow tracking server
with proxied artifacts, an S3-compatible object store as --storage-path, and a farm of an emulated
Pi and a native benchd; the main job submitted with `ray job submit`, faults injected (a device
killed, the second node killed, the tracking server down 40 s, the driver stopped and SIGKILLed
and resubmitted with --resume). Everything is read back from MLflow, Ray and the object store.

About 15 minutes on 2 cores. The Pi is the emulated root of clusters/pi_root.sh (built by
test_pi_emulated earlier in the run, or here); where this machine cannot run it (not root, no
debootstrap/qemu/binfmt) a second native benchd stands in for it, and the test says so.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import warnings

import pytest

from tests.helpers import REPO

pytestmark = [pytest.mark.rehearsal, pytest.mark.slow, pytest.mark.timeout(3600)]

spec = importlib.util.spec_from_file_location("rehearsal", REPO / "benchmarks" / "rehearsal.py")
rehearsal = sys.modules.setdefault("rehearsal", importlib.util.module_from_spec(spec))  # dataclasses look it up
spec.loader.exec_module(rehearsal)


def _pi_available() -> bool:
    pi_root = ["bash", str(REPO / "clusters" / "pi_root.sh")]
    check = subprocess.run([*pi_root, "check-host"], capture_output=True, text=True, timeout=60)
    if check.returncode != 0:
        # in CI the machine is root with apt (scripts/system_deps.sh installs the packages): a miss is a defect
        assert os.environ.get("CI", "").lower() not in ("1", "true", "yes"), check.stderr
        return False
    build = subprocess.run([*pi_root, "build"], capture_output=True, text=True, timeout=2700)
    assert build.returncode == 0, f"pi_root.sh build failed:\n{build.stderr[-3000:]}"
    return True


def test_the_production_rehearsal_loses_nothing(tmp_path):
    pi = _pi_available()
    result = rehearsal.run(tmp_path / "rehearsal", pi=pi, epochs=6)
    keep = REPO / "runs" / "rehearsal-last.json"  # the table of the last run, for BENCHMARKS.md
    keep.parent.mkdir(exist_ok=True)
    keep.write_text((tmp_path / "rehearsal" / "rehearsal.json").read_text())
    checks, rows = result["checks"], result["rows"]
    detail = rehearsal.table(result)
    assert checks["faults_job"] == "SUCCEEDED" and checks["driver_job"] == "SUCCEEDED", detail
    assert checks["parents"] == {"rehearsal-faults": "FINISHED", "rehearsal-driver": "FINISHED"}, detail
    assert {r["fault"].split(",")[0] for r in rows} >= {"a device killed (back after 20 s)", "the second Ray node killed",
                                                         "the tracking server down 40 s", "driver: ray job stop"}
    for r in rows:  # every trial finished exactly once, whatever the fault
        assert r["lost"] == 0 and r["duplicated"] == 0 and r["finished"] == r["expected"] > 0, detail
        assert r["left_running"] == 0 and r["recovery_s"] is not None, detail
    assert checks["left_running"] == [] and checks["epochs_logged_twice"] == [], detail
    notes = {r["fault"]: r["note"] for r in rows}  # a stopped driver closes its runs; a killed one cannot
    assert "parent KILLED" in notes["driver: ray job stop, then --resume"], detail
    assert "parent RUNNING" in notes.get("driver: SIGKILL, then --resume", "parent RUNNING"), detail
    assert checks["trial_nodes"] >= 2, detail  # trials ran on both Ray nodes (Ray's state API)
    assert checks["devices"] == sorted([rehearsal.PI_NAME, rehearsal.NATIVE_NAME]), detail  # both devices measured
    # every child's model.onnx and benchmark.json come back from the tracking server over HTTP
    assert checks["artifacts"]["missing"] == [] and checks["artifacts"]["downloaded"] == 9, detail
    store = checks["object_store"]  # the search really lived on the object store
    assert store["experiment_states"] >= 2 and store["latency_cache"] > 0 and store["results"] >= 9, detail
    assert store["trial_states_left"] == 0, detail  # a finished trial's state file is removed
    if not pi:
        warnings.warn("the rehearsal ran with a second native benchd: this machine cannot run the emulated Pi root",
                      stacklevel=1)
