"""pvesim: a simulated Proxmox VE 9 cluster (API, physics, pmxcfs) that the
balancer is proven against. Never imports `pve_balancer`; never shipped."""
