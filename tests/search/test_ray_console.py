"""A retired Ray worker's SIGTERM is not a traceback on the search's console (`raysearch.search.ray_console`)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from raysearch.search.ray_console import without_exit_noise
from tests.helpers import REPO

NOISE = ["Exception ignored in: <function Dying.__del__ at 0x7f>", "Traceback (most recent call last):",
         '  File "x.py", line 7, in __del__', "    os.kill(os.getpid(), signal.SIGTERM)",
         '  File "ray/_private/worker.py", line 1063, in sigterm_handler',
         "    raise_sys_exit_with_custom_error_message(", "SystemExit: 1"]


def test_only_the_exit_block_is_dropped():
    real_error = ["Exception ignored in: <function F.__del__>", "Traceback (most recent call last):",
                  '  File "y.py", line 3, in __del__', "ValueError: bad"]
    lines = ["before", *NOISE, "between", *real_error, "after"]
    assert without_exit_noise(lines) == ["before", "between", *real_error, "after"]
    # a SystemExit that did not come from Ray's handler stays
    own_exit = [NOISE[0], NOISE[1], NOISE[2], "SystemExit: 3"]
    assert without_exit_noise(own_exit) == own_exit
    assert without_exit_noise(NOISE[:-1]) == NOISE[:-1]  # cut off before its last line: kept whole


# A Ray actor receives SIGTERM while the main thread runs a finalizer: Ray's handler raises
# SystemExit there and Python prints "Exception ignored in ... sigterm_handler ... SystemExit: 1",
# as when Ray retires an idle trial worker.
SCRIPT = textwrap.dedent("""
    import os, signal, sys, time
    import ray

    class Dying:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.5)

    @ray.remote
    class Worker:
        def run(self):
            print("a line of the trial", file=sys.stderr, flush=True)
            d = Dying()
            del d
            return os.getpid()

    if sys.argv[1] == "raysearch":
        from raysearch.search.runtime import init_ray
        init_ray(None)
    else:
        ray.init(address="local", include_dashboard=False, num_cpus=1)
    ray.get(Worker.remote().run.remote())
    time.sleep(3)  # the worker's output reaches the driver
    ray.shutdown()
""")


def test_a_workers_sigterm_traceback_stays_off_the_console(tmp_path):
    script = tmp_path / "worker_exit.py"
    script.write_text(SCRIPT)
    env = {"PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0", "PATH": "/usr/bin:/bin"}
    out = {}
    for how in ("plain", "raysearch"):
        p = subprocess.run([sys.executable, str(script), how], capture_output=True, text=True, timeout=240,
                           cwd=tmp_path, env=env)
        assert p.returncode == 0, p.stderr[-2000:]
        out[how] = p.stdout + p.stderr
    assert "sigterm_handler" in out["plain"] and "SystemExit: 1" in out["plain"]  # the case is real
    assert "a line of the trial" in out["raysearch"]  # the worker's other output still shows
    assert "sigterm_handler" not in out["raysearch"] and "SystemExit" not in out["raysearch"]


def test_a_failed_trial_is_one_line_naming_the_cause():
    """Ray Tune logs a failed trial with its whole remote traceback; the concise view keeps one line."""
    import logging

    from ray.exceptions import RayTaskError

    from raysearch.search.ray_console import TUNE_CONTROLLER, condense_trial_errors

    condense_trial_errors()
    condense_trial_errors()  # idempotent
    logger = logging.getLogger(TUNE_CONTROLLER)
    assert len([f for f in logger.filters if type(f).__name__ == "_OneLineErrors"]) == 1
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    keep = Keep()
    logger.addHandler(keep)
    try:
        try:
            raise OSError(28, "No space left on device")
        except OSError as cause:
            wrapped = RayTaskError("ImplicitFunc.train", "Traceback (most recent call last):\n  ...", cause)
            logger.error("Trial task failed for trial run_trial_00000", exc_info=wrapped.as_instanceof_cause())
        logger.error("something else", exc_info=ValueError("kept whole"))
    finally:
        logger.removeHandler(keep)
    first, other = records
    assert first.exc_info is None and "\n" not in first.getMessage()
    assert first.getMessage() == "Trial task failed for trial run_trial_00000: OSError: [Errno 28] No space left on device"
    assert other.exc_info is not None  # only the trial failure record is condensed
