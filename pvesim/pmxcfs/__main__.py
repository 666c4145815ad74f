"""`python -m pvesim.pmxcfs`: run the pmxcfs emulator until SIGTERM/SIGINT
or a "stop" on the control channel.

    python -m pvesim.pmxcfs --mount-base /tmp/pve --nodes pve1,pve2,pve3 \\
        --lifetime 120 --control /tmp/pve/control.sock

Once every mount is up it prints one JSON line on stdout:
{"ready": true, "pid": N, "control": "<socket path or port>", "mounts": {node: path}}
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import sys
from pathlib import Path

from pvesim.pmxcfs.server import PmxcfsServer
from pvesim.pmxcfs.tree import (
    DEFAULT_LIFETIME,
    INSTANT,
    REALISTIC,
    ClusterTree,
    EmulatorClock,
    Realism,
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m pvesim.pmxcfs",
                                 description="pmxcfs emulator: one FUSE mount per node")
    ap.add_argument("--mount-base", required=True, type=Path,
                    help="directory that gets one mount point per node (BASE/<node>)")
    ap.add_argument("--nodes", required=True,
                    help="comma-separated node names in node-id order (first = id 1)")
    ap.add_argument("--lifetime", type=int, default=DEFAULT_LIFETIME,
                    help="lock lifetime in whole seconds (default 120, as pmxcfs)")
    ap.add_argument("--control", default=None,
                    help="control channel: a Unix socket path, or a TCP port on 127.0.0.1 "
                         "(0 = pick one)")
    ap.add_argument("--cluster-name", default="pvesim")
    ap.add_argument("--manual-clock", action="store_true",
                    help="the clock stands still until the control op 'advance' moves it")
    ap.add_argument("--allow-other", action="store_true",
                    help="let users other than root use the mounts (FUSE allow_other)")
    ap.add_argument("--exit-with-parent", action="store_true",
                    help="stop when the starting process goes away")
    ap.add_argument("--verbose", action="store_true")
    real = ap.add_argument_group(
        "realism", "timing of a real pmxcfs (default: every change at once); --realistic "
        "sets all of them to what a real 3-node cluster shows, the others override one")
    real.add_argument("--realistic", action="store_true")
    real.add_argument("--unlock-delay", type=float, metavar="S",
                      help="an expired lock is deleted S s after the unlock request returns")
    real.add_argument("--quorum-loss-delay", type=float, metavar="S",
                      help="a cut takes effect after S s")
    real.add_argument("--quorum-return-delay", type=float, metavar="S",
                      help="a heal takes effect after S s")
    real.add_argument("--write-stall", action=argparse.BooleanOptionalAction, default=None,
                      help="writes during a pending cut block until it lands (EPERM on the "
                           "cut node)")
    real.add_argument("--attr-cache", type=float, metavar="S",
                      help="kernel name/attribute cache in seconds")
    return ap.parse_args(argv)


def realism_of(args: argparse.Namespace) -> Realism:
    base = REALISTIC if args.realistic else INSTANT
    changes = {k: getattr(args, k) for k in ("unlock_delay", "quorum_loss_delay",
                                              "quorum_return_delay", "write_stall",
                                              "attr_cache")
               if getattr(args, k) is not None}
    return dataclasses.replace(base, **changes)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="pmxcfs-emu: %(levelname)s %(message)s", stream=sys.stderr)
    nodes = [n.strip() for n in args.nodes.split(",") if n.strip()]
    try:
        tree = ClusterTree(nodes, lifetime=args.lifetime,
                           clock=EmulatorClock(manual=args.manual_clock),
                           cluster_name=args.cluster_name, realism=realism_of(args))
    except ValueError as exc:
        print(f"pmxcfs-emu: {exc}", file=sys.stderr)
        return 2
    if not os.path.exists("/dev/fuse"):
        print("pmxcfs-emu: /dev/fuse is missing: FUSE is not available here", file=sys.stderr)
        return 2
    server = PmxcfsServer(tree, args.mount_base.resolve(), args.control,
                          allow_other=args.allow_other)

    # Our handlers first: libfuse only installs its own where the handler
    # is still SIG_DFL, so shutdown stays with this thread.
    def request_stop(signum: int, frame: object) -> None:
        server.stop_requested.set()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, request_stop)

    parent = os.getppid()
    try:
        server.mount_all()
        server.start_control()
        print(json.dumps({"ready": True, "pid": os.getpid(), "control": server.control_address,
                          "mounts": {n: str(p) for n, p in server.mounts.items()}}),
              flush=True)
        while not server.stop_requested.wait(0.2):
            if args.exit_with_parent and os.getppid() != parent:
                logging.info("parent went away; stopping")
                break
            dead = [n for n, t in server.threads.items()
                    if not t.is_alive() and n not in server.down]
            if dead:
                logging.error("mount(s) of %s ended unexpectedly; stopping", ", ".join(dead))
                break
    except RuntimeError as exc:
        logging.error("%s", exc)
        server.stop()
        return 1
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
