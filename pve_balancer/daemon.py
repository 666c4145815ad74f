"""The daemon loop around `Agent.run_cycle`: fixed rate, signals as flags,
systemd notifications and journal lines.

Signal handlers only set flags; the loop acts on them between cycles, so a
migration POST is never interrupted halfway. SIGTERM/SIGINT stop the loop
after the current cycle, release leadership (a standby takes over within its
next retry instead of after the lock's lifetime) and exit 0. SIGHUP re-reads
the configuration, framed by RELOADING=1 and READY=1 so `systemctl reload`
returns when it is done; a reload that fails, whatever the reason, is logged
and leaves the configuration in force and the loop running (a daemon that
exited here would do so holding the leader lock).

The loop keeps a fixed rate (cycle starts are `interval` apart, not
`interval` after the previous cycle ended) and warns when a cycle overruns;
missed slots are skipped rather than run back to back.

The watchdog (WATCHDOG=1, `WatchdogSec=60s` in the unit) is fed only by
cycles that completed in time: within `budget.CYCLE_LIMIT` (the cycle's
30 s request budget plus 5 s for the rest), and between cycles, while the
last one was in time, at most every `WATCHDOG_EVERY` seconds (an `interval`
up to 60 s must not starve it). A cycle the budget could not bound (a
pmxcfs call that hangs, a bug that loops) feeds nothing, so systemd kills
and restarts an agent that is stuck rather than one that is slow; the
first late cycle is said once, as an episode.

Journal volume (`episodes`): a quiet cluster would otherwise write a
near-identical line every 5 s, and a lasting problem a WARNING every cycle.
A sentence is logged at INFO when its wording (ignoring numbers) changes,
and repeated at most every `HEARTBEAT` seconds; a problem (WARNING, ERROR)
is logged once when it starts and once, at INFO, when it ends, with its
duration and the number of cycles; the repeats go to DEBUG (`-v`). Cycle
overruns are told the same way.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType

from .agent import Agent, CycleResult
from .budget import CYCLE_LIMIT
from .display import display_safe
from .env import Clock
from .episodes import HEARTBEAT, CycleJournal, Episodes, Line, sentence_kind
from .journal import log_sentence
from .notify import Notifier

log = logging.getLogger("pve_balancer")

__all__ = ["HEARTBEAT", "SLEEP_SLICE", "Daemon", "sentence_kind"]

SLEEP_SLICE = 0.5
"""Longest single sleep, so a stop flag set by a signal is seen promptly."""

WATCHDOG_EVERY = 10.0
"""Seconds between watchdog pings while sleeping after a cycle in time."""


class Daemon:
    def __init__(self, agent: Agent, clock: Clock, notifier: Notifier | None = None,
                 default_interval: float = 5.0, sleep_slice: float = SLEEP_SLICE) -> None:
        self.agent = agent
        self.sleep_slice = sleep_slice
        self.clock = clock
        self.notifier = notifier or Notifier()
        self.default_interval = default_interval
        self.stop_requested = threading.Event()
        self.reload_requested = threading.Event()
        self.cycles = 0
        self.overruns = 0
        self.journal = CycleJournal()
        self._overrun_episode = Episodes()
        self._last_overrun = float("-inf")
        self._late_episode = Episodes()
        self.cycle_limit = CYCLE_LIMIT
        self.in_time = False  # whether the last cycle completed within `cycle_limit`
        self._fed_at = float("-inf")
        self.late_cycles = 0

    # -- signals

    def request_stop(self, signum: int | None = None, _frame: FrameType | None = None) -> None:
        self.stop_requested.set()

    def request_reload(self, signum: int | None = None, _frame: FrameType | None = None) -> None:
        self.reload_requested.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        signal.signal(signal.SIGHUP, self.request_reload)

    # -- loop

    def interval(self) -> float:
        config = self.agent.config_source.config
        return config.interval if config is not None else self.default_interval

    def _log(self, result: CycleResult, now: float) -> None:
        _write(self.journal.lines(now, result.sentence, result.level, result.fields,
                                  result.error))

    def run_once(self) -> CycleResult:
        """One cycle with its logging and notifications."""
        if self.reload_requested.is_set():
            self.reload_requested.clear()
            log.info("SIGHUP: re-reading the configuration")
            self.notifier.reloading()
            try:
                self.agent.reload()
            except Exception as exc:  # a reload must never end the daemon (it holds the lock)
                log.error("re-reading the configuration failed (%s: %s); the configuration "
                          "in force is kept", type(exc).__name__, exc, exc_info=True)
            finally:
                self.notifier.ready()
        started = self.clock.now()
        result = self.agent.run_cycle()
        self.cycles += 1
        now = self.clock.now()
        self._log(result, now)
        role = self.agent.role()
        # One line: a newline from a guest name would start another sd_notify
        # assignment (STOPPING=1, MAINPID=...).
        self.notifier.status(display_safe(f"{role}: {result.sentence}"))
        took = now - started
        self.in_time = took <= self.cycle_limit
        if self.in_time:
            _write(self._late_episode.clear(now))
            self._feed(now)
        else:
            self.late_cycles += 1
            _write(self._late_episode.problem(
                now, f"cycle took {took:.0f} s, beyond the {self.cycle_limit:.0f} s a cycle may "
                "take; the watchdog is not fed for it", logging.WARNING, key="late",
                end="cycles complete in time again after {duration}, {cycles} were late"))
        if self.cycles == 1:
            self.notifier.ready()
        return result

    def _feed(self, now: float) -> None:
        self._fed_at = now
        self.notifier.watchdog()

    def _sleep_until(self, deadline: float) -> None:
        while not self.stop_requested.is_set():
            now = self.clock.now()
            if self.in_time and now - self._fed_at >= WATCHDOG_EVERY:
                self._feed(now)
            remaining = deadline - now
            if remaining <= 0:
                return
            self.clock.sleep(min(remaining, self.sleep_slice, WATCHDOG_EVERY))

    def run(self, max_cycles: int | None = None,
            on_cycle: Callable[[CycleResult], None] | None = None) -> int:
        """Loop until asked to stop, then shut down; returns the exit status."""
        self.loop(max_cycles, on_cycle)
        self.shutdown()
        return 0

    def loop(self, max_cycles: int | None = None,
             on_cycle: Callable[[CycleResult], None] | None = None, *,
             trailing_sleep: bool = False) -> None:
        """Cycles at a fixed rate until a stop is requested or `max_cycles`
        more cycles ran. With `trailing_sleep` the last cycle's slot is slept
        out too, so consecutive calls keep the rate (virtual-time tests)."""
        limit = None if max_cycles is None else self.cycles + max_cycles
        next_start = self.clock.now()
        while not self.stop_requested.is_set():
            result = self.run_once()
            if on_cycle is not None:
                on_cycle(result)
            if limit is not None and self.cycles >= limit and not trailing_sleep:
                break
            interval = self.interval()
            next_start += interval
            now = self.clock.now()
            if now > next_start:
                late = now - next_start + interval
                self.overruns += 1
                self._last_overrun = now
                _write(self._overrun_episode.problem(
                    now, f"cycle took {late:.1f} s, longer than the {interval:.0f} s interval; "
                    "skipping the missed slot", logging.WARNING, key="overrun",
                    end=f"cycles within the {interval:.0f} s interval again after {{duration}}, "
                    "{cycles} overran"))
                next_start = now
            elif now - self._last_overrun >= HEARTBEAT:
                # Overruns that recur (a slow endpoint asked once a minute
                # and timing out) are one episode: it ends only after
                # HEARTBEAT seconds without one, not at the next quick cycle.
                _write(self._overrun_episode.clear(now))
            self._sleep_until(next_start)
            if limit is not None and self.cycles >= limit:
                break

    def shutdown(self) -> None:
        self.notifier.stopping()
        try:
            self.agent.release()
        except Exception as exc:  # never block an orderly stop
            log.warning("releasing leadership failed: %s", exc)
        log.info("stopped after %d cycles", self.cycles)


def _write(lines: list[Line]) -> None:
    for line in lines:
        log_sentence(log, line.text, line.fields, line.level, error=line.error)
