"""The replay of our own search on recorded tables: the table reader, the simulated cluster with
the product's searchers and schedulers on hand-computed cases, the statistics, and
`raysearch replay` end to end."""

from __future__ import annotations

import gzip
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from raysearch.replay.compare import p_greater, standard_error
from raysearch.replay.methods import (
    BASELINE,
    DEFAULT_METHODS,
    METHOD_GROUPS,
    METHOD_KEYS,
    METHODS,
    SECONDS_PER_SEED,
    SLOW_METHODS,
    SLOW_SECONDS,
    estimate_seconds,
    is_slow,
    select,
)
from raysearch.replay.simulator import grid_hypervolume, simulate
from raysearch.replay.table import TableError, load
from raysearch.search.options import SearchOptions
from raysearch.search.scheduler import FRONT_MIN_FINISHED
from tests.helpers.replay_tables import make_table


def _two_models(tmp_path, slow_curve=(0.9, 0.95), fast_curve=(0.5, 0.6)):
    """slow: a=0.25, 10 ms, accurate; fast: a=0.125, 1 ms, less accurate (2 epochs, one seed)."""
    return load(make_table(tmp_path / "t.jsonl", {
        "slow": ({"a": 0.25, "input_hw": 64}, 10.0, [list(slow_curve)], [slow_curve[-1]]),
        "fast": ({"a": 0.125, "input_hw": 64}, 1.0, [list(fast_curve)], [fast_curve[-1]]),
    }, epochs=2))


def _outcomes(replay) -> dict[str, tuple[str, int]]:
    return {t.config: (t.outcome, t.epochs) for t in replay.trials}


def test_asha_on_iou_stops_the_fast_model_that_pareto_asha_keeps(tmp_path):
    # 2 epochs, grace 1, factor 3: one rung, at epoch 1. The slow model reaches it first (IoU 0.9);
    # then the fast one (0.5): ASHA's cutoff is the 67th percentile of {0.9, 0.5} = 0.767 > 0.5, so
    # it stops; on (IoU, latency) both are on the front, the top ceil(2/3) = 1 place is a tie at
    # the front's ends and goes to the arriving trial, so Pareto-ASHA keeps it.
    table = _two_models(tmp_path)
    order = [{"a": 0.25}, {"a": 0.125}]
    opts = dict(mode="search", sampler="random", num_samples=2, seed=0)
    asha = simulate(table, SearchOptions.from_flags(scheduler="asha", **opts), workers=1, first=order)
    assert _outcomes(asha) == {"slow": ("finished", 2), "fast": ("stopped", 1)}
    pareto = simulate(table, SearchOptions.from_flags(scheduler="pareto-asha", **opts), workers=1, first=order)
    assert _outcomes(pareto) == {"slow": ("finished", 2), "fast": ("finished", 2)}
    assert [t.config for t in pareto.trials] == ["slow", "fast"]


def test_pareto_asha_stops_a_dominated_model_at_its_first_rung(tmp_path):
    table = load(make_table(tmp_path / "t.jsonl", {
        "quick": ({"a": 0.125, "input_hw": 64}, 1.0, [[0.8, 0.85]], [0.85]),
        "good": ({"a": 0.25, "input_hw": 64}, 2.0, [[0.9, 0.92]], [0.92]),
        "bad": ({"a": 0.5, "input_hw": 64}, 3.0, [[0.5, 0.55]], [0.55]),  # slower and worse than both
    }, epochs=2))
    r = simulate(table, SearchOptions.from_flags(mode="search", sampler="random", scheduler="pareto-asha", num_samples=3),
                 workers=1, first=[{"a": 0.125}, {"a": 0.25}, {"a": 0.5}])
    # at rung 1 the third arrival is alone in front 1: outside the top ceil(3/3) = 1
    assert _outcomes(r) == {"quick": ("finished", 2), "good": ("finished", 2), "bad": ("stopped", 1)}
    assert r.epochs_spent == 5


def _front_plus_dominated(tmp_path):
    """fast (1 ms, 0.6), mid (2 ms, 0.8), wide (2.5 ms, 0.85), good (4 ms, 0.9) and best (5 ms, 0.92)
    form the front; dominated (3 ms, 0.5) is slower than mid and worse. Each gains 0.2 from its
    epoch-1 validation IoU to its final IoU."""
    return load(make_table(tmp_path / "t.jsonl", {
        "fast": ({"a": 0.125, "input_hw": 64}, 1.0, [[0.4, 0.5, 0.6]], [0.6]),
        "mid": ({"a": 0.25, "input_hw": 64}, 2.0, [[0.6, 0.7, 0.8]], [0.8]),
        "wide": ({"a": 0.5, "input_hw": 64}, 2.5, [[0.65, 0.75, 0.85]], [0.85]),
        "dominated": ({"a": 0.125, "input_hw": 128}, 3.0, [[0.3, 0.4, 0.5]], [0.5]),
        "good": ({"a": 0.25, "input_hw": 128}, 4.0, [[0.7, 0.8, 0.9]], [0.9]),
        "best": ({"a": 0.5, "input_hw": 128}, 5.0, [[0.72, 0.82, 0.92]], [0.92]),
    }, epochs=3))


def test_front_stopping_keeps_the_fast_model_and_stops_a_dominated_one_at_once(tmp_path):
    # after the first FRONT_MIN_FINISHED (4) trials finished, the most any gained from epoch 1 is
    # 0.2; dominated's 0.3 + 0.2 + 0.01 < 0.85 (wide's IoU, at 2.5 ms <= its 3 ms): stopped at
    # epoch 1. fast is first and nothing is faster: it is never cut for its IoU.
    assert FRONT_MIN_FINISHED == 4  # the order below finishes exactly that many before dominated
    table = _front_plus_dominated(tmp_path)
    order = [{"a": 0.125, "input_hw": 64}, {"a": 0.25, "input_hw": 64}, {"a": 0.5, "input_hw": 64},
             {"a": 0.25, "input_hw": 128}, {"a": 0.125, "input_hw": 128}, {"a": 0.5, "input_hw": 128}]
    for sampler in ("random", "latency-first"):
        r = simulate(table, SearchOptions.from_flags(mode="search", sampler=sampler, scheduler="front", num_samples=6),
                     workers=1, first=order)
        assert _outcomes(r) == {"fast": ("finished", 3), "mid": ("finished", 3), "wide": ("finished", 3),
                                "good": ("finished", 3), "best": ("finished", 3), "dominated": ("stopped", 1)}
        assert r.epochs_spent == 16 and r.share_at(16) == pytest.approx(1.0)


def test_latency_first_trains_each_configuration_once_fastest_first(tmp_path):
    table = _front_plus_dominated(tmp_path)
    r = simulate(table, SearchOptions.from_flags(mode="search", sampler="latency-first", scheduler="none", num_samples=40),
                 workers=2)
    assert sorted(t.config for t in r.trials) == ["best", "dominated", "fast", "good", "mid", "wide"]  # then FINISHED
    assert r.trials[0].config == "fast" and all(t.outcome == "finished" for t in r.trials)


def test_hypervolume_share_against_epochs_and_time(tmp_path):
    # box: IoU 0..1 x latency 0..4 ms (the slowest). X (1 ms, 0.5) covers 0.5 x 3 = 1.5; Y (2 ms,
    # 0.9) adds 0.4 x 2 = 0.8; Z sits on the box's edge and adds nothing: the grid's 2.3.
    table = load(make_table(tmp_path / "t.jsonl", {
        "X": ({"a": 0.125, "input_hw": 64}, 1.0, [[0.4, 0.5]], [0.5]),
        "Y": ({"a": 0.25, "input_hw": 64}, 2.0, [[0.8, 0.9]], [0.9]),
        "Z": ({"a": 0.5, "input_hw": 64}, 4.0, [[0.9, 0.95]], [0.95]),
    }, epochs=2, seconds=10.0, fixed_s=1.0))
    assert grid_hypervolume(table, "host") == pytest.approx(2.3)
    r = simulate(table, SearchOptions.from_flags(mode="search", sampler="random", scheduler="none", num_samples=3), workers=1,
                 first=[{"a": 0.125}, {"a": 0.25}, {"a": 0.5}])
    assert r.share_at(1.9) == 0.0  # nothing trained to the end yet
    assert r.share_at(2) == pytest.approx(1.5 / 2.3)
    assert r.share_at(4) == r.share_at(6) == pytest.approx(1.0)
    # each trial: 2 epochs of 10 s + 1 s to export and evaluate, one after the other
    assert r.share_at_time(20.9) == 0.0 and r.share_at_time(21) == pytest.approx(1.5 / 2.3)
    assert r.share_at_time(42) == pytest.approx(1.0)
    assert r.epochs_spent == 6 and r.seconds == pytest.approx(63.0)


def test_the_grid_reference_averages_over_training_seeds(tmp_path):
    # one configuration under the 2 ms box: seed 0 ends at 0.5, seed 1 at 0.7 -> (0.5 + 0.7) / 2 x 1 ms
    table = load(make_table(tmp_path / "t.jsonl", {
        "X": ({"a": 0.125, "input_hw": 64}, 1.0, [[0.5], [0.7]], [0.5, 0.7]),
        "Y": ({"a": 0.25, "input_hw": 64}, 2.0, [[0.9], [0.9]], [0.9, 0.9]),
    }, epochs=1))
    assert grid_hypervolume(table, "host") == pytest.approx(0.6)


def test_a_repeated_configuration_is_not_a_trial(tmp_path):
    # the sampler proposes fast twice: the repeat is told fast's result and the sampler asked again;
    # the 2-configuration space is then exhausted, so --num-samples 3 runs 2 trials
    table = _two_models(tmp_path)
    r = simulate(table, SearchOptions.from_flags(mode="search", sampler="random", scheduler="none", num_samples=3), workers=1,
                 first=[{"a": 0.125}, {"a": 0.125}, {"a": 0.25}])
    assert [(t.config, t.outcome, t.epochs) for t in r.trials] == [("fast", "finished", 2), ("slow", "finished", 2)]
    assert r.repeat_proposals == 1


def test_latency_budget_prunes_before_training(tmp_path):
    table = _two_models(tmp_path)
    r = simulate(table, SearchOptions.from_flags(mode="search", sampler="random", scheduler="none", num_samples=2,
                                      max_latency_ms=5.0), workers=1, first=[{"a": 0.25}, {"a": 0.125}])
    assert _outcomes(r) == {"slow": ("pruned", 0), "fast": ("finished", 2)}


@pytest.mark.parametrize("key", sorted(METHOD_KEYS))
def test_every_method_replays(tmp_path, key):
    """Every method of the comparison (every sampler and scheduler) runs on a table, deterministic per seed."""
    points = {f"a{a}-{res}": ({"a": a, "input_hw": res}, a * res / 10, [[0.3 + a, 0.4 + a, 0.5 + a]], [0.5 + a])
              for a in (0.125, 0.25, 0.5) for res in (64, 96)}
    table = load(make_table(tmp_path / "t.jsonl", points, epochs=3))
    opts = METHOD_KEYS[key].options(seed=3, num_samples=12)
    a, b = (simulate(table, opts, workers=2, max_epochs=table.grid_epochs) for _ in range(2))
    assert [(t.config, t.outcome) for t in a.trials] == [(t.config, t.outcome) for t in b.trials]
    assert a.trials and 0 < a.epochs_spent <= table.grid_epochs + 2 * 3


def test_standard_error_and_mann_whitney_on_known_cases():
    assert standard_error([1.0, 2.0, 3.0, 4.0]) == pytest.approx(math.sqrt(5 / 3) / 2)
    assert standard_error([0.7]) == 0.0
    # every a above every b: U = 9 of 9; the exact one-sided p is 1 / C(6, 3) = 0.05
    assert p_greater([3, 4, 5], [0, 1, 2]) == pytest.approx(0.05)
    assert p_greater([0, 1, 2], [3, 4, 5]) == pytest.approx(1.0)
    assert p_greater([1, 1], [1, 1]) == 1.0


# ---- bad tables --------------------------------------------------------------------------------
def _write(path, lines):
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


META = {"kind": "meta", "format": "raysearch-table", "version": 1, "space": "t", "epochs": 1, "seeds": [0]}
CONFIG = {"kind": "config", "id": "c", "spec": {"a": 0.125}}
RUN = {"kind": "run", "config": "c", "seed": 0, "curve": [{"val_iou": 0.5, "val_loss": 0.3, "seconds": 1.0}],
       "best_epoch": 1, "test_iou": 0.5, "test_iou_logit05": 0.5, "fixed_s": 1.0}


@pytest.mark.parametrize("lines, says", [
    ([CONFIG], "line 1: expected the meta record"),
    ([{**META, "version": 9}], "format version 9"),
    ([META, CONFIG, {**RUN, "curve": RUN["curve"] * 2}], "line 3: run c seed 0 has 2 epochs, the table 1"),
    ([META, CONFIG, {**RUN, "test_iou": 1.5}], "line 3: 'test_iou' is 1.5"),
    ([META, CONFIG, {**RUN, "config": "nope"}], "line 3: configuration 'nope' is not declared"),
    ([META, CONFIG, RUN, RUN], "line 4: run c seed 0 appears twice"),
    ([META, CONFIG, {"kind": "latency", "config": "c", "source": "host", "passes_ms": [-1]}], "'passes_ms'"),
    ([META, {"kind": "weird"}], "line 2: unknown record kind 'weird'"),
    ([META], "no configurations"),
])
def test_a_malformed_table_is_refused_with_the_line(tmp_path, lines, says):
    path = _write(tmp_path / "bad.jsonl", lines)
    with pytest.raises(TableError, match="bad.jsonl") as e:
        load(path)
    assert says in str(e.value)


def test_unreadable_and_incomplete_tables(tmp_path):
    (tmp_path / "garbage.jsonl.gz").write_bytes(b"\x1f\x8b\x08garbage")
    with pytest.raises(TableError, match="garbage.jsonl.gz: not a readable table"):
        load(tmp_path / "garbage.jsonl.gz")
    header = gzip.compress(b"{}\n" * 100)[:10]  # a valid gzip header, then bytes zlib cannot inflate
    (tmp_path / "torn.jsonl.gz").write_bytes(header + bytes(range(256)) * 4)
    with pytest.raises(TableError, match="torn.jsonl.gz: not a readable table"):
        load(tmp_path / "torn.jsonl.gz")
    (tmp_path / "text.jsonl").write_text("{not json\n")
    with pytest.raises(TableError, match="line 1: not JSON"):
        load(tmp_path / "text.jsonl")
    with pytest.raises(TableError, match="no such table"):
        load(tmp_path / "missing.jsonl")
    table = load(_write(tmp_path / "inc.jsonl", [{**META, "seeds": [0, 1]}, CONFIG, RUN]))
    assert table.missing("host") == ["c seed 1", "c latency 'host'"]
    with pytest.raises(TableError, match="no latency source 'host'"):
        table.require_complete("host")
    # gzip round trip of a complete table keeps every record
    complete = tmp_path / "ok.jsonl.gz"
    table.meta["seeds"] = [0]
    table.save(complete)
    assert gzip.decompress(complete.read_bytes()).decode().count("\n") == 3 and load(complete).runs.keys() == {("c", 0)}


# ---- the command line ------------------------------------------------------------------------
def _raysearch(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`raysearch ARGS`; in ``cwd`` (a test's tmp_path: the default cache runs/replay-cache is made there)."""
    return subprocess.run([sys.executable, "-m", "raysearch.cli", *args], capture_output=True, text=True, timeout=600,
                          cwd=cwd)


def test_replay_command_prints_the_json_document_and_writes_the_plot(tmp_path):
    points = {f"a{a}-{res}": ({"a": a, "input_hw": res}, a * res / 10, [[0.3 + a, 0.5 + a], [0.35 + a, 0.45 + a]],
                              [0.5 + a, 0.45 + a]) for a in (0.125, 0.25, 0.5) for res in (64, 96)}
    table = make_table(tmp_path / "t.jsonl.gz", points, epochs=2)
    plot = tmp_path / "curves.png"
    p = _raysearch("replay", "--table", str(table), "--seeds", "3", "--budgets", "0.25", "0.5", "--methods",
                   "random", "latency-first", "--jobs", "1", "--plot", str(plot), "--json", "-q", cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    doc = json.loads(p.stdout)
    assert doc["seeds"] == 3 and doc["grid_epochs"] == 12 and doc["latency_source"] == "host"
    default = "latency-first, no stopping"
    assert doc["default"] == default and set(doc["methods"]) == {BASELINE, default}
    cell = doc["methods"][default]["budgets"]["0.5"]
    assert 0 <= cell["hv_share_mean"] <= 1.5 and cell["hv_share_se"] >= 0 and 0 <= cell["p_vs_random"] <= 1
    assert doc["methods"][BASELINE]["budgets"]["0.25"]["p_vs_random"] is None
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_replay_command_refuses_bad_input_in_one_line(tmp_path):
    p = _raysearch("replay", "--table", str(tmp_path / "nope.jsonl"), cwd=tmp_path)
    assert p.returncode == 2 and "no such table file" in p.stderr and "Traceback" not in p.stderr
    _write(tmp_path / "bad.jsonl", [META, CONFIG, {**RUN, "test_iou": 2}])
    p = _raysearch("replay", "--table", str(tmp_path / "bad.jsonl"), cwd=tmp_path)
    assert p.returncode == 2 and "line 3: 'test_iou' is 2" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    p = _raysearch("replay", "--table", str(tmp_path / "bad.jsonl"), "--budgets", "1.5", cwd=tmp_path)
    assert p.returncode == 2 and "'1.5' is not a budget" in p.stderr


def test_anytime_curves_against_epochs_and_simulated_hours(tmp_path):
    from raysearch.replay.compare import compare

    points = {f"a{a}-{res}": ({"a": a, "input_hw": res}, a * res / 10, [[0.3 + a, 0.5 + a]], [0.5 + a])
              for a in (0.125, 0.25, 0.5) for res in (64, 96)}
    table = make_table(tmp_path / "t.jsonl", points, epochs=2, seconds=60.0, fixed_s=0.0)
    cmp = compare(table, methods=[METHOD_KEYS["random"]], seeds=2, workers=2, budgets=[1.0])
    (a, b) = cmp.results[BASELINE]
    # the grid: 6 trials x 2 epochs x 60 s = 720 s; on 2 workers the top of the time axis is 360 s
    assert cmp.time_x[-1] == pytest.approx(0.1)
    for r in (a, b):
        assert r.curve[0] == r.time_curve[0] == 0.0
        assert r.curve[-1] == pytest.approx(1.0) and r.time_curve[-1] == pytest.approx(1.0)
        assert r.epochs_spent == 12 and r.shares == [pytest.approx(1.0)]


def test_the_command_line_offers_every_method_and_names_the_default():
    from raysearch import cli
    from raysearch.replay.methods import default_label

    replay = cli.build_parser()._subparsers._group_actions[0].choices["replay"]
    methods = next(a for a in replay._actions if a.dest == "methods")
    assert sorted(methods.choices) == sorted([*METHOD_KEYS, *METHOD_GROUPS])
    for m in METHODS:  # --help says which are in the default set and which are slow
        assert m.key in methods.help
    assert all(m.key in methods.help.split("Slow")[1] for m in SLOW_METHODS)
    assert default_label() == "latency-first, no stopping"  # --mode search default


def test_a_cached_comparison_resumes_and_gives_the_same_document(tmp_path):
    """`--cache`: every finished replay is kept, a second run replays nothing and gives the same
    document, a torn file is replayed again, and other settings are not mistaken for cached ones."""
    from raysearch.replay.compare import compare

    points = {f"a{a}-{res}": ({"a": a, "input_hw": res}, a * res / 10, [[0.3 + a, 0.5 + a]], [0.5 + a])
              for a in (0.125, 0.25, 0.5) for res in (64, 96)}
    table = make_table(tmp_path / "t.jsonl", points, epochs=2)
    cache = tmp_path / "cache"
    methods = [METHOD_KEYS["random"], METHOD_KEYS["latency-first-front"]]
    calls: list[int] = []
    first = compare(table, methods=methods, seeds=3, budgets=[0.5], cache=cache, progress=lambda n, t: calls.append(n))
    files = sorted(cache.glob("*.json"))
    assert len(files) == 2 * 3 and calls == list(range(1, 7))
    torn = files[0]
    torn.write_text(torn.read_text()[:10])  # a replay killed while its file was written
    mtimes = {f: f.stat().st_mtime_ns for f in files[1:]}
    calls.clear()
    again = compare(table, methods=methods, seeds=3, budgets=[0.5], cache=cache, progress=lambda n, t: calls.append(n))
    assert again.summary() == first.summary()
    assert calls == [5, 6]  # 5 read back, the torn one replayed
    assert {f: f.stat().st_mtime_ns for f in files[1:]} == mtimes
    compare(table, methods=methods[:1], seeds=3, budgets=[0.5], workers=2, cache=cache)  # other settings: new files
    assert len(list(cache.glob("*.json"))) == 2 * 3 + 3


def test_the_recorded_tables_are_found_by_name(tmp_path):
    """`--table A` / `--table B` name the recorded tables of benchmarks/tables, from any folder."""
    p = subprocess.run([sys.executable, "-m", "raysearch.cli", "replay", "--table", "B", "--seeds", "1", "--methods",
                        "latency-first", "--budgets", "0.1", "--jobs", "1", "--json", "-q",
                        "--plot", str(tmp_path / "b.png")], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    doc = json.loads(p.stdout)
    assert doc["table"] == "B" and doc["grid_epochs"] == 3240 and doc["seeds"] == 1


# ---- what runs by default, how long, and stopping it ------------------------------------------------
def test_the_default_methods_are_the_fast_ones_and_the_slow_ones_come_on_request():
    slow = {m.key for m in METHODS if is_slow(m)}
    assert {m.key for m in METHODS if m.sampler == "gp"} <= slow  # a GP refit per proposal: minutes a seed
    assert slow == {k for k, s in SECONDS_PER_SEED.items() if s > SLOW_SECONDS} | {m.key for m in METHODS
                                                                                   if m.sampler == "gp"}
    assert set(SECONDS_PER_SEED) == set(METHOD_KEYS)  # every method measured
    assert slow and {m.key for m in DEFAULT_METHODS} == set(METHOD_KEYS) - slow
    assert [m.key for m in SLOW_METHODS] == [m.key for m in METHODS if m.key in slow]
    assert default_label_in(DEFAULT_METHODS)  # what --mode search runs is always compared
    assert select(["all"]) == list(METHODS) and select(["default"]) == list(DEFAULT_METHODS)
    first_slow = SLOW_METHODS[0]
    assert select([first_slow.key, "default", first_slow.key]) == [first_slow, *DEFAULT_METHODS]
    with pytest.raises(ValueError, match="--methods nope: no such method"):
        select(["nope"])
    # the estimate: cores' seconds shared by the jobs, never under the longest replay, larger tables longer
    one = SECONDS_PER_SEED[first_slow.key]
    assert estimate_seconds([first_slow] * 4, jobs=2) == pytest.approx(2 * one)
    assert estimate_seconds([first_slow], jobs=8) == pytest.approx(one)
    assert estimate_seconds([first_slow], jobs=1, configs=72) == pytest.approx(4 * one)
    assert estimate_seconds([], jobs=2) == 0


def default_label_in(methods) -> bool:
    from raysearch.replay.methods import default_label

    return default_label(methods) == default_label()


def _six_points() -> dict:
    return {f"a{a}-{res}": ({"a": a, "input_hw": res}, a * res / 10, [[0.3 + a, 0.5 + a]], [0.5 + a])
            for a in (0.125, 0.25, 0.5) for res in (64, 96)}


@pytest.mark.slow
def test_replay_keeps_finished_replays_in_runs_by_default(tmp_path):
    """No --methods: the default set; no --cache: runs/replay-cache under the working folder, said in
    the output; --no-cache: nothing kept."""
    table = make_table(tmp_path / "t.jsonl", _six_points(), epochs=2)
    args = ("replay", "--table", str(table), "--seeds", "1", "--budgets", "0.5", "--jobs", "1", "--json", "-q")
    p = _raysearch(*args, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    doc = json.loads(p.stdout)
    assert set(doc["methods"]) == {m.label for m in DEFAULT_METHODS}
    assert doc["cache"] == {"folder": "runs/replay-cache", "read_back": 0, "run_now": len(DEFAULT_METHODS)}
    kept = sorted((tmp_path / "runs" / "replay-cache").glob("*.json"))
    assert len(kept) == len(DEFAULT_METHODS) and {f.name.split("-seed0-")[0] for f in kept} == set(
        m.key for m in DEFAULT_METHODS)
    p = _raysearch(*args[:-2], "-q", cwd=tmp_path)  # the text output says where, and reads all of it back
    assert p.returncode == 0, p.stderr[-3000:]
    assert f"replays kept in runs/replay-cache ({len(DEFAULT_METHODS)} of {len(DEFAULT_METHODS)} read back" in p.stdout
    other = tmp_path / "other"
    other.mkdir()
    p = _raysearch(*args, "--no-cache", cwd=other)
    assert p.returncode == 0 and json.loads(p.stdout)["cache"] is None and not (other / "runs").exists()


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state) of every process, from /proc."""
    found = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            state, ppid = stat.rsplit(")", 1)[1].split()[:2]
            found[int(d.name)] = (int(ppid), state)
    return found


def _descendants(pid: int) -> set[int]:
    procs = _processes()
    found, todo = set(), [pid]
    while todo:
        parent = todo.pop()
        for child, (ppid, _) in procs.items():
            if ppid == parent and child not in found:
                found.add(child)
                todo.append(child)
    return found


def _running(pids: set[int]) -> set[int]:
    procs = _processes()
    return {p for p in pids if p in procs and procs[p][1] not in "ZX"}  # a zombie has ended


def _seeds_kept(cache: Path) -> set[int]:
    return {int(re.search(r"-seed(\d+)-", f.name).group(1)) for f in cache.glob("*.json")}


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process tree from /proc")
@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_an_interrupted_replay_stops_in_seconds_leaves_no_process_and_resumes(tmp_path, how):
    """Ctrl-C (SIGINT to the process group, as a terminal sends it) or SIGTERM (to the process, as
    `kill` sends it) while several worker processes replay: exit 130 within seconds with one line,
    no process of it left, every finished replay in the cache, and the same command reads them
    back instead of replaying them."""
    table = make_table(tmp_path / "t.jsonl", _six_points(), epochs=2)
    cache = tmp_path / "cache"
    cmd = [sys.executable, "-m", "raysearch.cli", "replay", "--table", str(table), "--budgets", "0.5",
           "--methods", "tpe-asha", "--jobs", "3", "--cache", str(cache), "--json", "-q", "--seeds"]
    p = subprocess.Popen([*cmd, "1000"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    seen: set[int] = set()
    try:
        deadline = time.monotonic() + 240
        while len(seen) < 3 or len(list(cache.glob("*.json"))) < 3:  # its workers up, replays finishing
            assert p.poll() is None and time.monotonic() < deadline, p.stderr.read() if p.poll() is not None else ""
            seen |= _descendants(p.pid)
            time.sleep(0.2)
        seen |= _descendants(p.pid)
        if how == "ctrl-c":
            os.killpg(p.pid, signal.SIGINT)
        else:
            p.send_signal(signal.SIGTERM)
        start = time.monotonic()
        out, err = p.communicate(timeout=60)
        took = time.monotonic() - start
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == 130, err[-3000:]
    assert took < 10, took
    line = re.fullmatch(r"raysearch replay: interrupted; (\d+) finished replays kept in (.+), run the same command "
                        r"to continue", err.strip())
    assert line and Path(line[2]) == cache, err[-3000:]
    assert out == ""
    deadline = time.monotonic() + 5  # the resource tracker ends once its pipe closes
    while _running(seen) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _running(seen), [Path(f"/proc/{q}/cmdline").read_bytes() for q in _running(seen)]
    kept = sorted(cache.glob("*.json"))
    # the count and the files may differ by the one replay being written when the signal came
    assert len(kept) - 1 <= int(line[1]) <= len(kept) and len(kept) < 1000
    assert all(json.loads(f.read_text())["trials"] > 0 for f in kept)  # whole files, nothing torn
    assert not [f for f in cache.iterdir() if not f.name.endswith(".json")]  # no temporary file left behind
    # the same command resumes: up to the first seed missing, everything is read back, one replayed
    missing = min(set(range(1000)) - _seeds_kept(cache))
    mtimes = {f: f.stat().st_mtime_ns for f in kept}
    again = subprocess.run([*cmd, str(missing + 1)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout)["cache"] == {"folder": str(cache), "read_back": missing, "run_now": 1}
    assert {f: f.stat().st_mtime_ns for f in kept} == mtimes
