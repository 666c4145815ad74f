"""Debian packages the real-pmxcfs tier needs, installed when missing.

Same rule as `dev/bootstrap`: ask dpkg what is installed, hand only the
missing names to apt-get, and do nothing at all when everything is there,
so a rerun costs one dpkg query. Services a package would start on install
(corosync's would listen in the root network namespace) are held back with
Debian's `policy-rc.d` convention for the duration of the install.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path

# Debian's build dependencies of src/pmxcfs (see the vendor README).
BUILD_DEPS = (
    "build-essential", "pkg-config", "libcpg-dev", "libcmap-dev", "libquorum-dev",
    "libcorosync-common-dev", "libqb-dev", "libfuse-dev", "librrd-dev", "libsqlite3-dev",
    "libglib2.0-dev",
)
# What the cluster harness runs: corosync, `ip` for the namespaces' links,
# fusermount for a pmxcfs that died with its mount.
RUNTIME_DEPS = ("corosync", "iproute2", "fuse3")

POLICY_RC_D = Path("/usr/sbin/policy-rc.d")


class PackageError(RuntimeError):
    """A package could not be installed."""


def missing(packages: Iterable[str]) -> list[str]:
    out = []
    for pkg in packages:
        proc = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg],
                              capture_output=True, text=True, check=False)
        if "install ok installed" not in proc.stdout:
            out.append(pkg)
    return out


@contextlib.contextmanager
def services_held_back() -> Iterator[None]:
    """No package starts its service while we install (exit 101 means
    "action forbidden" to invoke-rc.d). An existing policy is left alone."""
    if POLICY_RC_D.exists():
        yield
        return
    POLICY_RC_D.write_text("#!/bin/sh\n# held by the real-pmxcfs test tier during apt-get\n"
                           "exit 101\n")
    POLICY_RC_D.chmod(0o755)
    try:
        yield
    finally:
        POLICY_RC_D.unlink(missing_ok=True)


def ensure(packages: Iterable[str], log: Path | None = None) -> list[str]:
    """Install whichever of `packages` is missing; returns what was installed."""
    need = missing(packages)
    if not need:
        return []
    if os.geteuid() != 0:
        raise PackageError(f"missing Debian packages {' '.join(need)}: run as root to "
                           "install them")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    out = log.open("ab") if log is not None else None
    try:
        with services_held_back():
            for cmd in (["apt-get", "update", "-q"],
                        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *need]):
                proc = subprocess.run(cmd, env=env, stdout=out or subprocess.PIPE,
                                      stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      check=False)
                if proc.returncode != 0:
                    tail = proc.stdout.decode(errors="replace")[-2000:] if proc.stdout else \
                        f"see {log}"
                    raise PackageError(f"{' '.join(cmd)} failed ({proc.returncode}): {tail}")
    finally:
        if out is not None:
            out.close()
    still = missing(need)
    if still:
        raise PackageError(f"still missing after apt-get install: {' '.join(still)}")
    return need
