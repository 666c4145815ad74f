"""What a guest asks of its host over time: CPU cores and memory bytes.

A demand model is a pure function of simulated time, so replaying a scenario
with the same seed gives the same load. The simulator caps CPU demand at the
guest's vCPUs and memory at its configured maximum; models need not.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field

from pvesim.traces import Trace


class Demand:
    """Base: constant zero. Subclasses override `at`."""

    def at(self, t: float) -> tuple[float, float]:
        """(cpu cores, memory bytes) wanted at simulated time `t`."""
        return 0.0, 0.0

    def describe(self) -> str:
        return type(self).__name__


@dataclass
class ConstantDemand(Demand):
    cpu: float
    mem: float

    def at(self, t: float) -> tuple[float, float]:
        return self.cpu, self.mem

    def describe(self) -> str:
        return f"constant(cpu={self.cpu}, mem={self.mem:.0f})"


@dataclass
class StepDemand(Demand):
    """Piecewise-constant: a base level, then from each step's time on the
    step's values (None keeps the previous value). Spikes are steps with an
    end: `spikes` entries (start, end, cpu, mem) override the level inside
    [start, end). Times are absolute simulated seconds."""

    base_cpu: float
    base_mem: float
    steps: list[tuple[float, float | None, float | None]] = field(default_factory=list)
    spikes: list[tuple[float, float, float | None, float | None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.steps.sort(key=lambda s: s[0])
        self._times = [s[0] for s in self.steps]
        cpu, mem = self.base_cpu, self.base_mem
        self._levels: list[tuple[float, float]] = []
        for _, c, m in self.steps:
            cpu = cpu if c is None else c
            mem = mem if m is None else m
            self._levels.append((cpu, mem))

    def add_step(self, t: float, cpu: float | None, mem: float | None) -> None:
        """Used by timed scenario events (`set_demand`)."""
        self.steps.append((t, cpu, mem))
        self.__post_init__()

    def at(self, t: float) -> tuple[float, float]:
        i = bisect_right(self._times, t)
        cpu, mem = (self.base_cpu, self.base_mem) if i == 0 else self._levels[i - 1]
        for start, end, c, m in self.spikes:
            if start <= t < end:
                cpu = cpu if c is None else c
                mem = mem if m is None else m
        return cpu, mem

    def describe(self) -> str:
        return f"steps({len(self.steps)} steps, {len(self.spikes)} spikes)"


class TraceDemand(Demand):
    """Replay of one Bitbrains VM. Simulated time `start` maps to trace time
    `trace.start + offset`; the trace loops when it runs out. CPU is scaled by
    `cpu_scale` (to fit a trace VM onto a guest with other vCPUs) and memory
    by `mem_scale`.

    Lookup keeps the current interpolation segment (in simulated time): the
    simulator asks for increasing times, so most calls are two comparisons
    and a multiply; a bisection happens once per trace sample."""

    def __init__(
        self,
        trace: Trace,
        start: float,
        offset: float = 0.0,
        cpu_scale: float = 1.0,
        mem_scale: float = 1.0,
    ) -> None:
        self.trace = trace
        self.start = start
        self.offset = offset
        self.cpu_scale = cpu_scale
        self.mem_scale = mem_scale
        self._span = max(trace.span, 1.0)
        # the current interpolation segment, in simulated time
        self._lo = 1.0
        self._hi = 0.0
        self._c0 = self._dc = self._m0 = self._dm = 0.0

    def at(self, t: float) -> tuple[float, float]:
        if self._lo <= t < self._hi:
            d = t - self._lo
            return self._c0 + self._dc * d, self._m0 + self._dm * d
        return self._seek(t)

    def _seek(self, t: float) -> tuple[float, float]:
        tr = self.trace
        times = tr.times
        tt = (t - self.start + self.offset) % self._span + times[0]
        i = max(0, min(len(times) - 2, bisect_right(times, tt) - 1))
        if len(times) < 2:
            return tr.cpu_cores[0] * self.cpu_scale, tr.mem_bytes[0] * self.mem_scale
        t0, t1 = times[i], times[i + 1]
        width = t1 - t0
        self._lo = t - (tt - t0)
        self._hi = self._lo + width
        self._c0 = tr.cpu_cores[i] * self.cpu_scale
        self._m0 = tr.mem_bytes[i] * self.mem_scale
        self._dc = (tr.cpu_cores[i + 1] * self.cpu_scale - self._c0) / width
        self._dm = (tr.mem_bytes[i + 1] * self.mem_scale - self._m0) / width
        d = t - self._lo
        return self._c0 + self._dc * d, self._m0 + self._dm * d

    def describe(self) -> str:
        return f"trace(vm={self.trace.vm}, offset={self.offset:.0f})"
