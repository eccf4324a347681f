"""`benchmarks/gpu_check.sh`, the script that checks the GPU path once on a GPU machine, runs its
steps end to end here at a tiny scale on the CPU (GPU_CHECK_DRY=1): what comes back is the
summary with one line per step, the training figures and the search read back from MLflow."""

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.helpers import REPO


@pytest.mark.slow
def test_gpu_check_runs_its_steps_on_the_cpu(tmp_path: Path) -> None:
    dest = tmp_path / "gpu_check"
    env = {**os.environ, "GPU_CHECK_DRY": "1", "PYTHON": sys.executable, "GPU_CHECK_LIMIT_S": "400"}
    p = subprocess.run(["bash", "benchmarks/gpu_check.sh", str(dest)], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=480)
    summary = (dest / "summary.txt").read_text()
    assert p.returncode == 0, summary + p.stderr[-2000:]
    for step in ("machine", "gpu_tests", "train", "search_gpus_0", "search_summary"):
        assert f"{step}: rc=0" in summary, summary
    train = json.loads((dest / "gpu_train.json").read_text())
    assert [r["amp"] for r in train["runs"]] == [False, True] and train["device"] == "cpu"
    for r in train["runs"]:
        assert r["epochs"] == 2 and r["train_images"] == 16 and r["export_max_abs_diff"] <= 1e-4
        assert 0 <= r["test_iou_p0.5"] <= 1
    search = json.loads((dest / "gpu_search.json").read_text())["0"]
    assert search["status"] == "FINISHED" and search["trials"] == search["finished"] == 3  # 3 models x 1 size
    with tarfile.open(dest / "logs.tgz") as tar:
        assert {"./train.log", "./search_gpus_0.log", "./summary.txt"} <= set(tar.getnames())
