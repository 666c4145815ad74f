"""Cached Debian trixie chroots for the packaging tests.

Proxmox VE 9 runs Debian 13 (trixie) with Python 3.13; the package has to
build and install there with nothing but Debian's own archive. The host that
runs the tests (CI: a fresh Debian 12 machine, as root) is not trixie, so the
test works in two debootstrapped trixie trees:

- ``build``: the build tool chain (debian/control's Build-Depends, lintian);
  ``dev/build-deb`` runs there.
- ``target``: minbase plus systemd, like a node before the package arrives.
  The .deb is installed there with apt, which must fetch every dependency
  (python3, proxmoxer, requests, ...) from Debian's archive; each test run
  first purges the package and autoremoves what it pulled in.

debootstrap and the tool chain cost a minute and a few hundred MB of
downloads, so both trees are cached outside the repository (default
``/var/tmp/pve-balancer-trixie/{build,target}``) and reused while their
stamp matches the package list below. A tree is created under a temporary
name and renamed only when complete, so an interrupted creation is never
mistaken for a cache.

Usable by hand as well::

    python -m tests.integration.trixie_chroot ensure [--base DIR]
    python -m tests.integration.trixie_chroot shell {build|target} [--base DIR]
    python -m tests.integration.trixie_chroot build --out OUTDIR [--base DIR]

(``dev/build-deb --trixie OUTDIR`` is the last one.)
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

DEFAULT_BASE = Path(os.environ.get("PVE_BALANCER_CHROOT", "/var/tmp/pve-balancer-trixie"))
MIRROR = os.environ.get("PVE_BALANCER_MIRROR", "http://deb.debian.org/debian")
SUITE = "trixie"

# Beyond minbase. Build tree: debian/control's Build-Depends (including the
# <!nocheck> ones the build-time tests import) plus lintian.
BUILD_PACKAGES = (
    "build-essential",
    "debhelper",
    "dh-python",
    "pybuild-plugin-pyproject",
    "python3-all",
    "python3-setuptools",
    "python3-proxmoxer",
    "python3-pytest",
    "python3-pytest-timeout",
    "python3-requests",
    "python3-yaml",
    "lintian",
    "ca-certificates",
)
# Target tree: what every PVE node has anyway (systemd-analyze verify also
# runs `man` for the unit's Documentation=). The package's own runtime
# dependencies are deliberately absent: apt resolves them from the archive.
TARGET_PACKAGES = (
    "systemd",
    "man-db",
    "ca-certificates",
)
FLAVOURS = {"build": BUILD_PACKAGES, "target": TARGET_PACKAGES}

STAMP_NAME = ".pve-balancer-chroot-stamp"
CHROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
REPO = Path(__file__).resolve().parents[2]
BUILD_DIR = "/build"


class ChrootError(RuntimeError):
    """Creating or using a chroot failed; the message names the step."""


def _stamp(packages: Sequence[str]) -> str:
    text = "\n".join([SUITE, MIRROR, *packages])
    return hashlib.sha256(text.encode()).hexdigest()


def _host(cmd: Sequence[str], quiet: bool = False) -> None:
    """Run a host command; on failure raise with the tail of its output."""
    proc = subprocess.run(
        list(cmd), check=False, text=True,
        stdout=subprocess.PIPE if quiet else None,
        stderr=subprocess.STDOUT if quiet else None,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )
    if proc.returncode != 0:
        tail = (proc.stdout or "")[-3000:]
        raise ChrootError(f"{' '.join(cmd)} exited {proc.returncode}\n{tail}")


def ensure_debootstrap() -> None:
    """Install debootstrap on the host with apt when it is missing."""
    if shutil.which("debootstrap"):
        return
    _host(["apt-get", "update", "-q"], quiet=True)
    _host(["apt-get", "install", "-y", "-q", "--no-install-recommends", "debootstrap"],
          quiet=True)


def is_ready(root: Path, packages: Sequence[str]) -> bool:
    stamp = root / STAMP_NAME
    return stamp.is_file() and stamp.read_text().strip() == _stamp(packages)


def ensure_chroot(flavour: str, base: Path = DEFAULT_BASE) -> Path:
    """Return the ready ``flavour`` tree under ``base``, creating it when needed."""
    packages = FLAVOURS[flavour]
    root = base / flavour
    if is_ready(root, packages):
        return root
    if os.geteuid() != 0:
        raise ChrootError("creating a chroot needs root")
    ensure_debootstrap()
    staging = base / f"{flavour}.partial"
    for stale in (staging, root):
        if stale.exists():
            unmount_all(stale)
            shutil.rmtree(stale)
    base.mkdir(parents=True, exist_ok=True)
    try:
        _host(["debootstrap", "--variant=minbase", SUITE, str(staging), MIRROR], quiet=True)
    except ChrootError as exc:
        log = staging / "debootstrap" / "debootstrap.log"
        tail = log.read_text()[-3000:] if log.is_file() else ""
        raise ChrootError(f"debootstrap {SUITE} failed: {exc}\n{tail}") from exc
    # Services must never start inside a chroot (deb-systemd-invoke honours this).
    policy = staging / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    with mounted(staging):
        run(staging, ["apt-get", "update", "-q"], capture=True)
        run(staging, ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages],
            capture=True)
        run(staging, ["apt-get", "clean"])
    (staging / STAMP_NAME).write_text(_stamp(packages) + "\n")
    staging.rename(root)
    return root


def _mountpoints_under(root: Path) -> list[str]:
    prefix = str(root.resolve()) + "/"
    points = []
    with open("/proc/self/mountinfo", encoding="utf-8") as fh:
        for line in fh:
            point = line.split()[4].replace("\\040", " ")
            if point.startswith(prefix):
                points.append(point)
    return points


def unmount_all(root: Path) -> None:
    """Unmount everything below ``root``, deepest first (lazily as a last resort)."""
    for point in sorted(_mountpoints_under(root), key=len, reverse=True):
        if subprocess.run(["umount", point], check=False).returncode != 0:
            subprocess.run(["umount", "-l", point], check=False)
    left = _mountpoints_under(root)
    if left:
        raise ChrootError(f"could not unmount {left}")


@contextlib.contextmanager
def mounted(root: Path) -> Iterator[Path]:
    """Mount /proc, /sys, /dev, /dev/pts and a tmpfs /run; always unmount."""
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
            _host(["mount", *args, str(target)])
        yield root
    finally:
        unmount_all(root)


def _command(root: Path, cmd: Sequence[str], env: dict[str, str] | None) -> list[str]:
    base = {
        "PATH": CHROOT_PATH,
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "DEBIAN_FRONTEND": "noninteractive",
    }
    base.update(env or {})
    # chroot and env both exec: the returned process IS the command (signals reach it).
    return ["chroot", str(root), "/usr/bin/env", "-i",
            *(f"{k}={v}" for k, v in base.items()), *cmd]


def popen(root: Path, cmd: Sequence[str], log: Path,
          env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start ``cmd`` inside the chroot in the background, output to ``log``."""
    with log.open("wb") as fh:
        return subprocess.Popen(_command(root, cmd, env), stdout=fh, stderr=subprocess.STDOUT)


def run(
    root: Path,
    cmd: Sequence[str],
    *,
    check: bool = True,
    capture: bool = False,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` inside the chroot with a clean environment.

    With ``capture`` stdout and stderr come back together in ``.stdout``.
    """
    proc = subprocess.run(
        _command(root, cmd, env),
        check=False,
        text=True,
        stdout=subprocess.PIPE if capture else None,
        stderr=subprocess.STDOUT if capture else None,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        out = proc.stdout[-4000:] if capture and proc.stdout else ""
        raise ChrootError(f"in chroot {root}: {' '.join(cmd)} exited {proc.returncode}\n{out}")
    return proc


def source_files(src: Path = REPO) -> list[str]:
    """The files that make the source: git's tracked and new, not-ignored ones."""
    proc = subprocess.run(
        ["git", "-C", str(src), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        check=True, capture_output=True,
    )
    names = [n for n in proc.stdout.decode().split("\0") if n]
    return [n for n in names if os.path.lexists(src / n)]


def copy_source(root: Path, src: Path = REPO) -> str:
    """Copy the source into the chroot (fresh each time); return its path there."""
    inside = f"{BUILD_DIR}/src"
    target = root / inside.lstrip("/")
    if target.exists():
        shutil.rmtree(target)
    for name in source_files(src):
        dest = target / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / name, dest, follow_symlinks=False)
    return inside


def build_deb(
    root: Path, out: Path, src: Path = REPO, reuse_source: bool = False
) -> tuple[list[Path], str]:
    """Build in the (mounted) build tree with dev/build-deb; copy the results to ``out``.

    ``reuse_source`` builds the copy left by the previous call again (the
    reproducibility check must not pick up edits made in between).
    Returns the copied files and the build's output (it includes lintian's).
    """
    inside = f"{BUILD_DIR}/src" if reuse_source else copy_source(root, src)
    result_dir = root / BUILD_DIR.lstrip("/") / "out"
    if result_dir.exists():
        shutil.rmtree(result_dir)
    proc = run(root, [f"{inside}/dev/build-deb", f"{BUILD_DIR}/out"], capture=True)
    out.mkdir(parents=True, exist_ok=True)
    copied = []
    for item in sorted(result_dir.iterdir()):
        shutil.copy2(item, out / item.name)
        copied.append(out / item.name)
    return copied, proc.stdout


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="cached Debian trixie chroots")
    parser.add_argument("action", choices=["ensure", "shell", "build"])
    parser.add_argument("flavour", nargs="?", choices=sorted(FLAVOURS), default="build")
    parser.add_argument("--base", type=Path, default=DEFAULT_BASE)
    parser.add_argument("--out", type=Path, help="where `build` puts the .deb")
    args = parser.parse_args(argv)
    try:
        if args.action == "ensure":
            for flavour in sorted(FLAVOURS):
                print(ensure_chroot(flavour, args.base))
            return 0
        root = ensure_chroot(args.flavour if args.action == "shell" else "build", args.base)
        with mounted(root):
            if args.action == "shell":
                return run(root, ["bash", "-l"], check=False).returncode
            if args.out is None:
                parser.error("build needs --out OUTDIR")
            files, output = build_deb(root, args.out.resolve())
            print(output)
            for path in files:
                print(path)
    except ChrootError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
