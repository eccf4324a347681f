"""The production rehearsal: the README's "Your GPU cluster" topology on this one machine, the main
job submitted through it, faults injected, and what survived read back from MLflow and Ray.

    python benchmarks/rehearsal.py                  # everything; prints the table, writes OUT/rehearsal.json
    python benchmarks/rehearsal.py --no-pi          # a second native benchd instead of the emulated Pi

Stands up, on loopback only, each process in its own process group (stopped by that group, never
by name: another Ray may run on the machine):
- an S3-compatible object store (the standalone server of `moto[server]`) holding --storage-path
  (`s3://raysearch/rehearsal`; every process finds it through AWS_ENDPOINT_URL);
- an MLflow tracking server (`mlflow server --serve-artifacts --workers 1` on SQLite), so the
  artifacts travel over HTTP;
- a Ray head and a second Ray node (`ray start --head --block`, `ray start --address ... --block`),
  one CPU each, each with its own --temp-dir, token authentication on;
- a farm of two benchd devices of one class: benchd inside the emulated aarch64 Pi root
  (`clusters/pi_root.sh serve`) and a native benchd, with one token.

Then two searches, each `RAY_AUTH_MODE=token ray job submit --working-dir . -- python
raysearch/stage7.py --quick --farm ... --tracking-uri http://... --storage-path s3://...`:
1. faults while it runs: the native device killed (and back 20 s later, as a Pi that rebooted),
   the second Ray node killed (its trials are retried on the head), the tracking server stopped
   for 40 s;
2. the driver stopped by `ray job stop`, resubmitted with --resume; then SIGKILLed (its PID, from
   the job's details) and resubmitted with --resume again.

Checked from MLflow and Ray, not from logs: every trial finished exactly once, trials ran on both
nodes, both devices measured, no run left RUNNING, every child's model.onnx and benchmark.json
downloadable from the tracking server, the search's files on the object store. Recovery time: from
the fault to the next trial that finished (for the outage, from its start).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
BUCKET = "raysearch"
DEVICE_CLASS = "rehearsal"
PI_NAME, NATIVE_NAME = "pi4-emulated", "native-01"
S3_KEYS = {"AWS_ACCESS_KEY_ID": "rehearsal", "AWS_SECRET_ACCESS_KEY": "rehearsal", "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_up(url: str) -> bool:
    """The server answers (any HTTP status: a dashboard with token auth says 401)."""
    try:
        urllib.request.urlopen(url, timeout=2)
    except urllib.error.HTTPError:
        pass
    return True


def wait_for(what: str, check, timeout: float, interval: float = 0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            value = check()
        except Exception:  # the thing is not up yet
            value = None
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"{what}: not within {timeout:.0f} s")


def log(msg: str) -> None:
    print(f"[rehearsal {time.strftime('%H:%M:%S')}] {msg}", flush=True)


@dataclass
class Proc:
    """A process started in its own session: its PID is its process group."""

    name: str
    popen: subprocess.Popen
    log_path: Path

    def stop(self, sig: int = signal.SIGTERM, grace_s: float = 30) -> None:
        if self.popen.poll() is not None:
            return
        try:
            os.killpg(self.popen.pid, sig)
            self.popen.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
        except ProcessLookupError:
            return
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)  # what is left of the group (Ray's children)
        except ProcessLookupError:
            pass
        try:
            self.popen.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass


class Topology:
    """Every service of the rehearsal; ``close()`` stops them all, by process group or PID."""

    def __init__(self, root: Path, pi: bool) -> None:
        self.root, self.pi = root, pi
        self.procs: dict[str, Proc] = {}
        self.pi_pid: int | None = None
        self.temp = Path(tempfile.mkdtemp(prefix="rh-", dir="/tmp"))  # Ray's socket paths must stay short
        self.s3_port, self.mlflow_port = free_port(), free_port()
        self.gcs_port, self.dash_port = free_port(), free_port()
        self.native_port = free_port()
        self.env = {**os.environ, **S3_KEYS, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{self.s3_port}",
                    "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0", "NO_ALBUMENTATIONS_UPDATE": "1",
                    "RAYSEARCH_STATE_DIR": str(root / "driver-state"), "PYTHONUNBUFFERED": "1",
                    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
                    # as the cluster configs: `ray job stop` leaves the driver time to close its runs
                    "RAY_JOB_STOP_WAIT_TIME_S": "60"}
        # this process's own MLflow and S3 clients need them too (its Ray job client is given the token
        # itself, see auth_headers); close() puts the environment back, so that no later test in the
        # same process starts a Ray in token mode half configured
        self._environ = {k: os.environ.get(k) for k in self.env if k.startswith(("AWS_", "MLFLOW_ENABLE"))}
        os.environ.update({k: self.env[k] for k in self._environ})

    # ---- plumbing
    def _start(self, name: str, cmd: list[str], **kw) -> Proc:
        log_path = self.root / f"{name}.log"
        popen = subprocess.Popen(cmd, env=self.env, stdout=open(log_path, "a"), stderr=subprocess.STDOUT,
                                 start_new_session=True, cwd=kw.pop("cwd", self.root), **kw)
        self.procs[name] = Proc(name, popen, log_path)
        return self.procs[name]

    @property
    def tracking_uri(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dash_port}"

    @functools.cached_property
    def auth_headers(self) -> dict[str, str]:
        """The cluster's token as an HTTP header, for this process's own job client: Ray reads
        RAY_AUTH_MODE once per process (when ray.tune is first imported), so a process that imported
        it before this rehearsal set the variable would send no token, and every call would be a 401."""
        token = subprocess.run([str(BIN / "ray"), "get-auth-token"], env=self.env, capture_output=True, text=True,
                               timeout=120, check=True).stdout.strip()
        return {"Authorization": f"Bearer {token}"}

    @property
    def storage(self) -> str:
        return f"s3://{BUCKET}/rehearsal"

    def s3(self):
        import pyarrow.fs as pafs

        return pafs.S3FileSystem(access_key=S3_KEYS["AWS_ACCESS_KEY_ID"], secret_key=S3_KEYS["AWS_SECRET_ACCESS_KEY"],
                                 region="us-east-1", scheme="http", endpoint_override=f"127.0.0.1:{self.s3_port}",
                                 allow_bucket_creation=True)

    # ---- services
    def start_s3(self) -> None:
        self._start("s3", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.s3_port)])
        wait_for("the object store", lambda: http_up(f"http://127.0.0.1:{self.s3_port}/"), 60)
        self.s3().create_dir(BUCKET)

    def start_mlflow(self) -> None:
        self._start("mlflow", [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
                               "--serve-artifacts", "--artifacts-destination", str(self.root / "mlartifacts"),
                               "--host", "127.0.0.1", "--port", str(self.mlflow_port), "--workers", "1"])
        wait_for("the tracking server", lambda: urllib.request.urlopen(f"{self.tracking_uri}/health", timeout=2), 120)

    def start_ray_head(self) -> None:
        self._start("ray-head", [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
                                 "--port", str(self.gcs_port), "--dashboard-host", "127.0.0.1",
                                 "--dashboard-port", str(self.dash_port), "--include-dashboard", "true",
                                 "--num-cpus", "1", "--temp-dir", str(self.temp / "head"), "--disable-usage-stats"])
        wait_for("the Ray head", lambda: http_up(f"{self.dashboard}/api/version"), 180)

    def start_ray_worker(self) -> None:
        self._start("ray-worker", [str(BIN / "ray"), "start", "--block", "--address", f"127.0.0.1:{self.gcs_port}",
                                   "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
                                   "--temp-dir", str(self.temp / "worker"), "--disable-usage-stats"])
        wait_for("the second Ray node", lambda: len(self.alive_nodes()) == 2, 180, interval=2)

    def ray_list(self, what: str) -> list[dict]:
        p = subprocess.run([str(BIN / "ray"), "list", what, "--address", f"127.0.0.1:{self.gcs_port}", "--format",
                            "json", "--detail", "--limit", "10000"], env=self.env, capture_output=True, text=True,
                           timeout=120)
        if p.returncode != 0:
            raise RuntimeError(f"ray list {what}: {p.stderr[-2000:]}")
        return json.loads(p.stdout)

    def alive_nodes(self) -> list[dict]:
        return [n for n in self.ray_list("nodes") if n.get("state") == "ALIVE"]

    def start_farm(self) -> Path:
        token = self.root / "token"
        if self.pi:
            p = subprocess.run(["bash", str(REPO / "clusters" / "pi_root.sh"), "--device-name", PI_NAME,
                                "--device-class", DEVICE_CLASS, "--log", str(self.root / "pi-benchd.log"),
                                "--start-timeout-s", "600", "serve"],
                               capture_output=True, text=True, timeout=700)
            if p.returncode != 0:
                raise RuntimeError(f"pi_root.sh serve failed:\n{p.stdout}\n{p.stderr}")
            facts = dict(kv.split("=", 1) for kv in p.stdout.split())
            self.pi_pid = int(facts["pid"])
            shutil.copy(facts["token_file"], token)
            pi_address = facts["address"]
        else:
            token.write_text(os.urandom(16).hex())
            pi_port = free_port()
            self._start("benchd-second", [str(BIN / "benchd"), "serve", "--port", str(pi_port), "--device-name",
                                          PI_NAME, "--device-class", DEVICE_CLASS, "--token-file", str(token),
                                          "--cache-dir", str(self.root / "cache-second")])
            pi_address = f"127.0.0.1:{pi_port}"
        token.chmod(0o600)
        self.start_native()
        farm = self.root / "farm.yaml"
        farm.write_text(f"defaults:\n  token_file: {token}\ndevices:\n"
                        f"  - name: {PI_NAME}\n    address: {pi_address}\n    class: {DEVICE_CLASS}\n"
                        f"  - name: {NATIVE_NAME}\n    address: 127.0.0.1:{self.native_port}\n    class: {DEVICE_CLASS}\n")
        from benchd.farm import BenchFarm

        with BenchFarm.from_file(farm) as f:
            wait_for("both devices", lambda: all(s.health == "SERVING" for s in f.status()), 300, 2)
        return farm

    def start_native(self) -> None:
        self._start("benchd-native", [str(BIN / "benchd"), "serve", "--port", str(self.native_port), "--device-name",
                                      NATIVE_NAME, "--device-class", DEVICE_CLASS, "--token-file",
                                      str(self.root / "token"), "--cache-dir", str(self.root / "cache-native")])

    def close(self) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not leave services behind
        for name in ("ray-worker", "ray-head", "benchd-native", "benchd-second", "mlflow", "s3"):
            if name in self.procs:
                self.procs[name].stop()
        if self.pi_pid is not None:
            subprocess.run(["bash", str(REPO / "clusters" / "pi_root.sh"), "stop", str(self.pi_pid)],
                           capture_output=True, timeout=120)
        shutil.rmtree(self.temp, ignore_errors=True)
        for k, v in self._environ.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ---- reading back ---------------------------------------------------------------------------
class Tracking:
    def __init__(self, uri: str) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(uri)

    def exp_id(self) -> str | None:
        exp = self.client.get_experiment_by_name("raysearch")
        return exp.experiment_id if exp else None

    def runs(self, filter_string: str = "") -> list:
        exp = self.exp_id()
        return self.client.search_runs([exp], filter_string, max_results=5000) if exp else []

    def parent(self, name: str):
        found = [r for r in self.runs(f"tags.`raysearch.search` = '{name}'") if "mlflow.parentRunId" not in r.data.tags]
        return found[0] if found else None

    def children(self, name: str) -> list:
        parent = self.parent(name)
        return self.runs(f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'") if parent else []

    def finished(self, name: str) -> int:
        try:
            return sum(r.info.status == "FINISHED" for r in self.children(name))
        except Exception:  # the server is down
            return -1

    def epochs(self, name: str) -> int:
        """Epochs the search's trials have logged (each epoch's train_loss is logged at its step)."""
        try:
            return sum(max((m.step for m in self.client.get_metric_history(r.info.run_id, "train_loss")), default=0)
                       for r in self.children(name))
        except Exception:
            return 0


@dataclass
class Fault:
    fault: str
    search: str
    expected: int = 0
    finished: int = 0
    lost: int = 0
    duplicated: int = 0
    left_running: int = 0
    recovery_s: float | None = None
    at_s: float = 0.0
    note: str = ""


@dataclass
class Job:
    topo: Topology
    args: list[str]
    submission_id: str = ""
    attempts: list[str] = field(default_factory=list)

    def submit(self, *extra: str) -> str:
        sid = f"{self.args[self.args.index('--name') + 1]}-{len(self.attempts)}-{os.urandom(3).hex()}"
        p = subprocess.run([str(BIN / "ray"), "job", "submit", "--address", self.topo.dashboard, "--working-dir",
                            str(REPO), "--submission-id", sid, "--no-wait", "--", "python", "raysearch/stage7.py",
                            *self.args, *extra], env=self.topo.env, capture_output=True, text=True, timeout=300,
                           cwd=REPO)
        if p.returncode != 0:
            raise RuntimeError(f"ray job submit: {p.stdout[-2000:]}{p.stderr[-2000:]}")
        self.submission_id = sid
        self.attempts.append(sid)
        log(f"submitted {sid}")
        return sid

    def client(self):
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.topo.dashboard, headers=self.topo.auth_headers)

    def status(self) -> str:
        return str(self.client().get_job_status(self.submission_id)).split(".")[-1]

    def wait(self, timeout: float) -> str:
        status = wait_for(f"job {self.submission_id}", lambda: self.status() in ("SUCCEEDED", "FAILED", "STOPPED")
                          and self.status(), timeout, interval=2)
        logs = self.client().get_job_logs(self.submission_id)
        (self.topo.root / f"{self.submission_id}.log").write_text(logs)
        log(f"{self.submission_id}: {status}")
        return status

    def driver_pid(self) -> int:
        info = self.client().get_job_info(self.submission_id)
        return int(wait_for("the driver's PID", lambda: (self.client().get_job_info(self.submission_id).driver_info
                                                         or info.driver_info).pid, 120))


def next_finish(tracking: Tracking, name: str, before: int, t0: float, timeout: float) -> float | None:
    """Seconds from ``t0`` until the search has more finished trials than ``before``."""
    try:
        wait_for("the next finished trial", lambda: tracking.finished(name) > before, timeout, interval=1)
    except TimeoutError:
        return None
    return round(time.time() - t0, 1)


def end_driver(job: Job, tracking: Tracking, name: str, label: str, act, note, t_start: float) -> Fault:
    """``act`` ends the search's driver; once the job has ended it is resubmitted with --resume.
    The row says what the fault left (``note(job status, parent run status)``) and how long until
    the next trial finished."""
    before = tracking.finished(name)
    t = time.time()
    act()
    ended = job.wait(300)
    row = Fault(label, name, at_s=round(t - t_start, 1), note=note(ended, tracking.parent(name).info.status))
    job.submit("--resume")
    row.recovery_s = next_finish(tracking, name, before, t, 1200)
    return row


def trial_key(run) -> str:
    from raysearch.records import names as obj

    return run.data.tags.get(obj.TAG_SPEC) or run.info.run_name


def account(tracking: Tracking, name: str, expected: int, row: Fault) -> Fault:
    kids = tracking.children(name)
    done = [k for k in kids if k.info.status == "FINISHED"]
    keys = [trial_key(k) for k in done]
    row.expected, row.finished = expected, len(set(keys))
    row.lost, row.duplicated = expected - len(set(keys)), len(keys) - len(set(keys))
    row.left_running = sum(r.info.status == "RUNNING" for r in tracking.runs())
    return row


def run(root: Path, pi: bool, epochs: int) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    topo = Topology(root, pi)
    t_start = time.time()
    rows: list[Fault] = []
    checks: dict = {}
    try:
        log("object store, tracking server, Ray head + second node, farm")
        topo.start_s3()
        topo.start_mlflow()
        topo.start_ray_head()
        topo.start_ray_worker()
        farm = topo.start_farm()
        checks["setup_s"] = round(time.time() - t_start, 1)
        log(f"up in {checks['setup_s']} s: mlflow {topo.tracking_uri}, ray {topo.dashboard}, storage {topo.storage}")
        tracking = Tracking(topo.tracking_uri)
        common = ["--quick", "--epochs", str(epochs), "--farm", str(farm), "--device-class", DEVICE_CLASS,
                  "--tracking-uri", topo.tracking_uri, "--storage-path", topo.storage, "--max-failures", "3",
                  "--bench-runs", "5", "--bench-min-duration-s", "0.5"]

        # 1. faults under a running search: 3 models x 2 sizes
        name1, expected1 = "rehearsal-faults", 6
        job = Job(topo, [*common, "--res", "96", "64", "--name", name1])
        job.submit()
        wait_for("the first finished trial", lambda: tracking.finished(name1) >= 1, 1200, interval=2)
        t = time.time()
        before = tracking.finished(name1)
        topo.procs["benchd-native"].stop(signal.SIGKILL)
        log("fault: native device killed")
        time.sleep(20)
        topo.start_native()
        rows.append(Fault("a device killed (back after 20 s)", name1, recovery_s=next_finish(tracking, name1, before, t, 900),
                          at_s=round(t - t_start, 1)))
        wait_for("a trial on the second node", lambda: _trial_nodes(topo, running=True) - {_head_node(topo)}, 900, 2)
        t = time.time()
        before = tracking.finished(name1)
        topo.procs["ray-worker"].stop(signal.SIGKILL)
        log("fault: second Ray node killed")
        rows.append(Fault("the second Ray node killed", name1, recovery_s=next_finish(tracking, name1, before, t, 900),
                          at_s=round(t - t_start, 1)))
        t = time.time()
        before = max(tracking.finished(name1), 0)
        topo.procs["mlflow"].stop()
        log("fault: tracking server down for 40 s")
        time.sleep(40)
        topo.start_mlflow()
        rows.append(Fault("the tracking server down 40 s", name1, recovery_s=next_finish(tracking, name1, before, t, 900),
                          at_s=round(t - t_start, 1)))
        status = job.wait(1800)
        checks["faults_job"] = status
        for r in rows:
            account(tracking, name1, expected1, r)
        trial_nodes = _trial_nodes(topo)
        checks["trial_nodes"] = len(trial_nodes)

        # 2. the driver stopped, then killed, each time resubmitted with --resume: 3 models x 1 size
        topo.start_ray_worker()  # the cluster whole again
        name2, expected2 = "rehearsal-driver", 3
        job2 = Job(topo, [*common, "--res", "64", "--epochs", str(2 * epochs), "--name", name2])
        job2.submit()
        wait_for("4 epochs of the second search", lambda: tracking.epochs(name2) >= 4, 1200, interval=2)

        def stop() -> None:
            job2.client().stop_job(job2.submission_id)
            log("fault: ray job stop")

        rows.append(end_driver(job2, tracking, name2, "driver: ray job stop, then --resume", stop,
                               lambda job, parent: f"job {job}, parent {parent}", t_start))
        wait_for("more epochs after the resume", lambda: tracking.epochs(name2) >= 8, 1200, interval=2)
        if tracking.finished(name2) < expected2:
            def kill() -> None:
                pid = job2.driver_pid()
                os.kill(pid, signal.SIGKILL)
                log(f"fault: driver {pid} SIGKILLed")

            rows.append(end_driver(job2, tracking, name2, "driver: SIGKILL, then --resume", kill,
                                   lambda job, parent: f"job {job}, parent {parent} until resumed", t_start))
        checks["driver_job"] = job2.wait(1800)
        for r in rows:
            if r.search == name2:
                account(tracking, name2, expected2, r)

        # what survived, from MLflow, Ray and the object store
        kids = tracking.children(name1) + tracking.children(name2)
        checks["parents"] = {n: tracking.parent(n).info.status for n in (name1, name2)}
        checks["devices"] = sorted({k.data.tags.get("device_name", "?") for k in kids if k.info.status == "FINISHED"})
        checks["left_running"] = [r.info.run_name for r in tracking.runs() if r.info.status == "RUNNING"]
        checks["epochs_logged_twice"] = _epochs_logged_twice(tracking, kids)
        checks["artifacts"] = _download_all(topo, kids)
        checks["object_store"] = _object_store(topo, (name1, name2))
        checks["trial_nodes"] = max(checks["trial_nodes"], len(_trial_nodes(topo)))
    finally:
        topo.close()
    result = {"rows": [asdict(r) for r in rows], "checks": checks, "wall_s": round(time.time() - t_start, 1),
              "pi": "emulated aarch64 root" if pi else "second native benchd"}
    (root / "rehearsal.json").write_text(json.dumps(result, indent=2))
    print(table(result))
    return result


def _head_node(topo: Topology) -> str:
    return next(n["node_id"] for n in topo.ray_list("nodes") if n.get("is_head_node"))


def _trial_nodes(topo: Topology, running: bool = False) -> set[str]:
    """Nodes that ran (or now run) a trial: Ray Tune's trainable actors, from Ray's state API."""
    actors = [a for a in topo.ray_list("actors") if "ImplicitFunc" in a.get("class_name", "")
              or "run_trial" in a.get("class_name", "")]
    return {a["node_id"] for a in actors if not running or a.get("state") == "ALIVE"}


def _epochs_logged_twice(tracking: Tracking, kids: list) -> list[str]:
    """Children whose per-epoch metrics are not exactly epochs 1..epochs_trained, each once."""
    bad = []
    for k in kids:
        steps = sorted(m.step for m in tracking.client.get_metric_history(k.info.run_id, "train_loss"))
        if steps != list(range(1, int(k.data.metrics.get("epochs_trained", 0)) + 1)):
            bad.append(f"{k.info.run_name}: {steps}")
    return bad


def _download_all(topo: Topology, kids: list) -> dict:
    import mlflow

    ok, missing = 0, []
    for k in kids:
        if k.info.status != "FINISHED" or k.data.metrics.get("pruned_by_latency"):
            continue
        try:
            with tempfile.TemporaryDirectory() as d:
                onnx = Path(mlflow.artifacts.download_artifacts(run_id=k.info.run_id, artifact_path="model.onnx",
                                                                tracking_uri=topo.tracking_uri, dst_path=d))
                bench = json.loads(Path(mlflow.artifacts.download_artifacts(
                    run_id=k.info.run_id, artifact_path="benchmark.json", tracking_uri=topo.tracking_uri,
                    dst_path=d)).read_text())
                assert onnx.stat().st_size > 0 and bench["latency_ms"] > 0
            ok += 1
        except Exception as e:
            missing.append(f"{k.info.run_name}: {e}")
    return {"downloaded": ok, "missing": missing}


def _object_store(topo: Topology, names: tuple[str, ...]) -> dict:
    import pyarrow.fs as pafs

    fs = topo.s3()
    files = [i.path for i in fs.get_file_info(pafs.FileSelector(f"{BUCKET}/rehearsal", recursive=True))
             if i.type == pafs.FileType.File]
    return {"files": len(files),
            "experiment_states": sum("/experiment_state" in f for n in names for f in files if f"/{n}/" in f),
            "latency_cache": sum("/latency_cache/" in f for f in files),
            "results": sum("/results/" in f for f in files),
            "trial_states_left": sum("/trial_state/" in f for f in files)}


def table(result: dict) -> str:
    lines = ["| fault | search | trials expected | finished | lost | duplicated | runs left RUNNING | recovery (s) | "
             "right after the fault |", "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        rec = "-" if r["recovery_s"] is None else f"{r['recovery_s']:.0f}"
        lines.append(f"| {r['fault']} | {r['search']} | {r['expected']} | {r['finished']} | {r['lost']} | "
                     f"{r['duplicated']} | {r['left_running']} | {rec} | {r['note'] or '-'} |")
    return "\n".join(lines) + "\n\n" + json.dumps(result["checks"], indent=2) + f"\nwall time {result['wall_s']} s"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/rehearsal", help="folder for logs, the MLflow store and rehearsal.json")
    ap.add_argument("--no-pi", action="store_true", help="a second native benchd instead of the emulated Pi")
    ap.add_argument("--epochs", type=int, default=6, help="epochs per trial of the faults search (default %(default)s)")
    args = ap.parse_args()
    out = Path(args.out).resolve()
    if out.exists():
        shutil.rmtree(out)
    run(out, pi=not args.no_pi, epochs=args.epochs)


if __name__ == "__main__":
    main()
