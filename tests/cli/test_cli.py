"""The `raysearch` command line: its real parser and commands, called in-process (the torch
import is paid once); the installed console script itself is run as a subprocess where the
process boundary is the point (exit codes, one-line errors, --help)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from raysearch import cli
from tests.helpers import REPO
from tests.helpers import run_raysearch as run

EXE = shutil.which("raysearch") or str(Path(sys.executable).parent / "raysearch")


def run_script(*args: str) -> subprocess.CompletedProcess:
    """The installed console script, as a user runs it."""
    return subprocess.run([EXE, *args], capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("flags,params", [
    (["--a", "1", "--t", "6", "--r", "3", "--pp", "1"], 1_122_673),
    (["--a", "1", "--t", "6", "--r", "3", "--pp", "0", "--in-channels", "1"], 1_122_097),
    (["--a", "0.125", "--t", "2", "--r", "1", "--pp", "0"], 4_519),
])
def test_summary_json(flags, params):
    out = json.loads(run("summary", *flags, "--res", "512", "--json").stdout)
    assert set(out) == {"params_total", "params_executed", "macs", "input_mb", "fwd_pass_mb"}
    assert out["params_total"] == params


def test_summary_baseline_macs_and_text():
    assert round(json.loads(run("summary", "--json").stdout)["macs"] / 1e6, 2) == 830.67
    text = run("summary", "--res", "256x512").stdout
    assert "256x512" in text and "params_total" in text


@pytest.mark.parametrize("args,needle", [
    (["summary", "--a", "0"], "a=0.0"),
    (["summary", "--res", "100"], "100x100"),
    (["evaluate", "--onnx", "nope.onnx"], "nope.onnx"),
    (["train", "--data", "/no/such/dir", "--epochs", "1"], "/no/such/dir"),
    (["export", "--checkpoint", "missing.pt", "--out", "x.onnx"], "missing.pt"),
])
def test_bad_input_is_one_clear_line(args, needle):
    p = run(*args, check=False)
    assert p.returncode == 2
    assert needle in p.stderr and "Traceback" not in p.stderr


def test_help_explains_every_command():
    for cmd in ("summary", "synth", "train", "evaluate", "export", "report", "pick", "optimize"):
        assert "usage: raysearch " + cmd in run(cmd, "--help").stdout


def test_the_console_script_exits_with_one_line_and_code_2():
    p = run_script("summary", "--a", "0")
    assert p.returncode == 2 and "a=0.0" in p.stderr and "Traceback" not in p.stderr
    assert "usage: raysearch" in run_script("--help").stdout


def test_model_flags_come_from_the_spec_fields():
    from dataclasses import fields

    from raysearch.models import ModelSpec

    text = run("summary", "--help").stdout
    for f in fields(ModelSpec):
        if f.name not in ("extra", "precision"):
            assert "--" + f.metadata.get("flag", f.name).replace("_", "-") in text, f.name
    args = cli.build_parser().parse_args(["summary", "--a", "0.25", "--res", "96x128", "--in-channels", "1"])
    assert cli.spec_from_args(args) == ModelSpec(a=0.25, input_hw=(96, 128), in_channels=1)


def test_synth_writes_the_folder_layout(tmp_path):
    run("synth", str(tmp_path / "a"), "--n", "10", "--seed", "3", "--quiet")
    run("synth", str(tmp_path / "b"), "--n", "10", "--seed", "3", "--quiet")
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.*"))
    assert len(files) == 20 and {f.parts[0] for f in files} == {"train", "val", "test"}
    for f in files:  # same seed, same bytes
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()


@pytest.mark.slow
def test_train_export_evaluate_round_trip(tmp_path):
    out = tmp_path / "run"
    run("train", "--data", "synthetic:40", "--a", "0.125", "--t", "2", "--r", "1", "--pp", "0", "--res", "64",
        "--epochs", "2", "--out", str(out), "--quiet")
    assert {"best.pt", "last.pt", "model.onnx", "metrics.json"} <= {p.name for p in out.iterdir()}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["spec"]["input_hw"] == [64, 64] and len(metrics["history"]) == 2
    ev = json.loads(run("evaluate", "--onnx", str(out / "model.onnx"), "--data", "synthetic:40", "--json").stdout)
    assert ev["iou"] == pytest.approx(metrics["test"]["iou"], abs=1e-9) and ev["n_images"] == 6
    run("export", "--checkpoint", str(out / "best.pt"), "--out", str(tmp_path / "again.onnx"))
    ev2 = json.loads(run("evaluate", "--onnx", str(tmp_path / "again.onnx"), "--data", "synthetic:40", "--json").stdout)
    assert ev2["iou"] == pytest.approx(ev["iou"], abs=1e-6)
    untrained = run("export", "--a", "0.25", "--res", "96", "--out", str(tmp_path / "u.onnx")).stdout
    assert "[batch, 3, 96, 96]" in untrained.replace("'", "")


@pytest.mark.slow
def test_readme_main_command(tmp_path):
    """The README's main job (stage 7, --quick), cut to one input size and one epoch."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "RAY_USAGE_STATS_ENABLED": "0"}
    p = subprocess.run(["bash", "scripts/quickstart.sh", "--res", "64", "--epochs", "1", "--bench-runs", "5",
                        "--storage-path", str(tmp_path / "ray"), "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"],
                       cwd=REPO, capture_output=True, text=True, timeout=900, env=env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "on the Pareto front" in p.stdout and "MLflow parent run" in p.stdout
    # the concise view: a line per trial that starts and ends, not Ray Tune's per-trial boxes
    lines = p.stdout.splitlines()
    assert sum(": started" in ln for ln in lines) == sum(": trained " in ln for ln in lines) == 3  # 3 models at 64
    assert not any("Trial status" in ln or "Trial run_trial" in ln for ln in lines), p.stdout[-3000:]


@pytest.mark.realdata
def test_real_data_evaluate_with_the_studys_threshold(packages_dir, tmp_path):
    out = tmp_path / "real"
    run("train", "--data", str(packages_dir), "--limit", "24", "--a", "0.125", "--t", "2", "--r", "1", "--pp", "0",
        "--res", "64", "--epochs", "2", "--out", str(out), "--quiet")
    a = json.loads(run("evaluate", "--onnx", str(out / "model.onnx"), "--data", str(packages_dir), "--limit", "12",
                       "--json").stdout)
    b = json.loads(run("evaluate", "--onnx", str(out / "model.onnx"), "--data", str(packages_dir), "--limit", "12",
                       "--json", "--logit-threshold", "0.5").stdout)
    assert a["n_images"] == b["n_images"] == 12 and b["logit_threshold"] == 0.5 and a["logit_threshold"] == 0.0
    assert 0.0 <= b["iou"] <= 1.0 and a["iou"] != b["iou"]


def test_each_bench_flag_has_one_name_from_flag_to_wire():
    """--bench-X -> SearchOptions.bench.X -> BenchSettings.X -> BenchmarkRequest.X."""
    from benchd import wire
    from benchd.runner import BenchParams
    from raysearch.search.driver import bench_settings
    from raysearch.search.latency import WIRE_KNOBS

    values = {"runs": 7, "warmup_runs": 3, "intra_op_threads": 2, "min_duration_s": 0.5, "target_rel_ci": 0.03,
              "max_duration_s": 12.0}
    assert set(values) == set(WIRE_KNOBS)
    argv = [a for k, v in values.items() for a in (f"--bench-{k.replace('_', '-')}", str(v))]
    opts = cli.search_options(cli.build_stage_parser(2).parse_args(argv))
    settings = bench_settings(opts, "127.0.0.1:1")
    req = wire.benchmark_request(BenchParams(**settings.knobs()), "0" * 64)
    for k, v in values.items():
        assert getattr(opts.bench, k) == v and getattr(settings, k) == v and opts.flags()[f"bench_{k}"] == v
        assert getattr(req, k) == pytest.approx(v), k
    # the older flags are aliases of the same options
    old = cli.search_options(cli.build_stage_parser(2).parse_args(
        ["--bench-warmup", "3", "--bench-threads", "2", "--bench-precision", "0.03", "--bench-min-s", "0.5",
         "--bench-max-s", "12"]))
    assert all(getattr(old.bench, k) == v for k, v in values.items() if k != "runs")


def test_search_options_are_grouped_and_every_one_is_a_flag_of_the_same_name():
    from raysearch.search.options import SearchOptions

    dests = {a.dest for a in cli.build_stage_parser(2)._actions}
    assert set(SearchOptions().flags()) <= dests  # no option a user cannot set, none under another name
    argv = ["--sampler", "tpe", "--bench-runs", "3", "--farm", "127.0.0.1:9", "--tracking-uri", "sqlite:///x.db",
            "--amp", "--grace-period", "2", "--device-iou", "off"]
    opts = cli.search_options(cli.build_stage_parser(2).parse_args(argv))
    assert (opts.schedule.sampler, opts.schedule.grace_period, opts.schedule.scheduler) == ("tpe", 2, "none")
    assert (opts.bench.runs, opts.bench.farm, opts.bench.device_iou) == (3, "127.0.0.1:9", "off")
    assert (opts.tracking.uri, opts.cluster.amp) == ("sqlite:///x.db", True)
    assert SearchOptions.from_flags(**opts.flags()) == opts
    with pytest.raises(TypeError, match="bench_rnus"):
        SearchOptions.from_flags(bench_rnus=3)
    with pytest.raises(ValueError, match="--sampler 'tpee'"):
        SearchOptions.from_flags(sampler="tpee")


def test_amp_is_asked_for_and_changes_the_result_key():
    from raysearch.models import ModelSpec
    from raysearch.search.latency import BenchSettings
    from raysearch.search.trial import TrialSettings

    parser = cli.build_stage_parser(2)
    assert cli.search_options(parser.parse_args([])).cluster.amp is False  # fp32, as the study trained
    assert cli.search_options(parser.parse_args(["--amp"])).cluster.amp is True
    assert cli.build_parser().parse_args(["train", "--amp"]).amp is True
    fp32 = TrialSettings(data="synthetic", bench=BenchSettings(farm="127.0.0.1:1"), latency_cache="c")
    spec = ModelSpec(input_hw=64)
    # a result trained in mixed precision is never served for an fp32 request, nor the reverse
    assert fp32.result_key(spec) != TrialSettings(**{**fp32.__dict__, "amp": True}).result_key(spec)
