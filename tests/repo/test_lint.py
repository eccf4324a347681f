"""The linter and the type checker CI runs: ruff with the rules of pyproject.toml ([tool.ruff])
over the code, the benchmarks and the tests; mypy over what [tool.mypy] lists."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO


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


# Strings that equal a name of `raysearch.records.names` by coincidence: fields of other formats
# (checkpoints, the replay's tables, state files, JSON outputs) or other words.
# Keyed by file: a new literal of a name anywhere else fails the test below.
_NOT_OUR_NAMES = {
    ("raysearch/optimize/driver.py", "device_class"): "a field of the optimization's identity document",
    ("raysearch/records/pareto.py", "hypervolume"): "a function's name in __all__",
    ("raysearch/records/results.py", "stage"): "a field of TrialRow's --json output",
    ("raysearch/records/results.py", "device_class"): "a field of TrialRow's --json output",
    ("raysearch/results.py", "device_class"): "a column of the trials DataFrame (TrialRow's field)",
    ("raysearch/results.py", "device_name"): "a column of the trials DataFrame (TrialRow's field)",
    ("raysearch/results.py", "stage"): "a column of the trials DataFrame (TrialRow's field)",
    ("raysearch/reporting/tables.py", "stage"): "a column of the CSV table (TrialRow's field)",
    ("raysearch/replay/compare.py", "duplicate"): "the simulator's trial outcome",
    ("raysearch/replay/simulator.py", "duplicate"): "the simulator's trial outcome",
    ("raysearch/replay/simulator.py", "epoch"): "a field of the replayed trainable's report",
    ("raysearch/replay/table.py", "latency_ms"): "a field of the table format",
    ("raysearch/replay/table.py", "val_iou"): "a field of the table format",
    ("raysearch/replay/table.py", "val_loss"): "a field of the table format",
    ("raysearch/search/latency.py", "device_class"): "a field of the latency cache's key",
    ("raysearch/search/trial.py", "final"): "a folder of the trial",
    ("raysearch/tracking/runs.py", "epochs_spent"): "a field of the search's state file",
    ("raysearch/training/evaluate.py", "raysearch.spec"): "the ONNX metadata key of the spec",
    ("raysearch/training/train.py", "stopped_early"): "TrainResult's summary field",
    ("raysearch/training/train.py", "epoch"): "a field of the checkpoint files",
    ("raysearch/training/train.py", "val_loss"): "a field of the checkpoint files",
}


def _names() -> dict[str, str]:
    from raysearch.records import names

    out = {}
    for key, value in vars(names).items():
        if key.isupper() and isinstance(value, str):
            out[value] = key
        elif isinstance(value, names.Objective):
            out[value.name] = key
    out.update({metric: "LATENCY_PRECISION" for metric in names.LATENCY_PRECISION})
    return out


def _name_literals(names: dict[str, str]) -> set[tuple[str, str]]:
    """(file, value) of every string constant in raysearch (not a docstring, not part of an
    f-string) that equals one of ``names``, outside the names module."""
    import ast

    found = set()
    for path in sorted((REPO / "raysearch").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        if rel == "raysearch/records/names.py":
            continue
        tree = ast.parse(path.read_text())
        skip = {id(v) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for v in node.values}
        skip |= {id(node.body[0].value) for node in ast.walk(tree)
                 if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                 and node.body and isinstance(node.body[0], ast.Expr)}
        found |= {(rel, node.value) for node in ast.walk(tree) if isinstance(node, ast.Constant)
                  and isinstance(node.value, str) and node.value in names and id(node) not in skip}
    return found


def test_metric_tag_and_file_names_are_written_only_in_the_names_module():
    names = _names()
    assert {"model.onnx", "best.pt", "iou", "latency_ms", "raysearch.search"} <= set(names)  # what it scans for
    found = _name_literals(names)
    stray = sorted(found - set(_NOT_OUR_NAMES))
    assert not stray, "use raysearch.records.names instead of these literals: " + ", ".join(
        f"{f}: {v!r} ({names[v]})" for f, v in stray)
    assert not set(_NOT_OUR_NAMES) - found, "allowed literals no longer there: " + str(set(_NOT_OUR_NAMES) - found)


def test_the_names_check_finds_a_literal(tmp_path, monkeypatch):
    """The scan above is not vacuous: a module writing "model.onnx" is found."""
    from tests import helpers

    fake = tmp_path / "raysearch" / "x.py"
    fake.parent.mkdir()
    fake.write_text('"""doc: model.onnx"""\nPATH = "model.onnx"\nNOTE = f"model.onnx {PATH}"\n')
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    assert helpers.REPO != tmp_path
    assert _name_literals(_names()) == {("raysearch/x.py", "model.onnx")}


def _test_imports(root: Path) -> list[str]:
    """``file: module`` for each import of a test module or of conftest under ``root``."""
    import ast

    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                mods = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            else:
                continue
            found += [f"{path.relative_to(root)}: {m}" for m in mods
                      if m.rsplit(".", 1)[-1].startswith("test_") or m.rsplit(".", 1)[-1] == "conftest"]
    return found


def test_no_test_module_imports_another(tmp_path):
    """What tests share lives in tests/helpers: a test module imported by another would also run
    its tests (and hide what depends on what)."""
    assert _test_imports(REPO / "tests") == []
    (tmp_path / "test_a.py").write_text("from tests.cli.test_cli import run\nimport conftest\n")
    assert _test_imports(tmp_path) == ["test_a.py: tests.cli.test_cli", "test_a.py: conftest"]


_METHOD_NAME_TEST = r"\b(sampler|scheduler)\b\s*(==|!=|not in|in)\s*[(\"']"


def test_no_code_compares_a_method_name_outside_the_methods_table():
    """What a sampler or scheduler does is asked of `raysearch.search.methods`'s table (issue 34):
    a string comparison on ``sampler`` or ``scheduler`` anywhere else is a second table."""
    import re

    found = [f"{p.relative_to(REPO)}:{n}: {line.strip()}" for p in sorted((REPO / "raysearch").rglob("*.py"))
             if p.name != "methods.py" or p.parent.name != "search"
             for n, line in enumerate(p.read_text().splitlines(), 1) if re.search(_METHOD_NAME_TEST, line)]
    # the one left: MLflow's params of a finished search, read by tracking (below search in the layers)
    assert found == ["raysearch/tracking/ui.py:169: if scheduler not in (\"none\", \"front\", \"?\"):"], found
    assert re.search(_METHOD_NAME_TEST, 'if opts.schedule.sampler == "gp":')  # the check finds one
