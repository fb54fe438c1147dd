"""`ovsmgr bench`: the seeds' data-plane and control-plane experiments, built in.

A bench *spec* (``spec``, read by ``specfile``) lists experiments; the *runner*
(``runner``) builds the test beds they need (``testbed``: an embedded OVS lab;
``systembed``: an OVS that already runs; ``netfilter``: a Linux router namespace with
iptables, ipset or nftables rules), puts pipelines on them (``pipelines``), measures
every point next to its same-run baseline (``methods``: fixed-rate sweeps, RFC 2544
NDR search, scaling), and writes ``results.json``, ``results.csv``, PNG plots
(``plots``) and a markdown report (``report``). Load comes from trafgen
(``traffic``), latency from the lab's traffic agent (``ovsmgr.lab.probe``); counters
are read from the hosts' interfaces (``netns``).

This package imports nothing heavy at import time.
"""
