"""Build Proxmox's real pmxcfs from the vendored source, once per tarball.

    python -m tests.real_pmxcfs.build          # prints the binary's path

The source is `shared/vendor/pve-cluster-9.1.6-pmxcfs.tar.gz` (found like
`tests/shared_data.py` finds `shared/`, `PVE_BALANCER_SHARED` overrides).
The binary is cached under `.cache/pmxcfs-<sha256 of the tarball>/` in the
checkout (gitignored), so a rerun is a hash and a stat; a new tarball gets
a new directory. Debian's build dependencies and corosync are installed
first when missing (`packages.py`).

pmxcfs 9.x calls `g_string_free_and_steal`, new in GLib 2.76; Debian 12
has 2.74. The sources define `G_LOG_DOMAIN` before they include glib.h, so
the compatibility definition is a header that includes nothing: one
function-like macro, force-included through CFLAGS, and only when the
installed GLib lacks the function (on 2.76+ the macro would clash with
GLib's own declaration).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from tests.real_pmxcfs import packages
from tests.shared_data import SHARED_DIR

REPO = Path(__file__).resolve().parents[2]
TARBALL = SHARED_DIR / "vendor" / "pve-cluster-9.1.6-pmxcfs.tar.gz"
CACHE = REPO / ".cache"
SOURCE_DIR = "pve-cluster/src/pmxcfs"

GSTRING_SHIM = """\
/* Force-included when building pmxcfs against GLib < 2.76.
 *
 * g_string_free_and_steal(s) (GLib 2.76) frees the GString and returns its
 * buffer: exactly g_string_free(s, FALSE). Deliberately no #include: the
 * sources set G_LOG_DOMAIN before they include glib.h, and the macro only
 * expands where it is used, after glib.h. */
#ifndef PVE_BALANCER_GSTRING_SHIM_H
#define PVE_BALANCER_GSTRING_SHIM_H
#define g_string_free_and_steal(string) g_string_free((string), 0)
#endif
"""


class BuildError(RuntimeError):
    """pmxcfs could not be built; the message names the log."""


def tarball_sha256(path: Path = TARBALL) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cache_dir(sha: str) -> Path:
    return CACHE / f"pmxcfs-{sha}"


def glib_needs_shim() -> bool:
    """True when the installed GLib predates g_string_free_and_steal."""
    proc = subprocess.run(["pkg-config", "--atleast-version=2.76", "glib-2.0"], check=False)
    return proc.returncode != 0


def _extract(tarball: Path, into: Path) -> Path:
    with tarfile.open(tarball) as tar:
        tar.extractall(into, filter="data")
    src = into / SOURCE_DIR
    if not (src / "Makefile").exists():
        raise BuildError(f"{tarball} has no {SOURCE_DIR}/Makefile")
    return src


def build(tarball: Path = TARBALL, *, install_packages: bool = True,
          quiet: bool = True) -> Path:
    """The path of a pmxcfs binary built from `tarball` (cached)."""
    if not tarball.exists():
        raise BuildError(f"pmxcfs source not found: {tarball} (set PVE_BALANCER_SHARED to "
                         "the directory that holds vendor/)")
    sha = tarball_sha256(tarball)
    out = cache_dir(sha)
    binary = out / "pmxcfs"
    if install_packages:
        # Checked every time (cheap): a cached binary still needs corosync and
        # the shared libraries it links against.
        CACHE.mkdir(exist_ok=True)
        packages.ensure([*packages.BUILD_DEPS, *packages.RUNTIME_DEPS],
                        log=CACHE / "apt.log")
    if binary.is_file() and os.access(binary, os.X_OK):
        return binary
    CACHE.mkdir(exist_ok=True)
    with (CACHE / f"pmxcfs-{sha}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time; the others wait for it
        if binary.is_file():
            return binary
        work = Path(tempfile.mkdtemp(prefix=f"pmxcfs-{sha[:12]}.build-", dir=CACHE))
        log_path = work / "build.log"
        try:
            src = _extract(tarball, work)
            env = dict(os.environ)
            cflags = env.get("CFLAGS", "")
            if glib_needs_shim():
                shim = work / "gstring-shim.h"
                shim.write_text(GSTRING_SHIM)
                # The environment, not the make command line: the Makefile
                # appends its own flags with +=, which a command-line CFLAGS
                # would replace.
                cflags = f"{cflags} -include {shim}".strip()
            env["CFLAGS"] = cflags
            jobs = str(max(1, os.cpu_count() or 1))
            with log_path.open("wb") as log:
                proc = subprocess.run(["make", "-C", str(src), "-j", jobs, "pmxcfs"], env=env,
                                      stdout=log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, check=False)
            if proc.returncode != 0:
                keep = CACHE / f"pmxcfs-{sha}.failed.log"
                shutil.copy(log_path, keep)
                tail = log_path.read_text(errors="replace")[-3000:]
                raise BuildError(f"make pmxcfs failed ({proc.returncode}); log {keep}:\n{tail}")
            staged = work / "out"
            staged.mkdir()
            shutil.copy2(src / "pmxcfs", staged / "pmxcfs")
            shutil.copy2(log_path, staged / "build.log")
            if glib_needs_shim():
                shutil.copy2(work / "gstring-shim.h", staged / "gstring-shim.h")
            (staged / "SOURCE").write_text(f"{tarball.name} sha256 {sha}\n"
                                           f"CFLAGS={cflags}\n")
            staged.rename(out)  # appears whole or not at all
        finally:
            shutil.rmtree(work, ignore_errors=True)
    if not quiet:
        print(f"built {binary}", file=sys.stderr)
    return binary


def main() -> int:
    try:
        print(build(quiet=False))
    except (BuildError, packages.PackageError) as exc:
        print(f"pmxcfs build: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
