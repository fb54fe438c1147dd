"""Controller mode: the long-running form of ovsmgr (`ovsmgr controller`).

An os-ken application started from our own code keeps one bridge in line with
its policy files plus runtime changes (address-set members, rules), taken
through a local JSON API. See docs/design.md, "Controller mode".

- `engine`: state and every change (start, reconcile, reload, runtime updates);
- `runtime`: the runtime changes and their state file;
- `policydata`: policy files as data, validation of the part a change touches;
- `app`, `ofchannel`, `packetin`: the OpenFlow side (events, packet-ins, stats);
- `api`, `client`: the JSON API and the CLI's client;
- `runner`, `relay`, `switchdb`, `recorder`, `metrics`, `paths`, `restore`: the process around it.
"""
