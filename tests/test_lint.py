"""The linter CI runs: ruff with the rules of pyproject.toml ([tool.ruff]) over the code, the
benchmarks and the tests."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO


def test_ruff_finds_nothing():
    beside = Path(sys.executable).with_name("ruff")  # the virtual environment's, first
    ruff = str(beside) if beside.exists() else shutil.which("ruff")
    if ruff is None:
        pytest.fail("ruff is not installed: pip install -e '.[test]' installs it")
    p = subprocess.run([ruff, "check", "raysearch", "benchd", "benchmarks", "tests"], cwd=REPO, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
