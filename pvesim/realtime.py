"""Drive the simulator's virtual clock from the wall clock.

`pvesim serve` runs the cluster in real time, optionally sped up: a thread
advances the simulation by `elapsed wall time * speed` every `tick` seconds.
The Simulator's own lock makes each advance atomic with respect to API
calls, so a client never sees half a step. Pausing stops the clock (the API
keeps answering); `advance()` through the control surface still jumps it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger("pvesim.realtime")


class Advanceable(Protocol):
    def advance(self, seconds: float) -> None: ...


class RealtimeDriver:
    """Advance `sim` in a background thread at `speed` times wall time."""

    def __init__(
        self,
        sim: Advanceable,
        speed: float = 1.0,
        tick: float = 0.25,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if speed <= 0:
            raise ValueError(f"speed {speed}: must be > 0")
        if tick <= 0:
            raise ValueError(f"tick {tick}: must be > 0")
        self.sim = sim
        self.tick = tick
        self._speed = speed
        self._monotonic = monotonic
        self._stop = threading.Event()
        self._paused = False
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    @property
    def speed(self) -> float:
        return self._speed

    @speed.setter
    def speed(self, value: float) -> None:
        if value <= 0:
            raise ValueError(f"speed {value}: must be > 0")
        with self._lock:
            self._speed = value

    @property
    def paused(self) -> bool:
        return self._paused

    def pause(self) -> None:
        with self._lock:
            self._paused = True

    def resume(self) -> None:
        with self._lock:
            self._paused = False

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("RealtimeDriver already started")
        self._thread = threading.Thread(target=self._run, name="pvesim-clock", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        last = self._monotonic()
        while not self._stop.wait(self.tick):
            now = self._monotonic()
            elapsed = now - last
            last = now
            with self._lock:
                step = 0.0 if self._paused else elapsed * self._speed
            if step <= 0:
                continue
            try:
                self.sim.advance(step)
            except Exception as exc:  # a physics bug must be visible, not a silent freeze
                log.exception("simulation step of %.3f s failed; clock stopped", step)
                self.error = exc
                return
