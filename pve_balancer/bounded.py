"""File-system calls on /etc/pve with a deadline.

A pmxcfs that is stopping keeps its mount but leaves requests unanswered
until it has unmounted (up to ~10 s measured on 9.1.6), and a hung one never
answers; the kernel then holds the calling thread for as long. The agent's
election and its configuration source make their calls through
`BoundedCalls`, so such a mount costs them a deadline, not the kernel's
patience, and the election can step down and say why (docs/election.md).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

READ_DEADLINE = 2.0
"""Seconds a stat or a read of /etc/pve may take. pmxcfs answers reads from
memory at once, even without quorum; one that takes longer means pmxcfs is
stopping (measured on 9.1.6: requests held for up to ~10 s until it has
unmounted) or hung."""

_T = TypeVar("_T")


class NoAnswerError(Exception):
    """A bounded file-system call did not return in time (or an earlier one
    is still outstanding, so none was started)."""

    def __init__(self, what: str, waited: float, earlier: bool = False) -> None:
        self.what = what
        self.waited = waited
        self.earlier = earlier
        super().__init__(f"{what}: no answer for {waited:.0f} s" if earlier
                         else f"{what}: no answer within {waited:g} s")


@dataclass(eq=False)
class _Job:
    what: str
    call: Callable[[], object]
    started: float = field(default_factory=time.monotonic)
    done: threading.Event = field(default_factory=threading.Event)
    value: object = None
    error: BaseException | None = None


class BoundedCalls:
    """Runs file-system calls on one worker thread and waits for each at
    most its deadline, so that a mount that holds requests (pmxcfs stopping
    or hung) delays the caller by the deadline, not by as long as the kernel
    waits. A call that times out keeps its thread; until it returns, every
    further call fails at once with `NoAnswerError` instead of stacking another
    blocked thread on the same mount. The thread is a daemon: a stuck call
    never keeps the process from exiting. It ends after `idle` seconds
    without work and is started again by the next call, so that short-lived
    elections (`status`, tests) leave no threads behind."""

    def __init__(self, name: str = "pve-balancer pmxcfs", idle: float = 30.0) -> None:
        self.name = name
        self.idle = idle
        self._mutex = threading.Lock()
        self._job: _Job | None = None
        self._queue: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    @property
    def outstanding(self) -> str | None:
        """What the call still running is, if one is (for tests and logs)."""
        with self._mutex:
            return self._job.what if self._job is not None else None

    def call(self, what: str, fn: Callable[[], _T], deadline: float) -> _T:
        with self._mutex:
            stuck = self._job
            if stuck is not None:
                raise NoAnswerError(stuck.what, time.monotonic() - stuck.started, earlier=True)
            job = _Job(what, fn)
            self._job = job
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name=self.name, daemon=True)
                self._thread.start()
        self._queue.put(job)
        if not job.done.wait(deadline):
            raise NoAnswerError(what, deadline)
        if job.error is not None:
            raise job.error
        return job.value  # type: ignore[return-value]  # what fn returned

    def _work(self) -> None:
        while True:
            try:
                job = self._queue.get(timeout=self.idle)
            except queue.Empty:
                with self._mutex:
                    if self._job is None:  # nothing submitted meanwhile
                        self._thread = None
                        return
                continue
            try:
                job.value = job.call()
            except BaseException as exc:  # handed to the caller, if it still waits
                job.error = exc
            with self._mutex:
                self._job = None
            job.done.set()
