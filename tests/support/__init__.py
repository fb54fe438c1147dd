"""Test and benchmark harness: code that drives ovsmgr, never shipped in its wheel."""
