"""Keep the search's console readable: no traceback for a worker's own exit, and a failed trial
in one line.

Ray forwards every worker's stdout and stderr to the driver's console. When Ray retires a worker
(an idle trial worker, the end of a search) it sends SIGTERM, and Ray's handler in the worker
raises ``SystemExit``; when that lands while the worker runs a finalizer (``__del__``, a weakref
callback), Python prints "Exception ignored in ... sigterm_handler ... SystemExit: 1" with a
traceback. Nothing went wrong (the worker was meant to exit), so that block is dropped from the
console; every other line, tracebacks of real errors included, is printed as before. The worker's
own log file under Ray's session folder keeps everything.

A trial that fails is logged by Ray Tune's controller with the trial's whole remote traceback;
`condense_trial_errors` makes that record one line naming the trial and the cause (the traceback
stays in the trial's error file, which Ray names on the next line, and in its MLflow run).

How: Ray prints worker output through the handlers of its log dispatcher
(`ray._private.ray_logging.global_worker_stdstream_dispatcher`, the ``ray_print_logs`` handler
`ray.init` adds with ``log_to_driver``). That is Ray's private API: when it is not there as
expected, nothing is changed (the noise stays, nothing else is lost). `tests/search/test_search.py`
checks it against the Ray installed.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

log = logging.getLogger(__name__)

HANDLER = "ray_print_logs"  # the name ray.init gives its console handler


def without_exit_noise(lines: Sequence[str]) -> list[str]:
    """``lines`` without the "Exception ignored in ..." blocks whose traceback passes through
    Ray's ``sigterm_handler`` and ends in ``SystemExit``."""
    out: list[str] = []
    i = 0
    while i < len(lines):
        if lines[i].startswith("Exception ignored in"):
            j = i + 1
            while j < len(lines) and (lines[j].startswith((" ", "\t")) or lines[j].startswith("Traceback")):
                j += 1
            if j < len(lines) and lines[j].startswith("SystemExit") and \
                    any("sigterm_handler" in line for line in lines[i:j]):
                i = j + 1
                continue
        out.append(lines[i])
        i += 1
    return out


def _filtered(handler: Callable[[dict[str, Any]], Any]) -> Callable[[dict[str, Any]], Any]:
    def handle(data: dict[str, Any]) -> Any:
        lines = data.get("lines")
        if isinstance(lines, list) and any(line.startswith("Exception ignored in") for line in lines):
            kept = without_exit_noise(lines)
            if not kept:
                return None
            data = {**data, "lines": kept}
        return handler(data)

    handle.raysearch_filtered = True  # type: ignore[attr-defined]
    return handle


def quiet_worker_exits() -> bool:
    """Wrap the console handler Ray installed (after `ray.init`); True when it was found."""
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:
        return False
    handlers = getattr(dispatcher, "handlers", None)
    lock = getattr(dispatcher, "_lock", None)
    if not isinstance(handlers, list) or lock is None:
        log.debug("Ray's log dispatcher is not as expected: worker exit tracebacks stay on the console")
        return False
    with lock:
        found = False
        for k, (name, handler) in enumerate(handlers):
            if name == HANDLER:
                found = True
                if not getattr(handler, "raysearch_filtered", False):
                    handlers[k] = (name, _filtered(handler))
    return found


TUNE_CONTROLLER = "ray.tune.execution.tune_controller"  # the logger of "Trial task failed for trial ..."
EXPERIMENT_STATE = "ray.tune.execution.experiment_state"  # "Saving experiment state ... failed" (a full disk)


class _OneLineErrors(logging.Filter):
    """A record with a traceback whose message starts with ``prefix`` as one line: its message, the
    cause's type and first line (any other record is kept whole)."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and str(record.msg).startswith(self.prefix):
            exc = record.exc_info[1]
            cause = getattr(exc, "cause", None) or exc  # a RayTaskError wraps the trial's own exception
            first = (str(cause).strip().splitlines() or [""])[0][:300]
            head = record.getMessage().rstrip().rstrip(":")
            record.msg = f"{head}: {type(cause).__name__}: {first}"
            record.args, record.exc_info, record.exc_text = None, None, None
        return True


def condense_trial_errors() -> None:
    """Ray Tune's "Trial task failed" and failed experiment-state saves as one line each
    (idempotent); the tracebacks stay in the trial's error file and Ray's session logs."""
    for name, prefix in ((TUNE_CONTROLLER, "Trial task failed"), (EXPERIMENT_STATE, "Saving experiment state")):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _OneLineErrors) for f in logger.filters):
            logger.addFilter(_OneLineErrors(prefix))
