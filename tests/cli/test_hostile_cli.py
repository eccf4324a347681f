"""Hostile input on the raysearch side (as `tests/benchd/test_benchd_hostile.py` is for benchd): every bad
flag, data folder and inventory a stage script can check is refused in one line naming it, exit
status 2, before Ray starts, and nothing is left in the tracking store."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from raysearch import cli
from raysearch.search import driver as search


@pytest.fixture
def no_ray(monkeypatch):
    """Fail the test if the driver got as far as starting Ray."""
    def refuse(*a, **k):
        raise AssertionError("Ray was started for input that should have been refused before it")

    monkeypatch.setattr(search, "init_ray", refuse)


BINARY = bytes(range(256)) * 4


@pytest.mark.parametrize("args, says", [
    (["--epochs", "-1"], "argument --epochs: '-1' is not an integer >= 1"),
    (["--epochs", "0"], "argument --epochs: '0' is not an integer >= 1"),
    (["--res", "0"], "argument --res: input size '0': each side must be in 1..4096"),
    (["--res", "100000"], "argument --res: input size '100000': each side must be in 1..4096"),
    (["--res", "abc"], "argument --res: input size 'abc' is not N or HxW"),
    (["--bench-threads", "-1"], "argument --bench-intra-op-threads/--bench-threads: '-1' is not an integer >= 0"),
    (["--limit", "0"], "argument --limit: '0' is not an integer >= 1"),
    (["--bench-runs", "0"], "argument --bench-runs: '0' is not an integer >= 1"),
    (["--concurrency", "0"], "argument --concurrency: '0' is not an integer >= 1"),
    (["--max-failures", "-2"], "argument --max-failures: '-2' is not an integer >= 0"),
    (["--gpus-per-trial", "-1"], "argument --gpus-per-trial: '-1' is not a number >= 0"),
    (["--hv-ref-latency-ms", "-5"], "argument --hv-ref-latency-ms: '-5' is not a number > 0"),
    (["--max-latency-ms", "nan"], "argument --max-latency-ms: 'nan' is not a number > 0"),
    (["--min-iou", "1.5"], "argument --min-iou: '1.5' is not a number >= 0 and <= 1"),
    (["--bench-target-rel-ci", "1"], "argument --bench-target-rel-ci/--bench-precision: '1' is not a number >= 0 and < 1"),
    (["--reduction-factor", "1"], "argument --reduction-factor: '1' is not a number > 1"),
    (["--experiment", ""], "argument --experiment: '' is empty"),
    (["--sampler", "cmaes"], "argument --sampler: invalid choice: 'cmaes'"),
    (["--space", "a"], "argument --space: --space 'a' is not KNOB=VALUES"),
    (["--space", "a=1:0.5"], "argument --space: the range 1:0.5 is empty"),
    (["--space", "res=64:500:32"], "the range 64:500:32: the step 32 must be > 0 and divide 500 - 64"),
    (["--space", "a=x:y"], "argument --space: 'x:y' is not a range"),
])
def test_a_bad_flag_is_one_line_and_exit_2(capsys, no_ray, args, says):
    with pytest.raises(SystemExit) as e:
        cli.stage_main(7, ["--quick", *args])
    err = capsys.readouterr().err
    assert e.value.code == 2 and says in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("make, args, says", [
    (None, ["--data", "s3://bucket/x"], "--data 's3://bucket/x': no such folder or file"),
    (None, ["--data", "/no/such/dir"], "--data '/no/such/dir': no such folder or file"),
    (None, ["--data", "synthetic:2"], "need at least 3 synthetic samples"),
    (None, ["--data", "synthetic:many"], "expected 'synthetic' or 'synthetic:N'"),
    ("empty-dir", ["--data", "{p}"], "not a dataset"),
    (None, ["--res", "100"], "input_hw=100x100 must be a multiple of 32"),
    (None, ["--farm", "/etc/hostname"], "--farm '/etc/hostname': expected a farm inventory"),
    (None, ["--farm", "host-without-port"], "--farm 'host-without-port': expected a farm inventory"),
    (None, ["--farm", "host:99999"], "--farm host:99999: port 99999 is outside 1-65535"),
    (None, ["--farm", "127.0.0.1:70000"], "--farm 127.0.0.1:70000: port 70000 is outside 1-65535"),  # gRPC: 4464
    ("bad.yaml", ["--farm", "{p}"], "bad.yaml:2:3: invalid YAML: expected the node content, but found '-'"),
    (None, ["--farm", "/no/such/farm.yaml"], "farm inventory not found"),
    ("binary.yaml", ["--farm", "{p}"], "not a farm inventory (not UTF-8 text"),
    ("text.yaml", ["--farm", "{p}"], "expected a mapping with a 'devices' list"),
])
def test_bad_data_and_inventories_are_refused_before_ray(tmp_path, capsys, no_ray, make, args, says):
    p = tmp_path / (make or "x")
    if make == "empty-dir":
        p.mkdir()
    elif make == "binary.yaml":
        p.write_bytes(BINARY)
    elif make == "text.yaml":
        p.write_text("just a sentence\n")
    elif make == "bad.yaml":
        p.write_text("devices: [\n  - {name: a\n")  # PyYAML's message spans five lines
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    argv = ["--quick", "--tracking-uri", uri, "--storage-path", str(tmp_path / "ray"),
            *[a.format(p=p) for a in args]]
    assert cli.stage_main(7, argv) == 2
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    client = MlflowClient(uri)
    assert not [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]


@pytest.mark.parametrize("stage, args, says", [
    (7, ["--space", "a=0.25:1"], "--space changes the knobs of stages 2-6; stage 7 searches"),
    (4, ["--space", "width=0.25:1"], "unknown ModelSpec field(s) ['width']"),
    (4, ["--space", "a=0:1"], "a=0.0 must be > 0"),
    (4, ["--space", "res=48:112:32"], "input_hw=48x48 must be a multiple of 32"),
    (4, ["--space", "a=0.25:1"], "--mode grid trains every configuration, and a is continuous"),
])
def test_a_bad_space_is_refused_before_ray(tmp_path, capsys, no_ray, stage, args, says):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    argv = ["--quick", "--tracking-uri", uri, "--storage-path", str(tmp_path / "ray"), *args]
    assert cli.stage_main(stage, argv) == 2
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def test_evaluate_refuses_a_farm_port_grpc_would_wrap(tmp_path, capsys):
    """gRPC takes a port modulo 65536: `raysearch evaluate --farm 127.0.0.1:70000` asked port 4464."""
    from tests.helpers import benchd_fixtures as fx

    onnx = fx.conv_model(tmp_path / "m.onnx")
    assert cli.main(["evaluate", "--onnx", str(onnx), "--data", "synthetic:3", "--farm", "127.0.0.1:70000"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "raysearch evaluate: error: --farm 127.0.0.1:70000: port 70000 is outside 1-65535"


def test_replay_and_train_flags_are_checked_too(capsys, tmp_path):
    for seeds, says in (("0", "'0' is not an integer >= 1"), ("1000000000000", "'1000000000000' is not an integer "
                                                                            ">= 1 and <= 1000")):
        with pytest.raises(SystemExit) as e:
            cli.main(["replay", "--table", "A", "--seeds", seeds])
        assert e.value.code == 2 and f"argument --seeds: {says}" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    assert cli.main(["replay", "--table", "A", "--seeds", "1", "--cache", str(tmp_path / "file"), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"raysearch replay: error: --cache {tmp_path / 'file'}: cannot keep replays there (File exists); " \
                  "expected a folder (new or one an earlier replay filled)"
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--lr", "-0.1"])
    assert e.value.code == 2 and "argument --lr: '-0.1' is not a number > 0" in capsys.readouterr().err


# ---- tracking store faults: one line naming the store, in bounded time ----------------------------
def _garbage_db(tmp_path):
    db = tmp_path / "broken.db"
    db.write_bytes(BINARY * 8)
    return f"sqlite:///{db}"


@pytest.mark.parametrize("argv, says", [
    (["pick", "--run-id", "UNKNOWN"], "Run with id=UNKNOWN not found (tracking store sqlite:///"),
    (["report", "--run-id", "UNKNOWN"], "Run with id=UNKNOWN not found (tracking store sqlite:///"),
])
def test_unknown_run_ids_are_one_line(tmp_path, capsys, argv, says):
    import os

    MlflowClient(f"sqlite:///{tmp_path / 'm.db'}").search_experiments()  # a store with no such run
    assert cli.main([*argv, "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]) == 2
    # read-back's short MLflow timeouts are for that call only: a search started later by this
    # process (the rehearsal's driver inherits its environment) must keep MLflow's retries
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ
    err = capsys.readouterr().err.strip()
    assert says in err and len(err.splitlines()) == 1, err


@pytest.mark.parametrize("command", ["pick", "report"])
def test_a_corrupted_store_is_named(tmp_path, capsys, command):
    uri = _garbage_db(tmp_path)
    assert cli.main([command, "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"raysearch {command}: error: the tracking store {uri} is not a readable MLflow database " \
                  "(file is not a database)"


@pytest.mark.parametrize("command", ["pick", "report"])
def test_read_commands_never_create_a_store(tmp_path, capsys, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for args, where in (([], tmp_path / "runs" / "mlflow.db"),
                        (["--tracking-uri", "sqlite:///no/such/dir/m.db"], tmp_path / "no/such/dir/m.db")):
        assert cli.main([command, *args]) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"raysearch {command}: error: no tracking store at {where.relative_to(tmp_path) if args else where}: " \
                      "no search has logged there (give the --tracking-uri the search used)"
    assert list(tmp_path.iterdir()) == []
    assert cli.main([command, "--tracking-uri", f"sqlite:///{tmp_path}"]) == 2  # a folder: at once, not 105 s
    assert f"{tmp_path} is a folder; expected an SQLite file" in capsys.readouterr().err


def test_a_read_only_store_or_a_mask_of_the_wrong_size_is_refused_before_ray(tmp_path, capsys, no_ray):
    import shutil

    import cv2
    import numpy as np

    from raysearch.tracking.store import check_store
    from tests.helpers import remount_ro, tmpfs, write_boxes

    data = write_boxes(tmp_path / "data")
    bad = next((data / "val" / "labels").iterdir())
    h, w = cv2.imread(str(bad), cv2.IMREAD_GRAYSCALE).shape
    base = ["--quick", "--data", str(data), "--storage-path", str(tmp_path / "ray")]
    cv2.imwrite(str(bad), np.zeros((h // 2, w), np.uint8))
    assert cli.stage_main(2, [*base, "--tracking-uri", f"sqlite:///{tmp_path / 'ok.db'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"but its mask {bad} is {w}x{h // 2} (WxH)" in err[0], err
    cv2.imwrite(str(bad), np.zeros((h, w), np.uint8))

    made = f"sqlite:///{tmp_path / 'made.db'}"
    check_store(made, write=True)
    with tmpfs(tmp_path / "ro", size="50m") as folder:
        shutil.copy(tmp_path / "made.db", folder / "m.db")
        remount_ro(folder)
        assert cli.stage_main(2, [*base, "--tracking-uri", f"sqlite:///{folder / 'm.db'}"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot be written: its folder" in err[0] and "Read-only file system" in err[0], err


def test_a_stage_on_a_corrupted_store_is_one_line(tmp_path, capsys, no_ray):
    uri = _garbage_db(tmp_path)
    assert cli.stage_main(7, ["--quick", "--tracking-uri", uri, "--storage-path", str(tmp_path / "ray")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("is not a readable MLflow database (file is not a database)") and len(err.splitlines()) == 1


def test_an_unreachable_tracking_server_is_said_in_seconds(tmp_path):
    import os
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_HTTP_REQUEST")}
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "raysearch.cli", "pick", "--tracking-uri", f"http://127.0.0.1:{port}"],
                       capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert time.monotonic() - t0 < 60  # was 40-200 s of retries
    assert p.returncode == 2 and f"(tracking store http://127.0.0.1:{port})" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_a_second_search_with_the_same_name_is_refused_while_the_first_runs(tmp_path):
    """Two drivers of one search would log it twice: the second is refused in one line, before Ray."""
    from raysearch.search.driver import SearchRequest, run_search
    from raysearch.search.options import SearchOptions, Space
    from raysearch.search.runtime import SearchLock, search_state_path

    opts = SearchOptions.from_flags(storage_path=str(tmp_path / "ray"), tracking_uri=f"sqlite:///{tmp_path / 'm.db'}",
                         data="synthetic:30", name="twice")
    state = search_state_path(opts, "twice")
    first = SearchLock(state.with_name("driver.lock"), "twice")  # what the first driver holds while it runs
    try:
        with pytest.raises(ValueError, match=r"a search named 'twice' is already running \(pid \d+ on "):
            run_search(SearchRequest("stage7", Space({"a": [0.25]}, {"input_hw": 64}), opts, 1, name="twice"))
    finally:
        first.release()
    SearchLock(state.with_name("driver.lock"), "twice").release()  # free again once the first is done


def test_a_storage_without_working_room_is_refused_before_ray(tmp_path):
    from raysearch.search.runtime import check_writable

    check_writable(tmp_path, "--storage-path", min_free=1)
    with pytest.raises(ValueError, match=r"--storage-path .* has \d+ MiB free; a search needs at least"):
        check_writable(tmp_path, "--storage-path", min_free=2**62)  # more than any disk holds


# ---- bad data files: one line naming the file, exit 2 (was: a segfault, silent training, 2.5 GB) ----
def _png_header(w: int, h: int) -> bytes:
    """A PNG whose header claims w x h (no pixel data follows): enough for the size check."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + \
        chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def _folder_with(tiny_folder, kind):
    import os

    images = tiny_folder / "images"
    if kind == "non-utf8-name":
        for sub, ext in (("images", ".png"), ("labels", ".png")):
            src = tiny_folder / sub / f"s0{ext}"
            os.rename(src, os.path.join(os.fsencode(tiny_folder / sub), b"s\xff0" + ext.encode()))
        return "s\\xff0.png"
    if kind == "truncated-jpeg":
        import cv2

        img = cv2.imread(str(images / "s0.png"))
        (images / "s0.png").unlink()
        ok, buf = cv2.imencode(".jpg", img)
        (images / "s0.jpg").write_bytes(buf.tobytes()[: len(buf) // 2])
        return "s0.jpg: truncated JPEG"
    if kind == "huge":
        (images / "s0.png").write_bytes(_png_header(20000, 20000))
        return "s0.png: image is 20000x20000 (400 Mpixels); the limit is"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["non-utf8-name", "truncated-jpeg", "huge"])
def test_bad_image_files_are_named_not_crashed_on(tiny_folder, kind):
    from raysearch.data.folder import FolderSource
    from raysearch.data.sources import DataError

    says = _folder_with(tiny_folder, kind)
    source = FolderSource(tiny_folder)
    bad = source.stems.index(next(s for s in source.stems if s.startswith("s") and ("0" in s)))
    if kind == "non-utf8-name":  # a name that is not UTF-8 is a name like any other: it loads
        image, mask = source.load(bad)
        assert image.shape[:2] == mask.shape
        return
    with pytest.raises(DataError, match=says.replace("(", r"\(").replace(")", r"\)")):
        source.load(bad)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["non-utf8-name", "truncated-jpeg"])
def test_raysearch_train_on_bad_data(tiny_folder, tmp_path, kind):
    """`raysearch train` once segfaulted (exit 139) on a non-UTF-8 name and trained on a truncated JPEG."""
    import shutil
    import subprocess
    import sys

    data = tmp_path / "data"  # the split layout: train (with the bad file), val, test
    for split in ("val", "test"):
        shutil.copytree(tiny_folder, data / split)
    says = _folder_with(tiny_folder, kind)
    shutil.copytree(tiny_folder, data / "train")
    p = subprocess.run([sys.executable, "-m", "raysearch.cli", "train", "--data", str(data), "--res", "64",
                        "--a", "0.125", "--epochs", "1", "--out", str(tmp_path / "out"), "--quiet"],
                       capture_output=True, text=True, timeout=600)
    if kind == "non-utf8-name":
        assert p.returncode == 0, p.stderr[-2000:]
    else:
        assert p.returncode == 2 and says in p.stderr and "Traceback" not in p.stderr, p.stderr[-2000:]
        assert "Premature end of JPEG" not in p.stderr


def test_a_state_file_that_cannot_be_written_does_not_keep_runs_open(tmp_path):
    """A full disk (here: a state folder that is a file) when the search closes its runs: the runs
    end KILLED all the same (the state write came first and raised, leaving the parent RUNNING)."""
    from raysearch.tracking.callback import SearchTracker

    client = MlflowClient(f"sqlite:///{tmp_path / 'm.db'}")
    exp = client.create_experiment("x")
    parent = client.create_run(exp).info.run_id
    child = client.create_run(exp, tags={"mlflow.parentRunId": parent}).info.run_id
    blocked = tmp_path / "state"
    blocked.write_text("a file where the state folder should be")
    tracker = SearchTracker(f"sqlite:///{tmp_path / 'm.db'}", exp, parent, "stage7", blocked / "state.json",
                            lambda c: None, None)
    tracker.state.runs = {"trial-1": child}
    tracker.close("KILLED")  # must not raise
    assert client.get_run(child).info.status == "KILLED"
