"""The process a search runs in: Ray's start-up (with a core kept for the local benchd), the
signals (Ctrl-C and SIGTERM end a search like a stop), the deadline, one driver per search name,
where the driver keeps its files and whether it may write them, the farm for the duration, and
the checks of what the options name outside this process (`preflight`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any, Iterator

from raysearch.search.latency import CpuReservation, local_benchd, reserve_cpu
from raysearch.search.options import SearchOptions
from raysearch.search.ray_console import quiet_worker_exits

log = logging.getLogger(__name__)


class BudgetExpired(KeyboardInterrupt):
    """The search was stopped at its deadline; like Ctrl-C, every run ended KILLED and the search
    continues with ``resume``."""


class _Interrupts:
    """Ctrl-C and `kill` (SIGTERM) during a search, counted, so that an interrupted search is never
    taken for a finished one. Inside `tuner.fit()` the first one stops Ray Tune gracefully (its
    own stop handler, reached through SIGUSR1: a final forced experiment snapshot, so --resume
    never names a rotated checkpoint); elsewhere, and the second time, it is a KeyboardInterrupt.
    Ray Tune's SIGINT handler is disabled: it would stop the search without telling us."""

    def __init__(self) -> None:
        self.count = 0
        self.in_fit = False

    def handle(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        if self.in_fit and self.count == 1:
            tune_stop = signal.getsignal(signal.SIGUSR1)
            if callable(tune_stop):
                tune_stop(signal.SIGUSR1, frame)
                return
        raise KeyboardInterrupt


INTERRUPTS = _Interrupts()


def local_reservation(opts: SearchOptions) -> CpuReservation | None:
    """A core for the local benchd when the search measures on this machine with a local Ray."""
    if opts.bench.farm or opts.cluster.address or os.environ.get("RAY_ADDRESS"):
        return None
    return reserve_cpu()


def init_ray(address: str | None, reservation: CpuReservation | None = None) -> None:
    import threading

    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # a trial's error is Ray Tune's to report (one line, `condense_trial_errors`); the tasks it
    # abandons when a search stops would each print theirs again as an "Unhandled error" traceback
    os.environ.setdefault("RAY_IGNORE_UNHANDLED_ERRORS", "1")
    if ray.is_initialized():
        return
    if not (address or os.environ.get("RAY_ADDRESS")):  # a Ray of our own: its token warning is not news
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address, log_to_driver=True)
    elif reservation is not None:
        # Ray's processes inherit the driver's CPU mask at start: keep them off the reserved core
        mask = os.sched_getaffinity(0)
        os.sched_setaffinity(0, reservation.ray)
        try:
            start_local_ray(num_cpus=len(reservation.ray))
        finally:
            os.sched_setaffinity(0, mask)
    else:
        start_local_ray()
    quiet_worker_exits()  # a retired worker's SIGTERM is not a traceback for the user
    if threading.current_thread() is threading.main_thread():
        # after ray.init, whose own handler aborts the process: `kill` and `ray job stop` end the
        # search like Ctrl-C, so every MLflow run gets a status and --resume can continue
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        signal.signal(signal.SIGTERM, INTERRUPTS.handle)
        signal.signal(signal.SIGINT, INTERRUPTS.handle)


RAY_START_TRIES = 3
_NODE_TIMEOUT = "timed out during startup"  # Ray's message when its raylet never registers


def start_local_ray(**kwargs: Any) -> None:
    """A Ray of our own (address="local": even when `ray start` left a head on this machine),
    started again when its node never comes up. About one start in a few hundred on a 2-core
    machine leaves the GCS waiting for a raylet that never wrote a line, and Ray gives up after
    its fixed 30 s; the processes that start left behind are ended before the next one."""
    import ray

    for attempt in range(1, RAY_START_TRIES + 1):
        before = _descendants()
        try:
            ray.init(address="local", include_dashboard=False, configure_logging=True, logging_level=logging.WARNING,
                     **kwargs)
            return
        except Exception as exc:
            if _NODE_TIMEOUT not in str(exc) or attempt == RAY_START_TRIES:
                raise
            left = sorted(_descendants() - before)
            log.warning("Ray's local node did not start (%s); ending its %d processes and starting it again "
                        "(attempt %d of %d)", exc, len(left), attempt + 1, RAY_START_TRIES)
            for pid in left:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            ray.shutdown()


def _descendants(root: int | None = None) -> set[int]:
    """The processes below this one (Linux's /proc; empty elsewhere)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            # the command name may hold spaces and parentheses: the fields after the last ")"
            parents[int(entry.parent.name)] = int(entry.read_text().rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    frontier = [os.getpid() if root is None else root]
    while frontier:
        pid = frontier.pop()
        kids = [child for child, parent in parents.items() if parent == pid and child not in found]
        found.update(kids)
        frontier.extend(kids)
    return found


def storage_uri(opts: SearchOptions) -> str:
    """Ray Tune's storage: an absolute folder, or the object-store URI as given (no trailing /)."""
    text = str(Path(opts.cluster.storage_path).resolve()) if "://" not in opts.cluster.storage_path else opts.cluster.storage_path
    return text.rstrip("/")


def search_state_path(opts: SearchOptions, name: str) -> Path:
    """Where a search keeps its trial -> MLflow run mapping and finished trials (the tracker's state)."""
    from raysearch.tracking.runs import STATE_FILE

    return local_root(opts) / "state" / name / STATE_FILE


def local_root(opts: SearchOptions) -> Path:
    """Where the driver keeps its own files (search state; synthetic data on a local storage): the
    storage folder, or with an object store $RAYSEARCH_STATE_DIR, else ~/.raysearch. Never the
    current folder: under `ray job submit --working-dir` that is a copy made for each job, and a
    resubmitted `--resume` would not find the search it continues."""
    if "://" not in opts.cluster.storage_path:
        return Path(opts.cluster.storage_path).resolve()
    return Path(os.environ.get("RAYSEARCH_STATE_DIR") or Path.home() / ".raysearch").expanduser().resolve()


MIN_FREE_BYTES = 256 * 2**20  # checkpoints, trial states, ONNX files and the experiment's snapshots


def check_writable(folder: Path, what: str, min_free: int = MIN_FREE_BYTES) -> None:
    """Fail in one line, before Ray starts, when the search could not write its files: a folder
    it may not write, or one without working room (a search that fills the disk half-way loses
    time, whatever it ends with)."""
    import shutil

    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".raysearch-write-check-"):
            pass
        free = shutil.disk_usage(folder).free
    except OSError as e:
        raise ValueError(f"{what} {folder} is not writable ({e.strerror}); pass a folder this user may write "
                         f"(or an object-store URI to --storage-path)") from None
    if free < min_free:
        raise ValueError(f"{what} {folder} has {free / 2**20:.0f} MiB free; a search needs at least "
                         f"{min_free / 2**20:.0f} MiB there (free some space or pass another folder)")


def preflight(opts: SearchOptions) -> None:
    """What the options name outside this process, checked before anything is created or started:
    the Ray cluster, the data, the tracking store (`ValueError`, one line naming it)."""
    from raysearch.data import check_data
    from raysearch.search.ray_cluster import check_cluster, ray_is_up
    from raysearch.tracking.store import check_store

    if (address := opts.cluster.address or os.environ.get("RAY_ADDRESS")) and not ray_is_up():
        check_cluster(address)  # no cluster there, or one that wants a token this process lacks
    check_data(opts.data, limit=opts.limit, seed=opts.seed)
    check_store(opts.tracking.store(), write=True)


class SearchLock:
    """One driver per search name: a second search started with the same --name (or a --resume
    while the first still runs) is refused in one line. An advisory lock on a file in the
    driver's own folder, released by the kernel when the process dies, so a killed driver never
    leaves a stale lock."""

    def __init__(self, path: Path, name: str) -> None:
        import fcntl

        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(self._fd, 200).decode(errors="replace").strip() or "another process"
            self.release()
            raise ValueError(f"a search named {name!r} is already running ({holder}); wait for it, stop it, "
                             "or pass another --name") from None
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"pid {os.getpid()} on {os.uname().nodename}".encode())

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the lock
            self._fd = None


class Deadline:
    """At ``deadline``, interrupt the search exactly as Ctrl-C does (SIGINT to this process): Ray
    Tune saves the experiment state, so the search can be resumed where it stopped."""

    def __init__(self, deadline: float | None) -> None:
        self.deadline, self.fired = deadline, False
        self._timer: threading.Timer | None = None

    def _fire(self) -> None:
        self.fired = True
        log.warning("time budget reached: stopping the search (it can be resumed)")
        os.kill(os.getpid(), signal.SIGINT)

    def __enter__(self) -> "Deadline":
        if self.deadline is not None:
            self._timer = threading.Timer(max(0.0, self.deadline - time.time()), self._fire)
            self._timer.daemon = True
            self._timer.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._timer is not None:
            self._timer.cancel()


@contextlib.contextmanager
def classic_tune_output(quiet: bool) -> Iterator[None]:
    """Ray Tune's classic console output for the concise view: its newer one prints a configuration
    box, the experiment's folder and a TensorBoard hint into Ray's temporary session even at
    verbose=0. For this fit only (Ray Tune reads the variable when the fit starts): nothing else in
    the process is changed."""
    saved = os.environ.get("RAY_AIR_NEW_OUTPUT")
    if quiet:
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("RAY_AIR_NEW_OUTPUT", None)
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = saved


def shipped_families() -> tuple[Any, ...]:
    """Model families registered in this process beyond the built-in ones. They travel to the
    trials with the settings; a module that trial processes could not import (a script, a
    notebook, a test file) is pickled by value."""
    import sys

    from ray import cloudpickle  # Ray serializes with its own copy of cloudpickle

    from raysearch.models.registry import user_families

    fams = user_families()
    for f in fams:
        mod = sys.modules.get(getattr(f.build, "__module__", ""))
        if mod is not None and mod.__name__ != "__main__" and "-packages" not in (getattr(mod, "__file__", "") or ""):
            cloudpickle.register_pickle_by_value(mod)
    return fams


class farm_for:
    """The farm to use: --farm, or a local benchd for the duration of the search."""

    def __init__(self, opts: SearchOptions, reservation: CpuReservation | None = None) -> None:
        self.opts, self.reservation = opts, reservation
        self._ctx: contextlib.AbstractContextManager[str] | None = None

    def __enter__(self) -> str:
        if self.opts.bench.farm:
            return self.opts.bench.farm
        self._ctx = local_benchd(self.opts.bench.device_class, cpus=self.reservation.benchd if self.reservation else ())
        return self._ctx.__enter__()

    def __exit__(self, *exc: Any) -> None:
        if self._ctx is not None:
            self._ctx.__exit__(*exc)
