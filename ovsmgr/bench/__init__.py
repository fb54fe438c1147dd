"""`ovsmgr bench`: the seeds' data-plane and control-plane experiments, built in.

A bench *spec* (``spec``) lists experiments; the *runner* (``runner``) builds the
test beds they need (``testbed``: an embedded OVS lab; ``netfilter``: a Linux
router namespace with iptables, ipset or nftables rules), measures every point
next to its same-run baseline (``methods``: fixed-rate sweeps, RFC 2544 NDR
search, scaling), and writes ``results.json``, ``results.csv``, PNG plots
(``plots``) and a markdown report (``report``). Load comes from trafgen and
latency from a timestamped probe stream (``traffic``, ``probe``); counters are
read from the hosts' interfaces (``netns``).

This package imports nothing heavy at import time: ``python -m
ovsmgr.bench.probe`` runs inside the lab's host namespaces and must start fast.
"""
