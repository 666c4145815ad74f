"""Bitbrains GWA-T-12 trace replay (GWA-T-12 Bitbrains, Grid Workloads Archive, TU Delft).

The trace file is one gzip CSV of 1.7 million rows (200 VMs, one sample per
VM every ~300 s for a month), sorted by VM. A scenario needs a hundred VMs at
most, so the loader decompresses once, finds each wanted VM's contiguous block
by byte search and parses only those lines. Parsed traces are cached per
process (keyed by file and VM), so several simulators in one test run pay the
cost once, and on disk ($PVESIM_CACHE_DIR, default ~/.cache/pvesim; "off"
disables it), so later processes skip the parse.

Conventions (from the trace README):
- CPU demand in cores = cpu_usage_mhz / (cpu_capacity_mhz / cpu_cores).
- mem_usage_kb == 0 means "missing", not idle: the previous value is carried.
"""

from __future__ import annotations

import gzip
import marshal
import os
import threading
import time
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path

TRACE_FILE_NAME = "bitbrains-rnd-2013-08-vm001-200.csv.gz"
TRACE_ENV = "PVESIM_TRACE_FILE"
CACHE_ENV = "PVESIM_CACHE_DIR"  # where parsed traces are kept; "off" disables
CACHE_VERSION = 1


class TraceError(ValueError):
    """The trace file is missing, unreadable or lacks a requested VM."""


@dataclass(frozen=True)
class Trace:
    """One VM's samples, sorted by time. Values are per sample; between
    samples `Trace.at` interpolates linearly."""

    vm: int
    times: tuple[float, ...]
    cpu_cores: tuple[float, ...]  # CPU demand in cores
    mem_bytes: tuple[float, ...]  # memory in use
    vcpus: int
    mem_capacity: int  # bytes provisioned

    @property
    def start(self) -> float:
        return self.times[0]

    @property
    def span(self) -> float:
        return self.times[-1] - self.times[0]

    def at(self, t: float) -> tuple[float, float]:
        """(cpu cores, memory bytes) at trace time `t` (clamped to the ends)."""
        times = self.times
        if t <= times[0]:
            return self.cpu_cores[0], self.mem_bytes[0]
        if t >= times[-1]:
            return self.cpu_cores[-1], self.mem_bytes[-1]
        i = bisect_right(times, t)
        t0, t1 = times[i - 1], times[i]
        f = (t - t0) / (t1 - t0) if t1 > t0 else 0.0
        c = self.cpu_cores[i - 1] + (self.cpu_cores[i] - self.cpu_cores[i - 1]) * f
        m = self.mem_bytes[i - 1] + (self.mem_bytes[i] - self.mem_bytes[i - 1]) * f
        return c, m


_cache: dict[tuple[str, int], Trace] = {}
_raw_cache: dict[str, bytes] = {}
_vm_list_cache: dict[str, list[int]] = {}
_lock = threading.Lock()
last_load_seconds: float = 0.0  # wall time of the most recent load (bench reporting)


def default_trace_file() -> Path:
    """Where the trace lives: $PVESIM_TRACE_FILE, else the shared traces
    directory next to the repository checkout."""
    env = os.environ.get(TRACE_ENV)
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parent.parent
    return repo.parent / "shared" / "traces" / TRACE_FILE_NAME


def _cache_dir(path: Path) -> Path | None:
    """Per-trace-file cache directory, keyed by the file's name, size and
    mtime so a changed file is never served stale."""
    base = os.environ.get(CACHE_ENV)
    if base == "off":
        return None
    if not base:
        xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        base = str(Path(xdg) / "pvesim")
    try:
        st = path.stat()
    except OSError:
        return None
    return Path(base) / f"v{CACHE_VERSION}-{path.name}-{st.st_size}-{int(st.st_mtime)}"


def _cache_read(path: Path, vm: int) -> Trace | None:
    d = _cache_dir(path)
    if d is None:
        return None
    try:
        raw = (d / f"{vm}.marshal").read_bytes()
        t, c, m, vcpus, cap = marshal.loads(raw)
        return Trace(vm, tuple(t), tuple(c), tuple(m), int(vcpus), int(cap))
    except (OSError, ValueError, EOFError, TypeError):
        return None


def _cache_write(path: Path, trace: Trace) -> None:
    d = _cache_dir(path)
    if d is None:
        return
    try:
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / f".{trace.vm}.{os.getpid()}.tmp"
        tmp.write_bytes(
            marshal.dumps(
                (trace.times, trace.cpu_cores, trace.mem_bytes, trace.vcpus, trace.mem_capacity)
            )
        )
        tmp.replace(d / f"{trace.vm}.marshal")
    except OSError:
        pass  # a cache is an optimisation only


def available_vms(path: Path | None = None) -> list[int]:
    """VM numbers present in the file (1..200 for the shipped trace), cached."""
    path = path or default_trace_file()
    key = str(path)
    if key not in _vm_list_cache:
        d = _cache_dir(path)
        if d is not None:
            try:
                _vm_list_cache[key] = [
                    int(v) for v in marshal.loads((d / "vms.marshal").read_bytes())
                ]
                return list(_vm_list_cache[key])
            except (OSError, ValueError, EOFError, TypeError):
                pass
        data = _raw(path)
        seen: dict[int, None] = {}
        for line in data.split(b"\n")[1:]:
            comma = line.find(b",")
            if comma > 0:
                seen[int(line[:comma])] = None
        _vm_list_cache[key] = sorted(seen)
        if d is not None:
            try:
                d.mkdir(parents=True, exist_ok=True)
                tmp = d / f".vms.{os.getpid()}.tmp"
                tmp.write_bytes(marshal.dumps(_vm_list_cache[key]))
                tmp.replace(d / "vms.marshal")
            except OSError:
                pass
    return list(_vm_list_cache[key])


def _raw(path: Path) -> bytes:
    key = str(path)
    with _lock:
        if key not in _raw_cache:
            try:
                with gzip.open(path, "rb") as fh:
                    _raw_cache[key] = fh.read()
            except OSError as exc:
                raise TraceError(f"cannot read trace file {path}: {exc}") from exc
        return _raw_cache[key]


def load_traces(vms: list[int], path: Path | None = None) -> dict[int, Trace]:
    """Parse the given VMs' samples (cached). Raises TraceError naming a VM
    that is not in the file."""
    global last_load_seconds  # noqa: PLW0603 — a single bench figure, not state
    t0 = time.perf_counter()
    path = path or default_trace_file()
    out: dict[int, Trace] = {}
    missing = [vm for vm in vms if (str(path), vm) not in _cache]
    unparsed = []
    for vm in missing:
        cached = _cache_read(path, vm)
        if cached is None:
            unparsed.append(vm)
        else:
            with _lock:
                _cache[(str(path), vm)] = cached
    if unparsed:
        data = _raw(path)
        for vm in unparsed:
            trace = _parse_vm(data, vm, path)
            _cache_write(path, trace)
            with _lock:
                _cache[(str(path), vm)] = trace
    for vm in vms:
        out[vm] = _cache[(str(path), vm)]
    last_load_seconds = time.perf_counter() - t0
    return out


def _parse_vm(data: bytes, vm: int, path: Path) -> Trace:
    prefix = b"\n%d," % vm
    start = data.find(prefix)
    if start < 0:
        raise TraceError(f"VM {vm} is not in trace file {path}")
    rows: list[tuple[float, float, int, int, int]] = []
    pos = start + 1
    n = len(data)
    head = prefix[1:]
    while pos < n and data.startswith(head, pos):
        end = data.find(b"\n", pos)
        if end < 0:
            end = n
        parts = data[pos:end].split(b",")
        pos = end + 1
        try:
            ts = float(parts[1])
            cores = int(parts[2])
            cap_mhz = float(parts[3])
            use_mhz = float(parts[4])
            mem_cap_kb = int(float(parts[5]))
            mem_use_kb = int(float(parts[6]))
        except (IndexError, ValueError) as exc:
            raise TraceError(f"{path}: malformed row for VM {vm}: {parts!r}") from exc
        per_core = cap_mhz / cores if cores > 0 and cap_mhz > 0 else 0.0
        demand = use_mhz / per_core if per_core > 0 else 0.0
        rows.append((ts, max(0.0, min(float(cores), demand)), cores, mem_cap_kb, mem_use_kb))
    rows.sort(key=lambda r: r[0])
    times: list[float] = []
    cpu: list[float] = []
    mem: list[float] = []
    last_mem = 0.0
    first_known = next((r[4] for r in rows if r[4] > 0), 0)
    last_mem = float(first_known) * 1024
    for ts, c, _cores, _cap, mu in rows:
        if times and ts <= times[-1]:
            continue  # duplicate timestamp: keep the first sample
        if mu > 0:
            last_mem = float(mu) * 1024
        times.append(ts)
        cpu.append(c)
        mem.append(last_mem)
    vcpus = max(r[2] for r in rows)
    mem_capacity = max(r[3] for r in rows) * 1024
    return Trace(vm, tuple(times), tuple(cpu), tuple(mem), vcpus, mem_capacity)
