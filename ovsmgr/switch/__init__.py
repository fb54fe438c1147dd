"""The apply lifecycle on one switch: plan, apply, lock-out guard, confirm and rollback, the
applied-state record, status and restore. `ovsmgr apply` and controller mode both use it."""
