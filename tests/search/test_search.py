"""End-to-end searches, run as a user runs them (`python raysearch/stageN.py ...` in a subprocess:
a real local Ray, a real local benchd, a real SQLite MLflow store), checked through MlflowClient."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from raysearch.records.pareto import normalized_hypervolume
from raysearch.search.methods import CONTINUOUS_LEVELS, SAMPLERS
from raysearch.search.runtime import start_local_ray
from raysearch.search.scheduler import FRONT_MARGIN, FRONT_MIN_FINISHED
from raysearch.tracking.readback import interruption as interruption_note
from tests.helpers import REPO, tmpfs

pytestmark = pytest.mark.slow
ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONUNBUFFERED": "1"}


class Store:
    """One storage folder + MLflow database for a test's searches."""

    def __init__(self, root: Path, storage: str | None = None) -> None:
        self.root = root
        self.storage = storage or str(root / "ray")
        self.uri = f"sqlite:///{root / 'mlflow.db'}"
        self.client = MlflowClient(self.uri)
        self.env = {**ENV, "RAYSEARCH_STATE_DIR": str(root / "driver-state")}  # with an object-store storage

    def args(self) -> list[str]:
        return ["--storage-path", self.storage, "--tracking-uri", self.uri]

    def stage(self, n: int, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        p = subprocess.run([sys.executable, str(REPO / "raysearch" / f"stage{n}.py"), *args, *self.args()],
                           cwd=self.root, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError(f"stage{n} exited {p.returncode}\n{p.stdout[-5000:]}\n{p.stderr[-5000:]}")
        return p

    def popen(self, n: int, *args: str) -> subprocess.Popen:
        log = open(self.root / f"stage{n}.log", "w")
        return subprocess.Popen([sys.executable, str(REPO / "raysearch" / f"stage{n}.py"), *args, *self.args()],
                                cwd=self.root, env=self.env, stdout=log, stderr=subprocess.STDOUT)

    def parents(self, stage: str):
        exp = self.client.get_experiment_by_name("raysearch")
        return self.client.search_runs([exp.experiment_id], f"tags.stage = '{stage}' and tags.mode != ''")

    def children(self, parent_id: str):
        exp = self.client.get_experiment_by_name("raysearch")
        return self.client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'")

    def all_runs(self):
        exp = self.client.get_experiment_by_name("raysearch")
        return self.client.search_runs([exp.experiment_id])


def hw(run) -> int:
    return int(run.data.params["input_h"])


@pytest.fixture(scope="module")
def stage2(tmp_path_factory):
    """A quick stage-2 grid on synthetic data, shared by the tests that read it."""
    store = Store(tmp_path_factory.mktemp("stage2"))
    # --device-iou all: the local benchd computes every candidate's test IoU too (fp32: the host's figure)
    out = store.stage(2, "--quick", "--res", "96", "64", "--epochs", "2", "--bench-runs", "5", "--device-iou", "all")
    return store, out


def test_stage2_grid_logs_everything(stage2):
    store, out = stage2
    assert "on the Pareto front" in out.stdout
    (parent,) = store.parents("stage2")
    assert parent.info.status == "FINISHED"
    kids = store.children(parent.info.run_id)
    assert sorted(hw(k) for k in kids) == [64, 96]  # one child per grid point
    for k in kids:
        assert k.info.status == "FINISHED"
        assert {"a": "1.0", "t": "6", "r": "3", "pp": "0"}.items() <= k.data.params.items()
        m = k.data.metrics
        assert 0.0 <= m["iou"] <= 1.0 and m["latency_ms"] > 0 and m["epochs_trained"] == 2
        assert m["fps"] == pytest.approx(1000 / m["latency_ms"])
        assert m["params_total"] == 1_122_673
        arts = {a.path for a in store.client.list_artifacts(k.info.run_id)}
        assert {"model.onnx", "benchmark.json", "metrics.json", "overlays"} <= arts
        assert len(store.client.list_artifacts(k.info.run_id, "overlays")) == 3
        assert k.data.tags["pruned_by_latency"] == "false" and k.data.tags["pareto_optimal"] in ("true", "false")
        assert k.data.tags["device_class"] == "local"
        assert m["iou"] == m["iou_device"] == m["iou_host"] and k.data.tags["device_iou_disagrees"] == "false"
        epochs = store.client.get_metric_history(k.info.run_id, "val_loss")
        assert [e.step for e in epochs][:2] == [1, 2]
    assert any(k.data.tags["pareto_optimal"] == "true" for k in kids)
    assert {a.path for a in store.client.list_artifacts(parent.info.run_id)} >= {
        "front.csv", "front.png", "hypervolume.png", "candidates.txt", "front.html"}
    live = [line for line in out.stdout.splitlines() if "live front: " in line]  # said once, where it is
    assert len(live) == 1 and live[0].split("live front: ")[1].split(" (")[0].endswith("front.html")
    hv = store.client.get_metric_history(parent.info.run_id, "hypervolume")
    assert [h.step for h in hv] == [1, 2] and hv[1].value >= hv[0].value  # logged after every trial, grows


def test_the_python_api_reads_a_search_as_dataframes(stage2):
    """`raysearch.results` (the README's "Results in Python") on the real stage-2 search."""
    from raysearch.records import names as obj
    from raysearch.results import load_searches, load_trials, pick

    store, _ = stage2
    (parent,) = store.parents("stage2")
    searches = load_searches(tracking_uri=store.uri)
    row = searches[searches.run_id == parent.info.run_id].iloc[0]
    assert (row["name"], row.stage, row["mode"], row.status) == (parent.info.run_name, "stage2", "grid", "FINISHED")
    assert row.hypervolume_share == parent.data.metrics[obj.FINAL_HYPERVOLUME_NORMALIZED]
    trials = load_trials(parent.info.run_name, tracking_uri=store.uri)
    kids = {k.info.run_id: k for k in store.children(parent.info.run_id)}
    assert sorted(trials.run_id) == sorted(kids) and list(trials.columns[:8]) == [
        "search", "stage", "name", "run_id", "status", "iou", "latency_ms", "pareto"]
    for t in trials.itertuples():
        k = kids[t.run_id]
        assert (t.iou, t.latency_ms, t.fps) == (k.data.metrics["iou"], k.data.metrics["latency_ms"], k.data.metrics["fps"])
        assert t.pareto == (k.data.tags["pareto_optimal"] == "true") and t.status == "trained"
        assert (t.input_size, t.a, t.arch) == (int(k.data.params["input_size"]), float(k.data.params["a"]), "fastscnn")
    picked = pick(search=parent.info.run_id, tracking_uri=store.uri)
    assert {p.run_id for p in picked} == set(trials[trials.pareto].run_id)
    assert all(Path(p.onnx or "").is_file() for p in picked)
    with pytest.raises(ValueError, match="no search named 'nope' in experiment 'raysearch'"):
        load_trials("nope", tracking_uri=store.uri)


def test_stage7_crosses_the_stage2_front(stage2):
    store, _ = stage2
    front_res = sorted(hw(k) for p in store.parents("stage2") for k in store.children(p.info.run_id)
                       if k.data.tags["pareto_optimal"] == "true")
    store.stage(7, "--quick", "--epochs", "1", "--bench-runs", "5")
    (parent,) = store.parents("stage7")
    kids = store.children(parent.info.run_id)
    # no stage-6 search in this store: the study's front (3 models with --quick) x the stage-2 front's inputs
    assert len(kids) == 3 * len(front_res)
    assert sorted({hw(k) for k in kids}) == sorted(set(front_res))
    assert all(k.info.status == "FINISHED" for k in kids)


def test_latency_budget_prunes_before_training(tmp_path):
    from raysearch.models import ModelSpec, build_model
    from raysearch.search.latency import BenchSettings, local_benchd, measure
    from raysearch.training.export import export_onnx

    # measure both candidates first, so the budget falls between them on this machine today
    lat = {}
    with local_benchd() as target:
        for res in (256, 64):
            path = export_onnx(build_model(ModelSpec(pp=0, input_hw=res)), tmp_path / f"{res}.onnx").path
            lat[res] = measure(path, BenchSettings(farm=target, runs=10, warmup_runs=2)).latency_ms
    assert lat[256] > 3 * lat[64]
    budget = math.sqrt(lat[256] * lat[64])
    store = Store(tmp_path)
    out = store.stage(2, "--quick", "--res", "256", "64", "--epochs", "1", "--max-latency-ms", f"{budget:.4f}",
                      "--bench-runs", "10")
    (parent,) = store.parents("stage2")
    kids = {hw(k): k for k in store.children(parent.info.run_id)}
    assert kids[256].data.tags["pruned_by_latency"] == "true"
    assert kids[256].data.metrics["epochs_trained"] == 0 and "val_loss" not in kids[256].data.metrics
    assert kids[256].data.tags["pareto_optimal"] == "false" and kids[256].info.status == "FINISHED"
    assert kids[64].data.tags["pruned_by_latency"] == "false" and kids[64].data.metrics["epochs_trained"] == 1
    assert "1 pruned by latency before training" in out.stdout


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_runs_a_real_search(tmp_path, sampler):
    """Each --sampler with the Optuna a fresh install gets (5.1's NSGA-II once failed to pickle), on
    a continuous knob (--space a=LOW:HIGH); latency-first with the default scheduler (none), the
    others with front stopping."""
    store = Store(tmp_path)
    front = sampler != "latency-first"
    low, high = 0.125, 0.5
    out = store.stage(4, "--quick", "--mode", "search", "--num-samples", "3", "--res", "64", "--epochs", "1",
                      "--space", f"a={low}:{high}", "--space", "t=2", "--bench-runs", "3", "--sampler", sampler,
                      *(["--scheduler", "front"] if front else []))
    (parent,) = store.parents("stage4")
    assert parent.data.params["sampler"] == sampler and parent.info.status == "FINISHED"
    assert json.loads(parent.data.params["grid"])["a"] == f"{low:g}:{high:g}" or sampler == "latency-first"
    kids = store.children(parent.info.run_id)
    assert len(kids) == 3 and all(k.info.status == "FINISHED" for k in kids), out.stdout[-3000:]
    assert parent.data.params["stopped_trials_tell_searcher"] and "startup_trials" in parent.data.params
    # the scheduler and its settings, beside the sampler's (the default, none, has none)
    assert parent.data.params["scheduler"] == ("front" if front else "none")
    if front:
        assert parent.data.params["front_min_finished"] == str(FRONT_MIN_FINISHED)
        assert float(parent.data.params["front_margin"]) == FRONT_MARGIN
    else:
        assert "front_margin" not in parent.data.params
    widths = [float(k.data.params["a"]) for k in kids]
    assert all(low <= a <= high for a in widths) and len(set(widths)) == 3  # each configuration once
    lattice = set(np.round(np.linspace(low, high, CONTINUOUS_LEVELS), 6))
    console = out.stdout + out.stderr
    if sampler == "latency-first":  # its latency model, not a sweep, over the evenly spaced values
        assert set(widths) <= lattice and f"predicted (of {CONTINUOUS_LEVELS})" in console
        assert "latency sweep" not in console
        assert f"at {CONTINUOUS_LEVELS} evenly spaced values" in console
        # only what matters: no Ray box, TensorBoard hint, token warning
        for noise in ("Configuration for experiment", "TensorBoard", "Token authentication", "exported fastscnn"):
            assert noise not in console, console[-3000:]
    else:  # any number in the range: off the lattice (a random draw lands on it with probability 0)
        assert not set(widths) <= lattice and "the space is continuous" in out.stdout


@pytest.mark.parametrize("scheduler", ["pareto-asha", "asha"])
def test_search_mode_stops_some_trials(tmp_path, scheduler):
    store = Store(tmp_path)
    out = store.stage(4, "--quick", "--mode", "search", "--num-samples", "6", "--res", "64", "--epochs", "3",
                      "--bench-runs", "5", "--concurrency", "1", "--scheduler", scheduler)
    (parent,) = store.parents("stage4")
    kids = store.children(parent.info.run_id)
    assert len(kids) == 6 and all(k.info.status == "FINISHED" for k in kids)
    stopped = [k for k in kids if k.data.tags.get("stopped_early") == "true"]
    assert stopped, out.stdout[-3000:]
    for k in stopped:  # stopped on its validation figures before its last epoch: never exported
        assert k.data.metrics.get("epochs_trained") is None
        # Ray's ASHA may stop at the last epoch (a rung at max_t - 1); Pareto-ASHA has no rung there
        assert int(k.data.tags["stopped_at_epoch"]) < (3 if scheduler == "pareto-asha" else 4)
        assert "model.onnx" not in {a.path for a in store.client.list_artifacts(k.info.run_id)}
    assert parent.data.params["mode"] == "search" and parent.data.params["scheduler"] == scheduler
    # the hypervolume in a box that both objectives span, raw and as a share, after every trial
    share = store.client.get_metric_history(parent.info.run_id, "hypervolume_normalized")
    assert len(share) == 6 and all(0.0 <= m.value <= 1.0 for m in share)
    # the box's latency: the slowest measured (a stopped trial has only its untrained latency)
    measured = [k.data.metrics.get("latency_ms", k.data.metrics["latency_ms_untrained"]) for k in kids]
    ref = max(measured)
    assert parent.data.metrics["hv_reference_latency_ms"] == pytest.approx(ref)
    # the final share is the candidates' area in that box (zero when the slowest trial is the only one trained)
    trained = [k.data.metrics for k in kids if k.data.tags.get("stopped_early") != "true"]
    assert trained and all("iou" in m and "latency_ms" in m for m in trained)
    area = normalized_hypervolume(trained, {"iou": 0.0, "latency_ms": ref})
    assert parent.data.metrics["final_hypervolume_normalized"] == pytest.approx(area) and 0.0 <= area <= 1.0
    assert ": stopped " in out.stdout and "stopped trials lie within the front's latency range" in out.stdout
    # measured on a core of its own, as precisely as asked (or saying it was not)
    assert "reserved for the local benchd" in out.stdout
    for m in trained:
        assert m["latency_runs"] >= 5 and m["latency_ms_p50_ci_low"] <= m["latency_ms_p50_ci_high"]
        assert m["latency_precision_met"] in (0.0, 1.0) and "latency_ms_p50_last_tenth" in m


def test_pareto_asha_search_resumes_after_sigterm(tmp_path):
    store = Store(tmp_path)
    args = ("--quick", "--mode", "search", "--num-samples", "3", "--res", "96", "64", "--epochs", "6",
            "--concurrency", "1", "--bench-runs", "5", "--sampler", "random", "--scheduler", "pareto-asha")
    proc = store.popen(6, *args)
    deadline = time.time() + 300
    while time.time() < deadline:  # until the scheduler has recorded a trial at a rung
        states = list((tmp_path / "ray" / "state").glob("stage6-search-*/scheduler.json"))
        if states and any(json.loads(states[0].read_text())["rungs"].values()):
            break
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 130
    recorded = json.loads(states[0].read_text())["rungs"]
    assert not [r for r in store.all_runs() if r.info.status == "RUNNING"]
    store.stage(6, *args, "--resume")
    (parent,) = store.parents("stage6")
    assert parent.info.status == "FINISHED"
    kids = store.children(parent.info.run_id)
    assert len(kids) == 3 and all(k.info.status == "FINISHED" for k in kids)
    after = json.loads(states[0].read_text())["rungs"]
    assert all(set(trials) <= set(after[m]) for m, trials in recorded.items())  # the records survived


def _wait_epochs(tmp_path: Path, stage: str, epochs: int, timeout: float = 300) -> Path:
    """The search's state file once its trials have trained ``epochs`` epochs in all."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        states = list((tmp_path / "ray" / "state").glob(f"{stage}-grid-*/raysearch_state.json"))
        if states and json.loads(states[0].read_text()).get("epochs_spent", 0) >= epochs:
            return states[0]
        time.sleep(0.3)
    raise AssertionError(f"{stage} never reached {epochs} epochs")


def _epoch_steps(store: "Store", run_id: str) -> list[int]:
    return sorted(m.step for m in store.client.get_metric_history(run_id, "train_loss"))  # per epoch only


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_resume_after_the_driver_is_interrupted(tmp_path, sig):
    store = Store(tmp_path)
    args = ("--quick", "--res", "96", "64", "--epochs", "8", "--concurrency", "1", "--bench-runs", "5")
    proc = store.popen(2, *args)
    # 4 epochs in: checkpoints have rotated (Ray Tune keeps 2), the trap of a lost final snapshot
    state = _wait_epochs(tmp_path, "stage2", 4)
    proc.send_signal(sig)
    code = proc.wait(timeout=120)
    # the trials' weights are in their own state files, not in Ray Tune's rotating checkpoints, so
    # no experiment snapshot (however old: a SIGKILL leaves the last periodic one) names a deleted one
    assert list((tmp_path / "ray" / "trial_state").glob("stage2-grid-*/*.pt"))
    assert not list((tmp_path / "ray").glob("stage2-grid-*/*/checkpoint_*/last.pt"))
    (parent,) = store.parents("stage2")
    if sig == signal.SIGTERM:  # like Ctrl-C: every run gets a status, the search says it was interrupted
        assert code == 130 and parent.info.status == "KILLED"
        assert not [r for r in store.all_runs() if r.info.status == "RUNNING"]
    else:  # nobody could say anything: the runs stay RUNNING, and pick says the search was interrupted
        assert code == -signal.SIGKILL and parent.info.status == "RUNNING"
        picked = subprocess.run([sys.executable, "-m", "raysearch.cli", "pick", "--tracking-uri", store.uri],
                                capture_output=True, text=True, timeout=120, cwd=REPO)
        assert "is gone; the run was left RUNNING" in picked.stderr and "--resume" in picked.stderr
    store.stage(2, *args, "--resume")
    (parent,) = store.parents("stage2")
    assert parent.info.status == "FINISHED" and interruption_note(parent) is None
    kids = store.children(parent.info.run_id)
    assert sorted(hw(k) for k in kids) == [64, 96]  # the same runs continued, none duplicated
    assert all(k.info.status == "FINISHED" and k.data.metrics["epochs_trained"] == 8 for k in kids)
    assert not [r for r in store.all_runs() if r.info.status == "RUNNING"]
    for k in kids:  # every epoch logged once, at its own step
        assert _epoch_steps(store, k.info.run_id) == list(range(1, 9))
    spent = json.loads(state.read_text())["epochs_spent"]
    assert parent.data.metrics["epochs_spent"] == spent
    # epochs trained again after the restore (those since the trial's last checkpoint) count as spent
    assert 16 <= spent <= 16 + 8


def test_ctrl_c_before_the_first_trial_is_an_interruption(tmp_path):
    store = Store(tmp_path)
    proc = store.popen(2, "--quick", "--res", "64", "--epochs", "2", "--bench-runs", "5")
    deadline = time.time() + 120
    while time.time() < deadline:  # the parent run exists, no trial has started yet
        if (tmp_path / "mlflow.db").exists() and store.client.get_experiment_by_name("raysearch") \
                and store.parents("stage2"):
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    out = (tmp_path / "stage2.log").read_text()
    (parent,) = store.parents("stage2")
    assert parent.info.status == "KILLED" and "--resume" in out and "0 on the Pareto front" not in out
    assert "was interrupted" in interruption_note(parent)


def test_a_dead_benchd_device_loses_no_trial(tmp_path):
    servers, ports = zip(*(_serve_benchd(tmp_path, f"dev{i}") for i in range(2)))
    farm = tmp_path / "farm.yaml"
    farm.write_text("devices:\n" + "".join(
        f"  - name: dev{i}\n    address: 127.0.0.1:{p}\n    class: test\n" for i, p in enumerate(ports)))
    store = Store(tmp_path)
    proc = store.popen(2, "--quick", "--res", "128", "96", "64", "--epochs", "2", "--farm", str(farm),
                       "--device-class", "test", "--bench-runs", "20")
    try:
        time.sleep(15)  # the search is under way; one device dies
        servers[0].kill()
        assert proc.wait(timeout=600) == 0, (tmp_path / "stage2.log").read_text()[-4000:]
    finally:
        for s in servers:
            s.kill()
    (parent,) = store.parents("stage2")
    kids = store.children(parent.info.run_id)
    assert len(kids) == 3 and all(k.info.status == "FINISHED" and "iou" in k.data.metrics for k in kids)
    assert {k.data.tags["device_name"] for k in kids} <= {"dev0", "dev1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ray_job_submit(tmp_path):
    """`ray job submit --working-dir . -- python raysearch/stage7.py --quick` (and `raysearch optimize`)
    against `ray start --head`."""
    ray_bin = str(Path(sys.executable).parent / "ray")
    dash, start_port = _free_port(), _free_port()
    env = {**ENV, "RAY_AUTH_MODE": "token"}  # Ray 2.60 turns token auth on: the client must say so too
    start = subprocess.run([ray_bin, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(start_port),
                            "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--num-cpus", "2",
                            "--include-dashboard", "true", "--disable-usage-stats"],
                           env=env, capture_output=True, text=True, timeout=180)
    assert start.returncode == 0, start.stderr
    try:
        _a_token_cluster_without_its_token_is_one_line(tmp_path, int(start_port))
        store = Store(tmp_path)
        job = subprocess.run([ray_bin, "job", "submit", "--address", f"http://127.0.0.1:{dash}", "--working-dir", ".",
                              "--", "python", "raysearch/stage7.py", "--quick", "--res", "64", "--epochs", "1",
                              "--bench-runs", "5", *store.args()],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert job.returncode == 0 and "succeeded" in job.stdout + job.stderr, job.stdout[-3000:] + job.stderr[-3000:]
        (parent,) = store.parents("stage7")
        assert parent.info.status == "FINISHED" and len(store.children(parent.info.run_id)) == 3
        # `raysearch optimize` the same way (its console script on the cluster's PATH)
        job = subprocess.run([ray_bin, "job", "submit", "--address", f"http://127.0.0.1:{dash}", "--working-dir", ".",
                              "--", "raysearch", "optimize", "--quick", "--effort", "entry", "--res", "64",
                              "--epochs", "1", "--bench-runs", "5", "--max-latency-ms", "1000", *store.args()],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert job.returncode == 0 and "succeeded" in job.stdout + job.stderr, job.stdout[-3000:] + job.stderr[-3000:]
        (opt,) = [r for r in store.all_runs() if r.data.tags.get("raysearch.kind") == "optimization"]
        assert opt.info.status == "FINISHED" and store.client.get_registered_model(f"raysearch-{opt.info.run_name}")
    finally:
        subprocess.run([ray_bin, "stop", "--force"], env=env, capture_output=True, timeout=120)


def _a_token_cluster_without_its_token_is_one_line(tmp_path: Path, gcs_port: int) -> None:
    """--address of a cluster with token authentication, from a process without RAY_AUTH_MODE, and
    of an address where no cluster answers: one line each, in seconds (was: 20 lines over 20 s of
    Ray's GCS client, then a traceback)."""
    env = {k: v for k, v in ENV.items() if not k.startswith("RAY_AUTH")}
    for address, says in ((f"127.0.0.1:{gcs_port}", "the Ray cluster there uses token authentication; set "
                                                    "RAY_AUTH_MODE=token with the cluster's token"),
                          (f"127.0.0.1:{_free_port()}", "no Ray cluster answers there (unavailable)")):
        t0 = time.monotonic()
        p = subprocess.run([sys.executable, str(REPO / "raysearch" / "stage7.py"), "--quick", "--address", address,
                            "--storage-path", str(tmp_path / "refused"),
                            "--tracking-uri", f"sqlite:///{tmp_path / 'refused.db'}"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        err = [line for line in p.stderr.splitlines() if "error" in line.lower() or "Traceback" in line]
        assert p.returncode == 2 and len(err) == 1 and f"--address {address}: {says}" in err[0], p.stderr[-3000:]
        assert "created the tracking store" not in p.stderr  # refused before anything was made
        assert time.monotonic() - t0 < 60


@pytest.mark.realdata
def test_stage1_on_the_real_data(packages_dir, tmp_path):
    # storage given as a URI: what trials share (latency and result caches, the stage-1 weights)
    # goes through the storage filesystem, as on a multi-node cluster with an object store
    store = Store(tmp_path, storage=f"file://{tmp_path}/remote")
    store.stage(1, "--quick", "--data", str(packages_dir), "--limit", "16", "--res", "96", "64", "--epochs", "2",
                "--bench-runs", "5")
    (parent,) = store.parents("stage1")
    assert parent.info.status == "FINISHED"
    kids = store.children(parent.info.run_id)
    trained = [k for k in kids if k.data.metrics["epochs_trained"] == 2]
    evaluated = [k for k in kids if k.data.metrics["epochs_trained"] == 0]
    assert [hw(k) for k in trained] == [96]  # trained once, at the largest input
    assert sorted(hw(k) for k in evaluated) == [64, 96]  # then evaluated at every input, no retraining
    same = [k for k in evaluated if hw(k) == 96][0]
    assert same.data.metrics["iou"] == pytest.approx(trained[0].data.metrics["iou"], abs=1e-6)
    remote = tmp_path / "remote"
    assert list(remote.glob("latency_cache/*.json")) and list(remote.glob("*/stage1_weights.pt"))


def _serve_benchd(tmp_path: Path, name: str, *flags: str) -> tuple[subprocess.Popen, int]:
    """A real benchd on loopback (``benchd serve --port 0``), its port read from --port-file."""
    port_file = tmp_path / f"{name}.port"
    server = subprocess.Popen(
        [sys.executable, "-m", "benchd.cli", "serve", "--port", "0", "--port-file", str(port_file),
         "--device-name", name, "--device-class", "test", "--cache-dir", str(tmp_path / f"{name}-cache"), *flags],
        env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not port_file.is_file() or not port_file.read_text().strip():
        assert time.time() < deadline and server.poll() is None, "benchd did not start"
        time.sleep(0.2)
    return server, int(port_file.read_text())


def test_a_failing_trial_ends_failed_with_the_reason(tmp_path):
    """A device that refuses the widest models (benchd --max-model-mb): those trials end FAILED with
    the server's reason, the others finish, the search says how many failed."""
    from raysearch.models import build_model
    from raysearch.models.spec import ModelSpec
    from raysearch.search.options import SearchOptions
    from raysearch.search.stages import stage_space

    cap_mb = 0.7
    space = stage_space(4, SearchOptions(quick=True), res=[64])
    sizes = {(a, t): sum(p.numel() for p in build_model(ModelSpec(**{**space.fixed, "a": a, "t": t})).parameters())
             * 4 / 2**20 for a in space.grid["a"] for t in space.grid["t"]}
    assert all(abs(mb - cap_mb) > 0.2 for mb in sizes.values())  # the ONNX file is the weights + a little graph
    too_big = {k for k, mb in sizes.items() if mb > cap_mb}
    assert 0 < len(too_big) < len(sizes)
    server, port = _serve_benchd(tmp_path, "small", "--max-model-mb", str(cap_mb))
    store = Store(tmp_path)
    try:
        p = store.stage(4, "--quick", "--res", "64", "--epochs", "1", "--farm", f"127.0.0.1:{port}",
                        "--device-class", "test", "--bench-runs", "5", "--max-failures", "0", check=False)
    finally:
        server.kill()
    assert p.returncode == 1, p.stderr[-3000:]  # the search finished; some trials failed for good
    (parent,) = store.parents("stage4")
    assert parent.info.status == "FINISHED" and parent.data.tags["trial_errors"] == str(len(too_big))
    kids = store.children(parent.info.run_id)
    failed = {(float(k.data.params["a"]), int(k.data.params["t"])): k for k in kids if k.info.status == "FAILED"}
    assert set(failed) == too_big
    assert all(f"at most {cap_mb} MiB" in k.data.tags["error"] for k in failed.values())  # the server's reason
    assert sum(k.info.status == "FINISHED" for k in kids) == len(sizes) - len(too_big)


def _raysearch(*args: str) -> subprocess.CompletedProcess:
    exe = str(Path(sys.executable).parent / "raysearch")
    return subprocess.run([exe, *args], env=ENV, capture_output=True, text=True, timeout=300)


def test_pick_and_report_read_the_searches_back(stage2, tmp_path):
    store, _ = stage2
    p = _raysearch("pick", "--tracking-uri", store.uri, "--json")
    assert p.returncode == 0, p.stderr
    picked = json.loads(p.stdout)
    front = {k.info.run_id for par in store.parents("stage2") for k in store.children(par.info.run_id)
             if k.data.tags["pareto_optimal"] == "true"}
    assert picked and {r["run_id"] for r in picked} <= front | {r["run_id"] for r in picked if r["stage"] != "stage2"}
    assert all(Path(r["onnx"]).is_file() for r in picked)
    assert [r["iou"] for r in picked] == sorted((r["iou"] for r in picked), reverse=True)  # best first
    nothing = _raysearch("pick", "--tracking-uri", store.uri, "--min-iou", "0.999999", "--max-latency-ms", "1e-6")
    assert nothing.returncode == 1 and "no candidate meets the requirements" in nothing.stderr
    _check_bundle(store, picked, tmp_path)

    out = tmp_path / "report.html"
    r = _raysearch("report", "--tracking-uri", store.uri, "--out", str(out))
    assert r.returncode == 0, r.stderr
    page = out.read_text()
    assert page.count("data:image/png;base64,") >= 1 and "data:image/jpeg;base64," in page  # plot + overlays
    for run in picked:
        assert run["name"] in page


def _check_bundle(store, picked: list[dict], tmp_path: Path) -> None:
    """`pick --bundle`: the second candidate's files, its config read back from MLflow, and an
    example that masks an image as the search's evaluation did."""
    import hashlib

    import cv2
    import numpy as np

    from raysearch.data import open_split
    from raysearch.data.transforms import resize_for_test, to_input
    from raysearch.training.evaluate import OnnxPredictor, thresholded

    rank = min(2, len(picked))
    folder = tmp_path / "bundle"
    p = _raysearch("pick", "--tracking-uri", store.uri, "--bundle", str(folder), "--bundle-rank", str(rank))
    assert p.returncode == 0, p.stderr
    assert sorted(f.name for f in folder.iterdir()) == ["README.md", "model.json", "model.onnx", "predict.py"]
    config = json.loads((folder / "model.json").read_text())
    chosen = picked[rank - 1]
    run = store.client.get_run(chosen["run_id"])
    parent = store.client.get_run(run.data.tags["mlflow.parentRunId"])
    assert config["name"] == chosen["name"] and config["provenance"]["run_id"] == chosen["run_id"]
    assert config["measured"]["iou"] == chosen["iou"] and config["measured"]["latency_ms"] == chosen["latency_ms"]
    assert {k: str(v) for k, v in config["spec"].items() if k in run.data.params} == \
        {k: v for k, v in run.data.params.items() if k in config["spec"]}
    assert config["postprocessing"]["logit_threshold"] == float(parent.data.params["logit_threshold"])
    assert config["model_sha256"] == hashlib.sha256(Path(chosen["onnx"]).read_bytes()).hexdigest()
    assert (folder / "model.onnx").read_bytes() == Path(chosen["onnx"]).read_bytes()

    # the example, run as a user would, against the study's evaluation path on the same image
    image, _ = open_split("synthetic", "test", seed=0, limit=1).load(0)
    np.save(tmp_path / "image.npy", image)
    ran = subprocess.run([sys.executable, str(folder / "predict.py"), str(tmp_path / "image.npy"), "--format", "npy",
                          "--out-dir", str(tmp_path / "masks")], capture_output=True, text=True, timeout=120, env=ENV)
    assert ran.returncode == 0, ran.stderr
    mask = np.load(tmp_path / "masks" / "image.npy")
    host = OnnxPredictor(folder / "model.onnx")
    x = to_input(resize_for_test(image, host.input_hw), host.in_channels)[None]
    expected = thresholded(host, config["postprocessing"]["logit_threshold"])(x)[0]
    expected = cv2.resize(expected.astype(np.uint8), image.shape[1::-1], interpolation=cv2.INTER_NEAREST) > 0
    assert mask.shape == image.shape[:2] and np.array_equal(mask, expected)

    again = _raysearch("pick", "--tracking-uri", store.uri, "--bundle", str(tmp_path / "masks"))
    assert again.returncode == 2 and "holds other files (image.npy)" in again.stderr
    too_far = _raysearch("pick", "--tracking-uri", store.uri, "--bundle", str(folder), "--bundle-rank", "99")
    assert too_far.returncode == 2 and "--bundle-rank 99: only" in too_far.stderr


@pytest.mark.realdata
def test_stages_2_4_7_on_the_real_data(packages_dir, tmp_path):
    """The same paths on a subset of the study's dataset: stage 2's front feeds stage 7."""
    store = Store(tmp_path)
    data = ("--data", str(packages_dir), "--limit", "12", "--bench-runs", "5")
    store.stage(2, "--quick", "--res", "96", "64", "--epochs", "1", *data)
    store.stage(4, "--quick", "--mode", "search", "--num-samples", "3", "--res", "64", "--epochs", "1", *data)
    store.stage(7, "--quick", "--epochs", "1", *data)
    for stage, n in (("stage2", 2), ("stage4", 3)):
        (parent,) = store.parents(stage)
        kids = store.children(parent.info.run_id)
        assert parent.info.status == "FINISHED" and len(kids) == n
        assert all(k.info.status == "FINISHED" for k in kids)
    (parent7,) = store.parents("stage7")
    front2 = {hw(k) for p in store.parents("stage2") for k in store.children(p.info.run_id)
              if k.data.tags["pareto_optimal"] == "true"}
    kids7 = store.children(parent7.info.run_id)
    assert {hw(k) for k in kids7} == front2 and len(kids7) == 3 * len(front2)
    assert all(0.0 <= k.data.metrics["iou"] <= 1.0 for k in kids7)


class _Flaky:
    """A user family whose a=0.5 variant breaks in its second epoch (after the scheduler has
    recorded it at the first rung); a=1 trains normally."""

    @staticmethod
    def build(spec):
        import torch.nn as nn
        import torch.nn.functional as F

        class Net(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.body = nn.Conv2d(spec.in_channels, spec.num_classes, 3, stride=2, padding=1)
                self.calls = 0

            def forward(self, x):
                if self.training and spec.a == 0.5:
                    self.calls += 1
                    if self.calls > 3:  # 30 synthetic images: 3 training batches per epoch
                        raise RuntimeError("flaky model broke in its second epoch")
                return F.interpolate(self.body(x), size=x.shape[-2:], mode="bilinear", align_corners=False)

        return Net()


def test_a_failing_trial_under_pareto_asha(tmp_path):
    import ray

    from raysearch.models import ModelFamily, register_family
    from raysearch.search.driver import SearchRequest, run_search
    from raysearch.search.options import SearchOptions, Space

    register_family(ModelFamily("flaky", _Flaky.build, knobs=("a",), baseline={"a": 1.0}, choices={"a": (1.0, 0.5)},
                                resolutions=(64,)), replace=True)
    store = Store(tmp_path)
    opts = SearchOptions.from_flags(mode="search", sampler="tpe", scheduler="pareto-asha", num_samples=4, data="synthetic:40",
                         quick=True, bench_runs=3,
                         concurrency=1, max_failures=1, storage_path=store.storage, tracking_uri=store.uri)
    try:
        out = run_search(SearchRequest("flaky", Space({"a": [1.0, 0.5]}, {"arch": "flaky", "input_hw": 64}), opts, 3))
    finally:
        ray.shutdown()
    assert out.errors >= 1
    (parent,) = store.parents("flaky")
    kids = store.children(parent.info.run_id)
    failed = [k for k in kids if k.info.status == "FAILED"]
    assert failed and all("flaky model broke" in k.data.tags["error"] for k in failed)
    assert all(k.data.params["a"] == "0.5" and k.data.tags.get("retried") == "true" for k in failed)
    assert any(k.info.status == "FINISHED" and k.data.params["a"] == "1.0" for k in kids)
    assert parent.info.status == "FINISHED" and not [r for r in store.all_runs() if r.info.status == "RUNNING"]


@pytest.fixture()
def small_disk(tmp_path):
    """A 300 MiB filesystem of its own (a tmpfs; needs root and mount), unmounted afterwards."""
    with tmpfs(tmp_path / "disk") as disk:
        yield disk


def test_a_storage_that_fills_up_mid_search_ends_every_run_and_says_so(tmp_path, small_disk):
    """The disk under --storage-path fills up while trials train: every MLflow run ends with a
    status (none left RUNNING) and the stage says why in one line, no traceback (was: ENOSPC
    traceback, exit 1, the parent left RUNNING)."""
    store = Store(tmp_path, storage=str(small_disk / "ray"))
    proc = store.popen(2, "--quick", "--res", "96", "64", "--epochs", "40", "--bench-runs", "5")
    filler = small_disk / "filler"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:  # wait for a trial to train
            exp = store.client.get_experiment_by_name("raysearch")
            if exp and any("mlflow.parentRunId" in r.data.tags for r in store.client.search_runs([exp.experiment_id])):
                break
            time.sleep(2)
        assert proc.poll() is None, (tmp_path / "stage2.log").read_text()[-3000:]
        with open(filler, "wb") as f:  # every free byte
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * (1 << 20))
        rc = proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = (tmp_path / "stage2.log").read_text()
    assert rc != 0 and "Traceback" not in out, out[-5000:]
    assert "no space left on the device" in out.strip().splitlines()[-1], out[-3000:]
    runs = store.all_runs()
    assert runs and not [r.info.run_name for r in runs if r.info.status == "RUNNING"]


def test_a_gpu_its_torch_cannot_use_fails_the_trial_naming_the_node(tmp_path, caplog):
    """A logical GPU (`ray.init(num_gpus=1)`) on this machine's CPU torch stands for a GPU node with
    a CPU wheel or no driver: the driver names the node before the search, and the trial fails at
    once saying why (was: it trained on the CPU and the stage exited 0 without a word)."""
    import ray
    import torch

    from raysearch.cli.stage import stage_main

    if torch.cuda.is_available():
        pytest.skip("this machine's torch can use its GPU: nothing misconfigured to show")
    store = Store(tmp_path)
    start_local_ray(num_cpus=2, num_gpus=1)
    try:
        with caplog.at_level("WARNING"):
            rc = stage_main(2, ["--quick", "--res", "64", "--epochs", "1", "--bench-runs", "3",
                                "--gpus-per-trial", "1", *store.args()])
    finally:
        ray.shutdown()
    assert rc == 1
    warned = [r.getMessage() for r in caplog.records if "torch cannot use its GPU" in r.getMessage()]
    assert len(warned) == 1 and f"GPU node {socket.gethostname()}" in warned[0] and "built without CUDA" in warned[0]
    (parent,) = store.parents("stage2")
    (kid,) = store.children(parent.info.run_id)
    assert kid.info.status == "FAILED" and "epochs_trained" not in kid.data.metrics
    error = kid.data.tags["error"]
    assert f"Ray gave this trial GPU 0 on node {socket.gethostname()}" in error and "a CPU wheel" in error, error


def test_the_quickstart_search_says_what_it_saved_against_the_grid(tmp_path):
    """The main job (scripts/quickstart.sh: stage 7's default search) at a tiny scale: the search's
    savings, then - once the grid of the same space ran in the store - its share of the grid's
    hypervolume."""
    script = (REPO / "scripts" / "quickstart.sh").read_text()
    line = next(x for x in script.splitlines() if x.startswith("python raysearch/stage7.py"))
    args = line.split()[2:-1]  # the quickstart's own flags, without "$@"
    assert "--mode" in args and args[args.index("--mode") + 1] == "search"
    store = Store(tmp_path)
    tiny = ["--res", "64", "--epochs", "1", "--bench-runs", "3"]
    first = store.stage(7, *args, *tiny)
    assert "saved: " in first.stdout and "of the 3 a grid of these 3 configurations takes" in first.stdout
    assert "the whole grid was not trained in this store" in first.stdout
    store.stage(7, "--quick", "--mode", "grid", *tiny)
    second = store.stage(7, *args, *tiny, "--num-samples", "2")
    assert "saved: 2 epochs trained of the 3" in second.stdout, second.stdout[-3000:]
    reach = [x for x in second.stdout.splitlines() if "of the hypervolume of the grid search stage7-grid-" in x]
    assert len(reach) == 1, second.stdout[-3000:]
    share = float(reach[0].split("its front reaches ")[1].split("%")[0]) / 100
    # 2 of the grid's 3 configurations, trained and measured again: near the grid, and above it when
    # this run's IoU or latency came out better (1 epoch of training, sub-millisecond latencies)
    assert 0.0 < share < 2.0


def test_latency_model_search_measures_part_of_the_space_and_the_next_search_reads_the_cache(tmp_path):
    """--latency-sweep needed on real Ray and a real local benchd: the first search measures part of
    the space for its latency model (and says how much), the second on the same storage starts from
    what the first measured (the latency cache) and measures none of it again, a third on a new device class
    reads the first's as its reference."""
    store = Store(tmp_path)
    # a continuous width (at latency-first's evenly spaced values) and four input sizes: 36 configurations,
    # the slowest several times slower than the fastest (nowhere near the first choices)
    args = ("--quick", "--mode", "search", "--num-samples", "2", "--space", "a=0.125:0.5", "--space", "t=2",
            "--space", "res=64:160:32", "--epochs", "1", "--bench-runs", "3", "--latency-sweep", "needed",
            "--concurrency", "1")
    size = CONTINUOUS_LEVELS * 4
    first = store.stage(4, *args, "--name", "first")
    (parent,) = store.parents("stage4")
    measured = parent.data.metrics["latency_configs_measured"]
    assert parent.data.params["latency_sweep"] == "needed"
    assert 5 <= measured < size and parent.data.metrics["latency_configs_predicted"] == size - measured
    assert "latency sweep" not in first.stdout + first.stderr  # nothing measured wholesale
    second = store.stage(4, *args, "--name", "second")
    log_text = second.stdout + second.stderr
    assert "measured by earlier searches (the latency cache)" in log_text, log_text[-3000:]
    (again,) = [p for p in store.parents("stage4") if p.info.run_name == "second"]
    # nothing the first measured is measured again: the cache's latencies are known exactly
    def measured_for_search(out: subprocess.CompletedProcess) -> set[str]:
        return set(re.findall(r"latency measured for the search \d+/\d+: (\S+)", out.stdout + out.stderr))

    assert len(measured_for_search(first)) == measured, first.stderr[-3000:]
    assert not measured_for_search(first) & measured_for_search(second)
    assert len(store.children(again.info.run_id)) == 2
    # a farm with a new device class: its model reads the class the cache knows best until it knows more
    third = store.stage(4, *args, "--name", "third", "--device-class", "newboard")
    log_text = third.stdout + third.stderr
    assert "latency model of 'newboard': 0 configurations of its own" in log_text, log_text[-3000:]
    assert "also reads the latencies of 'local'" in log_text
    (new,) = [p for p in store.parents("stage4") if p.info.run_name == "third"]
    assert new.info.status == "FINISHED" and new.data.metrics["latency_configs_measured"] >= 5
    # what the cache holds, and the model's error on it, in a few lines
    cache = str(tmp_path / "ray" / "latency_cache")
    shown = subprocess.run(["raysearch", "latency", "--cache", cache], capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert "device class 'local'" in shown.stdout and "configurations measured" in shown.stdout
    assert "(5-fold): " in shown.stdout and ("within +-10%" in shown.stdout or "needs 6" in shown.stdout)
    other = subprocess.run(["raysearch", "latency", "--cache", cache, "--device-class", "rpi4"], capture_output=True,
                           text=True, timeout=120)
    assert other.returncode == 0 and "no latency measured on device class 'rpi4'" in other.stdout
    missing = subprocess.run(["raysearch", "latency", "--cache", str(tmp_path / "nowhere")], capture_output=True,
                             text=True, timeout=120)
    assert missing.returncode == 2 and "no latency cache there" in missing.stderr and "Traceback" not in missing.stderr
