"""`parse_guest`'s inline fast paths give what the general helpers give, for
every kind of value a field can hold (missing, None, the wrong type, NaN,
out of range, numbers as text), and `make_guest` builds an ordinary frozen
`Guest`."""

from __future__ import annotations

import dataclasses
import math
import random
import re
from collections.abc import Mapping
from typing import Any

import pytest

from pve_balancer import pve
from pve_balancer.model import Guest, make_guest
from pve_balancer.pve import _flag, _int, _num, _text, parse_guest, parse_resources, parse_tags


def reference_guest(entry: Mapping[str, Any]) -> Guest | None:
    """The plain reading: one helper per field, the dataclass constructor."""
    kind = _text(entry.get("type"))
    vmid = _int(entry.get("vmid"), -1)
    if vmid < 0:
        m = re.fullmatch(r"(?:qemu|lxc)/(\d+)", _text(entry.get("id")))
        vmid = int(m.group(1)) if m else -1
    node = _text(entry.get("node"))
    if vmid < 0 or not node:
        return None
    mem = entry.get("memhost")
    if mem is None:
        mem = entry.get("mem")
    hastate = _text(entry.get("hastate"))
    return Guest(vmid=vmid, name=_text(entry.get("name")) or f"{kind}{vmid}", node=node,
                 kind=kind, status=_text(entry.get("status")) or "unknown",
                 cpu=_num(entry.get("cpu")), maxcpu=_num(entry.get("maxcpu"), 1.0),
                 mem=_int(mem), maxmem=_int(entry.get("maxmem")),
                 template=_flag(entry.get("template")),
                 lock=_text(entry.get("lock")) or None,
                 tags=parse_tags(entry.get("tags")), tags_known="tags" in entry,
                 ha_managed=bool(hastate) and hastate != "ignored")


MISSING = object()
NUMBERS: list[object] = [
    MISSING, None, 0, 1, 2, -3, 0.0, -0.0, 0.5, 1.75, 1e19, -1e19, 10**19, math.nan, math.inf,
    -math.inf, True, False, "4", "0.25", "nan", "x", "", [], {},
    *(sign * pve.NUMBER_LIMIT * factor for sign in (1, -1) for factor in (0.5, 1, 2)),
    *(sign * int(pve.NUMBER_LIMIT) + delta for sign in (1, -1) for delta in (-1, 0, 1))]
TEXTS: list[object] = [MISSING, None, "", "pve1", "vm 1", 7, 0, 1.5, True]
CHOICES: dict[str, list[object]] = {
    "type": [MISSING, "qemu", "lxc", None, 3],
    "vmid": [*NUMBERS, 100, 101, 2**31],
    "id": [MISSING, "qemu/123", "lxc/7", "qemu/x", None],
    "node": TEXTS,
    "name": TEXTS,
    "status": [*TEXTS, "running", "stopped"],
    "cpu": NUMBERS,
    "maxcpu": NUMBERS,
    "mem": NUMBERS,
    "memhost": NUMBERS,
    "maxmem": NUMBERS,
    "template": [MISSING, None, 0, 1, "0", "1", "true", " Yes ", "off", 0.0, 2],
    "lock": [MISSING, None, "", "migrate", "backup", 0, 5],
    "hastate": [MISSING, None, "", "started", "ignored", "stopped", 0, 1],
    "tags": [MISSING, None, "", "a", "a;b", "a, b  c", ";;", 5, 0],
}


def random_entry(rng: random.Random) -> dict[str, Any]:
    entry: dict[str, Any] = {}
    for key, values in CHOICES.items():
        value = rng.choice(values) if rng.random() < 0.6 else values[min(3, len(values) - 1)]
        if value is not MISSING:
            entry[key] = value
    return entry


def exact(guest: Guest | None) -> object:
    """Every field's type and repr: 2 == 2.0 and 0.0 == -0.0, but not here."""
    if guest is None:
        return None
    assert type(guest) is Guest
    return [(f.name, type(value).__name__, repr(value))
            for f in dataclasses.fields(Guest) for value in [getattr(guest, f.name)]]


@pytest.mark.parametrize("seed", range(4))
def test_parse_guest_equals_the_plain_reading(seed: int) -> None:
    rng = random.Random(seed)
    kept = 0
    for _ in range(3000):
        entry = random_entry(rng)
        got, want = parse_guest(entry), reference_guest(entry)
        assert exact(got) == exact(want), entry
        kept += got is not None
    assert kept > 1000


def test_parse_resources_sorts_and_filters_as_before() -> None:
    rng = random.Random(11)
    data: list[object] = []
    for i in range(400):
        entry = random_entry(rng)
        entry["type"] = rng.choice(("qemu", "lxc", "node", "storage"))
        entry["vmid"] = rng.randrange(100, 160)  # repeated vmids keep their order
        entry["node"] = f"pve{i % 5}"
        data.append(entry)
    data.insert(17, "not an object")
    nodes, guests = parse_resources(data)
    entries = [e for e in data if isinstance(e, dict)]
    want = sorted((g for e in entries if e["type"] in ("qemu", "lxc")
                   if (g := reference_guest(e)) is not None), key=lambda g: g.vmid)
    assert [exact(g) for g in guests] == [exact(g) for g in want]
    assert [n.name for n in nodes] == sorted(
        n.name for e in entries if e["type"] == "node" if (n := pve.parse_node(e)))


def test_make_guest_builds_a_frozen_guest_equal_to_the_constructed_one() -> None:
    args = (5, "vm5", "pve2", "lxc", "running", 0.25, 2.0, 3, 4, True, "backup",
            frozenset({"x"}), True, False)
    built, constructed = make_guest(*args), Guest(*args)
    assert type(built) is Guest
    assert built == constructed and hash(built) == hash(constructed)
    assert repr(built) == repr(constructed)
    assert dataclasses.replace(built, cpu=0.5) == dataclasses.replace(constructed, cpu=0.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.cpu = 0.9  # type: ignore[misc]
