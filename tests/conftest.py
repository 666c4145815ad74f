"""Helpers for writing inline cluster setups in tests.

The agent-plus-simulator wiring is `simlab.inprocess` (`make_lab`,
`InProcessLab`), shared with the benchmarks. This module imports neither
the simulator nor the lab: the package build runs a few unit tests with this
conftest and without them.
"""

from __future__ import annotations

from typing import Any


def nodes_spec(count: int, cores: int = 16, memory: str = "64GiB",
               prefix: str = "pve") -> list[dict[str, Any]]:
    return [{"name": f"{prefix}{i + 1}", "cores": cores, "memory": memory,
             "base_memory": "4GiB"} for i in range(count)]


def guest_spec(vmid: int, node: str, cpu: float = 0.2, mem: str = "4GiB", cores: int = 4,
               memory: str = "4GiB", **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"vmid": vmid, "node": node, "name": f"vm{vmid}", "cores": cores,
                            "memory": memory, "demand": {"cpu": cpu, "mem": mem}}
    spec.update(extra)
    return spec
