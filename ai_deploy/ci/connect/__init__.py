"""How the deployer reaches hosts: the targets and the access each kind opens (access,
fleet_access), the runner's address and the firewall window (myip, gcp_phases), IAP tunnels
(tunnel), keys and pinned host keys (ssh, fleet_access), a day-2 command's reach (reach)."""
