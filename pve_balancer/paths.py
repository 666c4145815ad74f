"""Every file the agent reads or writes under the PVE root (`/etc/pve`).

One root, given once (`--pve-root`, default `/etc/pve`), so the same binary
runs on a node and against a simulated cluster's emulated `/etc/pve`. No
other module spells a path below the root: they ask a `PveRoot`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_ROOT = Path("/etc/pve")

LEADER_LOCK_NAME = "pve-balancer"
SETUP_LOCK_NAME = "pve-balancer-setup"


@dataclass(frozen=True)
class PveRoot:
    """The cluster file system as this node mounts it, and our files in it.

    `config_override` replaces the configuration file's path (`--config`),
    for trying a file before it goes to `/etc/pve`.
    """

    root: Path = DEFAULT_ROOT
    config_override: Path | None = None

    @property
    def config(self) -> Path:
        """Cluster-wide configuration, edited once by the operator."""
        return self.config_override or self.root / "balancer.yaml"

    @property
    def token(self) -> Path:
        """The agent's API token (`USER@REALM!TOKENID=SECRET`), root-only."""
        return self.root / "priv" / "pve-balancer.token"

    @property
    def ca(self) -> Path:
        """The cluster CA that signs every node's API certificate."""
        return self.root / "pve-root-ca.pem"

    @property
    def members(self) -> Path:
        """pmxcfs's view of the cluster membership and quorum (JSON)."""
        return self.root / ".members"

    @property
    def lock_dir(self) -> Path:
        """Where pmxcfs keeps its lock directories (with their lifetime rule)."""
        return self.root / "priv" / "lock"

    @property
    def leader_lock(self) -> Path:
        """The lock whose holder is the one balancer that acts."""
        return self.lock_dir / LEADER_LOCK_NAME

    @property
    def setup_lock(self) -> Path:
        """Serialises `pve-balancer setup` runs on several nodes."""
        return self.lock_dir / SETUP_LOCK_NAME

    @property
    def status_dir(self) -> Path:
        """Our directory for what the leader publishes."""
        return self.root / "pve-balancer"

    @property
    def status(self) -> Path:
        """Who leads, since when, the node view and the last decisions."""
        return self.status_dir / "status.json"
