"""The real pmxcfs (Proxmox's C source, built here) on a three-node corosync
cluster in network and mount namespaces: the test tier that checks the
election, and the emulator, against the file system they stand in for."""
