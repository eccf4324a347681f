"""The interactive front (`raysearch.reporting.interactive`): the knob importance on hand-computed
cases, and the page as a real headless Chromium renders it."""

from __future__ import annotations

import pytest

from raysearch.models import ModelSpec
from raysearch.records.results import Requirement, TrialRow
from raysearch.reporting.interactive import knob_importance, run_url, write_front_page
from tests.helpers.browser import CHROMIUM, Browser


def _rows() -> list[TrialRow]:
    """a decides IoU alone (0.6 / 0.8), the input size decides latency alone (1 / 4 ms)."""
    rows = []
    for i, (a, size) in enumerate([(0.5, 64), (0.5, 128), (1.0, 64), (1.0, 128)]):
        spec = ModelSpec(a=a, t=6, r=1, pp=0, input_hw=size)
        rows.append(TrialRow(spec.name, f"run{i}", spec, iou=0.2 + 0.6 * a / 1.0 if a == 1.0 else 0.6,
                             latency_ms=1.0 if size == 64 else 4.0, search="s"))
    rows.append(TrialRow("stopped", "run9", ModelSpec(a=0.25, t=6, r=1, pp=0, input_hw=64), status="stopped_early",
                         iou=0.3, latency_ms=0.5, search="s"))
    return rows


def test_knob_importance_is_the_share_of_variance_each_knob_explains():
    got = knob_importance(_rows())  # the stopped trial is not a candidate: not counted
    assert set(got) == {"a", "input_size"}  # t, r, pp do not vary; input_h/w are input_size's
    assert got["a"]["iou"] == pytest.approx(1.0) and got["a"]["latency"] == pytest.approx(0.0)
    assert got["input_size"]["iou"] == pytest.approx(0.0) and got["input_size"]["latency"] == pytest.approx(1.0)


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"headless Chromium is not installed at {CHROMIUM}")
def test_the_page_shows_every_trial_the_front_and_links_each_run(tmp_path):
    rows = _rows()
    urls = {r.run_id: run_url("http://127.0.0.1:5000", "7", r.run_id) for r in rows}
    page = write_front_page(rows, tmp_path / "front.html", requirement=Requirement(2.0, 0.5), urls=urls, title="t")
    with Browser(1400, 1800) as b:
        b.goto(page.as_uri())
        assert b.wait_for("document.querySelectorAll('.js-plotly-plot').length", lambda n: n == 3, what="3 plots")
        # every trial a point, the front's members drawn again on its line (0.6 @ 1 ms, 0.8 @ 1 ms dominates:
        # the front is the one 1 ms, 0.8 trial and nothing slower is better)
        traces = b.evaluate("JSON.stringify(document.getElementById('raysearch-plot-0').data.map("
                            "t => [t.name, t.x.length, t.customdata.map(c => c[0])]))")
        import json

        by_name = {name: (n, links) for name, n, links in json.loads(traces)}
        assert by_name["s: trained"][0] == 4 and by_name["s: stopped_early"][0] == 1
        assert by_name["Pareto front"][1] == [urls["run2"]]
        assert b.evaluate("document.getElementById('raysearch-plot-0').layout.sliders.length") == 2
        b.screenshot(tmp_path / "front.png")
