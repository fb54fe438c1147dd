"""The lab: Open vSwitch and its hosts in network namespaces of their own, on one machine,
and the traffic agent and scenario runner that use them.

- `instance`: one OVS (ovsdb-server, ovs-vswitchd; netdev or DPDK) in a namespace and a
  directory of its own: the lab's, the bench test beds' and the kernel-test host runs'.
- `ovs`: `Lab`, an instance with a bridge and a host namespace per port, recorded in lab.json.
- `spec`: what a lab is made of (ports, hosts, addresses), decided before it is built.
- `netns`: namespaces (setns, their processes, creating and deleting them, set-up commands).
- `probe`: the traffic agent run in the hosts (standard library only).
- `taps`, `hosts`, `compare`, `scenarios`: scenario tables against the real switch.
- `cluster`: the fleet store, a Raft cluster of ovsdb-servers on loopback.
- `pki`: a CA and certificates made with `ovs-pki`.
- `fleet`: `FleetLab`, a whole fleet on one machine (store, a lab per switch, TLS everywhere).

Kept free of imports: `python -m ovsmgr.lab.probe` runs inside the hosts' namespaces and
must start fast."""
