"""BenchFarm: spread benchmarks over the devices of an inventory file (clusters/farm.yaml).

Many callers (threads here, Ray trials in other processes and nodes) may share the devices.
Exclusivity is the server's job: each device times one model at a time. The farm only steers:
it asks every matching device for its cheap status, tries the idle ones first with
`reject_if_busy` (so two callers racing for one idle device do not both wait there), then
queues on the least-loaded device. A device that fails (UNAVAILABLE, dies mid-benchmark) is
skipped and probed again after a back-off; the job reruns elsewhere.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import os
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from benchd import wire
from benchd.client import BenchClient, BenchResult, Model, Prediction
from benchd.errors import (
    BenchAuthError,
    BenchBusy,
    BenchCancelled,
    BenchDeadlineExceeded,
    BenchError,
    BenchUnavailable,
    BenchUnimplemented,
    FarmError,
)
from benchd.predict import PredictParams
from benchd.runner import BenchParams
from benchd.security import ClientTls, parse_address
from benchd.v1 import benchd_pb2 as pb

log = logging.getLogger("benchd.farm")
R = TypeVar("R", BenchResult, Prediction)

_DEVICE_KEYS = {"name", "address", "class", "labels", "token_file", "tls"}
_TLS_KEYS = {"ca", "cert", "key", "server_name"}


class FarmConfigError(ValueError):
    """farm.yaml is invalid; the message names the file, line and entry."""


@dataclass(frozen=True)
class FarmDevice:
    name: str
    address: str
    device_class: str
    labels: Mapping[str, str] = field(default_factory=dict)
    token_file: str | None = None
    tls: ClientTls | None = None
    line: int = 0  # line of the entry in the inventory file (for messages)

    def __post_init__(self) -> None:
        # a device made in code (raysearch's --farm HOST:PORT) is named after its address
        parse_address(self.address, "farm device" if self.name == self.address else f"farm device {self.name}: address")


@dataclass(frozen=True)
class DeviceState:
    """One row of `benchd farm status`."""

    device: FarmDevice
    health: str  # SERVING, NOT_SERVING, DOWN
    busy: bool | None = None
    queue_depth: int | None = None
    temperature_c: float | None = None
    throttled: bool | None = None
    error: str = ""


def load_inventory(path: str | os.PathLike[str]) -> list[FarmDevice]:
    """Parse and validate a farm inventory; errors name the file, line and device entry.

    Format::

        defaults: {token_file: ~/.config/benchd/token}   # optional, applies to every device
        devices:
          - {name: pi4-01, address: "192.168.1.41:50051", class: rpi4, labels: {site: lab}}
    """
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise FarmConfigError(f"{p}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise FarmConfigError(f"{p}: not a farm inventory (not UTF-8 text; expected YAML with a 'devices' list)") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise FarmConfigError(f"{p}:{_yaml_problem(exc)}") from None
    if not isinstance(data, dict) or not isinstance(data.get("devices"), list):
        raise FarmConfigError(f"{p}:1: expected a mapping with a 'devices' list")
    unknown_top = set(data) - {"devices", "defaults"}
    if unknown_top:
        raise FarmConfigError(f"{p}:1: unknown top-level key(s) {sorted(unknown_top)}; allowed: defaults, devices")
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict) or set(defaults) - {"token_file", "tls"}:
        raise FarmConfigError(f"{p}: 'defaults' may only hold token_file and tls")

    # Line numbers of the device entries, from the composed node tree.
    lines: list[int] = []
    assert root is not None
    for key_node, value_node in root.value:
        if key_node.value == "devices":
            lines = [item.start_mark.line + 1 for item in value_node.value]

    devices: list[FarmDevice] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(data["devices"]):
        line = lines[i] if i < len(lines) else 0
        label = f"device #{i + 1}"
        if isinstance(entry, dict) and isinstance(entry.get("name"), str):
            label += f" ({entry['name']!r})"

        def bad(msg: str, _line: int = line, _label: str = label) -> FarmConfigError:
            return FarmConfigError(f"{p}:{_line}: {_label}: {msg}")

        if not isinstance(entry, dict):
            raise bad("expected a mapping with name, address, class")
        unknown = set(entry) - _DEVICE_KEYS
        if unknown:
            raise bad(f"unknown key(s) {sorted(unknown)}; allowed: {sorted(_DEVICE_KEYS)}")
        for key in ("name", "address", "class"):
            if not isinstance(entry.get(key), str) or not entry[key].strip():
                raise bad(f"'{key}' is missing or not a non-empty string")
        name = entry["name"].strip()
        if name in seen:
            raise bad(f"duplicate name (first at line {seen[name]})")
        seen[name] = line
        try:
            parse_address(entry["address"], "address")
        except ValueError as exc:
            raise bad(str(exc)) from None
        labels = entry.get("labels") or {}
        if not isinstance(labels, dict) or not all(
            isinstance(k, str) and isinstance(v, (str, int, float, bool)) for k, v in labels.items()
        ):
            raise bad("'labels' must map strings to scalars")
        token_file = entry.get("token_file", defaults.get("token_file"))
        if token_file is not None:
            if not isinstance(token_file, str):
                raise bad("'token_file' must be a path")
            token_file = str((p.parent / Path(token_file).expanduser()).resolve())
        tls_spec = entry.get("tls", defaults.get("tls"))
        tls = None
        if tls_spec is not None:
            if not isinstance(tls_spec, dict) or set(tls_spec) - _TLS_KEYS:
                raise bad(f"'tls' must be a mapping with keys among {sorted(_TLS_KEYS)}")

            def rel(v: Any) -> str | None:
                return None if v is None else str((p.parent / Path(str(v)).expanduser()).resolve())

            tls = ClientTls(rel(tls_spec.get("ca")), rel(tls_spec.get("cert")), rel(tls_spec.get("key")),
                            tls_spec.get("server_name"))
        devices.append(FarmDevice(
            name=name, address=entry["address"].strip(), device_class=entry["class"].strip(),
            labels={k: str(v) for k, v in labels.items()}, token_file=token_file, tls=tls, line=line,
        ))
    if not devices:
        raise FarmConfigError(f"{p}: the 'devices' list is empty")
    return devices


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's message in one line, after the line and column it points at (its own str() spans
    several lines, with a caret under an excerpt)."""
    mark = getattr(exc, "problem_mark", None)
    where = f"{mark.line + 1}:{mark.column + 1}: " if mark is not None else " "
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    return f"{where}invalid YAML: {problem}" + (f" ({context})" if context else "")


def _kind(exc: Exception) -> str:
    """What a device's failure amounts to, in a word or two of the progress lines."""
    if isinstance(exc, BenchUnavailable):
        return "unreachable"
    if isinstance(exc, BenchDeadlineExceeded):
        return "silent"
    if isinstance(exc, BenchAuthError):
        return "refusing us"
    if isinstance(exc, BenchUnimplemented):
        return "too old"
    if isinstance(exc, ValueError):  # our own token or TLS files
        return "misconfigured"
    return "failing"


def _short(exc: Exception, kind: str, probe_s: float) -> str:
    """One line on why a device failed: gRPC's "failed to connect to all addresses; last error:
    UNKNOWN: ipv4:...: Connection refused" becomes "Connection refused"."""
    if kind == "unreachable" and isinstance(exc, BenchError):
        return exc.details.rsplit(": ", 1)[-1].strip()
    if kind == "silent":
        return f"no answer within {probe_s:g} s"
    return " ".join(str(exc).split())


class BenchFarm:
    """Thread-safe; one instance per process is enough (each Ray trial may make its own)."""

    def __init__(
        self,
        devices: Sequence[FarmDevice],
        *,
        probe_after_s: float = 5.0,
        max_probe_after_s: float = 60.0,
        status_timeout_s: float = 2.0,
        name: str = "",
    ) -> None:
        if not devices:
            raise FarmError("a farm needs at least one device")
        self.devices = list(devices)
        self.name = name  # what messages call the farm: its inventory file ("": made in code)
        self.progress_every_s = 15.0  # a line on what the farm waits for, at most this often
        self.probe_after_s = probe_after_s
        self.max_probe_after_s = max_probe_after_s
        self.status_timeout_s = status_timeout_s
        self._clients: dict[str, BenchClient] = {}
        self._down_until: dict[str, float] = {}
        self._failures: dict[str, int] = {}
        self._last_error: dict[str, str] = {}
        self._kind: dict[str, str] = {}  # why each failing device failed, in a word ("unreachable")
        # devices that refused us for good (a token or certificate it rejects, TLS files we cannot
        # use): waiting does not help, so a benchmark no other device can run ends at once
        self._refused: dict[str, str] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=min(32, len(self.devices)), thread_name_prefix="benchd-farm")

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], **kwargs: Any) -> BenchFarm:
        return cls(load_inventory(path), **{"name": str(path), **kwargs})

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        for c in self._clients.values():
            c.close()

    def __enter__(self) -> BenchFarm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- device bookkeeping

    def client(self, device: FarmDevice) -> BenchClient:
        with self._lock:
            c = self._clients.get(device.name)
            if c is None:
                # No client-side retries: failing over to another device is the farm's retry.
                c = BenchClient(device.address, token_file=device.token_file, tls=device.tls, retries=0)
                self._clients[device.name] = c
            return c

    def _mark_down(self, device: FarmDevice, exc: Exception, permanent: bool = False) -> None:
        why = str(exc)
        kind = _kind(exc)
        with self._lock:
            if permanent:
                self._refused[device.name] = why
            n = self._failures.get(device.name, 0) + 1
            self._failures[device.name] = n
            wait = min(self.probe_after_s * 2 ** (n - 1), self.max_probe_after_s)
            self._down_until[device.name] = time.monotonic() + wait
            self._last_error[device.name] = f"{kind}: {_short(exc, kind, self.status_timeout_s)}"
            self._kind[device.name] = kind
        log.warning("device %s (%s) marked down for %.0f s: %s", device.name, device.address, wait, why)

    def _mark_up(self, device: FarmDevice) -> None:
        with self._lock:
            self._refused.pop(device.name, None)
            if self._failures.pop(device.name, None):
                log.info("device %s is back", device.name)
            self._down_until.pop(device.name, None)

    def matching(self, device_class: str | None = None, labels: Mapping[str, str] | None = None) -> list[FarmDevice]:
        return [
            d for d in self.devices
            if (device_class is None or d.device_class == device_class)
            and all(d.labels.get(k) == str(v) for k, v in (labels or {}).items())
        ]

    def _probe(self, device: FarmDevice) -> pb.GetStatusResponse | None:
        try:
            st = self.client(device).status(timeout_s=self.status_timeout_s, retries=0)
        except (BenchError, ValueError) as exc:  # ValueError: unreadable token or TLS files
            self._mark_down(device, exc, permanent=isinstance(exc, (BenchAuthError, ValueError)))
            return None
        self._mark_up(device)
        return st

    # -- API

    def benchmark(
        self,
        model: Model | str | os.PathLike[str] | bytes,
        options: BenchParams | None = None,
        *,
        device_class: str | None = None,
        labels: Mapping[str, str] | None = None,
        timeout_s: float = 1800.0,
        wait_s: float | None = None,
        progress: Callable[[str], None] | None = None,
        **knobs: Any,
    ) -> BenchResult:
        """Measure on one healthy device of the class; fails over until `timeout_s` passes.
        ``wait_s`` bounds the time spent looking for a device that takes the job (None: all of
        `timeout_s`); ``progress`` gets a line now and then while none does (None: the log, INFO)."""
        opts = dataclasses.replace(options or BenchParams(), **knobs)
        m = Model.of(model)
        return self._place(lambda c, busy, t: c.benchmark(m, opts, reject_if_busy=busy, timeout_s=t),
                           "benchmark", device_class, labels, timeout_s, wait_s, progress)

    def predict(
        self,
        model: Model | str | os.PathLike[str] | bytes,
        inputs: Any,
        params: PredictParams | None = None,
        *,
        device_class: str | None = None,
        labels: Mapping[str, str] | None = None,
        timeout_s: float = 1800.0,
        wait_s: float | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> Prediction:
        """Run the model on ``inputs`` on one healthy device of the class (all on that one device);
        fails over like `benchmark`."""
        m = Model.of(model)
        return self._place(lambda c, busy, t: c.predict(m, inputs, params, reject_if_busy=busy, timeout_s=t),
                           "prediction", device_class, labels, timeout_s, wait_s, progress)

    def _place(self, job: Callable[[BenchClient, bool, float], R], what: str, device_class: str | None,
               labels: Mapping[str, str] | None, timeout_s: float, wait_s: float | None = None,
               progress: Callable[[str], None] | None = None) -> R:
        """Run ``job(client, reject_if_busy, seconds left)`` on one device of the class: idle
        devices first (refused at once if someone else got there first), then the queue of the
        least-loaded one; a device that fails is marked down and the job reruns elsewhere."""
        candidates = self.matching(device_class, labels)
        where = f"farm {self.name}: " if self.name else ""
        wanted = f"class {device_class!r}" if device_class is not None else "any class"
        if labels:
            wanted += f" with labels {dict(labels)}"
        if not candidates:
            raise FarmError(f"{where}no device of {wanted} in the farm")
        start = time.monotonic()
        deadline = start + timeout_s
        limit = timeout_s if wait_s is None else min(wait_s, timeout_s)
        give_up = start + limit  # stop looking for a device (a job under way keeps `deadline`)
        say = progress or (lambda line: log.debug("%s", line))
        said = -math.inf
        attempts = 0
        pause = 0.2
        while True:
            now = time.monotonic()
            with self._lock:
                up = [d for d in candidates if self._down_until.get(d.name, 0.0) <= now]
            statuses = list(zip(up, self._pool.map(self._probe, up)))
            answers = {d.name: s for d, s in statuses if s is not None}
            ready = [(d, s) for d, s in statuses if s is not None and s.ready]
            random.shuffle(ready)  # spread callers that see the same loads
            ready.sort(key=lambda ds: (ds[1].busy + ds[1].queue_depth))
            idle = [d for d, s in ready if not s.busy and not s.queue_depth]
            for device, reject_if_busy in [(d, True) for d in idle] + [(d, False) for d, _ in ready]:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                attempts += 1
                try:
                    result = job(self.client(device), reject_if_busy, remaining)
                except BenchBusy:
                    continue
                except (BenchUnavailable, BenchCancelled, BenchAuthError, BenchUnimplemented) as exc:
                    # died mid-call, or unusable for this job: rerun elsewhere
                    self._mark_down(device, exc, permanent=isinstance(exc, (BenchAuthError, BenchUnimplemented)))
                    continue
                return dataclasses.replace(result, farm_device=device.name, attempts=attempts)  # type: ignore[type-var]
            now = time.monotonic()
            with self._lock:
                refused = {d.name: self._refused[d.name] for d in candidates if d.name in self._refused}
                why = {}  # device -> why it did not take the job: in a word, in a line
                for d in candidates:
                    answer = answers.get(d.name)
                    if answer is None or self._down_until.get(d.name, 0.0) > now:
                        why[d.name] = self._kind.get(d.name, "down"), self._last_error.get(d.name, "down")
                    else:  # it answered: not ready, or busy with another caller's job
                        state = "busy" if answer.ready else "not ready"
                        why[d.name] = state, state
            if len(refused) == len(candidates):
                raise FarmError(f"{where}every device that could run the {what} refused it: {refused}")
            if now >= give_up:
                raise FarmError(f"{where}no device could run the {what} within {limit:.0f} s ({wanted}): "
                                + "; ".join(f"{d.name} ({d.address}) {why[d.name][1]}" for d in candidates))
            if now - said >= self.progress_every_s:
                said = now
                counts = collections.Counter(kind for kind, _ in why.values())
                say(f"{where}waiting for a device of {wanted}: "
                    + ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items()))
                    + f", retrying ({now - start:.0f} s of {limit:.0f} s)")
            time.sleep(min(pause, give_up - now))
            pause = min(pause * 2, 5.0)

    def status(self, timeout_s: float | None = None) -> list[DeviceState]:
        """Health and load of every device (in inventory order), probing all in parallel."""

        def one(d: FarmDevice) -> DeviceState:
            t = timeout_s or self.status_timeout_s
            try:
                c = self.client(d)
                health = c.health(timeout_s=t)
                st = c.status(timeout_s=t, retries=0)
            except BenchError as exc:
                return DeviceState(d, "DOWN", error=f"{exc.code.name if exc.code else ''} {exc.details}".strip())
            except ValueError as exc:
                return DeviceState(d, "DOWN", error=str(exc))
            temp = wire.optional(st, "cpu_temperature_c")
            throttled = wire.throttle_state(st.throttled)
            return DeviceState(d, health, busy=st.busy, queue_depth=st.queue_depth, temperature_c=temp,
                               throttled=throttled)

        return list(self._pool.map(one, self.devices))
