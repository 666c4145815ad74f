"""`python -m pvesim.pmxcfs.ctl`: drive a running emulator from a shell.

    python -m pvesim.pmxcfs.ctl --control /tmp/pve.sock status
    python -m pvesim.pmxcfs.ctl --control /tmp/pve.sock quorum pve3 off
    python -m pvesim.pmxcfs.ctl --control /tmp/pve.sock restart-clock
    python -m pvesim.pmxcfs.ctl --control /tmp/pve.sock advance 121
    python -m pvesim.pmxcfs.ctl --control 40123 stop        (TCP port)
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from typing import Any


def send(control: str, request: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """One request over the control channel (Unix socket path or TCP port)."""
    if control.isdigit():
        sock = socket.create_connection(("127.0.0.1", int(control)), timeout=timeout)
    else:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(control)
    with sock:
        sock.sendall(json.dumps(request).encode() + b"\n")
        answer: dict[str, Any] = json.loads(sock.makefile().readline())
    return answer


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pvesim.pmxcfs.ctl")
    ap.add_argument("--control", required=True, help="socket path or TCP port")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("status")
    q = sub.add_parser("quorum", help="take a node out of quorum or back in")
    q.add_argument("node")
    q.add_argument("state", choices=["on", "off"])
    sub.add_parser("restart-clock", help="restart every lock's lifetime")
    r = sub.add_parser("restart-node", help="a node's pmxcfs restarted")
    r.add_argument("node")
    a = sub.add_parser("advance", help="move the manual clock")
    a.add_argument("seconds", type=float)
    sub.add_parser("stop")
    args = ap.parse_args(argv)
    requests: dict[str, dict[str, Any]] = {
        "status": {"op": "status"},
        "quorum": {"op": "set_quorate", "node": getattr(args, "node", None),
                   "quorate": getattr(args, "state", "on") == "on"},
        "restart-clock": {"op": "restart_clock"},
        "restart-node": {"op": "restart_node", "node": getattr(args, "node", None)},
        "advance": {"op": "advance", "seconds": getattr(args, "seconds", 0.0)},
        "stop": {"op": "stop"},
    }
    request = requests[args.cmd]
    try:
        answer = send(args.control, request)
    except (OSError, ValueError) as exc:
        print(f"control channel {args.control}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(answer, indent=2))
    return 0 if answer.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
