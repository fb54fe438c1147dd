"""The lab: Open vSwitch and its hosts in network namespaces of their own, on one machine,
and the traffic agent and scenario runner that use them.

Kept free of imports: `python -m ovsmgr.lab.probe` runs inside the hosts' namespaces and
must start fast."""
