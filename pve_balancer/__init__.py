"""pve-balancer: keeps CPU and memory available on a Proxmox VE cluster with
the fewest live migrations, led by one agent through a pmxcfs lock."""

__version__ = "0.1.0"
