"""The MLflow UI, as a user opens it: a real `mlflow server` on 127.0.0.1, a quick search logged into it
(`python raysearch/stage2.py ... --tracking-uri http://127.0.0.1:PORT`), then the experiment page and the
compare view of the search's trials rendered by a real headless Chromium (Debian's `chromium`). The
assertions read the page the browser rendered (cells of its tables), never the URL or the API.

A new user's browser (nothing in its localStorage) following the link the search printed lands in the
model-training view, on the trials with IoU, latency and the Pareto flag as columns; the parent run's
page shows the search's summary as its description.

A screenshot of the compare view is saved under the test's tmp folder; with RAYSEARCH_UPDATE_SCREENSHOT=1
(or when the file is missing) it also refreshes docs/mlflow-compare.png, the picture the README shows.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest
from mlflow.tracking import MlflowClient

from raysearch.tracking import ui
from tests.helpers import REPO
from tests.helpers.browser import CHROMIUM, Browser

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"headless Chromium is not installed at {CHROMIUM} "
                       "(Debian: apt-get install chromium chromium-driver)"),
]
ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONUNBUFFERED": "1"}
SCREENSHOT = REPO / "docs" / "mlflow-compare.png"
SPEC_PARAMS = ("a", "t", "r", "pp", "input_size")  # numbers: the UI can plot every one
METRICS = ("iou", "latency_ms")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`mlflow server` with lean settings (one worker, no job runner) on a free loopback port."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(root / "server.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--default-artifact-root", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        cwd=root, env={**ENV, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)  # its own process group: the CLI and the uvicorn it starts end together
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"mlflow server did not answer on {url}:\n"
                                     + (root / "server.log").read_text(errors="replace")[-3000:])
            time.sleep(0.5)
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def search(server, tmp_path_factory):
    """A quick stage-2 grid (two input sizes, one epoch) logged to the server; its experiment, parent,
    trials and what it printed."""
    root = tmp_path_factory.mktemp("search")
    p = subprocess.run([sys.executable, str(REPO / "raysearch" / "stage2.py"), "--quick", "--res", "96", "64",
                        "--epochs", "1", "--bench-runs", "5", "--storage-path", str(root / "ray"),
                        "--tracking-uri", server], cwd=root, env=ENV, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, f"stage2 exited {p.returncode}\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}"
    client = MlflowClient(server)
    exp = client.get_experiment_by_name("raysearch")
    (parent,) = client.search_runs([exp.experiment_id], "tags.stage = 'stage2' and tags.mode != ''")
    kids = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(kids) == 2 and all(set(METRICS) <= k.data.metrics.keys() for k in kids)
    return exp, parent, kids, p.stdout


def _browser(experiment_id: str, **kw) -> Browser:
    """A browser whose MLflow UI starts in "Model training" mode with the assistant panel closed, and
    whose runs table shows the spec params and the objectives (as a user would pick under Columns)."""
    columns = [f"params.`{p}`" for p in SPEC_PARAMS] + [f"metrics.`{m}`" for m in METRICS]
    prefs = {
        "mlflow.workflowType_v1": json.dumps("machine_learning"),
        "mlflow.assistant.panelOpen_v1": "false",
        "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": "true",
        f'MLflowLocalStorage-1.1-ExperimentPage-["{experiment_id}"]-ReactComponentState':
            json.dumps({"selectedColumns": columns}),
    }
    b = Browser(**kw)
    b.before_each_page("try {" + "".join(f"localStorage.setItem({json.dumps(k)}, {json.dumps(v)});"
                                         for k, v in prefs.items()) + "} catch (e) {}")
    return b


def mlflow_format(v: float) -> str:
    """A metric as the MLflow UI prints it (Utils.formatMetric: 3, 2 or 1 decimals by magnitude)."""
    if v == 0:
        return "0"
    if abs(v) < 1e-3:
        mantissa, exp = f"{v:.3e}".split("e")
        return f"{mantissa}e{int(exp)}"
    scale = 1000 if abs(v) < 10 else 100 if abs(v) < 100 else 10
    s = repr(math.floor(v * scale + 0.5) / scale)
    return s.removesuffix(".0")  # JavaScript prints 2.0 as 2


def same_param(shown: str, logged: str) -> bool:
    """Params are strings; the UI pretty-prints the JSON ones (input_hw "[96, 96]" as a block)."""
    if shown.strip() == logged:
        return True
    try:
        return json.loads(shown) == json.loads(logged)
    except ValueError:
        return False


# the runs table (ag-grid): one entry per run id, its cells by column id; row-index gives the order shown
RUNS_TABLE_JS = r"""(() => {
  const rows = {};
  for (const row of document.querySelectorAll('[role=row][row-id]')) {
    const r = rows[row.getAttribute('row-id')] ??= {index: Number(row.getAttribute('row-index'))};
    for (const cell of row.querySelectorAll('[col-id]')) {
      const text = cell.innerText.trim();
      if (text) r[cell.getAttribute('col-id')] = text;
    }
  }
  return rows;
})()"""

# the compare view: its tables by section title (row label -> one cell per run), and the metrics grid
# (virtualized: key cells and value cells matched by their vertical position, columns by their left)
COMPARE_JS = r"""(() => {
  const section = el => {
    const item = el.closest('[class*="collapse-item"]');
    const head = item && item.querySelector('[role=button]');
    return head ? head.innerText.trim() : '';
  };
  const out = {tables: {}, metrics: {}};
  for (const table of document.querySelectorAll('table.mlflow-compare-run-table')) {
    const rows = {};
    for (const tr of table.querySelectorAll('tr')) {
      const cells = Array.from(tr.children).map(c => c.innerText.trim());
      if (cells.length) rows[cells[0]] = cells.slice(1);
    }
    out.tables[section(table)] = rows;
  }
  const grids = Array.from(document.querySelectorAll('[role=grid]')).filter(g => section(g) === 'Metrics');
  if (grids.length >= 2) {
    const cells = g => Array.from(g.querySelectorAll('[role=rowgroup] > div')).map(c => ({
      top: c.style.top, col: Math.round(parseFloat(c.style.left) / parseFloat(c.style.width)),
      text: c.innerText.trim()}));
    const keys = {};
    for (const c of cells(grids[0])) keys[c.top] = c.text;
    for (const c of cells(grids[1])) {
      const k = keys[c.top];
      if (k !== undefined) (out.metrics[k] ??= [])[c.col] = c.text;
    }
    out.metricsBottom = grids[1].getBoundingClientRect().bottom;
  }
  return out;
})()"""


def test_experiment_page_lists_the_trials_with_params_and_metrics(server, search, tmp_path):
    exp, parent, kids, _ = search
    eid = exp.experiment_id
    with _browser(eid, log=tmp_path / "chromium.log") as b:
        # the experiment as MLflow links it: the search's parent run (its trials are folded under it)
        b.goto(f"{server}/#/experiments/{eid}")
        b.wait_for_text(lambda t: parent.info.run_name in t and "raysearch" in t, timeout=90,
                        what=f"the experiment 'raysearch' and the run {parent.info.run_name}")
        # sorted by IoU (best first) the trials are listed flat, with the chosen columns
        b.goto(f"{server}/#/experiments/{eid}/runs?orderByKey={urllib.parse.quote('metrics.`iou`')}&orderByAsc=false")
        want = [f"params.`{p}`" for p in SPEC_PARAMS] + [f"metrics.`{m}`" for m in METRICS]
        by_iou = [k.info.run_id for k in sorted(kids, key=lambda k: -k.data.metrics["iou"])]

        def shown(rows: dict) -> bool:  # every trial with its cells, in IoU order (the table re-sorts once loaded)
            return (all(set(want) <= rows.get(r, {}).keys() for r in by_iou)
                    and [rows[r]["index"] for r in by_iou] == sorted(rows[r]["index"] for r in by_iou))

        rows = b.wait_for(RUNS_TABLE_JS, shown, timeout=60,
                          what="the trials' rows, best IoU first, with their params and metrics")
        b.screenshot(tmp_path / "experiment.png")
    assert parent.info.run_id in rows and parent.info.run_name in rows[parent.info.run_id]["attributes.`Run Name`"]
    for k in kids:
        row = rows[k.info.run_id]
        assert k.info.run_name in row["attributes.`Run Name`"], row
        for p in SPEC_PARAMS:
            assert same_param(row[f"params.`{p}`"], k.data.params[p]), (p, row, k.data.params)
        for m in METRICS:  # the runs table prints the full value
            assert float(row[f"metrics.`{m}`"]) == pytest.approx(k.data.metrics[m], rel=1e-12), (m, row)
    assert [rows[r]["index"] for r in by_iou] == sorted(rows[r]["index"] for r in by_iou)  # best IoU first


def test_compare_view_shows_the_trials_side_by_side(server, search, tmp_path):
    exp, _, kids, _ = search
    ids = [k.info.run_id for k in sorted(kids, key=lambda k: -k.data.metrics["iou"])]  # best first
    url = (f"{server}/#/compare-runs?runs={urllib.parse.quote(json.dumps(ids))}"
           f"&experiments={urllib.parse.quote(json.dumps([exp.experiment_id]))}")
    width, height = 1400, 1800  # tall enough for run details, params and the first metrics at once
    with _browser(exp.experiment_id, width=width, height=height, log=tmp_path / "chromium.log") as b:
        b.goto(url)
        page = b.wait_for(COMPARE_JS, lambda v: v and all(len(v["metrics"].get(m, [])) == len(ids) for m in METRICS)
                          and "Parameters" in v["tables"], timeout=90, what="the runs' params and metrics")
        text = b.text()
        # for the picture: fold the parallel-coordinates plot, keep run details, params and metrics
        b.evaluate("""Array.from(document.querySelectorAll('[role=button][aria-expanded=true]'))
                        .filter(e => e.innerText.trim() === 'Visualizations').forEach(e => e.click())""")
        b.wait_for(COMPARE_JS, lambda v: v.get("metricsBottom", 1e9) < height, timeout=30,
                   what="the metrics table inside the window")
        time.sleep(1)  # let the fold's animation end
        bottom = b.evaluate(COMPARE_JS)["metricsBottom"]
        shot = b.screenshot(tmp_path / "mlflow-compare.png", clip=(0, 0, width, min(bottom + 24, height)))
    assert f"Comparing {len(ids)} Runs" in text
    details, params = page["tables"]["Run details"], page["tables"]["Parameters"]
    assert sorted(details["Run ID:"]) == sorted(ids), details
    for k in kids:
        col = details["Run ID:"].index(k.info.run_id)  # the column of this run in every table
        assert details["Run Name:"][col] == k.info.run_name, details
        for p in SPEC_PARAMS:
            assert same_param(params[p][col], k.data.params[p]), (p, params.get(p), k.data.params)
        for m in METRICS:
            assert page["metrics"][m][col] == mlflow_format(k.data.metrics[m]), (m, page["metrics"][m], k.data.metrics[m])
    assert shot.stat().st_size > 20_000  # a real picture, not a blank page
    if os.environ.get("RAYSEARCH_UPDATE_SCREENSHOT") == "1" or not SCREENSHOT.exists():
        SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)


# what only the GenAI view shows (its overview's panels, its pop-up, its sidebar); the model-training
# view shows none of it (its sidebar: Runs, Models, Traces)
GENAI_TEXT = ("Detect Issues", "Tool calls", "Judges", "Agent versions", "Sessions", "No data available")
# the runs table's header: column id -> its left edge, and whether "Model training" is the chosen workflow
HEADER_JS = r"""(() => ({
  columns: Object.fromEntries(Array.from(document.querySelectorAll('.ag-header-cell[col-id]'))
    .map(e => [e.getAttribute('col-id'), Math.round(e.getBoundingClientRect().left)])),
  width: window.innerWidth,
}))()"""


def test_the_printed_link_opens_the_trials_in_the_training_view(server, search, tmp_path):
    """A new user (an empty browser profile) clicks the link the search printed."""
    exp, parent, kids, out = search
    link = ui.experiment_link(exp.experiment_id, server)
    assert f"in MLflow: {link}" in out
    iou, lat, pareto = "metrics.`iou`", "metrics.`latency_ms`", "tags.`pareto_optimal`"
    t0 = time.monotonic()
    with Browser(width=1600, height=1000, log=tmp_path / "chromium.log") as b:
        # the experiment as MLflow links it lands in the GenAI view; its description leads to the trials
        b.goto(f"{server}/#/experiments/{exp.experiment_id}")
        b.wait_for("Array.from(document.querySelectorAll('a[href*=viewStateShareKey]')).map(a => a.href)",
                   lambda v: bool(v), timeout=90, what="the experiment description's link to the trials")
        b.goto(link)
        want = {k.info.run_id for k in kids}

        def shown(rows: dict) -> bool:  # every trial's row (not folded under its parent), IoU and latency filled
            return want <= rows.keys() and all({iou, lat, pareto} <= rows[r].keys() for r in want)

        rows = b.wait_for(RUNS_TABLE_JS, shown, timeout=90, what="the trials' rows with IoU, latency, Pareto flag")
        text = b.text()
        header = b.evaluate(HEADER_JS)
        b.screenshot(tmp_path / "trials.png")
    print(f"trials view: {time.monotonic() - t0:.1f} s")
    assert "Model training" in text and "Runs" in text
    assert not [t for t in GENAI_TEXT if t in text], [t for t in GENAI_TEXT if t in text]
    assert ui.VIEW_NAME in text  # the saved view is the one applied
    cols = header["columns"]
    assert cols[iou] < cols[lat] < cols[pareto] < header["width"] - 300, cols  # first, on screen
    for k in kids:
        row = rows[k.info.run_id]
        assert float(row[iou]) == pytest.approx(k.data.metrics["iou"], rel=1e-12)
        assert float(row[lat]) == pytest.approx(k.data.metrics["latency_ms"], rel=1e-12)
        assert row[pareto] == k.data.tags["pareto_optimal"]
    by_iou = [k.info.run_id for k in sorted(kids, key=lambda k: -k.data.metrics["iou"])]
    assert [rows[r]["index"] for r in by_iou] == sorted(rows[r]["index"] for r in by_iou)  # best IoU first
    assert rows[parent.info.run_id]["index"] > max(rows[r]["index"] for r in by_iou)  # the parent: no IoU, last


def test_the_parent_run_shows_the_search_summary(server, search, tmp_path):
    exp, parent, kids, _ = search
    front = [k for k in kids if k.data.tags.get("pareto_optimal") == "true"]
    assert front
    with Browser(width=1400, height=1400, log=tmp_path / "chromium.log") as b:
        # as the trials view links it (the workflow type travels in the query)
        b.goto(f"{server}/#/experiments/{exp.experiment_id}/runs/{parent.info.run_id}?workflowType=machine_learning")
        text = b.wait_for_text(lambda t: "Pareto front" in t and "Hypervolume" in t, timeout=90,
                               what="the parent's description")
        b.screenshot(tmp_path / "parent.png")
    assert not [t for t in GENAI_TEXT if t in text], [t for t in GENAI_TEXT if t in text]
    assert f"raysearch search {parent.info.run_name}" in text
    assert "Method: grid" in text and "1 epoch per trial" in text and "Trials: 2: " in text
    for k in front:  # each member of the front with its IoU and latency, as a table row
        assert any(k.info.run_name in line and f"{k.data.metrics['iou']:.4f}" in line
                   and f"{k.data.metrics['latency_ms']:.3g}" in line for line in text.splitlines()), text
    for f in ("front.png", "front.csv", "candidates.txt"):
        assert f in text
