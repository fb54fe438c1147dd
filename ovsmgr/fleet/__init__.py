"""Many switches from one fleet file: the file, the store (ovsmgr's own schema on clustered OVSDB),
and the rollout that applies each switch through `ovsmgr.switch` (docs/fleet.md)."""
