"""The `ovs` and `ovsdbapp` libraries, imported once, quietly and without eventlet.

`ovs.poller` imports eventlet only to ask whether `select` is monkey-patched.
ovsmgr never patches anything, so the answer is always no; importing eventlet
to hear it costs about 0.25 s of every command's start (measured with
`python -X importtime`), and eventlet's resolver drags in dnspython, whose DSA
classes raise cryptography's deprecation warnings. While `ovs.poller` is
imported here, eventlet is hidden from it (its `try: from eventlet import ...`
falls back to "not patched"); a process that imported eventlet before keeps
its eventlet.
"""

from __future__ import annotations

import sys
import warnings

with warnings.catch_warnings():
    # ovs.poller warns on import whenever eventlet is installed (os-ken pulls it in);
    # ovsmgr does not use eventlet, so the warning only confuses CLI users.
    warnings.filterwarnings("ignore", message="\\s*Eventlet is deprecated")
    # Where eventlet was imported before us, ovs.poller's import of it reaches dnspython's
    # DNSSEC algorithms, which name cryptography's deprecated DSA classes at class level:
    # 8 warning lines per command about code ovsmgr never runs (it does no DNS). Only that
    # warning, only from that module, only while these imports run.
    warnings.filterwarnings("ignore", message="DSA is deprecated", module=r"dns\.dnssecalgs\.dsa")
    _hidden = "eventlet" not in sys.modules
    if _hidden:
        sys.modules["eventlet"] = None  # type: ignore[assignment]  # `import eventlet` raises ImportError
    try:
        import ovs.poller
        from ovs import jsonrpc, stream
        from ovs.unixctl import client as unixctl_client
        from ovsdbapp import api as ovsdbapp_api
        from ovsdbapp.backend import ovs_idl
        from ovsdbapp.backend.ovs_idl import command as ovs_command
        from ovsdbapp.backend.ovs_idl import connection, idlutils, transaction
        from ovsdbapp.schema.open_vswitch import commands as vs_commands
        from ovsdbapp.schema.open_vswitch import impl_idl
    finally:
        if _hidden:
            del sys.modules["eventlet"]

__all__ = ["connection", "idlutils", "impl_idl", "jsonrpc", "ovs", "ovs_command", "ovs_idl", "ovsdbapp_api", "stream",
           "transaction", "unixctl_client", "vs_commands"]
