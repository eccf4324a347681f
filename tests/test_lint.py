"""The linter and the type checker CI runs: ruff with the rules of pyproject.toml ([tool.ruff])
over the code, the benchmarks and the tests; mypy over what [tool.mypy] lists."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO


def _tool(name: str) -> str:
    beside = Path(sys.executable).with_name(name)  # the virtual environment's, first
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: pip install -e '.[test]' installs it")
    return found


def test_ruff_finds_nothing():
    p = subprocess.run([_tool("ruff"), "check", "raysearch", "benchd", "benchmarks", "tests"], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]


@pytest.mark.slow
def test_mypy_finds_nothing():
    p = subprocess.run([_tool("mypy")], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
