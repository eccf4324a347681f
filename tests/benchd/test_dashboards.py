"""dashboards/: the Grafana JSON is well formed, and every panel query works on a REAL Prometheus.

The live test starts benchd on 127.0.0.1 (metrics on a free port), a real Prometheus (Debian's
`prometheus` package) with a config derived from dashboards/prometheus.yml that scrapes it every
second, serves a few benchmarks (and some bad requests, so that error series exist), then sends
every query of every panel (and every template variable) to Prometheus's HTTP API: each must
parse and return at least one series.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from benchd.client import BenchClient
from benchd.server import BenchdServer, ServerConfig, create_server
from benchd.sysinfo import Sensors, Throttle
from benchd.v1 import benchd_pb2 as pb
from benchd.v1 import benchd_pb2_grpc as pb_grpc
from tests.helpers import REPO
from tests.helpers import benchd_fixtures as fx

pytestmark = pytest.mark.timeout(150)

DASHBOARDS = REPO / "dashboards"
SCRAPE_CONFIG = DASHBOARDS / "prometheus.yml"
DASHBOARD_FILES = sorted(DASHBOARDS.glob("*.json"))
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
NEEDS_PACKAGE = "Debian's `prometheus` package (apt-get install -y prometheus)"

# Grafana's built-in variables, replaced by values a 1 s scrape interval can serve.
BUILTINS = {"__rate_interval": "1m", "__interval": "15s", "__range": "5m", "__range_s": "300",
            "__interval_ms": "15000"}
_VAR = re.compile(r"\$\{(\w+)(?::[\w]+)?\}|\$(\w+)|\[\[(\w+)\]\]")
_LABEL_VALUES = re.compile(r"^\s*label_values\((.*),\s*(\w+)\s*\)\s*$", re.DOTALL)

# Plain urllib would honour http_proxy; everything here is loopback.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# ------------------------------------------------------------------ dashboard JSON helpers


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def all_panels(dash: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those inside (collapsed) rows."""
    for panel in dash.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def variables(dash: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dash.get("templating", {}).get("list", [])}


def substitute(expr: str, dash: dict[str, Any]) -> str:
    """Replace Grafana variables: built-ins by fixed windows, template variables by `.*`."""
    names = variables(dash)

    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        if name in BUILTINS:
            return BUILTINS[name]
        if name in names:
            return ".*"
        raise AssertionError(f"{dash['title']}: query uses ${name}, which the dashboard does not define: {expr}")

    return _VAR.sub(repl, expr)


def variable_query(var: dict[str, Any]) -> str:
    q = var.get("query")
    return str(q.get("query", "") if isinstance(q, dict) else q or var.get("definition", ""))


@dataclass
class Query:
    dashboard: str
    panel: str
    expr: str  # as written in the JSON
    promql: str  # after substitution


def panel_queries() -> list[Query]:
    out = []
    for path in DASHBOARD_FILES:
        dash = load(path)
        for panel in all_panels(dash):
            for target in panel.get("targets", []):
                if target.get("hide"):
                    continue
                out.append(Query(path.name, panel["title"], target["expr"], substitute(target["expr"], dash)))
    return out


# ------------------------------------------------------------------ static checks


def test_there_is_a_farm_dashboard() -> None:
    assert (DASHBOARDS / "benchd-farm.json") in DASHBOARD_FILES


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.name)
def test_dashboard_json_is_well_formed(path: Path) -> None:
    dash = load(path)
    assert dash["title"] and dash["uid"] and dash.get("id") is None  # importable as a new dashboard
    assert dash["schemaVersion"] >= 39  # Grafana 10.4 and later
    vars_ = variables(dash)
    ds_vars = [v for v in vars_.values() if v["type"] == "datasource"]
    assert [v["query"] for v in ds_vars] == ["prometheus"], "one templated Prometheus datasource"
    ds_ref = {"type": "prometheus", "uid": "${" + ds_vars[0]["name"] + "}"}
    for var in vars_.values():
        if var["type"] == "query":
            assert var["datasource"] == ds_ref and _LABEL_VALUES.match(variable_query(var)), var["name"]
    panels = list(all_panels(dash))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in panels:
        pos = p["gridPos"]
        assert 0 <= pos["x"] and pos["w"] > 0 and pos["x"] + pos["w"] <= 24 and pos["h"] > 0, p["title"]
        if p["type"] == "row":
            continue
        assert p["title"] and p.get("description"), f"panel {p['id']} needs a title and a description"
        assert p["datasource"] == ds_ref, p["title"]
        assert p["targets"], p["title"]
        ref_ids = [t["refId"] for t in p["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), p["title"]
        for t in p["targets"]:
            assert t["datasource"] == ds_ref and t["expr"].strip(), p["title"]
            substitute(t["expr"], dash)  # only known variables
    # Panels must not overlap (Grafana would push them around on import).
    cells: dict[tuple[int, int], str] = {}
    for p in dash["panels"]:
        pos = p["gridPos"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = p["title"]


def test_farm_dashboard_covers_the_farm() -> None:
    dash = load(DASHBOARDS / "benchd-farm.json")
    text = " ".join(t["expr"] for p in all_panels(dash) for t in p.get("targets", []))
    for metric in ("benchd_benchmarks_total", "benchd_latency_p50_ms_bucket", "benchd_queue_depth",
                   "benchd_cpu_temperature_celsius", "benchd_throttle_events_total", "benchd_cache_hits_total",
                   "benchd_cache_misses_total", "benchd_upload_bytes_total", "benchd_busy",
                   "benchd_p50_rel_ci", "benchd_benchmark_runs_bucket", "benchd_precision_missed_total"):
        assert metric in text, metric
    assert "histogram_quantile(0.5" in text and 'status!="OK"' in text


def _benchd_job(config: dict[str, Any]) -> dict[str, Any]:
    jobs = [j for j in config["scrape_configs"] if j["job_name"] == "benchd"]
    assert len(jobs) == 1, "dashboards/prometheus.yml must have one scrape job named benchd"
    return jobs[0]


def test_scrape_config_is_valid() -> None:
    job = _benchd_job(yaml.safe_load(SCRAPE_CONFIG.read_text()))
    targets = [t for group in job["static_configs"] for t in group["targets"]]
    assert targets and all(re.fullmatch(r"[\w.-]+:9464", t) for t in targets), targets
    if not Path(PROMTOOL).exists():
        pytest.skip(f"promtool not found: it comes with {NEEDS_PACKAGE}")
    out = subprocess.run([PROMTOOL, "check", "config", str(SCRAPE_CONFIG)], capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


# ------------------------------------------------------------------ live: benchd + real Prometheus


class SteadySensors(Sensors):
    """A cool, unthrottled Pi: this CI machine has no thermal sensor nor a throttle flag."""

    def temperature_c(self) -> float | None:
        return 52.5

    def freq_mhz(self) -> float | None:
        return 1500.0

    def throttle(self) -> Throttle:
        return Throttle(0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get_json(url: str, timeout: float = 5.0) -> dict[str, Any]:
    try:
        with _HTTP.open(url, timeout=timeout) as resp:
            return json.loads(resp.read())  # type: ignore[no-any-return]
    except urllib.error.HTTPError as exc:  # 400/422 carry Prometheus's JSON error
        return json.loads(exc.read())  # type: ignore[no-any-return]


def _status(url: str) -> int:
    with _HTTP.open(url, timeout=2) as resp:
        return int(resp.status)


@dataclass
class Live:
    benchd: BenchdServer
    grpc_port: int
    prom_url: str
    prom: subprocess.Popen[bytes]
    log: Path

    def api(self, path: str, **params: str) -> dict[str, Any]:
        return _get_json(f"{self.prom_url}/api/v1/{path}?{urllib.parse.urlencode(params)}")

    def query(self, promql: str) -> dict[str, Any]:
        return self.api("query", query=promql)

    def diagnostics(self) -> str:
        return f"Prometheus log (tail):\n{self.log.read_text(errors='replace')[-3000:]}"


def prometheus_config(metrics_port: int) -> dict[str, Any]:
    """dashboards/prometheus.yml with its benchd job pointed at one local benchd, scraped every second."""
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    job = _benchd_job(config)
    config["global"] = {**config.get("global", {}), "scrape_interval": "1s", "evaluation_interval": "1s"}
    job["scrape_interval"], job["scrape_timeout"] = "1s", "1s"
    first = job["static_configs"][0]  # keep its labels (device_class), which the dashboard filters on
    job["static_configs"] = [{**first, "targets": [f"127.0.0.1:{metrics_port}"]}]
    config["scrape_configs"] = [job]
    return config


def _wait(what: str, ok: Any, timeout_s: float, live: Live | None = None, proc: Any = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"prometheus exited with {proc.returncode} while waiting for {what}")
        try:
            if ok():
                return
        except OSError:
            pass
        time.sleep(0.2)
    more = f"\n{live.diagnostics()}" if live else ""
    raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}{more}")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    if not Path(PROMETHEUS).exists():
        pytest.skip(f"no prometheus binary at {PROMETHEUS}: install {NEEDS_PACKAGE} to run the dashboard test")
    tmp = tmp_path_factory.mktemp("dashboards")
    cfg = ServerConfig(device_name="farm-pi-01", device_class="rpi4", cache_dir=str(tmp / "cache"),
                       monitor_interval_s=0.5, worker_memory_bytes=1 << 30, metrics_port=0,
                       sensors=SteadySensors())
    benchd, grpc_port = create_server("127.0.0.1:0", cfg)
    prom: subprocess.Popen[bytes] | None = None
    try:
        assert benchd.metrics_port
        config_path = tmp / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(prometheus_config(benchd.metrics_port)))
        log = tmp / "prometheus.log"
        for attempt in range(3):  # the free port may be taken before Prometheus binds it: try another
            port = _free_port()
            cmd = [PROMETHEUS, f"--config.file={config_path}", f"--storage.tsdb.path={tmp / f'tsdb{attempt}'}",
                   f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1h",
                   "--log.level=warn"]
            if shutil.which("timeout"):  # bounded lifetime even if this process dies without teardown
                cmd = ["timeout", "-s", "KILL", "300", *cmd]
            with log.open("wb") as log_f:
                prom = subprocess.Popen(cmd, stdout=log_f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            live = Live(benchd, grpc_port, f"http://127.0.0.1:{port}", prom, log)
            try:
                ready = f"{live.prom_url}/-/ready"
                _wait("Prometheus to be ready", lambda url=ready: _status(url) == 200, 60, live, prom)
                break
            except RuntimeError:  # exited (port taken?)
                if attempt == 2:
                    raise RuntimeError(f"prometheus did not start\n{live.diagnostics()}") from None
        yield live
    finally:
        fx.stop_process(prom, timeout=15)
        benchd.stop(0)


def _serve_some_benchmarks(live: Live, models: list[Path], round_: int) -> None:
    """Real benchmarks (uploads, cache hits) plus requests that fail with two different statuses."""
    with BenchClient(f"127.0.0.1:{live.grpc_port}", retries=1) as client:
        fx.wait_serving(client)
        for model in models:
            client.benchmark(model, runs=3, warmup_runs=1)
        with grpc.insecure_channel(f"127.0.0.1:{live.grpc_port}") as channel:
            stub = pb_grpc.BenchServiceStub(channel)
            for request in (pb.BenchmarkRequest(model_sha256=f"{round_:064x}"),  # never uploaded: NOT_FOUND
                            pb.BenchmarkRequest(model_sha256=client.upload(models[0]).sha256,
                                                runs=10**9)):  # over --max-runs: INVALID_ARGUMENT
                with pytest.raises(grpc.RpcError):
                    stub.Benchmark(request, timeout=30)


def test_every_panel_query_returns_series_from_real_prometheus(live: Live, tmp_path: Path) -> None:
    models = [fx.conv_model(tmp_path / "a.onnx", seed=1), fx.conv_model(tmp_path / "b.onnx", channels=4, seed=2)]

    def target_up() -> bool:
        result = live.query('up{job="benchd"}')["data"]["result"]
        return bool(result) and result[0]["value"][1] == "1"

    _wait("the benchd target to be up", target_up, 30, live, live.prom)
    _serve_some_benchmarks(live, models, 1)
    time.sleep(2.5)  # a few scrapes in between: rates over the second round are non-zero
    _serve_some_benchmarks(live, models, 2)

    queries = panel_queries()
    assert len(queries) >= 15
    pending = {q.expr: q for q in queries}
    last: dict[str, Any] = {}
    deadline = time.monotonic() + 40
    while pending and time.monotonic() < deadline:
        for expr, q in list(pending.items()):
            resp = live.query(q.promql)
            last[expr] = resp
            if resp.get("status") == "error":
                pytest.fail(f"{q.dashboard} / {q.panel}: Prometheus rejects the query\n{q.promql}\n{resp}")
            if resp["data"]["result"]:
                del pending[expr]
        if pending:
            time.sleep(1.0)
    assert not pending, "queries without series:\n" + "\n".join(
        f"  {q.dashboard} / {q.panel}: {q.promql} -> {last.get(e)}" for e, q in pending.items()
    ) + "\n" + live.diagnostics()

    # A few values, to be sure the series mean what the panels say.
    def values(panel_title: str, ref: int = 0) -> list[tuple[dict[str, str], float]]:
        q = [q for q in queries if q.panel == panel_title][ref]
        return [(r["metric"], float(r["value"][1])) for r in live.query(q.promql)["data"]["result"]]

    def settled(check: Any) -> None:  # rates follow the scrapes: give them a few seconds
        end = time.monotonic() + 15
        while True:
            try:
                check()
                return
            except AssertionError:
                if time.monotonic() > end:
                    raise
                time.sleep(1.0)

    def check_values() -> None:
        median = values("Measured p50 latency per device")
        assert [m["device"] for m, _ in median] == ["farm-pi-01"]
        assert all(math.isfinite(v) and 0 < v <= 10_000 for _, v in median), median
        errors = {m["status"] for m, _ in values("Errors by status")}
        assert {"NOT_FOUND", "INVALID_ARGUMENT"} <= errors, errors
        assert values("Benchmarks per minute by device")[0][1] > 0
        assert values("Upload bandwidth")[0][1] > 0

    settled(check_values)
    assert values("Devices up")[0][1] == 1
    assert values("CPU temperature")[0][1] == 52.5
    assert values("Throttling")[0][1] == 0  # throttled now: no

    # Template variables (label_values) resolve against the same data.
    for path in DASHBOARD_FILES:
        dash = load(path)
        for name, var in variables(dash).items():
            if var["type"] != "query":
                continue
            m = _LABEL_VALUES.match(variable_query(var))
            assert m, f"{path.name}: variable {name} is not label_values(...)"
            selector, label = substitute(m.group(1), dash), m.group(2)
            resp = live.api("series", **{"match[]": selector})
            assert resp["status"] == "success", resp
            found = {s[label] for s in resp["data"] if label in s}
            assert found, f"{path.name}: variable {name} ({selector}, {label}) has no values"
