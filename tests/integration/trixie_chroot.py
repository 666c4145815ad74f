"""A cached Debian trixie chroot for the packaging tests.

Proxmox VE 9 runs Debian 13 (trixie) with Python 3.13; the package has to
build and install there with nothing but Debian's own archive. The host that
runs the tests (CI: a fresh Debian 12 machine, as root) is not trixie, so the
test builds and installs inside a debootstrapped trixie tree.

debootstrap plus the build tool chain costs minutes and a few hundred MB of
downloads, so the tree is cached outside the repository (default
``/var/tmp/pve-balancer-trixie``) and reused while its stamp matches the
package list below. It is created under a temporary name and renamed only
when complete, so an interrupted creation is never mistaken for a cache.

Usable by hand as well::

    python -m tests.integration.trixie_chroot ensure [--root DIR]
    python -m tests.integration.trixie_chroot shell  [--root DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

DEFAULT_ROOT = Path(os.environ.get("PVE_BALANCER_CHROOT", "/var/tmp/pve-balancer-trixie"))
MIRROR = os.environ.get("PVE_BALANCER_MIRROR", "http://deb.debian.org/debian")
SUITE = "trixie"

# What the cached tree holds beyond minbase: the build tool chain (same list
# as debian/control's Build-Depends plus lintian), systemd for
# `systemd-analyze`, and autopkgtest's null runner. Runtime dependencies of
# the package are deliberately NOT here: apt resolves them from the archive
# when the test installs the .deb.
PACKAGES = (
    "build-essential",
    "debhelper",
    "dh-python",
    "pybuild-plugin-pyproject",
    "python3-all",
    "python3-setuptools",
    "python3-pytest",
    "python3-yaml",
    "lintian",
    "systemd",
    "ca-certificates",
    "git",
)

STAMP_NAME = ".pve-balancer-chroot-stamp"
CHROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class ChrootError(RuntimeError):
    """Creating or using the chroot failed; the message names the step."""


def _stamp() -> str:
    text = "\n".join([SUITE, MIRROR, *PACKAGES])
    return hashlib.sha256(text.encode()).hexdigest()


def _host_run(cmd: Sequence[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), check=True, text=True, **kwargs)  # type: ignore[call-overload, no-any-return]


def ensure_debootstrap() -> None:
    """Install debootstrap on the host with apt when it is missing."""
    if shutil.which("debootstrap"):
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _host_run(["apt-get", "update", "-q"], env=env)
    _host_run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "debootstrap"], env=env)


def is_ready(root: Path = DEFAULT_ROOT) -> bool:
    stamp = root / STAMP_NAME
    return stamp.is_file() and stamp.read_text().strip() == _stamp()


def ensure_chroot(root: Path = DEFAULT_ROOT) -> Path:
    """Return a ready trixie chroot at ``root``, creating it when needed."""
    if is_ready(root):
        return root
    if os.geteuid() != 0:
        raise ChrootError("creating a chroot needs root")
    ensure_debootstrap()
    staging = root.with_name(root.name + ".partial")
    if staging.exists():
        _unmount_all(staging)
        shutil.rmtree(staging)
    staging.parent.mkdir(parents=True, exist_ok=True)
    try:
        _host_run(
            ["debootstrap", "--variant=minbase", "--include=ca-certificates",
             SUITE, str(staging), MIRROR],
            stdout=subprocess.DEVNULL,
        )
    except subprocess.CalledProcessError as exc:
        log = staging / "debootstrap" / "debootstrap.log"
        tail = log.read_text()[-3000:] if log.is_file() else ""
        raise ChrootError(f"debootstrap {SUITE} failed ({exc.returncode}):\n{tail}") from exc
    # Services must never start inside the chroot (deb-systemd-invoke honours this).
    policy = staging / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    with mounted(staging):
        run(staging, ["apt-get", "update", "-q"])
        run(staging, ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES])
        run(staging, ["apt-get", "clean"])
    (staging / STAMP_NAME).write_text(_stamp() + "\n")
    if root.exists():
        _unmount_all(root)
        shutil.rmtree(root)
    staging.rename(root)
    return root


def _mountpoints_under(root: Path) -> list[str]:
    prefix = str(root.resolve()) + "/"
    points = []
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            point = line.split()[4].replace("\\040", " ")
            if point.startswith(prefix):
                points.append(point)
    return points


def _unmount_all(root: Path) -> None:
    """Unmount everything below ``root``, deepest first (lazy as a last resort)."""
    for point in sorted(_mountpoints_under(root), key=len, reverse=True):
        if subprocess.run(["umount", point], check=False).returncode != 0:
            subprocess.run(["umount", "-l", point], check=False)
    left = _mountpoints_under(root)
    if left:
        raise ChrootError(f"could not unmount {left}")


@contextlib.contextmanager
def mounted(root: Path) -> Iterator[Path]:
    """Mount /proc, /sys, /dev, /dev/pts and /run as a tmpfs; always unmount."""
    shutil.copyfile("/etc/resolv.conf", root / "etc/resolv.conf")
    mounts = [
        (["-t", "proc", "proc"], "proc"),
        (["-t", "sysfs", "sysfs"], "sys"),
        (["--bind", "/dev"], "dev"),
        (["--bind", "/dev/pts"], "dev/pts"),
        (["-t", "tmpfs", "tmpfs"], "run"),
    ]
    try:
        for args, rel in mounts:
            target = root / rel
            target.mkdir(parents=True, exist_ok=True)
            _host_run(["mount", *args, str(target)])
        yield root
    finally:
        _unmount_all(root)


def run(
    root: Path,
    cmd: Sequence[str],
    *,
    check: bool = True,
    capture: bool = False,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` inside the chroot with a clean environment."""
    base = {
        "PATH": CHROOT_PATH,
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "DEBIAN_FRONTEND": "noninteractive",
    }
    base.update(env or {})
    full = ["chroot", str(root), "/usr/bin/env", "-i", *(f"{k}={v}" for k, v in base.items()), *cmd]
    proc = subprocess.run(
        full,
        check=False,
        text=True,
        stdout=subprocess.PIPE if capture else None,
        stderr=subprocess.STDOUT if capture else None,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        out = proc.stdout[-4000:] if capture and proc.stdout else ""
        raise ChrootError(f"in chroot: {' '.join(cmd)} exited {proc.returncode}\n{out}")
    return proc


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("action", choices=["ensure", "shell"])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    args = parser.parse_args(argv)
    root = ensure_chroot(args.root)
    if args.action == "shell":
        with mounted(root):
            return run(root, ["bash", "-l"], check=False).returncode
    print(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
