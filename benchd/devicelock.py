"""One timing run at a time per device: a FIFO lock with a bounded waiting room."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable


class QueueFull(Exception):
    """The waiting room is full (or the device is busy and the caller asked not to wait)."""


class QueueTimeout(Exception):
    """The caller's deadline passed while it waited."""


class QueueAbandoned(Exception):
    """The caller went away (RPC cancelled) while it waited."""


class DeviceLock:
    """`capacity` callers may wait while one holds the device; more get QueueFull at once."""

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError(f"queue capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self._cond = threading.Condition()
        self._busy = False
        self._waiting: deque[object] = deque()

    @property
    def busy(self) -> bool:
        return self._busy

    @property
    def depth(self) -> int:
        """Callers waiting (not counting the holder)."""
        return len(self._waiting)

    def wake(self) -> None:
        """Make waiters re-check their abandon condition now (e.g. on RPC cancellation)."""
        with self._cond:
            self._cond.notify_all()

    def acquire(
        self,
        *,
        deadline: float | None = None,
        abandoned: Callable[[], bool] = lambda: False,
        reject_if_busy: bool = False,
    ) -> float:
        """Block until this caller holds the device; returns the seconds waited.

        `deadline` is a time.monotonic() value. Raises QueueFull, QueueTimeout, QueueAbandoned.
        """
        start = time.monotonic()
        with self._cond:
            if not self._busy and not self._waiting:
                self._busy = True
                return 0.0
            if reject_if_busy:
                raise QueueFull(f"device busy ({len(self._waiting)} waiting)")
            if len(self._waiting) >= self.capacity:
                raise QueueFull(f"queue full ({len(self._waiting)} of {self.capacity} waiting)")
            ticket = object()
            self._waiting.append(ticket)
            try:
                while self._busy or self._waiting[0] is not ticket:
                    if abandoned():
                        raise QueueAbandoned("caller went away while queued")
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise QueueTimeout(f"deadline passed after {time.monotonic() - start:.1f} s in the queue")
                    self._cond.wait(1.0 if remaining is None else min(remaining, 1.0))
                self._busy = True
                return time.monotonic() - start
            finally:
                self._waiting.remove(ticket)
                self._cond.notify_all()

    def release(self) -> None:
        with self._cond:
            self._busy = False
            self._cond.notify_all()
