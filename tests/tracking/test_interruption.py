"""Searches that did not end well are said to have not ended well: an interrupted or orphaned
search is named by `raysearch pick` and `raysearch report` with the command that resumes it, and
a storage path the search cannot write is refused in one line before Ray starts."""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from raysearch.records import names as obj
from raysearch.tracking.readback import interruption, resume_command
from tests.helpers import REPO
from tests.helpers import run_raysearch as run


def _search(client: MlflowClient, exp: str, name: str, status: str, driver: str | None, command: str) -> str:
    exp_id = client.get_experiment_by_name(exp).experiment_id
    tags = {obj.TAG_SEARCH: name, obj.TAG_STAGE: "stage2", obj.TAG_MODE: "grid", obj.TAG_COMMAND: command}
    if driver:
        tags[obj.TAG_DRIVER] = driver
    run_ = client.create_run(exp_id, run_name=name, tags=tags)
    if status != "RUNNING":
        client.set_terminated(run_.info.run_id, status)
    return run_.info.run_id


def _gone_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_pick_and_report_name_interrupted_and_orphaned_searches(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    client.create_experiment("raysearch", artifact_location=str(tmp_path / "artifacts"))
    cmd = "python raysearch/stage2.py --quick --storage-path runs/ray"
    host = socket.gethostname()
    killed = _search(client, "raysearch", "stage2-grid-killed", "KILLED", f"{host}:1", cmd)
    orphan = _search(client, "raysearch", "stage2-grid-orphan", "RUNNING", f"{host}:{_gone_pid()}", cmd)
    live = _search(client, "raysearch", "stage2-grid-live", "RUNNING", f"{host}:{os.getpid()}", cmd)
    done = _search(client, "raysearch", "stage2-grid-done", "FINISHED", f"{host}:1", cmd)
    elsewhere = _search(client, "raysearch", "stage2-grid-elsewhere", "RUNNING", "other-host:42", cmd)
    notes = {rid: interruption(client.get_run(rid)) for rid in (killed, orphan, live, done, elsewhere)}
    assert "was interrupted at" in notes[killed]
    assert "is gone; the run was left RUNNING" in notes[orphan]
    assert notes[live] is None and notes[done] is None  # running here now / ended well: nothing to say
    assert "RUNNING on other-host" in notes[elsewhere] and "still running, or interrupted" in notes[elsewhere]
    # the resume command is the one that started it, with the search's name and --resume
    words = shlex.split(resume_command(client.get_run(orphan)))
    assert words == [*shlex.split(cmd), "--name", "stage2-grid-orphan", "--resume"]

    picked = run("pick", "--tracking-uri", uri, check=False)
    assert picked.returncode == 1  # no candidate in any of them
    assert picked.stderr.count("note: search ") == 3 and "stage2-grid-live" not in picked.stderr
    assert "--name stage2-grid-killed --resume" in picked.stderr
    report = run("report", "--tracking-uri", uri, "--out", str(tmp_path / "r.html"))
    assert "note: search stage2-grid-orphan was interrupted" in report.stdout
    assert report.stdout.count("note: ") == 3
    page = (tmp_path / "r.html").read_text()
    assert page.count("<b>Interrupted.</b>") == 3


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root and unshare for a read-only mount")
def test_a_read_only_storage_path_is_refused_before_ray_starts(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    stage = [sys.executable, str(REPO / "raysearch" / "stage2.py"), "--quick", "--res", "64", "--epochs", "1",
             "--storage-path", str(ro / "ray"), "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    script = (f"mount --bind {ro} {ro} && mount -o remount,bind,ro {ro} && exec {shlex.join(stage)}")
    p = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=300)
    if "mount:" in p.stderr:
        pytest.skip(f"cannot make a read-only mount here: {p.stderr.strip()}")
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert sum("error" in line for line in lines) == 1 and lines[-1] == (
        f"stage2: error: --storage-path {ro / 'ray'} is not writable (Read-only file system); pass a folder "
        f"this user may write (or an object-store URI to --storage-path)")
    assert "Traceback" not in p.stderr and "ray" not in p.stdout.lower()
