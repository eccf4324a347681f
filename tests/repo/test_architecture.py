"""docs/ARCHITECTURE.md stays true: every file or folder it names exists, every `raysearch X` /
`benchd X` command it names is one, and every class or function it names is defined (the check
that fails when a module, command or piece it describes disappears)."""

from __future__ import annotations

import re

from tests.helpers import REPO

DOC = REPO / "docs" / "ARCHITECTURE.md"
ROOTS = ("raysearch/", "benchd/", "tests/", "scripts/", "benchmarks/", "protos/", "docs/", "clusters/", "dashboards/")
#: backticked words that are not our definitions: gRPC methods (the proto's), Ray Tune's and
#: MLflow's names, values and settings
NOT_OURS = {"HasModel", "UploadModel", "Benchmark", "Predict", "GetInfo", "GetStatus", "OptunaSearch", "Tuner",
            "FAILED_PRECONDITION", "UNAVAILABLE", "target_rel_ci", "min_duration_s", "max_duration_s",
            "pi_emulated"}


def _ticked() -> list[str]:
    return re.findall(r"`([^`\n]+)`", DOC.read_text())


def test_every_path_it_names_exists():
    ticked = _ticked()
    paths = [t for t in ticked if t.startswith(ROOTS) and " " not in t and "<" not in t]
    assert len(paths) > 40  # what it checks
    missing = [p for p in paths if not list(REPO.glob(p.rstrip("/")))]
    # a module named by its file alone (in its package's row): some module of ours has that name
    ours = {p.name for root in ("raysearch", "benchd") for p in (REPO / root).rglob("*.py")}
    missing += [t for t in ticked if re.fullmatch(r"\w+\.py", t) and t not in ours]
    assert not missing, f"docs/ARCHITECTURE.md names what is gone: {missing}"


def test_every_command_it_names_is_one():
    from raysearch.cli.main import build_parser as raysearch_parser

    sub = {"raysearch": _commands(raysearch_parser())}
    from benchd.cli import _parser as benchd_parser

    sub["benchd"] = _commands(benchd_parser())
    named = [t.split()[:2] for t in _ticked() if t.split()[0] in sub and len(t.split()) > 1]
    assert named and all(cmd in sub[prog] for prog, cmd in named), (named, sub)


def _commands(parser) -> set[str]:
    import argparse

    return {name for a in parser._actions if isinstance(a, argparse._SubParsersAction) for name in a.choices}


def test_every_class_and_function_it_names_is_defined():
    code = "\n".join(p.read_text() for root in ("raysearch", "benchd") for p in (REPO / root).rglob("*.py"))
    defined = set(re.findall(r"^\s*(?:def|class)\s+(\w+)", code, flags=re.M))
    names = [t.split("(")[0] for t in _ticked() if re.fullmatch(r"[A-Za-z_][\w.]*(\(.*\).*)?", t)]
    ours = [n for n in names if n not in NOT_OURS and ("_" in n or n[:1].isupper()) and "/" not in n
            and not n.isupper() and not n.startswith("--") and not n.endswith(".py")]
    assert len(ours) > 15  # what it checks
    missing = sorted({n for n in ours if n.split(".")[-1] not in defined})
    assert not missing, f"docs/ARCHITECTURE.md names what is not defined: {missing}"
