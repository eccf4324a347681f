"""A recorded benchmark table: every configuration of a search space trained for several seeds,
with its learning curve, final test IoU and latency by source, so that a search can be replayed
against it in seconds instead of trained (`raysearch.replay.simulator`).

The file is JSON lines (gzip-compressed when its name ends in ``.gz``), one record per line, each
with a ``kind``:

- ``meta`` (first line, once): ``format`` ("raysearch-table"), ``version`` (1), ``space`` (its
  name), ``epochs`` (per trial), ``seeds`` (the training seeds planned), ``scale`` (data, limit,
  recipe), ``latency_sources`` (name -> how it was measured), ``provenance`` (commit, machine, dates);
- ``config``: ``id`` and ``spec`` (a `ModelSpec` as a dict), once per configuration;
- ``run``: ``config``, ``seed``, ``curve`` (one ``{"val_iou", "val_loss", "seconds"}`` per epoch,
  in order), ``best_epoch`` (lowest validation loss, 1-based), ``test_iou`` (onnxruntime, the
  best epoch's weights, probability 0.5), ``test_iou_logit05`` (raw logit 0.5, the study's),
  ``fixed_s`` (a trial's cost beside its epochs: export + test evaluation), once per (config, seed);
- ``latency``: ``config``, ``source`` (e.g. ``host``), ``latency_ms`` (the median of the passes),
  ``passes_ms`` (each pass's p50), once per (config, source). Another source (a farm of Pis)
  is added by appending its records, without training again.

A table is *complete* when every configuration has a run for every planned seed, each run with
``epochs`` epochs; comparisons use complete tables only. `load` refuses a malformed table with
one line naming the file, the line and the problem.
"""

from __future__ import annotations

import gzip
import json
import os
import statistics
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

FORMAT, VERSION = "raysearch-table", 1


class TableError(ValueError):
    """A table that cannot be read: the message names the file, the line and what is wrong."""


@dataclass(frozen=True)
class Epoch:
    val_iou: float
    val_loss: float
    seconds: float


@dataclass(frozen=True)
class Run:
    """One configuration trained to the end with one seed."""

    config: str
    seed: int
    curve: tuple[Epoch, ...]
    best_epoch: int
    test_iou: float
    test_iou_logit05: float
    fixed_s: float

    def to_record(self) -> dict[str, Any]:
        return {"kind": "run", "config": self.config, "seed": self.seed, "curve": [asdict(e) for e in self.curve],
                "best_epoch": self.best_epoch, "test_iou": self.test_iou, "test_iou_logit05": self.test_iou_logit05,
                "fixed_s": self.fixed_s}


@dataclass(frozen=True)
class Latency:
    config: str
    source: str
    passes_ms: tuple[float, ...]

    @property
    def latency_ms(self) -> float:
        return statistics.median(self.passes_ms)

    def to_record(self) -> dict[str, Any]:
        return {"kind": "latency", "config": self.config, "source": self.source,
                "latency_ms": round(self.latency_ms, 6), "passes_ms": list(self.passes_ms)}


@dataclass
class Table:
    meta: dict[str, Any]
    configs: dict[str, dict[str, Any]]  # id -> spec dict, in the table's order
    runs: dict[tuple[str, int], Run] = field(default_factory=dict)
    latencies: dict[tuple[str, str], Latency] = field(default_factory=dict)  # (config, source)

    @property
    def name(self) -> str:
        return str(self.meta["space"])

    @property
    def epochs(self) -> int:
        return int(self.meta["epochs"])

    @property
    def seeds(self) -> list[int]:
        return [int(s) for s in self.meta["seeds"]]

    @property
    def grid_epochs(self) -> int:
        """Epochs of training every configuration once to the end: the budget unit of a comparison."""
        return self.epochs * len(self.configs)

    def sources(self) -> list[str]:
        return sorted({s for _, s in self.latencies})

    def seeds_of(self, config: str) -> list[int]:
        return sorted(s for (c, s) in self.runs if c == config)

    def latency_ms(self, config: str, source: str) -> float:
        return self.latencies[(config, source)].latency_ms

    def missing(self, source: str | None = None) -> list[str]:
        """What keeps the table from being complete (for ``source``'s latencies too, when given)."""
        out = [f"{c} seed {s}" for c in self.configs for s in self.seeds if (c, s) not in self.runs]
        if source is not None:
            out += [f"{c} latency '{source}'" for c in self.configs if (c, source) not in self.latencies]
        return out

    def complete(self, source: str | None = None) -> bool:
        return not self.missing(source)

    def require_complete(self, source: str) -> None:
        if source not in self.sources():
            raise TableError(f"table {self.name}: no latency source {source!r} (it has {self.sources() or 'none'})")
        missing = self.missing(source)
        if missing:
            raise TableError(f"table {self.name} is incomplete ({len(missing)} missing, e.g. {missing[0]}): "
                             "finish the recording before comparing on it")

    def records(self) -> Iterable[dict[str, Any]]:
        yield {"kind": "meta", **self.meta}
        for cid, spec in self.configs.items():
            yield {"kind": "config", "id": cid, "spec": spec}
        for run_key in sorted(self.runs):
            yield self.runs[run_key].to_record()
        for latency_key in sorted(self.latencies):
            yield self.latencies[latency_key].to_record()

    def save(self, path: str | Path) -> None:
        """Write the whole table at once (a temporary file renamed over the old one)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        text = "".join(json.dumps(r, sort_keys=False) + "\n" for r in self.records()).encode()
        tmp.write_bytes(gzip.compress(text, mtime=0) if path.suffix == ".gz" else text)
        os.replace(tmp, path)


def _need(rec: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in rec:
        raise TableError(f"{where}: {rec.get('kind')} record has no {key!r}")
    value = rec[key]
    if isinstance(value, bool) or not isinstance(value, kind):  # no field of the format is a boolean
        raise TableError(f"{where}: {key!r} is {value!r}, expected {getattr(kind, '__name__', kind)}")
    return value


def _number(rec: dict[str, Any], key: str, where: str, lo: float | None = None, hi: float | None = None) -> float:
    raw = _need(rec, key, (int, float), where)
    value = float(raw)
    if value != value or (lo is not None and value < lo) or (hi is not None and value > hi):
        span = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise TableError(f"{where}: {key!r} is {raw!r}, expected a number {span}")
    return value


def load(path: str | Path) -> Table:
    """Read and check a table; `TableError` names the file, the line and the problem."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        text = (gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw).decode("utf-8")
    except FileNotFoundError:
        raise TableError(f"{path}: no such table") from None
    except (OSError, EOFError, UnicodeDecodeError, gzip.BadGzipFile, zlib.error) as e:  # zlib: garbage after a gzip header
        raise TableError(f"{path}: not a readable table ({e})") from None
    table: Table | None = None
    for n, line in enumerate(text.splitlines(), 1):
        where = f"{path} line {n}"
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise TableError(f"{where}: not JSON ({e.msg})") from None
        if not isinstance(rec, dict) or "kind" not in rec:
            raise TableError(f"{where}: expected a JSON object with a 'kind'")
        kind = rec["kind"]
        if table is None:
            if kind != "meta" or rec.get("format") != FORMAT:
                raise TableError(f"{where}: expected the meta record of a {FORMAT} file first")
            if rec.get("version") != VERSION:
                raise TableError(f"{where}: format version {rec.get('version')!r}, this reader knows {VERSION}")
            _need(rec, "space", str, where)
            epochs = _number(rec, "epochs", where, 1)
            seeds = _need(rec, "seeds", list, where)
            if not seeds or not all(isinstance(s, int) for s in seeds):
                raise TableError(f"{where}: 'seeds' is {seeds!r}, expected a list of integers")
            table = Table(meta={k: v for k, v in rec.items() if k != "kind"}, configs={})
            table.meta["epochs"] = int(epochs)
        elif kind == "config":
            cid = _need(rec, "id", str, where)
            if cid in table.configs:
                raise TableError(f"{where}: configuration {cid!r} appears twice")
            table.configs[cid] = _need(rec, "spec", dict, where)
        elif kind == "run":
            table_run = _run(rec, table, where)
            if (table_run.config, table_run.seed) in table.runs:
                raise TableError(f"{where}: run {table_run.config} seed {table_run.seed} appears twice")
            table.runs[(table_run.config, table_run.seed)] = table_run
        elif kind == "latency":
            cid = _config_of(rec, table, where)
            source = _need(rec, "source", str, where)
            passes = _need(rec, "passes_ms", list, where)
            if not passes or not all(isinstance(p, (int, float)) and p > 0 for p in passes):
                raise TableError(f"{where}: 'passes_ms' is {passes!r}, expected positive numbers")
            if (cid, source) in table.latencies:
                raise TableError(f"{where}: latency of {cid} from {source!r} appears twice")
            table.latencies[(cid, source)] = Latency(cid, source, tuple(float(p) for p in passes))
        else:
            raise TableError(f"{where}: unknown record kind {kind!r} (meta, config, run, latency)")
    if table is None:
        raise TableError(f"{path}: empty table (no meta record)")
    if not table.configs:
        raise TableError(f"{path}: the table has no configurations")
    return table


def _config_of(rec: dict[str, Any], table: Table, where: str) -> str:
    cid: str = _need(rec, "config", str, where)
    if cid not in table.configs:
        raise TableError(f"{where}: configuration {cid!r} is not declared by a config record before it")
    return cid


def _run(rec: dict[str, Any], table: Table, where: str) -> Run:
    cid = _config_of(rec, table, where)
    seed = int(_need(rec, "seed", int, where))
    curve_raw = _need(rec, "curve", list, where)
    if len(curve_raw) != table.epochs:
        raise TableError(f"{where}: run {cid} seed {seed} has {len(curve_raw)} epochs, the table {table.epochs}")
    curve = []
    for i, e in enumerate(curve_raw, 1):
        if not isinstance(e, dict):
            raise TableError(f"{where}: epoch {i} of {cid} seed {seed} is {e!r}, expected an object")
        w = f"{where} epoch {i}"
        curve.append(Epoch(_number(e, "val_iou", w, 0, 1), _number(e, "val_loss", w, 0), _number(e, "seconds", w, 0)))
    best = int(_number(rec, "best_epoch", where, 1, table.epochs))
    return Run(cid, seed, tuple(curve), best, _number(rec, "test_iou", where, 0, 1),
               _number(rec, "test_iou_logit05", where, 0, 1), _number(rec, "fixed_s", where, 0))
