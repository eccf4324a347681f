"""Every command in README.md is either RUN for real or CHECKED against the real program, so the
docs cannot drift from the code.

Which fenced blocks hold commands (explicit, so a new block has to be classified):

* ```bash and ```sh blocks: every line is a command (lines ending in ``\\`` are joined,
  ``# comments`` dropped, ``VAR=value`` prefixes taken as environment, ``&&``/``|``/``;``
  split a line into several commands);
* ```text, ```python and ```yaml blocks: not commands (layouts, output, synopses, config);
  ```text blocks that start with ``benchd `` are a synopsis, whose flags are checked against
  benchd's parser (``test_benchd_synopsis``);
* any other fence (also one without a language) makes ``test_every_block_is_classified`` fail.

What happens to a command:

* RUN (the table ``RUN`` below, by exact command text): cheap, safe commands that need no
  network and no root. ``cwd="world"`` runs in a temp folder holding what the README assumes
  there: ``data/mine`` (a small dataset in the unsplit layout) and ``runs/mlflow.db`` (an MLflow
  store seeded with one finished search in the layout the search writes; the real search is
  tested in test_search.py). ``cwd="repo"`` runs in the repository root (read-only commands).
* CHECKED (``check_command``, by program): not run; the program must exist and the real argument
  parser must accept the arguments:

  | program                                    | check                                                   |
  |--------------------------------------------|---------------------------------------------------------|
  | ``raysearch SUB ...``                      | ``raysearch.cli.build_parser().parse_args``              |
  | ``python raysearch/stageN.py ...``         | ``raysearch.cli.build_stage_parser(N).parse_args``       |
  | ``python benchmarks/NAME.py ...``          | the script exists; every ``--flag`` is in its ``--help`` |
  | ``benchd ...``                             | ``benchd.cli._parser().parse_args``                      |
  | ``ray ...``, ``mlflow ...``                | the click command resolved and its arguments parsed     |
  |                                            | (``make_context``), every ``--flag`` in its ``--help``  |
  | ``bash scripts/quickstart.sh ARGS``        | script exists; ARGS parsed by stage 7's parser          |
  | ``bash scripts/test.sh ARGS``              | script exists (ARGS go to pytest)                       |
  | ``bash benchmarks/gpu_check.sh [DEST]``    | script exists; at most one argument                     |
  | ``sudo bash clusters/setup_pi.sh ARGS``    | run with ``--dry-run`` added (the script's own parser)  |
  | ``sudo`` + system administration programs | only that every repository file named exists            |
  | ``export VAR=value``                       | only assignments                                        |
  | ``prometheus --flag=...``                  | every flag in ``prometheus --help`` (skips without it)  |

  Every command, run or checked, must name only repository files that exist.
* Anything else fails: a new README command has to be added to ``RUN`` or to ``check_command``.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import REPO

README = REPO / "README.md"
COMMAND_LANGS = {"bash", "sh"}
OTHER_LANGS = {"text", "python", "yaml"}
BIN = Path(sys.executable).parent
ENV = {**{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"},
       "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "RAY_USAGE_STATS_ENABLED": "0",
       "NO_ALBUMENTATIONS_UPDATE": "1", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
# Arguments starting with one of these are files of this repository and must exist.
REPO_DIRS = ("clusters/", "scripts/", "dashboards/", "raysearch/", "benchd/", "tests/", "docs/", "protos/")


@dataclass(frozen=True)
class Run:
    cwd: str = "world"  # "world" (temp folder with data/mine and a seeded runs/mlflow.db) or "repo"
    ok: tuple[int, ...] = (0,)  # accepted exit statuses
    creates: str | None = None  # a file the command must leave behind (relative to cwd)
    slow: bool = False
    needs: str | None = None  # a program that must be installed (else the case skips)


# The README commands that are RUN, by their exact text (continuation lines joined, comment dropped).
RUN: dict[str, Run] = {
    "raysearch summary --a 0.125 --t 2 --r 1 --pp 0 --res 512": Run(),
    "raysearch synth data/synth --n 400 --seed 0": Run(creates="data/synth/test/labels", slow=True),
    "raysearch pick --max-latency-ms 33 --min-iou 0.95 --device-class rpi4": Run(ok=(0, 1)),  # 1: nothing qualifies
    "raysearch report --max-latency-ms 33 --min-iou 0.95 --out report.html": Run(creates="report.html"),
    "raysearch train --data data/mine --a 0.125 --t 2 --r 1 --pp 0 --res 64 --epochs 1 --out runs/check":
        Run(creates="runs/check/model.onnx"),
    "raysearch export --a 0.125 --t 2 --r 1 --pp 0 --res 128 --out model.onnx": Run(creates="model.onnx"),
    "bash clusters/setup_pi.sh --device-class rpi4 --dry-run": Run(cwd="repo"),
    "promtool check config dashboards/prometheus.yml": Run(cwd="repo", needs="promtool"),
}

# What `sudo` may precede without being run: system administration; only repo files are checked.
SYSADMIN = {"useradd", "python3", "/opt/benchd/venv/bin/pip", "cp", "systemctl", "ufw", "tee", "mkdir",
            "chown", "chmod", "journalctl"}


# ---- extraction ----------------------------------------------------------------------------------
FENCE = re.compile(r"^(\s*)```(.*?)\s*$")


@dataclass(frozen=True)
class Block:
    lang: str
    line: int  # 1-based line of the opening fence
    lines: tuple[str, ...]


def blocks(text: str) -> list[Block]:
    out, open_, buf = [], None, []
    for n, raw in enumerate(text.splitlines(), 1):
        m = FENCE.match(raw)
        if m and open_ is None:
            open_, buf = (m.group(2).strip(), n, len(m.group(1))), []
        elif m and open_ is not None:
            lang, start, indent = open_
            out.append(Block(lang, start, tuple(line[indent:] if line[:indent].isspace() else line.lstrip() for line in buf)))
            open_ = None
        elif open_ is not None:
            buf.append(raw)
    assert open_ is None, f"README.md: the block opened at line {open_[1]} is never closed"
    return out


@dataclass(frozen=True)
class Command:
    line: int
    text: str  # normalized: continuation lines joined, comment dropped, single spaces
    env: tuple[tuple[str, str], ...]
    argv: tuple[str, ...]

    @property
    def id(self) -> str:
        short = self.text if len(self.text) <= 70 else self.text[:67] + "..."
        return f"L{self.line}: {short}"


def commands(text: str) -> list[Command]:
    out = []
    for b in blocks(text):
        if b.lang not in COMMAND_LANGS:
            continue
        logical: list[tuple[int, str]] = []
        pending, start = "", 0
        for i, raw in enumerate(b.lines):
            line = raw.rstrip()
            if not pending:
                start = b.line + 1 + i
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            logical.append((start, pending + line))
            pending = ""
        assert not pending, f"README.md line {start}: a continuation line ends the block"
        for n, line in logical:
            tokens = shlex.split(line, comments=True)
            if not tokens:
                continue
            # one line may hold several commands
            parts: list[list[str]] = [[]]
            for t in tokens:
                if t in ("&&", "||", ";", "|"):
                    parts.append([])
                else:
                    parts[-1].append(t)
            for part in parts:
                env = []
                while part and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", part[0]):
                    k, _, v = part.pop(0).partition("=")
                    env.append((k, v))
                assert part, f"README.md line {n}: an assignment without a command"
                out.append(Command(n, " ".join([*(f"{k}={v}" for k, v in env), *part]), tuple(env), tuple(part)))
    return out


TEXT = README.read_text()
COMMANDS = commands(TEXT)


# ---- the checks ----------------------------------------------------------------------------------
def test_every_block_is_classified():
    unknown = [f"line {b.line}: ```{b.lang}" for b in blocks(TEXT) if b.lang not in COMMAND_LANGS | OTHER_LANGS]
    assert not unknown, ("README.md: fenced blocks of no known kind (use ```bash for commands, ```text for "
                         f"output/layouts, ```python/```yaml for code): {unknown}")


def test_run_table_matches_the_readme():
    texts = {c.text for c in COMMANDS}
    stale = [t for t in RUN if t not in texts]
    assert not stale, f"tests/repo/test_readme.py RUN names commands the README no longer has: {stale}"


def test_extraction_sees_the_commands():
    assert len(COMMANDS) >= 30
    progs = {c.argv[0] for c in COMMANDS}
    assert {"raysearch", "python", "benchd", "ray", "mlflow", "bash", "sudo"} <= progs


def repo_files_named(argv) -> list[str]:
    """Arguments (or --flag=value values) that name a file of this repository and do not exist."""
    missing = []
    for a in argv:
        a = a.split("=", 1)[1] if a.startswith("-") and "=" in a else a
        if a.startswith(REPO_DIRS) and not (REPO / a).exists():
            missing.append(a)
    return missing


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """The folder the README's `cwd="world"` commands run in."""
    root = tmp_path_factory.mktemp("readme")
    _write_dataset(root / "data" / "mine")
    _seed_mlflow(root / "runs")
    return root


def _write_dataset(root: Path, n: int = 40) -> None:
    import cv2
    import numpy as np

    from raysearch.data import open_split

    rng = np.random.default_rng(0)
    for d in ("images", "labels"):
        (root / d).mkdir(parents=True)
    for i in range(n):
        img = rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)
        mask = np.zeros((96, 128), np.uint8)
        mask[20 + i % 7:70, 30:100 - i % 5] = 255
        cv2.imwrite(str(root / "images" / f"img_{i:03d}.jpg"), img)
        cv2.imwrite(str(root / "labels" / f"img_{i:03d}.png"), mask)
    assert all(len(open_split(root, s)) for s in ("train", "val", "test"))


def _seed_mlflow(runs: Path) -> None:
    """One finished search as the search logs it (parent run tagged raysearch.search.driver, children
    with the spec as params, iou/latency_ms metrics, model.onnx and overlays as artifacts)."""
    import cv2
    import numpy as np
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    from raysearch.models import ModelSpec

    runs.mkdir(parents=True)
    client = MlflowClient(f"sqlite:///{runs / 'mlflow.db'}")
    exp = client.create_experiment("raysearch", artifact_location=(runs / "mlartifacts").as_uri())
    parent = client.create_run(exp, run_name="stage2-grid-readme",
                               tags={"raysearch.search": "stage2-grid-readme", "stage": "stage2", "mode": "grid"})
    pid = parent.info.run_id
    art = runs.parent / "artifact-src"
    (art / "overlays").mkdir(parents=True)
    cv2.imwrite(str(art / "overlays" / "0.png"), np.zeros((16, 16, 3), np.uint8))
    (art / "model.onnx").write_bytes(b"not a real model: pick only returns its path")
    for res, iou, lat in ((64, 0.93, 4.0), (96, 0.96, 9.0)):
        kid = client.create_run(exp, run_name=f"fastscnn-a0.125-t2-r1-pp0-{res}x{res}-c3",
                                tags={"mlflow.parentRunId": pid, "stage": "stage2", "device_name": "local-benchd",
                                      "pruned_by_latency": "false", "stopped_early": "false"})
        kid_id = kid.info.run_id
        params = ModelSpec(a=0.125, t=2, r=1, pp=0, input_hw=res).to_params()
        client.log_batch(kid_id, metrics=[Metric(k, v, 0, 0) for k, v in
                                          dict(iou=iou, latency_ms=lat, fps=1000 / lat, params_total=4519,
                                               macs=1e6).items()],
                         params=[Param(k, str(v)) for k, v in params.items()],
                         tags=[RunTag("pareto_optimal", "true")])
        client.log_artifact(kid_id, str(art / "model.onnx"))
        client.log_artifacts(kid_id, str(art / "overlays"), "overlays")
        client.set_terminated(kid_id, "FINISHED")
    client.set_terminated(pid, "FINISHED")


def run_command(cmd: Command, spec: Run, world: Path) -> None:
    if spec.needs and not shutil.which(spec.needs, path=ENV["PATH"]):
        pytest.skip(f"{spec.needs} is not installed")
    cwd = REPO if spec.cwd == "repo" else world
    p = subprocess.run(list(cmd.argv), cwd=cwd, env={**ENV, **dict(cmd.env)}, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode in spec.ok, (f"README line {cmd.line}: `{cmd.text}` exited {p.returncode} (accepted: "
                                     f"{spec.ok})\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    if spec.creates:
        assert (cwd / spec.creates).exists(), f"README line {cmd.line}: `{cmd.text}` did not write {spec.creates}"


# ---- checkers by program -------------------------------------------------------------------------
def _strict(parser) -> None:
    """No abbreviated flags: the README must spell every flag out (argparse would accept --num-sample)."""
    parser.allow_abbrev = False
    for a in parser._actions:
        if a.__class__.__name__ == "_SubParsersAction":
            for sub in a.choices.values():
                _strict(sub)


def parse_argparse(parser, args, what: str) -> None:
    import contextlib
    import io

    _strict(parser)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            parser.parse_args(list(args))
    except SystemExit as e:
        pytest.fail(f"{what}: the parser refuses {list(args)} (exit {e.code}): {err.getvalue().strip()}")


def check_raysearch(args) -> None:
    from raysearch.cli import build_parser

    parser = build_parser()
    subs = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices
    if args and args[0] == "optimize" and "optimize" not in subs:
        pytest.skip("`raysearch optimize` is not there yet")
    assert args and args[0] in subs, f"raysearch has no subcommand {args[:1]}; it has {sorted(subs)}"
    parse_argparse(parser, args, "raysearch")


def check_benchmark(script: str, rest: list[str]) -> None:
    """A benchmark script: it exists, and every --flag given is one its --help lists."""
    assert (REPO / script).is_file(), f"`python {script}`: no such file"
    helped = subprocess.run([sys.executable, str(REPO / script), "--help"], capture_output=True, text=True,
                            timeout=120, cwd=REPO)
    assert helped.returncode == 0, helped.stderr
    for flag in (a.split("=")[0] for a in rest if a.startswith("--")):
        assert re.search(rf"(^|\s){re.escape(flag)}\b", helped.stdout), f"`python {script}`: {flag} is not in its --help"


def check_stage(args) -> None:
    from raysearch.cli import build_stage_parser as build_parser

    script, *rest = args
    if script.startswith("benchmarks/"):
        check_benchmark(script, rest)
        return
    m = re.fullmatch(r"raysearch/stage([1-7])\.py", script)
    assert m, f"`python {script}`: only raysearch/stage1.py .. stage7.py are known"
    assert (REPO / script).is_file()
    parse_argparse(build_parser(int(m.group(1))), rest, f"python {script}")


def check_benchd(args) -> None:
    from benchd.cli import _parser

    parse_argparse(_parser(), args, "benchd")


@functools.cache
def _click_root(prog: str):
    if prog == "ray":
        from ray.scripts.scripts import cli
    else:
        from mlflow.cli import cli
    return cli


def check_click(prog: str, args) -> None:
    """Resolve the click (sub)command and parse the arguments, as the program would before running;
    then every --flag used must also be in that command's --help."""
    import click

    root = _click_root(prog)
    cmd, parent, name, rest = root, None, prog, list(args)
    try:
        while isinstance(cmd, click.Group):  # walk down to the subcommand, as click does
            parent = click.Context(cmd, info_name=name, parent=parent)
            assert rest, f"`{prog}`: a subcommand is missing"
            sub = cmd.get_command(parent, rest[0])
            assert sub is not None, f"`{prog}` has no subcommand {rest[0]!r}"
            cmd, name, rest = sub, rest[0], rest[1:]
        ctx = cmd.make_context(name, rest, parent=parent)  # parses (and validates) without running
    except click.ClickException as e:
        pytest.fail(f"`{prog} ... {name}` refuses {list(args)}: {e.format_message()}")
    help_text = cmd.get_help(ctx)
    before_entrypoint = list(args)[: list(args).index("--")] if "--" in args else list(args)
    for a in before_entrypoint:
        if a.startswith("--"):
            assert a.split("=")[0] in help_text, f"`{prog} {name} --help` does not list {a}"
    # what follows `ray job submit ... --` is a command of its own
    if prog == "ray" and "--" in args:
        check_command_argv(list(args)[list(args).index("--") + 1:], {})


def check_bash(args) -> None:
    script, *rest = args
    assert (REPO / script).is_file(), f"bash {script}: no such file"
    if script == "scripts/quickstart.sh":  # its arguments go to stage 7
        from raysearch.cli import build_stage_parser as build_parser

        parse_argparse(build_parser(7), ["--quick", *rest], "scripts/quickstart.sh (stage 7)")
    elif script == "scripts/test.sh":
        pass  # its arguments go to pytest
    elif script == "benchmarks/gpu_check.sh":  # one optional argument: where its figures go
        assert len(rest) <= 1, f"bash {script} {' '.join(rest)}: takes at most one argument (DEST)"
    elif script == "clusters/setup_pi.sh":  # the script's own parser, changing nothing
        argv = ["bash", script, *rest] + ([] if "--dry-run" in rest else ["--dry-run"])
        p = subprocess.run(argv, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, f"{' '.join(argv)} exited {p.returncode}: {p.stderr[-2000:]}"
    else:
        pytest.fail(f"bash {script}: not a script this test knows how to check")


def check_sudo(args) -> None:
    prog, *rest = args
    if prog == "bash":
        check_bash(rest)
    else:
        assert prog in SYSADMIN, f"sudo {prog}: not a known system administration command"


def check_prometheus(args) -> None:
    exe = shutil.which("prometheus", path=ENV["PATH"])
    if not exe:
        pytest.skip("prometheus is not installed (apt-get install prometheus)")
    help_text = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    text = help_text.stdout + help_text.stderr
    for a in args:
        assert a.startswith("--") and a.split("=")[0] in text, f"`prometheus --help` does not list {a}"


def check_command_argv(argv, env) -> None:
    prog, *args = argv
    if prog == "raysearch":
        check_raysearch(args)
    elif prog == "python":
        check_stage(args)
    elif prog == "benchd":
        check_benchd(args)
    elif prog in ("ray", "mlflow"):
        check_click(prog, args)
    elif prog == "bash":
        check_bash(args)
    elif prog == "sudo":
        check_sudo(args)
    elif prog == "export":
        assert args and all(re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", a) for a in args), f"export {args}"
    elif prog == "prometheus":
        check_prometheus(args)
    else:
        pytest.fail(f"README command `{' '.join(argv)}`: this test does not know `{prog}`; add it to RUN "
                    f"or to check_command_argv in tests/repo/test_readme.py")


def _case(c: Command):
    spec = RUN.get(c.text)
    marks = [pytest.mark.slow] if spec and spec.slow else []
    return pytest.param(c, id=c.id, marks=marks)


@pytest.mark.parametrize("cmd", [_case(c) for c in COMMANDS])
def test_readme_command(cmd: Command, request):
    missing = repo_files_named(cmd.argv)
    assert not missing, f"README line {cmd.line}: `{cmd.text}` names files that do not exist: {missing}"
    spec = RUN.get(cmd.text)
    if spec:
        run_command(cmd, spec, request.getfixturevalue("world"))
    else:
        check_command_argv(list(cmd.argv), dict(cmd.env))


# ---- the benchd synopsis (a ```text block) -------------------------------------------------------
def _benchd_synopsis() -> list[tuple[int, list[str], list[str]]]:
    """(line, subcommand path, flags) of each `benchd SUB ...` entry of the ```text synopsis blocks."""
    out: list[tuple[int, list[str], list[str]]] = []
    for b in blocks(TEXT):
        if b.lang != "text" or not b.lines or not b.lines[0].startswith("benchd "):
            continue
        for i, line in enumerate(b.lines):
            code = line.split("#", 1)[0]
            if code.startswith("benchd "):
                words = code.split()
                path = [w for w in words[1:3] if re.fullmatch(r"[a-z]+", w)]
                out.append((b.line + 1 + i, path, []))
            out[-1][2].extend(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", code))
    return out


def test_benchd_synopsis():
    from benchd.cli import _parser

    entries = _benchd_synopsis()
    assert len(entries) >= 4, "the README's benchd synopsis is gone"
    for line, path, flags in entries:
        parser = _parser()
        for word in path:
            subs = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices
            if word not in subs:
                break
            parser = subs[word]
        known = set(parser._option_string_actions)
        unknown = [f for f in flags if f not in known]
        assert not unknown, f"README line {line}: `benchd {' '.join(path)}` has no {unknown}"
