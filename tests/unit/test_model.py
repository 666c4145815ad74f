from pve_balancer.model import Node, Snapshot


def test_mem_fraction_is_used_over_total_and_zero_for_unknown_total() -> None:
    assert Node("pve1", True, 0.1, 8, 4 << 30, 16 << 30).mem_fraction == 0.25
    assert Node("pve2", False, 0.0, 0, 0, 0).mem_fraction == 0.0


def test_snapshot_finds_nodes_by_name() -> None:
    pve1 = Node("pve1", True, 0.1, 8, 1, 2)
    snap = Snapshot(time=0.0, nodes=(pve1,), guests=())
    assert snap.node("pve1") is pve1
    assert snap.node("pve9") is None
