"""`raysearch optimize`: the stage planning (pure, from hand-made rows), int8 quantization, and
end-to-end runs at a tiny scale with a real local Ray, a real local benchd and SQLite MLflow."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from raysearch.cli.options import parse_duration
from raysearch.models import ModelFamily, ModelSpec, build_model, families, get_family
from raysearch.optimize import driver as opt_mod
from raysearch.optimize.driver import summary_text, why_not
from raysearch.optimize.options import OptimizeOptions
from raysearch.optimize.planning import (
    cross_space,
    int8_space,
    kept_resolutions,
    plan,
    resolution_space,
    topology_knobs,
    topology_resolution,
    topology_space,
)
from raysearch.records.results import PRUNED, TRAINED, TrialRow
from raysearch.search.options import SearchOptions

ENV_KEYS = {"RAY_USAGE_STATS_ENABLED": "0", "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONUNBUFFERED": "1"}


def row(hw: int, iou: float | None = None, lat: float = 1.0, pruned: bool = False, checkpoint: str | None = None,
        **knobs) -> TrialRow:
    spec = ModelSpec(input_hw=hw, **knobs)
    return TrialRow(name=spec.name, run_id=f"run-{spec.name}", spec=spec, status=PRUNED if pruned else TRAINED,
                    latency_ms=lat, iou=0.0 if pruned else iou, checkpoint=checkpoint)


# ---- planning ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(families()))
def test_effort_levels_decide_the_knobs(name):
    fam = get_family(name)
    assert plan("entry", False) == ["resolution"]
    assert plan("intermediate", False) == ["resolution", "topology", "cross"]
    assert plan("expert", True)[-1] == "int8"
    assert topology_knobs(fam, "intermediate") == ("a",)
    assert topology_knobs(fam, "expert") == tuple(k for k in fam.knobs if len(fam.choices.get(k, ())) > 1)
    # int8 is on by default only at expert effort, and can be asked for anywhere
    assert [OptimizeOptions(model=name, effort=e, search=SearchOptions(min_iou=0.5)).quantize
            for e in ("entry", "intermediate", "expert")] == [False, False, True]
    assert OptimizeOptions(model=name, effort="entry", int8=True, search=SearchOptions(min_iou=0.5)).quantize


def test_resolution_stage_is_the_family_baseline_at_every_size():
    fam = get_family("fastscnn")
    o = OptimizeOptions(search=SearchOptions(max_latency_ms=33))
    space = resolution_space(fam, o)
    assert space.grid == {"input_hw": [(r, r) for r in sorted(fam.resolutions, reverse=True)]}
    assert {k: space.fixed[k] for k in fam.baseline} == dict(fam.baseline)
    y = resolution_space(fam, OptimizeOptions(y_channel=True, res=(96, 64), search=SearchOptions(max_latency_ms=33)))
    assert y.grid == {"input_hw": [(96, 96), (64, 64)], "in_channels": [3, 1]}


def test_kept_resolutions_and_the_topology_size():
    rows = [row(128, pruned=True, lat=50), row(96, 0.80, 20), row(64, 0.70, 10), row(32, 0.60, 12)]  # 32 dominated
    assert kept_resolutions(rows, None) == [(128, 128), (96, 96), (64, 64)]
    assert kept_resolutions(rows, 0.75) == [(128, 128), (96, 96)]  # the full model misses the floor at 64
    assert kept_resolutions(rows, 0.95) == [(128, 128), (96, 96), (64, 64)]  # none reaches it: keep the front
    sizes = [(128, 128), (96, 96), (64, 64), (32, 32)]
    assert topology_resolution(rows, sizes) == ((96, 96), 3)  # most accurate that met the latency
    assert topology_resolution([row(128, pruned=True), row(96, pruned=True)], sizes[:2]) == ((96, 96), 3)


def test_topology_and_cross_stages():
    fam = get_family("fastscnn")
    o = OptimizeOptions(effort="expert", res=(128, 96, 64), search=SearchOptions(max_latency_ms=33))
    res_rows = [row(128, pruned=True, lat=50), row(96, 0.80, 20), row(64, 0.70, 10)]
    topo = topology_space(fam, o, res_rows)
    assert topo.grid == {k: list(fam.choices[k]) for k in ("a", "t", "r", "pp")}
    assert topo.fixed["input_hw"] == (96, 96)
    # the cross: kept sizes x the Pareto topologies of stage 2, without what already ran
    topo_rows = [row(96, 0.82, 15, a=0.5), row(96, 0.78, 8, a=0.25), row(96, 0.60, 9, a=0.125)]  # last dominated
    space = cross_space(fam, o, res_rows, topo_rows, res_rows + topo_rows)
    expected = {ModelSpec(a=a, input_hw=hw).name for a in (0.5, 0.25) for hw in (128, 64)}  # 96 ran in stage 2
    assert set(space.grid["model"]) == expected == set(space.models)
    assert all(ModelSpec.from_dict(m, strict=True).name == n for n, m in space.models.items())


def test_int8_stage_quantizes_the_fp32_front_from_its_weights():
    fam = get_family("fastscnn")
    pool = [row(96, 0.8, 20, checkpoint="/ckpt/a"), row(64, 0.7, 10, checkpoint="/ckpt/b"),
            row(64, 0.6, 30, a=0.5, checkpoint="/ckpt/c")]  # dominated
    space, weights = int8_space(fam, pool)
    names = {ModelSpec(input_hw=96, precision="int8").name, ModelSpec(input_hw=64, precision="int8").name}
    assert set(space.grid["model"]) == names
    assert sorted(weights.values()) == ["/ckpt/a/best.pt", "/ckpt/b/best.pt"]
    assert all(m["precision"] == "int8" for m in space.models.values())


@pytest.mark.parametrize("text,seconds", [("90", 90), ("90s", 90), ("45m", 2700), ("2h", 7200), ("1h30m", 5400),
                                          ("0.5h", 1800)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "2x", "h", "1h junk"])
def test_parse_duration_names_the_bad_value(bad):
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(bad)


@pytest.mark.parametrize("kw,match", [
    (dict(effort="hard"), "effort 'hard'"),
    (dict(model="unet"), "arch='unet' is not a registered model family"),
    (dict(res=(100,)), "input_hw=100x100 must be a multiple of 32"),
    (dict(time_budget_s=0), "time-budget 0"),
])
def test_bad_options_name_the_value(kw, match):
    with pytest.raises(ValueError, match=match):
        OptimizeOptions(search=SearchOptions(min_iou=0.5), **kw)


def test_a_requirement_is_required():
    with pytest.raises(ValueError, match="give a requirement"):
        OptimizeOptions()


def test_nothing_qualifies_names_what_each_candidate_misses():
    o = OptimizeOptions(search=SearchOptions(max_latency_ms=10, min_iou=0.9))
    pool = [row(96, 0.85, 12), row(64, 0.8, 5), row(128, 0.95, 40)]
    closest = opt_mod._closest(pool, o.search.requirement)
    # shortfalls relative to the requirement: 96 misses latency by 20% and IoU by 5.6%, 64 only IoU by 11%
    assert [r.name for r in closest] == [pool[1].name, pool[0].name, pool[2].name]
    misses = why_not(closest[0], o.search.requirement)
    assert misses and all("latency" not in m for m in misses)
    text = summary_text("opt", [], closest, o, True, 10.0, 5, None)
    assert "NOTHING QUALIFIES" in text and all(r.name in text for r in pool)
    assert "latency" in text and "iou" in text.lower()


def test_nothing_trained_shows_the_fastest_pruned_candidates():
    o = OptimizeOptions(effort="entry", search=SearchOptions(max_latency_ms=0.2, min_iou=0.8))
    rows = [row(128, pruned=True, lat=0.9), row(96, pruned=True, lat=0.5), row(64, pruned=True, lat=0.3)]
    closest = opt_mod._fastest_pruned(rows, n=2)
    assert [r.name for r in closest] == [rows[2].name, rows[1].name]
    assert "latency 0.3 ms > 0.2 ms" in why_not(closest[0], o.search.requirement)[0]
    text = summary_text("opt", [], closest, o, True, 1.0, 0, None)
    assert "IoU" not in text.split("NOTHING QUALIFIES")[1].split("Try")[0]  # never trained: no IoU to show
    assert "higher --effort (narrower models)" in text


def test_precision_is_a_spec_knob():
    s = ModelSpec(input_hw=64, precision="INT8")
    assert s.precision == "int8" and s.name.endswith("-int8") and "int8" not in ModelSpec(input_hw=64).name
    with pytest.raises(ValueError, match="precision='fp16'"):
        ModelSpec(precision="fp16")


def test_a_family_declares_only_its_own_knobs():
    with pytest.raises(ValueError, match="'t' is in baseline/choices but not one of its knobs"):
        ModelFamily("x", build=lambda s: None, knobs=("a",), choices={"t": (2, 1)})


# ---- int8 quantization --------------------------------------------------------------------------
def test_quantize_int8_keeps_the_spec_and_stays_close(tmp_path):
    import onnx
    import onnxruntime as ort
    import torch

    from raysearch.data import open_split
    from raysearch.training.export import export_onnx
    from raysearch.training.quantize import calibration_inputs, quantize_int8

    spec = ModelSpec(a=0.25, t=2, r=1, pp=0, input_hw=64)
    torch.manual_seed(0)  # the closeness of an int8 model to its fp32 one depends on the weights
    fp32 = export_onnx(build_model(spec).eval(), tmp_path / "m.onnx").path
    val = open_split("synthetic:30", "val")
    inputs = calibration_inputs(val, spec, n=4)
    assert len(inputs) == min(4, len(val)) and inputs[0].shape == spec.input_shape
    q = quantize_int8(fp32, tmp_path / "q.onnx", inputs)
    model = onnx.load(str(q))
    meta = {p.key: p.value for p in model.metadata_props}
    assert ModelSpec.from_json(meta["raysearch.spec"]) == spec.replace(precision="int8")
    assert any(n.op_type == "QuantizeLinear" for n in model.graph.node)
    a, b = (ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"input": inputs[1]})[0]
            for p in (fp32, q))
    assert a.shape == b.shape and np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.9


def test_quantize_needs_calibration_images(tmp_path):
    from raysearch.training.export import export_onnx
    from raysearch.training.quantize import quantize_int8

    fp32 = export_onnx(build_model(ModelSpec(a=0.125, t=2, r=1, pp=0, input_hw=64)).eval(), tmp_path / "m.onnx").path
    with pytest.raises(ValueError, match="calibration needs at least one input"):
        quantize_int8(fp32, tmp_path / "q.onnx", [])


# ---- end to end ----------------------------------------------------------------------------------
def _optimize(root: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", "raysearch.cli", "optimize", *args,
                           "--storage-path", str(root / "ray"), "--tracking-uri", f"sqlite:///{root / 'mlflow.db'}"],
                          cwd=root, env={**os.environ, **ENV_KEYS}, capture_output=True, text=True, timeout=timeout)


def _runs(client: MlflowClient, query: str = ""):
    exp = client.get_experiment_by_name("raysearch")
    return client.search_runs([exp.experiment_id], query)


@pytest.mark.slow
def test_entry_with_int8_a_budget_that_expires_then_resumes(tmp_path, monkeypatch):
    args = ("--quick", "--effort", "entry", "--int8", "--data", "synthetic:40", "--res", "96", "64", "--epochs", "3",
            "--concurrency", "1", "--bench-runs", "5", "--max-latency-ms", "1000", "--min-iou", "0", "--json")
    first = _optimize(tmp_path, *args, "--time-budget", "20s")
    assert first.returncode in (0, 1), first.stdout[-3000:] + first.stderr[-3000:]
    assert "time budget reached" in first.stdout
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (opt_run,) = _runs(client, "tags.`raysearch.kind` = 'optimization'")
    assert opt_run.info.status == "KILLED" and opt_run.data.tags["budget_expired"] == "true"
    assert not [r for r in _runs(client) if r.info.status == "RUNNING"]  # every run got a status

    second = _optimize(tmp_path, *args, "--time-budget", "15m")
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    result = json.loads(second.stdout[second.stdout.index("{\n"):])
    assert result["complete"] and result["name"] == json.loads(first.stdout[first.stdout.index("{\n"):])["name"]
    opt_run = client.get_run(opt_run.info.run_id)  # the same optimization run, continued
    assert opt_run.info.status == "FINISHED" and opt_run.data.params["stages"] == '["resolution", "int8"]'
    stages = {r.data.tags["optimize_stage"]: r for r in _runs(client, f"tags.`mlflow.parentRunId` = '{opt_run.info.run_id}'")}
    assert set(stages) == {"resolution", "int8"}
    res_kids = _runs(client, f"tags.`mlflow.parentRunId` = '{stages['resolution'].info.run_id}'")
    assert sorted(ModelSpec.from_params(k.data.params).height for k in res_kids) == [64, 96]  # none trained twice
    assert all(k.info.status == "FINISHED" for k in res_kids)
    int8_kids = _runs(client, f"tags.`mlflow.parentRunId` = '{stages['int8'].info.run_id}'")
    assert int8_kids and all(k.data.params["precision"] == "int8" and "iou" in k.data.metrics
                             and "latency_ms" in k.data.metrics for k in int8_kids)  # measured like any candidate
    assert all(k.data.metrics.get("epochs_trained", 0) == 0 for k in int8_kids)  # quantized, not retrained
    # int8 candidates are judged by the device's own onnxruntime (--device-iou int8, the default): here the
    # local benchd, the same CPU, so the same masks; fp32 candidates keep the host's IoU
    for k in (k for k in int8_kids if k.info.status == "FINISHED"):
        m = k.data.metrics
        assert m["iou"] == m["iou_device"] == m["iou_host"] and m["iou_device_gap"] == 0.0
        assert m["mask_disagreement_max"] == 0.0 and k.data.tags["device_iou_disagrees"] == "false"
    assert not any("iou_device" in k.data.metrics for k in res_kids)

    # the qualifying candidates, best first, registered with aliases
    cands = result["candidates"]
    assert cands and [c["iou"] for c in cands] == sorted((c["iou"] for c in cands), reverse=True)
    assert all(Path(c["onnx"]).is_file() and c["latency_ms"] <= 1000 for c in cands)
    model = client.get_registered_model(result["registered_model"])
    versions = client.search_model_versions(f"name='{model.name}'")
    assert {v.run_id for v in versions if v.tags["current"] == "true"} == {c["run_id"] for c in cands}
    assert [client.get_model_version_by_alias(model.name, f"rank-{i}").run_id for i in range(1, len(cands) + 1)] \
        == [c["run_id"] for c in cands]
    assert client.get_model_version_by_alias(model.name, "best").run_id == cands[0]["run_id"]
    fastest = min(cands, key=lambda c: c["latency_ms"])
    assert client.get_model_version_by_alias(model.name, "fastest").run_id == fastest["run_id"]
    import mlflow.artifacts  # the registered version is an MLflow model (onnx flavor) holding the ONNX file

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")  # the registry's too
    got = Path(mlflow.artifacts.download_artifacts(f"models:/{model.name}@best", dst_path=str(tmp_path / "dl")))
    import onnx

    meta = [{p.key: p.value for p in onnx.load(str(f)).metadata_props}["raysearch.spec"]
            for f in (got / "model.onnx", Path(cands[0]["onnx"]))]
    assert (got / "MLmodel").is_file() and meta[0] == meta[1]
    page = Path(result["report"]).read_text()
    assert all(c["name"] in page for c in cands) and "data:image/png;base64," in page


class _TinyNet:
    """A user's own family, built from this test module (which trial processes cannot import)."""

    @staticmethod
    def build(spec):
        import torch.nn as nn
        import torch.nn.functional as F

        width = max(1, int(8 * spec.a))

        class Net(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.body = nn.Sequential(nn.Conv2d(spec.in_channels, width, 3, stride=2, padding=1),
                                          nn.BatchNorm2d(width), nn.ReLU(), nn.Conv2d(width, spec.num_classes, 1))

            def forward(self, x):
                return F.interpolate(self.body(x), size=x.shape[-2:], mode="bilinear", align_corners=False)

        return Net()


@pytest.mark.slow
def test_a_custom_family_and_nothing_qualifies(tmp_path, capsys):
    import ray

    from raysearch.models import register_family
    from raysearch.optimize.driver import optimize

    register_family(ModelFamily("tinyseg", _TinyNet.build, knobs=("a",), baseline={"a": 1.0},
                                choices={"a": (1.0, 0.5)}, resolutions=(64,)), replace=True)
    search = SearchOptions.from_flags(data="synthetic:40", quick=True, min_iou=0.999, max_latency_ms=1000, bench_runs=3,
                           storage_path=str(tmp_path / "ray"), tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        res = optimize(OptimizeOptions(model="tinyseg", effort="intermediate", epochs=1, res=(64,), search=search))
    finally:
        ray.shutdown()
    out = capsys.readouterr().out
    assert res.complete and res.candidates == [] and res.registered_model is None
    assert "NOTHING QUALIFIES" in out
    assert res.closest and all(any("iou" in m.lower() for m in why_not(r, search.requirement)) for r in res.closest)
    assert {r.spec.arch for r in res.pool} == {"tinyseg"}
    assert {r.spec.a for r in res.pool} == {1.0, 0.5}  # the topology stage varied the family's knob
    client = MlflowClient(search.tracking.store())
    assert not client.search_registered_models()
    assert client.get_run(res.run_id).info.status == "FINISHED"


@pytest.mark.slow
@pytest.mark.realdata
@pytest.mark.parametrize("effort", ["entry", "intermediate"])
def test_entry_and_intermediate_on_the_real_data(packages_dir, tmp_path, effort):
    res = ["96", "64"] if effort == "intermediate" else ["64"]
    p = _optimize(tmp_path, "--effort", effort, "--data", str(packages_dir), "--limit", "12", "--res", *res,
                  "--epochs", "2", "--bench-runs", "5", "--bench-warmup-runs", "1", "--max-latency-ms", "1000",
                  "--min-iou", "0.2", "--json")
    assert p.returncode in (0, 1), p.stdout[-3000:] + p.stderr[-3000:]
    result = json.loads(p.stdout[p.stdout.index("{\n"):])
    assert result["complete"] and result["stages"] == plan(effort, False)
    assert result["candidates"] or result["closest"]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    kids = _runs(client, f"tags.`mlflow.parentRunId` = '{result['run_id']}'")
    assert {k.data.tags["optimize_stage"] for k in kids} <= set(result["stages"])
    if effort == "intermediate":
        topo = next(k for k in kids if k.data.tags["optimize_stage"] == "topology")
        widths = {float(k.data.params["a"]) for k in _runs(client, f"tags.`mlflow.parentRunId` = '{topo.info.run_id}'")}
        assert widths == set(get_family("fastscnn").choices["a"])


@pytest.mark.slow
def test_a_new_tracking_store_starts_afresh_in_one_line(tmp_path, capsys):
    """Its saved state names runs of the first store: the second run says so and starts afresh."""
    import ray

    from raysearch.optimize.driver import optimize

    def once(db: str):
        search = SearchOptions.from_flags(data="synthetic:30", quick=True, max_latency_ms=1000, bench_runs=3,
                               storage_path=str(tmp_path / "ray"), tracking_uri=f"sqlite:///{tmp_path / db}")
        return optimize(OptimizeOptions(effort="entry", epochs=1, res=(64,), search=search)), search

    try:
        first, _ = once("first.db")
        capsys.readouterr()
        second, search = once("second.db")  # same command, another --tracking-uri (or first.db deleted)
    finally:
        ray.shutdown()
    out = capsys.readouterr().out
    assert f"names run {first.run_id}, which the tracking store" in out and "starting afresh as" in out
    assert second.name.startswith(first.name + "-") and second.complete
    assert MlflowClient(search.tracking.store()).get_run(second.run_id).info.status == "FINISHED"
