"""`pve-balancer setup`: what it asks pveum to do, and that it does it once.

A small fake of pveum keeps users, roles, tokens and ACLs like PVE's
user.cfg does and answers in pveum's JSON; /etc/pve is a temporary directory
with a pmxcfs-like `.members`. Needs only the standard library and pytest
(it also runs at package build time).
"""

from __future__ import annotations

import io
import json
import os
import stat
from collections.abc import Sequence
from pathlib import Path

import pytest

from pve_balancer import provision
from pve_balancer.provision import CommandResult
from pve_balancer.status import write_atomic

SECRET = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
EXAMPLE_TEXT = "# pve-balancer configuration\n\n# CPU threshold.\ncpu_max: 0.8\n"


class FakePveum:
    """Just enough of pveum: state, JSON answers, and a log of every call."""

    def __init__(self) -> None:
        self.roles: dict[str, set[str]] = {"Administrator": {"Sys.Modify"}}
        self.users: set[str] = {"root@pam"}
        self.tokens: dict[str, set[str]] = {}
        self.acls: set[tuple[str, str, str]] = set()
        self.calls: list[list[str]] = []
        self.fail_on: str | None = None

    def __call__(self, argv: Sequence[str]) -> CommandResult:
        argv = list(argv)
        self.calls.append(argv)
        assert argv[0] == "pveum"
        line = " ".join(argv[1:])
        if self.fail_on and line.startswith(self.fail_on):
            return CommandResult(255, "", f"{self.fail_on}: permission denied\n")
        args = [a for a in argv[1:] if a not in ("--output-format", "json")]
        return self._dispatch(args)

    @staticmethod
    def _opt(args: list[str], name: str) -> str:
        return args[args.index(name) + 1]

    def _dispatch(self, a: list[str]) -> CommandResult:
        ok = CommandResult(0, "", "")
        if a[:2] == ["role", "list"]:
            rows = [{"roleid": r, "privs": ",".join(sorted(p)), "special": 0}
                    for r, p in self.roles.items()]
            return CommandResult(0, json.dumps(rows), "")
        if a[:2] == ["role", "add"]:
            assert a[2] not in self.roles
            self.roles[a[2]] = set(self._opt(a, "--privs").split(","))
            return ok
        if a[:2] == ["role", "modify"]:
            self.roles[a[2]] = set(self._opt(a, "--privs").split(","))
            return ok
        if a[:2] == ["role", "delete"]:
            del self.roles[a[2]]
            return ok
        if a[:2] == ["user", "list"]:
            return CommandResult(0, json.dumps([{"userid": u} for u in sorted(self.users)]), "")
        if a[:2] == ["user", "add"]:
            if a[2] in self.users:
                return CommandResult(255, "", "create user failed: user exists\n")
            self.users.add(a[2])
            return ok
        if a[:2] == ["user", "delete"]:
            self.users.discard(a[2])
            self.tokens.pop(a[2], None)
            self.acls = {e for e in self.acls if e[1] != a[2] and not e[1].startswith(a[2] + "!")}
            return ok
        if a[:3] == ["user", "token", "list"]:
            if a[3] not in self.users:
                return CommandResult(255, "", f"no such user ('{a[3]}')\n")
            rows = [{"tokenid": t, "privsep": 1} for t in sorted(self.tokens.get(a[3], set()))]
            return CommandResult(0, json.dumps(rows), "")
        if a[:3] == ["user", "token", "add"]:
            user, name = a[3], a[4]
            assert self._opt(a, "--privsep") == "1"
            if name in self.tokens.get(user, set()):
                return CommandResult(255, "", "Token already exists.\n")
            self.tokens.setdefault(user, set()).add(name)
            body = {"full-tokenid": f"{user}!{name}", "info": {"privsep": "1"}, "value": SECRET}
            return CommandResult(0, json.dumps(body), "")
        if a[:3] == ["user", "token", "remove"]:
            self.tokens[a[3]].discard(a[4])
            return ok
        if a[:2] == ["acl", "modify"]:
            role = self._opt(a, "--roles")
            for who in (self._opt(a, "--users"), self._opt(a, "--tokens")):
                self.acls.add((a[2], who, role))
            return ok
        raise AssertionError(f"unexpected pveum call: {a}")

    def mutating(self) -> list[str]:
        """The calls that change something (everything but the listings)."""
        return [" ".join(c[1:]) for c in self.calls if "list" not in c]


def _pve_root(tmp_path: Path, quorate: bool | None = True) -> Path:
    root = tmp_path / "etc-pve"
    (root / "priv" / "lock").mkdir(parents=True)
    members: dict[str, object] = {"nodename": "pve1", "version": 7}
    if quorate is not None:
        members["cluster"] = {"name": "lab", "version": 3, "nodes": 3, "quorate": int(quorate)}
    (root / ".members").write_text(json.dumps(members))
    return root


def _example(tmp_path: Path) -> Path:
    path = tmp_path / "balancer.yaml.example"
    path.write_text(EXAMPLE_TEXT)
    return path


def _run(root: Path, pveum: FakePveum, tmp_path: Path, **kwargs: object) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    rc = provision.run_setup(
        root,
        runner=pveum,
        require_fuse=False,
        example_configs=[_example(tmp_path)],
        sleep=lambda _s: None,
        out=out,
        err=err,
        **kwargs,  # type: ignore[arg-type]
    )
    return rc, out.getvalue(), err.getvalue()


def test_fresh_cluster_gets_role_user_privsep_token_acl_and_token_file(tmp_path: Path) -> None:
    root = _pve_root(tmp_path)
    pveum = FakePveum()

    rc, out, _ = _run(root, pveum, tmp_path)

    assert rc == 0
    assert pveum.mutating() == [
        "role add PVEBalancer --privs Sys.Audit,VM.Audit,VM.Migrate",
        "user add pve-balancer@pve --comment pve-balancer agent (API token only)",
        "user token add pve-balancer@pve agent --privsep 1 --comment"
        " pve-balancer agent on every node --output-format json",
        "acl modify / --roles PVEBalancer --users pve-balancer@pve"
        " --tokens pve-balancer@pve!agent",
    ]
    token_file = root / "priv" / "pve-balancer.token"
    assert token_file.read_text() == f"pve-balancer@pve!agent={SECRET}\n"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert pveum.acls == {
        ("/", "pve-balancer@pve", "PVEBalancer"),
        ("/", "pve-balancer@pve!agent", "PVEBalancer"),
    }
    installed = (root / "balancer.yaml").read_text()
    assert installed == (provision.COMMENTED_HEADER
                         + "# pve-balancer configuration\n\n# CPU threshold.\n# cpu_max: 0.8\n")
    assert not (root / "priv" / "lock" / "pve-balancer-setup").exists(), "set-up lock released"
    assert SECRET not in out, "the secret goes to the root-only file, never to the terminal"
    assert sorted(p.name for p in (root / "priv").iterdir()) == ["lock", "pve-balancer.token"]


def test_second_run_and_second_node_change_nothing(tmp_path: Path) -> None:
    root = _pve_root(tmp_path)
    pveum = FakePveum()
    assert _run(root, pveum, tmp_path)[0] == 0
    token_before = (root / "priv" / "pve-balancer.token").read_text()
    (root / "balancer.yaml").write_text("cpu_max: 0.7\n")  # the operator's edit
    pveum.calls.clear()

    rc, _, _ = _run(root, pveum, tmp_path)  # another node, same pmxcfs tree

    assert rc == 0
    assert pveum.mutating() == [
        "acl modify / --roles PVEBalancer --users pve-balancer@pve"
        " --tokens pve-balancer@pve!agent",
    ]
    assert (root / "priv" / "pve-balancer.token").read_text() == token_before
    assert (root / "balancer.yaml").read_text() == "cpu_max: 0.7\n"


def test_token_without_its_file_is_replaced_because_its_secret_is_lost(tmp_path: Path) -> None:
    root = _pve_root(tmp_path)
    pveum = FakePveum()
    pveum.users.add("pve-balancer@pve")
    pveum.tokens["pve-balancer@pve"] = {"agent"}
    pveum.roles["PVEBalancer"] = {"Sys.Audit", "VM.Audit", "VM.Migrate"}

    rc, out, _ = _run(root, pveum, tmp_path)

    assert rc == 0
    assert pveum.mutating()[:2] == [
        "user token remove pve-balancer@pve agent",
        "user token add pve-balancer@pve agent --privsep 1 --comment"
        " pve-balancer agent on every node --output-format json",
    ]
    assert "replaced" in out
    assert (root / "priv" / "pve-balancer.token").read_text().endswith(f"={SECRET}\n")


def test_role_with_other_privileges_is_brought_to_exactly_the_needed_ones(tmp_path: Path) -> None:
    root = _pve_root(tmp_path)
    pveum = FakePveum()
    pveum.roles["PVEBalancer"] = {"Sys.Audit", "VM.Audit", "VM.Migrate", "VM.PowerMgmt"}

    assert _run(root, pveum, tmp_path)[0] == 0

    assert pveum.mutating()[0] == "role modify PVEBalancer --privs Sys.Audit,VM.Audit,VM.Migrate"
    assert pveum.roles["PVEBalancer"] == {"Sys.Audit", "VM.Audit", "VM.Migrate"}


@pytest.mark.parametrize(
    ("quorate", "members", "why"),
    [
        (True, False, ".members is missing"),
        (False, True, "not part of a quorate"),
    ],
)
def test_without_pmxcfs_or_quorum_if_possible_exits_0_and_names_the_command(
    tmp_path: Path, quorate: bool, members: bool, why: str
) -> None:
    root = _pve_root(tmp_path, quorate=quorate)
    if not members:
        (root / ".members").unlink()
    pveum = FakePveum()

    rc, out, err = _run(root, pveum, tmp_path, if_possible=True)
    assert (rc, err) == (0, "")
    assert why in out
    assert out.rstrip().endswith("finish it with: pve-balancer setup")
    assert pveum.calls == []
    assert not (root / "balancer.yaml").exists()

    rc, out, err = _run(root, pveum, tmp_path)
    assert (rc, out) == (1, "")
    assert "pve-balancer setup" in err


def test_not_quorate_but_already_set_up_is_fine(tmp_path: Path) -> None:
    root = _pve_root(tmp_path, quorate=False)
    (root / "priv" / "pve-balancer.token").write_text(f"pve-balancer@pve!agent={SECRET}\n")
    (root / "balancer.yaml").write_text("{}\n")
    pveum = FakePveum()

    rc, out, _ = _run(root, pveum, tmp_path)

    assert rc == 0
    assert "already set up" in out
    assert pveum.calls == []


def test_missing_pveum_is_impossible_not_a_crash(tmp_path: Path) -> None:
    root = _pve_root(tmp_path)

    def no_pveum(argv: Sequence[str]) -> CommandResult:
        raise FileNotFoundError(argv[0])

    out = io.StringIO()
    rc = provision.run_setup(root, if_possible=True, runner=no_pveum, require_fuse=False,
                             example_configs=[_example(tmp_path)], out=out,
                             err=io.StringIO())
    assert rc == 0
    assert "pveum is not installed" in out.getvalue()
    assert not (root / "priv" / "lock" / "pve-balancer-setup").exists()
    assert sorted(p.name for p in root.iterdir()) == [".members", "priv"], "nothing half done"


def test_failing_pveum_step_exits_1_names_the_command_and_releases_the_lock(
    tmp_path: Path,
) -> None:
    root = _pve_root(tmp_path)
    pveum = FakePveum()
    pveum.fail_on = "acl modify"

    rc, _, err = _run(root, pveum, tmp_path, if_possible=True)

    assert rc == 1
    assert "pveum acl modify / --roles PVEBalancer" in err
    assert "permission denied" in err
    assert not (root / "priv" / "lock" / "pve-balancer-setup").exists()
    # The token was created before the ACL step: its secret must be kept.
    assert (root / "priv" / "pve-balancer.token").read_text().endswith(f"={SECRET}\n")
    pveum.fail_on = None
    pveum.calls.clear()
    assert _run(root, pveum, tmp_path)[0] == 0
    assert [c for c in pveum.mutating() if "token" in c.split()[:2]] == []


def test_operator_supplied_token_file_is_left_alone(tmp_path: Path) -> None:
    root = _pve_root(tmp_path)
    (root / "priv" / "pve-balancer.token").write_text("root@pam!balancer=abc\n")
    pveum = FakePveum()

    rc, out, _ = _run(root, pveum, tmp_path)

    assert rc == 0
    assert pveum.calls == []
    assert "root@pam!balancer" in out
    assert (root / "priv" / "pve-balancer.token").read_text() == "root@pam!balancer=abc\n"


def test_our_token_file_with_a_comment_line_first_is_recognised_as_ours(tmp_path: Path) -> None:
    root = _pve_root(tmp_path)
    assert _run(root, FakePveum(), tmp_path)[0] == 0
    token_file = root / "priv" / "pve-balancer.token"
    token_file.write_text("# written by pve-balancer setup\n" + token_file.read_text())
    pveum = FakePveum()
    pveum.users.add(provision.USER)
    pveum.tokens[provision.USER] = {provision.TOKEN_NAME}
    pveum.roles[provision.ROLE] = set(provision.PRIVILEGES)

    rc, out, _ = _run(root, pveum, tmp_path)

    assert rc == 0 and "operator's token" not in out
    assert pveum.mutating() == [f"acl modify / --roles {provision.ROLE} --users "
                                f"{provision.USER} --tokens {provision.TOKEN_ID}"]


def test_a_token_file_that_holds_no_token_is_named_and_left_alone(tmp_path: Path) -> None:
    root = _pve_root(tmp_path)
    token_file = root / "priv" / "pve-balancer.token"
    token_file.write_text("not a token\n")
    pveum = FakePveum()

    rc, _, err = _run(root, pveum, tmp_path)

    assert rc == 1
    assert str(token_file) in err and "fix or remove the file" in err
    assert pveum.mutating() == [] and token_file.read_text() == "not a token\n"


def test_concurrent_setup_on_another_node_makes_this_one_wait_then_step_back(
    tmp_path: Path,
) -> None:
    root = _pve_root(tmp_path)
    (root / "priv" / "lock" / "pve-balancer-setup").mkdir()  # held elsewhere
    pveum = FakePveum()
    slept: list[float] = []
    out = io.StringIO()

    rc = provision.run_setup(root, if_possible=True, runner=pveum, require_fuse=False,
                             example_configs=[], lock_wait=10.0, sleep=slept.append,
                             out=out, err=io.StringIO())

    assert rc == 0
    assert sum(slept) >= 10.0
    assert "running the set-up" in out.getvalue()
    assert pveum.calls == []
    assert (root / "priv" / "lock" / "pve-balancer-setup").is_dir(), "not ours to remove"


def test_remove_deletes_credentials_and_status_but_keeps_the_configuration(
    tmp_path: Path,
) -> None:
    root = _pve_root(tmp_path)
    pveum = FakePveum()
    assert _run(root, pveum, tmp_path)[0] == 0
    (root / "pve-balancer").mkdir()
    (root / "pve-balancer" / "status.json").write_text("{}")
    pveum.calls.clear()

    rc, out, _ = _run(root, pveum, tmp_path, remove=True)

    assert rc == 0
    assert pveum.mutating() == [
        "user token remove pve-balancer@pve agent",
        "user delete pve-balancer@pve",
        "role delete PVEBalancer",
    ]
    assert "PVEBalancer" not in pveum.roles
    assert pveum.acls == set()
    assert not (root / "priv" / "pve-balancer.token").exists()
    assert not (root / "pve-balancer").exists()
    assert (root / "balancer.yaml").exists()
    assert "kept" in out


def test_cluster_state_reads_members(tmp_path: Path) -> None:
    standalone = _pve_root(tmp_path / "a", quorate=None)
    assert provision.cluster_state(standalone, require_fuse=False).quorate
    lost = _pve_root(tmp_path / "b", quorate=False)
    state = provision.cluster_state(lost, require_fuse=False)
    assert (state.pmxcfs, state.quorate) == (True, False)
    # A plain directory is not pmxcfs, whatever it contains.
    assert not provision.cluster_state(standalone, require_fuse=True).pmxcfs
    (standalone / ".members").write_text("[1, 2]")
    assert "JSON object" in provision.cluster_state(standalone, require_fuse=False).reason


def test_installed_configuration_is_the_example_with_every_key_commented_out() -> None:
    from pve_balancer.config import Config, parse_config

    example = Path(__file__).resolve().parents[2] / "balancer.yaml.example"
    text = provision.commented_defaults(example.read_text())
    result = parse_config(text, "balancer.yaml")
    assert result.problems == ()
    assert result.config == Config()
    uncommented = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert uncommented == []
    # Every key of the example is still there to uncomment.
    keys = {line.split(":")[0] for line in example.read_text().splitlines()
            if line[:1].isalpha()}
    assert keys and all(f"# {key}:" in text for key in keys)


def test_write_atomic_creates_a_private_file_and_leaves_no_temporaries(
    tmp_path: Path,
) -> None:
    target = tmp_path / "secret"
    old_umask = os.umask(0)
    try:
        write_atomic(target, "x=y\n")
    finally:
        os.umask(old_umask)
    assert target.read_text() == "x=y\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["secret"]
