"""First-run set-up of a Proxmox VE cluster for the agent (`pve-balancer setup`).

The agent talks to its node's API with a token of its own, and every node
needs the same token and the same configuration. Both live in /etc/pve, which
pmxcfs replicates to every node, so the set-up happens once for the whole
cluster: whichever node installs the package first (with quorum) creates

- the role ``PVEBalancer`` with exactly the privileges the agent uses,
- the user ``pve-balancer@pve`` (no password: it can only use its token),
- the privilege-separated token ``pve-balancer@pve!agent`` and an ACL on ``/``
  granting the role to both the user and the token (a privsep token's
  rights are the intersection of both),
- ``/etc/pve/priv/pve-balancer.token`` (root-only) holding
  ``pve-balancer@pve!agent=SECRET``,
- a commented ``/etc/pve/balancer.yaml`` from the shipped example, only if
  none exists,

and every later run (other nodes, upgrades) finds them and changes nothing.
Where it cannot run (no pmxcfs, no quorum, no ``pveum``) it says so and names
the one command that finishes the job; with ``if_possible`` (the package's
postinst) that is not an error, because the install must never fail on it.

Everything that touches the cluster goes through ``pveum`` via an injectable
runner, so tests check the exact commands and the idempotence without PVE.
Concurrent installs on several nodes are serialised by a pmxcfs lock
(``priv/lock/pve-balancer-setup``), taken the same way the agent takes its
leader lock.
"""

from __future__ import annotations

import contextlib
import errno
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TextIO

from .election import PmxcfsLock, read_membership
from .paths import DEFAULT_ROOT, PveRoot
from .pve import ApiToken, TokenError
from .status import write_atomic

USER = "pve-balancer@pve"
TOKEN_NAME = "agent"
TOKEN_ID = f"{USER}!{TOKEN_NAME}"
ROLE = "PVEBalancer"
# What the agent's API calls check (PVE 9.1 schema): /cluster/resources,
# /cluster/options, /cluster/backup, /cluster/ha/* and node tasks/rrddata
# need Sys.Audit; guest rrddata/config/status need VM.Audit; the migrate
# preconditions (GET) and the migration itself (POST) need VM.Migrate.
PRIVILEGES = ("Sys.Audit", "VM.Audit", "VM.Migrate")

FINISH_COMMAND = "pve-balancer setup"

EXAMPLE_CONFIGS = (
    Path("/usr/share/pve-balancer/balancer.yaml.example"),
    Path(__file__).resolve().parent.parent / "balancer.yaml.example",
)

USER_COMMENT = "pve-balancer agent (API token only)"
TOKEN_COMMENT = "pve-balancer agent on every node"


@dataclass(frozen=True)
class CommandResult:
    """What a finished command returned."""

    returncode: int
    stdout: str
    stderr: str


class Runner(Protocol):
    """Runs one command (argv list) and returns its result.

    Raises FileNotFoundError when the program does not exist.
    """

    def __call__(self, argv: Sequence[str]) -> CommandResult: ...


def subprocess_runner(argv: Sequence[str]) -> CommandResult:
    """Run a command for real, capturing its output (pveum answers in ~1 s)."""
    proc = subprocess.run(
        list(argv), capture_output=True, text=True, check=False, timeout=120
    )
    return CommandResult(proc.returncode, proc.stdout, proc.stderr)


class SetupImpossibleError(Exception):
    """This node cannot do the set-up now (no pmxcfs, no quorum, no pveum, busy)."""


class SetupFailedError(Exception):
    """A step failed; the message names the command and what it said."""


@dataclass(frozen=True)
class ClusterState:
    """Whether /etc/pve is pmxcfs and writable (quorate) on this node."""

    pmxcfs: bool
    quorate: bool
    reason: str  # empty when pmxcfs and quorate


def _is_fuse_mount(path: Path) -> bool:
    target = str(path.resolve())
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as fh:
            for line in fh:
                fields = line.split()
                if " - " not in line or len(fields) < 5:
                    continue
                point = fields[4].replace("\\040", " ")
                fstype = line.split(" - ", 1)[1].split()[0]
                if point == target and fstype.startswith("fuse"):
                    return True
    except OSError:
        return False
    return False


def cluster_state(pve_root: Path, require_fuse: bool = True) -> ClusterState:
    """Whether set-up can write to the cluster file system now.

    A node that is not in a cluster has no ``cluster`` section in
    ``.members``; pmxcfs then runs in local mode, which is always writable.
    """
    if require_fuse and not _is_fuse_mount(pve_root):
        return ClusterState(False, False, f"{pve_root} is not mounted (pve-cluster not running)")
    membership = read_membership(PveRoot(pve_root).members)
    if membership.quorate is None:
        return ClusterState(False, False, membership.problem)
    if not membership.quorate:
        return ClusterState(True, False, "this node is not part of a quorate cluster partition")
    return ClusterState(True, True, "")


def read_token_id(token_file: Path) -> str | None:
    """The ``USER@REALM!NAME`` of the token in the file, None when there is
    none (no file, or only blank and comment lines). A file that holds
    something else is not ours to overwrite: that is an error naming it."""
    try:
        token = ApiToken.find(token_file)
    except TokenError as exc:
        raise SetupFailedError(f"{exc}; fix or remove the file") from exc
    return token.token_id if token is not None else None


class _Pveum:
    """The few pveum calls the set-up makes, with their errors made readable."""

    def __init__(self, runner: Runner) -> None:
        self._runner = runner

    def run(self, *args: str) -> str:
        argv = ["pveum", *args]
        try:
            result = self._runner(argv)
        except FileNotFoundError as exc:
            raise SetupImpossibleError("pveum is not installed (not a Proxmox VE node)") from exc
        if result.returncode != 0:
            said = (result.stderr or result.stdout).strip() or f"exit status {result.returncode}"
            # Never echo a secret: only token-add prints one, and only on success.
            raise SetupFailedError(f"{' '.join(argv)} failed: {said}")
        return result.stdout

    def json(self, *args: str) -> Any:
        out = self.run(*args, "--output-format", "json")
        try:
            return json.loads(out)
        except ValueError as exc:
            raise SetupFailedError(f"pveum {' '.join(args)} did not answer in JSON: {exc}") from exc

    def role_privileges(self, role: str) -> set[str] | None:
        for entry in self.json("role", "list"):
            if isinstance(entry, dict) and entry.get("roleid") == role:
                privs = entry.get("privs") or ""
                if isinstance(privs, str):
                    return {p for p in privs.replace(" ", ",").split(",") if p}
                return {str(p) for p in privs}
        return None

    def user_exists(self, user: str) -> bool:
        return any(
            isinstance(entry, dict) and entry.get("userid") == user
            for entry in self.json("user", "list")
        )

    def token_exists(self, user: str, name: str) -> bool:
        return any(
            isinstance(entry, dict) and entry.get("tokenid") == name
            for entry in self.json("user", "token", "list", user)
        )


@contextlib.contextmanager
def setup_lock(
    pve_root: Path,
    wait: float = 30.0,
    sleep: Callable[[float], None] = time.sleep,
    retry: float = 2.0,
) -> Iterator[None]:
    """Hold the cluster-wide set-up lock (a pmxcfs lock directory).

    A lock left by a crashed run expires after pmxcfs's 120 s; like every
    contender, we ask pmxcfs to drop an expired lock (utime to 0) between
    tries. If another node keeps it longer than ``wait`` it is busy setting
    up: give up and let the caller say so.
    """
    lock = PmxcfsLock(PveRoot(pve_root).setup_lock)
    lock.path.parent.mkdir(parents=True, exist_ok=True)
    waited = 0.0
    while True:
        try:
            if lock.take():
                break
        except PermissionError as exc:
            raise SetupImpossibleError(
                f"cannot take {lock.path}: {exc.strerror} (quorum lost?)"
            ) from exc
        lock.request_unlock()
        if waited >= wait:
            raise SetupImpossibleError(
                f"another node holds {lock.path}: it is running the set-up")
        sleep(retry)
        waited += retry
    try:
        yield
    finally:
        try:
            lock.release()
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                print(f"pve-balancer setup: could not release {lock.path}: {exc}",
                      file=sys.stderr)


_KEY_LINE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\s*:")

COMMENTED_HEADER = (
    "# Installed by `pve-balancer setup` with every key commented out: the\n"
    "# built-in defaults apply, including when a later version changes them.\n"
    "# Uncomment and edit a key to override it.\n#\n"
)


def commented_defaults(example: str) -> str:
    """The shipped example with every top-level ``key: value`` commented out.

    A fresh cluster then runs on the package's defaults, not on a copy of
    them frozen at install time, and the operator still sees every key with
    its explanation.
    """
    lines = [f"# {line}" if _KEY_LINE.match(line) else line
             for line in example.splitlines(keepends=True)]
    return COMMENTED_HEADER + "".join(lines)


def _find_example(candidates: Sequence[Path]) -> Path | None:
    for path in candidates:
        if path.is_file():
            return path
    return None


class _Setup:
    def __init__(
        self,
        pve_root: Path,
        pveum: _Pveum,
        out: TextIO,
        example_configs: Sequence[Path],
    ) -> None:
        self.paths = PveRoot(pve_root)
        self.pveum = pveum
        self.out = out
        self.example_configs = example_configs
        self.token_file = self.paths.token
        self.config_file = self.paths.config

    def say(self, text: str) -> None:
        print(f"pve-balancer setup: {text}", file=self.out)

    def install_config(self) -> None:
        if self.config_file.exists():
            self.say(f"{self.config_file} exists, left as it is")
            return
        example = _find_example(self.example_configs)
        if example is None:
            self.say(f"no example configuration found; {self.config_file} not created"
                     " (the built-in defaults apply)")
            return
        text = commented_defaults(example.read_text(encoding="utf-8"))
        write_atomic(self.config_file, text, 0o640)
        self.say(f"created {self.config_file} from {example} (every key commented out)")

    def ensure_role(self) -> None:
        want = set(PRIVILEGES)
        privs = ",".join(PRIVILEGES)
        have = self.pveum.role_privileges(ROLE)
        if have is None:
            self.pveum.run("role", "add", ROLE, "--privs", privs)
            self.say(f"created role {ROLE} ({privs})")
        elif have != want:
            self.pveum.run("role", "modify", ROLE, "--privs", privs)
            self.say(f"updated role {ROLE} to {privs} (was {','.join(sorted(have)) or 'empty'})")

    def ensure_user(self) -> None:
        if not self.pveum.user_exists(USER):
            self.pveum.run("user", "add", USER, "--comment", USER_COMMENT)
            self.say(f"created user {USER} (no password; it signs in with its token only)")

    def ensure_token(self) -> None:
        in_file = read_token_id(self.token_file)
        exists = self.pveum.token_exists(USER, TOKEN_NAME)
        if exists and in_file == TOKEN_ID:
            return
        if exists:
            # Its secret is shown once, at creation, and is not in the file:
            # the only way to a working file is a new token.
            self.pveum.run("user", "token", "remove", USER, TOKEN_NAME)
            self.say(f"token {TOKEN_ID} existed without {self.token_file}: replaced it")
        answer = self.pveum.json(
            "user", "token", "add", USER, TOKEN_NAME,
            "--privsep", "1", "--comment", TOKEN_COMMENT,
        )
        secret = answer.get("value") if isinstance(answer, dict) else None
        if not isinstance(secret, str) or not secret:
            raise SetupFailedError("pveum user token add did not return the token's secret")
        write_atomic(self.token_file, f"{TOKEN_ID}={secret}\n", 0o600)
        self.say(f"created privilege-separated token {TOKEN_ID}, secret in {self.token_file}")

    def ensure_acl(self) -> None:
        # Idempotent in PVE: granting a role that is already granted changes nothing.
        self.pveum.run(
            "acl", "modify", "/", "--roles", ROLE, "--users", USER, "--tokens", TOKEN_ID,
        )

    def setup(self) -> None:
        foreign = read_token_id(self.token_file)
        if foreign is not None and foreign != TOKEN_ID:
            self.say(f"{self.token_file} holds the operator's token {foreign}; not touching it")
            self.install_config()
            return
        # pveum first: where it cannot run, nothing is left half done.
        self.ensure_role()
        self.ensure_user()
        self.ensure_token()
        self.ensure_acl()
        self.install_config()
        self.say(f"done: {USER} has {ROLE} on / via token {TOKEN_ID}")

    def remove(self) -> None:
        have_role = self.pveum.role_privileges(ROLE) is not None
        have_user = self.pveum.user_exists(USER)
        if have_user and self.pveum.token_exists(USER, TOKEN_NAME):
            self.pveum.run("user", "token", "remove", USER, TOKEN_NAME)
            self.say(f"removed token {TOKEN_ID}")
        if have_user:
            # Deleting the user also drops its ACL entries.
            self.pveum.run("user", "delete", USER)
            self.say(f"removed user {USER}")
        if have_role:
            self.pveum.run("role", "delete", ROLE)
            self.say(f"removed role {ROLE}")
        if read_token_id(self.token_file) == TOKEN_ID:
            self.token_file.unlink()
            self.say(f"removed {self.token_file}")
        status_dir = self.paths.status_dir
        if status_dir.is_dir():
            for child in status_dir.iterdir():
                child.unlink()
            status_dir.rmdir()
            self.say(f"removed {status_dir}")
        if self.config_file.exists():
            self.say(f"kept {self.config_file}; delete it yourself if it is no longer wanted")


def run_setup(
    pve_root: Path = DEFAULT_ROOT,
    if_possible: bool = False,
    remove: bool = False,
    *,
    runner: Runner = subprocess_runner,
    require_fuse: bool = True,
    example_configs: Sequence[Path] = EXAMPLE_CONFIGS,
    lock_wait: float = 30.0,
    sleep: Callable[[float], None] = time.sleep,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Create (or with ``remove`` delete) the cluster-wide token, role, user, config.

    Returns the process exit status: 0 when done or nothing to do, and also
    when this node cannot do it now and ``if_possible`` is set (the operator
    is told the command that finishes it); 1 otherwise.
    """
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    setup = _Setup(pve_root, _Pveum(runner), out, example_configs)
    what = "removal" if remove else "set-up"

    state = cluster_state(pve_root, require_fuse=require_fuse)
    if not state.quorate:
        if not remove and setup.token_file.exists() and setup.config_file.exists():
            setup.say(f"already set up ({setup.token_file} and {setup.config_file} exist);"
                      f" not verified now: {state.reason}")
            return 0
        return _impossible(what, state.reason, if_possible, remove, out, err)
    try:
        with setup_lock(pve_root, wait=lock_wait, sleep=sleep):
            if remove:
                setup.remove()
            else:
                setup.setup()
    except SetupImpossibleError as exc:
        return _impossible(what, str(exc), if_possible, remove, out, err)
    except (SetupFailedError, OSError) as exc:
        print(f"pve-balancer setup: {what} failed: {exc}", file=err)
        print(f"pve-balancer setup: fix the cause, then run: {_command(remove)}", file=err)
        return 1
    return 0


def _command(remove: bool) -> str:
    return f"{FINISH_COMMAND} --remove" if remove else FINISH_COMMAND


def _impossible(
    what: str, reason: str, if_possible: bool, remove: bool, out: TextIO, err: TextIO
) -> int:
    stream = out if if_possible else err
    print(f"pve-balancer setup: {what} not possible on this node now: {reason}.", file=stream)
    print(
        "pve-balancer setup: once this node is in a quorate Proxmox VE cluster, finish it with:"
        f" {_command(remove)}",
        file=stream,
    )
    return 0 if if_possible else 1
