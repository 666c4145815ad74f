"""The number and tag readers of the /cluster/resources parser keep their
meaning on their fast paths (exact floats and ints, empty tags): NaN still
falls back to the default, booleans and strings still convert, and a guest
without tags gets an empty set."""

from __future__ import annotations

import math

from pve_balancer.pve import _int, _num, parse_guest, parse_tags


def test_numbers() -> None:
    assert _num(0.25) == 0.25 and _num(3) == 3.0 and isinstance(_num(3), float)
    assert _num(math.nan, 7.0) == 7.0
    assert _num(True) == 1.0 and _num("0.5") == 0.5 and _num("x", 2.0) == 2.0
    assert _num(None, 4.0) == 4.0
    assert _int(8589934592) == 8589934592 and _int(2.9) == 2 and _int("12") == 12
    assert _int(math.nan, -1) == -1 and _int(None, -1) == -1 and _int(False) == 0


def test_tags() -> None:
    assert parse_tags(None) == frozenset() and parse_tags("") == frozenset()
    assert parse_tags("a;b, c") == frozenset({"a", "b", "c"})
    assert parse_tags(0) == frozenset({"0"})


def test_guest_memory_prefers_memhost() -> None:
    base = {"type": "qemu", "vmid": 101, "node": "pve1", "status": "running", "cpu": 0.5,
            "maxcpu": 2, "mem": 100, "maxmem": 1000}
    with_host = parse_guest({**base, "memhost": 150})
    without = parse_guest(base)
    assert with_host is not None and with_host.mem == 150
    assert without is not None and without.mem == 100 and without.tags == frozenset()
